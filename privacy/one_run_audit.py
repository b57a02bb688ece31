"""Empirical lower bounds on epsilon: the one-run audit and a Clopper-Pearson threshold check.

One-run audit (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023). m canaries are each included in the training data independently with probability
1/2; ONE model is trained; the auditor scores every canary, guesses "in" for the k+ highest
scores and "out" for the k- lowest, and abstains on the rest. If training is (eps, delta)-DP,
the number of correct guesses W among the r = k+ + k- guesses is stochastically dominated by
Binomial(r, e^eps / (1 + e^eps)) up to a delta term (their Theorem 5.2, with the tail of
Proposition 5.7 / the p-value algorithm of their appendix):

    P[W >= v] <= P[Binom(r, q) >= v] + 2 m delta * max_{i=1..v} P[v - i <= Binom(r, q) < v] / i,
    q = e^eps / (1 + e^eps).

The audited epsilon at confidence 1 - beta is the largest eps whose p-value is still below beta:
every smaller eps is rejected. Two facts the tests pin down:

* k+ and k- must be fixed BEFORE looking at the scores. Trying many (k+, k-) and keeping the best
  is a multiple comparison that overstates the bound; this module takes them as arguments and
  never searches.
* The bound is capped by m even when every guess is right: with m = r = 1000 and beta = 0.05 it
  is about 5.8 (q^1000 >= 0.05 forces q <= 0.05^(1/1000)), so a one-run audit with few canaries
  can never certify large epsilons.

Clopper-Pearson check (Jagielski, Ullman, Oprea 2020, "Auditing Differentially Private Machine
Learning: How Private is Private SGD?", section 3): every threshold test of an (eps, delta)-DP
mechanism satisfies TPR <= e^eps FPR + delta. With one-sided Clopper-Pearson bounds (a lower bound
on TPR, an upper bound on FPR, Bonferroni-corrected over all thresholds and both intervals), a
threshold whose lower TPR exceeds e^eps times the upper FPR plus delta is statistically
significant evidence that the claimed guarantee does not hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from privacy.errors import InvalidParameterError
from privacy.mia import roc_curve

_BISECTION_STEPS = 60


def _check_counts(m: int, r: int, v: int) -> None:
    for name, value in (("m", m), ("r", r), ("v", v)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InvalidParameterError(f"{name} must be an integer, got {value!r}")
    if not 0 <= v <= r <= m:
        raise InvalidParameterError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")


def _check_prob(name: str, value: float, *, open_low: bool, open_high: bool) -> None:
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    if not (math.isfinite(value) and low_ok and high_ok):
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise InvalidParameterError(f"{name} must be in {lo}0, 1{hi}, got {value!r}")


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] under the (epsilon, delta)-DP null hypothesis.

    Steinke et al. (2023) Theorem 5.2 with the delta tail of their appendix algorithm: the
    binomial tail of epsilon-DP randomised response plus 2 m delta times the largest average
    probability mass just below v.

    Args:
        m: canaries, each included independently with probability 1/2.
        r: guesses made (k+ + k-), abstentions excluded.
        v: correct guesses.
        epsilon: the null hypothesis' epsilon (>= 0).
        delta: the null hypothesis' delta, in [0, 1].
    """
    _check_counts(m, r, v)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise InvalidParameterError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    _check_prob("delta", delta, open_low=False, open_high=False)
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomised response
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binom(r, q) >= v]
    if delta == 0 or v == 0:
        return min(1.0, tail)
    # P[v - i <= Binom(r, q) < v] for i = 1..v, as cumulative sums of the pmf below v
    pmf_below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)
    mass = np.cumsum(pmf_below)
    alpha = float(np.max(mass / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon rejected at level 1 - ``confidence`` (0 when even epsilon = 0 is not).

    The p-value grows with epsilon, so bisection finds the boundary; the result is conservative
    (the lower end of the final bracket).
    """
    _check_counts(m, r, v)
    _check_prob("confidence", confidence, open_low=True, open_high=True)
    beta = 1.0 - confidence
    if one_run_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, 2.0 * hi
        if hi > 1e4:  # pragma: no cover - only for absurd inputs (delta = 0, r huge, v = r)
            return lo
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if one_run_p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def max_epsilon_lower_bound(m: int, r: int, delta: float, confidence: float = 0.95) -> float:
    """The best bound this design can ever give: every one of the r guesses right."""
    return epsilon_lower_bound(m, r, r, delta, confidence)


@dataclass(frozen=True)
class OneRunAudit:
    """The outcome of one one-run audit (JSON-ready through :meth:`to_dict`)."""

    epsilon_lower_bound: float
    m: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    correct_in: int
    correct_out: int
    delta: float
    confidence: float
    max_possible: float

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def one_run_audit(
    scores: Sequence[float],
    included: Sequence[bool],
    k_plus: int,
    k_minus: int,
    delta: float,
    confidence: float = 0.95,
) -> OneRunAudit:
    """Guess "in" for the top ``k_plus`` scores and "out" for the bottom ``k_minus``; bound eps.

    Ties are broken by canary index (stable sort), which is independent of membership because
    inclusion bits are drawn independently of the canary order.

    Args:
        scores: one score per canary, higher = more member-like.
        included: the true inclusion bits (True = the canary was in the training data).
        k_plus: number of "in" guesses, fixed before scoring.
        k_minus: number of "out" guesses, fixed before scoring.
        delta: the delta of the guarantee being audited.
        confidence: 1 - beta of the lower bound.

    Raises:
        InvalidParameterError: mismatched lengths, k+ + k- > m, negative k, non-finite scores.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    bits = np.asarray(included, dtype=bool).reshape(-1)
    if s.shape != bits.shape:
        raise InvalidParameterError(f"{s.size} scores but {bits.size} inclusion bits")
    if not np.all(np.isfinite(s)):
        raise InvalidParameterError("scores must be finite")
    m = int(s.size)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m or k_plus + k_minus == 0:
        raise InvalidParameterError(
            f"need k_plus, k_minus >= 0 and 0 < k_plus + k_minus <= m={m}, "
            f"got k_plus={k_plus}, k_minus={k_minus}"
        )
    order = np.argsort(-s, kind="stable")
    top, bottom = order[:k_plus], order[m - k_minus :] if k_minus else order[:0]
    correct_in = int(bits[top].sum())
    correct_out = int((~bits[bottom]).sum())
    r, v = k_plus + k_minus, correct_in + correct_out
    return OneRunAudit(
        epsilon_lower_bound=epsilon_lower_bound(m, r, v, delta, confidence),
        m=m,
        k_plus=k_plus,
        k_minus=k_minus,
        guesses=r,
        correct=v,
        correct_in=correct_in,
        correct_out=correct_out,
        delta=delta,
        confidence=confidence,
        max_possible=max_epsilon_lower_bound(m, r, delta, confidence),
    )


@dataclass(frozen=True)
class ThresholdCheck:
    """Result of the Clopper-Pearson check of TPR <= e^eps FPR + delta at every threshold."""

    ok: bool
    epsilon: float
    delta: float
    confidence: float
    thresholds: int
    violations: int
    worst_threshold: float | None
    worst_tpr_lower: float
    worst_fpr_upper: float
    empirical_epsilon: float  # max over thresholds of log((TPR_lo - delta) / FPR_hi), >= 0

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return dict(self.__dict__)


def clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion."""
    k = np.asarray(successes, dtype=np.float64)
    out = np.zeros_like(k)
    pos = k > 0
    out[pos] = stats.beta.ppf(alpha, k[pos], trials - k[pos] + 1)
    return out


def clopper_pearson_upper(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper bound of a binomial proportion."""
    k = np.asarray(successes, dtype=np.float64)
    out = np.ones_like(k)
    below = k < trials
    out[below] = stats.beta.ppf(1 - alpha, k[below] + 1, trials - k[below])
    return out


def check_dp_thresholds(
    scores: Sequence[float],
    members: Sequence[bool],
    epsilon: float,
    delta: float,
    confidence: float = 0.95,
) -> ThresholdCheck:
    """Test TPR <= e^eps FPR + delta at every threshold with one-sided Clopper-Pearson bounds.

    Each threshold contributes two one-sided intervals; both are Bonferroni-corrected over all
    thresholds, so the whole check wrongly fails a truly (eps, delta)-DP mechanism with
    probability at most 1 - ``confidence`` (a false alarm in CI is a real alarm in expectation).

    Returns:
        :class:`ThresholdCheck` with ``ok`` False when some threshold violates the inequality,
        and the Clopper-Pearson empirical epsilon (Jagielski et al. 2020) of the best threshold.
    """
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise InvalidParameterError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    _check_prob("delta", delta, open_low=False, open_high=False)
    _check_prob("confidence", confidence, open_low=True, open_high=True)
    roc = roc_curve(scores, members)
    # skip the trivial "everything out" point; keep every real threshold
    tp = np.rint(roc.tpr[1:] * roc.n_members)
    fp = np.rint(roc.fpr[1:] * roc.n_nonmembers)
    n_thr = int(tp.size)
    alpha = (1.0 - confidence) / (2.0 * n_thr)
    tpr_lo = clopper_pearson_lower(tp, roc.n_members, alpha)
    fpr_hi = clopper_pearson_upper(fp, roc.n_nonmembers, alpha)
    slack = tpr_lo - (math.exp(epsilon) * fpr_hi + delta)
    worst = int(np.argmax(slack))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tpr_lo > delta, (tpr_lo - delta) / fpr_hi, 0.0)
    emp = float(np.log(ratio.max())) if ratio.max() > 1.0 else 0.0
    return ThresholdCheck(
        ok=bool(slack.max() <= 0),
        epsilon=epsilon,
        delta=delta,
        confidence=confidence,
        thresholds=n_thr,
        violations=int((slack > 0).sum()),
        worst_threshold=float(roc.thresholds[1:][worst]),
        worst_tpr_lower=float(tpr_lo[worst]),
        worst_fpr_upper=float(fpr_hi[worst]),
        empirical_epsilon=emp,
    )


__all__ = [
    "OneRunAudit",
    "ThresholdCheck",
    "check_dp_thresholds",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "epsilon_lower_bound",
    "max_epsilon_lower_bound",
    "one_run_audit",
    "one_run_p_value",
]
