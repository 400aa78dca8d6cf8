"""The gRPC servicer: decode, call the engine, encode. No audio logic lives here.

Model work never runs on the event loop: :meth:`Engine.submit` only validates,
copies and enqueues, and its :class:`concurrent.futures.Future` is awaited
with ``asyncio.wrap_future``. A ``Stream`` reads requests in one task and
answers in the call's own coroutine, so a client may keep many blocks in
flight; answers come back in request order.

Errors become status codes at this edge only (``errors.status_name``):

=====================================================  ==================
unknown model, unknown session                         NOT_FOUND
bad PCM, wrong channel count, unsupported sample rate,  INVALID_ARGUMENT
unknown target / stem, parameter out of range,
a message out of protocol order
message larger than the limit (gRPC itself)            RESOURCE_EXHAUSTED
real-time capacity full (admission)                    RESOURCE_EXHAUSTED
warming up or shutting down                            UNAVAILABLE
missing / wrong bearer token (server.auth)             UNAUTHENTICATED
a model failure (that session only)                    INTERNAL
=====================================================  ==================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import grpc
import numpy as np

from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from stemserve.server import pcm
from stemserve.server.engine import errors
from stemserve.server.engine.engine import Engine, ModelInfo
from stemserve.server.engine.session import BlockResult, LatencyParts

log = logging.getLogger(__name__)

# Answers a Stream may have outstanding before its reader stops taking requests
# (back-pressure on a client that sends faster than the model runs).
STREAM_WINDOW = 64
# Largest Separate answer: gRPC clients' default receive limit is 4 MiB (grpc-js, grpc-java,
# Python, Go); 1 MiB leaves room under any of them whatever the client sends.
REPLY_LIMIT_BYTES = 1024 * 1024
# Room for a StemChunk's fields and each stem's name and length prefixes (tens of bytes in practice).
REPLY_OVERHEAD_BYTES = 4096

# (session id, event, values): "opened" {latency}, "status" {code, message}, "closed" {}
Listener = Callable[[str, str, Mapping[str, Any]], None]


def latency_message(latency: LatencyParts) -> pb.Latency:
    return pb.Latency(
        model=latency.model,
        buffering=latency.buffering,
        resampler=latency.resampler,
        total=latency.total,
        sample_rate=latency.sample_rate,
    )


def model_message(info: ModelInfo) -> pb.ModelInfo:
    d = info.description
    return pb.ModelInfo(
        name=info.name,
        sources=list(d.sources),
        conditioned=d.conditioned,
        sample_rate=d.sample_rate,
        channels=d.audio_channels,
        domain=d.domain,
        causal=d.causal,
        latency=latency_message(info.latency),
        description_json=json.dumps({**d.to_dict(), "plan": info.plan, "device": info.device}, default=str),
    )


def parameters_dict(message: pb.Parameters) -> dict[str, Any]:
    """Only the fields the client set (proto3 ``optional`` presence); an empty target means "all stems"."""
    out: dict[str, Any] = {}
    if message.HasField("target"):
        out["target"] = message.target or None
    if message.HasField("mix"):
        out["mix"] = message.mix
    if message.gains:
        out["gains"] = dict(message.gains)
    return out


def status_code(err: BaseException) -> grpc.StatusCode:
    if isinstance(err, pcm.PcmError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return getattr(grpc.StatusCode, errors.status_name(err))


async def abort_for(context: grpc.aio.ServicerContext, err: BaseException) -> NoReturn:
    code = status_code(err)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error: %s", err, exc_info=err)
    await context.abort(code, str(err))
    raise AssertionError("unreachable")  # context.abort raises


def status_response(code: int, message: str = "", seq: int = 0, count: int = 0) -> pb.StreamResponse:
    return pb.StreamResponse(status=pb.SessionStatus(code=code, message=message, seq=seq, count=count))  # type: ignore[arg-type]


@dataclass
class _Pending:
    """One answer a Stream owes, in request order."""

    kind: str  # "block" | "flush" | "reset" | "message" | "error"
    future: Future[Any] | None = None
    seq: int = 0
    position: int = 0
    message: pb.StreamResponse | None = None
    error: BaseException | None = None


class SeparationServicer(pb_grpc.SeparationServicer):
    """Adapter from the ``stemserve.v1.Separation`` service to :class:`Engine`.

    Args:
        engine: the engine every call goes to.
        extra_stats: transport counters (OSC...) merged into GetStats' ``extra_json``.
        max_message_bytes: the server's send limit; Separate splits stem chunks under it.
    """

    def __init__(
        self,
        engine: Engine,
        extra_stats: Callable[[], Mapping[str, Any]] | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.engine = engine
        self._extra_stats = extra_stats
        self._max_message_bytes = max_message_bytes
        self._listeners: list[Listener] = []
        # session id -> the outbox of its Stream call (event loop only)
        self._outboxes: dict[str, asyncio.Queue[_Pending | None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def request_model(self, session_id: str, model: str) -> bool:
        """Ask the client of ``session_id``'s Stream to move to ``model`` (a MODEL_REQUESTED status).

        Event loop only (OSC runs there). False when the session has no Stream call here.
        """
        outbox = self._outboxes.get(session_id)
        if outbox is None:
            return False
        message = _Pending("message", message=status_response(pb.SessionStatus.MODEL_REQUESTED, model))
        try:
            outbox.put_nowait(message)
        except asyncio.QueueFull:  # the stream is busy: queue behind its blocks
            task = asyncio.get_running_loop().create_task(outbox.put(message))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return True

    def add_listener(self, listener: Listener) -> None:
        """Called on the event loop for session events (OSC notifications use it)."""
        self._listeners.append(listener)

    def _notify(self, session_id: str, event: str, **values: Any) -> None:
        for listener in self._listeners:
            try:
                listener(session_id, event, values)
            except Exception:  # a notification must never break a stream
                log.exception("session listener failed")

    async def _require_ready(self, context: grpc.aio.ServicerContext) -> None:
        if not self.engine.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is warming up or shutting down")

    # ------------------------------------------------------------------ unary calls

    async def ListModels(  # noqa: N802 (gRPC method names)
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_message(m) for m in self.engine.models()])

    async def SetParameters(  # noqa: N802 (gRPC method names)
        self, request: pb.SetParametersRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetParametersResponse:
        try:
            self.engine.set_parameters(request.session_id, **parameters_dict(request.parameters))
        except errors.EngineError as err:
            await abort_for(context, err)
        self._notify(request.session_id, "status", code="PARAMETERS_APPLIED", message="SetParameters")
        return pb.SetParametersResponse()

    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.GetStatsResponse:  # noqa: N802 (gRPC method names)
        stats = self.engine.stats()
        models = [
            pb.ModelStats(
                name=name,
                windows=int(m.get("windows", m.get("items", 0))),
                batches=int(m.get("batches", 0)),
                batch_sizes={int(k): int(v) for k, v in m.get("batch_sizes", {}).items()},
            )
            for name, m in stats.get("models", {}).items()
        ]
        block_ms = stats.get("block_ms", {})
        file_ms = stats.get("block_ms_file", {})
        extra = dict(stats)
        if self._extra_stats is not None:
            extra.update(self._extra_stats())
        return pb.GetStatsResponse(
            sessions=int(stats.get("sessions", 0)),
            blocks_in=int(stats.get("blocks_in", 0)),
            blocks_out=int(stats.get("blocks_out", 0)),
            blocks_late=int(stats.get("blocks_late", 0)),
            invalid_samples=int(stats.get("invalid_samples", 0)),
            models=models,
            block_ms_p50=float(block_ms.get("p50", 0.0)),
            block_ms_p99=float(block_ms.get("p99", 0.0)),
            block_ms_max=float(block_ms.get("max", 0.0)),
            file_block_ms_p50=float(file_ms.get("p50", 0.0)),
            file_block_ms_p99=float(file_ms.get("p99", 0.0)),
            file_block_ms_max=float(file_ms.get("max", 0.0)),
            device_memory_bytes=int(stats.get("device_memory_bytes", 0)),
            extra_json=json.dumps(extra, default=str),
        )

    # ------------------------------------------------------------------ Stream

    async def Stream(  # noqa: N802 (gRPC method names)
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        await self._require_ready(context)
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("kind") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a Stream must be `open`")
        assert first is not None
        open_ = first.open
        params = parameters_dict(open_.parameters)
        if open_.stems:
            params["stems"] = list(open_.stems)
        try:
            info = self.engine.open_session(
                open_.model,
                sample_rate=open_.sample_rate,
                channels=open_.channels,
                params=params,
                realtime=True,
                name=open_.client_name or context.peer(),
            )
        except errors.EngineError as err:
            await abort_for(context, err)
        session_id = info.id
        outbox: asyncio.Queue[_Pending | None] = asyncio.Queue(STREAM_WINDOW)
        reader = asyncio.create_task(self._read_stream(requests, session_id, open_.channels, outbox))
        self._outboxes[session_id] = outbox
        self._notify(session_id, "opened", latency=info.latency.total)
        try:
            yield pb.StreamResponse(
                opened=pb.SessionOpened(
                    session_id=session_id,
                    latency=latency_message(info.latency),
                    model=model_message(self.engine.model_info(open_.model)),
                    sources=list(info.stems),
                )
            )
            late = False
            while (item := await outbox.get()) is not None:
                if item.kind == "error":
                    assert item.error is not None
                    await abort_for(context, item.error)
                if item.kind == "message":
                    assert item.message is not None
                    yield item.message
                    continue
                assert item.future is not None
                try:
                    result = await asyncio.wrap_future(item.future)
                except errors.EngineError as err:
                    await abort_for(context, err)
                if item.kind == "reset":
                    yield status_response(pb.SessionStatus.RESET_DONE, "model state cleared")
                    continue
                if result.invalid_samples:
                    text = f"{result.invalid_samples} NaN/Inf samples replaced by zeros"
                    yield status_response(pb.SessionStatus.INVALID_SAMPLES, text, item.seq, result.invalid_samples)
                    self._notify(session_id, "status", code="INVALID_SAMPLES", message=text)
                if result.late and not late:
                    text = f"block {item.seq} took {result.processing_ms:.1f} ms: the server is behind real time"
                    yield status_response(pb.SessionStatus.OVERLOADED, text, item.seq)
                    self._notify(session_id, "status", code="OVERLOADED", message=text)
                late = result.late
                yield pb.StreamResponse(block=stem_block(item.seq, item.position, result, open_.return_stems))
                if item.kind == "flush":
                    yield status_response(pb.SessionStatus.FLUSHED, "tail drained, model state cleared", item.seq)
        finally:
            # Normal end, error, or a client that went away (this coroutine is then
            # cancelled): the session is freed either way.
            reader.cancel()
            self._outboxes.pop(session_id, None)
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self.engine.close(session_id)
            self._notify(session_id, "closed")
            log.info("session %s closed (%s)", session_id, "cancelled" if context.cancelled() else "ended")

    async def _read_stream(
        self,
        requests: AsyncIterator[pb.StreamRequest],
        session_id: str,
        channels: int,
        outbox: asyncio.Queue[_Pending | None],
    ) -> None:
        """Submit every request in order; queue what the call owes for each. Ends with None."""
        next_seq = next_position = 0
        try:
            async for request in requests:
                kind = request.WhichOneof("kind")
                if kind == "block":
                    block = request.block
                    audio = pcm.decode(block.pcm, channels, block.frames or None)
                    if audio.shape[1] == 0:
                        raise pcm.PcmError("an audio block needs at least one frame")
                    future = self.engine.submit(session_id, block.seq, audio)
                    await outbox.put(_Pending("block", future, block.seq, block.position))
                    next_seq, next_position = block.seq + 1, block.position + audio.shape[1]
                elif kind == "parameters":
                    self.engine.set_parameters(session_id, **parameters_dict(request.parameters))
                    # Blocks submitted from here on use them: the change lands at this block boundary.
                    message = status_response(pb.SessionStatus.PARAMETERS_APPLIED, "", next_seq)
                    await outbox.put(_Pending("message", message=message))
                elif kind == "control" and request.control.kind == pb.Control.RESET:
                    await outbox.put(_Pending("reset", self.engine.reset(session_id)))
                elif kind == "control" and request.control.kind == pb.Control.FLUSH:
                    future = self.engine.flush(session_id, next_seq)
                    await outbox.put(_Pending("flush", future, next_seq, next_position))
                    next_seq += 1
                elif kind == "control":
                    raise errors.InvalidParameterError(f"unknown control kind {request.control.kind}")
                else:
                    raise errors.InvalidParameterError(f"unexpected `{kind}` message after `open`")
        except (errors.EngineError, pcm.PcmError) as err:
            await outbox.put(_Pending("error", error=err))
            return
        await outbox.put(None)

    # ------------------------------------------------------------------ Separate

    async def Separate(  # noqa: N802 (gRPC method names)
        self, request_iterator: AsyncIterator[pb.SeparateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SeparateResponse]:
        """Whole-file separation: decode the audio, run :meth:`Engine.separate_file`, encode its chunks.

        The file path is the engine's (its throughput plan, or the model's own whole-signal
        method); this method only collects the client's PCM (held whole: about 10 MB per
        minute of 44.1 kHz stereo) and answers in StemChunks of at most ``REPLY_LIMIT_BYTES``
        each, whatever chunking the client sent (see docs/server.md, "Reply sizes").
        """
        await self._require_ready(context)
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("kind") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of Separate must be `start`")
        assert first is not None
        start = first.start
        try:  # what can be checked before the audio arrives
            options = start_options(start)
            names = list(
                self.engine.file_stems(start.model, list(start.stems), start.sample_rate, start.channels, options)
            )
        except errors.EngineError as err:
            await abort_for(context, err)
        max_frames = reply_frames(min(self._max_message_bytes, REPLY_LIMIT_BYTES), start.channels, len(names))
        yield pb.SeparateResponse(
            started=pb.SeparateStarted(stems=names, sample_rate=start.sample_rate, channels=start.channels)
        )
        pieces: list[np.ndarray] = []
        async for request in requests:
            try:
                if request.WhichOneof("kind") != "pcm":
                    raise errors.InvalidParameterError("expected audio (`pcm`) after `start`")
                pieces.append(pcm.decode(request.pcm, start.channels))
            except (errors.EngineError, pcm.PcmError) as err:
                await abort_for(context, err)
        audio = np.concatenate(pieces, axis=1) if pieces else np.zeros((start.channels, 0), np.float32)
        total = audio.shape[1]
        done = 0
        try:
            async for item in file_chunks(
                self.engine, start.model, audio, start.sample_rate, list(start.stems) or None, options
            ):
                if isinstance(item, int):  # a whole-signal job's progress before its first chunk
                    yield pb.SeparateResponse(progress=pb.Progress(frames_done=item, total_frames=start.total_frames))
                    continue
                position, stems = item
                for message in chunk_messages(position, stems, names, max_frames):
                    yield message
                done = position + stems.shape[-1]
                yield pb.SeparateResponse(progress=pb.Progress(frames_done=done, total_frames=start.total_frames))
        except errors.EngineError as err:
            await abort_for(context, err)
        yield pb.SeparateResponse(progress=pb.Progress(frames_done=done, total_frames=start.total_frames or total))


def start_options(start: pb.SeparateStart) -> dict[str, Any]:
    """The whole-file options a SeparateStart sets, by :meth:`Engine.separate_file`'s names
    (``segment_seconds`` -> ``segment``; 0 seconds means unset, as documented in the proto)."""
    options: dict[str, Any] = {}
    for field in ("shifts", "split", "overlap", "segment_seconds", "niter", "residual"):
        if start.HasField(field):
            options[field.removesuffix("_seconds")] = getattr(start, field)
    if options.get("segment") == 0:
        del options["segment"]
    return options


async def file_chunks(
    engine: Engine,
    model: str,
    audio: np.ndarray,
    sample_rate: int,
    stems: list[str] | None,
    options: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[int, np.ndarray] | int]:
    """:meth:`Engine.separate_file`'s ``(start, (S, C, n))`` chunks, each computed off the event loop,
    and between them, while a chunk is computed, the samples done so far (an ``int``) whenever the
    job reports progress: a whole-signal job (Demucs, HTDemucs) computes the whole file before its
    first chunk, and reports each model pass.

    If the caller stops early (the client cancelled), the file job is closed as soon as the
    chunk being computed is done (a generator cannot be closed while it runs).
    """
    if audio.shape[1] == 0:
        engine.file_stems(model, stems or [], sample_rate, audio.shape[0], options)  # a non-empty file's errors
        return
    loop = asyncio.get_running_loop()
    reports: asyncio.Queue[int] = asyncio.Queue()

    def on_progress(done: int, total: int) -> None:  # the executor's thread
        with contextlib.suppress(RuntimeError):  # the loop closed (server shut down): nobody to tell
            loop.call_soon_threadsafe(reports.put_nowait, done)

    # a generator (it closes its session when closed)
    jobs = cast(
        Generator[tuple[int, np.ndarray], None, None],
        engine.separate_file(model, audio, sample_rate, stems, progress_cb=on_progress, options=options),
    )
    running: asyncio.Future[tuple[int, np.ndarray] | None] | None = None
    report: asyncio.Future[int] | None = None
    reported = 0
    try:
        while True:
            running = loop.run_in_executor(None, next, jobs, None)
            while not running.done():
                report = asyncio.ensure_future(reports.get())
                waiting: list[asyncio.Future[Any]] = [running, report]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not report.done():
                    report.cancel()
                    continue
                if report.result() > reported:
                    reported = report.result()
                    yield reported
            item = running.result()
            running = None
            if item is None:
                return
            yield item
            reported = max(reported, item[0] + item[1].shape[-1])
    finally:
        if report is not None and not report.done():
            report.cancel()
        if running is not None and not running.done():
            running.add_done_callback(lambda _: jobs.close())
        else:
            jobs.close()


def reply_frames(limit_bytes: int, channels: int, stems: int) -> int:
    """Frames per StemChunk so that the message (``stems`` x ``channels`` float32 PCM plus its
    framing, at most ``REPLY_OVERHEAD_BYTES``) stays within ``limit_bytes``."""
    return max(1, (limit_bytes - REPLY_OVERHEAD_BYTES) // (4 * max(1, channels) * max(1, stems)))


def stem_block(seq: int, position: int, result: BlockResult, return_stems: bool) -> pb.StemBlock:
    stems = []
    if return_stems:
        stems = [pb.Stem(name=n, pcm=pcm.encode(s)) for n, s in zip(result.stem_names, result.stems, strict=True)]
    block = pb.StemBlock(
        seq=seq,
        position=position,
        frames=result.output.shape[1],
        pcm=pcm.encode(result.output),
        stems=stems,
        late=result.late,
    )
    if result.heads is not None:  # a model with heads (server/engine/heads.py)
        block.activity.extend(result.heads.activity)
        block.lead_voicing = result.heads.voicing
        block.lead_f0_hz = result.heads.f0_hz
    return block


def chunk_messages(position: int, stems: np.ndarray, names: list[str], max_frames: int) -> list[pb.SeparateResponse]:
    """``(S, C, n)`` stems at input frame ``position`` -> StemChunk answers of at most ``max_frames``."""
    out = []
    for start in range(0, stems.shape[-1], max_frames):
        piece = stems[..., start : start + max_frames]
        out.append(
            pb.SeparateResponse(
                chunk=pb.StemChunk(
                    position=position + start,
                    frames=piece.shape[-1],
                    stems=[pb.Stem(name=n, pcm=pcm.encode(s)) for n, s in zip(names, piece, strict=True)],
                )
            )
        )
    return out
