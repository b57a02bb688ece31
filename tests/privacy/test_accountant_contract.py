"""Accountants: a contract every implementation inherits, pinned epsilons, cross-checks.

The contract follows dp_accounting's ``privacy_accountant_test.py``: one abstract test class,
one concrete subclass per implementation. Pinned values are PRIVACY.md section 3 (Opacus 1.6,
delta 1e-5); the analytic oracle for full participation is the exact privacy profile of the
Gaussian mechanism (Balle and Wang 2018, Theorem 8).
"""

from __future__ import annotations

import math

import pytest
from scipy import optimize, stats

from privacy.accountants import (
    ACCOUNTANTS,
    Accountant,
    calibrate_noise_multiplier,
    canonical_name,
    compute_epsilon,
    group_components,
    make_accountant,
)
from privacy.errors import CalibrationError, InvalidParameterError, UnsupportedEventError
from privacy.events import (
    ComposedEvent,
    DistributedNoiseEvent,
    GaussianEvent,
    SampledGaussianEvent,
)

DELTA = 1e-5
BASE = SampledGaussianEvent(2.0, 0.1, 10)


class AccountantContract:
    """Properties every accountant must have. Subclasses set ``name``."""

    name: str

    def make(self) -> Accountant:
        return make_accountant(self.name)

    def eps(self, *events, delta: float = DELTA) -> float:
        acc = self.make()
        for event in events:
            acc.compose(event)
        return acc.get_epsilon(delta)

    def test_name_is_canonical(self) -> None:
        acc = self.make()
        assert acc.name == self.name
        assert canonical_name(self.name.upper()) == self.name

    def test_fresh_accountant_spends_nothing(self) -> None:
        acc = self.make()
        assert acc.get_epsilon(DELTA) == 0.0
        assert len(acc) == 0

    def test_epsilon_grows_with_steps(self) -> None:
        values = [self.eps(SampledGaussianEvent(2.0, 0.1, t)) for t in (1, 10, 50)]
        assert 0 < values[0] < values[1] < values[2]

    def test_epsilon_shrinks_with_noise(self) -> None:
        values = [self.eps(SampledGaussianEvent(z, 0.1, 10)) for z in (1.0, 2.0, 4.0)]
        assert values[0] > values[1] > values[2] > 0

    def test_epsilon_grows_with_sample_rate(self) -> None:
        values = [self.eps(SampledGaussianEvent(2.0, q, 10)) for q in (0.01, 0.1, 1.0)]
        assert values[0] < values[1] < values[2]

    def test_epsilon_shrinks_with_delta(self) -> None:
        assert self.eps(BASE, delta=1e-3) < self.eps(BASE, delta=1e-5) < self.eps(BASE, delta=1e-8)

    def test_composition_is_additive_in_steps(self) -> None:
        twice = self.make().compose(BASE).compose(BASE)
        counted = self.make().compose(BASE, count=2)
        one = self.make().compose(SampledGaussianEvent(2.0, 0.1, 20))
        assert twice.get_epsilon(DELTA) == pytest.approx(one.get_epsilon(DELTA), rel=1e-9)
        assert counted.get_epsilon(DELTA) == pytest.approx(one.get_epsilon(DELTA), rel=1e-9)

    def test_order_of_events_does_not_matter(self) -> None:
        a, b = BASE, GaussianEvent(10.0)
        assert self.eps(a, b) == pytest.approx(self.eps(b, a), rel=1e-9)
        assert self.eps(ComposedEvent((a, b))) == pytest.approx(self.eps(a, b), rel=1e-9)

    def test_heterogeneous_composition_exceeds_each_part(self) -> None:
        a, b = BASE, SampledGaussianEvent(1.0, 0.01, 50)
        assert self.eps(a, b) > max(self.eps(a), self.eps(b))

    def test_gaussian_event_is_full_batch_step(self) -> None:
        assert self.eps(GaussianEvent(3.0)) == pytest.approx(
            self.eps(SampledGaussianEvent(3.0, 1.0, 1)), rel=1e-9
        )

    def test_epsilon_after_is_a_pure_query(self) -> None:
        acc = self.make().compose(BASE)
        before = acc.get_epsilon(DELTA)
        after = acc.epsilon_after(BASE, DELTA)
        assert after > before
        assert acc.get_epsilon(DELTA) == before
        assert len(acc) == 1
        assert after == pytest.approx(acc.compose(BASE).get_epsilon(DELTA), rel=1e-9)

    def test_invalid_event_leaves_state_unchanged(self) -> None:
        acc = self.make().compose(BASE)
        before = acc.get_epsilon(DELTA)
        with pytest.raises(UnsupportedEventError):
            acc.compose("not an event")  # type: ignore[arg-type]
        with pytest.raises(InvalidParameterError):
            acc.compose(BASE, count=0)
        assert len(acc) == 1
        assert acc.get_epsilon(DELTA) == before

    @pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, float("nan"), "1e-5"])
    def test_invalid_delta_is_rejected(self, delta) -> None:
        with pytest.raises(InvalidParameterError, match="delta"):
            self.make().compose(BASE).get_epsilon(delta)

    def test_copy_is_independent(self) -> None:
        acc = self.make().compose(BASE)
        clone = acc.copy()
        clone.compose(BASE)
        assert len(acc) == 1 and len(clone) == 2
        assert clone.get_epsilon(DELTA) > acc.get_epsilon(DELTA)

    def test_distributed_event_with_large_noise_is_the_continuous_gaussian(self) -> None:
        # sigma_c = 20 makes the discrete correction ~exp(-4000): z_eff = sqrt(t) sigma / l2.
        event = DistributedNoiseEvent("discrete_gaussian", 20.0, 4, 10, 20.0, 1000, 0.1, 10)
        assert self.eps(event) == pytest.approx(
            self.eps(SampledGaussianEvent(2.0, 0.1, 10)), rel=1e-9
        )


