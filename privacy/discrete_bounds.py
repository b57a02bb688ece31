"""Privacy bounds for integer (discrete) noise, stated as a Gaussian-equivalent noise multiplier.

Distributed DP (PRIVACY.md section 2) adds integer noise on the clients, before secure
aggregation, so the server only sees ``sum(updates) + sum(noise)``. The accountants in
:mod:`privacy.accountants` speak the Poisson-subsampled *Gaussian*; this module turns a discrete
mechanism into the noise multiplier ``z_eff`` of a Gaussian whose Renyi-DP curve
``alpha / (2 z_eff^2)`` upper-bounds the discrete mechanism's curve at **every** order alpha.

The approximation, stated once: the bounds below are rigorous for the *un-sampled* discrete
mechanism. For the Poisson-subsampled mechanism we then use the subsampled Gaussian analysis at
``z_eff`` (any of the four accountants). That step treats the discrete mechanism's privacy loss as
Gaussian-shaped; it is the usual approximation and is tight when the per-client noise is well
above the integer grid (for the discrete Gaussian, ``local_sigma >= 2`` puts the tau correction
below 1e-8 of ``1/z`` for up to 10^4 clients and 10^7 coordinates; Skellam's correction decays
only as ``1/mu``), but it is not a theorem for discrete noise. A provably valid alternative is
the general subsampled-RDP bound of Zhu and Wang (2019, Theorem 5), which is looser.

Sources:
    * Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020.
    * Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
      with Secure Aggregation", ICML 2021 (arXiv:2102.06387): Theorem 1 (the tau term),
      Proposition 14 (RDP of the sum), Theorem 1/Proposition 22 (norm growth under conditional
      randomized rounding).
    * Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
      Learning", NeurIPS 2021 (arXiv:2110.04995): RDP of the multi-dimensional Skellam mechanism.
"""

from __future__ import annotations

import math

import numpy as np

from privacy.errors import InvalidParameterError

DISCRETE_GAUSSIAN = "discrete_gaussian"
SKELLAM = "skellam"
NOISE_KINDS = (DISCRETE_GAUSSIAN, SKELLAM)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InvalidParameterError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def ddg_tau(local_sigma: float, num_summands: int) -> float:
    """The tau term of Kairouz-Liu-Steinke Theorem 1 for a sum of discrete Gaussians.

    ``tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1))`` measures how far a sum of ``n``
    independent discrete Gaussians of scale ``sigma`` is from one discrete Gaussian. It grows with
    ``n``, so callers pass the *largest* number of noise shares that can end up in the sum.

    Args:
        local_sigma: Scale of each client's discrete Gaussian, in quantised units.
        num_summands: Largest number of noise shares in the sum.

    Returns:
        tau (0 for a single summand).
    """
    sigma = _positive("local_sigma", local_sigma)
    n = _count("num_summands", num_summands)
    if n == 1:
        return 0.0
    k = np.arange(1, n, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1.0))))


def ddg_effective_noise_multiplier(
    *,
    local_sigma: float,
    min_survivors: int,
    max_summands: int,
    l2_sensitivity: float,
    dim: int,
) -> float:
    """Gaussian-equivalent noise multiplier of the distributed discrete Gaussian.

    Kairouz-Liu-Steinke Proposition 14 bounds the RDP of the sum of ``n`` discrete Gaussians by
    ``alpha/2 * (l2/(sqrt(n) sigma) + sqrt(d) tau)^2``, which is the RDP of a Gaussian with
    ``1 / z_eff = l2_sensitivity / (sqrt(n) sigma) + sqrt(dim) * tau``. We take
    ``n = min_survivors`` in the first term (fewest noise shares: dropped or colluding clients'
    noise is missing) and ``max_summands`` in tau (tau grows with ``n``), so the bound holds for
    any number of surviving honest clients between the two.

    Args:
        local_sigma: Each client's discrete Gaussian scale, quantised units.
        min_survivors: ``t_min``, the fewest honest clients whose noise is in the sum.
        max_summands: The most clients whose noise can be in the sum (>= ``min_survivors``).
        l2_sensitivity: L2 sensitivity of one client's quantised contribution (quantised units,
            after rounding inflation, see :func:`quantized_l2_sensitivity`).
        dim: Number of coordinates.

    Returns:
        ``z_eff`` for :class:`privacy.events.SampledGaussianEvent`.
    """
    sigma = _positive("local_sigma", local_sigma)
    t_min = _count("min_survivors", min_survivors)
    n_max = _count("max_summands", max_summands)
    if n_max < t_min:
        raise InvalidParameterError(f"max_summands ({n_max}) must be >= min_survivors ({t_min})")
    l2 = _positive("l2_sensitivity", l2_sensitivity)
    d = _count("dim", dim)
    inverse = l2 / (math.sqrt(t_min) * sigma) + math.sqrt(d) * ddg_tau(sigma, n_max)
    return 1.0 / inverse


