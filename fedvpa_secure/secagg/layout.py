"""The canonical flat layout of an update, and its hash.

Everything a client sums - named tensors (LoRA adapters, heads, prototypes), extra named vectors
(the prior's sufficient statistics n_k and v_k, METHOD.md Sec. 3), the capped weight and a count -
is laid out as ONE flat vector, so one call quantises and one mask hides it all:

* tensors sorted by name, each flattened in C order; then extras sorted by name; then the weight
  coordinate ``__weight__`` (the capped example count, masked like any other coordinate, never sent
  in the clear) and the count coordinate ``__count__`` (always exactly 1, so the decoded count must
  equal the number of survivors - a free integrity check on the unmasking);
* each entry carries its quantisation group, clip and fractional bits.

The layout hash covers names, kinds, shapes, dtypes, groups, clips and fractional bits, and is
folded into the session id, so clients that disagree on any of them cannot complete a round
together (their keys differ) instead of silently summing mismatched coordinates.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.secagg import prg, quantize
from fedvpa_secure.secagg.config import COUNT_GROUP, WEIGHT_GROUP, SecAggConfig
from fedvpa_secure.secagg.errors import InvalidUpdateError
from fedvpa_secure.secagg.rng import RandomBytes

LABEL_LAYOUT = b"fedvpa-secagg/v1/layout"
WEIGHT_NAME = "__weight__"
COUNT_NAME = "__count__"
ALLOWED_DTYPES = ("float16", "float32", "float64")
MAX_COORDINATES = (1 << 31) - 1
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/:-[]")

TensorSpec = tuple[tuple[int, ...], str]
"""(shape, dtype name) of one tensor."""


@dataclass(frozen=True)
class LayoutEntry:
    """One named block of the flat vector."""

    name: str
    kind: str  # "tensor", "extra", "weight" or "count"
    shape: tuple[int, ...]
    dtype: str
    group: str
    clip: float
    frac_bits: int
    offset: int
    size: int

    @property
    def stop(self) -> int:
        """One past the entry's last coordinate."""
        return self.offset + self.size


@dataclass(frozen=True)
class DecodedSum:
    """The decoded float sum of the survivors' updates."""

    tensors: dict[str, np.ndarray]
    extras: dict[str, np.ndarray]
    weight: float
    count: int


def _spec(name: str, value: object) -> TensorSpec:
    if isinstance(value, np.ndarray):
        return tuple(int(d) for d in value.shape), value.dtype.name
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], tuple)
        and isinstance(value[1], (str, np.dtype, type))
    ):
        return tuple(value[0]), np.dtype(value[1]).name
    raise ConfigError(f"layout entry {name!r}: give an ndarray or a (shape, dtype) pair")


def _check_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= 256
        or name.startswith("__")
        or not set(name) <= _NAME_CHARS
    ):
        raise ConfigError(
            f"tensor name {name!r} is invalid: 1-256 chars of [A-Za-z0-9._/:-[]], not starting '__'"
        )
    return name


