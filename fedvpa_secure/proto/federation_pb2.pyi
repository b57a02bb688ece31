from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Header(_message.Message):
    __slots__ = ("version", "round_id", "stage", "sender")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    version: int
    round_id: str
    stage: int
    sender: str
    def __init__(self, version: _Optional[int] = ..., round_id: _Optional[str] = ..., stage: _Optional[int] = ..., sender: _Optional[str] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[str]] = ...) -> None: ...

class BytesList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, items: _Optional[_Iterable[bytes]] = ...) -> None: ...

class BytesMap(_message.Message):
    __slots__ = ("entries",)
    class EntriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.ScalarMap[str, bytes]
    def __init__(self, entries: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class BytesTupleMap(_message.Message):
    __slots__ = ("entries",)
    class EntriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: BytesList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[BytesList, _Mapping]] = ...) -> None: ...
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.MessageMap[str, BytesList]
    def __init__(self, entries: _Optional[_Mapping[str, BytesList]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("raw", "integer", "text", "ids", "bytes_map", "tuple_map")
    RAW_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_MAP_FIELD_NUMBER: _ClassVar[int]
    TUPLE_MAP_FIELD_NUMBER: _ClassVar[int]
    raw: bytes
    integer: int
    text: str
    ids: StringList
    bytes_map: BytesMap
    tuple_map: BytesTupleMap
    def __init__(self, raw: _Optional[bytes] = ..., integer: _Optional[int] = ..., text: _Optional[str] = ..., ids: _Optional[_Union[StringList, _Mapping]] = ..., bytes_map: _Optional[_Union[BytesMap, _Mapping]] = ..., tuple_map: _Optional[_Union[BytesTupleMap, _Mapping]] = ...) -> None: ...

class SecAggMessage(_message.Message):
    __slots__ = ("header", "kind", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    header: Header
    kind: str
    fields: _containers.MessageMap[str, Value]
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., kind: _Optional[str] = ..., fields: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "shape", "dtype", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class TensorBundle(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("client_id", "protocol_version")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    protocol_version: int
    def __init__(self, client_id: _Optional[str] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("experiment_json", "run_id", "protocol_version", "secure")
    EXPERIMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    experiment_json: str
    run_id: str
    protocol_version: int
    secure: bool
    def __init__(self, experiment_json: _Optional[str] = ..., run_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., secure: _Optional[bool] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("client_id", "wait_s")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    wait_s: float
    def __init__(self, client_id: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "round_id", "model_version", "model_hash", "round_index", "tau", "secure", "payload", "reason", "secagg_config_json", "user_dp")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Task.Kind]
        WAIT: _ClassVar[Task.Kind]
        TRAIN: _ClassVar[Task.Kind]
        SECAGG: _ClassVar[Task.Kind]
        ABORT: _ClassVar[Task.Kind]
        FINISHED: _ClassVar[Task.Kind]
    KIND_UNSPECIFIED: Task.Kind
    WAIT: Task.Kind
    TRAIN: Task.Kind
    SECAGG: Task.Kind
    ABORT: Task.Kind
    FINISHED: Task.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SECAGG_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    USER_DP_FIELD_NUMBER: _ClassVar[int]
    kind: Task.Kind
    round_id: str
    model_version: str
    model_hash: str
    round_index: int
    tau: float
    secure: bool
    payload: bytes
    reason: str
    secagg_config_json: str
    user_dp: UserDpShare
    def __init__(self, kind: _Optional[_Union[Task.Kind, str]] = ..., round_id: _Optional[str] = ..., model_version: _Optional[str] = ..., model_hash: _Optional[str] = ..., round_index: _Optional[int] = ..., tau: _Optional[float] = ..., secure: _Optional[bool] = ..., payload: _Optional[bytes] = ..., reason: _Optional[str] = ..., secagg_config_json: _Optional[str] = ..., user_dp: _Optional[_Union[UserDpShare, _Mapping]] = ...) -> None: ...

class UserDpShare(_message.Message):
    __slots__ = ("clip_norm", "noise", "local_sigma", "min_survivors", "effective_noise_multiplier")
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SIGMA_FIELD_NUMBER: _ClassVar[int]
    MIN_SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    clip_norm: float
    noise: str
    local_sigma: float
    min_survivors: int
    effective_noise_multiplier: float
    def __init__(self, clip_norm: _Optional[float] = ..., noise: _Optional[str] = ..., local_sigma: _Optional[float] = ..., min_survivors: _Optional[int] = ..., effective_noise_multiplier: _Optional[float] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("client_id", "model_version")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    model_version: str
    def __init__(self, client_id: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data", "offset", "total_size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_size: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("client_id", "round_id", "model_version", "body", "total_size", "sha256")
    class Body(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        BODY_UNSPECIFIED: _ClassVar[UploadHeader.Body]
        SECAGG: _ClassVar[UploadHeader.Body]
        PLAIN: _ClassVar[UploadHeader.Body]
        DECLINE: _ClassVar[UploadHeader.Body]
    BODY_UNSPECIFIED: UploadHeader.Body
    SECAGG: UploadHeader.Body
    PLAIN: UploadHeader.Body
    DECLINE: UploadHeader.Body
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    round_id: str
    model_version: str
    body: UploadHeader.Body
    total_size: int
    sha256: bytes
    def __init__(self, client_id: _Optional[str] = ..., round_id: _Optional[str] = ..., model_version: _Optional[str] = ..., body: _Optional[_Union[UploadHeader.Body, str]] = ..., total_size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class Upload(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class SubmitAck(_message.Message):
    __slots__ = ("accepted", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...
