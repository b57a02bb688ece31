"""End to end: ``experiment`` with record-level DP, secure aggregation and user-level DP writes a
report whose privacy section matches the ledgers, and ``audit`` verifies them."""

from __future__ import annotations

import json

import pytest

from fedvpa_secure.cli import main
from privacy import PersistentAccountant


@pytest.mark.slow
def test_experiment_with_both_guarantees_reports_and_audits(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = [
        "experiment", "--data", "synthetic", "--clients", "4", "--eval-clients", "2",
        "--pairs-per-client", "24", "--eval-pairs-per-client", "24", "--rounds", "2",
        "--local-steps", "1", "--context-size", "4", "--query-size", "2", "--latent-dim", "8",
        "--dp-epsilon", "8", "--secure-agg", "--user-dp-epsilon", "5", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    privacy = json.loads((out / "report.json").read_text())["privacy"]
    record, user = privacy["record_level"], privacy["user_level"]
    assert record["unit"].startswith("one preference pair") and user["unit"].startswith(
        "one client"
    )
    assert 0 < record["epsilon"] <= 8.0 and 0 < user["epsilon"] <= 5.0
    for path in record["ledgers"]:
        acc = PersistentAccountant.load(path)
        assert acc.epsilon == pytest.approx(record["per_client_epsilon"][acc.ledger.genesis.actor])
    assert PersistentAccountant.load(user["ledgers"][0]).epsilon == pytest.approx(user["epsilon"])
    capsys.readouterr()
    assert main(["audit", str(out)]) == 0
    assert "audit passed" in capsys.readouterr().out


def test_noise_multiplier_without_a_budget_is_refused(tmp_path, capsys) -> None:
    argv = ["experiment", "--data", "synthetic", "--noise-multiplier", "1.0", "--rounds", "1",
            "--clients", "3", "--eval-clients", "1", "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 2
    assert "--noise-multiplier needs a budget" in capsys.readouterr().err
