"""The one-run audit of Steinke, Nasr, Jagielski (2023) and the Clopper-Pearson threshold check.

Controls: the paper's cap (about 5.8 with 1000 canaries at 95% even if every guess is right),
monotonicity, chance-level guesses give 0, randomised response at a known epsilon is never
over-certified, and a non-private mechanism is flagged.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from privacy.errors import InvalidParameterError
from privacy.one_run_audit import (
    check_dp_thresholds,
    epsilon_lower_bound,
    max_epsilon_lower_bound,
    one_run_audit,
    one_run_p_value,
)


def test_cap_with_1000_canaries_is_about_5_8() -> None:
    cap = max_epsilon_lower_bound(1000, 1000, 0.0, 0.95)
    assert cap == pytest.approx(math.log(0.05 ** (1 / 1000) / (1 - 0.05 ** (1 / 1000))), rel=1e-6)
    assert cap == pytest.approx(5.8, abs=0.05)
    assert max_epsilon_lower_bound(1000, 1000, 1e-5, 0.95) <= cap  # delta only lowers it


def test_pure_dp_p_value_is_the_binomial_tail() -> None:
    q = 1 / (1 + math.exp(-1.0))
    assert one_run_p_value(100, 50, 40, 1.0, 0.0) == pytest.approx(stats.binom.sf(39, 50, q))


def test_delta_term_matches_the_definition() -> None:
    m, r, v, eps, delta = 200, 40, 30, 0.5, 1e-3
    q = 1 / (1 + math.exp(-eps))
    alpha = max(
        sum(stats.binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i for i in range(1, v + 1)
    )
    expected = stats.binom.sf(v - 1, r, q) + 2 * m * delta * alpha
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(min(1.0, expected))


def test_bound_is_monotone() -> None:
    in_v = [epsilon_lower_bound(1000, 200, v, 1e-5) for v in range(100, 201, 10)]
    assert all(a <= b for a, b in itertools.pairwise(in_v))
    in_conf = [epsilon_lower_bound(1000, 200, 180, 1e-5, c) for c in (0.8, 0.9, 0.95, 0.99)]
    assert all(a >= b for a, b in itertools.pairwise(in_conf))
    in_delta = [epsilon_lower_bound(1000, 200, 180, d) for d in (0.0, 1e-6, 1e-5, 1e-4)]
    assert all(a >= b for a, b in itertools.pairwise(in_delta))
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0  # chance level certifies nothing


def test_the_bound_rejects_exactly_the_epsilons_below_it() -> None:
    eps = epsilon_lower_bound(500, 100, 85, 1e-5)
    assert one_run_p_value(500, 100, 85, eps * 0.999, 1e-5) < 0.05
    assert one_run_p_value(500, 100, 85, eps * 1.01, 1e-5) >= 0.05


def test_randomised_response_is_never_over_certified() -> None:
    # eps-DP randomised response on the inclusion bits: the audit must stay below eps (95%).
    rng = np.random.default_rng(0)
    eps, m, over, runs = 2.0, 1000, 0, 100
    for _ in range(runs):
        bits = rng.random(m) < 0.5
        truthful = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
        reported = np.where(truthful, bits, ~bits)
        scores = reported + 0.01 * rng.random(m)  # tie-breaking noise, independent of bits
        audit = one_run_audit(scores, bits, k_plus=100, k_minus=100, delta=0.0)
        over += audit.epsilon_lower_bound > eps
    assert over <= runs * 0.05 + 3 * math.sqrt(runs * 0.05 * 0.95)  # 5% plus 3 SE


def test_non_private_mechanism_is_caught() -> None:
    rng = np.random.default_rng(1)
    bits = rng.random(1000) < 0.5
    audit = one_run_audit(bits + rng.normal(0, 0.1, 1000), bits, 200, 200, delta=1e-5)
    assert audit.correct == 400 and audit.correct_in == 200
    assert audit.epsilon_lower_bound > 3
    assert audit.epsilon_lower_bound == pytest.approx(audit.max_possible)


def test_guesses_are_top_and_bottom() -> None:
    scores = [5, 4, 3, 2, 1, 0]
    bits = [True, False, True, False, False, True]
    audit = one_run_audit(scores, bits, k_plus=2, k_minus=2, delta=0.0)
    assert (audit.correct_in, audit.correct_out, audit.guesses) == (1, 1, 4)


@pytest.mark.parametrize(("kp", "km"), [(0, 0), (4, 3), (-1, 2)])
def test_bad_guess_counts_raise(kp: int, km: int) -> None:
    with pytest.raises(InvalidParameterError):
        one_run_audit([1, 2, 3, 4, 5, 6], [True] * 3 + [False] * 3, kp, km, 0.0)


def test_threshold_check_passes_noise_and_flags_leakage() -> None:
    rng = np.random.default_rng(2)
    members = rng.random(400) < 0.5
    noise = check_dp_thresholds(rng.normal(size=400), members, epsilon=0.5, delta=1e-5)
    assert noise.ok and noise.violations == 0
    leaky = check_dp_thresholds(members + rng.normal(0, 0.2, 400), members, 1.0, 1e-5)
    assert not leaky.ok and leaky.violations > 0
    assert leaky.empirical_epsilon > 1.0
    assert leaky.worst_tpr_lower > math.exp(1.0) * leaky.worst_fpr_upper


def test_threshold_check_respects_a_dp_mechanism() -> None:
    # Gaussian mechanism scores: members ~ N(mu, 1), non-members ~ N(0, 1) is mu-GDP, hence
    # (eps, delta)-DP for eps from the GDP conversion; the check must not fire at that eps.
    rng = np.random.default_rng(3)
    mu, delta = 1.0, 1e-5
    eps = 4.0  # mu = 1 GDP is (eps, delta)-DP with delta(eps=4) ~ 1e-5 or less
    fired = 0
    for _ in range(20):
        members = rng.random(1000) < 0.5
        fired += not check_dp_thresholds(
            rng.normal(size=1000) + mu * members, members, eps, delta
        ).ok
    assert fired == 0
