"""The client's privacy policy: what an honest server sends passes, each weaker field is refused
by name, and the same request passes a policy relaxed for it (the control: the check can fail)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from fedvpa_secure.client.policy import (
    PolicyViolation,
    PrivacyPolicy,
    check_secagg,
    check_user_dp,
    record_dp_config,
)
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.secagg import SecAggConfig
from fedvpa_secure.secagg.degree import degree_failure_bound, min_secure_degree
from fedvpa_secure.train.dp_config import DPConfig, UserDPConfig
from fedvpa_secure.train.secure_aggregation import user_dp_round_config
from fedvpa_secure.transport.secure_update import secagg_config

DIM = 500
SAFE = PrivacyPolicy()


def _honest_round(n: int = 5, epsilon: float = 8.0, rounds: int = 5, t_min: int = 4):
    """What an honest server sends for a user-level DP round (its own calibration code)."""
    user_dp = UserDPConfig(target_epsilon=epsilon, min_survivors=t_min, clip_norm=1.0)
    config, plan = user_dp_round_config(
        user_dp, n_clients=n, max_clients=n, dim=DIM, sample_rate=1.0, rounds=rounds
    )
    share = SimpleNamespace(
        clip_norm=1.0,
        noise=plan.noise,
        local_sigma=plan.local_sigma,
        min_survivors=plan.min_survivors,
    )
    return config, share


def _refused(field: str, fn, *args) -> PolicyViolation:
    with pytest.raises(PolicyViolation) as info:
        fn(*args)
    assert info.value.field_name == field
    assert field in str(info.value) and "policy allows" in str(info.value)
    return info.value


def test_an_honest_user_dp_round_passes_the_default_policy() -> None:
    config, share = _honest_round()
    check_secagg(SAFE, config)
    event = check_user_dp(SAFE, share, config, DIM)
    assert event is not None and event.sample_rate == 1.0
    assert event.effective_noise_multiplier >= SAFE.user_noise_floor() * 0.999


def test_no_user_level_noise_is_refused_unless_the_policy_allows_it() -> None:
    config, _ = _honest_round()
    _refused("user_dp", check_user_dp, SAFE, None, config, DIM)
    assert check_user_dp(replace(SAFE, require_user_dp=False), None, config, DIM) is None


def test_a_tiny_sigma_is_refused_and_passes_only_a_huge_budget() -> None:
    config, share = _honest_round()
    tiny = SimpleNamespace(**{**vars(share), "local_sigma": 1e-300})
    _refused("user_dp.local_sigma", check_user_dp, SAFE, tiny, config, DIM)
    # a server that plans epsilon 1000 over the run sends a much smaller sigma
    config_1000, share_1000 = _honest_round(epsilon=1000.0)
    violation = _refused("user_dp.local_sigma", check_user_dp, SAFE, share_1000, config_1000, DIM)
    assert "noise multiplier" in violation.allowed
    generous = replace(SAFE, user_epsilon=1000.0)
    assert check_user_dp(generous, share_1000, config_1000, DIM) is not None


@pytest.mark.parametrize(
    ("field", "change", "relax"),
    [
        ("user_dp.clip_norm", {"clip_norm": 4.0}, {"user_max_clip": 4.0}),
        ("user_dp.min_survivors", {"min_survivors": 3}, {"user_min_survivors": 3}),
        ("user_dp.noise", {"noise": "gaussian"}, None),
    ],
)
def test_weaker_share_fields_are_refused_by_name(field, change, relax) -> None:
    config, share = _honest_round()
    weaker = SimpleNamespace(**{**vars(share), **change})
    _refused(field, check_user_dp, SAFE, weaker, config, DIM)
    if relax is not None:  # control: the same share under a policy that allows it
        config3, share3 = _honest_round(t_min=3) if "min_survivors" in relax else (config, share)
        weaker = SimpleNamespace(**{**vars(share3), **change})
        assert (
            check_user_dp(replace(SAFE, **relax, user_epsilon=50.0), weaker, config3, DIM)
            is not None
        )


def test_a_threshold_below_t_min_is_refused() -> None:
    config, share = _honest_round(n=10, t_min=9)
    lowered = replace(config, threshold=7, neighbour_threshold=None)
    _refused("secagg.threshold", check_user_dp, SAFE, share, lowered, DIM)


def _plain_config(n: int, **fields) -> SecAggConfig:
    base = secagg_config(
        n,
        threshold=0,
        min_clients=3,
        hardened=True,
        delta_clip=16.0,
        prior_clip=16.0,
        stage_deadline_s=30.0,
    )
    return replace(base, **fields)


def test_secure_aggregation_parameters_below_the_floor_are_refused() -> None:
    check_secagg(SAFE, _plain_config(5))
    _refused("secagg.hardened", check_secagg, SAFE, _plain_config(5, hardened=False))
    _refused("secagg.n_clients", check_secagg, SAFE, _plain_config(3))
    relaxed = replace(SAFE, require_hardened=False, min_clients=3, min_threshold=2)
    check_secagg(relaxed, _plain_config(5, hardened=False))  # control
    check_secagg(relaxed, _plain_config(3))


def _graph(n: int, degree: int) -> SecAggConfig:
    return _plain_config(n, degree=degree, neighbour_threshold=None)


def test_a_grindable_small_secagg_plus_degree_is_refused() -> None:
    """The attack's degree 2 (2 colluders isolate a target) is refused; the bound's degree
    passes; only the full graph for small rounds."""
    n = 300
    need = min_secure_degree(n, SAFE.colluding_fraction, SAFE.dropout_fraction, SAFE.security_bits)
    assert need is not None and 2 < need < n - 1
    _refused("secagg.degree", check_secagg, SAFE, _graph(n, 2))
    _refused(
        "secagg.degree",
        check_secagg,
        SAFE,
        _graph(n, need - 2),
    )
    check_secagg(SAFE, _graph(n, need))
    bound = degree_failure_bound(n, need, 1 / 3, 0.1, True)
    assert bound <= 2.0**-40 < degree_failure_bound(n, need - 2, 1 / 3, 0.1, True)
    assert min_secure_degree(10, 1 / 3, 0.1, 40) is None  # 10 clients: the full graph only
    _refused("secagg.degree", check_secagg, SAFE, _graph(10, 2))


def test_record_level_dp_is_tightened_never_loosened() -> None:
    server = DPConfig(target_epsilon=100.0, delta=1e-3, max_grad_norm=10.0, epsilon_max=100.0)
    mine = record_dp_config(SAFE, server)
    assert mine.target_epsilon == SAFE.record_epsilon and mine.epsilon_max == SAFE.record_epsilon
    assert mine.delta == SAFE.record_delta and mine.max_grad_norm == SAFE.record_max_clip
    strict = DPConfig(target_epsilon=1.0, delta=1e-7, max_grad_norm=0.1)
    kept = record_dp_config(SAFE, strict)
    assert (kept.target_epsilon, kept.delta, kept.max_grad_norm) == (1.0, 1e-7, 0.1)
    assert record_dp_config(SAFE, None) is None
    own = record_dp_config(replace(SAFE, require_record_dp=True), None)
    assert own.target_epsilon == SAFE.record_epsilon
    mutant = DPConfig(target_epsilon=8.0, mutant="zero-noise")
    _refused("dp.mutant", record_dp_config, SAFE, mutant)


def test_policy_table_rejects_unknown_keys_and_bad_values() -> None:
    assert PrivacyPolicy.from_table({"user_epsilon": 4.0}).user_epsilon == 4.0
    with pytest.raises(ConfigError, match="user_epsilom"):
        PrivacyPolicy.from_table({"user_epsilom": 4.0})
    for bad in ({"min_clients": 2}, {"user_delta": 1.5}, {"allow_plain": "yes"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            PrivacyPolicy.from_table(bad)
    lines = PrivacyPolicy().describe()
    assert any("plain (unmasked) rounds: refused" in line for line in lines)


def test_a_three_client_round_is_refused_because_two_colluders_unmask_the_third() -> None:
    """Attack 2c: with n=3 the sum minus the two colluders' own inputs is the third's input.

    The control runs the round the relaxed policy accepts and recovers the victim's update to
    within quantisation; the default policy refuses that configuration before any data is used.
    """
    import numpy as np

    from fedvpa_secure.secagg import run_in_process

    cfg = _plain_config(3)
    relaxed = replace(SAFE, min_clients=3, min_threshold=2)
    check_secagg(relaxed, cfg)  # control: a policy that allows it lets the round run ...
    gen = np.random.default_rng(7)
    updates = [{"delta/w": gen.uniform(-1, 1, 64).astype(np.float32)} for _ in range(3)]
    result = run_in_process(updates, SecAggConfig(n_clients=3, hardened=True))
    victim = result.tensors["delta/w"] - updates[0]["delta/w"] - updates[1]["delta/w"]
    np.testing.assert_allclose(victim, updates[2]["delta/w"], atol=1e-5)  # ... and it leaks
    _refused("secagg.n_clients", check_secagg, SAFE, cfg)


@pytest.mark.parametrize("n", [300, 1000, 5000])
def test_the_servers_default_secagg_plus_config_passes_the_default_policy(n: int) -> None:
    """Server and client size the degree with one bound, so an honest default round is taken;
    the control is the degree the server used to pick (~10 log2 n), which the policy refuses."""
    config = SecAggConfig(n_clients=n, hardened=True)
    assert config.degree is not None and config.degree < n - 1  # SecAgg+, not the full graph
    check_secagg(SAFE, config)
    import math

    old_rule = max(40, 2 * math.ceil(5 * math.log2(n)))
    _refused("secagg.degree", check_secagg, SAFE, _graph(n, old_rule))
