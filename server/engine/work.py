"""The interface between a model family's streaming logic and the batching worker.

Every family turns a session's audio into *work items*: model inputs of one
fixed shape per model (a spectrogram window, a causal step with its context,
a waveform chunk). The worker stacks items from all sessions of a model into
one forward pass and hands each item's output back to the stream that made it.

* :class:`Streamer` — per model, shared by its sessions: the plan, the item
  shape, the latency, and a factory for per-session streams.
* :class:`Stream` — per session: push audio (model rate and channels), get
  items; accept item outputs in the order the items were made; pull the
  samples whose estimate is final.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from stemserve.models.apply import CausalPlan, WindowPlan
from stemserve.models.description import ModelDescription

if TYPE_CHECKING:
    from stemserve.server.engine.heads import FrameHeads


class StateSlot:
    """A stream's per-layer model caches between steps (models with ``stream_delay``).

    The batcher reads :attr:`state` when it runs the stream's next item and
    stores the state the step returns; None means a fresh stream (the model's
    ``stream_init``). The tensors stay on the model's device. A stream's items
    run one per batch and in order, since each needs the state the previous
    one left.
    """

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None


class HeadsSlot:
    """Where the batcher leaves an item's per-frame heads (models with ``description.heads``).

    :attr:`value` is None until the item ran, then ``(R, size)`` float32 CPU per-frame
    probabilities (:func:`server.engine.heads.frame_probabilities`). Only the streams that
    report heads (live spectrogram sessions) attach one; items without it cost nothing extra.
    """

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None


@dataclass(frozen=True)
class ItemSpec:
    """One model input a stream wants computed.

    Attributes:
        inputs: ``Streamer.item_shape`` float32 tensor on the CPU.
        target: source index for a conditioned model, else -1.
        key: the stream's own bookkeeping, handed back with the output.
        state: the stream's caches when the model steps with per-layer caches, else None.
        heads: set when the stream wants the model's heads of this item, else None.
    """

    inputs: torch.Tensor
    target: int
    key: Any
    state: StateSlot | None = None
    heads: HeadsSlot | None = None


class Stream(ABC):
    """Per-session streaming state of one model family (model rate and channels).

    Subclasses set ``stems`` and ``channels``, and append finished ``(stems, channels, m)``
    estimates to ``_out`` in stream order; :meth:`pull` hands them over.
    """

    stems: list[int]
    channels: int
    _out: list[torch.Tensor]
    # Final per-frame heads (live streams of a model with heads), else None.
    heads: FrameHeads | None = None

    @abstractmethod
    def push(self, audio: torch.Tensor) -> list[ItemSpec]:
        """Take ``(channels, n)`` new samples; return the items they complete."""

    @abstractmethod
    def accept(self, key: Any, output: torch.Tensor) -> None:
        """Output of one item: ``(S, ...)`` with ``S`` = all sources, or 1 for a conditioned model.

        Items are accepted in the order :meth:`push` returned them.
        """

    def pull(self) -> torch.Tensor:
        """``(stems, channels, m)`` estimates that became final since the last pull (model rate)."""
        if not self._out:
            return torch.zeros(len(self.stems), self.channels, 0)
        out = torch.cat(self._out, dim=-1)
        self._out = []
        return out

    @abstractmethod
    def reset(self) -> None:
        """Back to the state of a fresh stream (the stream is preceded by silence)."""


class Streamer(ABC):
    """Per-model streaming strategy: the plan, its latency, and per-session streams."""

    def __init__(self, description: ModelDescription, plan: WindowPlan | CausalPlan) -> None:
        self.description = description
        self.plan = plan

    @property
    def latency(self) -> int:
        """Algorithmic latency in samples at the model's rate."""
        return self.plan.latency

    @property
    @abstractmethod
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one item's input (without the batch axis)."""

    @property
    def stateful(self) -> bool:
        """True when items carry per-layer caches (:class:`StateSlot`)."""
        return False

    @abstractmethod
    def steps_per_second(self) -> float:
        """Items per second of audio one session makes per computed stem-pass.

        For a conditioned model each selected stem is a separate pass, so a
        session's item rate is this times its stem count (times 1 otherwise).
        """

    @abstractmethod
    def new_stream(self, stems: Sequence[int], realtime: bool = True) -> Stream:
        """A fresh per-session stream computing the sources with these indices.

        ``realtime`` False: a file job's stream, which may take longer steps (see
        :meth:`stream_latency`)."""

    def stream_latency(self, realtime: bool = True) -> int:
        """Algorithmic latency of a stream made by :meth:`new_stream` with ``realtime``."""
        return self.latency

    def items_per_second(self, stems: int) -> float:
        passes = stems if self.description.conditioned else 1
        return self.steps_per_second() * passes


def stem_slots(description: ModelDescription, stems: Sequence[int]) -> list[tuple[int, int]]:
    """``(target, slot)`` pairs of the items to make per step.

    Conditioned model: one item per selected stem (target = its index). Others:
    one item (target -1) whose output holds every source.
    """
    if description.conditioned:
        return [(source, slot) for slot, source in enumerate(stems)]
    return [(-1, -1)]


def take_stems(output: torch.Tensor, stems: Sequence[int], slot: int) -> list[tuple[int, torch.Tensor]]:
    """``(slot, estimate)`` pairs from one item's output (see :func:`stem_slots`)."""
    if slot >= 0:
        return [(slot, output[0])]
    return [(i, output[source]) for i, source in enumerate(stems)]


class SampleBuffer:
    """The recent part of a stream, indexed by stream position, with amortised appends.

    Holds samples ``[start, end)``; positions below 0 read as silence (zeros)
    when the buffer is created with ``start < 0``. :meth:`trim` lets go of
    samples a stream no longer needs; memory is reclaimed when appending
    would otherwise grow the storage, so appending ``n`` samples costs O(n)
    on average whatever the buffer's length (a 32-sample DAW block must not
    copy seconds of context).
    """

    def __init__(self, channels: int, start: int = 0, capacity: int = 4096) -> None:
        self._data = torch.zeros(channels, max(capacity, -start, 1))
        self._offset = start  # stream index of self._data[:, 0]
        self._fill = -start if start < 0 else 0  # valid samples, zeros before position 0 included
        self._keep_from = start

    @property
    def start(self) -> int:
        return self._offset

    @property
    def end(self) -> int:
        return self._offset + self._fill

    def append(self, audio: torch.Tensor) -> None:
        n = audio.shape[1]
        if self._fill + n > self._data.shape[1]:
            drop = max(0, self._keep_from - self._offset)
            kept = self._fill - drop
            capacity = self._data.shape[1]
            if kept + n > capacity // 2:  # grow so that compaction stays rare
                capacity = max(2 * capacity, 2 * (kept + n))
            data = torch.zeros(self._data.shape[0], capacity)
            data[:, :kept] = self._data[:, drop : self._fill]
            self._data = data
            self._offset += drop
            self._fill = kept
        self._data[:, self._fill : self._fill + n] = audio
        self._fill += n

    def view(self, begin: int, end: int) -> torch.Tensor:
        """``(channels, end - begin)`` samples ``[begin, end)`` (a view: copy before keeping)."""
        if begin < self._offset or end > self.end:
            raise IndexError(f"samples [{begin}, {end}) not held (holding [{self._offset}, {self.end}))")
        return self._data[:, begin - self._offset : end - self._offset]

    def trim(self, before: int) -> None:
        """Samples before ``before`` are no longer needed."""
        self._keep_from = max(self._keep_from, before)
