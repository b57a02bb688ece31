"""Fixtures shared by the privacy tests."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from privacy_testkit import build_run


@pytest.fixture(autouse=True)
def _quiet_third_party_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="absl")


@pytest.fixture
def run_dir(tmp_path: Path) -> dict[str, Path]:
    """A fresh three-round run directory: a server ledger and two nested client ledgers."""
    return build_run(tmp_path / "run")
