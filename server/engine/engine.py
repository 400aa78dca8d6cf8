"""The engine facade the transports call: models, sessions, blocks, files, stats.

Plain Python; every method is thread-safe. Model work happens on one worker
thread per loaded model (:mod:`server.engine.scheduler`), so :meth:`Engine.submit`
only validates, copies and enqueues, and returns a
:class:`concurrent.futures.Future` (``asyncio.wrap_future`` it on an event loop).

Typical real-time use::

    engine = Engine(EngineConfig(device="auto"))
    engine.load_model("unet")                       # load + warm up
    info = engine.open_session("unet", 48000, 2, {"target": "vocals"})
    # report info.latency.total to the host for delay compensation
    future = engine.submit(info.id, seq, block)     # block: (2, n) float32
    result = future.result()                        # result.output: (2, n)
    engine.flush(info.id).result()                  # the last L samples
    engine.close(info.id)

Errors are the types in :mod:`server.engine.errors`; an error while processing
one session closes that session only.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stemserve.models.apply import (
    DEFAULT_CACHED_STEP_CPU_S,
    DEFAULT_CACHED_STEP_S,
    DEFAULT_UNBOUNDED_CONTEXT_S,
    Plan,
    Weighting,
    WindowPlan,
    file_plan,
    plan_for,
)
from stemserve.models.base import Separator
from stemserve.models.description import ModelDescription
from stemserve.server.engine import whole
from stemserve.server.engine.batcher import default_batch_sizes
from stemserve.server.engine.causal import CausalStreamer
from stemserve.server.engine.chunked import ChunkedOverlap
from stemserve.server.engine.errors import (
    InvalidAudioError,
    InvalidParameterError,
    NotReadyError,
    UnknownModelError,
    UnknownSessionError,
    UnknownTargetError,
)
from stemserve.server.engine.pool import ModelPool
from stemserve.server.engine.resample import DEFAULT_QUALITY, FILE_RESAMPLE_QUALITY, MAX_RATE, MIN_RATE
from stemserve.server.engine.scheduler import ModelScheduler
from stemserve.server.engine.session import (
    BlockResult,
    LatencyParts,
    LatencyTrim,
    Request,
    Session,
    SessionInfo,
    SessionParams,
)
from stemserve.server.engine.spectrogram import SpectrogramStreamer
from stemserve.server.engine.stats import BlockStats
from stemserve.server.engine.work import Streamer

log = logging.getLogger(__name__)


FILE_PLANS = ("throughput", "live")


@dataclass(frozen=True)
class EngineConfig:
    """Everything about how the engine runs models and streams.

    Attributes:
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        half: half precision on a GPU (ignored on CPU).
        max_batch: work items (windows, steps, chunks) per forward pass, at most.
        batch_sizes: static batch shapes to pad to; None: powers of two up to
            ``max_batch`` on CUDA, exact sizes on CPU.
        max_wait_ms: how long the oldest real-time item may wait for others to
            fill its batch (only while several real-time sessions are open).
        deadline_ms: a real-time block whose result is not ready this long after
            it was submitted is reported late.
        buffer_ms: extra latency added on purpose (part ``buffering`` of L); lets
            a block's result skip waiting for the model work its own input began.
        idle_timeout_s: a session with no call for this long is closed.
        realtime_capacity: fraction of a model worker's time real-time sessions
            may need before new ones are refused (AdmissionError).
        max_sessions: real-time sessions per model, at most (None: no limit).
        resample_quality: real-time sessions: ``sinc`` (low-lag windowed sinc, the default) or
            a soxr quality (``QQ``, ``LQ``, ``MQ``, ``HQ``, ``VHQ``); see :mod:`server.engine.resample`.
            File jobs always use soxr ``HQ``.
        max_latency_ms: budget for the model part of L; default plans shrink to fit.
        window_hop / window_lookahead / weighting / segment / causal_hop:
            overrides of the default plan (see :func:`models.apply.plan_for`). A causal
            model with per-layer caches steps every 4 ms on a GPU and 16 ms on a CPU
            unless ``causal_hop`` (samples at the model's rate) says otherwise.
        causal_context_s: left context given to causal models that recompute it
            (no per-layer caches) when their receptive field is unbounded: each
            step recomputes this much, and streams longer than it only approximate
            the offline output.
        file_chunk_s: block length :meth:`Engine.separate_file` feeds.
        file_plan: how file jobs tile a spectrogram model's signal: ``throughput`` (the default,
            :func:`models.apply.file_plan`: windows every half window, centred) or ``live`` (the
            real-time sessions' plan, as before).
        file_window_hop / file_weighting: overrides of the throughput plan.
    """

    device: str = "auto"
    half: bool = False
    max_batch: int = 16
    batch_sizes: tuple[int, ...] | None = None
    max_wait_ms: float = 2.0
    deadline_ms: float = 100.0
    buffer_ms: float = 0.0
    idle_timeout_s: float = 30.0
    realtime_capacity: float = 0.8
    max_sessions: int | None = None
    resample_quality: str = DEFAULT_QUALITY
    max_latency_ms: float | None = 200.0
    window_hop: int | None = None
    window_lookahead: int | None = None
    weighting: Weighting | None = None
    segment: int | None = None
    causal_hop: int | None = None
    causal_context_s: float = DEFAULT_UNBOUNDED_CONTEXT_S
    file_chunk_s: float = 1.0
    file_plan: str = "throughput"
    file_window_hop: int | None = None
    file_weighting: Weighting | None = None

    def __post_init__(self) -> None:
        if self.file_plan not in FILE_PLANS:
            raise ValueError(f"file_plan must be one of {', '.join(FILE_PLANS)}, got {self.file_plan!r}")


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model as clients see it.

    Attributes:
        latency: a session's L at the model's own rate (no resampling), in parts.
        plan: the streaming plan (window / causal step / chunk), as a plain dict.
        file_plan: the plan file jobs follow (``plan`` unless the model has a throughput plan).
    """

    name: str
    description: ModelDescription
    latency: LatencyParts
    plan: dict[str, Any]
    device: str
    ready: bool
    file_plan: dict[str, Any] | None = None


def default_plan(description: ModelDescription, config: EngineConfig, device: torch.device) -> Plan:
    """The plan the engine follows for a model unless given one: :func:`models.apply.plan_for` with
    the config's overrides; causal models with per-layer caches step every 4 ms on a GPU, 16 ms on a CPU."""
    c = config
    return plan_for(
        description,
        window_hop=c.window_hop,
        lookahead=c.window_lookahead,
        weighting=c.weighting,
        segment=c.segment,
        causal_hop=c.causal_hop,
        unbounded_context_s=c.causal_context_s,
        max_latency_s=None if c.max_latency_ms is None else c.max_latency_ms / 1000,
        cached_step_s=DEFAULT_CACHED_STEP_S if device.type == "cuda" else DEFAULT_CACHED_STEP_CPU_S,
    )


def default_file_plan(description: ModelDescription, config: EngineConfig, live: Plan) -> Plan:
    """The plan a model's file jobs follow: :func:`models.apply.file_plan` (``config.file_plan ==
    "throughput"``) or the live plan. Only spectrogram models have a file plan of their own here;
    waveform families choose their file steps in their streamers, and models with a whole-signal
    file method bypass streaming altogether (:meth:`Engine.separate_file`)."""
    if config.file_plan == "live" or description.domain != "spectrogram":
        return live
    return file_plan(description, window_hop=config.file_window_hop, weighting=config.file_weighting)


def make_streamer(description: ModelDescription, plan: Plan, file: Plan | None = None) -> Streamer:
    """The streaming strategy for a model: spectrogram windows, causal steps or waveform chunks.

    ``file``: the plan of file jobs' streams (spectrogram models; default ``plan``)."""
    if description.domain == "spectrogram":
        if not isinstance(plan, WindowPlan) or not isinstance(file or plan, WindowPlan):
            raise ValueError("spectrogram models need a WindowPlan")
        return SpectrogramStreamer(description, plan, file if isinstance(file, WindowPlan) else None)
    if description.causal:
        if isinstance(plan, WindowPlan):
            raise ValueError("causal waveform models need a CausalPlan")
        return CausalStreamer(description, plan)
    if not isinstance(plan, WindowPlan):
        raise ValueError("non-causal waveform models need a WindowPlan in samples")
    return ChunkedOverlap(description, plan)


def stream_plan(streamer: Streamer, realtime: bool = False) -> dict[str, Any]:
    """The plan a streamer's real-time (``realtime``) or file streams follow, as a plain dict."""
    if isinstance(streamer, SpectrogramStreamer):
        return streamer.plan_for(realtime).describe()
    return streamer.plan.describe()


class Engine:
    """Models, sessions and their worker threads. See the module docstring."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self._pool = ModelPool(self.config.device, self.config.half)
        self._schedulers: dict[str, ModelScheduler] = {}
        self._sessions: dict[str, Session] = {}
        self._lock = threading.RLock()
        self._stopped = False
        self._block_stats = BlockStats()
        self._closed_counts: dict[str, int] = {"closed": 0, "expired": 0, "failed": 0}
        # cumulative over all sessions, closed ones included
        self._totals = {"blocks_in": 0, "invalid_samples": 0, "invalid_outputs": 0, "underrun_samples": 0}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ models

    def load_model(
        self,
        name: str,
        path: str | Path | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        model: Separator | None = None,
        plan: Plan | None = None,
        warm_up: bool = True,
    ) -> ModelInfo:
        """Load a model once (a registry preset, a file, or a built network) and start its worker.

        Args:
            name: the name sessions open; a registry preset unless ``path`` or ``model``.
            path: checkpoint / official weights to load.
            config: preset config overrides (registry builds).
            model: an already built :class:`Separator`.
            plan: streaming plan; default :func:`models.apply.plan_for` with this
                engine's overrides and latency budget.
            warm_up: run every batch shape now (else on :meth:`warm_up`).
        Raises:
            UnknownModelError: ``name`` is not a preset (and no path / model given).
        """
        with self._lock:
            if self._stopped:
                raise NotReadyError("engine is shut down")
            if name in self._schedulers:
                return self.model_info(name)
            loaded = self._pool.load(name, path, config=config, model=model)
            d = loaded.description
            c = self.config
            chosen = plan or default_plan(d, self.config, loaded.device)
            # File jobs' plan: the throughput plan unless the caller chose the plan or config says live.
            streamer = make_streamer(d, chosen, None if plan is not None else default_file_plan(d, c, chosen))
            batch_sizes = (
                c.batch_sizes if c.batch_sizes is not None else default_batch_sizes(c.max_batch, loaded.device)
            )
            scheduler = ModelScheduler(
                name,
                loaded,
                streamer,
                max_batch=c.max_batch,
                batch_sizes=batch_sizes,
                max_wait_s=c.max_wait_ms / 1000,
                capacity=c.realtime_capacity,
                max_sessions=c.max_sessions,
                idle_timeout_s=c.idle_timeout_s,
                block_stats=self._block_stats,
                on_closed=self._forget,
            )
            self._schedulers[name] = scheduler
            log.info(
                "model %s: %s plan %s, file plan %s",
                name,
                type(streamer).__name__,
                chosen.describe(),
                stream_plan(streamer),
            )
        if warm_up:
            scheduler.warm_up()
        scheduler.start()
        return self.model_info(name)

    def warm_up(self) -> None:
        """Warm every loaded model that is not warm yet (blocking; run it off the event loop)."""
        for scheduler in list(self._schedulers.values()):
            if not scheduler.model.ready:
                scheduler.warm_up()

    @property
    def ready(self) -> bool:
        """True when at least one model is loaded, every model is warm, and not shutting down."""
        return not self._stopped and bool(self._schedulers) and all(s.model.ready for s in self._schedulers.values())

    def models(self) -> list[ModelInfo]:
        return [self.model_info(name) for name in list(self._schedulers)]

    def model_info(self, name: str) -> ModelInfo:
        scheduler = self._scheduler(name)
        d = scheduler.model.description
        buffering = round(self.config.buffer_ms * d.sample_rate / 1000)
        return ModelInfo(
            name=name,
            description=d,
            latency=LatencyParts(scheduler.streamer.latency, buffering, 0, d.sample_rate),
            plan=scheduler.streamer.plan.describe(),
            device=str(scheduler.model.device),
            ready=scheduler.model.ready,
            file_plan=stream_plan(scheduler.streamer),
        )

    def _scheduler(self, name: str) -> ModelScheduler:
        try:
            return self._schedulers[name]
        except KeyError:
            known = ", ".join(sorted(self._schedulers)) or "none"
            raise UnknownModelError(f"model {name!r} is not loaded; loaded: {known}") from None

    # ------------------------------------------------------------------ sessions

    def open_session(
        self,
        model: str,
        sample_rate: int,
        channels: int,
        params: Mapping[str, Any] | None = None,
        realtime: bool = True,
        name: str = "",
    ) -> SessionInfo:
        """Open a session on a loaded model.

        Args:
            model: a loaded model's name.
            sample_rate: the client's rate (resampled to the model's if different).
            channels: the client's channel count (see :mod:`server.engine.channels`).
            params: ``stems`` (the stems to compute, fixed for the session; default
                all), ``target``, ``mix``, ``gains`` (see :class:`SessionParams`).
            realtime: False for offline work (files): never refused, runs on spare capacity.
            name: a label for logs.
        Raises:
            UnknownModelError, InvalidAudioError (rate / channels), InvalidParameterError,
            UnknownTargetError, AdmissionError, NotReadyError.
        """
        if self._stopped:
            raise NotReadyError("engine is shut down")
        scheduler = self._scheduler(model)
        if not scheduler.model.ready:
            raise NotReadyError(f"model {model} is warming up")
        d = scheduler.model.description
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
            raise InvalidAudioError(f"sample rate must be an integer, got {sample_rate!r}")
        if not MIN_RATE <= sample_rate <= MAX_RATE:
            raise InvalidAudioError(f"unsupported sample rate {sample_rate} Hz (supported: {MIN_RATE}..{MAX_RATE})")
        values = dict(params or {})
        stems = self._stems(d, values.pop("stems", None))
        session_params = SessionParams().updated(stems, values)
        session_id = f"{model}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        session = Session(
            session_id=session_id,
            name=name or session_id,
            model_name=model,
            streamer=scheduler.streamer,
            sample_rate=int(sample_rate),
            channels=int(channels),
            stems=stems,
            params=session_params,
            realtime=realtime,
            buffer_samples=round(self.config.buffer_ms * sample_rate / 1000),
            # A file job's latency is never heard; soxr's lag is, and it costs a fraction of the sinc's CPU.
            resample_quality=self.config.resample_quality if realtime else FILE_RESAMPLE_QUALITY,
        )
        scheduler.add(session)  # admission
        with self._lock:
            self._sessions[session_id] = session
        info = session.info(stream_plan(scheduler.streamer, realtime))
        log.info(
            "session %s (%s) on %s: %d Hz x %d, stems %s, latency %s",
            session_id,
            session.name,
            model,
            sample_rate,
            channels,
            ",".join(stems),
            session.latency.to_dict(),
        )
        return info

    @staticmethod
    def _stems(d: ModelDescription, stems: Any) -> tuple[str, ...]:
        if stems is None or (isinstance(stems, Sequence) and not isinstance(stems, str) and len(stems) == 0):
            return d.sources
        if isinstance(stems, str):
            stems = [s for s in stems.split(",") if s]
        names = tuple(stems)
        unknown = [s for s in names if s not in d.sources]
        if unknown:
            raise UnknownTargetError(f"unknown stems {unknown}; the model outputs {', '.join(d.sources)}")
        if len(set(names)) != len(names):
            raise InvalidParameterError(f"stems listed twice: {names}")
        return names

    def _session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None or session.closed:
            raise UnknownSessionError(f"no open session {session_id!r}")
        return session

    def session_info(self, session_id: str) -> SessionInfo:
        session = self._session(session_id)
        return session.info(stream_plan(session.streamer, session.realtime))

    def session_latency(self, session_id: str) -> LatencyParts:
        return self._session(session_id).latency

    def session_sources(self, session_id: str) -> tuple[str, ...]:
        """The stems a session can target (its computed stems)."""
        return self._session(session_id).stems

    def submit(
        self, session_id: str, seq: int, block: np.ndarray, deadline: float | None = None
    ) -> Future[BlockResult]:
        """Queue one block; the future gives its :class:`BlockResult` (same ``n``, ``seq`` echoed).

        Args:
            block: ``(channels, n)`` samples, ``n >= 1`` (any n, changing freely).
                NaN/Inf samples are zeroed and counted before anything else sees them.
            deadline: ``time.monotonic()`` by which the result is due (default:
                now + ``deadline_ms`` for real-time sessions; offline: none).
        Raises:
            UnknownSessionError, InvalidAudioError, NotReadyError.
        """
        session = self._session(session_id)
        audio, invalid = session.check_block(block)
        now = time.monotonic()
        if deadline is None and session.realtime:
            deadline = now + self.config.deadline_ms / 1000
        future: Future[BlockResult] = Future()
        request = Request(
            "block",
            future,
            seq=seq,
            audio=audio,
            params=session.params,
            arrival=now,
            deadline=deadline if session.realtime else None,
            invalid=invalid,
        )
        self._scheduler(session.model_name).enqueue(session, request)
        session.counters.blocks_in += 1
        session.counters.invalid_samples += invalid
        session.last_activity = now
        with self._lock:
            self._totals["blocks_in"] += 1
            self._totals["invalid_samples"] += invalid
        return future

    def set_parameters(self, session_id: str, **params: Any) -> SessionParams:
        """Change ``target``, ``mix`` and / or ``gains`` (merged per stem) for blocks submitted from now on.

        The change is ramped over the next block; L never changes. ``stems`` is fixed at open.
        """
        session = self._session(session_id)
        if "stems" in params:
            raise InvalidParameterError("stems are fixed when a session opens (they decide the model work)")
        session.last_activity = time.monotonic()
        return session.set_params(params)

    def reset(self, session_id: str) -> Future[None]:
        """Transport stop / seek: after the blocks already submitted, forget all audio (L unchanged)."""
        session = self._session(session_id)
        future: Future[None] = Future()
        session.last_activity = time.monotonic()
        self._scheduler(session.model_name).enqueue(session, Request("reset", future))
        return future

    def flush(self, session_id: str, seq: int = -1) -> Future[BlockResult]:
        """Drain the tail: a result of exactly L samples (the estimates of the last L
        input samples, the stream being followed by silence), then reset."""
        session = self._session(session_id)
        now = time.monotonic()
        future: Future[BlockResult] = Future()
        silence = np.zeros((session.channels, session.latency.total), np.float32)
        scheduler = self._scheduler(session.model_name)
        session.last_activity = now
        scheduler.enqueue(session, Request("flush", future, seq=seq, audio=silence, params=session.params, arrival=now))
        scheduler.enqueue(session, Request("reset", Future()))
        return future

    def close(self, session_id: str) -> bool:
        """Close after the blocks already submitted are answered. False if it was not open."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None or session.closed:
            return False
        scheduler = self._scheduler(session.model_name)
        scheduler.release(session)
        try:
            scheduler.enqueue(session, Request("close", Future()))
        except NotReadyError:
            session.closed = True
        return True

    def _forget(self, session: Session, reason: str) -> None:
        with self._lock:
            if self._sessions.get(session.id) is session:
                del self._sessions[session.id]
            self._closed_counts[reason] = self._closed_counts.get(reason, 0) + 1
            self._totals["invalid_outputs"] += session.counters.invalid_outputs
            self._totals["underrun_samples"] += session.counters.underrun_samples

    # ------------------------------------------------------------------ files

    def file_stems(
        self,
        model: str,
        stems: Sequence[str] | None,
        sample_rate: int,
        channels: int,
        options: Mapping[str, Any] | None = None,
    ) -> tuple[str, ...]:
        """The stems a file job with these arguments returns, in order; raises what
        :meth:`separate_file` would (unknown model, rate, channels, stems, options) before any
        audio is read."""
        info, names, _ = self._open_file_job(model, stems, sample_rate, channels, options)
        self.close(info.id)
        return names

    def _open_file_job(
        self,
        model: str,
        stems: Sequence[str] | None,
        sample_rate: int,
        channels: int,
        options: Mapping[str, Any] | None,
    ) -> tuple[SessionInfo, tuple[str, ...], Any]:
        """``(offline session, the job's stem names, the model's FileOptions or None)``.

        Stems an option adds (``residual``) are not the model's: the session computes
        the model's own and the whole-signal plan appends the rest."""
        loaded = self._scheduler(model).model
        chosen = whole.file_options(loaded, options)
        extra = whole.file_sources(loaded, chosen)[len(loaded.description.sources) :]
        own = [s for s in stems or () if s not in extra]
        if stems and len(set(stems)) != len(stems):
            raise InvalidParameterError(f"stems listed twice: {tuple(stems)}")
        info = self.open_session(model, sample_rate, channels, {"stems": own} if own else None, realtime=False)
        return info, (tuple(stems) if stems else info.stems + extra), chosen

    def separate_file(
        self,
        model: str,
        wav: np.ndarray,
        sample_rate: int,
        stems: Sequence[str] | None = None,
        progress_cb: Callable[[int, int], None] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Separate a whole signal at low priority, yielding ``(start, (S, C, n) stems)`` chunks.

        Chunks are aligned with the input (the latency is removed) and together
        exactly as long. This is the one path of file jobs (``Separate``,
        ``stemserve separate``, the embedded server); the plan is chosen here:

        1. a model with a whole-signal file method (:mod:`server.engine.whole`)
           separates the whole signal its own way;
        2. otherwise the job streams through an offline session, whose stream follows
           the model's file plan (:func:`default_file_plan`: the throughput plan of
           :func:`models.apply.file_plan` for spectrogram models, ``file_plan="live"``
           for the real-time plan; longer steps for cached causal models). At most two
           blocks are in flight, so memory stays bounded by ``file_chunk_s``.

        Args:
            wav: ``(C, T)`` float samples at ``sample_rate``.
            stems: stems to return (default all), in this order.
            progress_cb: called as ``progress_cb(samples_done, total)``.
            options: whole-file options of a model with a whole-signal method, by the name of its
                ``FileOptions`` field (``shifts``, ``split``, ``overlap``, ``segment``; ``niter``,
                ``residual``: :func:`whole.file_options`); unset ones keep the model's defaults.
                Any option for another model is an InvalidParameterError.
        """
        audio = np.asarray(wav, dtype=np.float32)
        if audio.ndim != 2:
            raise InvalidAudioError(f"expected (channels, samples), got shape {audio.shape}")
        total = audio.shape[1]
        info, names, chosen = self._open_file_job(model, stems, sample_rate, audio.shape[0], options)
        chunk = max(1, int(self.config.file_chunk_s * sample_rate))
        loaded = self._scheduler(model).model
        if chosen is not None and not whole.applies(loaded, total, sample_rate):
            self.close(info.id)
            raise InvalidAudioError(f"{total} samples: too short for model {model}'s whole-file options")
        if whole.applies(loaded, total, sample_rate):  # the model's own file semantics (server/engine/whole.py)
            try:
                sources = whole.file_sources(loaded, chosen)
                out = whole.separate_whole(
                    loaded, audio, sample_rate, [sources.index(s) for s in names], progress_cb, chosen
                )
            finally:
                self.close(info.id)
            for start in range(0, total, chunk):
                yield start, out[..., start : start + chunk]
            return
        trim = LatencyTrim(info.latency.total)
        done = 0
        try:
            in_flight: deque[Future[BlockResult]] = deque()
            position = seq = 0
            while position < total or in_flight:
                while position < total and len(in_flight) < 2:
                    in_flight.append(self.submit(info.id, seq, audio[:, position : position + chunk]))
                    position += chunk
                    seq += 1
                piece = trim(in_flight.popleft().result().stems)
                if piece.shape[-1]:
                    yield done, piece
                    done += piece.shape[-1]
                if progress_cb is not None:
                    progress_cb(done, total)
            piece = trim(self.flush(info.id).result().stems)[..., : total - done]
            if piece.shape[-1]:
                yield done, piece
                done += piece.shape[-1]
            if progress_cb is not None:
                progress_cb(done, total)
        finally:
            self.close(info.id)

    # ------------------------------------------------------------------ stats & shutdown

    def stats(self) -> dict[str, Any]:
        """Counters for health pages and metrics (plain JSON-able values)."""
        with self._lock:
            sessions = list(self._sessions.values())
            closed = dict(self._closed_counts)
            totals: dict[str, int] = dict(self._totals)
        for s in sessions:  # still open: not yet folded into the totals
            totals["invalid_outputs"] += s.counters.invalid_outputs
            totals["underrun_samples"] += s.counters.underrun_samples
        totals["blocks_out"] = self._block_stats.blocks
        totals["blocks_late"] = self._block_stats.late
        out: dict[str, Any] = {
            "ready": self.ready,
            "sessions": len(sessions),
            "realtime_sessions": sum(1 for s in sessions if s.realtime),
            "sessions_closed": closed,
            **totals,
            "device": str(self._pool.device),
            "device_memory_bytes": self._pool.memory_bytes(),
            "models": {name: s.stats() for name, s in list(self._schedulers.items())},
        }
        out.update(self._block_stats.snapshot())
        return out

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Refuse new work, answer what is queued, stop the workers."""
        with self._lock:
            self._stopped = True
            schedulers = list(self._schedulers.values())
        for scheduler in schedulers:
            scheduler.stop(timeout)
