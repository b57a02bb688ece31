"""Distributed DP: calibration to t_min, Gaussian-equivalent bounds, accounting, clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privacy.accountants import compute_epsilon
from privacy.discrete_bounds import (
    ddg_effective_noise_multiplier,
    ddg_tau,
    integer_l1_sensitivity,
    quantized_l2_sensitivity,
    skellam_effective_noise_multiplier,
)
from privacy.distributed import (
    InsecureSeededRandom,
    calibrate_distributed_noise,
    clip_update,
    distributed_epsilon,
    l2_norm,
    per_client_sigma,
    sample_noise,
)
from privacy.errors import InvalidParameterError
from privacy.events import DistributedNoiseEvent, SampledGaussianEvent

DELTA = 1e-5


def test_per_client_sigma_is_calibrated_to_t_min() -> None:
    assert per_client_sigma(30.0, 9) == pytest.approx(10.0)
    assert per_client_sigma(5.0, 1) == 5.0
    with pytest.raises(InvalidParameterError, match="min_survivors"):
        per_client_sigma(5.0, 0)
    with pytest.raises(InvalidParameterError, match="total_sigma"):
        per_client_sigma(-5.0, 3)


@pytest.mark.parametrize("noise", ["discrete_gaussian", "skellam"])
def test_sum_of_t_min_shares_has_the_target_sigma(noise: str) -> None:
    total, t_min, coords = 40.0, 5, 100_000
    sigma_c = per_client_sigma(total, t_min)
    rng = InsecureSeededRandom(21)
    shares = [sample_noise(noise, sigma_c, coords, rng=rng) for _ in range(t_min)]
    summed = np.sum(shares, axis=0)
    assert summed.dtype == np.int64
    assert summed.std() == pytest.approx(total, rel=5 * math.sqrt(1 / (2 * coords)))


def test_control_calibrating_to_n_leaves_too_little_noise_after_dropouts() -> None:
    # Calibrating to the expected n = 20 clients and then losing 15 of them leaves half the
    # standard deviation: exactly why calibration uses t_min.
    total, n, survivors, coords = 40.0, 20, 5, 50_000
    rng = InsecureSeededRandom(22)
    shares = [
        sample_noise("discrete_gaussian", per_client_sigma(total, n), coords, rng=rng)
        for _ in range(survivors)
    ]
    assert np.sum(shares, axis=0).std() == pytest.approx(total / 2, rel=0.02)


def test_tau_formula_and_monotonicity() -> None:
    sigma = 0.8
    direct = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, 50))
    assert ddg_tau(sigma, 50) == pytest.approx(direct, rel=1e-12)
    assert ddg_tau(sigma, 1) == 0.0
    assert ddg_tau(sigma, 10) < ddg_tau(sigma, 100)
    assert ddg_tau(3.0, 1000) < 1e-30


def test_ddg_z_eff_is_the_continuous_one_for_large_sigma() -> None:
    z = ddg_effective_noise_multiplier(
        local_sigma=10.0, min_survivors=16, max_summands=100, l2_sensitivity=20.0, dim=10**6
    )
    assert z == pytest.approx(math.sqrt(16) * 10.0 / 20.0, rel=1e-12)


def test_ddg_z_eff_is_penalised_for_small_sigma() -> None:
    kwargs = {"min_survivors": 16, "max_summands": 100, "l2_sensitivity": 3.0, "dim": 10**5}
    z = ddg_effective_noise_multiplier(local_sigma=0.6, **kwargs)
    assert z < math.sqrt(16) * 0.6 / 3.0
    with pytest.raises(InvalidParameterError, match="max_summands"):
        ddg_effective_noise_multiplier(
            local_sigma=1.0, min_survivors=5, max_summands=4, l2_sensitivity=1.0, dim=1
        )


def test_skellam_z_eff_approaches_continuous_and_is_conservative() -> None:
    for sigma in (1.0, 10.0, 1000.0):
        z = skellam_effective_noise_multiplier(
            local_sigma=sigma, min_survivors=4, l2_sensitivity=5.0, dim=1000
        )
        continuous = 2.0 * sigma / 5.0
        assert z < continuous
    assert z == pytest.approx(continuous, rel=1e-3)


def test_quantized_sensitivity_bounds() -> None:
    plain = quantized_l2_sensitivity(clip_norm=1.0, scale=100.0, dim=10_000, beta=0.0)
    assert plain == pytest.approx(100.0 + 100.0)
    conditional = quantized_l2_sensitivity(clip_norm=1.0, scale=100.0, dim=10_000)
    assert 100.0 < conditional < plain
    assert integer_l1_sensitivity(3.0, 100) == pytest.approx(9.0)
    assert integer_l1_sensitivity(30.0, 100) == pytest.approx(300.0)
    with pytest.raises(InvalidParameterError, match="beta"):
        quantized_l2_sensitivity(clip_norm=1.0, scale=1.0, dim=1, beta=1.0)


def test_gaussian_accounting_helper_matches_the_accountant() -> None:
    eps = distributed_epsilon(
        central_sigma=30.0,
        l2_sensitivity=20.0,
        sample_rate=0.1,
        rounds=50,
        delta=DELTA,
        noise="gaussian",
    )
    assert eps == compute_epsilon(SampledGaussianEvent(1.5, 0.1, 50), DELTA)


@pytest.mark.parametrize("noise", ["discrete_gaussian", "skellam"])
def test_discrete_accounting_is_at_least_the_continuous(noise: str) -> None:
    common = {
        "l2_sensitivity": 3.0,
        "sample_rate": 0.1,
        "rounds": 50,
        "delta": DELTA,
        "min_survivors": 8,
        "max_summands": 20,
        "dim": 10**5,
    }
    small = distributed_epsilon(central_sigma=4.0, noise=noise, **common)
    continuous_small = distributed_epsilon(central_sigma=4.0, noise="gaussian", **common)
    assert small > continuous_small
    big = distributed_epsilon(
        central_sigma=4000.0,
        noise=noise,
        l1_sensitivity=None,
        **{**common, "l2_sensitivity": 3000.0},
    )
    continuous_big = distributed_epsilon(
        central_sigma=4000.0, noise="gaussian", **{**common, "l2_sensitivity": 3000.0}
    )
    assert big == pytest.approx(continuous_big, rel=1e-3)


@pytest.mark.parametrize("noise", ["discrete_gaussian", "skellam"])
def test_calibration_meets_the_target(noise: str) -> None:
    plan = calibrate_distributed_noise(
        target_epsilon=4.0,
        delta=DELTA,
        sample_rate=0.1,
        rounds=100,
        l2_sensitivity=3.0,
        dim=10**5,
        min_survivors=8,
        max_summands=20,
        noise=noise,
    )
    assert 0.97 * 4.0 <= plan.epsilon <= 4.0
    assert plan.total_sigma == pytest.approx(plan.local_sigma * math.sqrt(8))
    event = plan.round_event()
    assert isinstance(event, DistributedNoiseEvent) and event.steps == 1
    assert compute_epsilon(plan.round_event(steps=100), DELTA) == pytest.approx(plan.epsilon)


def test_clip_scales_down_to_the_norm() -> None:
    update = {"a": np.full((3, 4), 2.0, dtype=np.float32), "b": np.array([3.0, -4.0])}
    result = clip_update(update, 1.0)
    assert result.clipped and result.norm_before == pytest.approx(math.sqrt(48 + 25))
    assert l2_norm(result.update) <= 1.0
    assert l2_norm(result.update) == pytest.approx(1.0, rel=1e-6)
    assert result.update["a"].dtype == np.float32
    ratio = result.update["b"] / update["b"]
    assert ratio[0] == pytest.approx(ratio[1])  # direction kept
    assert update["a"][0, 0] == 2.0  # input untouched


def test_clip_leaves_small_updates_alone() -> None:
    update = {"w": np.array([0.3, 0.4])}
    result = clip_update(update, 1.0)
    assert not result.clipped and result.factor == 1.0
    np.testing.assert_array_equal(result.update["w"], update["w"])
    assert result.update["w"] is not update["w"]


def test_clip_refuses_non_finite_updates() -> None:
    with pytest.raises(InvalidParameterError, match="non-finite"):
        clip_update({"w": np.array([1.0, np.nan])}, 1.0)
    with pytest.raises(InvalidParameterError, match="max_norm"):
        clip_update({"w": np.array([1.0])}, 0.0)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.integers(1, 50),
        elements=st.floats(-1e6, 1e6, allow_nan=False, width=32),
    ),
    st.floats(1e-3, 1e3),
)
def test_clipped_norm_never_exceeds_the_bound(array: np.ndarray, max_norm: float) -> None:
    result = clip_update({"w": array}, max_norm)
    assert l2_norm(result.update) <= max_norm
