"""Causal waveform models (causal Conv-TasNet, causal TasNet, causal Demucs), streamed exactly.

Two ways, both following a :class:`~models.apply.CausalPlan`:

**Per-layer caches** (:class:`CachedCausalStream`, models whose description
states ``stream_delay``: causal Conv-TasNet and TasNet). Every ``hop`` samples
one work item holds just those samples; the batcher runs it through the
model's ``stream_step`` with the session's caches (convolution tails,
cumulative-norm sums, LSTM states; see :mod:`models.streaming`) and keeps the
caches the step returns. A step costs its new samples only, so steps can be a
few milliseconds long. Items of one session run in order, one per batch;
items of different sessions share batches. File jobs (offline sessions) step
about once a second instead (:data:`OFFLINE_STEP_S`): their latency is not
heard, and a step has a fixed cost of a few milliseconds whatever its length.

**Recomputed context** (:class:`CausalStream`, e.g. causal Demucs). The model
is a black box with a stated receptive field, lookahead and stride
(:class:`~models.description.ModelDescription`). Every ``hop`` samples (a multiple of the
stride, counted from the stream start so the model's frame grid matches the
offline run) one work item holds the newest ``hop`` samples plus ``context``
samples of real left context. Of the model's output on it, the ``hop``
samples ending ``lookahead`` samples before the newest input are final and
equal the offline output: they see all their future and at least a
receptive field of past. Near the stream start the item begins at sample 0
(as the offline run does) and is padded with zeros on the *right*, which a
causal model's kept outputs cannot see; so every item has the same shape and
items of all sessions stack into one batch.

The per-step cost is a forward pass over ``context + hop`` samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from stemserve.models.apply import CausalPlan
from stemserve.models.description import ModelDescription
from stemserve.server.engine.work import ItemSpec, SampleBuffer, StateSlot, Stream, Streamer, stem_slots, take_stems

# A file job needs no short steps: its cached stream steps about once a second of audio, so the
# per-step fixed cost (a few ms) stops dominating (a 4 ms step made Separate 40x slower than one pass).
OFFLINE_STEP_S = 1.0


class CausalStream(Stream):
    """Per-session history of a causal waveform model's input, and its finished output."""

    def __init__(self, plan: CausalPlan, channels: int, stems: Sequence[int], description: ModelDescription) -> None:
        self.plan = plan
        self.channels = channels
        self.stems = list(stems)
        self._slots = stem_slots(description, self.stems)
        self.reset()

    def reset(self) -> None:
        self._history = SampleBuffer(self.channels, capacity=2 * self.plan.input_length)
        self._next = 0  # stream index where the next step's new samples begin
        self._step: dict[int, torch.Tensor] = {}  # slot -> output of the step being accepted
        self._missing = len(self._slots)
        self._out: list[torch.Tensor] = []

    def push(self, audio: torch.Tensor) -> list[ItemSpec]:
        plan = self.plan
        self._history.append(audio)
        items: list[ItemSpec] = []
        while self._history.end >= self._next + plan.hop:
            p = self._next
            start = max(0, p - plan.context)
            segment = self._history.view(start, p + plan.hop)
            if segment.shape[1] < plan.input_length:  # stream start: right-pad (invisible to kept outputs)
                segment = F.pad(segment, (0, plan.input_length - segment.shape[1]))
            else:
                segment = segment.clone()
            items.extend(ItemSpec(segment, target, (p, start, slot)) for target, slot in self._slots)
            self._next += plan.hop
        self._history.trim(self._next - plan.context)
        return items

    def accept(self, key: Any, output: torch.Tensor) -> None:
        p, start, slot = key
        lo = max(0, p - self.plan.lookahead)  # final outputs of this step: [lo, hi)
        hi = p + self.plan.hop - self.plan.lookahead
        for s, estimate in take_stems(output, self.stems, slot):
            self._step[s] = estimate[..., max(0, lo - start) : max(0, hi - start)]
        self._missing -= 1 if slot >= 0 else len(self._slots)
        if self._missing == 0:
            if hi > lo:
                self._out.append(torch.stack([self._step[s] for s in range(len(self.stems))]))
            self._step = {}
            self._missing = len(self._slots)


class CachedCausalStream(Stream):
    """Per-session input not yet stepped, the model's caches, and the finished output."""

    def __init__(self, plan: CausalPlan, channels: int, stems: Sequence[int], hop: int | None = None) -> None:
        self.plan = plan
        self.hop = hop or plan.hop
        self.channels = channels
        self.stems = list(stems)
        self.reset()

    def reset(self) -> None:
        self._pending = torch.zeros(self.channels, 0)
        self._next = 0  # stream index of the next step's first sample
        self._slot = StateSlot()  # a fresh slot: items of an earlier epoch write into the old one
        self._out: list[torch.Tensor] = []

    def push(self, audio: torch.Tensor) -> list[ItemSpec]:
        hop = self.hop
        buf = torch.cat([self._pending, audio], dim=1) if self._pending.shape[1] else audio
        steps = buf.shape[1] // hop
        items = []
        for i in range(steps):
            items.append(ItemSpec(buf[:, i * hop : (i + 1) * hop].clone(), -1, self._next, self._slot))
            self._next += hop
        self._pending = buf[:, steps * hop :].clone()
        return items

    def accept(self, key: Any, output: torch.Tensor) -> None:
        first = key - self.plan.lookahead  # stream index of the output's first sample
        estimate = output[self.stems]  # (stems, channels, hop)
        if first < 0:  # estimates of the silence before the stream start
            estimate = estimate[..., -first:]
        if estimate.shape[-1]:
            self._out.append(estimate)


class CausalStreamer(Streamer):
    """Per-model factory for :class:`CachedCausalStream` or :class:`CausalStream`, as the plan says."""

    plan: CausalPlan

    def __init__(self, description: ModelDescription, plan: CausalPlan) -> None:
        if description.domain != "waveform" or not description.causal:
            raise ValueError("CausalStreamer is for causal waveform models")
        if plan.cached and (description.stream_delay != plan.lookahead or description.conditioned):
            raise ValueError(f"a cached plan needs an unconditioned model with stream_delay {plan.lookahead}")
        super().__init__(description, plan)

    @property
    def stateful(self) -> bool:
        return self.plan.cached

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (self.description.audio_channels, self.plan.input_length)

    def steps_per_second(self) -> float:
        return self.description.sample_rate / self.plan.hop

    def offline_hop(self) -> int:
        """Step of a file job's cached stream: about ``OFFLINE_STEP_S``, a multiple of the real-time step."""
        plan = self.plan
        return max(plan.hop, round(OFFLINE_STEP_S * self.description.sample_rate / plan.hop) * plan.hop)

    def stream_latency(self, realtime: bool = True) -> int:
        if realtime or not self.plan.cached:
            return self.latency
        return self.plan.lookahead + self.offline_hop() - 1

    def new_stream(self, stems: Sequence[int], realtime: bool = True) -> Stream:
        if self.plan.cached:
            hop = None if realtime else self.offline_hop()
            return CachedCausalStream(self.plan, self.description.audio_channels, stems, hop)
        return CausalStream(self.plan, self.description.audio_channels, stems, self.description)
