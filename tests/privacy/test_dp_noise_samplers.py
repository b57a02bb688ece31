"""Integer noise samplers: exact distribution (chi-square against the true pmf), moments,
exactness of the Bernoulli(exp(-gamma)) decisions, CSPRNG by default, and controls showing that
the statistical tests reject plausible wrong samplers."""

from __future__ import annotations

import math
import secrets
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from privacy import noise
from privacy.errors import InvalidParameterError
from privacy.noise import (
    InsecureSeededRandom,
    SecretsRandom,
    sample_discrete_gaussian,
    sample_skellam,
)

N = 200_000


def discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    wide = np.arange(-int(40 * sigma) - 10, int(40 * sigma) + 11)
    norm = np.exp(-(wide.astype(float) ** 2) / (2 * sigma**2)).sum()
    return np.exp(-(support.astype(float) ** 2) / (2 * sigma**2)) / norm


def skellam_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    mu = sigma**2 / 2
    return stats.skellam.pmf(support, mu, mu)


def chi_square_pvalue(samples: np.ndarray, pmf, sigma: float) -> float:
    """Goodness of fit with every bin expecting >= 20 counts; tails pooled."""
    n = samples.size
    support = np.arange(-int(30 * sigma) - 10, int(30 * sigma) + 11)
    expected = pmf(sigma, support) * n
    keep = expected >= 20
    lo, hi = support[keep][0], support[keep][-1]
    inner = np.arange(lo, hi + 1)
    observed = np.array([np.count_nonzero(samples == k) for k in inner], dtype=float)
    exp_inner = pmf(sigma, inner) * n
    observed = np.concatenate(
        [[np.count_nonzero(samples < lo)], observed, [np.count_nonzero(samples > hi)]]
    )
    expected = np.concatenate(
        [
            [pmf(sigma, support[support < lo]).sum() * n],
            exp_inner,
            [pmf(sigma, support[support > hi]).sum() * n],
        ]
    )
    expected *= n / expected.sum()
    return float(stats.chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("sigma", [0.5, 1.5, 4.0])
def test_discrete_gaussian_matches_exact_pmf(sigma: float) -> None:
    samples = sample_discrete_gaussian(sigma, N, rng=InsecureSeededRandom(11))
    assert chi_square_pvalue(samples, discrete_gaussian_pmf, sigma) > 1e-4


def test_control_rounded_gaussian_fails_the_same_test() -> None:
    # A plausible wrong sampler: round a continuous Gaussian. Its variance is sigma^2 + 1/12.
    rng = np.random.default_rng(11)
    wrong = np.rint(rng.normal(0.0, 1.5, N)).astype(np.int64)
    assert chi_square_pvalue(wrong, discrete_gaussian_pmf, 1.5) < 1e-6


@pytest.mark.parametrize("sigma", [3.0, 50.0])
def test_discrete_gaussian_moments(sigma: float) -> None:
    samples = sample_discrete_gaussian(sigma, N, rng=InsecureSeededRandom(5))
    assert samples.dtype == np.int64
    assert abs(samples.mean()) < 5 * sigma / math.sqrt(N)
    # Variance of N_Z(0, sigma^2) equals sigma^2 within 1e-8 for sigma >= 1 (CKS Prop. 19).
    assert samples.var() / sigma**2 == pytest.approx(1.0, abs=5 * math.sqrt(2 / N))


def test_discrete_gaussian_small_sigma_variance_is_below_sigma_squared() -> None:
    samples = sample_discrete_gaussian(0.5, N, rng=InsecureSeededRandom(6))
    support = np.arange(-10, 11)
    exact = float((discrete_gaussian_pmf(0.5, support) * support**2).sum())
    assert exact < 0.25
    assert samples.var() == pytest.approx(exact, rel=5 * math.sqrt(2 / N) * 2)


@pytest.mark.parametrize("sigma", [2.0, 6.0])
def test_skellam_matches_pmf(sigma: float) -> None:
    samples = sample_skellam(sigma, N, rng=InsecureSeededRandom(3))
    assert chi_square_pvalue(samples, skellam_pmf, sigma) > 1e-4


def test_control_discrete_gaussian_is_not_skellam() -> None:
    # Same variance, different shape (Skellam has excess kurtosis 1/sigma^2): must be rejected.
    samples = sample_discrete_gaussian(2.0, N, rng=InsecureSeededRandom(3))
    assert chi_square_pvalue(samples, skellam_pmf, 2.0) < 1e-6


@pytest.mark.parametrize("sigma", [1.0, 300.0])
def test_skellam_moments(sigma: float) -> None:
    samples = sample_skellam(sigma, N, rng=InsecureSeededRandom(8))
    assert samples.dtype == np.int64
    assert abs(samples.mean()) < 5 * sigma / math.sqrt(N)
    kurtosis_excess = 1 / sigma**2
    tolerance = 5 * math.sqrt((2 + kurtosis_excess) / N)
    assert samples.var() / sigma**2 == pytest.approx(1.0, abs=tolerance)


def test_shapes_and_sizes() -> None:
    rng = InsecureSeededRandom(1)
    assert sample_discrete_gaussian(2.0, (3, 4), rng=rng).shape == (3, 4)
    assert sample_skellam(2.0, 0, rng=rng).shape == (0,)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), 1e13, "2"])
