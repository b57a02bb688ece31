"""The empirical leakage harness on the real learner (synthetic users, frozen MiniLM embeddings).

PRIVACY.md section 5's required controls, as tests:

* positive control: no DP, overfit, mislabelled canaries -> leakage is detected;
* negative control: canaries never included -> AUC within 0.5 +- 3 standard errors;
* a DP run: audited epsilon <= accountant epsilon and TPR <= e^eps FPR + delta at every
  threshold (one-sided Clopper-Pearson);
* two broken-DP mutants (noise 0 while the ledger claims sigma; clipping off) are caught
  (user level here: DP-FedAvg in the harness's aggregator; record level, the learner's DP-SGD
  through its test-only ``DPConfig.mutant`` knob: tests/privacy/test_dp_mutants.py).

Each training run is a few seconds on one CPU thread; the user-level DP runs train ~40 clients
with many local steps, so they are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvpa_secure.cli import main
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.train.canaries import record_canaries, user_canaries
from fedvpa_secure.train.leakage import LeakageSettings, empirical_audit
from fedvpa_secure.train.leakage_dp import DPSettings
from privacy.ledger import find_ledgers

REPO = Path(__file__).resolve().parents[2]
CACHE = str(REPO / ".cache" / "embeddings")
REQUIRED_KEYS = {
    "audited_epsilon",
    "accountant_epsilon",
    "auc",
    "tpr_at_fpr_0.01",
    "positive_control",
    "negative_control",
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only fight over the shared cores
    yield
    torch.set_num_threads(before)


def _record_settings(**kw) -> LeakageSettings:
    base = {
        "level": "record",
        "canaries": 48,
        "reference_models": 0,
        "rounds": 6,
        "local_steps": 5,
        "positive_local_steps": 25,
        "positive_rounds": 8,
        "cache_dir": CACHE,
    }
    return LeakageSettings(**(base | kw))


def _user_dp_settings(dp: DPSettings, **kw) -> LeakageSettings:
    # Many local steps (an overfitting client) maximise each canary's influence: the DP claim
    # must hold for any data and any local training, so the audit picks the worst it can.
    base = {
        "level": "user",
        "canaries": 64,
        "reference_models": 0,
        "n_clients": 4,
        "pairs_per_canary": 12,
        "context_size": 4,
        "rounds": 8,
        "local_steps": 30,
        "cache_dir": CACHE,
        "dp": dp,
    }
    return LeakageSettings(**(base | kw))


def test_record_controls_pass_and_the_report_is_complete(tmp_path: Path) -> None:
    report = empirical_audit(_record_settings(), tmp_path)
    pos, neg = report["positive_control"], report["negative_control"]
    assert pos["auc"] >= 0.6 or pos["audited_epsilon"] >= 1.0, pos
    assert pos["passed"]
    assert abs(neg["auc"] - 0.5) <= 3 * neg["auc_se"], neg
    assert neg["passed"]
    assert report["controls_passed"]
    written = json.loads((tmp_path / "audit.json").read_text())
    assert set(written) >= REQUIRED_KEYS
    assert "auc" in written["positive_control"] and "audited_epsilon" in written["positive_control"]
    assert "auc" in written["negative_control"]
    assert written["accountant_epsilon"] is None  # no DP, no claim
    assert written["settings"]["k_plus"] == 12 == written["one_run_audit"]["k_plus"]
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_canaries_are_seeded_and_about_half_are_in() -> None:
    from fedvpa_secure.data import build_federated_data

    data = build_federated_data(
        "synthetic", None, n_clients=4, pairs_per_client=16, n_eval_clients=1, seed=0
    )
    with_c, canaries = record_canaries(data, 200, seed=3, context_size=4)
    again = record_canaries(data, 200, seed=3, context_size=4)[1]
    assert np.array_equal(canaries.included, again.included)
    assert 70 < canaries.included.sum() < 130
    added = sum(len(c.pairs) for c in with_c.train_clients) - 4 * 16
    assert added == canaries.included.sum()
    ids = [p.pair_id for c in data.train_clients for p in c.pairs]
    assert not {p.client.pairs[-1].pair_id for p in canaries.probes} & set(ids)
    _, never = record_canaries(data, 200, seed=3, context_size=4, insert=False)
    assert not never.members.any() and never.included.sum() == canaries.included.sum()
    users, uc = user_canaries(data, 10, seed=3, pairs_per_canary=8, context_size=4)
    assert len(users.train_clients) == 4 + uc.included.sum()


def test_honest_record_dp_run_respects_its_accountant(tmp_path: Path) -> None:
    # Record level goes through the learner's own DP-SGD (ExperimentConfig.dp).
    dp = DPSettings(level="record", target_epsilon=4.0, clipping_norm=1.0)
    settings = _record_settings(canaries=32, rounds=4, local_steps=3, dp=dp)
    report = empirical_audit(settings, tmp_path, controls=False)
    assert report["accountant_epsilon"] == pytest.approx(4.0, rel=0.05)
    assert report["audited_epsilon"] <= report["accountant_epsilon"]
    assert report["threshold_check"]["ok"], report["threshold_check"]
    assert report["dp_consistent"]
    assert find_ledgers(tmp_path)  # one ledger per client, from the learner


def test_record_level_mutants_reach_the_learner() -> None:
    from fedvpa_secure.train.leakage_dp import record_dp_config

    for mutant in ("zero-noise", "no-clipping"):
        dp = DPSettings(level="record", target_epsilon=4.0, mutant=mutant)
        assert record_dp_config(dp).mutant == mutant  # caught: test_dp_mutants.py


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="k_plus"):
        LeakageSettings(canaries=8, k_plus=6, k_minus=6)
    with pytest.raises(ConfigError, match="level"):
        LeakageSettings(level="record", dp=DPSettings(level="user", target_epsilon=1.0))
    with pytest.raises(ConfigError, match="mutant"):
        DPSettings(target_epsilon=1.0, mutant="off-by-one")


@pytest.mark.slow
def test_honest_user_dp_run_respects_its_accountant(tmp_path: Path) -> None:
    dp = DPSettings(level="user", target_epsilon=1.0, clipping_norm=0.05)
    report = empirical_audit(_user_dp_settings(dp), tmp_path, controls=False)
    assert report["accountant_epsilon"] == pytest.approx(1.0, rel=0.02)
    assert report["audited_epsilon"] <= report["accountant_epsilon"]
    assert report["threshold_check"]["ok"], report["threshold_check"]
    assert report["dp_consistent"]
    ledgers = find_ledgers(tmp_path)  # the server's ledger records the claimed sigma
    assert len(ledgers) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mutant", "clip"),
    [("zero-noise", 1.0), ("no-clipping", 0.001)],
    ids=["noise-0-ledger-claims-sigma", "clipping-off"],
)
def test_broken_dp_mutants_are_caught(tmp_path: Path, mutant: str, clip: float) -> None:
    # The ledger claims (0.25, 1e-5)-DP at user level; the mutant breaks the mechanism.
    dp = DPSettings(level="user", target_epsilon=0.25, clipping_norm=clip, mutant=mutant)
    report = empirical_audit(_user_dp_settings(dp), tmp_path, controls=False)
    claimed = report["accountant_epsilon"]
    assert claimed == pytest.approx(0.25, rel=0.02)
    caught = report["audited_epsilon"] > claimed or not report["threshold_check"]["ok"]
    assert caught, report
    assert report["dp_consistent"] is False
    code = main(["audit", str(tmp_path)])  # the ledger alone looks honest: only the audit sees it
    assert code == 0


def test_empirical_cli_usage_errors(capsys, tmp_path: Path) -> None:
    assert main(["audit", "--empirical", "--canaries", "16"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["audit"]) == 2
    assert "PATH" in capsys.readouterr().err
    argv = ["audit", "--empirical", "--mutant", "no-clipping", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "--mutant needs --dp" in capsys.readouterr().err
