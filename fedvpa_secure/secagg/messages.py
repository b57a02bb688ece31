"""The protocol's messages and their structural validation.

Every message is a frozen dataclass whose fields are only ``bytes``, ``int``, ``str``, tuples and
dicts of those, so each maps one-to-one onto a protobuf message in the later gRPC layer. Every
message carries the protocol version, the round id, the stage and the sender.

:func:`validate` checks a message's size, types, header and field shapes *before any cryptography
runs* (the flwr ``secaggplus_mod`` pattern, but raising instead of asserting): a malformed or
oversized message is refused for what it is, cheaply, and never reaches a parser, a KDF or a
signature check. Checks that need round state (is this sender expected, are these the right
receivers) are done by the sessions, also before any cryptography.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, cast

from fedvpa_secure.errors import ProtocolError
from fedvpa_secure.secagg import envelope, shamir
from fedvpa_secure.secagg.graph import NONCE_BYTES
from fedvpa_secure.secagg.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES

PROTOCOL_VERSION = 2
"""2: the graph seed is a commit-reveal among U1 (the GRAPH_SEED stage), not public data."""
SERVER_ID = "@server"
MASKED_DTYPE = "<u4"
"""The only dtype a masked input may declare: little-endian uint32 ring elements."""
HASH_BYTES = 32
MAX_ID_CHARS = 128
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class Stage(enum.IntEnum):
    """The protocol stages: Bonawitz et al. 2017, Fig. 4, rounds 0-4, with GRAPH_SEED between
    rounds 0 and 1 (U1 fixes the SecAgg+ graph seed by commit-reveal; see :mod:`.graph`)."""

    ADVERTISE_KEYS = 0
    GRAPH_SEED = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY = 4
    UNMASK = 5


def is_valid_id(value: object) -> bool:
    """Client and round ids: 1-128 chars of ``[A-Za-z0-9._:-]``, starting alphanumeric."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class Message:
    """Fields every message carries."""

    version: int
    round_id: str
    stage: int
    sender: str

    STAGE: ClassVar[Stage]
    FROM_SERVER: ClassVar[bool]


# -- server -> client --------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvertiseRequest(Message):
    """Stage 0, server -> client: advertise fresh keys for this round, config and layout."""

    config_digest: bytes
    layout_digest: bytes

    STAGE: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    FROM_SERVER: ClassVar[bool] = True


@dataclass(frozen=True)
class KeyDirectory(Message):
    """Stage 1, server -> client: U1 as id -> (cipher pk, mask pk, nonce commitment,
    advertisement signature); the client signs it and reveals its graph nonce."""

    keys: dict[str, tuple[bytes, bytes, bytes, bytes]]

    STAGE: ClassVar[Stage] = Stage.GRAPH_SEED
    FROM_SERVER: ClassVar[bool] = True


@dataclass(frozen=True)
class RevealDirectory(Message):
    """Stage 2, server -> client: every U1 member's (graph nonce, directory signature)."""

    reveals: dict[str, tuple[bytes, bytes]]

    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS
    FROM_SERVER: ClassVar[bool] = True


@dataclass(frozen=True)
class MaskedInputRequest(Message):
    """Stage 3, server -> client: the envelopes addressed to this client, by sender."""

    envelopes: dict[str, bytes]

    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT
    FROM_SERVER: ClassVar[bool] = True


@dataclass(frozen=True)
class ConsistencyRequest(Message):
    """Stage 4 (hardened), server -> client: the survivor list U3, sorted, to sign."""

    survivors: tuple[str, ...]

    STAGE: ClassVar[Stage] = Stage.CONSISTENCY
    FROM_SERVER: ClassVar[bool] = True


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Stage 5, server -> client: U3, this client's alive and dead neighbours, U4's signatures."""

    survivors: tuple[str, ...]
    alive: tuple[str, ...]
    dead: tuple[str, ...]
    signatures: dict[str, bytes]

    STAGE: ClassVar[Stage] = Stage.UNMASK
    FROM_SERVER: ClassVar[bool] = True


# -- client -> server --------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Stage 0, client -> server: two fresh X25519 public keys, the commitment to a fresh graph
    nonce, and the identity signature over all three."""

    cipher_public: bytes
    mask_public: bytes
    nonce_commitment: bytes
    signature: bytes

    STAGE: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    FROM_SERVER: ClassVar[bool] = False


@dataclass(frozen=True)
class GraphReveal(Message):
    """Stage 1, client -> server: the graph nonce and a signature on the key directory."""

    nonce: bytes
    signature: bytes

    STAGE: ClassVar[Stage] = Stage.GRAPH_SEED
    FROM_SERVER: ClassVar[bool] = False