@dataclass(frozen=True)
class Layout:
    """The canonical layout: entries in order, total size, and the SHA-256 digest."""

    entries: tuple[LayoutEntry, ...]
    size: int
    digest: bytes

    @classmethod
    def build(
        cls,
        tensors: Mapping[str, np.ndarray | TensorSpec],
        config: SecAggConfig,
        extras: Mapping[str, np.ndarray | int] | None = None,
    ) -> Layout:
        """Build the layout of an update dict plus extra vectors under ``config``'s quantisation.

        Args:
            tensors: name -> an example array, or (shape, dtype). Dtypes: float16/32/64.
            config: supplies each group's clip and fractional bits (longest-prefix match).
            extras: name -> an example 1-D array or a length; decoded as float64.
        """
        if not isinstance(tensors, Mapping):
            raise ConfigError("tensors must be a mapping of name -> array or (shape, dtype)")
        extras = {} if extras is None else extras
        raw: list[tuple[str, str, tuple[int, ...], str]] = []
        for name in sorted(tensors):
            shape, dtype = _spec(_check_name(name), tensors[name])
            raw.append((name, "tensor", shape, dtype))
        for name in sorted(extras):
            if _check_name(name) in tensors:
                raise ConfigError(f"extra vector {name!r} has the same name as a tensor")
            value = extras[name]
            if isinstance(value, np.ndarray):
                if value.ndim != 1:
                    raise ConfigError(f"extra vector {name!r} must be 1-D, got shape {value.shape}")
                length, dtype = int(value.shape[0]), value.dtype.name
            elif isinstance(value, int) and not isinstance(value, bool):
                length, dtype = value, "float64"
            else:
                raise ConfigError(f"extra vector {name!r}: give a 1-D array or a length")
            raw.append((name, "extra", (length,), dtype))
        entries: list[LayoutEntry] = []
        offset = 0
        for name, kind, shape, dtype in raw:
            if dtype not in ALLOWED_DTYPES:
                raise ConfigError(f"{kind} {name!r} has dtype {dtype}; allowed: {ALLOWED_DTYPES}")
            if any((not isinstance(d, int)) or d < 0 for d in shape):
                raise ConfigError(f"{kind} {name!r} has an invalid shape {shape}")
            group = config.group_of(name)
            size = math.prod(shape)
            entries.append(
                LayoutEntry(
                    name,
                    kind,
                    shape,
                    dtype,
                    group,
                    config.clip[group],
                    config.frac_bits[group],
                    offset,
                    size,
                )
            )
            offset += size
        weight_bits = quantize.derive_frac_bits(WEIGHT_GROUP, config.weight_cap, config.max_clients)
        entries.append(
            LayoutEntry(
                WEIGHT_NAME,
                "weight",
                (),
                "float64",
                WEIGHT_GROUP,
                config.weight_cap,
                weight_bits,
                offset,
                1,
            )
        )
        entries.append(
            LayoutEntry(COUNT_NAME, "count", (), "float64", COUNT_GROUP, 1.0, 0, offset + 1, 1)
        )
        size = offset + 2
        if size > MAX_COORDINATES:
            raise ConfigError(f"layout has {size} coordinates; the limit is {MAX_COORDINATES}")
        blob = json.dumps(
            [
                [e.name, e.kind, list(e.shape), e.dtype, e.group, e.clip, e.frac_bits, e.offset]
                for e in entries
            ],
            separators=(",", ":"),
        )
        digest = hashlib.sha256(LABEL_LAYOUT + blob.encode("utf-8")).digest()
        return cls(tuple(entries), size, digest)

    def entry(self, name: str) -> LayoutEntry:
        """The entry called ``name``."""
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def user_size(self) -> int:
        """Coordinates of tensors and extras (without the weight and count coordinates)."""
        return self.size - 2

    def _check_block(self, kind: str, given: Mapping[str, np.ndarray]) -> None:
        expected = {e.name for e in self.entries if e.kind == kind}
        if not isinstance(given, Mapping):
            raise InvalidUpdateError(f"the {kind} values must be a mapping of name -> ndarray")
        missing, unknown = expected - set(given), set(given) - expected
        if missing or unknown:
            raise InvalidUpdateError(
                f"update does not match the layout: missing {kind}s {sorted(missing)}, "
                f"unexpected {sorted(unknown)}"
            )
        for e in self.entries:
            if e.kind != kind:
                continue
            value = given[e.name]
            if not isinstance(value, np.ndarray):
                raise InvalidUpdateError(
                    f"{kind} {e.name!r} is {type(value).__name__}, not ndarray"
                )
            if tuple(value.shape) != e.shape or value.dtype.name != e.dtype:
                raise InvalidUpdateError(
                    f"{kind} {e.name!r} is {value.dtype.name}{tuple(value.shape)}, the layout says "
                    f"{e.dtype}{e.shape}"
                )
            if not np.isfinite(value).all():
                raise InvalidUpdateError(f"{kind} {e.name!r} holds NaN or infinite values")

    def quantize(
        self,
        tensors: Mapping[str, np.ndarray],
        rng: RandomBytes,
        *,
        extras: Mapping[str, np.ndarray] | None = None,
        weight: float = 1.0,
    ) -> np.ndarray:
        """Validate an update and encode it as one uint32 vector (unbiased stochastic rounding).

        Args:
            tensors: exactly the layout's tensors, with matching shapes and dtypes, all finite.
            rng: the CSPRNG; 32 bytes key a keystream that supplies the rounding coins.
            extras: exactly the layout's extra vectors.
            weight: the client's weight (e.g. example count), finite and >= 0; capped.

        Raises:
            InvalidUpdateError: names, shapes or dtypes differ, or a value is not finite.
        """
        self._check_block("tensor", tensors)
        self._check_block("extra", {} if extras is None else extras)
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.floating)):
            raise InvalidUpdateError(f"weight must be a number, got {type(weight).__name__}")
        if not math.isfinite(weight) or weight < 0:
            raise InvalidUpdateError(f"weight {weight!r} must be finite and >= 0")
        coins = np.empty(self.size, dtype=np.uint32)
        prg.keystream_into(rng(prg.KEY_BYTES), coins)
        out = np.empty(self.size, dtype=np.uint32)
        for e in self.entries:
            if e.kind == "tensor":
                values = tensors[e.name]
            elif e.kind == "extra":
                values = extras[e.name]  # type: ignore[index]
            elif e.kind == "weight":
                values = np.array([min(float(weight), e.clip)])
            else:
                values = np.array([1.0])
            quantize.encode_into(
                values, e.clip, e.frac_bits, out[e.offset : e.stop], coins[e.offset : e.stop]
            )
        return out

    def out_of_range_groups(self, ring_sum: np.ndarray, n_summed: int) -> list[str]:
        """Groups whose decoded sum exceeds what ``n_summed`` honest clients could produce.

        Also flags a negative weight sum and a count other than ``n_summed``.
        """
        bad: dict[str, None] = {}
        for e in self.entries:
            block = ring_sum[e.offset : e.stop]
            first = int(block.view(np.int32)[0]) if e.size else 0
            too_big = quantize.max_abs(block) > n_summed * quantize.quantum_bound(
                e.clip, e.frac_bits
            )
            negative_weight = e.kind == "weight" and first < 0
            wrong_count = e.kind == "count" and first != n_summed
            if too_big or negative_weight or wrong_count:
                bad[e.group] = None
        return list(bad)

    def decode(self, ring_sum: np.ndarray) -> DecodedSum:
        """Decode the ring sum to float64 tensors (original shapes), extras, weight and count."""
        if ring_sum.dtype != np.uint32 or ring_sum.shape != (self.size,):
            raise ValueError(f"ring sum must be uint32 of shape ({self.size},)")
        tensors: dict[str, np.ndarray] = {}
        extras: dict[str, np.ndarray] = {}
        weight, count = 0.0, 0
        for e in self.entries:
            values = quantize.decode(ring_sum[e.offset : e.stop], e.frac_bits)
            if e.kind == "tensor":
                tensors[e.name] = values.reshape(e.shape)
            elif e.kind == "extra":
                extras[e.name] = values
            elif e.kind == "weight":
                weight = float(values[0])
            else:
                count = int(values[0])
        return DecodedSum(tensors, extras, weight, count)
