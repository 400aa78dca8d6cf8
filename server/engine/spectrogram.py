"""The spectrogram family's streaming: incremental STFT, windows, overlap-add, incremental inverse STFT.

:class:`SpectrogramStream` (per session) keeps the input samples not yet
framed, the magnitudes of the last ``plan.size`` frames and the phases of
frames not yet synthesised. Every time a window of its
:class:`~models.apply.WindowPlan` is complete it becomes a work item for the
model's batcher (:mod:`server.engine.batcher`). Window estimates are
overlap-added with the plan's weights (:class:`~models.apply.OverlapAdd`, the
same code the offline path runs), the mixture phase applied and the STFT
inverted by weighted overlap-add, one hop at a time.

:class:`SpectrogramStreamer` is its per-model factory. It holds two plans: the
live plan (fits the latency budget) for real-time sessions and the file plan
(:func:`models.apply.file_plan`: few, centred windows) for file jobs, whose
latency nobody hears. Each stream follows one of them from start to end, so
a stream's output equals :func:`models.apply.separate_signal` with that plan.

A live stream of a model with heads (``description.heads``) also asks for the
heads of each window (a :class:`~server.engine.work.HeadsSlot` on the window's
item, computed in the same forward pass), overlap-adds them with the same
weights and keeps the final frames in :attr:`SpectrogramStream.heads`
(:mod:`server.engine.heads`). File streams never ask.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from stemserve.models.apply import OverlapAdd, PermutationTracker, WindowPlan, unordered_sources
from stemserve.models.description import ModelDescription
from stemserve.models.joint import JointStems, joint_stems
from stemserve.models.stft import hann_window, magnitude_phase, num_frames, stft
from stemserve.server.engine.heads import FrameHeads
from stemserve.server.engine.work import HeadsSlot, ItemSpec, Stream, Streamer, stem_slots, take_stems


class SpectrogramStream(Stream):
    """Incremental STFT -> windows -> overlap-added estimates -> incremental inverse STFT.

    Frame ``k`` covers stream samples ``[k * hop - (n_fft - hop), (k + 1) * hop)``
    (the stream is preceded by silence), so frame ``k`` is complete once
    ``(k + 1) * hop`` samples are in. Frames before 0 are silent (zero magnitude).
    ``heads``: also compute the model's heads (see the module doc).
    """

    def __init__(
        self,
        plan: WindowPlan,
        channels: int,
        stems: Sequence[int],
        description: ModelDescription,
        heads: bool = False,
    ) -> None:
        assert plan.n_fft is not None and plan.hop_length is not None
        self.plan = plan
        self.n_fft = plan.n_fft
        self.hop = plan.hop_length
        self.channels = channels
        self.stems = list(stems)
        self.bins = self.n_fft // 2 + 1
        self._slots = stem_slots(description, self.stems)
        self._description = description
        self._joint = JointStems(description) if joint_stems(description, self.stems) else None
        window = hann_window(self.n_fft)
        self._window = window
        # Steady-state sum of squared windows at each offset within a hop: the
        # inverse STFT's normaliser wherever every covering frame exists.
        squared = window**2
        self._norm = torch.stack([squared[r :: self.hop].sum() for r in range(self.hop)])
        if heads:
            pitch_min = int(description.extras.get("pitch_min", 0))
            self.heads = FrameHeads(description.sources, pitch_min, self.n_fft, self.hop)
        self.reset()

    def reset(self) -> None:
        c, f = self.channels, self.bins
        self._pending = torch.zeros(c, self.n_fft - self.hop)  # left pad: silence before sample 0
        self._frames = 0  # frames made so far
        self._mags = torch.zeros(c, f, self.plan.size)  # last `size` frames, newest last
        self._phases: deque[torch.Tensor] = deque()  # phases of frames >= self._phase_frame
        self._mixture: deque[torch.Tensor] = deque()  # their magnitudes (joint stems only)
        if self._joint is not None:
            self._joint.reset()
        self._phase_frame = 0
        self._next_window = 0
        self._acc = OverlapAdd(self.plan, len(self.stems), (c, f))
        self._heads_acc: OverlapAdd | None = None  # made on the first window's heads (their row count)
        if self.heads is not None:
            self.heads.reset()
        self._tracker = (
            PermutationTracker(self.plan, len(self._description.sources))
            if unordered_sources(self._description)
            else None
        )
        self._open = 0  # window being accumulated
        self._missing = len(self._slots)  # items of that window not yet accepted
        self._unit = self.plan.start(0) + self.plan.first  # first frame the next completion finalises
        self._ola = torch.zeros(len(self.stems), c, self.n_fft)
        self._skip = self.n_fft - self.hop  # synthesised samples that precede stream sample 0
        self._out: list[torch.Tensor] = []

    def push(self, audio: torch.Tensor) -> list[ItemSpec]:
        buf = torch.cat([self._pending, audio], dim=1)
        count = num_frames(buf.shape[1], self.n_fft, self.hop)
        if count == 0:
            self._pending = buf
            return []
        spec = stft(buf[:, : (count - 1) * self.hop + self.n_fft], self.n_fft, self.hop)  # (C, F, count)
        mags, phases = magnitude_phase(spec)
        self._pending = buf[:, count * self.hop :]
        items: list[ItemSpec] = []
        size = self.plan.size
        history = torch.cat([self._mags, mags], dim=-1)  # the last `size` frames, then this push's `count`
        for i in range(count):
            self._phases.append(phases[..., i])
            if self._joint is not None:
                self._mixture.append(mags[..., i])
            self._frames += 1
            if self.plan.start(self._next_window) + size <= self._frames:
                window = history[..., i + 1 : i + 1 + size].clone()  # frames [frames - size, frames)
                j = self._next_window
                self._next_window += 1
                for n, (target, slot) in enumerate(self._slots):
                    box = HeadsSlot() if self.heads is not None and n == 0 else None  # once per window
                    items.append(ItemSpec(window, target, (j, slot, box), heads=box))
        self._mags = history[..., -size:].clone()
        return items

    def accept(self, key: Any, output: torch.Tensor) -> None:
        j, slot, box = key
        if j != self._open:
            raise RuntimeError(f"window {j} accepted while window {self._open} is open")
        if self._tracker is not None:  # all sources of the window, in a stable order
            output = self._tracker.align(output)
        for s, estimate in take_stems(output, self.stems, slot):
            self._acc.add_stem(s, estimate)
        if box is not None:
            self._add_heads(box)
        self._missing -= 1 if slot >= 0 else len(self._slots)
        if self._missing == 0:
            if self.heads is not None and self._heads_acc is not None:
                self.heads.add(self._unit, self._heads_acc.complete()[0])  # (R, hop_frames) from frame _unit
            self._synthesise(self._acc.complete())  # (S, C, F, hop_frames)
            self._open += 1
            self._missing = len(self._slots)

    def _add_heads(self, box: HeadsSlot) -> None:
        if box.value is None:
            raise RuntimeError("a window's heads were asked for but not computed")
        if self._heads_acc is None:
            self._heads_acc = OverlapAdd(self.plan, 1, (box.value.shape[0],))
        self._heads_acc.add_stem(0, box.value)  # (R, size)

    def _synthesise(self, mags: torch.Tensor) -> None:
        first = self._unit
        self._unit += mags.shape[-1]
        if first < 0:  # frames before the stream start are silence: nothing to synthesise
            mags = mags[..., -first:]
            first = 0
        count = mags.shape[-1]
        if count == 0:
            return
        assert first == self._phase_frame
        phase = torch.stack([self._phases.popleft() for _ in range(count)], dim=-1)  # (C, F, count)
        self._phase_frame += count
        if self._joint is not None:  # every source of the model is here: share the mixture out among them
            mixture = torch.stack([self._mixture.popleft() for _ in range(count)], dim=-1)
            spec = self._joint(mags, mixture, phase)  # (S, C, F, count)
        else:
            spec = mags * phase
        # Same per-frame math as models.stft.istft: irfft, synthesis window, then
        # overlap-add normalised by the summed squared window.
        frames = torch.fft.irfft(spec.transpose(-1, -2), n=self.n_fft, dim=-1) * self._window  # (S, C, count, n_fft)
        hop = self.hop
        zeros = torch.zeros(*self._ola.shape[:-1], hop)
        for i in range(count):
            self._ola += frames[..., i, :]
            done = self._ola[..., :hop]
            out = torch.where(self._norm > 1e-8, done / self._norm.clamp_min(1e-8), torch.zeros_like(done))
            self._ola = torch.cat([self._ola[..., hop:], zeros], dim=-1)
            if self._skip >= hop:
                self._skip -= hop
                continue
            if self._skip:
                out = out[..., self._skip :]
                self._skip = 0
            self._out.append(out)


class SpectrogramStreamer(Streamer):
    """Per-model factory for :class:`SpectrogramStream` (spectrogram models).

    Args:
        plan: the live plan (real-time sessions; its latency is what they report).
        file_plan: the plan of file jobs' streams (``realtime=False``); default ``plan``.
            Both must have the model's window size (the batcher's item shape).
    """

    plan: WindowPlan

    def __init__(self, description: ModelDescription, plan: WindowPlan, file_plan: WindowPlan | None = None) -> None:
        if description.domain != "spectrogram" or not plan.spectrogram:
            raise ValueError("SpectrogramStreamer needs a spectrogram model and a spectrogram WindowPlan")
        chosen = file_plan or plan
        if (chosen.size, chosen.n_fft, chosen.hop_length) != (plan.size, plan.n_fft, plan.hop_length):
            raise ValueError(f"the file plan {chosen.describe()} must frame like the live plan {plan.describe()}")
        super().__init__(description, plan)
        self.file_plan = chosen

    @property
    def item_shape(self) -> tuple[int, ...]:
        assert self.plan.n_fft is not None
        return (self.description.audio_channels, self.plan.n_fft // 2 + 1, self.plan.size)

    def steps_per_second(self) -> float:
        assert self.plan.hop_length is not None
        return self.description.sample_rate / (self.plan.hop * self.plan.hop_length)

    def plan_for(self, realtime: bool) -> WindowPlan:
        """The plan a stream opened with ``realtime`` follows."""
        return self.plan if realtime else self.file_plan

    def stream_latency(self, realtime: bool = True) -> int:
        return self.plan_for(realtime).latency

    def new_stream(self, stems: Sequence[int], realtime: bool = True) -> SpectrogramStream:
        d = self.description
        # Heads for live sessions only: a file job has nobody to show them to.
        return SpectrogramStream(self.plan_for(realtime), d.audio_channels, stems, d, heads=realtime and bool(d.heads))
