"""Message dataclasses map onto protobuf, and validation runs before any cryptography."""

from __future__ import annotations

import dataclasses
import typing
from unittest import mock

import pytest

from fedvpa_secure.errors import ProtocolError
from fedvpa_secure.secagg import MessageLimits, validate
from fedvpa_secure.secagg import messages as msgs
from fedvpa_secure.secagg.messages import (
    PROTOCOL_VERSION,
    AdvertiseKeys,
    AdvertiseRequest,
    GraphReveal,
    KeyDirectory,
    MaskedInput,
    RevealDirectory,
    Stage,
    UnmaskRequest,
    wire_size,
)

LIMITS = MessageLimits.for_round(10, None, 1000, 2.0)
ALLOWED = {bytes, int, str}


def _allowed(tp: object) -> bool:
    origin = typing.get_origin(tp)
    if origin is None:
        return tp in ALLOWED
    args = typing.get_args(tp)
    if origin is tuple:
        return all(a is Ellipsis or _allowed(a) for a in args)
    if origin is dict:
        return args[0] is str and _allowed(args[1])
    return False


@pytest.mark.parametrize("cls", msgs.ALL_MESSAGES, ids=lambda c: c.__name__)
def test_messages_are_frozen_with_protobuf_friendly_fields(cls: type) -> None:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    assert names[:4] == ["version", "round_id", "stage", "sender"]
    for name in names:
        assert _allowed(hints[name]), (cls.__name__, name, hints[name])
    assert cls.__dataclass_params__.frozen


def test_every_message_type_has_a_field_validator() -> None:
    assert set(msgs.FIELD_VALIDATORS) == set(msgs.ALL_MESSAGES)


def _keys_msg(**kw) -> AdvertiseKeys:
    base = dict(
        version=PROTOCOL_VERSION,
        round_id="r1",
        stage=0,
        sender="c001",
        cipher_public=b"c" * 32,
        mask_public=b"m" * 32,
        nonce_commitment=b"n" * 32,
        signature=b"s" * 64,
    )
    return AdvertiseKeys(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"version": PROTOCOL_VERSION + 1}, "protocol version"),
        ({"version": True}, "bool"),
        ({"round_id": "r2"}, "round id"),
        ({"stage": 1}, "stage"),
        ({"sender": "@server"}, "not a valid client id"),
        ({"sender": "x" * 500}, "not a valid client id"),
        ({"cipher_public": b"c" * 31}, "expected 32"),
        ({"mask_public": "m" * 32}, "not bytes"),
        ({"nonce_commitment": b"n" * 31}, "nonce_commitment has 31 bytes"),
        ({"signature": [1, 2]}, "not bytes/int/str/tuple/dict"),
        ({"signature": b"s" * 10_000}, "oversized"),
    ],
)
def test_validation_names_the_problem(kw: dict, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        validate(_keys_msg(**kw), expected=AdvertiseKeys, round_id="r1", limits=LIMITS)


def test_valid_message_passes_and_wrong_type_fails() -> None:
    validate(_keys_msg(), expected=AdvertiseKeys, round_id="r1", limits=LIMITS)
    with pytest.raises(ProtocolError, match="expected a MaskedInput"):
        validate(_keys_msg(), expected=MaskedInput, round_id="r1", limits=LIMITS)
    with pytest.raises(ProtocolError, match="expected a AdvertiseKeys"):
        validate({"cipher_public": b""}, expected=AdvertiseKeys, round_id="r1", limits=LIMITS)


def test_server_messages_must_come_from_the_server() -> None:
    m = AdvertiseRequest(
        version=PROTOCOL_VERSION,
        round_id="r1",
        stage=0,
        sender="c001",
        config_digest=b"c" * 32,
        layout_digest=b"l" * 32,
    )
    with pytest.raises(ProtocolError, match="not the server"):
        validate(m, expected=AdvertiseRequest, round_id="r1", limits=LIMITS)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"alive": ["c001"]}, "has type list"),
        ({"alive": "c001"}, "not a tuple"),
        ({"dead": ("bad id",)}, "invalid client id"),
        ({"signatures": {"c001": b"x"}}, "expected 64"),
        ({"signatures": {1: b"x" * 64}}, "invalid client id key"),
        ({"survivors": ("c001", 3)}, "invalid client id"),
    ],
)
def test_nested_fields_are_checked(kw: dict, match: str) -> None:
    base = dict(
        version=PROTOCOL_VERSION,
        round_id="r1",
        stage=int(Stage.UNMASK),
        sender="@server",
        survivors=("c001",),
        alive=("c001",),
        dead=(),
        signatures={},
    )
    with pytest.raises(ProtocolError, match=match):
        validate(
            UnmaskRequest(**{**base, **kw}), expected=UnmaskRequest, round_id="r1", limits=LIMITS
        )


