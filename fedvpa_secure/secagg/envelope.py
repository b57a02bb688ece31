"""AEAD envelopes that carry a client's two shares to one neighbour through the server.

Format: ``header || nonce (12) || ChaCha20-Poly1305(plaintext)`` where the header is
``"FVSE" || version (2) || stage (1) || session id (32) || lp(sender) || lp(receiver)`` and is the
associated data. The key is per direction (``kdf.share_key(sender, receiver)``), so a ciphertext
cannot be reflected back to its sender, and the session id in the associated data stops one
session's ciphertexts from opening in another (Bonawitz et al. 2017, Fig. 4, rounds 1-2; PROTOCOL.md
asks for exactly this associated data).

The header is readable without the key. The server checks it when a client deals its shares, so
an honest server never forwards an envelope for another session; a client that receives one knows
the server misbehaved and aborts. An envelope whose header is right but whose ciphertext does not
authenticate can only be the sender's (or a relay's) fault; the receiver refuses it and reports
the sender, who is then excluded from the round.

The plaintext repeats both ids (``lp(sender) || lp(receiver) || lp(b share) || lp(key share)``), and
the receiver checks them, as Bonawitz et al. do.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedvpa_secure.errors import IntegrityError, ProtocolError
from fedvpa_secure.secagg.encoding import lp_str
from fedvpa_secure.secagg.rng import RandomBytes

MAGIC = b"FVSE"
NONCE_BYTES = 12
TAG_BYTES = 16
SESSION_BYTES = 32
_FIXED = len(MAGIC) + 2 + 1 + SESSION_BYTES


@dataclass(frozen=True)
class EnvelopeHeader:
    """The cleartext, authenticated header of a share envelope."""

    version: int
    stage: int
    session_id: bytes
    sender: str
    receiver: str

    def encode(self) -> bytes:
        """The header bytes (also the AEAD associated data)."""
        return (
            MAGIC
            + self.version.to_bytes(2, "big")
            + self.stage.to_bytes(1, "big")
            + self.session_id
            + lp_str(self.sender)
            + lp_str(self.receiver)
        )


def _read_lp(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(data):
        raise ProtocolError("truncated envelope")
    n = int.from_bytes(data[pos : pos + 4], "big")
    end = pos + 4 + n
    if end > len(data) or n > 4096:
        raise ProtocolError("truncated envelope")
    return data[pos + 4 : end], end


def _read_str(data: bytes, pos: int) -> tuple[str, int]:
    raw, pos = _read_lp(data, pos)
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError as exc:
        raise ProtocolError("envelope id is not UTF-8") from exc


def parse_header(envelope: bytes) -> tuple[EnvelopeHeader, int]:
    """Parse the cleartext header; returns it and its length. No cryptography runs here.

    Raises:
        ProtocolError: the bytes are not an envelope.
    """
    if not isinstance(envelope, bytes) or len(envelope) < _FIXED or envelope[:4] != MAGIC:
        raise ProtocolError("not a share envelope")
    version = int.from_bytes(envelope[4:6], "big")
    stage = envelope[6]
    session = envelope[7:_FIXED]
    sender, pos = _read_str(envelope, _FIXED)
    receiver, pos = _read_str(envelope, pos)
    if len(envelope) < pos + NONCE_BYTES + TAG_BYTES:
        raise ProtocolError("truncated envelope")
    return EnvelopeHeader(version, stage, session, sender, receiver), pos


def envelope_length(sender: str, receiver: str, plaintext_length: int) -> int:
    """The exact byte length of an envelope (the server checks it before forwarding)."""
    ids = len(lp_str(sender)) + len(lp_str(receiver))
    return _FIXED + ids + NONCE_BYTES + plaintext_length + TAG_BYTES


def seal(key: bytes, header: EnvelopeHeader, plaintext: bytes, rng: RandomBytes) -> bytes:
    """Encrypt ``plaintext`` under ``key`` with the header as associated data."""
    head = header.encode()
    nonce = rng(NONCE_BYTES)
    return head + nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, head)


def open_envelope(key: bytes, envelope: bytes) -> tuple[EnvelopeHeader, bytes]:
    """Authenticate and decrypt an envelope.

    Raises:
        ProtocolError: the bytes are not an envelope.
        IntegrityError: authentication failed (wrong key, session, ids, or tampering).
    """
    header, pos = parse_header(envelope)
    nonce = envelope[pos : pos + NONCE_BYTES]
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(
            nonce, envelope[pos + NONCE_BYTES :], envelope[:pos]
        )
    except InvalidTag as exc:
        raise IntegrityError("share envelope failed authentication") from exc
    return header, plaintext


def encode_bundle(sender: str, receiver: str, b_share: bytes, key_share: bytes) -> bytes:
    """The envelope plaintext: both ids and the two encoded shares, length-prefixed."""
    return lp_str(sender) + lp_str(receiver) + _lp(b_share) + _lp(key_share)


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def bundle_length(sender: str, receiver: str, share_bytes: int) -> int:
    """The plaintext length of a bundle whose two shares are ``share_bytes`` long each."""
    return len(lp_str(sender)) + len(lp_str(receiver)) + 2 * (4 + share_bytes)


def decode_bundle(plaintext: bytes) -> tuple[str, str, bytes, bytes]:
    """Split a bundle into (sender, receiver, b share, key share).

    Raises:
        ProtocolError: malformed plaintext.
    """
    sender, pos = _read_str(plaintext, 0)
    receiver, pos = _read_str(plaintext, pos)
    b_share, pos = _read_lp(plaintext, pos)
    key_share, pos = _read_lp(plaintext, pos)
    if pos != len(plaintext):
        raise ProtocolError("trailing bytes in share bundle")
    return sender, receiver, b_share, key_share
