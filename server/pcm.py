"""Wire PCM <-> numpy: little-endian float32, interleaved frames (see protos/stemserve.proto)."""

from __future__ import annotations

import numpy as np


class PcmError(ValueError):
    """PCM bytes that do not match the declared shape."""


def decode(pcm: bytes, channels: int, frames: int | None = None) -> np.ndarray:
    """Interleaved float32 bytes -> ``(channels, frames)`` float32 array (a copy, writable)."""
    if channels <= 0:
        raise PcmError(f"channels must be positive, got {channels}")
    if len(pcm) % (4 * channels):
        raise PcmError(f"{len(pcm)} bytes is not a whole number of {channels}-channel float32 frames")
    count = len(pcm) // (4 * channels)
    if frames is not None and frames != count:
        raise PcmError(f"block says {frames} frames but carries {count}")
    data = np.frombuffer(pcm, dtype="<f4").reshape(count, channels)
    return np.ascontiguousarray(data.T, dtype=np.float32)


def encode(audio: np.ndarray) -> bytes:
    """``(channels, frames)`` array -> interleaved little-endian float32 bytes."""
    if audio.ndim != 2:
        raise PcmError(f"expected (channels, frames), got shape {audio.shape}")
    return np.ascontiguousarray(audio.T, dtype="<f4").tobytes()
