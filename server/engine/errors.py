"""The engine's exception types, and the gRPC status each maps to at the edge.

Every error the engine raises on purpose is an :class:`EngineError`; each
also derives from the builtin a caller would naturally catch (``KeyError``
for unknown names, ``ValueError`` for bad input, ``RuntimeError`` for
capacity and lifecycle), so code that never heard of the engine still does
the right thing.
"""

from __future__ import annotations

from stemserve.models import registry


class EngineError(Exception):
    """Base of the engine's errors. ``status`` names the gRPC status code."""

    status = "INTERNAL"


class UnknownModelError(EngineError, registry.UnknownModelError):
    """A model name that is neither loaded nor loadable."""

    status = "NOT_FOUND"


class UnknownSessionError(EngineError, KeyError):
    """A session id that is not open (never was, closed, expired or failed)."""

    status = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown session"


class InvalidAudioError(EngineError, ValueError):
    """Audio the engine cannot take: wrong shape or channel count, unsupported rate."""

    status = "INVALID_ARGUMENT"


class InvalidParameterError(EngineError, ValueError):
    """A session parameter out of range or of the wrong kind."""

    status = "INVALID_ARGUMENT"


class UnknownTargetError(InvalidParameterError):
    """A target or stem name the session's model does not output."""


class AdmissionError(EngineError, RuntimeError):
    """A new real-time session refused because the model's device would fall behind."""

    status = "RESOURCE_EXHAUSTED"


class NotReadyError(EngineError, RuntimeError):
    """The engine is warming up or shutting down."""

    status = "UNAVAILABLE"


class SessionFailedError(EngineError, RuntimeError):
    """Processing one session failed; that session is closed (the cause is chained)."""

    status = "INTERNAL"


def status_name(err: BaseException) -> str:
    """gRPC status code name (``"NOT_FOUND"``, ...) for an exception."""
    if isinstance(err, EngineError):
        return err.status
    if isinstance(err, registry.UnknownModelError):
        return "NOT_FOUND"
    if isinstance(err, ValueError):
        return "INVALID_ARGUMENT"
    return "INTERNAL"
