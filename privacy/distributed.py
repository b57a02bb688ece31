"""User-level distributed DP: calibration, accounting and clipping (PRIVACY.md section 2).

Each sampled client clips its whole round update to L2 norm ``S`` (:func:`clip_update`), scales
and rounds it to integers (the secure aggregation quantiser; :func:`quantized_l2_sensitivity`
bounds the norm growth), adds its share of integer noise (:func:`sample_discrete_gaussian` or
:func:`sample_skellam`) *before* masking, and the server only ever unmasks the noisy sum.

Calibration is to ``t_min``, the fewest honest clients whose noise can be in the sum, not the
expected ``n``: noise of dropped clients is missing and colluding clients can subtract their own.
With ``t_min`` shares of standard deviation ``sigma_c`` the sum has standard deviation at least
``sqrt(t_min) * sigma_c`` (:func:`per_client_sigma`). A round with fewer survivors must abort.

Accounting (:func:`distributed_epsilon`, :func:`calibrate_distributed_noise`) goes through
:class:`~privacy.events.DistributedNoiseEvent`, whose Gaussian-equivalent noise multiplier comes
from :mod:`privacy.discrete_bounds`: the discrete mechanism's RDP is bounded at every order by a
Gaussian's with multiplier ``z_eff`` (Kairouz-Liu-Steinke 2021 Prop. 14 for the discrete
Gaussian, Agarwal-Kairouz-Liu 2021 for Skellam), and the Poisson client sampling is then
accounted as for the subsampled *Gaussian* with ``z_eff`` by any accountant. That last step is the
approximation: exact for continuous Gaussian noise, standard but unproven for discrete noise. For
the discrete Gaussian with ``sigma_c >= 2`` (10^4 clients, 10^7 coordinates at most), ``z_eff``
is within 1e-8 of the continuous ``sqrt(t_min) sigma_c / l2_sensitivity``; Skellam's correction
is O(1 / (t_min sigma_c^2)) and matters for small noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from privacy.accountants import (
    calibrate_noise_multiplier,
    check_delta,
    make_accountant,
    solve_decreasing,
)
from privacy.discrete_bounds import (
    DISCRETE_GAUSSIAN,
    NOISE_KINDS,
    SKELLAM,
    ddg_tau,
    integer_l1_sensitivity,
    quantized_l2_sensitivity,
)
from privacy.errors import CalibrationError, InvalidParameterError
from privacy.events import DistributedNoiseEvent
from privacy.noise import (
    InsecureSeededRandom,
    RandomSource,
    SecretsRandom,
    sample_discrete_gaussian,
    sample_skellam,
)

__all__ = [
    "DISCRETE_GAUSSIAN",
    "NOISE_KINDS",
    "SKELLAM",
    "ClippedUpdate",
    "DistributedNoisePlan",
    "InsecureSeededRandom",
    "RandomSource",
    "SecretsRandom",
    "calibrate_distributed_noise",
    "clip_update",
    "ddg_tau",
    "distributed_epsilon",
    "integer_l1_sensitivity",
    "l2_norm",
    "per_client_sigma",
    "quantized_l2_sensitivity",
    "sample_discrete_gaussian",
    "sample_noise",
    "sample_skellam",
]


def per_client_sigma(total_sigma: float, min_survivors: int) -> float:
    """Each client's noise standard deviation so that any ``t_min`` shares sum to ``total_sigma``.

    Variances add: ``t_min * sigma_c^2 = total_sigma^2``. More survivors only add noise.
    """
    total_sigma = float(total_sigma)
    if not (math.isfinite(total_sigma) and total_sigma > 0):
        raise InvalidParameterError(f"total_sigma must be finite and > 0, got {total_sigma!r}")
    if isinstance(min_survivors, bool) or int(min_survivors) != min_survivors or min_survivors < 1:
        raise InvalidParameterError(f"min_survivors must be an integer >= 1, got {min_survivors!r}")
    return total_sigma / math.sqrt(int(min_survivors))


def sample_noise(
    noise: str, sigma: float, size: int | tuple[int, ...], *, rng: RandomSource | None = None
) -> np.ndarray:
    """One client's int64 noise share of the given kind and standard deviation (scale)."""
    if noise == DISCRETE_GAUSSIAN:
        return sample_discrete_gaussian(sigma, size, rng=rng)
    if noise == SKELLAM:
        return sample_skellam(sigma, size, rng=rng)
    raise InvalidParameterError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")