@dataclass(frozen=True)
class ShareKeys(Message):
    """Stage 2, client -> server: one envelope per neighbour and the share/seed commitments."""

    envelopes: dict[str, bytes]
    share_commitments: dict[str, tuple[bytes, bytes]]  # holder -> (b-share, key-share)
    secret_commitment: bytes

    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS
    FROM_SERVER: ClassVar[bool] = False


@dataclass(frozen=True)
class MaskedInput(Message):
    """Stage 3, client -> server: the masked vector and the senders whose shares were refused."""

    length: int
    dtype: str
    payload: bytes
    rejected: tuple[str, ...]

    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT
    FROM_SERVER: ClassVar[bool] = False


@dataclass(frozen=True)
class ConsistencySignature(Message):
    """Stage 4, client -> server: signature over (session id, sorted U3)."""

    signature: bytes

    STAGE: ClassVar[Stage] = Stage.CONSISTENCY
    FROM_SERVER: ClassVar[bool] = False


@dataclass(frozen=True)
class UnmaskShares(Message):
    """Stage 5, client -> server: one share per neighbour: b's if alive, the key's if dead."""

    self_mask_shares: dict[str, bytes]
    key_shares: dict[str, bytes]

    STAGE: ClassVar[Stage] = Stage.UNMASK
    FROM_SERVER: ClassVar[bool] = False


SERVER_MESSAGES = (
    AdvertiseRequest,
    KeyDirectory,
    RevealDirectory,
    MaskedInputRequest,
    ConsistencyRequest,
    UnmaskRequest,
)
CLIENT_MESSAGES = (
    AdvertiseKeys,
    GraphReveal,
    ShareKeys,
    MaskedInput,
    ConsistencySignature,
    UnmaskShares,
)
ALL_MESSAGES = SERVER_MESSAGES + CLIENT_MESSAGES


def header(message_type: type[Message], round_id: str, sender: str) -> dict[str, Any]:
    """The header fields for a new message of ``message_type``."""
    return {
        "version": PROTOCOL_VERSION,
        "round_id": round_id,
        "stage": int(message_type.STAGE),
        "sender": sender,
    }


# -- size -----------------------------------------------------------------------------------


