"""Per-STFT-frame labels from a rendered track's notes: stem activity and the lead's f0.

A track's ``notes.json`` (written by :mod:`models.data.music`) lists each
stem's notes as performed: ``[onset_s, offset_s, midi_pitch]``. STFT frame
``k`` of a window starting at sample ``start`` covers samples
``[start + k * hop, start + k * hop + n_fft)`` (:mod:`models.stft`); its label
is read at the frame's centre, ``start + k * hop + n_fft / 2``:

* ``activity[s, k]``: 1 while some note of stem ``s`` sounds at the centre
  (note on to note off; release tails count as silent);
* ``f0[k]``: the MIDI pitch of the lead (``vocals``) note sounding there, the
  latest onset winning where humanised notes overlap; 0 where none sounds;
* ``voiced[k]``: 1 where ``f0[k] > 0`` (the lead "sings").

The pitch is the note's nominal pitch: the vibrato FluidSynth adds (MIDI CC1)
stays within a few tens of cents of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEAD = "vocals"


@dataclass(frozen=True)
class FrameLabels:
    """Labels of ``frames`` consecutive STFT frames.

    Attributes:
        activity: ``(stems, frames)`` float32, 1 where the stem plays.
        f0: ``(frames,)`` float32, the lead's MIDI pitch (69 = A4 = 440 Hz), 0 where unvoiced.
        voiced: ``(frames,)`` float32, 1 where the lead plays.
    """

    activity: np.ndarray
    f0: np.ndarray
    voiced: np.ndarray


class LabelError(ValueError):
    """A track has no (readable) notes file."""


def read_notes(track: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A track folder's ``notes.json`` as ``{stem: (notes, 3) float64 [onset_s, offset_s, pitch]}``."""
    path = Path(track) / "notes.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LabelError(f"{path}: no readable notes ({err}); render the track again to get labels") from err
    return {stem: np.asarray(events, dtype=np.float64).reshape(-1, 3) for stem, events in raw.items()}


def frame_centres(start: int, frames: int, n_fft: int, hop: int, sample_rate: int) -> np.ndarray:
    """``(frames,)`` seconds of each frame's centre."""
    return (start + np.arange(frames) * hop + n_fft / 2) / sample_rate


def frame_labels(
    notes: Mapping[str, np.ndarray],
    sources: Sequence[str],
    start: int,
    frames: int,
    n_fft: int,
    hop: int,
    sample_rate: int,
) -> FrameLabels:
    """Labels of the ``frames`` STFT frames of a window starting at sample ``start`` (see module doc)."""
    if frames < 0 or n_fft < 1 or hop < 1 or sample_rate < 1:
        raise ValueError("frames must be >= 0 and n_fft, hop, sample_rate >= 1")
    t = frame_centres(start, frames, n_fft, hop, sample_rate)  # (frames,)
    activity = np.zeros((len(sources), frames), dtype=np.float32)
    for i, stem in enumerate(sources):
        events = notes.get(stem)
        if events is None:
            raise LabelError(f"no notes for stem {stem!r} (have {sorted(notes)})")
        activity[i] = activity_at(events, t)
    lead = notes.get(LEAD)
    f0 = lead_f0_at(lead, t) if lead is not None else np.zeros(frames, dtype=np.float32)
    return FrameLabels(activity=activity, f0=f0, voiced=(f0 > 0).astype(np.float32))


def activity_at(events: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(len(t),)`` float32: 1 where one of a stem's notes ``(notes, 3)`` sounds at times ``t`` (seconds)."""
    if not len(events):
        return np.zeros(len(t), dtype=np.float32)
    sounding = (events[:, :1] <= t) & (t < events[:, 1:2])  # (notes, frames)
    return np.asarray(sounding.any(axis=0), dtype=np.float32)


def lead_f0_at(events: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(len(t),)`` float32 MIDI pitch of the lead note sounding at times ``t`` (latest onset wins), else 0."""
    f0 = np.zeros(len(t), dtype=np.float32)
    if not len(events):
        return f0
    sounding = (events[:, :1] <= t) & (t < events[:, 1:2])  # (notes, frames)
    onsets = np.where(sounding, events[:, :1], -np.inf)
    latest = onsets.argmax(axis=0)  # (frames,)
    voiced = sounding.any(axis=0)
    f0[voiced] = events[latest[voiced], 2]
    return f0


def midi_to_hz(pitch: np.ndarray) -> np.ndarray:
    """MIDI pitch -> Hz (69 -> 440); 0 (unvoiced) stays 0."""
    pitch = np.asarray(pitch, dtype=np.float64)
    return np.where(pitch > 0, 440.0 * 2.0 ** ((pitch - 69.0) / 12.0), 0.0)
