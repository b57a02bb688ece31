"""Privacy accountants behind one small interface, and noise calibration.

Four implementations of :class:`Accountant`, all for the Poisson-subsampled Gaussian under the
add/remove-one neighbouring relation (the relation Opacus' Poisson sampling and dp-accounting's
defaults use):

======== ================= ==========================================================
name     library           method
======== ================= ==========================================================
rdp      Opacus 1.6        Renyi DP (Mironov 2017; Mironov, Talwar, Zhang 2019), orders
                           ``RDPAccountant.DEFAULT_ALPHAS``
prv      Opacus 1.6        numerical composition of privacy random variables (Gopi, Lee,
                           Wutschitz 2021); upper bound with ``eps_error`` 0.01
pld      dp-accounting     privacy loss distributions (Koskela et al. 2020; Doroshenko et
                           al. 2022), pessimistic discretisation
dpa-rdp  dp-accounting     Renyi DP with dp-accounting's own orders and code
======== ================= ==========================================================

RDP is an upper bound that is loose by a few percent to tens of percent; PRV and PLD are tight up
to their discretisation error and agree with each other. Having two independent libraries for
each family lets :mod:`privacy.audit` recompute a recorded epsilon with code that did not produce
it. GDP is deliberately absent: it is an approximation that never enforces a budget.

Accountants are a pure function of their event log: :meth:`Accountant.get_epsilon` recomputes
from the composed events (grouped by identical parameters, composition being commutative), so a
log replayed after a restart gives the same epsilon, and :meth:`Accountant.epsilon_after` can
answer "what if" without changing state (dp_accounting ``privacy_accountant.py`` pattern: check
before mutate). Opacus is imported lazily because importing it imports torch (~3 s).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from privacy.errors import CalibrationError, InvalidParameterError, UnsupportedEventError
from privacy.events import GaussianComponent, PrivacyEvent, SampledGaussianEvent

logger = logging.getLogger(__name__)

Components = tuple[GaussianComponent, ...]


def check_delta(delta: float) -> float:
    """Validate a target delta: a number in (0, 1)."""
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise InvalidParameterError(f"delta must be a number, got {delta!r}")
    delta = float(delta)
    if not (0.0 < delta < 1.0):
        raise InvalidParameterError(f"delta must be in (0, 1), got {delta!r}")
    return delta


def group_components(components: Iterable[GaussianComponent]) -> Components:
    """Merge components with equal ``(noise_multiplier, sample_rate)`` by adding their counts.

    Exact, because composition is commutative; it keeps PRV/PLD cost independent of the number of
    identical rounds.
    """
    counts: dict[tuple[float, float], int] = {}
    for z, q, count in components:
        counts[(z, q)] = counts.get((z, q), 0) + count
    return tuple(GaussianComponent(z, q, c) for (z, q), c in counts.items())


class Accountant(abc.ABC):
    """Composes :class:`~privacy.events.PrivacyEvent` s and reports epsilon at a delta.

    Subclasses implement :meth:`_epsilon` on grouped Gaussian components; everything else
    (validation, history, what-if queries, caching) lives here.
    """

    name: ClassVar[str]
    """Canonical name used in ledgers and on the command line."""
    tight: ClassVar[bool]
    """True for numerical composition (PRV, PLD), False for RDP upper bounds."""
    library: ClassVar[str]

    def __init__(self) -> None:
        self._events: list[tuple[PrivacyEvent, int]] = []
        self._components: list[GaussianComponent] = []

    @property
    def events(self) -> tuple[tuple[PrivacyEvent, int], ...]:
        """``(event, count)`` pairs composed so far, in order."""
        return tuple(self._events)

    @property
    def components(self) -> Components:
        """Grouped Gaussian components of everything composed so far."""
        return group_components(self._components)

    def options(self) -> dict[str, Any]:
        """Constructor keyword arguments, so :meth:`copy` rebuilds an equal accountant."""
        return {}

    @staticmethod
    def _components_of(event: PrivacyEvent, count: int) -> list[GaussianComponent]:
        if not isinstance(event, PrivacyEvent):
            raise UnsupportedEventError(f"not a privacy event: {event!r}")
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise InvalidParameterError(f"count must be an integer >= 1, got {count!r}")
        count = int(count)
        return [GaussianComponent(z, q, c * count) for z, q, c in event.gaussian_components()]

    def compose(self, event: PrivacyEvent, count: int = 1) -> Accountant:
        """Account for ``count`` applications of ``event``; validates before changing state.

        Returns:
            ``self``, so calls chain: ``acc.compose(e1).compose(e2).get_epsilon(1e-5)``.
        """
        new = self._components_of(event, count)
        self._events.append((event, count))
        self._components.extend(new)
        return self

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before any event)."""
        return self._cached_epsilon(self.components, check_delta(delta))

    def epsilon_after(self, event: PrivacyEvent, delta: float, count: int = 1) -> float:
        """Epsilon if ``event`` were composed next; the accountant is not changed."""
        extra = self._components_of(event, count)
        return self._cached_epsilon(
            group_components([*self._components, *extra]), check_delta(delta)
        )

    def copy(self) -> Accountant:
        """An independent accountant with the same options and history."""
        other = type(self)(**self.options())
        for event, count in self._events:
            other.compose(event, count)
        return other

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(events={len(self._events)})"

    def _cached_epsilon(self, components: Components, delta: float) -> float:
        if not components:
            return 0.0
        key = (type(self), tuple(sorted(self.options().items())), components, delta)
        return _epsilon_cache(key, self)

    @abc.abstractmethod
    def _epsilon(self, components: Components, delta: float) -> float:
        """Epsilon of the composition of ``components`` (non-empty, grouped) at ``delta``."""