class TestOpacusRDPContract(AccountantContract):
    name = "rdp"


class TestOpacusPRVContract(AccountantContract):
    name = "prv"


class TestPLDContract(AccountantContract):
    name = "pld"


class TestDpAccountingRDPContract(AccountantContract):
    name = "dpa-rdp"


def test_every_implementation_has_a_contract_test() -> None:
    tested = {cls.name for cls in AccountantContract.__subclasses__()}
    assert tested == set(ACCOUNTANTS)


def test_unknown_accountant_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="unknown accountant"):
        make_accountant("gdp")


# --- pinned values (PRIVACY.md section 3) ---------------------------------------------------

PINNED = [
    # q, sigma, steps, RDP epsilon, PRV epsilon
    (256 / 60000, 1.1, 14100, 2.60, 2.40),
    (0.01, 1.0, 1000, 2.10, 1.84),
    (0.01, 1.0, 10000, 6.71, 6.20),
    (0.1, 1.0, 100, 7.90, 7.06),
    (1.0, 1.0, 100, 96.1, 91.8),
    (1.0, 5.0, 100, 10.7, 10.0),
]
ROW_IDS = [f"q={q:.3g}-z={z}-T={t}" for q, z, t, _, _ in PINNED]


@pytest.mark.parametrize(("q", "z", "steps", "rdp", "prv"), PINNED, ids=ROW_IDS)
def test_pinned_rdp_epsilon(q: float, z: float, steps: int, rdp: float, prv: float) -> None:
    assert compute_epsilon(SampledGaussianEvent(z, q, steps), DELTA, "rdp") == pytest.approx(
        rdp, rel=0.03
    )


@pytest.mark.parametrize(("q", "z", "steps", "rdp", "prv"), PINNED, ids=ROW_IDS)
def test_pinned_prv_epsilon(q: float, z: float, steps: int, rdp: float, prv: float) -> None:
    assert compute_epsilon(SampledGaussianEvent(z, q, steps), DELTA, "prv") == pytest.approx(
        prv, rel=0.03
    )


@pytest.mark.parametrize(("q", "z", "steps", "rdp", "prv"), PINNED, ids=ROW_IDS)
def test_pld_lands_near_prv(q: float, z: float, steps: int, rdp: float, prv: float) -> None:
    event = SampledGaussianEvent(z, q, steps)
    pld = compute_epsilon(event, DELTA, "pld")
    assert pld == pytest.approx(compute_epsilon(event, DELTA, "prv"), rel=0.01, abs=0.02)
    assert pld == pytest.approx(prv, rel=0.03)


