"""Fixed-shape work items from many sessions, run in shared forward passes.

:class:`WindowBatcher` (per model) queues the items of all sessions of one
model and runs up to ``max_batch`` of them in one forward pass, real-time
items first, padding the batch to a static size where the device wants static
shapes. Conditioned models get each item's target as the control input, so
sessions with different targets (and the stems of one file job) share a batch.
It serves the three streaming families alike: spectrogram windows
(:mod:`server.engine.spectrogram`), causal steps (:mod:`server.engine.causal`)
and waveform chunks (:mod:`server.engine.chunked`).

When an item carries a :class:`~server.engine.work.HeadsSlot` (a live session
of a model with heads), its batch runs ``separate_with_heads`` instead, the
same forward pass plus the heads (:func:`server.engine.heads.run_with_heads`),
and each such item's per-frame heads are left in its slot.
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

from stemserve.server.engine.heads import run_with_heads
from stemserve.server.engine.pool import LoadedModel
from stemserve.server.engine.work import ItemSpec

log = logging.getLogger(__name__)


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
        self._has_heads = bool(model.description.heads)
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
                result = self._run(inputs, targets, items)
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

    def _run(self, inputs: torch.Tensor, targets: torch.Tensor | None, items: list[WorkItem]) -> torch.Tensor:
        """A plain forward pass; with the heads when an item asks for them (left in its slot)."""
        if not (self._has_heads and any(item.spec.heads is not None for item in items)):
            return self.model.run(inputs, targets)
        outputs, frames = run_with_heads(self.model, inputs, targets)
        for item, row in zip(items, frames, strict=False):  # padding rows have no item
            if item.spec.heads is not None:
                item.spec.heads.value = row
        return outputs

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
            return self._run(inputs, targets, [item])[0]
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
