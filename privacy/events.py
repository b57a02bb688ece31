"""Immutable descriptions of differentially private releases ("events").

An event says *what was released and with how much noise*, never how it is accounted: the same
event can be fed to any accountant in :mod:`privacy.accountants`, written to the ledger and read
back by an auditor. This mirrors dp_accounting's ``dp_event.py``: accounting is a function of a
log of immutable events, so it can be replayed after a restart and recomputed by a third party.

Every event reduces to a tuple of :class:`GaussianComponent` ``(noise_multiplier, sample_rate,
count)``: ``count`` compositions of a Poisson-subsampled Gaussian with L2 sensitivity 1 and noise
standard deviation ``noise_multiplier``, under the add/remove-one neighbouring relation. That is
the common language of the four accountants.

JSON: ``event.to_dict()`` / :func:`event_from_dict` round-trip exactly (floats are written with
Python's shortest round-trip repr); unknown types and unknown or missing fields are rejected, so a
ledger cannot smuggle in parameters an auditor would not see.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import numbers
import operator
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, NamedTuple

from privacy import discrete_bounds
from privacy.errors import InvalidParameterError


class GaussianComponent(NamedTuple):
    """``count`` compositions of a Poisson-subsampled Gaussian (sensitivity 1)."""

    noise_multiplier: float
    sample_rate: float
    count: int


_EVENT_TYPES: dict[str, type[PrivacyEvent]] = {}


def _register(cls: type[PrivacyEvent]) -> type[PrivacyEvent]:
    _EVENT_TYPES[cls.type_name] = cls
    return cls


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}")
    return float(value)


def _noise(name: str, value: Any) -> float:
    value = _real(name, value)
    if not math.isfinite(value) or value <= 0.0:
        raise InvalidParameterError(
            f"{name} must be a finite number > 0 (zero noise is not private), got {value!r}"
        )
    return value


def _rate(name: str, value: Any) -> float:
    value = _real(name, value)
    if not (0.0 < value <= 1.0):
        raise InvalidParameterError(f"{name} must be in (0, 1], got {value!r}")
    return value


def _int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise InvalidParameterError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise InvalidParameterError(f"{name} must be >= {minimum}, got {value!r}")
    return value


class PrivacyEvent(abc.ABC):
    """Base class of all events; subclasses are frozen dataclasses."""

    type_name: ClassVar[str]

    @abc.abstractmethod
    def gaussian_components(self) -> tuple[GaussianComponent, ...]:
        """The event as compositions of Poisson-subsampled Gaussians (see module docstring)."""

    def summary(self) -> tuple[float, float, int] | None:
        """``(noise_multiplier, sample_rate, steps)`` when the event is one Gaussian component.

        Used for the flat, human-readable columns of the ledger; ``None`` for mixtures.
        """
        components = self.gaussian_components()
        if len(components) != 1:
            return None
        z, q, count = components[0]
        return z, q, count

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict with a ``type`` key; inverse of :func:`event_from_dict`."""
        out: dict[str, Any] = {"type": self.type_name}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, tuple) and all(isinstance(v, PrivacyEvent) for v in value):
                value = [v.to_dict() for v in value]
            out[field.name] = value
        return out

    def to_json(self) -> str:
        """Canonical JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)


@_register
@dataclasses.dataclass(frozen=True)
class GaussianEvent(PrivacyEvent):
    """One Gaussian release with L2 sensitivity 1 and noise std ``noise_multiplier``.

    Example: the mixture prior's clipped sufficient statistics, released once per round with
    their own clipping norm and noise (PRIVACY.md section 1).
    """

    type_name: ClassVar[str] = "gaussian"
    noise_multiplier: float

    def __post_init__(self) -> None:
        z = _noise("noise_multiplier", self.noise_multiplier)
        object.__setattr__(self, "noise_multiplier", z)

    def gaussian_components(self) -> tuple[GaussianComponent, ...]:
        return (GaussianComponent(self.noise_multiplier, 1.0, 1),)


@_register
@dataclasses.dataclass(frozen=True)
class SampledGaussianEvent(PrivacyEvent):
    """``steps`` compositions of the Poisson-subsampled Gaussian mechanism.

    DP-SGD with Poisson sampling (Opacus) on a client, or one server round of user-level DP with
    client sampling rate ``sample_rate``. ``sample_rate = 1`` is plain (un-sampled) composition.
    """

    type_name: ClassVar[str] = "sampled_gaussian"
    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        z = _noise("noise_multiplier", self.noise_multiplier)
        object.__setattr__(self, "noise_multiplier", z)
        object.__setattr__(self, "sample_rate", _rate("sample_rate", self.sample_rate))
        object.__setattr__(self, "steps", _int("steps", self.steps))

    def gaussian_components(self) -> tuple[GaussianComponent, ...]:
        return (GaussianComponent(self.noise_multiplier, self.sample_rate, self.steps),)


@_register
@dataclasses.dataclass(frozen=True)
class DistributedNoiseEvent(PrivacyEvent):
    """Rounds of distributed DP: clients add integer noise shares before secure aggregation.

    Recorded with its raw parameters so an auditor recomputes the Gaussian-equivalent noise
    multiplier (:mod:`privacy.discrete_bounds`) instead of trusting one.

    Attributes:
        noise: ``"discrete_gaussian"`` or ``"skellam"``.
        local_sigma: Each client's noise standard deviation (scale), quantised units.
        min_survivors: ``t_min``: the fewest honest clients whose noise is in the sum.
        max_summands: The most noise shares the sum can contain (clients asked), for tau.
        l2_sensitivity: L2 sensitivity of one client's quantised update, quantised units.
        dim: Number of coordinates.
        sample_rate: Client sampling rate per round.
        steps: Number of rounds.
        l1_sensitivity: Optional L1 sensitivity (Skellam); derived from L2 when absent.
    """

    type_name: ClassVar[str] = "distributed_noise"
    noise: str
    local_sigma: float
    min_survivors: int
    max_summands: int
    l2_sensitivity: float
    dim: int
    sample_rate: float
    steps: int
    l1_sensitivity: float | None = None

    def __post_init__(self) -> None:
        if self.noise not in discrete_bounds.NOISE_KINDS:
            raise InvalidParameterError(
                f"noise must be one of {discrete_bounds.NOISE_KINDS}, got {self.noise!r}"
            )
        object.__setattr__(self, "local_sigma", _noise("local_sigma", self.local_sigma))
        object.__setattr__(self, "min_survivors", _int("min_survivors", self.min_survivors))
        object.__setattr__(self, "max_summands", _int("max_summands", self.max_summands))
        if self.max_summands < self.min_survivors:
            raise InvalidParameterError(
                f"max_summands ({self.max_summands}) must be >= min_survivors "
                f"({self.min_survivors})"
            )
        object.__setattr__(self, "l2_sensitivity", _noise("l2_sensitivity", self.l2_sensitivity))
        object.__setattr__(self, "dim", _int("dim", self.dim))
        object.__setattr__(self, "sample_rate", _rate("sample_rate", self.sample_rate))
        object.__setattr__(self, "steps", _int("steps", self.steps))
        if self.l1_sensitivity is not None:
            object.__setattr__(
                self, "l1_sensitivity", _noise("l1_sensitivity", self.l1_sensitivity)
            )

    @property
    def effective_noise_multiplier(self) -> float:
        """Gaussian-equivalent ``z_eff`` (see :mod:`privacy.discrete_bounds` for the caveat)."""
        if self.noise == discrete_bounds.DISCRETE_GAUSSIAN:
            return discrete_bounds.ddg_effective_noise_multiplier(
                local_sigma=self.local_sigma,
                min_survivors=self.min_survivors,
                max_summands=self.max_summands,
                l2_sensitivity=self.l2_sensitivity,
                dim=self.dim,
            )
        return discrete_bounds.skellam_effective_noise_multiplier(
            local_sigma=self.local_sigma,
            min_survivors=self.min_survivors,
            l2_sensitivity=self.l2_sensitivity,
            dim=self.dim,
            l1_sensitivity=self.l1_sensitivity,
        )

    def gaussian_components(self) -> tuple[GaussianComponent, ...]:
        return (GaussianComponent(self.effective_noise_multiplier, self.sample_rate, self.steps),)


@_register
@dataclasses.dataclass(frozen=True)
class ComposedEvent(PrivacyEvent):
    """Several events applied in sequence, e.g. one client round = DP-SGD steps + prior release."""

    type_name: ClassVar[str] = "composed"
    events: tuple[PrivacyEvent, ...]

    def __post_init__(self) -> None:
        events = tuple(self.events)
        if not events:
            raise InvalidParameterError("a composed event needs at least one event")
        for event in events:
            if not isinstance(event, PrivacyEvent):
                raise InvalidParameterError(f"not a privacy event: {event!r}")
        object.__setattr__(self, "events", events)

    def gaussian_components(self) -> tuple[GaussianComponent, ...]:
        return tuple(c for event in self.events for c in event.gaussian_components())


def compose(events: Iterable[PrivacyEvent]) -> PrivacyEvent:
    """One event for a sequence: the event itself when there is only one."""
    events = tuple(events)
    return events[0] if len(events) == 1 else ComposedEvent(events)


def event_from_dict(data: Mapping[str, Any]) -> PrivacyEvent:
    """Rebuild an event from :meth:`PrivacyEvent.to_dict` output, strictly.

    Raises:
        InvalidParameterError: unknown type, unknown or missing fields, or invalid values.
    """
    if not isinstance(data, Mapping):
        raise InvalidParameterError(f"an event must be a JSON object, got {type(data).__name__}")
    type_name = data.get("type")
    cls = _EVENT_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise InvalidParameterError(
            f"unknown event type {type_name!r}; known: {sorted(_EVENT_TYPES)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = set(data) - {"type"}
    unknown = given - set(fields)
    if unknown:
        raise InvalidParameterError(f"unknown fields for {type_name} event: {sorted(unknown)}")
    required = {
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = required - given
    if missing:
        raise InvalidParameterError(f"missing fields for {type_name} event: {sorted(missing)}")
    kwargs = {name: data[name] for name in given}
    if cls is ComposedEvent:
        inner = kwargs["events"]
        if not isinstance(inner, list):
            raise InvalidParameterError("composed event 'events' must be a list")
        kwargs["events"] = tuple(event_from_dict(e) for e in inner)
    return cls(**kwargs)


def event_from_json(text: str) -> PrivacyEvent:
    """Parse :meth:`PrivacyEvent.to_json` output."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidParameterError(f"event is not valid JSON: {err}") from None
    return event_from_dict(data)