def _graph_messages() -> list[tuple[type, dict]]:
    head = {"version": PROTOCOL_VERSION, "round_id": "r1"}
    server = {**head, "sender": "@server"}
    return [
        (
            KeyDirectory,
            {
                **server,
                "stage": int(Stage.GRAPH_SEED),
                "keys": {"c001": (b"c" * 32, b"m" * 32, b"n" * 32, b"s" * 64)},
            },
        ),
        (
            GraphReveal,
            {
                **head,
                "stage": int(Stage.GRAPH_SEED),
                "sender": "c001",
                "nonce": b"r" * 32,
                "signature": b"s" * 64,
            },
        ),
        (
            RevealDirectory,
            {
                **server,
                "stage": int(Stage.SHARE_KEYS),
                "reveals": {"c001": (b"r" * 32, b"s" * 64)},
            },
        ),
    ]


@pytest.mark.parametrize(
    ("cls", "kw", "match"),
    [
        (KeyDirectory, {"keys": {"c001": (b"c" * 32, b"m" * 32, b"s" * 64)}}, "not a tuple of 4"),
        (KeyDirectory, {"keys": {"c001": (b"c" * 32, b"m" * 32, b"n" * 31, b"s" * 64)}}, "31"),
        (GraphReveal, {"nonce": b"r" * 33}, "nonce has 33 bytes"),
        (GraphReveal, {"signature": b""}, "signature has 0 bytes"),
        (RevealDirectory, {"reveals": {"c001": (b"r" * 32,)}}, "not a tuple of 2"),
        (RevealDirectory, {"reveals": {"bad id": (b"r" * 32, b"s" * 64)}}, "invalid client id"),
        (RevealDirectory, {"stage": int(Stage.GRAPH_SEED)}, "stage"),
    ],
    ids=[
        "dir-3-tuple",
        "dir-commitment",
        "long-nonce",
        "no-sig",
        "reveal-1-tuple",
        "bad-id",
        "stage",
    ],
)
def test_graph_seed_messages_are_checked(cls: type, kw: dict, match: str) -> None:
    good = dict(_graph_messages())
    validate(cls(**good[cls]), expected=cls, round_id="r1", limits=LIMITS)
    with pytest.raises(ProtocolError, match=match):
        validate(cls(**{**good[cls], **kw}), expected=cls, round_id="r1", limits=LIMITS)


def test_validation_runs_before_any_cryptography() -> None:
    """A malformed message never reaches X25519, HKDF, AEAD or signature code."""
    from secagg_testkit import make_updates

    from fedvpa_secure.secagg import InProcessRound, SecAggConfig

    rnd = InProcessRound(make_updates(5), SecAggConfig(n_clients=5))
    rnd.server.start()
    bad = _keys_msg(round_id="round-1", sender="c001", cipher_public=b"c" * 33)
    with (
        mock.patch("fedvpa_secure.secagg.keys.verify") as verify,
        mock.patch("fedvpa_secure.secagg.keys.is_valid_public_key") as check,
        pytest.raises(ProtocolError),
    ):
        rnd.server.receive(bad, authenticated_sender="c001")
    verify.assert_not_called()
    check.assert_not_called()


def test_wire_size_is_close_to_the_payload() -> None:
    m = MaskedInput(
        version=PROTOCOL_VERSION,
        round_id="r1",
        stage=int(Stage.MASKED_INPUT),
        sender="c001",
        length=1000,
        dtype="<u4",
        payload=bytes(4000),
        rejected=(),
    )
    assert 4000 < wire_size(m) < 4100


def test_limits_grow_with_the_round() -> None:
    small = MessageLimits.for_round(10, None, 1000, 2.0)
    large = MessageLimits.for_round(1000, 50, 10**6, 2.0)
    for cls in msgs.ALL_MESSAGES:
        assert large.limit(cls) >= small.limit(cls)
    assert small.limit(MaskedInput) >= 2 * 4 * 1000
