"""A failed ``simulate`` says why where the user looks, naming what the user typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedvpa_secure.commands.simulate import last_error_line, wait_address
from fedvpa_secure.errors import FedVPAError

from .fedkit import CLI, ENV, TINY

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--user-dp-epsilon", "-1", "expected a number >= 0"),
        ("--dp-delta", "1.5", "expected a number in (0, 1)"),
        ("--rounds", "0", "expected an integer >= 1"),
    ],
)
def test_a_bad_flag_is_named_and_nothing_is_made(
    tmp_path: Path, flag: str, value: str, expected: str
) -> None:
    out = tmp_path / "RUN"
    rc = subprocess.run(
        [*CLI, "simulate", "--out", str(out), *TINY, flag, value],
        env=ENV,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 2
    assert f"argument {flag}: {expected}, got '{value}'" in rc.stderr
    assert not out.exists()


def test_a_server_that_dies_at_start_is_reported_with_its_error_line(tmp_path: Path) -> None:
    """A real child process that fails as the server does (its error line on stderr)."""
    log = tmp_path / "server.log"
    script = (
        "import sys; print('fedvpa-secure server: error: boom in server.toml', file=sys.stderr)"
    )
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-c", script + "; sys.exit(2)"], stdout=handle, stderr=handle
        )
        proc.wait(timeout=60)
    with pytest.raises(FedVPAError) as info:
        wait_address(tmp_path / "server.address", proc, 5.0, log)
    message = str(info.value)
    assert "exited early with status 2: fedvpa-secure server: error: boom in server.toml" in message
    assert str(log) in message


def test_last_error_line_picks_the_childs_error(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("INFO starting\nfedvpa-secure server: error: bad key\nINFO shutting down\n")
    assert last_error_line(log) == "fedvpa-secure server: error: bad key"
    log.write_text("INFO all fine\n")  # control: nothing to relay
    assert last_error_line(log) == ""
    assert last_error_line(tmp_path / "missing.log") == ""
