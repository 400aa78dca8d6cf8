"""The network thread: one gRPC ``Stream`` session per track, kept alive across server restarts.

What goes on the wire
---------------------
* ``open`` with the model, the host sample rate and channel count, and the full
  current parameters; the token as ``authorization: Bearer`` metadata (plain
  metadata: call credentials are dropped on insecure channels).
* After ``opened``: audio blocks with consecutive ``seq`` from 0 and
  ``position`` = session input frame index. **Network blocks are not
  re-chunked to a fixed size**: each is whatever host input has accumulated
  since the last send, capped at ``max_network_frames``. The sender wakes as
  soon as the audio callback writes, so in steady state a network block is
  exactly one host block (no added latency); after a stall it coalesces the
  backlog into fewer, larger messages.
* Parameter changes, merged, just before the next audio block (they apply at
  that block's boundary), and ``Control RESET`` exactly at the host frame where
  the host reset the transport.

What comes back
---------------
``StemBlock`` frames ``[p, p + n)`` of the session's output, where session
output frame ``p`` is the estimate for session input frame ``p - L``. The
session started at host frame ``origin``, so they belong at host output frames
``origin + p + (total - L)`` (see :mod:`plugin_bridge.timeline`); the receiver
writes them there in the output ring. Frames already played are dropped and
counted as late. A block of a model with heads also carries which stems play
and the lead's pitch; the receiver posts them on the bridge's
:class:`~plugin_bridge.activity.ActivityBoard`.

Failure
-------
Any RPC error (server killed, restarted, unreachable, stalled for
``stall_timeout_s`` with blocks outstanding) ends the session: frames in
flight become gaps (the audio callback outputs dry), input is discarded while
disconnected, and the thread re-opens a session with the same parameters
after an exponential backoff (``backoff_initial_s`` doubling to
``backoff_max_s``). Audio never waits for any of it.

A refusal is not a network failure: the server answered (``RESOURCE_EXHAUSTED``
when its real-time capacity is full, ``NOT_FOUND``, ``UNAUTHENTICATED`` ...).
Its message is logged at WARNING and kept as the link's :attr:`StreamLink.status`
(STATS, OSC ``/stats``). The first ``refusal_retries`` refused opens are retried
after ``backoff_initial_s`` each (behind a load balancer another server may take
the next one); later ones back off as network failures do, still logged.

Behind
------
Every ``behind_window_s`` the sender compares the frames the host played with
those that came back dry (underruns) and the server's OVERLOADED statuses. When
over ``behind_fraction`` of the window's frames were dry, or the server said it
was overloaded, the status becomes ``behind`` and a WARNING names the dry
fraction and what would help (one stem with ``--stems``, or a causal model).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from stemserve.plugin_bridge import client
from stemserve.plugin_bridge.activity import ActivityBoard
from stemserve.plugin_bridge.parameters import Parameters
from stemserve.plugin_bridge.ring import InputRing, OutputRing
from stemserve.plugin_bridge.timeline import NEVER, Counters, Timeline
from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# gRPC's own reconnect backoff grows to 120 s by default; a DAW track wants its
# stems back within a second or two of the server returning.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class LinkSettings:
    address: str
    sample_rate: int
    channels: int
    token: str | None = None
    tls_root: bytes | None = None
    client_name: str = "stemserve-bridge"
    max_network_frames: int = 4096
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    stall_timeout_s: float = 5.0
    # Fallback wake-up of the sender when no write notification came.
    poll_s: float = 0.01
    # The stems the server computes (empty: all); fixed for every session this link opens.
    stems: tuple[str, ...] = ()
    # Refused opens retried at backoff_initial_s before the backoff grows.
    refusal_retries: int = 3
    # The "behind" check: window, and the dry fraction that counts as behind.
    behind_window_s: float = 2.0
    behind_fraction: float = 0.5


# Answers from a server that was reached and said no: not "cannot reach".
REFUSALS = frozenset(
    {
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


@dataclass
class _Session:
    """One Stream call's state, shared by the sender (grpc's thread) and the receiver."""

    model: str
    # Set for a model-change trial: the target to open it with (the old one may not exist there).
    trial_target: str | None = None
    trial: bool = False
    opened: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    call: grpc.Future | None = None
    offset: int = 0  # total - L: host output = origin + session output position + offset
    latency: int = 0  # the session's L: its first L output frames estimate input from before it began
    origin: int | None = None  # host frame of the session's input frame 0
    refused: bool = False
    sent: int = 0
    received: int = 0
    # When the oldest unanswered block was sent (or the last reply came after it).
    waiting_since: float = 0.0
    switched: bool = False
    sources: tuple[str, ...] = ()
    model_sources: tuple[str, ...] = ()  # the model's, the order of StemBlock.activity


class StreamLink:
    """Owns the network thread; talks to the audio callback only through the rings and the timeline."""

    def __init__(
        self,
        settings: LinkSettings,
        model: str,
        params: Parameters,
        in_ring: InputRing,
        out_ring: OutputRing,
        timeline: Timeline,
        counters: Counters,
        data_ready: threading.Event,
        arrived: threading.Event,
        activity: ActivityBoard | None = None,
    ) -> None:
        self.settings = settings
        self.activity = activity if activity is not None else ActivityBoard()
        self.params = params
        self.in_ring = in_ring
        self.out_ring = out_ring
        self.timeline = timeline
        self.counters = counters
        self.data_ready = data_ready
        self.arrived = arrived
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
        )
        self._model = model
        self._pending_model: str | None = None
        self._pending_target: str | None = None
        self._param_changes: queue.SimpleQueue[pb.Parameters] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: _Session | None = None
        self._resets_sent = 0
        self._errors_logged = 0
        self.connected = threading.Event()
        self.session_id = ""
        # What the track's user should know: "connecting", "streaming", "refused", "behind", "lost".
        self.status = "connecting"
        self.status_message = ""
        self._refusals = 0  # consecutive refused opens
        self._window_start = 0.0
        self._window_frames = 0
        self._window_dry = 0
        self._window_overloaded = 0
        params.add_listener(self._param_changes.put)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("link already started")
        self._thread = threading.Thread(target=self._run, name="stemserve-bridge-net", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.data_ready.set()
        session = self._session
        if session is not None and session.call is not None:
            session.call.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def model(self) -> str:
        return self._model

    def request_model(self, name: str, target: str | None) -> None:
        """Switch to ``name`` (with ``target``) at the next block boundary; the bridge has checked its latency.

        The bridge has already opened a trial session beside the running one
        (:meth:`probe`). Should the switch still fail (the server changed
        meanwhile), the new session is refused and the previous model re-opened.
        """
        self._pending_target = target
        self._pending_model = name
        self.data_ready.set()

    def probe(self, model: str, target: str | None, timeout: float = 10.0) -> str | None:
        """Open a trial session on ``model`` beside the running one, then close it: None if it fits, else why not.

        The running session is not touched: a refusal (a full server, a latency that
        does not fit, stems the model lacks) costs the track nothing.
        """
        parameters = self.params.to_proto()
        parameters.ClearField("target")
        if target is not None:
            parameters.target = target
        request = pb.StreamRequest(open=self._open_message(model, parameters))
        read = threading.Event()

        def requests() -> Iterator[pb.StreamRequest]:
            yield request
            read.wait(timeout)  # keep the call open until `opened` has been read

        with self._channel() as channel:
            call = pb_grpc.SeparationStub(channel).Stream(requests(), metadata=self.metadata, timeout=timeout)
            try:
                for reply in call:
                    if reply.WhichOneof("kind") == "opened":
                        return self.timeline.misfit(int(reply.opened.latency.total))
                return "the server ended the trial session before opening it"
            except grpc.RpcError as err:
                code = _code(err)
                details = err.details() if isinstance(err, grpc.Call) else str(err)
                return f"{getattr(code, 'name', code)}: {details}"
            finally:
                read.set()
                call.cancel()

    def _open_message(self, model: str, parameters: pb.Parameters) -> pb.OpenSession:
        return pb.OpenSession(
            model=model,
            sample_rate=self.settings.sample_rate,
            channels=self.settings.channels,
            parameters=parameters,
            client_name=self.settings.client_name,
            stems=list(self.settings.stems),
        )

    def list_models(self, timeout: float = 2.0) -> list[pb.ModelInfo]:
        """The server's models (a short-lived channel; control thread)."""
        with self._channel() as channel:
            stub = pb_grpc.SeparationStub(channel)
            reply = stub.ListModels(pb.ListModelsRequest(), metadata=self.metadata, timeout=timeout)
        return list(reply.models)

    def _channel(self) -> grpc.Channel:
        options = client.channel_options() + RECONNECT_OPTIONS
        if self.settings.tls_root is not None:
            credentials = grpc.ssl_channel_credentials(self.settings.tls_root)
            return grpc.secure_channel(self.settings.address, credentials, options=options)
        return grpc.insecure_channel(self.settings.address, options=options)

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        backoff = self.settings.backoff_initial_s
        failures = 0
        while not self._stop.is_set():
            pending = self._pending_model
            trial = pending is not None
            model = pending if pending is not None else self._model
            session = _Session(model=model, trial=trial, trial_target=self._pending_target)
            self._session = session
            try:
                self._serve(session)
            except grpc.RpcError as err:
                if not self._stop.is_set():
                    self._log_failure(err, failures, session)
                    refused = _code(err) in REFUSALS and not session.opened.is_set()
                    self._refusals = self._refusals + 1 if refused else 0
            except Exception:
                log.exception("bridge network thread: unexpected error; reconnecting")
            finally:
                self._end_session(session)
            if self._stop.is_set():
                break
            if trial and not (session.opened.is_set() and not session.refused):
                self._pending_model = None
                self.counters.model_refused += 1
                log.error(
                    "MODEL CHANGE REFUSED: %r did not open within the bridge's latency; staying with %r",
                    model,
                    self._model,
                )
                continue
            if session.switched:
                continue  # the trial session for the pending model opens now
            if session.opened.is_set() and not session.refused:
                failures = 0
                backoff = self.settings.backoff_initial_s
            failures += 1
            self.counters.connect_failures += 1
            if 0 < self._refusals <= self.settings.refusal_retries:
                # Short and flat: behind a load balancer the next open may land on a server with room.
                self._wait_discarding(self.settings.backoff_initial_s)
                continue
            self._wait_discarding(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2.0, self.settings.backoff_max_s)

    def _set_status(self, status: str, message: str) -> None:
        self.status = status
        self.status_message = message

    def _log_failure(self, err: grpc.RpcError, failures: int, session: _Session) -> None:
        code = _code(err)
        name = getattr(code, "name", str(code))
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        if code in REFUSALS and not session.opened.is_set():
            self.counters.refusals += 1
            self._set_status("refused", f"{name}: {details}")
            level = logging.WARNING if code == grpc.StatusCode.RESOURCE_EXHAUSTED else logging.ERROR
            log.log(
                level,
                "server %s refused the session (model %r) [%d in a row]: %s: %s",
                self.settings.address,
                session.model,
                self._refusals + 1,
                name,
                details,
            )
        elif session.opened.is_set():
            self._set_status("lost", f"{name}: {details}")
            log.warning("stream lost (%s: %s); outputting dry and reconnecting", name, details)
        elif failures == 0:
            self._set_status("connecting", f"cannot reach {self.settings.address}: {name}: {details}")
            log.warning("cannot reach %s (%s: %s); retrying with backoff", self.settings.address, name, details)
        else:
            log.debug("reconnect attempt failed: %s", details)

    def _end_session(self, session: _Session) -> None:
        session.done.set()
        # Frames in flight will never come: they are gaps (dry), not underruns.
        self.timeline.session_first_out = NEVER
        self.in_ring.discard()
        self.connected.clear()
        self._session = None

    def _wait_discarding(self, seconds: float) -> None:
        """Sleep for the backoff, dropping input meanwhile (no session to send it to)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.in_ring.discard()
            self._stop.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self.in_ring.discard()

    def _serve(self, session: _Session) -> None:
        """Run one Stream call to its end; raises grpc.RpcError on failure."""
        with self._channel() as channel:
            stub = pb_grpc.SeparationStub(channel)
            call = stub.Stream(self._requests(session), metadata=self.metadata)
            session.call = call
            channels = self.settings.channels
            for reply in call:
                session.waiting_since = time.monotonic()
                kind = reply.WhichOneof("kind")
                if kind == "block":
                    self._receive_block(session, reply.block, channels)
                elif kind == "opened":
                    if not self._opened(session, reply.opened):
                        call.cancel()
                        return
                elif kind == "status":
                    self._status(reply.status)
                if self._stop.is_set():
                    call.cancel()
                    return

    def _opened(self, session: _Session, opened: pb.SessionOpened) -> bool:
        lat = opened.latency
        offset = self.timeline.admit(lat.model, lat.buffering, lat.resampler, lat.total, self.counters)
        if offset is None:
            session.refused = True
            return False
        session.offset = offset
        session.latency = int(lat.total)
        session.sources = tuple(opened.sources)
        session.model_sources = tuple(opened.model.sources)
        if session.trial:
            # The switch is made: from now on reconnects re-open this model.
            self._model = session.model
            if self._pending_model == session.model:
                self._pending_model = None
            self.params.commit_model(session.model, session.trial_target)
            log.info("model changed to %r", session.model)
        self.params.set_sources(opened.sources)
        self.session_id = opened.session_id
        self._refusals = 0
        self._set_status("streaming", f"session {opened.session_id} on {session.model}")
        self.counters.sessions_opened += 1
        if self.counters.sessions_opened > 1:
            self.counters.reconnects += 1
        log.info(
            "session %s open: model %s, server latency %d, placed %d frames after its input",
            opened.session_id,
            session.model,
            lat.total,
            offset,
        )
        session.opened.set()  # the sender starts sending audio now
        return True

    def _receive_block(self, session: _Session, block: pb.StemBlock, channels: int) -> None:
        session.received += 1
        self.counters.blocks_received += 1
        if block.late:
            self.counters.server_late_blocks += 1
        if session.origin is None:
            return
        data = np.frombuffer(block.pcm, dtype="<f4").reshape(-1, channels).T
        position = block.position
        if block.activity:
            self.activity.publish(
                session.model_sources,
                block.activity,
                block.lead_voicing if block.HasField("lead_voicing") else None,
                block.lead_f0_hz if block.HasField("lead_f0_hz") else None,
                session.origin + position + session.offset,
            )
        head = min(data.shape[1], max(0, session.latency - position))
        if head == data.shape[1]:
            return
        late = self.out_ring.write(session.origin + position + head + session.offset, data[:, head:])
        if late:
            self.counters.late_blocks += 1
            self.counters.late_frames += late
        self.arrived.set()

    def _status(self, status: pb.SessionStatus) -> None:
        code = status.code
        if code == pb.SessionStatus.OVERLOADED:
            self.counters.overloaded += 1
            self._window_overloaded += 1
            if self.counters.overloaded == 1 or self.counters.overloaded % 100 == 0:
                log.warning("server overloaded (%d times): %s", self.counters.overloaded, status.message)
        elif code == pb.SessionStatus.INVALID_SAMPLES:
            self.counters.invalid_samples += status.count
        elif code == pb.SessionStatus.MODEL_REQUESTED:
            # A controller on the server's OSC port asked for another model: take the bridge's own
            # path (latency check, trial session) off this thread, which must keep reading replies.
            log.info("the server relays a request for model %r", status.message)
            threading.Thread(
                target=self.params.set_model, args=(status.message,), name="stemserve-bridge-model", daemon=True
            ).start()
        else:
            log.debug("session status %s %s", pb.SessionStatus.Code.Name(code), status.message)

    # -- the sender (runs on grpc's request-consuming thread) ---------------------------------
    def _requests(self, session: _Session) -> Iterator[pb.StreamRequest]:
        # Changes queued before this open are in the full state it carries.
        self._drain_param_changes()
        parameters = self.params.to_proto()
        if session.trial:
            parameters.ClearField("target")
            if session.trial_target is not None:
                parameters.target = session.trial_target
        yield pb.StreamRequest(open=self._open_message(session.model, parameters))
        while not session.opened.wait(0.05):
            if self._stop.is_set() or session.done.is_set():
                return
            self.in_ring.discard()
        # Input written before the session existed is not sent: the session starts now.
        origin = self.in_ring.discard()
        session.origin = origin
        # A reset requested before this session opened is moot: the session is fresh.
        self._resets_sent = self.timeline.reset_taken
        # Its first L output frames estimate input from before the session (never sent): gaps, not stems.
        self.timeline.session_first_out = origin + session.offset + session.latency
        self.connected.set()
        seq = 0
        max_frames = self.settings.max_network_frames
        while not (self._stop.is_set() or session.done.is_set()):
            if self._pending_model is not None and self._pending_model != session.model:
                session.switched = True
                return  # half-close: the server answers every block sent so far, then ends
            self._log_callback_errors()
            self._check_stall(session)
            self._check_behind(session)
            # Read write_pos before reset_taken: the callback bumps reset_taken
            # before writing post-reset input, so input seen here is never past
            # a reset we have not seen.
            write_pos = self.in_ring.write_pos
            limit = write_pos
            taken = self.timeline.reset_taken
            if taken != self._resets_sent:
                limit = max(self.in_ring.read_pos, min(write_pos, self.timeline.reset_pos))
            change = self._drain_param_changes()
            if change is not None:
                self.counters.params_sent += 1
                yield pb.StreamRequest(parameters=change)
            if limit > self.in_ring.read_pos:
                start = self.in_ring.read_pos
                audio, lost = self.in_ring.read(min(max_frames, limit - start))
                if lost:
                    self.counters.input_lost_frames += lost
                frames = audio.shape[1]
                if session.sent == session.received:
                    session.waiting_since = time.monotonic()
                session.sent += 1
                self.counters.blocks_sent += 1
                yield pb.StreamRequest(
                    block=pb.AudioBlock(seq=seq, position=start - origin, frames=frames, pcm=client.encode(audio))
                )
                seq += 1
                continue
            if taken != self._resets_sent:
                self._resets_sent = taken
                self.counters.resets_sent += 1
                yield pb.StreamRequest(control=pb.Control(kind=pb.Control.RESET))
                continue
            self.data_ready.wait(self.settings.poll_s)
            self.data_ready.clear()

    def _drain_param_changes(self) -> pb.Parameters | None:
        merged: pb.Parameters | None = None
        while True:
            try:
                change = self._param_changes.get_nowait()
            except queue.Empty:
                return merged
            if merged is None:
                merged = pb.Parameters()
            merged.MergeFrom(change)

    def _check_stall(self, session: _Session) -> None:
        """Cancel a call whose server stopped answering (a vanished host sends no RST)."""
        stalled = time.monotonic() - session.waiting_since > self.settings.stall_timeout_s
        if session.sent > session.received and session.call is not None and stalled:
            log.warning("no reply from the server for %.1f s; reconnecting", self.settings.stall_timeout_s)
            session.call.cancel()

    def _check_behind(self, session: _Session) -> None:
        """Once per window: warn when most played frames came back dry or the server said it is overloaded."""
        now = time.monotonic()
        if self._window_start == 0.0:
            self._window_start = now
            self._window_frames, self._window_dry = self.counters.frames, self.counters.underrun_frames
            return
        if now - self._window_start < self.settings.behind_window_s:
            return
        frames = self.counters.frames - self._window_frames
        dry = self.counters.underrun_frames - self._window_dry
        overloaded = self._window_overloaded
        elapsed = now - self._window_start
        self._window_start = now
        self._window_frames, self._window_dry = self.counters.frames, self.counters.underrun_frames
        self._window_overloaded = 0
        fraction = dry / frames if frames else 0.0
        if fraction > self.settings.behind_fraction or overloaded:
            self.counters.behind_windows += 1
            one = self.settings.stems[0] if len(self.settings.stems) == 1 else None
            advice = (
                "use a causal model (the causal Conv-TasNet) or a faster server"
                if one is not None
                else f"ask for one stem (--stems {session.sources[0] if session.sources else 'vocals'}) "
                "or use the causal Conv-TasNet"
            )
            message = f"server behind: {100 * fraction:.0f} % of frames dry, {overloaded} OVERLOADED in {elapsed:.1f} s"
            self._set_status("behind", message)
            log.warning("%s; %s", message, advice)
        elif self.status == "behind":
            self._set_status("streaming", f"caught up: {100 * fraction:.0f} % of frames dry")
            log.info("server caught up (%.0f %% of frames dry)", 100 * fraction)

    def _log_callback_errors(self) -> None:
        # The audio callback never logs (I/O and locks); it counts, and we report.
        errors = self.counters.callback_errors
        if errors != self._errors_logged:
            log.error(
                "audio callback failed %d time(s) (output silenced for those blocks)", errors - self._errors_logged
            )
            self._errors_logged = errors


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    return err.code() if isinstance(err, grpc.Call) else None
