"""Integer noise for distributed DP: an exact discrete Gaussian sampler and a Skellam sampler.

Randomness comes from :mod:`secrets` (the OS CSPRNG) by default. The only other source is
:class:`InsecureSeededRandom`, a documented test seam that makes tests reproducible; it says
"insecure" in its name so that it cannot be mistaken for production use (compare Opacus'
``secure_mode``, which refuses a seed).

Discrete Gaussian (:func:`sample_discrete_gaussian`), exact. Canonne, Kamath, Steinke, "The
Discrete Gaussian for Differential Privacy" (NeurIPS 2020), Algorithm 3: propose ``Y`` from a
discrete Laplace of integer scale ``t = floor(sigma) + 1`` (their Algorithm 2) and accept with
probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``. Every Bernoulli(``exp(-gamma)``) is
decided *exactly*: a uniform real ``U`` is drawn bit by bit and compared with ``exp(-gamma)``.
The comparison is first made in float64 with a safety margin of ``1e-12 (1 + gamma)`` relative,
thousands of times the float error, so a float decision is always the exact decision; the rare
undecided case (probability ~1e-12 per draw) is settled with correctly rounded
:class:`decimal.Decimal` arithmetic and more random bits until the interval excludes the
threshold. ``sigma^2`` is taken as the exact rational value of the given float. So the output
distribution is exactly the discrete Gaussian, given a perfect uniform bit source (CKS 2020
section 5 explains why floating-point samplers are not). It is vectorised with numpy: all pending
coordinates advance through each rejection loop together. It is *not* constant-time (rejection
sampling leaks the number of trials through timing); on the client this matters little because
the noise is masked by secure aggregation before it leaves.

Skellam (:func:`sample_skellam`), by inversion. ``Sk = P1 - P2`` with ``P1, P2 ~ Poisson(var/2)``,
each Poisson drawn by inverting its CDF at a CSPRNG uniform (52 bits, never 0 or 1) with scipy's
regularised incomplete gamma (``pdtr``, ``pdtrc``; the upper tail is inverted through the
survival function, so both tails are resolved to ~1e-15). Not exact: the distribution is correct
up to float64 CDF error; prefer the discrete Gaussian where exactness matters. Skellam's appeal
is that sums of Skellam shares are exactly Skellam.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Protocol, runtime_checkable

import numpy as np
from scipy import special

from privacy.errors import InvalidParameterError

MAX_SIGMA = 1e12
"""Largest supported noise scale: keeps every intermediate integer far below 2**53."""

_MARGIN = 1e-12
_TINY = 1e-300


@runtime_checkable
class RandomSource(Protocol):
    """A source of uniformly random bytes."""

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` uniformly random bytes."""


class SecretsRandom:
    """The default source: :func:`secrets.token_bytes` (the OS CSPRNG)."""

    def random_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)


class InsecureSeededRandom:
    """TEST SEAM ONLY: reproducible bytes from numpy's PCG64. Never use it for real noise.

    A seeded generator makes the noise predictable to anyone who knows the seed, which voids
    the privacy guarantee; it exists so that statistical tests are deterministic.
    """

    def __init__(self, seed: int) -> None:
        self._generator = np.random.Generator(np.random.PCG64(seed))

    def random_bytes(self, n: int) -> bytes:
        return self._generator.bytes(n)


def _source(rng: RandomSource | None) -> RandomSource:
    if rng is None:
        return SecretsRandom()
    if not isinstance(rng, RandomSource):
        raise InvalidParameterError(f"rng must provide random_bytes(n), got {type(rng).__name__}")
    return rng


def _uint64(src: RandomSource, n: int) -> np.ndarray:
    return np.frombuffer(src.random_bytes(8 * n), dtype=np.uint64, count=n)