@pytest.mark.parametrize(("q", "z", "steps", "rdp", "prv"), PINNED, ids=ROW_IDS)
def test_two_rdp_implementations_agree(
    q: float, z: float, steps: int, rdp: float, prv: float
) -> None:
    event = SampledGaussianEvent(z, q, steps)
    assert compute_epsilon(event, DELTA, "dpa-rdp") == pytest.approx(
        compute_epsilon(event, DELTA, "rdp"), rel=0.01
    )


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with sensitivity/sigma = mu (Balle-Wang 2018)."""

    def delta_of(eps: float) -> float:
        first = stats.norm.cdf(-eps / mu + mu / 2)
        return first - math.exp(eps + stats.norm.logcdf(-eps / mu - mu / 2))

    upper = mu * mu / 2 + 2 * mu * math.sqrt(2 * math.log(1 / delta)) + 1
    return optimize.brentq(lambda e: delta_of(e) - delta, 0.0, upper, xtol=1e-12)


@pytest.mark.parametrize(("z", "steps"), [(1.0, 100), (5.0, 100), (2.0, 10)])
def test_full_participation_matches_analytic_oracle(z: float, steps: int) -> None:
    # T full-batch Gaussian steps are one Gaussian with mu = sqrt(T) / z: an exact oracle.
    exact = _exact_gaussian_epsilon(math.sqrt(steps) / z, DELTA)
    event = SampledGaussianEvent(z, 1.0, steps)
    for name in ("prv", "pld"):
        assert compute_epsilon(event, DELTA, name) == pytest.approx(exact, rel=2e-3, abs=0.011)
    for name in ("rdp", "dpa-rdp"):
        assert exact <= compute_epsilon(event, DELTA, name) <= exact * 1.1


@pytest.mark.parametrize(
    "event",
    [
        SampledGaussianEvent(0.8, 0.02, 200),
        SampledGaussianEvent(3.0, 0.5, 20),
        ComposedEvent((SampledGaussianEvent(1.0, 0.01, 100), GaussianEvent(15.0))),
    ],
    ids=["small-q", "large-q", "dp-sgd+prior"],
)
def test_accountants_cross_check_on_fixed_settings(event) -> None:
    eps = {name: compute_epsilon(event, DELTA, name) for name in ACCOUNTANTS}
    # Tight accountants agree; RDP is an upper bound on both.
    assert eps["pld"] == pytest.approx(eps["prv"], rel=0.01, abs=0.02)
    assert eps["dpa-rdp"] == pytest.approx(eps["rdp"], rel=0.01)
    assert max(eps["prv"], eps["pld"]) <= min(eps["rdp"], eps["dpa-rdp"]) * 1.001


def test_grouping_merges_identical_parameters() -> None:
    components = BASE.gaussian_components() * 3 + GaussianEvent(4.0).gaussian_components()
    assert group_components(components) == (
        (2.0, 0.1, 30),
        (4.0, 1.0, 1),
    )


# --- calibration -------------------------------------------------------------------------------


def test_calibration_matches_opacus_reference() -> None:
    # ENVIRONMENT.md: Opacus get_noise_multiplier(8, 1e-5, 0.01, 1000, "rdp") = 0.616.
    z = calibrate_noise_multiplier(target_epsilon=8, delta=DELTA, sample_rate=0.01, steps=1000)
    assert z == pytest.approx(0.616, rel=0.01)


@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_calibrated_noise_is_minimal_and_within_budget(name: str) -> None:
    target, q, steps = 3.0, 0.1, 50
    z = calibrate_noise_multiplier(
        target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps, accountant=name
    )
    acc = make_accountant(name)
    assert acc.epsilon_after(SampledGaussianEvent(z, q, steps), DELTA) <= target
    assert acc.epsilon_after(SampledGaussianEvent(z * 0.995, q, steps), DELTA) > target


def test_tight_accountant_needs_less_noise_than_rdp() -> None:
    kwargs = {"target_epsilon": 3.0, "delta": DELTA, "sample_rate": 0.1, "steps": 50}
    assert calibrate_noise_multiplier(**kwargs, accountant="prv") < calibrate_noise_multiplier(
        **kwargs, accountant="rdp"
    )


def test_unreachable_target_raises() -> None:
    with pytest.raises(CalibrationError, match="out of reach"):
        calibrate_noise_multiplier(target_epsilon=1e-7, delta=DELTA, sample_rate=1.0, steps=10)


def test_calibration_validates_inputs() -> None:
    with pytest.raises(InvalidParameterError, match="sample_rate"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=2.0, steps=10)
    with pytest.raises(InvalidParameterError, match="target epsilon"):
        calibrate_noise_multiplier(target_epsilon=-1.0, delta=DELTA, sample_rate=0.1, steps=10)