@dataclasses.dataclass(frozen=True)
class DistributedNoisePlan:
    """Calibrated distributed-noise parameters for a whole training run.

    Attributes:
        noise: ``"discrete_gaussian"`` or ``"skellam"``.
        local_sigma: Each client's noise scale, quantised units.
        min_survivors: ``t_min`` the plan is calibrated to.
        max_summands: Most noise shares a sum can contain.
        l2_sensitivity: Quantised L2 sensitivity used.
        dim: Number of coordinates.
        sample_rate: Client sampling rate per round.
        rounds: Number of rounds planned.
        delta: Target delta.
        accountant: Accountant used.
        effective_noise_multiplier: Gaussian-equivalent ``z_eff`` of one round.
        epsilon: Epsilon after ``rounds`` rounds (at most the target).
    """

    noise: str
    local_sigma: float
    min_survivors: int
    max_summands: int
    l2_sensitivity: float
    dim: int
    sample_rate: float
    rounds: int
    delta: float
    accountant: str
    effective_noise_multiplier: float
    epsilon: float

    @property
    def total_sigma(self) -> float:
        """Standard deviation of the noise in a sum of ``t_min`` shares."""
        return self.local_sigma * math.sqrt(self.min_survivors)

    def round_event(self, steps: int = 1) -> DistributedNoiseEvent:
        """The event to record (server ledger) for ``steps`` rounds run under this plan."""
        return _event(
            self.noise,
            self.local_sigma,
            self.min_survivors,
            self.max_summands,
            self.l2_sensitivity,
            self.dim,
            self.sample_rate,
            steps,
        )


def _event(
    noise: str,
    local_sigma: float,
    min_survivors: int,
    max_summands: int,
    l2_sensitivity: float,
    dim: int,
    sample_rate: float,
    steps: int,
    l1_sensitivity: float | None = None,
) -> DistributedNoiseEvent:
    return DistributedNoiseEvent(
        noise=noise,
        local_sigma=local_sigma,
        min_survivors=min_survivors,
        max_summands=max_summands,
        l2_sensitivity=l2_sensitivity,
        dim=dim,
        sample_rate=sample_rate,
        steps=steps,
        l1_sensitivity=l1_sensitivity,
    )


def distributed_epsilon(
    *,
    central_sigma: float,
    l2_sensitivity: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    noise: str = DISCRETE_GAUSSIAN,
    min_survivors: int = 1,
    max_summands: int | None = None,
    dim: int = 1,
    l1_sensitivity: float | None = None,
    accountant: str = "rdp",
) -> float:
    """Epsilon (user level) of ``rounds`` rounds of distributed integer noise.

    Args:
        central_sigma: Standard deviation of the noise in the sum of ``min_survivors`` shares,
            quantised units (each client adds ``central_sigma / sqrt(min_survivors)``).
        l2_sensitivity: One client's quantised L2 sensitivity (same units).
        sample_rate: Client sampling rate ``q`` per round.
        rounds: Number of rounds.
        delta: Target delta.
        noise: ``"discrete_gaussian"``, ``"skellam"``, or ``"gaussian"`` for the continuous
            approximation ``z = central_sigma / l2_sensitivity`` with no discrete correction.
        min_survivors: ``t_min``.
        max_summands: Most shares in a sum (defaults to ``min_survivors``), for the DDG tau term.
        dim: Number of coordinates (enters the discrete correction terms).
        l1_sensitivity: Skellam only; defaults to :func:`integer_l1_sensitivity`.
        accountant: ``rdp``, ``prv``, ``pld`` or ``dpa-rdp``.

    Returns:
        Epsilon at ``delta``; see the module docstring for the approximation.
    """
    from privacy.events import SampledGaussianEvent

    delta = check_delta(delta)
    if noise == "gaussian":
        z = float(central_sigma) / float(l2_sensitivity)
        event = SampledGaussianEvent(z, sample_rate, rounds)
    else:
        event = _event(
            noise,
            per_client_sigma(central_sigma, min_survivors),
            min_survivors,
            max_summands or min_survivors,
            l2_sensitivity,
            dim,
            sample_rate,
            rounds,
            l1_sensitivity,
        )
    return make_accountant(accountant).compose(event).get_epsilon(delta)