def _size(value: object, path: str) -> int:
    # protobuf-like: a few bytes of tag/length per field, then the payload
    if isinstance(value, bytes):
        return len(value) + 6
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) + 6
    if isinstance(value, bool):
        raise ProtocolError(f"field {path} is a bool, not an int")
    if isinstance(value, int):
        return 10
    if isinstance(value, tuple):
        return 6 + sum(_size(v, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        return 6 + sum(
            _size(k, f"{path} key") + _size(v, f"{path}[{k!r}]") + 4 for k, v in value.items()
        )
    raise ProtocolError(
        f"field {path} has type {type(value).__name__}, not bytes/int/str/tuple/dict"
    )


def wire_size(message: Message) -> int:
    """An estimate of the encoded size, and a type check: only bytes/int/str/tuple/dict allowed."""
    return sum(_size(getattr(message, f.name), f.name) for f in fields(message))


def _envelope_max() -> int:
    long_id = "x" * MAX_ID_CHARS
    plain = envelope.bundle_length(long_id, long_id, shamir.SHARE_BYTES)
    return envelope.envelope_length(long_id, long_id, plain)


@dataclass(frozen=True)
class MessageLimits:
    """The largest acceptable wire size of each message type in one round.

    Sized from the expected content with generous fixed slack; the masked input's limit is
    ``max_message_factor`` times its exact size (PROTOCOL.md: "a small multiple of the expected
    update size").
    """

    limits: Mapping[type, int]

    @classmethod
    def for_round(
        cls, n_clients: int, degree: int | None, vector_length: int, factor: float
    ) -> MessageLimits:
        """Limits for a round of ``n_clients`` with neighbourhood ``degree`` (None: full)."""
        slack = 4096
        ident = MAX_ID_CHARS + 16
        nbrs = n_clients - 1 if degree is None else min(degree, n_clients - 1)
        env = _envelope_max() + ident
        share = shamir.SHARE_BYTES + ident
        return cls(
            {
                AdvertiseRequest: slack,
                AdvertiseKeys: slack,
                KeyDirectory: slack
                + n_clients * (ident + 2 * PUBLIC_KEY_BYTES + HASH_BYTES + SIGNATURE_BYTES + 40),
                GraphReveal: slack,
                RevealDirectory: slack + n_clients * (ident + NONCE_BYTES + SIGNATURE_BYTES + 30),
                ShareKeys: slack + nbrs * env + (nbrs + 1) * (ident + 2 * HASH_BYTES + 20),
                MaskedInputRequest: slack + nbrs * env,
                MaskedInput: slack + int(factor * 4 * vector_length) + nbrs * ident,
                ConsistencyRequest: slack + n_clients * ident,
                ConsistencySignature: slack,
                UnmaskRequest: slack + n_clients * (3 * ident + SIGNATURE_BYTES),
                UnmaskShares: slack + (nbrs + 1) * share,
            }
        )

    def limit(self, message_type: type) -> int:
        """The size limit of ``message_type``."""
        return self.limits[message_type]


# -- structure --------------------------------------------------------------------------------


def _fail(message: Message, what: str) -> ProtocolError:
    return ProtocolError(f"malformed {type(message).__name__}: {what}")


def _bytes(m: Message, name: str, value: object, length: int | None) -> None:
    if not isinstance(value, bytes):
        raise _fail(m, f"{name} is {type(value).__name__}, not bytes")
    if length is not None and len(value) != length:
        raise _fail(m, f"{name} has {len(value)} bytes, expected {length}")


def _ids(m: Message, name: str, value: object) -> None:
    if not isinstance(value, tuple):
        raise _fail(m, f"{name} is {type(value).__name__}, not a tuple")
    for item in value:
        if not is_valid_id(item):
            raise _fail(m, f"{name} holds an invalid client id {item!r:.40}")


def _id_map(m: Message, name: str, value: object) -> None:
    if not isinstance(value, dict):
        raise _fail(m, f"{name} is {type(value).__name__}, not a dict")
    for key in value:
        if not is_valid_id(key):
            raise _fail(m, f"{name} has an invalid client id key {key!r:.40}")


def _map_of_bytes(m: Message, name: str, value: object, length: int | None) -> None:
    _id_map(m, name, value)
    for key, item in value.items():  # type: ignore[union-attr]
        _bytes(m, f"{name}[{key!r}]", item, length)


def _map_of_tuples(m: Message, name: str, value: object, lengths: tuple[int, ...]) -> None:
    _id_map(m, name, value)
    for key, item in value.items():  # type: ignore[union-attr]
        if not isinstance(item, tuple) or len(item) != len(lengths):
            raise _fail(m, f"{name}[{key!r}] is not a tuple of {len(lengths)} byte strings")
        for i, (part, length) in enumerate(zip(item, lengths, strict=True)):
            _bytes(m, f"{name}[{key!r}][{i}]", part, length)


def validate_advertise_request(m: AdvertiseRequest) -> None:
    """Fields of an :class:`AdvertiseRequest`: two 32-byte hashes."""
    _bytes(m, "config_digest", m.config_digest, HASH_BYTES)
    _bytes(m, "layout_digest", m.layout_digest, HASH_BYTES)


def validate_key_directory(m: KeyDirectory) -> None:
    """Fields of a :class:`KeyDirectory`: id -> (two 32-byte keys, a 32-byte hash, a signature)."""
    _map_of_tuples(
        m, "keys", m.keys, (PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES, HASH_BYTES, SIGNATURE_BYTES)
    )


def validate_reveal_directory(m: RevealDirectory) -> None:
    """Fields of a :class:`RevealDirectory`: id -> (32-byte nonce, 64-byte signature)."""
    _map_of_tuples(m, "reveals", m.reveals, (NONCE_BYTES, SIGNATURE_BYTES))


def validate_masked_input_request(m: MaskedInputRequest) -> None:
    """Fields of a :class:`MaskedInputRequest`: id -> envelope bytes."""
    _map_of_bytes(m, "envelopes", m.envelopes, None)


def validate_consistency_request(m: ConsistencyRequest) -> None:
    """Fields of a :class:`ConsistencyRequest`: a tuple of ids."""
    _ids(m, "survivors", m.survivors)


def validate_unmask_request(m: UnmaskRequest) -> None:
    """Fields of an :class:`UnmaskRequest`: three id tuples and id -> 64-byte signature."""
    _ids(m, "survivors", m.survivors)
    _ids(m, "alive", m.alive)
    _ids(m, "dead", m.dead)
    _map_of_bytes(m, "signatures", m.signatures, SIGNATURE_BYTES)


def validate_advertise_keys(m: AdvertiseKeys) -> None:
    """Fields of an :class:`AdvertiseKeys`: two 32-byte keys, a 32-byte hash, a signature."""
    _bytes(m, "cipher_public", m.cipher_public, PUBLIC_KEY_BYTES)
    _bytes(m, "mask_public", m.mask_public, PUBLIC_KEY_BYTES)
    _bytes(m, "nonce_commitment", m.nonce_commitment, HASH_BYTES)
    _bytes(m, "signature", m.signature, SIGNATURE_BYTES)


def validate_graph_reveal(m: GraphReveal) -> None:
    """Fields of a :class:`GraphReveal`: a 32-byte nonce and a 64-byte signature."""
    _bytes(m, "nonce", m.nonce, NONCE_BYTES)
    _bytes(m, "signature", m.signature, SIGNATURE_BYTES)


def validate_share_keys(m: ShareKeys) -> None:
    """Fields of a :class:`ShareKeys`: envelopes, (32, 32)-byte commitments, a 32-byte hash."""
    _map_of_bytes(m, "envelopes", m.envelopes, None)
    _map_of_tuples(m, "share_commitments", m.share_commitments, (HASH_BYTES, HASH_BYTES))
    _bytes(m, "secret_commitment", m.secret_commitment, HASH_BYTES)


def validate_masked_input(m: MaskedInput) -> None:
    """Fields of a :class:`MaskedInput`: a length, a dtype string, bytes, a tuple of ids."""
    if not isinstance(m.length, int) or isinstance(m.length, bool) or m.length < 0:
        raise _fail(m, f"length {m.length!r:.40} is not a non-negative int")
    if not isinstance(m.dtype, str):
        raise _fail(m, "dtype is not a string")
    _bytes(m, "payload", m.payload, None)
    _ids(m, "rejected", m.rejected)


def validate_consistency_signature(m: ConsistencySignature) -> None:
    """Fields of a :class:`ConsistencySignature`: a 64-byte signature."""
    _bytes(m, "signature", m.signature, SIGNATURE_BYTES)


def validate_unmask_shares(m: UnmaskShares) -> None:
    """Fields of an :class:`UnmaskShares`: two maps of id -> encoded share."""
    _map_of_bytes(m, "self_mask_shares", m.self_mask_shares, shamir.SHARE_BYTES)
    _map_of_bytes(m, "key_shares", m.key_shares, shamir.SHARE_BYTES)


FIELD_VALIDATORS: dict[type[Message], Callable[[Any], None]] = {
    AdvertiseRequest: validate_advertise_request,
    KeyDirectory: validate_key_directory,
    RevealDirectory: validate_reveal_directory,
    MaskedInputRequest: validate_masked_input_request,
    ConsistencyRequest: validate_consistency_request,
    UnmaskRequest: validate_unmask_request,
    AdvertiseKeys: validate_advertise_keys,
    GraphReveal: validate_graph_reveal,
    ShareKeys: validate_share_keys,
    MaskedInput: validate_masked_input,
    ConsistencySignature: validate_consistency_signature,
    UnmaskShares: validate_unmask_shares,
}
"""The per-type field validator that :func:`validate` runs after the common checks."""


def validate(
    message: object, *, expected: type[Message], round_id: str, limits: MessageLimits
) -> None:
    """Check a message's type, size, header and fields. Runs before any cryptography.

    Args:
        message: the inbound object (from a peer; trust nothing about it).
        expected: the message type legal at this point of the protocol.
        round_id: the round the receiver is in.
        limits: the round's size limits.

    Raises:
        ProtocolError: the first problem found, named (never echoing secret material).
    """
    if type(message) is not expected:
        raise ProtocolError(
            f"expected a {expected.__name__} (stage {expected.STAGE.name}), "
            f"got {type(message).__name__}"
        )
    message = cast(Message, message)
    size = wire_size(message)
    if size > limits.limit(expected):
        raise ProtocolError(
            f"oversized {expected.__name__}: ~{size} bytes, limit {limits.limit(expected)}"
        )
    if message.version != PROTOCOL_VERSION:
        raise _fail(
            message, f"protocol version {message.version!r:.20}, expected {PROTOCOL_VERSION}"
        )
    if message.round_id != round_id:
        raise _fail(message, f"round id {message.round_id!r:.40}, expected {round_id!r}")
    if message.stage != int(expected.STAGE):
        raise _fail(message, f"stage {message.stage!r:.20}, expected {int(expected.STAGE)}")
    if expected.FROM_SERVER:
        if message.sender != SERVER_ID:
            raise _fail(message, f"sender {message.sender!r:.40} is not the server")
    elif not is_valid_id(message.sender):
        raise _fail(message, f"sender {message.sender!r:.40} is not a valid client id")
    FIELD_VALIDATORS[expected](message)
