"""A failed ``simulate`` says why where the user looks, not only inside ``OUT/logs``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fedvpa_secure.commands.simulate import last_error_line

from .fedkit import CLI, ENV, TINY

pytestmark = pytest.mark.integration


def test_the_servers_error_line_is_relayed(tmp_path: Path) -> None:
    out = tmp_path / "RUN"
    args = ["--clients", "5", "--rounds", "1", "--out", str(out), *TINY]
    args += ["--cache-dir", str(tmp_path / "cache"), "--user-dp-epsilon", "-1"]
    rc = subprocess.run(
        [*CLI, "simulate", *args], env=ENV, timeout=240, capture_output=True, text=True
    )
    assert rc.returncode == 2
    assert "the server exited early with status 2: fedvpa-secure server: error:" in rc.stderr
    assert "epsilon_max=-1.0 is invalid" in rc.stderr and "server.log" in rc.stderr


def test_last_error_line_picks_the_childs_error(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("INFO starting\nfedvpa-secure server: error: bad key\nINFO shutting down\n")
    assert last_error_line(log) == "fedvpa-secure server: error: bad key"
    log.write_text("INFO all fine\n")  # control: nothing to relay
    assert last_error_line(log) == ""
    assert last_error_line(tmp_path / "missing.log") == ""