def calibrate_distributed_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    l2_sensitivity: float,
    dim: int,
    min_survivors: int,
    max_summands: int | None = None,
    noise: str = DISCRETE_GAUSSIAN,
    accountant: str = "rdp",
    rtol: float = 1e-3,
) -> DistributedNoisePlan:
    """Smallest per-client noise meeting ``(target_epsilon, delta)`` after ``rounds`` rounds.

    First the Gaussian noise multiplier for the target is found
    (:func:`~privacy.accountants.calibrate_noise_multiplier`), then the per-client scale whose
    ``z_eff`` reaches it (calibrated to ``min_survivors``; the discrete correction terms make it a
    little larger than ``z * l2_sensitivity / sqrt(t_min)`` when that is small).

    Returns:
        The plan; ``plan.epsilon <= target_epsilon``.
    """
    delta = check_delta(delta)
    max_summands = max_summands or min_survivors
    z_target = calibrate_noise_multiplier(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=rounds,
        accountant=accountant,
        rtol=rtol,
    )
    continuous = z_target * float(l2_sensitivity) / math.sqrt(min_survivors)

    def z_eff(sigma: float) -> float:
        return _event(
            noise, sigma, min_survivors, max_summands, l2_sensitivity, dim, sample_rate, 1
        ).effective_noise_multiplier

    # Solve z_eff(sigma) >= z_target: "epsilon_of" is any decreasing function hitting the target.
    try:
        sigma = solve_decreasing(
            lambda s: z_target / z_eff(s),
            1.0,
            low=continuous,
            high=2.0 * continuous,
            rtol=rtol,
            limits=(continuous, 1e12),
        )
    except CalibrationError as err:
        raise CalibrationError(f"no per-client noise reaches the target: {err}") from None
    event = _event(
        noise, sigma, min_survivors, max_summands, l2_sensitivity, dim, sample_rate, rounds
    )
    epsilon = make_accountant(accountant).compose(event).get_epsilon(delta)
    return DistributedNoisePlan(
        noise=noise,
        local_sigma=sigma,
        min_survivors=int(min_survivors),
        max_summands=int(max_summands),
        l2_sensitivity=float(l2_sensitivity),
        dim=int(dim),
        sample_rate=float(sample_rate),
        rounds=int(rounds),
        delta=delta,
        accountant=accountant,
        effective_noise_multiplier=event.effective_noise_multiplier,
        epsilon=epsilon,
    )


def l2_norm(update: Mapping[str, np.ndarray]) -> float:
    """Global L2 norm of a dict of arrays, accumulated in float64."""
    total = 0.0
    for name, array in update.items():
        flat = np.asarray(array, dtype=np.float64).ravel()
        if not np.all(np.isfinite(flat)):
            raise InvalidParameterError(f"update tensor {name!r} has non-finite values")
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


@dataclasses.dataclass(frozen=True)
class ClippedUpdate:
    """Result of :func:`clip_update`."""

    update: dict[str, np.ndarray]
    norm_before: float
    factor: float

    @property
    def clipped(self) -> bool:
        """Whether the update was scaled down."""
        return self.factor < 1.0


def clip_update(update: Mapping[str, np.ndarray], max_norm: float) -> ClippedUpdate:
    """Scale a whole update (all tensors together) to global L2 norm at most ``max_norm``.

    Whole-update clipping bounds one client's contribution to the sum, which is what user-level
    DP needs (per-tensor clipping would give a sensitivity of ``sqrt(#tensors) * S``). The
    result's norm is checked in float64 after casting back to each array's dtype and nudged down
    if rounding put it a hair above ``max_norm``. Arrays keep their dtype; inputs are not
    modified. Non-finite values are refused: they would void the bound.
    """
    max_norm = float(max_norm)
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise InvalidParameterError(f"max_norm must be finite and > 0, got {max_norm!r}")
    norm = l2_norm(update)
    if norm <= max_norm:
        return ClippedUpdate({k: np.array(v, copy=True) for k, v in update.items()}, norm, 1.0)
    factor = max_norm / norm
    for _ in range(64):
        scaled = {
            k: (np.asarray(v, dtype=np.float64) * factor).astype(np.asarray(v).dtype)
            for k, v in update.items()
        }
        if l2_norm(scaled) <= max_norm:
            return ClippedUpdate(scaled, norm, factor)
        factor *= 1.0 - 1e-7
    raise InvalidParameterError("could not clip the update below max_norm")  # pragma: no cover
