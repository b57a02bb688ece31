"""Secure aggregation as an aggregator, and user-level distributed DP on top of it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedvpa_secure.errors import AbortRound, BudgetExceededError
from fedvpa_secure.secagg import SecAggConfig, Stage
from fedvpa_secure.train.aggregation import plain_sum
from fedvpa_secure.train.dp_config import UserDPConfig
from fedvpa_secure.train.secure_aggregation import (
    DEFAULT_CLIP,
    SecureAggregator,
    privatize_update,
)
from privacy import Ledger
from privacy.distributed import l2_norm


def _updates(n: int, dim: int = 12, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "delta/w": (rng.normal(size=(dim // 3, 3)) * 5).astype(np.float32),
            "delta/b": rng.normal(size=3).astype(np.float32),
            "prior/n": rng.random(2) * 8,
            "prior/v": rng.random(2) * 3,
            "prior/m1": rng.normal(size=4),
            "weight": np.array([float(10 + i)]),
        }
        for i in range(n)
    ]


def _bound(n: int, key: str) -> float:
    config = SecAggConfig(n_clients=n, clip=DEFAULT_CLIP)
    return n * 2.0 ** -config.frac_bits[config.group_of(key)]  # one quantum per client


def test_secure_sum_equals_plain_sum_within_quantisation_error() -> None:
    updates = _updates(5)
    secure, plain = SecureAggregator()(updates), plain_sum(updates)
    assert sorted(secure) == sorted(plain)
    for key in plain:
        if key == "weight":
            assert secure[key][0] == pytest.approx(plain[key][0], abs=1e-6)
            continue
        assert secure[key].shape == plain[key].shape
        assert np.abs(secure[key] - plain[key]).max() <= _bound(5, key)
    # control: the bound is tight enough to notice one client missing from the sum
    partial = plain_sum(updates[:4])
    assert np.abs(secure["delta/w"] - partial["delta/w"]).max() > _bound(5, "delta/w")


def test_privatized_update_has_norm_at_most_s_and_unit_weight() -> None:
    out = privatize_update(_updates(1)[0], clip_norm=0.5)
    assert out["weight"][0] == 1.0
    assert l2_norm({k: v for k, v in out.items() if k != "weight"}) <= 0.5 + 1e-9


def _user_dp(tmp_path, t_min=3, rounds=2, **kw) -> SecureAggregator:
    return SecureAggregator(
        user_dp=UserDPConfig(target_epsilon=5.0, clip_norm=1.0, min_survivors=t_min, **kw),
        run_dir=tmp_path,
        rounds=rounds,
        sample_rate=0.5,
    )


def test_user_dp_sum_carries_the_calibrated_noise_and_is_recorded_first(tmp_path) -> None:
    updates = _updates(4, dim=3000)
    agg = _user_dp(tmp_path)
    noisy = agg(updates)
    clean = plain_sum([privatize_update(u, 1.0) for u in updates])
    plan = agg.plan
    err = noisy["delta/w"] - clean["delta/w"]
    expected_std = math.sqrt(4) * plan.local_sigma / plan.l2_sensitivity  # model units (S = 1)
    assert err.std() == pytest.approx(expected_std, rel=0.15)
    assert noisy["weight"][0] == 4.0
    entries = Ledger.open(tmp_path / "privacy" / "server.ledger.jsonl").entries
    assert len(entries) == 1 and entries[0].event.type_name == "distributed_noise"
    assert agg.accountant.epsilon > 0


def test_round_below_t_min_aborts_with_nothing_recorded(tmp_path) -> None:
    with pytest.raises(AbortRound, match="t_min=4"):
        _user_dp(tmp_path, t_min=4)(_updates(3))
    ledger = Ledger.open(tmp_path / "privacy" / "server.ledger.jsonl")
    assert len(ledger.entries) == 0


def test_dropouts_below_t_min_abort_and_one_dropout_above_it_does_not(tmp_path) -> None:
    agg = _user_dp(tmp_path / "a", t_min=4)
    with pytest.raises(AbortRound):
        agg(_updates(5), drop_at={Stage.MASKED_INPUT: [0, 1]})  # 3 survivors < t_min
    ok = _user_dp(tmp_path / "b", t_min=4)  # control: 4 survivors are enough
    out = ok(_updates(5), drop_at={Stage.MASKED_INPUT: [0]})
    assert out["weight"][0] == 4.0 and len(ok.last_survivors) == 4


def test_server_refuses_a_round_beyond_its_budget(tmp_path) -> None:
    agg = _user_dp(tmp_path, rounds=1)  # calibrated so one round spends the whole budget
    agg(_updates(3))
    with pytest.raises(BudgetExceededError, match="server refuses round 2"):
        agg(_updates(3))
    assert len(Ledger.open(tmp_path / "privacy" / "server.ledger.jsonl").entries) == 1


def test_round_privacy_event_for_the_grpc_server_refuses_too_few_survivors() -> None:
    from fedvpa_secure.train.secure_aggregation import round_privacy_event
    from privacy.distributed import calibrate_distributed_noise

    assert round_privacy_event(None, round_index=0, survivors=5) is None  # no noise, no claim
    plan = calibrate_distributed_noise(
        target_epsilon=5.0, delta=1e-5, sample_rate=0.5, rounds=2, l2_sensitivity=1e3,
        dim=10, min_survivors=3,
    )  # fmt: skip
    assert round_privacy_event(None, round_index=0, survivors=3, plan=plan) == plan.round_event(1)
    with pytest.raises(AbortRound, match="t_min=3"):
        round_privacy_event(None, round_index=0, survivors=2, plan=plan)
