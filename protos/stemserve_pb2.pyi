from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "sources", "conditioned", "sample_rate", "channels", "domain", "causal", "latency", "description_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    CONDITIONED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CAUSAL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    sources: _containers.RepeatedScalarFieldContainer[str]
    conditioned: bool
    sample_rate: int
    channels: int
    domain: str
    causal: bool
    latency: Latency
    description_json: str
    def __init__(self, name: _Optional[str] = ..., sources: _Optional[_Iterable[str]] = ..., conditioned: _Optional[bool] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., domain: _Optional[str] = ..., causal: _Optional[bool] = ..., latency: _Optional[_Union[Latency, _Mapping]] = ..., description_json: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class Parameters(_message.Message):
    __slots__ = ("target", "mix", "gains")
    class GainsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MIX_FIELD_NUMBER: _ClassVar[int]
    GAINS_FIELD_NUMBER: _ClassVar[int]
    target: str
    mix: float
    gains: _containers.ScalarMap[str, float]
    def __init__(self, target: _Optional[str] = ..., mix: _Optional[float] = ..., gains: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Latency(_message.Message):
    __slots__ = ("model", "buffering", "resampler", "total", "sample_rate")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUFFERING_FIELD_NUMBER: _ClassVar[int]
    RESAMPLER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    model: int
    buffering: int
    resampler: int
    total: int
    sample_rate: int
    def __init__(self, model: _Optional[int] = ..., buffering: _Optional[int] = ..., resampler: _Optional[int] = ..., total: _Optional[int] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("model", "sample_rate", "channels", "parameters", "client_name", "return_stems", "stems")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    RETURN_STEMS_FIELD_NUMBER: _ClassVar[int]
    STEMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    sample_rate: int
    channels: int
    parameters: Parameters
    client_name: str
    return_stems: bool
    stems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., parameters: _Optional[_Union[Parameters, _Mapping]] = ..., client_name: _Optional[str] = ..., return_stems: _Optional[bool] = ..., stems: _Optional[_Iterable[str]] = ...) -> None: ...

class AudioBlock(_message.Message):
    __slots__ = ("seq", "position", "frames", "pcm")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    seq: int
    position: int
    frames: int
    pcm: bytes
    def __init__(self, seq: _Optional[int] = ..., position: _Optional[int] = ..., frames: _Optional[int] = ..., pcm: _Optional[bytes] = ...) -> None: ...

class Control(_message.Message):
    __slots__ = ("kind",)
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Control.Kind]
        RESET: _ClassVar[Control.Kind]
        FLUSH: _ClassVar[Control.Kind]
    KIND_UNSPECIFIED: Control.Kind
    RESET: Control.Kind
    FLUSH: Control.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: Control.Kind
    def __init__(self, kind: _Optional[_Union[Control.Kind, str]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("open", "block", "parameters", "control")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    open: OpenSession
    block: AudioBlock
    parameters: Parameters
    control: Control
    def __init__(self, open: _Optional[_Union[OpenSession, _Mapping]] = ..., block: _Optional[_Union[AudioBlock, _Mapping]] = ..., parameters: _Optional[_Union[Parameters, _Mapping]] = ..., control: _Optional[_Union[Control, _Mapping]] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session_id", "latency", "model", "sources")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    latency: Latency
    model: ModelInfo
    sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., latency: _Optional[_Union[Latency, _Mapping]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., sources: _Optional[_Iterable[str]] = ...) -> None: ...

class Stem(_message.Message):
    __slots__ = ("name", "pcm")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    name: str
    pcm: bytes
    def __init__(self, name: _Optional[str] = ..., pcm: _Optional[bytes] = ...) -> None: ...

class StemBlock(_message.Message):
    __slots__ = ("seq", "position", "frames", "pcm", "stems", "late", "activity", "lead_voicing", "lead_f0_hz")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    STEMS_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    LEAD_VOICING_FIELD_NUMBER: _ClassVar[int]
    LEAD_F0_HZ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    position: int
    frames: int
    pcm: bytes
    stems: _containers.RepeatedCompositeFieldContainer[Stem]
    late: bool
    activity: _containers.RepeatedScalarFieldContainer[float]
    lead_voicing: float
    lead_f0_hz: float
    def __init__(self, seq: _Optional[int] = ..., position: _Optional[int] = ..., frames: _Optional[int] = ..., pcm: _Optional[bytes] = ..., stems: _Optional[_Iterable[_Union[Stem, _Mapping]]] = ..., late: _Optional[bool] = ..., activity: _Optional[_Iterable[float]] = ..., lead_voicing: _Optional[float] = ..., lead_f0_hz: _Optional[float] = ...) -> None: ...

class SessionStatus(_message.Message):
    __slots__ = ("code", "message", "seq", "count")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CODE_UNSPECIFIED: _ClassVar[SessionStatus.Code]
        OK: _ClassVar[SessionStatus.Code]
        OVERLOADED: _ClassVar[SessionStatus.Code]
        INVALID_SAMPLES: _ClassVar[SessionStatus.Code]
        PARAMETERS_APPLIED: _ClassVar[SessionStatus.Code]
        RESET_DONE: _ClassVar[SessionStatus.Code]
        FLUSHED: _ClassVar[SessionStatus.Code]
        MODEL_REQUESTED: _ClassVar[SessionStatus.Code]
    CODE_UNSPECIFIED: SessionStatus.Code
    OK: SessionStatus.Code
    OVERLOADED: SessionStatus.Code
    INVALID_SAMPLES: SessionStatus.Code
    PARAMETERS_APPLIED: SessionStatus.Code
    RESET_DONE: SessionStatus.Code
    FLUSHED: SessionStatus.Code
    MODEL_REQUESTED: SessionStatus.Code
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    code: SessionStatus.Code
    message: str
    seq: int
    count: int
    def __init__(self, code: _Optional[_Union[SessionStatus.Code, str]] = ..., message: _Optional[str] = ..., seq: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("opened", "block", "status")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    opened: SessionOpened
    block: StemBlock
    status: SessionStatus
    def __init__(self, opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., block: _Optional[_Union[StemBlock, _Mapping]] = ..., status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class SeparateStart(_message.Message):
    __slots__ = ("model", "sample_rate", "channels", "stems", "total_frames", "shifts", "split", "overlap", "segment_seconds", "niter", "residual")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    STEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SHIFTS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NITER_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_FIELD_NUMBER: _ClassVar[int]
    model: str
    sample_rate: int
    channels: int
    stems: _containers.RepeatedScalarFieldContainer[str]
    total_frames: int
    shifts: int
    split: bool
    overlap: float
    segment_seconds: float
    niter: int
    residual: bool
    def __init__(self, model: _Optional[str] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., stems: _Optional[_Iterable[str]] = ..., total_frames: _Optional[int] = ..., shifts: _Optional[int] = ..., split: _Optional[bool] = ..., overlap: _Optional[float] = ..., segment_seconds: _Optional[float] = ..., niter: _Optional[int] = ..., residual: _Optional[bool] = ...) -> None: ...

class SeparateRequest(_message.Message):
    __slots__ = ("start", "pcm")
    START_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    start: SeparateStart
    pcm: bytes
    def __init__(self, start: _Optional[_Union[SeparateStart, _Mapping]] = ..., pcm: _Optional[bytes] = ...) -> None: ...

class SeparateStarted(_message.Message):
    __slots__ = ("stems", "sample_rate", "channels")
    STEMS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    stems: _containers.RepeatedScalarFieldContainer[str]
    sample_rate: int
    channels: int
    def __init__(self, stems: _Optional[_Iterable[str]] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class StemChunk(_message.Message):
    __slots__ = ("position", "frames", "stems")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    STEMS_FIELD_NUMBER: _ClassVar[int]
    position: int
    frames: int
    stems: _containers.RepeatedCompositeFieldContainer[Stem]
    def __init__(self, position: _Optional[int] = ..., frames: _Optional[int] = ..., stems: _Optional[_Iterable[_Union[Stem, _Mapping]]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("frames_done", "total_frames")
    FRAMES_DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames_done: int
    total_frames: int
    def __init__(self, frames_done: _Optional[int] = ..., total_frames: _Optional[int] = ...) -> None: ...

class SeparateResponse(_message.Message):
    __slots__ = ("started", "chunk", "progress")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    started: SeparateStarted
    chunk: StemChunk
    progress: Progress
    def __init__(self, started: _Optional[_Union[SeparateStarted, _Mapping]] = ..., chunk: _Optional[_Union[StemChunk, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class SetParametersRequest(_message.Message):
    __slots__ = ("session_id", "parameters")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    parameters: Parameters
    def __init__(self, session_id: _Optional[str] = ..., parameters: _Optional[_Union[Parameters, _Mapping]] = ...) -> None: ...

class SetParametersResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("name", "windows", "batches", "batch_sizes")
    class BatchSizesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    name: str
    windows: int
    batches: int
    batch_sizes: _containers.ScalarMap[int, int]
    def __init__(self, name: _Optional[str] = ..., windows: _Optional[int] = ..., batches: _Optional[int] = ..., batch_sizes: _Optional[_Mapping[int, int]] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("sessions", "blocks_in", "blocks_out", "blocks_late", "invalid_samples", "models", "block_ms_p50", "block_ms_p99", "block_ms_max", "device_memory_bytes", "extra_json", "file_block_ms_p50", "file_block_ms_p99", "file_block_ms_max")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_IN_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_OUT_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_LATE_FIELD_NUMBER: _ClassVar[int]
    INVALID_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_MS_P50_FIELD_NUMBER: _ClassVar[int]
    BLOCK_MS_P99_FIELD_NUMBER: _ClassVar[int]
    BLOCK_MS_MAX_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    FILE_BLOCK_MS_P50_FIELD_NUMBER: _ClassVar[int]
    FILE_BLOCK_MS_P99_FIELD_NUMBER: _ClassVar[int]
    FILE_BLOCK_MS_MAX_FIELD_NUMBER: _ClassVar[int]
    sessions: int
    blocks_in: int
    blocks_out: int
    blocks_late: int
    invalid_samples: int
    models: _containers.RepeatedCompositeFieldContainer[ModelStats]
    block_ms_p50: float
    block_ms_p99: float
    block_ms_max: float
    device_memory_bytes: int
    extra_json: str
    file_block_ms_p50: float
    file_block_ms_p99: float
    file_block_ms_max: float
    def __init__(self, sessions: _Optional[int] = ..., blocks_in: _Optional[int] = ..., blocks_out: _Optional[int] = ..., blocks_late: _Optional[int] = ..., invalid_samples: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelStats, _Mapping]]] = ..., block_ms_p50: _Optional[float] = ..., block_ms_p99: _Optional[float] = ..., block_ms_max: _Optional[float] = ..., device_memory_bytes: _Optional[int] = ..., extra_json: _Optional[str] = ..., file_block_ms_p50: _Optional[float] = ..., file_block_ms_p99: _Optional[float] = ..., file_block_ms_max: _Optional[float] = ...) -> None: ...
