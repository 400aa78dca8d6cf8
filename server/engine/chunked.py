"""Non-causal waveform models (Demucs v2, Wave-U-Net, non-causal Conv-TasNet): overlapping chunks.

The stream is cut into chunks of ``plan.size`` samples every ``plan.hop``
samples (a :class:`~models.apply.WindowPlan` in samples) and the chunks'
estimates are cross-faded with the plan's weights, exactly as
:func:`models.apply.separate_signal` does offline (same grid, same
:class:`~models.apply.OverlapAdd`). The last ``plan.lookahead`` samples of
each chunk are right context only; a sample is final once the last chunk
with weight on it is in, ``plan.latency`` samples after it arrived. That
lookahead is part of every session's latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from stemserve.models.apply import OverlapAdd, PermutationTracker, WindowPlan, unordered_sources
from stemserve.models.description import ModelDescription
from stemserve.server.engine.work import ItemSpec, SampleBuffer, Stream, Streamer, stem_slots, take_stems


class ChunkStream(Stream):
    """Per-session chunking and cross-fade for a non-causal waveform model."""

    def __init__(self, plan: WindowPlan, channels: int, stems: Sequence[int], description: ModelDescription) -> None:
        self.plan = plan
        self.channels = channels
        self.stems = list(stems)
        self._slots = stem_slots(description, self.stems)
        self._description = description
        self.reset()

    def reset(self) -> None:
        # silence before the stream start, so the first chunks read zeros there
        self._buffer = SampleBuffer(self.channels, start=min(0, self.plan.start(0)), capacity=2 * self.plan.size)
        self._next_chunk = 0
        self._acc = OverlapAdd(self.plan, len(self.stems), (self.channels,))
        self._tracker = (
            PermutationTracker(self.plan, len(self._description.sources))
            if unordered_sources(self._description)
            else None
        )
        self._open = 0
        self._missing = len(self._slots)
        self._unit = self.plan.start(0) + self.plan.first  # first sample the next completion finalises
        self._out: list[torch.Tensor] = []

    def push(self, audio: torch.Tensor) -> list[ItemSpec]:
        plan = self.plan
        self._buffer.append(audio)
        items: list[ItemSpec] = []
        while plan.start(self._next_chunk) + plan.size <= self._buffer.end:
            j = self._next_chunk
            chunk = self._buffer.view(plan.start(j), plan.start(j) + plan.size).clone()
            items.extend(ItemSpec(chunk, target, (j, slot)) for target, slot in self._slots)
            self._next_chunk += 1
        self._buffer.trim(plan.start(self._next_chunk))
        return items

    def accept(self, key: Any, output: torch.Tensor) -> None:
        j, slot = key
        if j != self._open:
            raise RuntimeError(f"chunk {j} accepted while chunk {self._open} is open")
        if self._tracker is not None:  # all sources of the window, in a stable order
            output = self._tracker.align(output)
        for s, estimate in take_stems(output, self.stems, slot):
            self._acc.add_stem(s, estimate)
        self._missing -= 1 if slot >= 0 else len(self._slots)
        if self._missing:
            return
        final = self._acc.complete()  # (S, C, hop) samples [unit, unit + hop)
        first = self._unit
        self._unit += final.shape[-1]
        if first < 0:
            final = final[..., -first:]
        if final.shape[-1]:
            self._out.append(final)
        self._open += 1
        self._missing = len(self._slots)


class ChunkedOverlap(Streamer):
    """Per-model factory for :class:`ChunkStream` (non-causal waveform models)."""

    plan: WindowPlan

    def __init__(self, description: ModelDescription, plan: WindowPlan) -> None:
        if description.domain != "waveform" or plan.spectrogram:
            raise ValueError("ChunkedOverlap needs a waveform model and a plan in samples")
        super().__init__(description, plan)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (self.description.audio_channels, self.plan.size)

    def steps_per_second(self) -> float:
        return self.description.sample_rate / self.plan.hop

    def new_stream(self, stems: Sequence[int], realtime: bool = True) -> ChunkStream:
        return ChunkStream(self.plan, self.description.audio_channels, stems, self.description)