def _uniform_below(src: RandomSource, n: int, bound: int) -> np.ndarray:
    """``n`` exact uniform integers in ``[0, bound)`` (rejection sampling, no modulo bias)."""
    out = np.empty(n, dtype=np.int64)
    if bound & (bound - 1) == 0:
        return (_uint64(src, n) & np.uint64(bound - 1)).astype(np.int64)
    limit = np.uint64((2**64 // bound) * bound)
    pending = np.arange(n)
    while pending.size:
        words = _uint64(src, pending.size)
        ok = words < limit
        out[pending[ok]] = (words[ok] % np.uint64(bound)).astype(np.int64)
        pending = pending[~ok]
    return out


def _exp_neg_interval(gamma: Fraction, precision: int) -> tuple[Fraction, Fraction]:
    """An interval certainly containing ``exp(-gamma)``, from correctly rounded decimals."""
    with localcontext() as ctx:
        ctx.prec = precision
        value = (-(Decimal(gamma.numerator) / Decimal(gamma.denominator))).exp()
    # Division and exp are each correctly rounded (relative error <= 0.5 * 10**(1 - prec)); the
    # rounding of gamma moves exp(-gamma) by a factor within gamma * 10**(1 - prec). A bound of
    # (gamma + 2) * 10**(2 - prec) is ten times larger than both together.
    rel = (gamma + 2) * Fraction(1, 10 ** (precision - 2))
    centre = Fraction(value)
    return centre * (1 - rel), centre * (1 + rel)


def _exact_uniform_below_exp(src: RandomSource, prefix: int, bits: int, gamma: Fraction) -> bool:
    """Decide ``U < exp(-gamma)`` where ``U``'s first ``bits`` bits are ``prefix``, exactly."""
    if gamma == 0:
        return True
    precision = 40
    while True:
        low, high = _exp_neg_interval(gamma, precision)
        u_low, u_high = Fraction(prefix, 1 << bits), Fraction(prefix + 1, 1 << bits)
        if u_high <= low:
            return True
        if u_low >= high:
            return False
        prefix = (prefix << 64) | int(_uint64(src, 1)[0])
        bits += 64
        precision *= 2


def _bernoulli_exp_neg(
    src: RandomSource, gamma: np.ndarray, exact_gamma: Callable[[int], Fraction]
) -> np.ndarray:
    """Exact Bernoulli(``exp(-gamma_i)``) for each ``i``; ``gamma`` >= 0 as float64 values.

    ``exact_gamma(i)`` gives the exact rational ``gamma_i``; it is only called on the rare draws
    that the float comparison cannot decide.
    """
    n = gamma.shape[0]
    prefix = _uint64(src, n) >> np.uint64(11)  # 53 known bits of U
    u_low = prefix.astype(np.float64) * 2.0**-53  # exact
    u_high = (prefix + np.uint64(1)).astype(np.float64) * 2.0**-53  # exact
    p = np.exp(-gamma)
    margin = _MARGIN * (1.0 + gamma)
    accept = u_high <= p * (1.0 - margin) - _TINY
    reject = u_low >= p * (1.0 + margin) + _TINY
    for i in np.flatnonzero(~(accept | reject)):
        accept[i] = _exact_uniform_below_exp(src, int(prefix[i]), 53, exact_gamma(int(i)))
    return accept


def _random_bits(src: RandomSource, n: int) -> np.ndarray:
    return (_uint64(src, n) & np.uint64(1)).astype(bool)


def _geometric_exp_neg_one(src: RandomSource, n: int) -> np.ndarray:
    """Number of successes of Bernoulli(exp(-1)) before the first failure (CKS Algorithm 2)."""
    counts = np.zeros(n, dtype=np.int64)
    active = np.arange(n)
    one = Fraction(1)
    while active.size:
        success = _bernoulli_exp_neg(src, np.ones(active.size), lambda _i: one)
        active = active[success]
        counts[active] += 1
    return counts


def _discrete_laplace(src: RandomSource, n: int, t: int) -> np.ndarray:
    """Exact discrete Laplace with scale ``t``: P(y) proportional to exp(-|y|/t) (CKS Alg. 2)."""
    out = np.empty(n, dtype=np.int64)
    pending = np.arange(n)
    while pending.size:
        m = pending.size
        u = _uniform_below(src, m, t)
        d = _bernoulli_exp_neg(src, u / t, lambda i, u=u: Fraction(int(u[i]), t))
        idx = np.flatnonzero(d)
        x = u[idx] + t * _geometric_exp_neg_one(src, idx.size)
        negative = _random_bits(src, idx.size)
        keep = ~(negative & (x == 0))  # reject "-0" so that 0 is not counted twice
        y = np.where(negative, -x, x)
        out[pending[idx[keep]]] = y[keep]
        done = np.zeros(m, dtype=bool)
        done[idx[keep]] = True
        pending = pending[~done]
    return out


def _check_sigma(sigma: float) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)):
        raise InvalidParameterError(f"sigma must be a number, got {sigma!r}")
    sigma = float(sigma)
    if not (math.isfinite(sigma) and 0 < sigma <= MAX_SIGMA):
        raise InvalidParameterError(f"sigma must be in (0, {MAX_SIGMA:g}], got {sigma!r}")
    return sigma