def test_invalid_sigma_is_rejected(sigma) -> None:
    with pytest.raises(InvalidParameterError, match="sigma"):
        sample_discrete_gaussian(sigma, 10)
    with pytest.raises(InvalidParameterError, match="sigma"):
        sample_skellam(sigma, 10)


def test_default_randomness_comes_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = secrets.token_bytes

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(secrets, "token_bytes", counting)
    sample_discrete_gaussian(3.0, 100)
    sample_skellam(3.0, 100)
    assert calls
    assert isinstance(noise._source(None), SecretsRandom)


def test_a_non_source_rng_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="random_bytes"):
        sample_discrete_gaussian(1.0, 10, rng=np.random.default_rng(0))  # type: ignore[arg-type]


class ScriptedBytes:
    """A source that returns the given 64-bit words, little-endian."""

    def __init__(self, words: list[int]) -> None:
        self.words = list(words)

    def random_bytes(self, n: int) -> bytes:
        out = b"".join(self.words.pop(0).to_bytes(8, "little") for _ in range(n // 8))
        return out


@pytest.mark.parametrize("next_word", [0, 2**64 - 1, 0x8000_0000_0000_0000])
def test_undecided_comparison_is_resolved_exactly(next_word: int) -> None:
    # U's first 53 bits equal exp(-1)'s: floats cannot decide U < exp(-1); the exact path must.
    with localcontext() as ctx:
        ctx.prec = 80
        e_inv = Decimal(-1).exp()
    prefix = int(e_inv * (1 << 53))
    decided = noise._exact_uniform_below_exp(ScriptedBytes([next_word]), prefix, 53, Fraction(1))
    u = Fraction((prefix << 64) | next_word, 1 << 117)
    assert decided == (u < Fraction(e_inv))


def test_forced_exact_path_has_the_right_frequency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noise, "_MARGIN", 10.0)  # no float decision is ever safe now
    gamma = 0.7
    draws = 4000
    rng = InsecureSeededRandom(2)
    hits = noise._bernoulli_exp_neg(rng, np.full(draws, gamma), lambda _i: Fraction(7, 10)).sum()
    p = math.exp(-gamma)
    assert abs(hits / draws - p) < 4.5 * math.sqrt(p * (1 - p) / draws)


def test_forced_exact_path_samples_the_discrete_gaussian(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noise, "_MARGIN", 10.0)
    samples = sample_discrete_gaussian(1.5, 3000, rng=InsecureSeededRandom(4))
    assert chi_square_pvalue(samples, discrete_gaussian_pmf, 1.5) > 1e-4


@pytest.mark.parametrize("bound", [3, 7, 8, 1000])
def test_uniform_integers_are_unbiased(bound: int) -> None:
    values = noise._uniform_below(InsecureSeededRandom(9), 70_000, bound)
    counts = np.bincount(values, minlength=bound)
    assert counts.size == bound
    assert stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize("mu", [0.3, 7.0, 2500.0, 6.1e14])
def test_poisson_inversion_returns_the_smallest_k_with_cdf_at_least_u(
    mu: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The galloping search finds exactly the inverse CDF, also at user-level DP scales.

    mu = 6.1e14 is Skellam at sigma 3.5e7, where stepping by one from the start used to stall
    for minutes on the extreme uniforms (the start is off by many units in the tails); the check
    is the definition of inversion, so a search that stopped early or overshot fails it.
    """
    from scipy import special

    tails = np.array([0, 1 << 12, 2**64 - 1, 2**64 - (1 << 12)], dtype=np.uint64)  # |z| ~ 8
    words = np.concatenate(
        [tails, np.random.default_rng(7).integers(0, 2**64, size=4000, dtype=np.uint64)]
    )
    monkeypatch.setattr(noise, "_uint64", lambda src, n: words[:n])
    k = noise._poisson_by_inversion(None, words.size, mu).astype(np.float64)
    u = ((words >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52
    lower = u < 0.5

    def at_least(kk: np.ndarray) -> np.ndarray:
        return np.where(lower, special.pdtr(kk, mu) >= u, special.pdtrc(kk, mu) <= 1.0 - u) & (
            kk >= 0
        )

    assert at_least(k).all()
    assert not at_least(k - 1.0).any()
    assert abs(k.mean() - mu) < 5 * math.sqrt(mu / words.size) + 1e-9
