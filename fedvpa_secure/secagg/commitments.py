"""Hash commitments that let the server check revealed shares and rebuilt seeds.

Bonawitz et al. 2017 check a rebuilt *key* against its advertised public key but have no check for
the self-mask seed b, and no way to tell which of several revealed shares is corrupt. Here each
client, when it deals its shares (round 1), also sends the server

* one commitment per (holder, kind) to the encoded share it dealt, and
* one commitment to b itself.

In round 4 the server checks every revealed share against its commitment *before* interpolating,
so a client revealing garbage is named and dropped and the round goes on with the honest shares;
the rebuilt b is checked against its commitment and the rebuilt key against its public key. The
committed values are uniformly random 66- and 32-byte strings, so SHA-256 commitments to them hide
nothing the server could use.
"""

from __future__ import annotations

import hashlib
import hmac

from fedvpa_secure.secagg.encoding import lp, lp_str

LABEL_SHARE = b"fedvpa-secagg/v1/share-commitment"
LABEL_SECRET = b"fedvpa-secagg/v1/secret-commitment"
COMMITMENT_BYTES = 32


def share_commitment(session_id: bytes, owner: str, holder: str, kind: str, share: bytes) -> bytes:
    """Commitment to the encoded share of ``owner``'s secret ``kind`` dealt to ``holder``."""
    return hashlib.sha256(
        LABEL_SHARE + lp(session_id) + lp_str(owner) + lp_str(holder) + lp_str(kind) + lp(share)
    ).digest()


def secret_commitment(session_id: bytes, owner: str, secret: bytes) -> bytes:
    """Commitment to ``owner``'s self-mask seed b."""
    return hashlib.sha256(LABEL_SECRET + lp(session_id) + lp_str(owner) + lp(secret)).digest()


def matches(expected: bytes, actual: bytes) -> bool:
    """Constant-time comparison of two commitments."""
    return hmac.compare_digest(expected, actual)
