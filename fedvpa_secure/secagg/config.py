"""The round configuration: frozen, validated at construction, hashed into every session id.

Errors name the field, the value and the allowed range (the project's ConfigError convention), and
every derived value (threshold, fractional bits, graph degree) is resolved here once, so clients
and server compute identical config hashes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.secagg import quantize
from fedvpa_secure.secagg.degree import (
    DEFAULT_COLLUDING_FRACTION,
    DEFAULT_DROPOUT_FRACTION,
    DEFAULT_SECURITY_BITS,
    min_secure_degree,
)
from fedvpa_secure.secagg.prg import ALGORITHMS

CONFIG_LABEL = b"fedvpa-secagg/v1/config"
WEIGHT_GROUP = "__weight__"
COUNT_GROUP = "__count__"


def _bad(name: str, value: object, rule: str) -> ConfigError:
    return ConfigError(f"SecAggConfig.{name}={value!r} is out of range: {rule}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(
        value
    )


def default_threshold(n: int, hardened: bool) -> int:
    """``floor(n/2) + 1`` (honest-but-curious) or ``floor(2n/3) + 1`` (malicious server).

    Why 2n/3 when hardened: a malicious server that could make honest clients reveal b-shares for
    a client to one group and key-shares to another needs ``t`` of each; with ``n_C`` colluding
    clients that is impossible exactly when ``t > (n + n_C) / 2`` (the counting argument behind
    Bonawitz et al. 2017, Sec. 6), so ``t = floor(2n/3) + 1`` tolerates ``n_C < n/3``.
    """
    return (2 * n) // 3 + 1 if hardened else n // 2 + 1


def default_degree(n: int, hardened: bool = True) -> int | None:
    """The smallest even SecAgg+ degree that meets Bell et al.'s bound for the default assumptions
    (:mod:`~fedvpa_secure.secagg.degree`: a third colluding, 10% dropping out, 2^-40), or
    ``None`` (the full graph) when no smaller degree does.

    The same bound is what a client's default policy demands, so the default passes it. Set
    ``degree`` explicitly for other assumptions.
    """
    need = min_secure_degree(
        n, DEFAULT_COLLUDING_FRACTION, DEFAULT_DROPOUT_FRACTION, DEFAULT_SECURITY_BITS, hardened
    )
    return need  # None: only the full graph meets the bound


@dataclass(frozen=True)
class SecAggConfig:
    """Parameters of one secure-aggregation round, shared by every client and the server.

    Attributes:
        n_clients: clients sampled for the round (at least ``min_clients``).
        threshold: Shamir threshold t and minimum survivors at every stage; defaults to
            ``floor(n/2)+1`` or ``floor(2n/3)+1`` when ``hardened``, and never below
            ``min_clients``.
        hardened: malicious-server mode (Bonawitz et al. 2017, Sec. 6 / Fig. 4 round 3): adds the
            consistency round in which clients sign the survivor list before revealing shares.
        clip: per-group coordinate clip; keys are tensor-name prefixes (longest match wins, ``""``
            matches everything), values are positive finite floats.
        frac_bits: optional fixed fractional bits per group (same keys as ``clip``); missing
            groups get the largest safe value for ``max_clients``.
        max_clients: the most clients ever summed (for the overflow check); defaults to
            ``n_clients``.
        weight_cap: the cap of the per-client weight (example count) coordinate.
        degree: SecAgg+ neighbourhood degree (even). ``None``: the full graph up to
            ``full_graph_cutoff`` clients, :func:`default_degree` above.
        neighbour_threshold: Shamir threshold inside a SecAgg+ neighbourhood of ``degree + 1``
            parties; defaults like ``threshold`` applied to ``degree + 1``.
        full_graph_cutoff: the largest round that uses the full graph by default.
        min_clients: refuse rounds (and survivor sets) smaller than this; at least 3, because the
            sum of two updates reveals each to the other.
        keystream: ``"aes-256-ctr"`` or ``"chacha20"``, the mask PRG.
        stage_deadline_s: per-stage deadline for the coordinator (the library itself is clockless).
        max_message_factor: inbound message size limit as a multiple of the expected size.
    """

    n_clients: int
    threshold: int | None = None
    hardened: bool = True
    clip: Mapping[str, float] = field(default_factory=lambda: {"": 1.0})
    frac_bits: Mapping[str, int] | None = None
    max_clients: int | None = None
    weight_cap: float = 1000.0
    degree: int | None = None
    neighbour_threshold: int | None = None
    full_graph_cutoff: int = 200
    min_clients: int = 3
    keystream: str = "aes-256-ctr"
    stage_deadline_s: float = 60.0
    max_message_factor: float = 2.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.hardened, bool):
            raise _bad("hardened", self.hardened, "must be a bool")
        if not _is_int(self.min_clients) or self.min_clients < 3:
            raise _bad(
                "min_clients", self.min_clients, "must be an int >= 3 (a sum of 2 reveals both)"
            )
        if not _is_int(self.n_clients) or not self.min_clients <= self.n_clients <= 1_000_000:
            raise _bad(
                "n_clients", self.n_clients, f"must be an int in [{self.min_clients}, 1000000]"
            )
        n = self.n_clients
        t = self.threshold
        if t is None:
            t = max(default_threshold(n, self.hardened), self.min_clients)
        low = max(default_threshold(n, self.hardened), self.min_clients)
        if not _is_int(t) or not low <= t <= n:
            why = "2n/3" if self.hardened else "n/2"
            raise _bad(
                "threshold", t, f"must be an int in [{low}, {n}] (t > {why}, >= min_clients)"
            )
        set_(self, "threshold", t)

        max_clients = n if self.max_clients is None else self.max_clients
        if not _is_int(max_clients) or max_clients < n:
            raise _bad("max_clients", max_clients, f"must be an int >= n_clients={n}")
        set_(self, "max_clients", max_clients)

        if not isinstance(self.clip, Mapping) or not self.clip:
            raise _bad("clip", self.clip, "must be a non-empty mapping of group prefix -> clip")
        clip: dict[str, float] = {}
        for key, value in self.clip.items():
            if not isinstance(key, str) or key.startswith("__"):
                raise _bad("clip", key, "group keys must be strings not starting with '__'")
            if not _is_real(value) or value <= 0:
                raise _bad(f"clip[{key!r}]", value, "must be a finite float > 0")
            clip[key] = float(value)
        set_(self, "clip", MappingProxyType(dict(sorted(clip.items()))))

        given = {} if self.frac_bits is None else self.frac_bits
        if not isinstance(given, Mapping):
            raise _bad("frac_bits", given, "must be a mapping of group prefix -> int, or None")
        resolved: dict[str, int] = {}
        for key in given:
            if key not in clip:
                raise _bad("frac_bits", key, f"names no clip group (groups: {sorted(clip)})")
        for key, c in clip.items():
            if key in given:
                f = given[key]
                if not _is_int(f) or not 0 <= f <= quantize.MAX_FRAC_BITS:
                    raise _bad(
                        f"frac_bits[{key!r}]", f, f"must be an int in [0, {quantize.MAX_FRAC_BITS}]"
                    )
                quantize.check_no_overflow(key, c, f, max_clients)
                resolved[key] = f
            else:
                resolved[key] = quantize.derive_frac_bits(key, c, max_clients)
        set_(self, "frac_bits", MappingProxyType(resolved))

        if not _is_real(self.weight_cap) or self.weight_cap <= 0:
            raise _bad("weight_cap", self.weight_cap, "must be a finite float > 0")
        set_(self, "weight_cap", float(self.weight_cap))
        quantize.derive_frac_bits(WEIGHT_GROUP, self.weight_cap, max_clients)

        if not _is_int(self.full_graph_cutoff) or self.full_graph_cutoff < self.min_clients:
            raise _bad(
                "full_graph_cutoff", self.full_graph_cutoff, f"must be an int >= {self.min_clients}"
            )
        degree = self.degree
        if degree is None and n > self.full_graph_cutoff:
            degree = default_degree(n, self.hardened)
        if degree is not None:
            if not _is_int(degree) or degree < 2 or degree % 2:
                raise _bad("degree", degree, "must be an even int >= 2 (Harary graph H(n, k))")
            if degree >= n - 1:
                degree = None  # the full graph
        set_(self, "degree", degree)
        nt = self.neighbour_threshold
        if degree is None:
            if nt is not None and nt != t:
                raise _bad("neighbour_threshold", nt, "applies only to SecAgg+ (degree < n - 1)")
            nt = t
        else:
            group = degree + 1
            low_k = max(default_threshold(group, self.hardened), self.min_clients)
            if nt is None:
                nt = low_k
            if not _is_int(nt) or not low_k <= nt <= group:
                raise _bad("neighbour_threshold", nt, f"must be an int in [{low_k}, {group}]")
        set_(self, "neighbour_threshold", nt)

        if self.keystream not in ALGORITHMS:
            raise _bad("keystream", self.keystream, f"must be one of {ALGORITHMS}")
        if not _is_real(self.stage_deadline_s) or self.stage_deadline_s <= 0:
            raise _bad("stage_deadline_s", self.stage_deadline_s, "must be a finite float > 0")
        if not _is_real(self.max_message_factor) or not 1.0 <= self.max_message_factor <= 16.0:
            raise _bad("max_message_factor", self.max_message_factor, "must be in [1, 16]")

    # -- derived values -------------------------------------------------------------------------

    @property
    def full_graph(self) -> bool:
        """Whether every client is every other client's neighbour."""
        return self.degree is None

    def share_threshold(self) -> int:
        """Shamir threshold for one client's secrets (global t, or the neighbourhood's)."""
        return self.neighbour_threshold  # type: ignore[return-value]

    def group_of(self, name: str) -> str:
        """The clip group of a tensor: the longest ``clip`` key that prefixes ``name``."""
        best = None
        for key in self.clip:
            if name.startswith(key) and (best is None or len(key) > len(best)):
                best = key
        if best is None:
            raise ConfigError(
                f"tensor {name!r} matches no SecAggConfig.clip group {sorted(self.clip)}; add a "
                "prefix for it (or the catch-all '')"
            )
        return best

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON-able data (what the config hash covers)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    def digest(self) -> bytes:
        """SHA-256 of the label and the canonical JSON of :meth:`to_dict`."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(CONFIG_LABEL + blob.encode("utf-8")).digest()

    def __hash__(self) -> int:
        return hash(self.digest())
