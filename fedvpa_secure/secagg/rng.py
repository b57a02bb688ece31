"""Where randomness comes from: the operating system's CSPRNG, with one explicit test seam.

Every secret in the protocol (X25519 private keys, the self-mask seed b, Shamir coefficients,
envelope nonces, the stochastic-rounding stream) is drawn from :func:`secrets.token_bytes` unless a
caller injects a byte source *and* says ``insecure_rng=True``. This mirrors Opacus'
``secure_mode`` (which refuses a seed) and pyca's ``Fernet.encrypt_at_time`` (a deliberately named
door for known-answer tests): a seeded generator can never slip into production by accident.
Never numpy or :mod:`random` (Flower issue 7522: masks from a 32-bit Mersenne Twister seed).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.secagg.log import LOGGER

RandomBytes = Callable[[int], bytes]
"""A source of uniformly random bytes: ``rng(n)`` returns exactly ``n`` bytes."""


def resolve_rng(rng: RandomBytes | None, *, insecure_rng: bool = False) -> RandomBytes:
    """Return the byte source to use: the OS CSPRNG unless a test seam is explicitly opened.

    Args:
        rng: an injected byte source, or ``None`` for :func:`secrets.token_bytes`.
        insecure_rng: must be ``True`` whenever ``rng`` is given; it marks the session insecure.

    Raises:
        ConfigError: a byte source was injected without ``insecure_rng=True``.
    """
    if rng is None:
        return secrets.token_bytes
    if not insecure_rng:
        raise ConfigError(
            "rng was injected but insecure_rng is False: a caller-supplied byte source is a "
            "test seam for known-answer tests only; pass insecure_rng=True to use it, never in "
            "production"
        )
    LOGGER.warning("secure aggregation is using an injected, INSECURE byte source (test seam)")

    def checked(n: int) -> bytes:
        out = rng(n)
        if not isinstance(out, bytes) or len(out) != n:
            raise ConfigError(f"injected rng returned {type(out).__name__} of wrong length for {n}")
        return out

    return checked


def random_below(rng: RandomBytes, bound: int) -> int:
    """A uniform integer in ``[0, bound)`` by rejection sampling (no modulo bias)."""
    if bound <= 0:
        raise ValueError("bound must be positive")
    n_bits = (bound - 1).bit_length()
    n_bytes = max(1, (n_bits + 7) // 8)
    mask = (1 << n_bits) - 1
    while True:
        value = int.from_bytes(rng(n_bytes), "big") & mask
        if value < bound:
            return value


class DeterministicRng:
    """An AES-256-CTR byte stream from a seed. INSECURE: for known-answer tests and replays only.

    Use only through :func:`resolve_rng` with ``insecure_rng=True``.
    """

    def __init__(self, seed: bytes) -> None:
        key = hashlib.sha256(b"fedvpa-secagg/v1/test-rng" + seed).digest()
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def __call__(self, n: int) -> bytes:
        return self._encryptor.update(bytes(n))
