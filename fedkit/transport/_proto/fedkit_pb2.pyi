from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_KIND_UNSPECIFIED: _ClassVar[UpdateKind]
    UPDATE_KIND_DELTA: _ClassVar[UpdateKind]
    UPDATE_KIND_WEIGHTS: _ClassVar[UpdateKind]
UPDATE_KIND_UNSPECIFIED: UpdateKind
UPDATE_KIND_DELTA: UpdateKind
UPDATE_KIND_WEIGHTS: UpdateKind

class JoinRequest(_message.Message):
    __slots__ = ("name", "capabilities", "protocol")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    capabilities: _containers.ScalarMap[str, str]
    protocol: str
    def __init__(self, name: _Optional[str] = ..., capabilities: _Optional[_Mapping[str, str]] = ..., protocol: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "max_message_bytes", "max_payload_bytes", "chunk_bytes", "heartbeat_s")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    max_message_bytes: int
    max_payload_bytes: int
    chunk_bytes: int
    heartbeat_s: float
    def __init__(self, session_id: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., max_payload_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., heartbeat_s: _Optional[float] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("server_time",)
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    server_time: float
    def __init__(self, server_time: _Optional[float] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("welcome", "task", "heartbeat", "shutdown")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    task: TaskChunk
    heartbeat: Heartbeat
    shutdown: Shutdown
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., task: _Optional[_Union[TaskChunk, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("task_id", "round", "client", "kind", "config_json", "payload_bytes", "version")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round: int
    client: str
    kind: str
    config_json: str
    payload_bytes: int
    version: int
    def __init__(self, task_id: _Optional[str] = ..., round: _Optional[int] = ..., client: _Optional[str] = ..., kind: _Optional[str] = ..., config_json: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class TaskChunk(_message.Message):
    __slots__ = ("header", "offset", "data", "last")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    offset: int
    data: bytes
    last: bool
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class ReplyHeader(_message.Message):
    __slots__ = ("session_id", "task_id", "round", "client", "num_examples", "metrics", "error", "has_update", "payload_bytes", "version", "update_kind")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HAS_UPDATE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_KIND_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    round: int
    client: str
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    error: str
    has_update: bool
    payload_bytes: int
    version: int
    update_kind: UpdateKind
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., client: _Optional[str] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., error: _Optional[str] = ..., has_update: _Optional[bool] = ..., payload_bytes: _Optional[int] = ..., version: _Optional[int] = ..., update_kind: _Optional[_Union[UpdateKind, str]] = ...) -> None: ...

class ReplyChunk(_message.Message):
    __slots__ = ("header", "offset", "data", "last")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    header: ReplyHeader
    offset: int
    data: bytes
    last: bool
    def __init__(self, header: _Optional[_Union[ReplyHeader, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class SplitOpen(_message.Message):
    __slots__ = ("session_id", "task_id", "round")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    round: int
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class SplitBatch(_message.Message):
    __slots__ = ("step", "payload", "labels", "metrics", "offset", "last", "payload_bytes", "labels_bytes")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    LABELS_BYTES_FIELD_NUMBER: _ClassVar[int]
    step: int
    payload: bytes
    labels: bytes
    metrics: _containers.ScalarMap[str, float]
    offset: int
    last: bool
    payload_bytes: int
    labels_bytes: int
    def __init__(self, step: _Optional[int] = ..., payload: _Optional[bytes] = ..., labels: _Optional[bytes] = ..., metrics: _Optional[_Mapping[str, float]] = ..., offset: _Optional[int] = ..., last: _Optional[bool] = ..., payload_bytes: _Optional[int] = ..., labels_bytes: _Optional[int] = ...) -> None: ...

class SplitClose(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class SplitMessage(_message.Message):
    __slots__ = ("open", "activations", "gradients", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: SplitOpen
    activations: SplitBatch
    gradients: SplitBatch
    close: SplitClose
    def __init__(self, open: _Optional[_Union[SplitOpen, _Mapping]] = ..., activations: _Optional[_Union[SplitBatch, _Mapping]] = ..., gradients: _Optional[_Union[SplitBatch, _Mapping]] = ..., close: _Optional[_Union[SplitClose, _Mapping]] = ...) -> None: ...
