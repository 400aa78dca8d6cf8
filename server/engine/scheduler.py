"""Per-model scheduling: one worker thread runs every session of one model.

Callers (the gRPC loop, OSC, scripts) only validate and enqueue
(:meth:`ModelScheduler.enqueue` is cheap and thread-safe); the worker thread
does all audio work and all model calls, so a session's state is only ever
touched by one thread and the caller's event loop never blocks.

The worker loop:

1. move new requests into their sessions; ingest blocks in order (STFT frames,
   causal steps, chunks -> work items for the :class:`WindowBatcher`); a
   reset or close waits until the session's earlier blocks are answered;
2. answer every block whose output is available (often at once: most small
   blocks complete no window);
3. if real-time items wait and the batch is not full, wait up to
   ``max_wait_s`` (counted from the oldest item) for other sessions' items;
4. run one batch (real-time items first, offline items fill the rest), hand
   the outputs back, answer the blocks that completed.

**Deadlines and admission.** A real-time block is late when its result is
ready after its deadline (arrival + ``EngineConfig.deadline_ms``, or one the
caller gives); it is still delivered, flagged ``late`` and counted — audio is
never dropped. A new real-time session is admitted only if the model's
estimated real-time load stays within ``capacity`` (a fraction of the
worker's time): load = items per second of all real-time sessions x seconds
per item. The cost per item is first timed at warm-up, replaced by the mean of
the first real batches (live or file work), then tracked as a running average,
so a warm-up timed on a busy machine does not lock sessions out. The first
real-time session of a model is always admitted (an estimate alone never
refuses an empty model): if it cannot keep up its stream reports OVERLOADED.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from stemserve.server.engine.batcher import BatchOutcome, WindowBatcher, WorkItem
from stemserve.server.engine.errors import AdmissionError, NotReadyError, SessionFailedError
from stemserve.server.engine.pool import LoadedModel
from stemserve.server.engine.session import Request, Session
from stemserve.server.engine.stats import BlockStats
from stemserve.server.engine.work import Streamer

log = logging.getLogger(__name__)

# Weight of the newest batch in the running seconds-per-item estimate.
COST_SMOOTHING = 0.05
# Real batches after which the warm-up timing no longer counts: until then the estimate is the
# plain mean of the real batches, so a warm-up timed on a busy machine is forgotten at once.
COST_WARM_BATCHES = 8
ADMISSION_ADVICE = (
    "Close a session, choose a cheaper model (a causal Conv-TasNet, or fewer stems per session), "
    "give the server more CPU threads (--threads) or run it on a GPU."
)


def _resolve(future: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    """Complete a future unless its caller already cancelled it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


