"""Unambiguous byte encodings for everything that is hashed, signed or used as KDF input.

Concatenating variable-length fields without lengths lets two different tuples encode to the same
bytes (``("ab", "c")`` and ``("a", "bc")``), which would let a signature or a derived key be
reinterpreted in another context. Every variable-length field is therefore length-prefixed.
"""

from __future__ import annotations

from collections.abc import Iterable


def u32(value: int) -> bytes:
    """Encode a non-negative integer below 2**32 as 4 big-endian bytes."""
    if not 0 <= value < 1 << 32:
        raise ValueError(f"value {value} does not fit in 32 bits")
    return value.to_bytes(4, "big")


def lp(data: bytes) -> bytes:
    """Length-prefix ``data`` with its 4-byte big-endian length."""
    return u32(len(data)) + data


def lp_str(text: str) -> bytes:
    """Length-prefix the UTF-8 encoding of ``text``."""
    return lp(text.encode("utf-8"))


def lp_strs(items: Iterable[str]) -> bytes:
    """Encode a sequence of strings as a count followed by each length-prefixed string."""
    parts = [lp_str(item) for item in items]
    return u32(len(parts)) + b"".join(parts)
