"""How audio flows: model pool, sessions, window batcher, causal streamer, chunked
overlap, scheduler. Plain Python + torch (no grpc, no osc); tests drive it directly.

The public surface is :class:`Engine` and what its methods take and return.
"""

from stemserve.server.engine.engine import Engine, EngineConfig, ModelInfo
from stemserve.server.engine.errors import (
    AdmissionError,
    EngineError,
    InvalidAudioError,
    InvalidParameterError,
    NotReadyError,
    SessionFailedError,
    UnknownModelError,
    UnknownSessionError,
    UnknownTargetError,
)
from stemserve.server.engine.session import BlockResult, LatencyParts, SessionInfo, SessionParams

__all__ = [
    "AdmissionError",
    "BlockResult",
    "Engine",
    "EngineConfig",
    "EngineError",
    "InvalidAudioError",
    "InvalidParameterError",
    "LatencyParts",
    "ModelInfo",
    "NotReadyError",
    "SessionFailedError",
    "SessionInfo",
    "SessionParams",
    "UnknownModelError",
    "UnknownSessionError",
    "UnknownTargetError",
]
