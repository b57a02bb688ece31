"""Protobuf <-> numpy arrays and secure-aggregation messages, checked before anything trusts them.

Secure-aggregation messages map field by field onto :class:`SecAggMessage`: each dataclass field's
declared type picks one ``Value`` kind, and decoding refuses a missing, extra or wrongly typed
field with :class:`ProtocolError` before the secagg library's own :func:`validate` runs. Tensors
are checked for dtype (an allow-list), shape and byte length, and optionally against an expected
spec, so a malformed update is refused for what it is instead of failing deep inside numpy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from fedvpa_secure.errors import ProtocolError
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.secagg import messages as sm

ALLOWED_DTYPES = ("<f2", "<f4", "<f8", "<i8", "<i4", "<u4", "|u1", "|b1")
MAX_DIMS = 8

_MESSAGE_TYPES: dict[str, type[sm.Message]] = {t.__name__: t for t in sm.ALL_MESSAGES}
_HEADER = ("version", "round_id", "stage", "sender")


def _kind_of(annotation: object) -> str:
    text = str(annotation).replace(" ", "")
    if text == "bytes":
        return "raw"
    if text == "int":
        return "integer"
    if text == "str":
        return "text"
    if text.startswith("tuple[str"):
        return "ids"
    if text == "dict[str,bytes]":
        return "bytes_map"
    if text.startswith("dict[str,tuple[bytes"):
        return "tuple_map"
    raise TypeError(f"no wire mapping for field type {annotation!r}")  # a programming error


_FIELD_KINDS: dict[str, dict[str, str]] = {
    name: {f.name: _kind_of(f.type) for f in fields(t) if f.name not in _HEADER}
    for name, t in _MESSAGE_TYPES.items()
}


def message_to_proto(message: sm.Message) -> pb.SecAggMessage:
    """Encode a secagg message (any of :data:`secagg.messages.ALL_MESSAGES`)."""
    name = type(message).__name__
    if name not in _FIELD_KINDS:
        raise ProtocolError(f"{name} is not a secure-aggregation message")
    out = pb.SecAggMessage(
        header=pb.Header(
            version=message.version,
            round_id=message.round_id,
            stage=message.stage,
            sender=message.sender,
        ),
        kind=name,
    )
    for field_name, kind in _FIELD_KINDS[name].items():
        value = getattr(message, field_name)
        slot = out.fields[field_name]
        if kind == "raw":
            slot.raw = value
        elif kind == "integer":
            slot.integer = value
        elif kind == "text":
            slot.text = value
        elif kind == "ids":
            slot.ids.SetInParent()  # an empty list is still "present"
            slot.ids.items.extend(value)
        elif kind == "bytes_map":
            slot.bytes_map.SetInParent()
            slot.bytes_map.entries.update(value)
        else:
            slot.tuple_map.SetInParent()
            for key, parts in value.items():
                slot.tuple_map.entries[key].items.extend(parts)
    return out


def message_from_proto(proto: pb.SecAggMessage) -> sm.Message:
    """Decode a secagg message, checking the kind and every field's presence and type.

    Raises:
        ProtocolError: unknown kind, missing/extra field, or a field of the wrong type.
    """
    kinds = _FIELD_KINDS.get(proto.kind)
    if kinds is None:
        raise ProtocolError(f"unknown secure-aggregation message kind {proto.kind[:64]!r}")
    if not proto.HasField("header"):
        raise ProtocolError(f"{proto.kind} without a header")
    extra = set(proto.fields) - set(kinds)
    if extra:
        raise ProtocolError(f"{proto.kind} has unexpected fields {sorted(extra)[:5]}")
    values: dict[str, Any] = {name: getattr(proto.header, name) for name in _HEADER}
    for field_name, kind in kinds.items():
        if field_name not in proto.fields:
            raise ProtocolError(f"{proto.kind} is missing field {field_name!r}")
        slot = proto.fields[field_name]
        if slot.WhichOneof("kind") != kind:
            raise ProtocolError(f"{proto.kind}.{field_name} must be {kind}")
        if kind == "raw":
            values[field_name] = bytes(slot.raw)
        elif kind == "integer":
            values[field_name] = int(slot.integer)
        elif kind == "text":
            values[field_name] = str(slot.text)
        elif kind == "ids":
            values[field_name] = tuple(slot.ids.items)
        elif kind == "bytes_map":
            values[field_name] = {k: bytes(v) for k, v in slot.bytes_map.entries.items()}
        else:
            values[field_name] = {
                k: tuple(bytes(x) for x in v.items) for k, v in slot.tuple_map.entries.items()
            }
    return _MESSAGE_TYPES[proto.kind](**values)


def parse_secagg(blob: bytes) -> sm.Message:
    """Parse serialized bytes into a secagg message (protobuf errors become ProtocolError)."""
    proto = pb.SecAggMessage()
    try:
        proto.ParseFromString(blob)
    except DecodeError as err:
        raise ProtocolError("undecodable secure-aggregation message") from err
    return message_from_proto(proto)


def arrays_to_bundle(arrays: Mapping[str, np.ndarray]) -> pb.TensorBundle:
    """Encode named arrays (little-endian, C order), sorted by name."""
    bundle = pb.TensorBundle()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        bundle.tensors.add(name=name, shape=list(a.shape), dtype=a.dtype.str, data=a.tobytes())
    return bundle


def bundle_to_arrays(
    bundle: pb.TensorBundle,
    *,
    expected: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
    max_elements: int = 1 << 28,
) -> dict[str, np.ndarray]:
    """Decode a bundle, checking dtype, shape, byte length and (optionally) an expected spec.

    Args:
        bundle: the decoded protobuf.
        expected: name -> (shape, dtype string): names must match exactly, and each tensor's
            shape and dtype too.
        max_elements: refuse any tensor with more elements than this.

    Raises:
        ProtocolError: a duplicate name, disallowed dtype, bad shape, wrong byte length, or a
            mismatch with ``expected``.
    """
    out: dict[str, np.ndarray] = {}
    for t in bundle.tensors:
        if t.name in out:
            raise ProtocolError(f"tensor {t.name[:64]!r} appears twice")
        if t.dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"tensor {t.name[:64]!r}: dtype {t.dtype[:16]!r} is not allowed")
        shape = tuple(int(s) for s in t.shape)
        if len(shape) > MAX_DIMS or any(s < 0 for s in shape):
            raise ProtocolError(f"tensor {t.name[:64]!r}: invalid shape {shape[: MAX_DIMS + 1]}")
        count = math.prod(shape)  # Python ints: a forged shape cannot overflow to a small count
        if count > max_elements:
            raise ProtocolError(f"tensor {t.name[:64]!r}: {count} elements exceed {max_elements}")
        dtype = np.dtype(t.dtype)
        if len(t.data) != count * dtype.itemsize:
            raise ProtocolError(
                f"tensor {t.name[:64]!r}: {len(t.data)} bytes for shape {shape} and {t.dtype}"
            )
        out[t.name] = np.frombuffer(t.data, dtype=dtype).reshape(shape).copy()
    if expected is not None:
        if set(out) != set(expected):
            missing = sorted(set(expected) - set(out))[:5]
            unexpected = sorted(set(out) - set(expected))[:5]
            raise ProtocolError(f"tensor names differ: missing {missing}, unexpected {unexpected}")
        for name, (shape, dtype) in expected.items():
            if out[name].shape != tuple(shape) or out[name].dtype.str != dtype:
                raise ProtocolError(
                    f"tensor {name!r}: got {out[name].shape} {out[name].dtype.str}, "
                    f"expected {tuple(shape)} {dtype}"
                )
    return out


def spec_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, little-endian dtype string), the ``expected`` argument of the decoder."""
    return {
        k: (tuple(v.shape), np.asarray(v).dtype.newbyteorder("<").str) for k, v in arrays.items()
    }


def state_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, shapes, dtypes and bytes: the model version's identity."""
    h = hashlib.sha256()
    for t in arrays_to_bundle(arrays).tensors:
        h.update(t.name.encode() + b"\0" + repr(tuple(t.shape)).encode() + t.dtype.encode())
        h.update(len(t.data).to_bytes(8, "little") + t.data)
    return h.hexdigest()
