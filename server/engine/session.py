"""One track's streaming state, owned by the engine (never hidden on the shared model).

A :class:`Session` converts the client's audio to the model's rate and
channels, feeds the model family's :class:`~server.engine.work.Stream`, and
turns the finished estimates back into the client's rate and channels,
delayed by a latency ``L`` fixed when the session opens:

    output sample ``n`` = the model's estimate for input sample ``n - L``
    (silence for ``n < L``), N samples in -> N samples out, per stem.

``L`` is reported in parts (:class:`LatencyParts`, client samples):

* ``model`` — the plan's algorithmic latency (window, lookahead, STFT framing,
  causal step), converted to the client's rate;
* ``buffering`` — latency the server adds on purpose (``EngineConfig.buffer_ms``):
  a block's result then never waits for the model work its own input started;
* ``resampler`` — the resampler's worst availability lag in and out (0 at the model's rate).

The output is a FIFO pre-filled with ``L`` zeros; each block pops exactly its
own length. Parameters (target, mix, per-stem gains) are read when a block is
submitted and ramped linearly over that block from the previous block's
values, so a change lands at the next block boundary without zipper noise and
never moves ``L``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from stemserve.server.engine import channels as channel_rules
from stemserve.server.engine.errors import InvalidAudioError, InvalidParameterError, UnknownTargetError
from stemserve.server.engine.heads import BlockHeads
from stemserve.server.engine.resample import DEFAULT_QUALITY, StreamResampler
from stemserve.server.engine.work import ItemSpec, Streamer

MAX_GAIN = 16.0


@dataclass(frozen=True)
class LatencyParts:
    """A session's fixed latency, in samples at ``sample_rate`` (the client's rate)."""

    model: int
    buffering: int
    resampler: int
    sample_rate: int

    @property
    def total(self) -> int:
        return self.model + self.buffering + self.resampler

    @property
    def seconds(self) -> float:
        return self.total / self.sample_rate

    def to_dict(self) -> dict[str, int]:
        return {
            "model": self.model,
            "buffering": self.buffering,
            "resampler": self.resampler,
            "total": self.total,
            "sample_rate": self.sample_rate,
        }


class LatencyTrim:
    """Lines a session's output up with its input by dropping its first ``latency`` frames.

    A session's output lags its input by its latency L, so the output frames
    before L precede the input's first frame. Feed every output block through
    one trim, in order; what comes out starts at input frame 0. The last L
    input frames come out of the session's flush.
    """

    def __init__(self, latency: int) -> None:
        self.pending = latency  # output frames still to drop

    def __call__(self, stems: np.ndarray) -> np.ndarray:
        """``(..., n)`` output block -> its frames at or after input frame 0 (``(..., n - dropped)``)."""
        drop = min(self.pending, stems.shape[-1])
        self.pending -= drop
        return stems[..., drop:]


@dataclass(frozen=True)
class SessionParams:
    """What a block's output is made of.

    Attributes:
        target: the stem to output, or None for the sum of all the session's stems.
        mix: 0 = dry (the input, delayed by L) ... 1 = wet (the separated output).
        gains: linear gain per stem name (missing names: 1.0).
    """

    target: str | None = None
    mix: float = 1.0
    gains: Mapping[str, float] = field(default_factory=dict)

    def updated(self, stems: Sequence[str], changes: Mapping[str, Any]) -> SessionParams:
        """A validated copy with ``changes`` (``target``, ``mix``, ``gains``) applied; gains merge."""
        unknown = set(changes) - {"target", "mix", "gains"}
        if unknown:
            raise InvalidParameterError(f"unknown parameters {sorted(unknown)} (target, mix, gains)")
        values: dict[str, Any] = {}
        if "target" in changes:
            target = changes["target"]
            if target in (None, ""):
                values["target"] = None
            elif not isinstance(target, str):
                raise InvalidParameterError(f"target must be a stem name, got {target!r}")
            elif target not in stems:
                raise UnknownTargetError(f"unknown target {target!r}; this session's stems: {', '.join(stems)}")
            else:
                values["target"] = target
        if "mix" in changes:
            values["mix"] = _number(changes["mix"], "mix", 0.0, 1.0)
        if "gains" in changes:
            gains = changes["gains"]
            if not isinstance(gains, Mapping):
                raise InvalidParameterError(f"gains must map stem names to numbers, got {gains!r}")
            merged = dict(self.gains)
            for name, value in gains.items():
                if name not in stems:
                    raise UnknownTargetError(
                        f"unknown stem {name!r} in gains; this session's stems: {', '.join(stems)}"
                    )
                merged[name] = _number(value, f"gain of {name}", 0.0, MAX_GAIN)
            values["gains"] = merged
        return dataclasses.replace(self, **values)

    def coefficients(self, stems: Sequence[str]) -> tuple[np.ndarray, float]:
        """``(per-stem weights (S,), dry weight)`` of the output mix."""
        wet = np.array([self.gains.get(s, 1.0) if self.target in (None, s) else 0.0 for s in stems], dtype=np.float32)
        return wet * np.float32(self.mix), 1.0 - self.mix


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and low <= v <= high):
        raise InvalidParameterError(f"{name} must be in [{low:g}, {high:g}], got {v}")
    return v


@dataclass(frozen=True)
class SessionInfo:
    """What a client learns when its session opens.

    Attributes:
        id: the session id every later call names.
        model: the model's name.
        sample_rate / channels: the client's.
        sources: every source the model can output.
        stems: the stems this session computes (``BlockResult.stems`` order).
        latency: ``L`` and its parts, in client samples.
        realtime: False for offline (file) sessions, which fill spare capacity.
        plan: the model's streaming plan, as a plain dict.
    """

    id: str
    name: str
    model: str
    sample_rate: int
    channels: int
    sources: tuple[str, ...]
    stems: tuple[str, ...]
    latency: LatencyParts
    realtime: bool
    plan: dict[str, Any]


@dataclass(frozen=True)
class BlockResult:
    """One block's output, ``n`` samples per channel like its input.

    Attributes:
        session_id / seq: echoed from the submit (``seq`` -1 for a flush).
        position: index of the block's first sample in the session's output
            stream (counted from open or the last reset).
        output: ``(channels, n)`` float32, the mix per the session's parameters.
        stems: ``(S, channels, n)`` float32 raw stems, in ``stem_names`` order.
        stem_names: the session's stems.
        late: True when the result was ready after the block's deadline.
        invalid_samples: NaN/Inf input samples of this block that were zeroed.
        processing_ms: from submit to result.
        heads: a model with heads (live sessions): its activity, voicing and f0 over the
            frames of the input samples this block's output estimates (the same latency
            alignment as the audio; :mod:`server.engine.heads`). None for other models, and
            for output wholly before input sample 0.
    """

    session_id: str
    seq: int
    position: int
    output: np.ndarray
    stems: np.ndarray
    stem_names: tuple[str, ...]
    late: bool
    invalid_samples: int
    processing_ms: float
    heads: BlockHeads | None = None

    @property
    def status(self) -> Literal["ok", "late"]:
        return "late" if self.late else "ok"


@dataclass
class SessionCounters:
    blocks_in: int = 0
    blocks_out: int = 0
    blocks_late: int = 0
    invalid_samples: int = 0  # NaN/Inf input samples zeroed
    invalid_outputs: int = 0  # NaN/Inf model output values zeroed
    underrun_samples: int = 0  # output samples not ready in time (should stay 0)
    items: int = 0


RequestKind = Literal["block", "flush", "reset", "close"]


@dataclass(eq=False)
class Request:
    """A block or control for one session, in submission order."""

    kind: RequestKind
    future: Future[Any]
    seq: int = -1
    audio: np.ndarray | None = None  # (client channels, n) float32, finite
    params: SessionParams | None = None
    arrival: float = 0.0
    deadline: float | None = None  # monotonic seconds; None: never late (offline)
    invalid: int = 0
    items_needed: int = 0  # items the session had made once this block was in


class SampleFifo:
    """Samples along the last axis; :meth:`pop` always returns exactly ``n``.

    On underrun the missing samples are zeros and as many samples are dropped
    when they arrive, so every later sample keeps its position.
    """

    def __init__(self, lead: tuple[int, ...], prefill: int) -> None:
        self._lead = lead
        self._chunks: deque[np.ndarray] = deque()
        self._size = 0
        self._debt = 0
        if prefill:
            self.push(np.zeros((*lead, prefill), np.float32))

    def __len__(self) -> int:
        return self._size

    def push(self, x: np.ndarray) -> None:
        if self._debt:
            drop = min(self._debt, x.shape[-1])
            x = x[..., drop:]
            self._debt -= drop
        if x.shape[-1]:
            self._chunks.append(x)
            self._size += x.shape[-1]

    def pop(self, n: int) -> tuple[np.ndarray, int]:
        """``((*lead, n) samples, how many of them were missing and zero-filled)``."""
        parts = []
        need = n
        while need and self._chunks:
            head = self._chunks[0]
            if head.shape[-1] <= need:
                parts.append(self._chunks.popleft())
                need -= head.shape[-1]
            else:
                parts.append(head[..., :need])
                self._chunks[0] = head[..., need:]
                need = 0
        self._size -= n - need
        if need:
            parts.append(np.zeros((*self._lead, need), np.float32))
            self._debt += need
        out = np.concatenate(parts, axis=-1) if len(parts) != 1 else parts[0]
        return np.ascontiguousarray(out, dtype=np.float32), need


class Session:
    """Per-track state. Caller threads only touch :meth:`check_block` and the params;
    everything else runs on the model's worker thread."""

    def __init__(
        self,
        *,
        session_id: str,
        name: str,
        model_name: str,
        streamer: Streamer,
        sample_rate: int,
        channels: int,
        stems: tuple[str, ...],
        params: SessionParams,
        realtime: bool,
        buffer_samples: int = 0,
        resample_quality: str = DEFAULT_QUALITY,
    ) -> None:
        d = streamer.description
        channel_rules.check(channels, d.audio_channels)
        self.id = session_id
        self.name = name
        self.model_name = model_name
        self.streamer = streamer
        self.description = d
        self.sample_rate = sample_rate
        self.channels = channels
        self.stems = stems
        self.realtime = realtime
        self.params = params
        self.lock = threading.Lock()
        self.counters = SessionCounters()
        self.last_activity = time.monotonic()
        # worker-side state
        self.requests: deque[Request] = deque()
        self.pending: deque[Request] = deque()
        self.epoch = 0
        self.items_made = 0
        self.items_done = 0
        self.closed = False
        self.released = False  # closing: its real-time share is free (set under the scheduler's lock)

        stem_index = [d.sources.index(s) for s in stems]
        self.stream = streamer.new_stream(stem_index, realtime)
        self._in: StreamResampler | None = None
        self._out: StreamResampler | None = None
        resampler = 0
        model_part = streamer.stream_latency(realtime)
        if sample_rate != d.sample_rate:
            self._in = StreamResampler(sample_rate, d.sample_rate, d.audio_channels, resample_quality)
            self._out = StreamResampler(d.sample_rate, sample_rate, len(stems) * channels, resample_quality)
            ratio = sample_rate / d.sample_rate
            model_part = math.ceil(model_part * ratio)
            # in: the resampler's lag at the model's rate, scaled; out: at the client's rate.
            resampler = math.ceil(self._in.max_lag * ratio + self._out.max_lag)
        self.latency = LatencyParts(model_part, buffer_samples, resampler, sample_rate)
        self._coefficients = params.coefficients(stems)
        self._start_stream()

    # ------------------------------------------------------------------ caller side

    def check_block(self, block: Any) -> tuple[np.ndarray, int]:
        """Validate a client block; return a float32 copy with NaN/Inf zeroed, and their count."""
        audio = np.asarray(block)
        if audio.ndim != 2 or audio.shape[0] != self.channels or audio.shape[1] < 1:
            raise InvalidAudioError(f"expected a block of shape ({self.channels}, n >= 1), got {audio.shape}")
        if not (np.issubdtype(audio.dtype, np.floating) or np.issubdtype(audio.dtype, np.integer)):
            raise InvalidAudioError(f"expected float samples, got dtype {audio.dtype}")
        audio = np.array(audio, dtype=np.float32, copy=True)
        bad = ~np.isfinite(audio)
        invalid = int(bad.sum())
        if invalid:
            audio[bad] = 0.0  # before anything reaches the model's state
        return audio, invalid

    def set_params(self, changes: Mapping[str, Any]) -> SessionParams:
        with self.lock:
            self.params = self.params.updated(self.stems, changes)
            return self.params

    def info(self, plan: dict[str, Any]) -> SessionInfo:
        return SessionInfo(
            id=self.id,
            name=self.name,
            model=self.model_name,
            sample_rate=self.sample_rate,
            channels=self.channels,
            sources=self.description.sources,
            stems=self.stems,
            latency=self.latency,
            realtime=self.realtime,
            plan=plan,
        )

    # ------------------------------------------------------------------ worker side

    def _start_stream(self) -> None:
        total = self.latency.total
        self._output = SampleFifo((len(self.stems), self.channels), total)
        self._dry = SampleFifo((self.channels,), total)
        self.position = 0

    def ingest(self, audio: np.ndarray) -> list[ItemSpec]:
        """Take a checked client block; return the model items it completes."""
        self._dry.push(audio)
        x = channel_rules.to_model(audio, self.description.audio_channels)
        if self._in is not None:
            x = self._in.process(x)
        if x.shape[1] == 0:
            return []
        items = self.stream.push(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        self.items_made += len(items)
        self.counters.items += len(items)
        return items

    def accept(self, key: Any, output: torch.Tensor) -> None:
        """An item's model output (in item order)."""
        finite = torch.isfinite(output)
        if not bool(finite.all()):
            self.counters.invalid_outputs += int((~finite).sum())
            output = torch.where(finite, output, torch.zeros_like(output))
        self.stream.accept(key, output)
        self.items_done += 1

    def collect(self) -> None:
        """Move estimates that became final into the output FIFO (client rate and channels)."""
        y = self.stream.pull()
        if y.shape[-1] == 0:
            return
        out = channel_rules.to_client(y.numpy(), self.channels)  # (S, C, m)
        if self._out is not None:
            s, c, m = out.shape
            out = self._out.process(out.reshape(s * c, m)).reshape(s, c, -1)
        self._output.push(out)

    def ready(self, request: Request) -> bool:
        """True when ``request``'s output can be emitted now."""
        assert request.audio is not None
        if len(self._output) >= request.audio.shape[1]:
            return True
        # Every item this block started is done: the latency bound says the FIFO
        # must hold enough; if not, emit anyway (zero-filled, counted) rather than stall.
        return self.items_done >= request.items_needed

    def emit(self, request: Request, now: float) -> BlockResult:
        """Pop the block's output and mix it with the parameters it was submitted with."""
        assert request.audio is not None and request.params is not None
        n = request.audio.shape[1]
        stems, missing = self._output.pop(n)
        dry, _ = self._dry.pop(n)
        self.counters.underrun_samples += missing
        wet, dry_weight = request.params.coefficients(self.stems)
        old_wet, old_dry = self._coefficients
        if n and (not np.array_equal(wet, old_wet) or dry_weight != old_dry):
            ramp = np.arange(1, n + 1, dtype=np.float32) / np.float32(n)  # reaches the new value at the block's end
            wet_t = old_wet[:, None] + (wet - old_wet)[:, None] * ramp  # (S, n)
            dry_t = np.float32(old_dry) + np.float32(dry_weight - old_dry) * ramp  # (n,)
            output = dry * dry_t + np.einsum("sn,scn->cn", wet_t, stems)
        else:
            output = np.float32(dry_weight) * dry + np.einsum("s,scn->cn", wet, stems)
        self._coefficients = (wet, dry_weight)
        late = request.deadline is not None and now > request.deadline
        result = BlockResult(
            session_id=self.id,
            seq=request.seq,
            position=self.position,
            output=np.ascontiguousarray(output, dtype=np.float32),
            stems=stems,
            stem_names=self.stems,
            late=late,
            invalid_samples=request.invalid,
            processing_ms=(now - request.arrival) * 1e3,
            heads=self._block_heads(n),
        )
        self.position += n
        self.counters.blocks_out += 1
        self.counters.blocks_late += int(late)
        return result

    def _block_heads(self, n: int) -> BlockHeads | None:
        """Heads of the input samples the next ``n`` output samples estimate (``position - L`` on)."""
        heads = self.stream.heads
        if heads is None:
            return None
        first = self.position - self.latency.total  # client rate; negative: before the input
        end = first + n
        model_rate = self.description.sample_rate
        if self.sample_rate != model_rate:  # to the model's rate, covering the block
            first = first * model_rate // self.sample_rate
            end = -(-end * model_rate // self.sample_rate)
        return heads.block(first, end)

    def reset(self) -> None:
        """Transport stop / seek: forget all audio, keep parameters and ``L``."""
        self.stream.reset()
        if self._in is not None and self._out is not None:
            self._in.reset()
            self._out.reset()
        self.epoch += 1  # items still queued from before are dropped
        self.items_made = self.items_done = 0
        self._start_stream()