_CACHE: dict[tuple, float] = {}
_CACHE_MAX = 1024


def _epsilon_cache(key: tuple, accountant: Accountant) -> float:
    """Memoise epsilons: ``check_next`` then ``record`` ask for the same number twice."""
    try:
        return _CACHE[key]
    except KeyError:
        pass
    _, _, components, delta = key
    value = float(accountant._epsilon(components, delta))
    if -1e-12 < value < 0:  # round-off of a numerical accountant at epsilon ~ 0
        value = 0.0
    if math.isnan(value) or value < 0:
        raise UnsupportedEventError(
            f"{accountant.name} accountant returned an invalid epsilon {value!r} for {components}"
        )
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[key] = value
    return value


class OpacusRDPAccountant(Accountant):
    """Opacus' RDP analysis (``opacus.accountants.analysis.rdp``) with Opacus' default orders."""

    name = "rdp"
    tight = False
    library = "opacus"

    def _epsilon(self, components: Components, delta: float) -> float:
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp as analysis

        orders = RDPAccountant.DEFAULT_ALPHAS
        total = sum(
            analysis.compute_rdp(q=q, noise_multiplier=z, steps=count, orders=orders)
            for z, q, count in components
        )
        with warnings.catch_warnings():
            # "optimal order is the largest/smallest alpha": only a tightness hint at extremes.
            warnings.simplefilter("ignore", UserWarning)
            eps, _ = analysis.get_privacy_spent(orders=orders, rdp=total, delta=delta)
        return float(eps)


