"""A model's per-frame heads (stem activity, lead voicing, lead pitch) in live sessions, summarised per block.

A model whose description lists ``heads`` (``multitask_unet``) answers
``separate_with_heads``: the stems and the heads' logits of one forward pass.
For items that carry a :class:`~server.engine.work.HeadsSlot` the batcher runs
that instead of ``separate`` (:func:`run_with_heads`), so the heads cost no
extra pass, and leaves per-frame probabilities in the slot
(:func:`frame_probabilities`), ``R = K + 1 + P`` rows per frame:

* rows ``0 .. K-1``: probability that each model source plays (sigmoid);
* row ``K``: the lead's voicing probability (sigmoid);
* rows ``K+1 ..``: probability of each semitone ``pitch_min .. pitch_max`` (softmax).

The spectrogram stream overlap-adds them across windows with the plan's
weights, as it does the stems' magnitudes, so frame ``k``'s heads are final
when frame ``k``'s audio is; :class:`FrameHeads` keeps the final frames.

Which frames a block covers. Frame ``k`` (``n_fft`` samples, ``hop`` apart, the
stream preceded by ``n_fft - hop`` zeros) is centred on input sample
``k * hop + hop - n_fft / 2`` and stands for the ``hop`` samples around its
centre: input sample ``s >= 0`` (model rate) belongs to frame
``(s + n_fft // 2 - hop // 2) // hop`` (:func:`frame_of`). An output block
``[p, p + n)`` holds the estimates of input samples ``[p - L, p + n - L)`` (the
session's latency ``L``; client rate, scaled to the model's), so its frames are
those of its input samples at or after 0. A block wholly before input 0 (the
first ``L`` output samples, silence) covers no frames and has no heads.

Per block (:class:`BlockHeads`): activity and voicing are means over the
block's frames; the f0 is the **most salient semitone**: the argmax over
semitones of the voicing-weighted sum of the semitone probabilities over the
block's frames, in Hz (MIDI 69 = 440 Hz), or 0 when the mean voicing is at most
0.5 (the voicing head says unvoiced, as :meth:`models.multitask_unet.MultitaskUNet.pitch_of`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

VOICED = 0.5  # mean voicing probability above which a block has a pitch


class HeadLogits(Protocol):
    """What ``separate_with_heads`` returns beside the stems: logits per STFT frame."""

    activity: torch.Tensor  # (B, K, T)
    voicing: torch.Tensor  # (B, T)
    pitch: torch.Tensor  # (B, P, T)


def frame_probabilities(heads: HeadLogits) -> torch.Tensor:
    """Head logits -> ``(B, K + 1 + P, T)`` float32 probabilities (rows as in the module doc)."""
    activity, voicing, pitch = heads.activity.float(), heads.voicing.float(), heads.pitch.float()  # half on a GPU
    return torch.cat([torch.sigmoid(activity), torch.sigmoid(voicing)[:, None], torch.softmax(pitch, dim=1)], dim=1)


def run_with_heads(
    loaded: Any, inputs: torch.Tensor, targets: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of a :class:`~server.engine.pool.LoadedModel` whose model has heads:
    ``(B, *item)`` float32 CPU inputs -> ``(B, S, *item)`` outputs (as ``LoadedModel.run``) and
    ``(B, R, T)`` per-frame probabilities, float32 on the CPU."""
    with torch.inference_mode():
        x = inputs.to(device=loaded.device, dtype=loaded.dtype, non_blocking=True)
        t = targets.to(loaded.device) if targets is not None else None
        out, heads = loaded.model.separate_with_heads(x, t)
        frames = frame_probabilities(heads).to(device="cpu", dtype=torch.float32)
        return out.to(device="cpu", dtype=torch.float32), frames


def midi_to_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def frame_of(sample: int, n_fft: int, hop: int) -> int:
    """The frame input sample ``sample >= 0`` (model rate) belongs to (see the module doc)."""
    return (sample + n_fft // 2 - hop // 2) // hop


@dataclass(frozen=True)
class BlockHeads:
    """The heads over one output block's frames.

    Attributes:
        activity: mean probability that each model source plays, in the model's source order.
        voicing: the lead's mean voicing probability.
        f0_hz: the most salient semitone's frequency in Hz, 0 when unvoiced (module doc).
        frames: ``(first, end)``: the frames averaged, ``[first, end)``.
    """

    activity: tuple[float, ...]
    voicing: float
    f0_hz: float
    frames: tuple[int, int]


class FrameHeads:
    """A stream's final per-frame heads, frame index ``>= 0``, oldest first; blocks read them in order.

    Args:
        sources: the model's sources (``K``).
        pitch_min: MIDI pitch of the first semitone row.
        n_fft / hop: the stream's STFT framing (model rate).
    """

    def __init__(self, sources: Sequence[str], pitch_min: int, n_fft: int, hop: int) -> None:
        self.sources = tuple(sources)
        self.pitch_min = pitch_min
        self.n_fft = n_fft
        self.hop = hop
        self.reset()

    def reset(self) -> None:
        self._chunks: deque[torch.Tensor] = deque()  # (R, n) each, contiguous frames
        self._start = 0  # frame index of the first column of the first chunk
        self._end = 0  # one past the last frame held

    def add(self, first: int, values: torch.Tensor) -> None:
        """Final heads ``(R, n)`` of frames ``[first, first + n)``; frames before 0 are dropped."""
        if first < 0:
            values = values[:, -first:]
            first = 0
        if values.shape[1] == 0:
            return
        if not self._chunks:
            self._start = self._end = first
        if first != self._end:
            raise RuntimeError(f"heads of frame {first} added after frame {self._end - 1}")
        self._chunks.append(values)
        self._end += values.shape[1]

    def block(self, first_sample: int, end_sample: int) -> BlockHeads | None:
        """Heads of input samples ``[first_sample, end_sample)`` (model rate; negative: before the stream).

        None when they cover no frame held. Frames before the block's first are let go
        (blocks come in order)."""
        first_sample = max(0, first_sample)
        if end_sample <= first_sample:
            return None
        lo = frame_of(first_sample, self.n_fft, self.hop)
        hi = frame_of(end_sample - 1, self.n_fft, self.hop) + 1
        self._trim(lo)
        lo, hi = max(lo, self._start), min(hi, self._end)
        if hi <= lo:
            return None
        held = torch.cat(list(self._chunks), dim=1) if len(self._chunks) > 1 else self._chunks[0]
        frames = held[:, lo - self._start : hi - self._start].double()  # (R, n)
        k = len(self.sources)
        voicing = frames[k]
        salience = (frames[k + 1 :] * voicing).sum(dim=1)  # (P,)
        mean_voicing = float(voicing.mean())
        f0 = midi_to_hz(self.pitch_min + int(salience.argmax())) if mean_voicing > VOICED else 0.0
        activity = tuple(float(a) for a in frames[:k].mean(dim=1))
        return BlockHeads(activity, mean_voicing, f0, (lo, hi))

    def _trim(self, before: int) -> None:
        while self._chunks and self._start + self._chunks[0].shape[1] <= before:
            self._start += self._chunks.popleft().shape[1]
        if self._chunks and self._start < before:
            self._chunks[0] = self._chunks[0][:, before - self._start :]
            self._start = before