def integer_l1_sensitivity(l2_sensitivity: float, dim: int) -> float:
    """Upper bound on the L1 norm of an integer vector with a given L2 norm.

    ``||x||_1 <= sqrt(d) ||x||_2`` always, and ``||x||_1 <= ||x||_2^2`` for integer vectors
    (each non-zero coordinate has ``|x_i| <= x_i^2``).
    """
    l2 = _positive("l2_sensitivity", l2_sensitivity)
    d = _count("dim", dim)
    return l2 * min(math.sqrt(d), l2)


def skellam_effective_noise_multiplier(
    *,
    local_sigma: float,
    min_survivors: int,
    l2_sensitivity: float,
    dim: int,
    l1_sensitivity: float | None = None,
) -> float:
    """Gaussian-equivalent noise multiplier of the distributed Skellam mechanism.

    The sum of Skellam shares is exactly Skellam, with variance ``mu = t_min * local_sigma^2``
    (or more). Agarwal-Kairouz-Liu bound its RDP by
    ``alpha l2^2 / (2 mu) + min(((2 alpha - 1) l2^2 + 6 l1) / (4 mu^2), 3 l1 / (2 mu))``.
    Dividing by ``alpha / 2`` and taking the supremum over ``alpha > 1`` gives
    ``1 / z_eff^2 = l2^2/mu + min(max((l2^2 + 6 l1) / (2 mu^2), l2^2 / mu^2), 3 l1 / mu)``.

    Args:
        local_sigma: Standard deviation of each client's Skellam share, quantised units.
        min_survivors: ``t_min``.
        l2_sensitivity: L2 sensitivity in quantised units.
        dim: Number of coordinates (for the default L1 bound).
        l1_sensitivity: L1 sensitivity; defaults to :func:`integer_l1_sensitivity`.

    Returns:
        ``z_eff``.
    """
    sigma = _positive("local_sigma", local_sigma)
    t_min = _count("min_survivors", min_survivors)
    l2 = _positive("l2_sensitivity", l2_sensitivity)
    l1 = (
        integer_l1_sensitivity(l2, dim)
        if l1_sensitivity is None
        else _positive("l1_sensitivity", l1_sensitivity)
    )
    mu = t_min * sigma**2
    extra = min(max((l2**2 + 6.0 * l1) / (2.0 * mu**2), l2**2 / mu**2), 3.0 * l1 / mu)
    return 1.0 / math.sqrt(l2**2 / mu + extra)


def quantized_l2_sensitivity(
    *, clip_norm: float, scale: float, dim: int, beta: float = math.exp(-0.5)
) -> float:
    """L2 norm bound of a clipped update after scaling and randomized rounding to integers.

    Kairouz-Liu-Steinke Theorem 1 / Proposition 22: scaling a vector of norm ``c`` by ``scale``
    and rounding each coordinate randomly to a neighbouring integer can grow its norm to at most
    ``c' + sqrt(d)`` (``c' = c * scale``). With *conditional* randomized rounding (re-round until
    the norm is below the bound; each try succeeds with probability at least ``1 - beta``) the
    bound tightens to ``sqrt(c'^2 + d/4 + sqrt(2 ln(1/beta)) (c' + sqrt(d)/2))``. The quantiser
    must implement the conditional retry for the second bound to hold; pass ``beta=0`` otherwise.

    Args:
        clip_norm: L2 clipping norm of the update, model units.
        scale: Quantisation scale (``1 / granularity``).
        dim: Number of coordinates.
        beta: Conditional rounding parameter in ``[0, 1)``; 0 means plain randomized rounding.

    Returns:
        L2 sensitivity in quantised units.
    """
    c = _positive("clip_norm", clip_norm) * _positive("scale", scale)
    d = _count("dim", dim)
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise InvalidParameterError(f"beta must be in [0, 1), got {beta!r}")
    bound = c + math.sqrt(d)
    if beta == 0.0:
        return bound
    squared = c**2 + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(d) / 2.0)
    return min(bound, math.sqrt(squared))