class OpacusPRVAccountant(Accountant):
    """Opacus' PRV accountant; reports its upper bound (estimate + ``eps_error``)."""

    name = "prv"
    tight = True
    library = "opacus"
    MAX_GRID: ClassVar[int] = 2**23

    def __init__(self, eps_error: float = 0.01) -> None:
        super().__init__()
        if not (0 < eps_error < 1):
            raise InvalidParameterError(f"eps_error must be in (0, 1), got {eps_error!r}")
        self._eps_error = float(eps_error)

    def options(self) -> dict[str, Any]:
        return {"eps_error": self._eps_error}

    def _epsilon(self, components: Components, delta: float) -> float:
        import numpy as np
        from opacus.accountants import PRVAccountant
        from opacus.accountants.analysis.prv import (
            PoissonSubsampledGaussianPRV,
            compute_safe_domain_size,
        )

        prv = PRVAccountant()
        prv.history = [(z, q, count) for z, q, count in components]
        delta_error = delta / 1000  # Opacus' default
        # q = 1 takes log(1 - q) = -inf inside Opacus, which it handles; silence the warning.
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)  # RDP order-range hints (domain sizing)
            # Opacus discretises on a grid of 2 L / mesh points (L ~ epsilon) and would try to
            # allocate gigabytes for absurd epsilons; refuse before that, with the reason.
            counts = [count for _, _, count in components]
            half_width = compute_safe_domain_size(
                [PoissonSubsampledGaussianPRV(q, z) for z, q, _ in components],
                counts,
                self._eps_error,
                delta_error,
            )
            mesh = self._eps_error / math.sqrt(sum(counts) * math.log(12 / delta_error) / 2)
            if 2 * half_width / mesh > self.MAX_GRID:
                raise UnsupportedEventError(
                    f"the PRV accountant would need {2 * half_width / mesh:.3g} grid points "
                    f"(epsilon is of order {half_width:.0f}, far beyond any budget); "
                    "use the 'pld' or 'rdp' accountant for this setting"
                )
            return float(prv.get_epsilon(delta=delta, eps_error=self._eps_error))


def _dp_event(components: Components) -> Any:
    import dp_accounting

    events = []
    for z, q, count in components:
        base = dp_accounting.GaussianDpEvent(z)
        if q < 1.0:
            base = dp_accounting.PoissonSampledDpEvent(q, base)
        events.append(dp_accounting.SelfComposedDpEvent(base, count))
    return events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)


class _DropConvergenceNotes(logging.Filter):
    """dp-accounting logs (via absl) each fractional RDP order it has to skip; that is expected
    for small orders at large sample rates and the order is excluded soundly, so it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


@contextlib.contextmanager
def _quiet_dp_accounting() -> Iterator[None]:
    absl_logger = logging.getLogger("absl")
    note_filter = _DropConvergenceNotes()
    absl_logger.addFilter(note_filter)
    try:
        yield
    finally:
        absl_logger.removeFilter(note_filter)


class DpAccountingRDPAccountant(Accountant):
    """dp-accounting's ``RdpAccountant`` with its default orders."""

    name = "dpa-rdp"
    tight = False
    library = "dp-accounting"

    def _epsilon(self, components: Components, delta: float) -> float:
        from dp_accounting.rdp import RdpAccountant

        with _quiet_dp_accounting():
            return float(RdpAccountant().compose(_dp_event(components)).get_epsilon(delta))


class PLDAccountant(Accountant):
    """dp-accounting's ``PLDAccountant`` (pessimistic, so an upper bound up to discretisation).

    The discretisation interval defaults to 1e-4 and grows with the size of epsilon
    (``1e-4 * max(1, eps_rdp / 10)``, at most 1e-3, using dp-accounting's RDP as the scale):
    the PLD grid spans the privacy-loss range, so large-epsilon settings (full participation,
    sigma 1, 100 rounds: epsilon ~92) would otherwise take seconds per query for no gain in
    relative accuracy. Pass ``value_discretization_interval`` to fix it.
    """

    name = "pld"
    tight = True
    library = "dp-accounting"

    def __init__(self, value_discretization_interval: float | None = None) -> None:
        super().__init__()
        if value_discretization_interval is not None and not (
            0 < value_discretization_interval < 1
        ):
            raise InvalidParameterError(
                "value_discretization_interval must be in (0, 1), "
                f"got {value_discretization_interval!r}"
            )
        self._interval = value_discretization_interval

    def options(self) -> dict[str, Any]:
        return {"value_discretization_interval": self._interval}

    def _epsilon(self, components: Components, delta: float) -> float:
        from dp_accounting.pld import PLDAccountant as _PLD

        interval = self._interval
        if interval is None:
            scale = DpAccountingRDPAccountant()._epsilon(components, delta)
            interval = min(1e-3, 1e-4 * max(1.0, scale / 10.0))
        pld = _PLD(value_discretization_interval=interval)
        return float(pld.compose(_dp_event(components)).get_epsilon(delta))