class ModelScheduler:
    """Queues, batching, deadlines and admission for one loaded model."""

    def __init__(
        self,
        name: str,
        model: LoadedModel,
        streamer: Streamer,
        *,
        max_batch: int,
        batch_sizes: tuple[int, ...] | None,
        max_wait_s: float,
        capacity: float,
        max_sessions: int | None,
        idle_timeout_s: float,
        block_stats: BlockStats,
        on_closed: Callable[[Session, str], None],
    ) -> None:
        self.name = name
        self.model = model
        self.streamer = streamer
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.block_stats = block_stats
        self._on_closed = on_closed
        self.batcher = WindowBatcher(model, streamer.item_shape, max_batch, batch_sizes, self._is_live)
        self._cond = threading.Condition()
        self._inbox: deque[tuple[Session, Request]] = deque()
        self._sessions: dict[str, Session] = {}
        self._realtime_sessions = 0  # kept with _sessions, readable without the lock
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._next_expiry_check = 0.0
        self.seconds_per_item = 0.0
        self.real_batches = 0  # batches of real (live or file) work since load
        self.sessions_expired = 0
        self.sessions_failed = 0

    # ------------------------------------------------------------------ lifecycle

    def warm_up(self) -> None:
        """Run every batch shape the batcher can use once, so the first real block is not slow,
        and time the smallest and largest (the smallest sets the admission cost estimate)."""
        sizes = self.batcher.shapes()
        timings = self.model.warm_up(
            self.streamer.item_shape, sizes, timed=sorted({sizes[0], sizes[-1]}), stateful=self.streamer.stateful
        )
        self.seconds_per_item = timings[sizes[0]] / sizes[0]

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"stemserve-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Answer what is queued, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ caller side

    def session_load(self, session: Session) -> float:
        """Fraction of the worker's time this session needs in real time."""
        rate = self.streamer.items_per_second(len(session.stems))
        # items_per_second is per second of model-rate audio; a client at another
        # rate feeds the same amount of model audio per second of wall time.
        return rate * self.seconds_per_item

    def _admitted(self) -> list[Session]:
        """Real-time sessions holding a share of the device (caller holds the lock)."""
        return [s for s in self._sessions.values() if s.realtime and not s.released]

    def realtime_load(self) -> float:
        with self._cond:
            return sum(self.session_load(s) for s in self._admitted())

    def release(self, session: Session) -> None:
        """A closing session gives up its real-time share now, not once its last blocks are answered,
        so a track that closes and reopens (model switch, reconnect) is not refused meanwhile."""
        with self._cond:
            session.released = True

    def add(self, session: Session) -> None:
        """Register a session; a real-time one only if the model can keep up (else AdmissionError)."""
        with self._cond:
            if self._stopping:
                raise NotReadyError(f"model {self.name} is shutting down")
            if session.realtime:
                realtime = self._admitted()
                if self.max_sessions is not None and len(realtime) >= self.max_sessions:
                    raise AdmissionError(
                        f"model {self.name}: {len(realtime)} real-time sessions open, the limit is {self.max_sessions}"
                    )
                load = sum(self.session_load(s) for s in realtime)
                need = self.session_load(session)
                if realtime and load + need > self.capacity:
                    raise AdmissionError(
                        f"model {self.name}: {len(realtime)} real-time sessions use {load:.1%} of its device time and "
                        f"this one needs {need:.1%} more, over the real-time capacity of {self.capacity:.1%} "
                        f"({self.seconds_per_item * 1e3:.2f} ms per window). {ADMISSION_ADVICE}"
                    )
                if not realtime and need > self.capacity:
                    # An estimate is never reason enough to lock out the first session: it runs,
                    # its stream says OVERLOADED if it falls behind, and its passes correct the estimate.
                    log.warning(
                        "model %s: admitting the only real-time session although it is estimated to need %.1f%% "
                        "of the device (%.2f ms per window); its stream reports OVERLOADED if it falls behind",
                        self.name,
                        need * 100,
                        self.seconds_per_item * 1e3,
                    )
            self._sessions[session.id] = session
            self._realtime_sessions += int(session.realtime)

    def enqueue(self, session: Session, request: Request) -> None:
        with self._cond:
            if self._stopping:
                raise NotReadyError(f"model {self.name} is shutting down")
            self._inbox.append((session, request))
            self._cond.notify()

    def session_count(self) -> tuple[int, int]:
        """(real-time, offline) sessions open; a closing session no longer counts."""
        with self._cond:
            live = [s for s in self._sessions.values() if not s.released]
            rt = sum(1 for s in live if s.realtime)
            return rt, len(live) - rt

    # ------------------------------------------------------------------ worker

    def _is_live(self, item: WorkItem) -> bool:
        session: Session = item.owner
        return not session.closed and item.epoch == session.epoch

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._inbox and not self.batcher.pending():
                    if self._stopping:
                        break
                    self._cond.wait(timeout=self._tick())
                requests = list(self._inbox)
                self._inbox.clear()
            self._dispatch(requests)
            self._expire_idle()
            if not self.batcher.pending():
                continue
            if self._wait_for_more():
                continue
            batch = self.batcher.take()
            if batch:
                self._deliver(self.batcher.run(batch))
        self._abandon()

    def _tick(self) -> float:
        return max(0.01, min(0.25, self.idle_timeout_s / 4))

    def _dispatch(self, requests: Iterable[tuple[Session, Request]]) -> None:
        touched: dict[str, Session] = {}
        for session, request in requests:
            if session.closed:
                _resolve(request.future, error=SessionFailedError(f"session {session.id} is closed"))
                continue
            session.requests.append(request)
            touched[session.id] = session
        for session in touched.values():
            self._advance(session)

    def _advance(self, session: Session) -> None:
        """Ingest the session's requests in order; controls wait for earlier blocks."""
        try:
            self._emit(session)
            while session.requests and not session.closed:
                request = session.requests[0]
                if request.kind in ("block", "flush"):
                    assert request.audio is not None
                    specs = session.ingest(request.audio)
                    self.batcher.put([WorkItem(session, session.epoch, spec, session.realtime) for spec in specs])
                    request.items_needed = session.items_made
                    session.pending.append(request)
                    session.requests.popleft()
                    self._emit(session)
                    continue
                if session.pending:
                    break  # reset / close apply after the blocks before them
                session.requests.popleft()
                if request.kind == "reset":
                    session.reset()
                    _resolve(request.future)
                elif request.kind == "close":
                    self._close(session, "closed")
                    _resolve(request.future)
        except Exception as err:
            self._fail(session, err)

    def _emit(self, session: Session) -> None:
        session.collect()
        now = time.monotonic()
        while session.pending and session.ready(session.pending[0]):
            request = session.pending.popleft()
            result = session.emit(request, now)
            self.block_stats.record(result.processing_ms, result.late, live=session.realtime)
            _resolve(request.future, result)

    def _wait_for_more(self) -> bool:
        """Wait (bounded) for other real-time sessions' items to fill the batch; True if it waited."""
        if self.max_wait_s <= 0:
            return False
        waiting = self.batcher.pending_realtime()
        oldest = self.batcher.oldest_realtime()
        if oldest is None or waiting >= self.batcher.max_batch:
            return False
        if self._realtime_sessions <= 1:
            return False  # nobody else could join the batch
        remaining = oldest + self.max_wait_s - time.monotonic()
        if remaining <= 0:
            return False
        with self._cond:
            if not self._inbox and not self._stopping:
                self._cond.wait(timeout=remaining)
        return True

    def _deliver(self, outcome: BatchOutcome) -> None:
        if outcome.items:
            per_item = outcome.seconds / len(outcome.items)
            self.real_batches += 1
            if self.real_batches <= COST_WARM_BATCHES:
                self.seconds_per_item += (per_item - self.seconds_per_item) / self.real_batches
            else:
                self.seconds_per_item += COST_SMOOTHING * (per_item - self.seconds_per_item)
        touched: dict[str, Session] = {}
        for item, output in zip(outcome.items, outcome.outputs, strict=True):
            session: Session = item.owner
            if not self._is_live(item):
                continue
            if isinstance(output, BaseException):
                self._fail(session, output)
                continue
            try:
                session.accept(item.spec.key, output)
            except Exception as err:
                self._fail(session, err)
                continue
            touched[session.id] = session
        for session in touched.values():
            self._advance(session)

    def _expire_idle(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry_check:
            return
        self._next_expiry_check = now + self._tick()
        with self._cond:
            idle = [
                s
                for s in self._sessions.values()
                if not s.pending and not s.requests and now - s.last_activity > self.idle_timeout_s
            ]
        for session in idle:
            log.info("session %s expired after %.1f s idle", session.id, now - session.last_activity)
            self.sessions_expired += 1
            self._close(session, "expired")

    def _close(self, session: Session, reason: str) -> None:
        session.closed = True
        with self._cond:
            if self._sessions.pop(session.id, None) is not None:
                self._realtime_sessions -= int(session.realtime)
        self._on_closed(session, reason)

    def _fail(self, session: Session, err: BaseException) -> None:
        """One session's error closes that session only."""
        if session.closed:
            return
        log.error("session %s failed: %s: %s", session.id, type(err).__name__, err, exc_info=err)
        self.sessions_failed += 1
        failure = SessionFailedError(f"session {session.id} failed and was closed: {type(err).__name__}: {err}")
        failure.__cause__ = err
        for request in [*session.pending, *session.requests]:
            _resolve(request.future, error=failure)
        session.pending.clear()
        session.requests.clear()
        self._close(session, "failed")

    def _abandon(self) -> None:
        """After the loop ends: nothing still waiting may hang."""
        error = NotReadyError(f"model {self.name} shut down")
        with self._cond:
            leftover = list(self._inbox)
            self._inbox.clear()
            sessions = list(self._sessions.values())
        for _, request in leftover:
            _resolve(request.future, error=error)
        for session in sessions:
            for request in [*session.pending, *session.requests]:
                _resolve(request.future, error=error)
            session.pending.clear()
            session.requests.clear()

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        rt, offline = self.session_count()
        out = self.batcher.stats()
        out.update(
            {
                "realtime_sessions": rt,
                "offline_sessions": offline,
                "realtime_load": self.realtime_load(),
                "capacity": self.capacity,
                "ms_per_window": self.seconds_per_item * 1e3,
                "sessions_expired": self.sessions_expired,
                "sessions_failed": self.sessions_failed,
                "warmup_ms": {k: v * 1e3 for k, v in self.model.timings.items()},
                "ready": self.model.ready,
            }
        )
        return out
