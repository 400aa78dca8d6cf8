"""Byte-reproducible wav writing.

libsndfile adds a ``PEAK`` chunk holding the write time to float wav files, so
the same audio written twice differs in a few header bytes. Float32 files are
therefore written here directly (``WAVE_FORMAT_IEEE_FLOAT`` with a ``fact``
chunk, which every reader accepts); PCM files go through soundfile, whose PCM
output has no timestamp.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

_IEEE_FLOAT = 3


def write_wav(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int, subtype: str = "FLOAT") -> None:
    """Write ``audio`` (``(channels, samples)`` or ``(samples,)``) to ``path`` atomically.

    Args:
        subtype: ``FLOAT`` (32-bit float, written here) or a soundfile PCM subtype.
    """
    data = np.asarray(audio, dtype=np.float32)
    frames = data.T if data.ndim == 2 else data[:, None]  # (samples, channels)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if subtype != "FLOAT":
        sf.write(str(tmp), frames, sample_rate, subtype=subtype, format="WAV")
        tmp.replace(path)
        return
    channels = frames.shape[1]
    payload = np.ascontiguousarray(frames, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHHH", _IEEE_FLOAT, channels, sample_rate, sample_rate * 4 * channels, 4 * channels, 32, 0)
    chunks = (
        b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"fact" + struct.pack("<II", 4, frames.shape[0])
        + b"data" + struct.pack("<I", len(payload))
    )  # fmt: skip
    with open(tmp, "wb") as handle:
        handle.write(b"RIFF" + struct.pack("<I", 4 + len(chunks) + len(payload)) + b"WAVE")
        handle.write(chunks)
        handle.write(payload)
    tmp.replace(path)