ACCOUNTANTS: dict[str, type[Accountant]] = {
    cls.name: cls
    for cls in (OpacusRDPAccountant, OpacusPRVAccountant, PLDAccountant, DpAccountingRDPAccountant)
}
ALIASES = {"opacus-rdp": "rdp", "opacus-prv": "prv", "dpa-pld": "pld"}


def canonical_name(name: str) -> str:
    """The canonical accountant name for ``name`` (case-insensitive, aliases resolved)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in ACCOUNTANTS:
        raise InvalidParameterError(
            f"unknown accountant {name!r}; choose one of {sorted(ACCOUNTANTS)}"
        )
    return key


def make_accountant(name: str = "rdp", **options: Any) -> Accountant:
    """Create an accountant by name: ``rdp``, ``prv``, ``pld`` or ``dpa-rdp``."""
    return ACCOUNTANTS[canonical_name(name)](**options)


def compute_epsilon(
    event: PrivacyEvent | Iterable[PrivacyEvent], delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon of one event (or a sequence of events) with a fresh accountant."""
    acc = make_accountant(accountant)
    for e in [event] if isinstance(event, PrivacyEvent) else event:
        acc.compose(e)
    return acc.get_epsilon(delta)


def solve_decreasing(
    epsilon_of: Callable[[float], float],
    target_epsilon: float,
    *,
    low: float,
    high: float,
    rtol: float = 1e-3,
    limits: tuple[float, float] = (1e-3, 1e4),
) -> float:
    """Smallest parameter ``x`` (to ``rtol``) with ``epsilon_of(x) <= target_epsilon``.

    ``epsilon_of`` must be non-increasing (more noise, less epsilon). The bracket ``[low, high]``
    is a first guess: it is widened by doubling/halving within ``limits`` until it brackets the
    target, then bisected in log space. The returned value always meets the target (it is the
    upper end of the final bracket).

    Raises:
        CalibrationError: even ``limits[1]`` misses the target.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise InvalidParameterError(f"target epsilon must be > 0, got {target_epsilon!r}")
    lowest, highest = limits
    low, high = max(low, lowest), min(high, highest)
    while epsilon_of(high) > target_epsilon:
        if high >= highest:
            raise CalibrationError(
                f"epsilon {target_epsilon:g} is out of reach: even noise {high:g} gives "
                f"{epsilon_of(high):.4g}"
            )
        low, high = high, min(2.0 * high, highest)
    while epsilon_of(low) <= target_epsilon:
        if low <= lowest:
            return low
        high, low = low, max(low / 2.0, lowest)
    while high / low > 1.0 + rtol:
        mid = math.sqrt(low * high)
        if epsilon_of(mid) <= target_epsilon:
            high = mid
        else:
            low = mid
    return high


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    rtol: float = 1e-3,
) -> float:
    """Smallest noise multiplier whose ``steps`` subsampled-Gaussian steps stay within budget.

    Unlike Opacus' ``get_noise_multiplier`` (absolute tolerance on epsilon), the tolerance is
    relative on sigma and the result is always on the safe side: ``epsilon <= target_epsilon``.

    Args:
        target_epsilon: Budget epsilon.
        delta: Budget delta.
        sample_rate: Poisson sampling rate.
        steps: Number of steps (or rounds).
        accountant: Accountant name.
        rtol: Relative precision of the returned sigma.

    Returns:
        The noise multiplier.
    """
    delta = check_delta(delta)
    SampledGaussianEvent(1.0, sample_rate, steps)  # validates q and steps with clear messages

    def solver(name: str) -> Callable[[float], float]:
        acc = make_accountant(name)
        return lambda z: acc.epsilon_after(SampledGaussianEvent(z, sample_rate, steps), delta)

    # A cheap RDP solve brackets the answer: RDP over-estimates epsilon, so its sigma is an upper
    # end for the tight accountants, which then need only a few expensive evaluations.
    guess = solve_decreasing(solver("dpa-rdp"), target_epsilon, low=0.25, high=4.0, rtol=1e-2)
    if canonical_name(accountant) == "dpa-rdp" and rtol >= 1e-2:
        return guess
    return solve_decreasing(
        solver(accountant), target_epsilon, low=0.5 * guess, high=guess, rtol=rtol
    )
