"""Shamir t-out-of-m secret sharing over the prime field GF(2^521 - 1).

Why this field: 2^521 - 1 is a Mersenne prime larger than 2^256, so a 32-byte secret (the self-mask
seed b, an X25519 private key) is one field element and is shared whole - no splitting into limbs
whose shares could be mixed. Points are the parties' public indices 1..n (never 0, which would be
the secret itself); polynomial coefficients come from the CSPRNG (Shamir 1979; Bonawitz et al. 2017,
Sec. 3, "secret sharing").

Shares are *bound* when encoded: a 16-byte tag derived from the session id, the owner and the
secret's kind precedes the point, so a share replayed from another session or for another secret
is refused before any arithmetic. Reconstruction uses Lagrange interpolation at zero; the
coefficients depend only on the set of points, so they are cached - the server reconstructs ~n
secrets from the same points each round.

Python integers are not constant-time; SECURITY.md lists timing side channels as out of scope.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from fedvpa_secure.errors import IntegrityError, ProtocolError
from fedvpa_secure.secagg.rng import RandomBytes, random_below

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
Y_BYTES = 66  # ceil(521 / 8)
TAG_BYTES = 16
SHARE_BYTES = TAG_BYTES + 4 + Y_BYTES
LABEL_TAG = b"fedvpa-secagg/v1/share-tag"
MAX_POINT = (1 << 32) - 1


@dataclass(frozen=True, repr=False)
class Share:
    """One point (x, y) of the sharing polynomial. ``repr`` hides y."""

    x: int
    y: int

    def __repr__(self) -> str:
        return f"Share(x={self.x}, y=...)"


def split(secret: bytes, points: Sequence[int], threshold: int, rng: RandomBytes) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` of the returned shares rebuild it.

    Args:
        secret: exactly 32 bytes.
        points: distinct x-coordinates in ``[1, 2^32)``, one per holder.
        threshold: t, with ``1 <= t <= len(points)``.
        rng: the byte source for the t - 1 random coefficients.

    Returns:
        The shares, in the order of ``points``.
    """
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise ValueError("a shared secret is exactly 32 bytes")
    _check_points(points)
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold {threshold} must be in [1, {len(points)}]")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [random_below(rng, PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in points:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def _check_points(points: Iterable[int]) -> None:
    seen: set[int] = set()
    for x in points:
        if not isinstance(x, int) or isinstance(x, bool) or not 1 <= x <= MAX_POINT:
            raise ProtocolError(f"share point {x!r} is not in [1, {MAX_POINT}] (0 is the secret)")
        if x in seen:
            raise ProtocolError(f"share point {x} appears twice")
        seen.add(x)


@lru_cache(maxsize=256)
def lagrange_at_zero(points: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum l_i * f(x_i) for any polynomial of degree < len(points)."""
    out = []
    for i, xi in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def reconstruct(shares: Sequence[Share], threshold: int) -> bytes:
    """Rebuild the 32-byte secret from at least ``threshold`` shares.

    The ``threshold`` shares with the smallest points are used (a canonical choice, so the cached
    Lagrange coefficients are reused across secrets).

    Raises:
        ProtocolError: fewer than ``threshold`` shares, or a zero, out-of-range or repeated point.
        IntegrityError: the interpolated value is not a 32-byte secret (a corrupted share).
    """
    if len(shares) < threshold or threshold < 1:
        raise ProtocolError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    _check_points(s.x for s in shares)
    for s in shares:
        if not isinstance(s.y, int) or not 0 <= s.y < PRIME:
            raise ProtocolError("share value is outside the field")
    chosen = sorted(shares, key=lambda s: s.x)[:threshold]
    coeffs = lagrange_at_zero(tuple(s.x for s in chosen))
    value = sum(c * s.y for c, s in zip(coeffs, chosen, strict=True)) % PRIME
    if value >= 1 << (8 * SECRET_BYTES):
        raise IntegrityError("secret reconstruction failed")
    return value.to_bytes(SECRET_BYTES, "big")


def share_context(session_id: bytes, owner: str, kind: str) -> bytes:
    """The binding context of a share: session id, owner id and the secret's kind."""
    owner_b = owner.encode("utf-8")
    kind_b = kind.encode("ascii")
    return (
        len(session_id).to_bytes(4, "big")
        + session_id
        + len(owner_b).to_bytes(4, "big")
        + owner_b
        + len(kind_b).to_bytes(4, "big")
        + kind_b
    )


def _tag(context: bytes) -> bytes:
    return hashlib.sha256(LABEL_TAG + context).digest()[:TAG_BYTES]


def encode_share(share: Share, context: bytes) -> bytes:
    """``tag(context) || x (4 bytes) || y (66 bytes)``, all big-endian."""
    return _tag(context) + share.x.to_bytes(4, "big") + share.y.to_bytes(Y_BYTES, "big")


def decode_share(data: bytes, context: bytes) -> Share:
    """Parse and check a bound share.

    Raises:
        ProtocolError: wrong length, point 0, or a value outside the field.
        IntegrityError: the tag does not match ``context`` (another session, owner or secret).
    """
    if not isinstance(data, bytes) or len(data) != SHARE_BYTES:
        raise ProtocolError(f"an encoded share is {SHARE_BYTES} bytes")
    if data[:TAG_BYTES] != _tag(context):
        raise IntegrityError("share does not belong to this session and secret")
    x = int.from_bytes(data[TAG_BYTES : TAG_BYTES + 4], "big")
    y = int.from_bytes(data[TAG_BYTES + 4 :], "big")
    if x == 0:
        raise ProtocolError("share point 0 is refused (it would be the secret itself)")
    if y >= PRIME:
        raise ProtocolError("share value is outside the field")
    return Share(x, y)
