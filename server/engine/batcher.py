"""Fixed-shape windows from many sessions, run in shared forward passes.

Two halves:

* :class:`SpectrogramStream` (per session) keeps the incremental STFT: the
  input samples not yet framed, the magnitudes of the last ``window_frames``
  frames and the phases of frames not yet synthesised. Every time a window
  of the :class:`~models.apply.WindowPlan` is complete it becomes a work item.
  Window estimates are overlap-added with the plan's weights
  (:class:`~models.apply.OverlapAdd`, the same code the offline path runs),
  the mixture phase applied and the STFT inverted by weighted overlap-add,
  one hop at a time. :class:`SpectrogramStreamer` is its per-model factory.
* :class:`WindowBatcher` (per model) queues the items of all sessions and runs
  up to ``max_batch`` of them in one forward pass, real-time items first,
  padding the batch to a static size where the device wants static shapes.
  Conditioned models get each item's target as the control input, so sessions
  with different targets share a batch. Causal steps and waveform chunks are
  fixed-shape items too (see :mod:`server.engine.causal`,
  :mod:`server.engine.chunked`) and go through the same batcher.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from stemserve.models.apply import OverlapAdd, PermutationTracker, WindowPlan, unordered_sources
from stemserve.models.description import ModelDescription
from stemserve.models.joint import JointStems, joint_stems
from stemserve.models.stft import hann_window, magnitude_phase, num_frames, stft
from stemserve.server.engine.pool import LoadedModel
from stemserve.server.engine.work import ItemSpec, Stream, Streamer, stem_slots, take_stems

log = logging.getLogger(__name__)


class SpectrogramStream(Stream):
    """Incremental STFT -> windows -> overlap-added estimates -> incremental inverse STFT.

    Frame ``k`` covers stream samples ``[k * hop - (n_fft - hop), (k + 1) * hop)``
    (the stream is preceded by silence), so frame ``k`` is complete once
    ``(k + 1) * hop`` samples are in. Frames before 0 are silent (zero magnitude).
    """

    def __init__(self, plan: WindowPlan, channels: int, stems: Sequence[int], description: ModelDescription) -> None:
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
                items.extend(ItemSpec(window, target, (j, slot)) for target, slot in self._slots)
        self._mags = history[..., -size:].clone()
        return items

    def accept(self, key: Any, output: torch.Tensor) -> None:
        j, slot = key
        if j != self._open:
            raise RuntimeError(f"window {j} accepted while window {self._open} is open")
        if self._tracker is not None:  # all sources of the window, in a stable order
            output = self._tracker.align(output)
        for s, estimate in take_stems(output, self.stems, slot):
            self._acc.add_stem(s, estimate)
        self._missing -= 1 if slot >= 0 else len(self._slots)
        if self._missing == 0:
            self._synthesise(self._acc.complete())  # (S, C, F, hop_frames)
            self._open += 1
            self._missing = len(self._slots)

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
    """Per-model factory for :class:`SpectrogramStream` (spectrogram models)."""

    plan: WindowPlan

    def __init__(self, description: ModelDescription, plan: WindowPlan) -> None:
        if description.domain != "spectrogram" or not plan.spectrogram:
            raise ValueError("SpectrogramStreamer needs a spectrogram model and a spectrogram WindowPlan")
        super().__init__(description, plan)

    @property
    def item_shape(self) -> tuple[int, ...]:
        assert self.plan.n_fft is not None
        return (self.description.audio_channels, self.plan.n_fft // 2 + 1, self.plan.size)

    def steps_per_second(self) -> float:
        assert self.plan.hop_length is not None
        return self.description.sample_rate / (self.plan.hop * self.plan.hop_length)

    def new_stream(self, stems: Sequence[int], realtime: bool = True) -> SpectrogramStream:
        return SpectrogramStream(self.plan, self.description.audio_channels, stems, self.description)


@dataclass(eq=False)
class WorkItem:
    """A queued model input: which session made it, and when."""

    owner: Any  # the Session; the batcher only reads `epoch` and `closed`
    epoch: int
    spec: ItemSpec
    realtime: bool
    created: float = field(default_factory=time.monotonic)


@dataclass
class BatchOutcome:
    """What one forward pass did: outputs (or errors) in the order of the items."""

    items: list[WorkItem]
    outputs: list[torch.Tensor | BaseException]
    seconds: float
    padded_to: int


def default_batch_sizes(max_batch: int, device: torch.device) -> tuple[int, ...] | None:
    """Static batch shapes: powers of two up to ``max_batch`` on CUDA, none (exact sizes) elsewhere."""
    if device.type != "cuda":
        return None
    sizes = {2**i for i in range(int(math.log2(max_batch)) + 1)} | {max_batch}
    return tuple(sorted(sizes))


class WindowBatcher:
    """Queues fixed-shape items of every session of one model and runs them in batches.

    Worker-thread only (the scheduler owns it). Real-time items go first; offline
    items fill what is left of a batch.
    """

    def __init__(
        self,
        model: LoadedModel,
        item_shape: tuple[int, ...],
        max_batch: int,
        batch_sizes: tuple[int, ...] | None,
        is_live: Callable[[WorkItem], bool],
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model = model
        self.item_shape = item_shape
        self.max_batch = max_batch if not batch_sizes else min(max_batch, max(batch_sizes))
        self.batch_sizes = tuple(sorted(batch_sizes)) if batch_sizes else None
        self._is_live = is_live
        self._realtime: deque[WorkItem] = deque()
        self._offline: deque[WorkItem] = deque()
        # statistics
        self.batches = 0
        self.items_run = 0
        self.sizes: Counter[int] = Counter()
        self.shared_batches = 0  # batches holding items of more than one session
        self.seconds = 0.0

    def put(self, items: Sequence[WorkItem]) -> None:
        for item in items:
            (self._realtime if item.realtime else self._offline).append(item)

    def pending(self) -> int:
        return len(self._realtime) + len(self._offline)

    def pending_realtime(self) -> int:
        return len(self._realtime)

    def oldest_realtime(self) -> float | None:
        return self._realtime[0].created if self._realtime else None

    def take(self) -> list[WorkItem]:
        """Up to ``max_batch`` live items of one shape, real-time first; at most one per cached
        stream (its next step needs the caches this one leaves). Items left out keep their place."""
        batch: list[WorkItem] = []
        streams: set[int] = set()
        shape: torch.Size | None = None
        for queue in (self._realtime, self._offline):
            later: list[WorkItem] = []
            while queue and len(batch) < self.max_batch:
                item = queue.popleft()
                if not self._is_live(item):
                    continue
                slot = item.spec.state
                if (slot is not None and id(slot) in streams) or (
                    shape is not None and item.spec.inputs.shape != shape
                ):
                    later.append(item)
                    continue
                if slot is not None:
                    streams.add(id(slot))
                shape = item.spec.inputs.shape
                batch.append(item)
            queue.extendleft(reversed(later))
        return batch

    def shapes(self) -> tuple[int, ...]:
        """Every batch size a forward pass can have: the static sizes it pads to, or 1..max_batch."""
        if not self.batch_sizes:
            return tuple(range(1, self.max_batch + 1))
        return tuple(sorted({self.padded_size(n) for n in range(1, self.max_batch + 1)}))

    def padded_size(self, count: int) -> int:
        if not self.batch_sizes:
            return count
        return next(s for s in self.batch_sizes if s >= count)

    def run(self, items: list[WorkItem]) -> BatchOutcome:
        """One forward pass over ``items`` (padded to a static size).

        If the pass fails, each item is retried alone so that only the items
        that fail on their own get an error (one session's bad input never
        fails another's blocks).
        """
        size = self.padded_size(len(items))
        inputs = torch.zeros(size, *items[0].spec.inputs.shape)  # item_shape, or a file job's longer step
        for i, item in enumerate(items):
            inputs[i] = item.spec.inputs
        targets = None
        if self.model.description.conditioned:
            targets = torch.zeros(size, dtype=torch.long)
            targets[: len(items)] = torch.tensor([item.spec.target for item in items], dtype=torch.long)
        start = time.perf_counter()
        outputs: list[torch.Tensor | BaseException]
        try:
            if items[0].spec.state is not None:
                result = self._step(inputs, items, size)
            else:
                result = self.model.run(inputs, targets)
            outputs = list(result[: len(items)])
        except Exception as err:  # the model raised: find out whose item it was
            log.warning("batch of %d failed (%s); retrying items one by one", len(items), err)
            outputs = [self._run_one(item) for item in items]
        seconds = time.perf_counter() - start
        self.batches += 1
        self.items_run += len(items)
        self.sizes[size] += 1
        self.seconds += seconds
        if len({id(item.owner) for item in items}) > 1:
            self.shared_batches += 1
        return BatchOutcome(items, outputs, seconds, size)

    def _step(self, inputs: torch.Tensor, items: list[WorkItem], size: int) -> torch.Tensor:
        """A cached step: each item's stream caches in, the caches it leaves stored back."""
        slots = [item.spec.state for item in items]
        states = [
            slot.state if slot is not None and slot.state is not None else self.model.fresh_state() for slot in slots
        ]
        states += [self.model.fresh_state() for _ in range(size - len(items))]
        outputs, after = self.model.run_step(inputs, states)
        for slot, state in zip(slots, after, strict=False):
            assert slot is not None
            slot.state = state
        return outputs

    def _run_one(self, item: WorkItem) -> torch.Tensor | BaseException:
        size = self.padded_size(1)
        inputs = torch.zeros(size, *item.spec.inputs.shape)
        inputs[0] = item.spec.inputs
        targets = None
        if self.model.description.conditioned:
            targets = torch.full((size,), item.spec.target, dtype=torch.long)
        try:
            if item.spec.state is not None:
                return self._step(inputs, [item], size)[0]
            return self.model.run(inputs, targets)[0]
        except Exception as err:
            return err

    def stats(self) -> dict[str, Any]:
        return {
            "windows": self.items_run,
            "batches": self.batches,
            "batch_sizes": dict(sorted(self.sizes.items())),
            "shared_batches": self.shared_batches,
            "queued": self.pending(),
            "compute_s": self.seconds,
        }
