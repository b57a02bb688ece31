"""Per-round X25519 key pairs, long-term Ed25519 identity signatures, and key checks.

Each client draws two fresh X25519 pairs per round (Bonawitz et al. 2017, Fig. 4, round 0): the
"cipher" pair agrees share-encryption keys, the "mask" pair agrees pairwise mask seeds. They must
differ because the server later learns a dropped client's *mask* secret key, which must reveal
nothing about the shares that client exchanged. Keys are advertised with an Ed25519 signature over
(label, round id, client id, config hash, layout hash, both keys, graph-nonce commitment) under the
client's registered long-term identity: a malicious server can then neither substitute keys or the
commitment (it cannot sign) nor replay them from another round (the round id is signed) - the
"malicious server" hardening of Sec. 6. Before revealing its graph nonce a client signs the whole
key directory (:func:`directory_payload`), so every client can check that all of U1 saw the same
members, keys and commitments (see :mod:`~fedvpa_secure.secagg.graph`).

Public keys are checked before use: all-zero and small-order points would force a known shared
secret, so :func:`is_valid_public_key` runs a trial exchange (X25519 clamps scalars to multiples of
8, so every small-order point gives the all-zero output, which ``cryptography`` refuses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedvpa_secure.errors import IntegrityError
from fedvpa_secure.secagg.encoding import lp, lp_str, lp_strs, u32
from fedvpa_secure.secagg.rng import RandomBytes

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
SIGNATURE_BYTES = 64
LABEL_ADVERTISE = b"fedvpa-secagg/v1/advertise"
LABEL_CONSISTENCY = b"fedvpa-secagg/v1/consistency"
LABEL_DIRECTORY = b"fedvpa-secagg/v1/key-directory"

_RAW = serialization.Encoding.Raw
_probe_key: X25519PrivateKey | None = None


@dataclass(frozen=True, repr=False)
class RoundKeys:
    """A client's two X25519 key pairs for one round. ``repr`` shows public halves only."""

    cipher_private: X25519PrivateKey
    mask_private: X25519PrivateKey
    cipher_public: bytes
    mask_public: bytes

    def __repr__(self) -> str:
        return f"RoundKeys(cipher_public={self.cipher_public.hex()}, mask_public=...)"


def _x25519_from(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes(_RAW, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte private key (what a client Shamir-shares)."""
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def generate_round_keys(rng: RandomBytes) -> RoundKeys:
    """Two fresh, distinct X25519 pairs from ``rng`` (the OS CSPRNG outside tests)."""
    while True:
        cipher = _x25519_from(rng(PRIVATE_KEY_BYTES))
        mask = _x25519_from(rng(PRIVATE_KEY_BYTES))
        cpk, mpk = public_bytes(cipher), public_bytes(mask)
        if cpk != mpk:  # equal only if rng repeats itself
            return RoundKeys(cipher, mask, cpk, mpk)


def is_valid_public_key(data: object) -> bool:
    """True for a 32-byte X25519 public key that is neither all-zero nor of small order."""
    global _probe_key
    if not isinstance(data, bytes) or len(data) != PUBLIC_KEY_BYTES or data == bytes(32):
        return False
    if _probe_key is None:
        _probe_key = X25519PrivateKey.generate()
    try:
        _probe_key.exchange(X25519PublicKey.from_public_bytes(data))
    except ValueError:  # all-zero shared secret: a small-order point
        return False
    return True


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret with ``peer_public``; an all-zero result is an integrity failure.

    Raises:
        IntegrityError: the peer key is malformed or of small order.
    """
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise IntegrityError("key agreement failed") from exc


def mask_public_from_private(raw_private: bytes) -> bytes:
    """The X25519 public key of a reconstructed 32-byte private key (the server's check)."""
    return public_bytes(_x25519_from(raw_private))


def mask_private_from_bytes(raw_private: bytes) -> X25519PrivateKey:
    """An X25519 private key object from its 32 raw bytes."""
    return _x25519_from(raw_private)


def advertisement_payload(
    round_id: str,
    client_id: str,
    config_digest: bytes,
    layout_digest: bytes,
    cipher_public: bytes,
    mask_public: bytes,
    nonce_commitment: bytes,
) -> bytes:
    """The bytes a client signs when it advertises its round keys and graph-nonce commitment."""
    return (
        LABEL_ADVERTISE
        + lp_str(round_id)
        + lp_str(client_id)
        + lp(config_digest)
        + lp(layout_digest)
        + lp(cipher_public)
        + lp(mask_public)
        + lp(nonce_commitment)
    )


def directory_payload(session_id: bytes, commitments: Mapping[str, bytes]) -> bytes:
    """The bytes a client signs before revealing its graph nonce: the key directory it was shown.

    The session id covers the round, config, layout, U1 and every key pair; the commitments are
    added because they decide the graph seed. A client signs one directory per round, so two
    clients shown different U1s or commitments can never both collect a full set of signatures.

    Args:
        session_id: :func:`kdf.session_id` over the directory.
        commitments: every member of U1 -> its graph-nonce commitment.
    """
    body = b"".join(lp_str(u) + lp(commitments[u]) for u in sorted(commitments))
    return LABEL_DIRECTORY + lp(session_id) + u32(len(commitments)) + body


def consistency_payload(session_id: bytes, survivors: Sequence[str]) -> bytes:
    """The bytes a client signs in the consistency round: the session id and sorted U3."""
    return LABEL_CONSISTENCY + lp(session_id) + lp_strs(sorted(survivors))


def sign(identity: Ed25519PrivateKey, payload: bytes) -> bytes:
    """An Ed25519 signature with the client's long-term identity key."""
    return identity.sign(payload)


def verify(identity_public: bytes, signature: bytes, payload: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature on ``payload``. Never raises."""
    try:
        Ed25519PublicKey.from_public_bytes(identity_public).verify(signature, payload)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def identity_public_bytes(identity: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte Ed25519 public key registered with the server out of band."""
    return identity.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