def _check_size(size: int | tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
    if any(isinstance(s, bool) or int(s) != s or s < 0 for s in shape):
        raise InvalidParameterError(f"size must be non-negative integers, got {size!r}")
    shape = tuple(int(s) for s in shape)
    return shape, math.prod(shape)


def sample_discrete_gaussian(
    sigma: float, size: int | tuple[int, ...], *, rng: RandomSource | None = None
) -> np.ndarray:
    """Exact samples of the discrete Gaussian ``N_Z(0, sigma^2)`` as int64.

    ``P(y)`` is proportional to ``exp(-y^2 / (2 sigma^2))`` on the integers; its variance is
    slightly below ``sigma^2`` for ``sigma < 1`` and equal to it within 1e-8 for ``sigma >= 1``
    (CKS 2020, Proposition 19).

    Args:
        sigma: Scale, in quantised units (``0 < sigma <= 1e12``).
        size: Number of samples or output shape.
        rng: Random source; default :class:`SecretsRandom`.

    Returns:
        An ``int64`` array of the given shape.
    """
    sigma = _check_sigma(sigma)
    shape, n = _check_size(size)
    src = _source(rng)
    sigma2 = Fraction(sigma) ** 2
    t = math.isqrt(math.floor(sigma2)) + 1
    centre = sigma2 / t
    centre_f, two_sigma2_f = float(centre), 2.0 * float(sigma2)
    out = np.empty(n, dtype=np.int64)
    pending = np.arange(n)
    while pending.size:
        y = _discrete_laplace(src, pending.size, t)
        magnitude = np.abs(y)
        gamma = (magnitude.astype(np.float64) - centre_f) ** 2 / two_sigma2_f

        def exact(i: int, magnitude: np.ndarray = magnitude) -> Fraction:
            return (int(magnitude[i]) - centre) ** 2 / (2 * sigma2)

        accept = _bernoulli_exp_neg(src, gamma, exact)
        out[pending[accept]] = y[accept]
        pending = pending[~accept]
    return out.reshape(shape)


def _poisson_by_inversion(src: RandomSource, n: int, mu: float) -> np.ndarray:
    """Poisson(``mu``) by CDF inversion at CSPRNG uniforms (see module docstring)."""
    words = _uint64(src, n) >> np.uint64(12)
    u = (words.astype(np.float64) + 0.5) * 2.0**-52  # in (0, 1); 1 - u is exact
    lower = u < 0.5
    v = 1.0 - u
    z = special.ndtri(u)
    # Cornish-Fisher start, usually within one of the answer.
    k = np.maximum(np.floor(mu + math.sqrt(mu) * z + (z * z - 1.0) / 6.0 + 0.5), 0.0)

    def at_least(kk: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Whether F(kk) >= u for the coordinates idx."""
        result = np.empty(idx.size, dtype=bool)
        lo = lower[idx]
        result[lo] = special.pdtr(kk[lo], mu) >= u[idx][lo]
        result[~lo] = special.pdtrc(kk[~lo], mu) <= v[idx][~lo]
        return result

    # Smallest k >= 0 with F(k) >= u, found by galloping away from the start and then bisecting:
    # O(log distance) evaluations. Stepping by one instead stalled for minutes at mu ~ 1e14
    # (sigma ~ 3e7, user-level DP scales), where the start can be off by many units.
    cap = math.floor(mu + 50.0 * math.sqrt(mu) + 100.0)  # F(cap) = 1 to double precision
    everyone = np.arange(n)
    ok = at_least(k, everyone)
    hi = np.where(ok, k, -1.0)  # F(hi) >= u, once known
    lo = np.where(ok, -1.0, k)  # F(lo) < u (lo = -1: F = 0)
    step = 1.0
    down = everyone[ok & (k > 0)]  # gallop down until F(k - step) < u or k - step < 0
    while down.size:
        probe = hi[down] - step
        inside = probe >= 0
        hit = np.zeros(down.size, dtype=bool)
        hit[inside] = at_least(probe[inside], down[inside])
        hi[down[hit]] = probe[hit]
        lo[down[inside & ~hit]] = probe[inside & ~hit]
        down = down[hit]
        step *= 2.0
    step = 1.0
    up = everyone[~ok]  # gallop up until F(k + step) >= u (capped where F = 1)
    while up.size:
        probe = np.minimum(lo[up] + step, cap)
        hit = (probe >= cap) | at_least(probe, up)
        hi[up[hit]] = probe[hit]
        lo[up[~hit]] = probe[~hit]
        up = up[~hit]
        step *= 2.0
    gap = everyone[hi - lo > 1.0]
    while gap.size:  # invariant: F(lo) < u <= F(hi)
        mid = np.floor((lo[gap] + hi[gap]) / 2.0)
        hit = at_least(mid, gap)
        hi[gap[hit]] = mid[hit]
        lo[gap[~hit]] = mid[~hit]
        gap = gap[hi[gap] - lo[gap] > 1.0]
    k = hi
    return k.astype(np.int64)


def sample_skellam(
    sigma: float, size: int | tuple[int, ...], *, rng: RandomSource | None = None
) -> np.ndarray:
    """Symmetric Skellam noise with standard deviation ``sigma`` (variance ``sigma^2``), int64.

    ``Poisson(sigma^2 / 2) - Poisson(sigma^2 / 2)``; see the module docstring for exactness.

    Args:
        sigma: Standard deviation, quantised units (``0 < sigma <= 1e12``).
        size: Number of samples or output shape.
        rng: Random source; default :class:`SecretsRandom`.
    """
    sigma = _check_sigma(sigma)
    shape, n = _check_size(size)
    src = _source(rng)
    mu = sigma * sigma / 2.0
    out = _poisson_by_inversion(src, n, mu) - _poisson_by_inversion(src, n, mu)
    return out.reshape(shape)
