"""Group-wise fixed-point quantisation into the ring Z_(2^32).

Each parameter group has a clip ``c`` and a scale ``2^f``. A client clips every coordinate to
``[-c, c]``, multiplies by ``2^f`` and rounds *stochastically* (up with probability equal to the
fractional part), so the encoding is unbiased: E[q] = x * 2^f. Values are stored as two's complement
modulo 2^32 and the server decodes the sum as a signed 32-bit integer.

Overflow is refused when the configuration is built, never merely warned about: if up to
``n_max`` clients each contribute at most ``ceil(c * 2^f)`` in magnitude, the sum stays inside the
signed range exactly when ``n_max * ceil(c * 2^f) <= 2^31 - 1`` (the ceiling accounts for rounding
up at the clip; PROTOCOL.md states ``n_max * c * 2^f < 2^31``, which this implies).

The rounding coins come from a CSPRNG keystream, never numpy's generators: a predictable coin
would bias individual coordinates in a way an observer of the sum could exploit.
"""

from __future__ import annotations

import math

import numpy as np

from fedvpa_secure.errors import ConfigError

MAX_SUM_MAGNITUDE = (1 << 31) - 1
"""The largest magnitude a decoded signed sum may have."""

MAX_FRAC_BITS = 48
"""Upper bound for derived fractional bits (float64 keeps x * 2^f exact well beyond this)."""

_BLOCK = 1 << 16  # coordinates per vectorised block: bounds temporaries and stays cache-resident
_TWO32 = float(1 << 32)


def quantum_bound(clip: float, frac_bits: int) -> int:
    """The largest magnitude one client's quantised coordinate can take: ``ceil(c * 2^f)``."""
    return math.ceil(clip * 2.0**frac_bits)


def check_no_overflow(group: str, clip: float, frac_bits: int, max_clients: int) -> None:
    """Raise :class:`ConfigError` unless ``max_clients`` full-scale values sum without wrapping.

    Args:
        group: the parameter group's name, for the message.
        clip: the per-coordinate clip ``c`` of the group.
        frac_bits: the fractional bits ``f`` (scale ``2^f``).
        max_clients: the most clients whose values can ever be summed (``n_max``).
    """
    worst = max_clients * quantum_bound(clip, frac_bits)
    if worst > MAX_SUM_MAGNITUDE:
        raise ConfigError(
            f"quantisation group {group!r}: max_clients={max_clients} * ceil(clip={clip!r} * "
            f"2^frac_bits={frac_bits}) = {worst} overflows the signed 32-bit ring (limit "
            f"{MAX_SUM_MAGNITUDE}); lower frac_bits, the clip, or max_clients"
        )


def derive_frac_bits(group: str, clip: float, max_clients: int) -> int:
    """The largest ``f`` in ``[0, MAX_FRAC_BITS]`` for which ``max_clients`` values cannot overflow.

    Raises:
        ConfigError: even ``f = 0`` overflows (the clip is too large for that many clients).
    """
    check_no_overflow(group, clip, 0, max_clients)
    frac_bits = 0
    while (
        frac_bits < MAX_FRAC_BITS
        and max_clients * quantum_bound(clip, frac_bits + 1) <= MAX_SUM_MAGNITUDE
    ):
        frac_bits += 1
    return frac_bits


def encode_into(
    values: np.ndarray, clip: float, frac_bits: int, out: np.ndarray, coins: np.ndarray
) -> None:
    """Clip, scale and stochastically round ``values`` into the uint32 slice ``out``.

    Args:
        values: finite floats (any shape; read in C order).
        clip: the group's clip ``c``; values are clipped to ``[-c, c]`` first.
        frac_bits: the group's fractional bits ``f``.
        out: a writable uint32 vector with ``values.size`` entries (two's complement on return).
        coins: uniform uint32 words, one per value, from a CSPRNG keystream.
    """
    flat = np.ravel(values)
    n = flat.size
    if out.dtype != np.uint32 or out.shape != (n,) or coins.shape != (n,):
        raise ValueError("encode_into: out and coins must be uint32 vectors of the values' size")
    scale = 2.0**frac_bits
    v = np.empty(min(n, _BLOCK), dtype=np.float64)
    fl = np.empty_like(v)
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        m = stop - start
        bv, bf = v[:m], fl[:m]
        np.clip(flat[start:stop], -clip, clip, out=bv)
        bv *= scale
        np.floor(bv, out=bf)
        bv -= bf  # fractional part in [0, 1)
        bv *= _TWO32
        # round up with probability frac: P(coin < frac * 2^32) = frac (to within 2^-32)
        bf += coins[start:stop] < bv
        out[start:stop] = bf.astype(np.int64).astype(np.uint32)


def decode(ring: np.ndarray, frac_bits: int) -> np.ndarray:
    """Read a uint32 ring slice as signed two's complement and undo the scale ``2^f``."""
    return ring.view(np.int32).astype(np.float64) / 2.0**frac_bits


def max_abs(ring: np.ndarray) -> int:
    """The largest magnitude in a uint32 ring slice read as signed (0 for an empty slice)."""
    if ring.size == 0:
        return 0
    signed = ring.view(np.int32)
    return max(abs(int(signed.min())), abs(int(signed.max())))
