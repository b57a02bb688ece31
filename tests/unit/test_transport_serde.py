"""Wire conversions: every secagg message round-trips; bad tensors and streams are refused."""

from __future__ import annotations

import numpy as np
import pytest

from fedvpa_secure.errors import ProtocolError
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.secagg import InProcessRound, SecAggConfig
from fedvpa_secure.secagg.messages import ALL_MESSAGES
from fedvpa_secure.transport import serde
from fedvpa_secure.transport.chunking import iter_chunks, reassemble


def test_every_message_of_a_real_round_round_trips() -> None:
    updates = [{"w": np.full(5, i, np.float32)} for i in range(4)]
    rnd = InProcessRound(updates, SecAggConfig(n_clients=4, clip={"": 8.0}))
    rnd.run()
    kinds = set()
    for _stage, _who, message in [*rnd.transcript, *rnd.server_messages]:
        blob = serde.message_to_proto(message).SerializeToString()
        assert serde.parse_secagg(blob) == message
        kinds.add(type(message).__name__)
    assert kinds == {m.__name__ for m in ALL_MESSAGES}  # every message kind crossed the wire


def test_malformed_secagg_messages_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError):
        serde.parse_secagg(b"\xff\xff\xff")
    with pytest.raises(ProtocolError, match="unknown"):
        serde.message_from_proto(pb.SecAggMessage(kind="Nope", header=pb.Header()))
    msg = pb.SecAggMessage(kind="ConsistencySignature", header=pb.Header(round_id="r"))
    with pytest.raises(ProtocolError, match="missing"):
        serde.message_from_proto(msg)
    msg.fields["signature"].integer = 3
    with pytest.raises(ProtocolError, match="must be raw"):
        serde.message_from_proto(msg)


def test_tensor_bundle_checks() -> None:
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)}
    bundle = serde.arrays_to_bundle(arrays)
    back = serde.bundle_to_arrays(bundle, expected=serde.spec_of(arrays))
    assert all(np.array_equal(arrays[k], back[k]) for k in arrays)
    bad = pb.TensorBundle()
    bad.CopyFrom(bundle)
    bad.tensors[0].data = bad.tensors[0].data[:-1]
    with pytest.raises(ProtocolError, match="bytes"):
        serde.bundle_to_arrays(bad)
    bad.CopyFrom(bundle)
    bad.tensors[0].dtype = "|O"
    with pytest.raises(ProtocolError, match="not allowed"):
        serde.bundle_to_arrays(bad)
    with pytest.raises(ProtocolError, match="differ"):
        serde.bundle_to_arrays(bundle, expected={"a": ((2, 3), "<f4")})
    with pytest.raises(ProtocolError, match="expected"):
        serde.bundle_to_arrays(bundle, expected={"a": ((3, 2), "<f4"), "b": ((2,), "<f8")})
    assert serde.state_hash(arrays) == serde.state_hash(dict(reversed(arrays.items())))


def test_chunking_round_trip_and_limits() -> None:
    blob = bytes(range(256)) * 5000
    chunks = list(iter_chunks(blob, 4096))
    assert len(chunks) > 1
    assert reassemble(chunks, expected_size=len(blob), max_size=len(blob)) == blob
    with pytest.raises(ProtocolError, match="exceeds"):
        reassemble(chunks, expected_size=None, max_size=len(blob) - 1)
    with pytest.raises(ProtocolError, match="does not follow"):
        reassemble([chunks[0], chunks[2]], expected_size=len(blob), max_size=len(blob))
    with pytest.raises(ProtocolError, match="ended"):
        reassemble(chunks[:-1], expected_size=len(blob), max_size=len(blob))
