"""HKDF-SHA256 with session binding, and the session id itself.

Every symmetric key and mask seed is ``HKDF(ikm, salt=session id, info=label || party ids)``:

* the salt binds the key to one session (round id, config, layout and every advertised public
  key), so nothing derived in one round is valid in another, and a server that shows different
  clients different key lists gets different keys and garbage instead of a leak;
* the versioned label separates purposes (a share-encryption key can never equal a mask seed);
* the ordered, length-prefixed party ids separate directions and pairs.

Flower's SecAgg+ binds nothing to the session; PROTOCOL.md's primitives table asks for exactly this
binding. The labels below are frozen by the known-answer vectors in ``tests/protocol/vectors``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedvpa_secure.secagg.encoding import lp, lp_str, lp_strs, u32

LABEL_SHARE_KEY = b"fedvpa-secagg/v1/share-key"
LABEL_PAIR_MASK = b"fedvpa-secagg/v1/pair-mask"
LABEL_SELF_MASK = b"fedvpa-secagg/v1/self-mask"
LABEL_SESSION = b"fedvpa-secagg/v1/session"
LABELS = {
    "share-key": LABEL_SHARE_KEY,
    "pair-mask": LABEL_PAIR_MASK,
    "self-mask": LABEL_SELF_MASK,
}
KEY_BYTES = 32


def hkdf(ikm: bytes, *, salt: bytes, label: bytes, parties: Sequence[str]) -> bytes:
    """HKDF-SHA256 (RFC 5869) to 32 bytes with ``info = label || count || lp(id)...``."""
    info = label + lp_strs(parties)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(ikm)


def share_key(shared_secret: bytes, session_id: bytes, sender: str, receiver: str) -> bytes:
    """The AEAD key for shares travelling ``sender -> receiver`` (one key per direction)."""
    return hkdf(shared_secret, salt=session_id, label=LABEL_SHARE_KEY, parties=(sender, receiver))


def pair_mask_key(shared_secret: bytes, session_id: bytes, a: str, b: str) -> bytes:
    """The pairwise mask stream key of clients ``a`` and ``b`` (symmetric: ids are sorted)."""
    first, second = sorted((a, b))
    return hkdf(shared_secret, salt=session_id, label=LABEL_PAIR_MASK, parties=(first, second))


def self_mask_key(seed: bytes, session_id: bytes, owner: str) -> bytes:
    """The self-mask stream key of ``owner`` from its Shamir-shared seed b."""
    return hkdf(seed, salt=session_id, label=LABEL_SELF_MASK, parties=(owner,))


def session_id(
    *,
    version: int,
    round_id: str,
    config_digest: bytes,
    layout_digest: bytes,
    keys: Mapping[str, tuple[bytes, bytes]],
) -> bytes:
    """SHA-256 of the protocol version, round id, config and layout hashes and every U1 key pair.

    Args:
        version: the protocol version.
        round_id: the round id (never reused: a retry is a new round with fresh keys).
        config_digest: :meth:`SecAggConfig.digest`.
        layout_digest: :attr:`Layout.digest`.
        keys: client id -> (cipher public key, mask public key) for every client in U1.
    """
    h = hashlib.sha256(LABEL_SESSION + u32(version) + lp_str(round_id))
    h.update(lp(config_digest) + lp(layout_digest) + u32(len(keys)))
    for client_id in sorted(keys):
        cipher_pk, mask_pk = keys[client_id]
        h.update(lp_str(client_id) + lp(cipher_pk) + lp(mask_pk))
    return h.digest()
