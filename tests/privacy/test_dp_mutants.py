"""Record-level broken-DP mutants (TEST ONLY knob ``DPConfig.mutant``) and the audit catching them.

PRIVACY.md section 5: "broken-DP mutants (noise 0 while the ledger claims sigma; clipping off)
must be caught". The user-level mutants live in the harness's aggregator
(tests/privacy/test_leakage_harness.py); these break the learner's own DP-SGD:

* one DP step by hand shows what each mutant does to the mechanism (and that the claimed noise
  multiplier is still reported);
* the empirical audit flags each mutant (audited epsilon above the ledger's claim, or a
  threshold with TPR > e^eps FPR + delta), while the honest run with the same settings is not
  flagged (the control). These train four small federations, so they are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dp_testkit import expected_dp_step, frozen_client, tiny_config, tiny_model

from fedvpa_secure.cli import main
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.train.dp_config import DEFAULT_MAX_NOISE_STEP, DPConfig, allow_test_mutants
from fedvpa_secure.train.dp_local import UNCLIPPED_NORM, opacus_parameters, train_local_dp
from fedvpa_secure.train.leakage import LeakageSettings, empirical_audit
from fedvpa_secure.train.leakage_dp import DPSettings, record_dp_config
from fedvpa_secure.train.local import ClientState

CPU = torch.device("cpu")
CLAIM = 0.25  # the record-level epsilon every audited ledger claims
CACHE = str(Path(__file__).resolve().parents[2] / ".cache" / "embeddings")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_mutants_hand_opacus_the_broken_mechanism() -> None:
    assert opacus_parameters(2.0, 0.5) == (2.0, 0.5)
    assert opacus_parameters(2.0, 0.5, "zero-noise") == (0.0, 0.5)
    z, c = opacus_parameters(2.0, 0.5, "no-clipping")
    assert c == UNCLIPPED_NORM
    assert z * c == pytest.approx(2.0 * 0.5, rel=1e-12)  # the noise std stays nominal
    with pytest.raises(ConfigError, match="mutant"):
        opacus_parameters(2.0, 0.5, "off-by-one")


def test_mutant_is_validated_and_passed_from_the_harness() -> None:
    with pytest.raises(ConfigError, match="mutant"):
        DPConfig(target_epsilon=1.0, mutant="off-by-one")
    assert DPConfig(target_epsilon=1.0).mutant is None
    dp = record_dp_config(DPSettings(level="record", target_epsilon=1.0, mutant="no-clipping"))
    assert dp.mutant == "no-clipping"


def test_a_mutant_is_refused_outside_the_audit(tmp_path: Path) -> None:
    # A client takes its experiment config (dp included) from the server: a mutant in it must
    # not silently switch DP off. Only the empirical audit and tests open the gate.
    from fedvpa_secure.train.dp_round import DPClients

    dp = DPConfig(noise_multiplier=1.0, epsilon_max=50.0, mutant="zero-noise")
    cfg = tiny_config("monolithic", dp=dp)
    with pytest.raises(ConfigError, match="TEST-ONLY"):
        DPClients(cfg, [frozen_client()], tmp_path / "refused")
    with allow_test_mutants():
        assert DPClients(cfg, [frozen_client()], tmp_path / "audit").dp.mutant == "zero-noise"
    with pytest.raises(ConfigError, match="TEST-ONLY"):
        DPClients(cfg, [frozen_client()], tmp_path / "closed-again")


@pytest.mark.parametrize(
    ("mutant", "clip_used", "noise_std"),
    [("zero-noise", 0.05, 0.0), ("no-clipping", float("inf"), 0.7 * 0.05)],
)
def test_one_mutant_step_by_hand(mutant: str, clip_used: float, noise_std: float) -> None:
    cfg = tiny_config("monolithic", local_steps=1)
    client = frozen_client()
    model = tiny_model(cfg, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clip, z, seed = 0.05, 0.7, 11
    result = train_local_dp(
        model,
        [client],
        ClientState(),
        cfg,
        1,
        1.0,
        np.random.default_rng(5),
        CPU,
        z,
        clip,
        "vmap",
        torch.Generator().manual_seed(seed),
        mutant=mutant,
    )
    assert result.noise_multiplier == z  # what the caller accounts: the honest claim
    expected = expected_dp_step(
        cfg, client, before, clip_used, noise_std, seed, np.random.default_rng(5)
    )
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-5, atol=1e-6)


def _audit_settings(dp: DPSettings, method: str) -> LeakageSettings:
    # Many local steps on small clients maximise each canary's influence; 64 canaries cap the
    # audited epsilon near 2.3, so the ledger claims CLAIM (the prior releases get large noise).
    return LeakageSettings(
        level="record",
        canaries=64,
        reference_models=0,
        rounds=6,
        local_steps=20,
        method=method,
        cache_dir=CACHE,
        dp=dp,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mutant", "method", "clip", "max_noise_step"),
    [
        # Zero noise leaks only if the (identical) honest run may take real steps: the noise cap
        # is lifted and the simplest model is used, so that the honest control stays finite.
        ("zero-noise", "monolithic", 1.0, None),
        # A tiny clipping norm makes the nominal noise tiny; unclipped gradients then memorise.
        ("no-clipping", "fedvpa-gp", 0.001, DEFAULT_MAX_NOISE_STEP),
    ],
    ids=["noise-0-ledger-claims-sigma", "clipping-off"],
)
def test_record_level_mutants_are_caught_and_the_honest_run_is_not(
    tmp_path: Path, mutant: str, method: str, clip: float, max_noise_step: float | None
) -> None:
    def audit(which: str | None) -> dict:
        dp = DPSettings(
            level="record",
            target_epsilon=CLAIM,
            clipping_norm=clip,
            prior_noise_multiplier=200.0,
            max_noise_step=max_noise_step,
            mutant=which,
        )
        return empirical_audit(_audit_settings(dp, method), tmp_path / str(which), controls=False)

    broken = audit(mutant)
    claimed = broken["accountant_epsilon"]
    assert claimed == pytest.approx(CLAIM, rel=0.05)
    caught = broken["audited_epsilon"] > claimed or not broken["threshold_check"]["ok"]
    assert caught, broken
    assert broken["dp_consistent"] is False
    assert main(["audit", str(tmp_path / mutant)]) == 0  # the ledgers alone look honest

    honest = audit(None)
    assert honest["accountant_epsilon"] == pytest.approx(claimed, rel=1e-6)
    assert honest["audited_epsilon"] <= honest["accountant_epsilon"], honest
    assert honest["threshold_check"]["ok"], honest["threshold_check"]
    assert honest["dp_consistent"] is True
