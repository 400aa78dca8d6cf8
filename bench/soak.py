"""``stemserve bench soak``: sample accounting and bad input under load, in one run.

One server process (a passthrough model ``pass`` and a tiny four-stem U-Net
``unet``, gRPC and OSC on fixed loopback ports) and, against it:

1. **A clean run.** One bridge session on ``unet`` renders a noise clip in
   random blocks of 1..4096 frames through :meth:`Bridge.process` with nothing
   else going on: the reference output.
2. **Tracks.** K bridge sessions on ``pass`` stream random blocks of 1..4096
   frames until the end of the run. Each track's input is a code: every frame
   carries its track number and its frame index exactly (16 bits per channel
   of a float32), and the track's gain of 0.5 is exact in binary, so every
   output frame says which input frame it is the estimate of.
3. **Bad input.** While the tracks stream and the clean session renders the
   same clip again (same blocks, in real time), every malformed input of
   :func:`malformed_inputs` (gRPC, TCP and OSC) is sent, round after round; each
   must get its status every time, and the clean session's output must equal the
   clean run's bit for bit.
4. **Faults.** Bridge client processes are killed (SIGKILL) mid-stream and the
   server must free their sessions; the server is killed (SIGKILL) and, later,
   stopped (SIGTERM) and restarted on the same ports under the tracks, which
   must reconnect.

Accounting per track (host output frame ``n`` must be the estimate for host
input frame ``n - L``): a frame is *wet* when it is this track's frame
``n - L`` times the gain, a *gap* when it is silence (underrun policy
``silence``), and *misaligned* otherwise. An input frame is *duplicated* when
it comes out more than once, and *lost* when its slot holds something else and
it turns up nowhere, or when its slot is silence the bridge did not count (as a
gap, an underrun or a mute). Lost, duplicated and misaligned must all be 0.

``python -m stemserve.bench.soak serve ...`` and ``... client ...`` are the
server and the killable client processes the run starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from stemserve.bench.report import Options, figure, save_figure, table
from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ITEM = "soak"
TITLE = "Soak: sample accounting through concurrent bridges, killed clients and server restarts"
COLUMNS = ["track", "blocks", "frames", "wet", "gap", "lost", "duplicated", "misaligned"]
CASE_COLUMNS = ["transport", "input", "expected", "returned", "tries", "ok", "clean_identical"]

PASS_RATE = 44100  # the passthrough model's rate: tracks run at it, so nothing is resampled
PASS_CHANNELS = 2
GAIN = 0.5  # exact in binary: a wet frame is the code times 0.5, bit for bit
MAX_BLOCK = 4096
# A tiny mono 16 kHz four-stem U-Net (milliseconds per window on a small CPU).
UNET_CONFIG: dict[str, Any] = {
    "sample_rate": 16000,
    "audio_channels": 1,
    "n_fft": 64,
    "hop_length": 16,
    "bins": 32,
    "window_frames": 8,
    "channels": (4, 8),
}
UNET_RATE = 16000
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60.0


# ---------------------------------------------------------------------- the code signal
# Frame n of track s carries c = s * 2**28 + n: channel 0 its low 16 bits, channel 1
# its high 16, each as 0.5 + k / 2**17 (exact in float32, never 0, in [0.5, 1)).

CODE_BITS = 16
CODE_STEP = 2.0**-17
FRAME_BITS = 28  # 2**28 frames: 100 minutes per track at 44.1 kHz
MAX_TRACKS = 16
MAX_FRAMES = 1 << FRAME_BITS


def code_signal(track: int, start: int, frames: int) -> np.ndarray:
    """``(2, frames)`` float32: track ``track``'s input frames ``[start, start + frames)``."""
    if not 0 <= track < MAX_TRACKS or start + frames > MAX_FRAMES:
        raise ValueError(f"track {track} or frames up to {start + frames} out of the code's range")
    c = np.uint32(track << FRAME_BITS) + np.arange(start, start + frames, dtype=np.uint32)
    low, high = c & 0xFFFF, c >> CODE_BITS
    return (0.5 + np.stack([low, high]).astype(np.float64) * CODE_STEP).astype(np.float32)


def decode_wet(out: np.ndarray, gain: float = GAIN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(valid, track, frame)`` per frame of ``out (2, n)``: valid where ``out`` is exactly ``gain`` times a code."""
    k = (out.astype(np.float64) / gain - 0.5) / CODE_STEP
    whole = np.round(k)
    valid = np.all((whole == k) & (whole >= 0) & (whole < 1 << CODE_BITS), axis=0)
    whole = np.where(valid, whole, 0).astype(np.int64)
    c = whole[0] + (whole[1] << CODE_BITS)
    return valid, c >> FRAME_BITS, c & (MAX_FRAMES - 1)


class Ledger:
    """One track's host output, block by block, in constant memory (see the module docstring).

    Aligned frames (this track's frame ``slot - latency``) are kept as runs of
    input frame indices; anything else that is not silence is kept frame by frame
    (there should be none), so duplicates and losses can be told apart at the end.
    """

    def __init__(self, track: int, latency: int) -> None:
        self.track = track
        self.latency = latency
        self.frames = 0
        self.aligned = 0
        self.silent = 0
        self.runs: list[list[int]] = []  # [start, stop) of input frames delivered aligned
        self.wrong_slots: list[np.ndarray] = []  # input frame due at each slot holding a wrong frame
        self.wrong_frames: list[np.ndarray] = []  # this track's input frame found in such a slot
        self.foreign = 0  # frames of another track

    def add(self, out: np.ndarray) -> None:
        """The next ``out (2, n)`` host output frames."""
        n = out.shape[1]
        due = np.arange(self.frames, self.frames + n) - self.latency
        self.frames += n
        valid, tracks, frames = decode_wet(out)
        silent = np.all(out == 0.0, axis=0)
        aligned = valid & (tracks == self.track) & (frames == due)
        self.silent += int(np.count_nonzero(silent))
        self.aligned += int(np.count_nonzero(aligned))
        self._add_runs(due[aligned])
        wrong = ~aligned & ~silent
        if wrong.any():
            mine = wrong & valid & (tracks == self.track)
            self.foreign += int(np.count_nonzero(wrong & valid & (tracks != self.track)))
            self.wrong_slots.append(due[wrong & (due >= 0)])
            self.wrong_frames.append(frames[mine])

    def _add_runs(self, indices: np.ndarray) -> None:
        if not len(indices):
            return
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        for part in np.split(indices, breaks):
            start, stop = int(part[0]), int(part[-1]) + 1
            if self.runs and self.runs[-1][1] == start:
                self.runs[-1][1] = stop
            else:
                self.runs.append([start, stop])

    def _delivered(self, frames: np.ndarray) -> np.ndarray:
        starts = np.array([r[0] for r in self.runs], dtype=np.int64)
        stops = np.array([r[1] for r in self.runs], dtype=np.int64)
        i = np.searchsorted(starts, frames, side="right") - 1
        return (i >= 0) & (frames < stops[np.maximum(i, 0)]) if len(starts) else np.zeros(len(frames), bool)

    def result(self, counted_gaps: int) -> dict[str, int]:
        """Counts; ``counted_gaps`` is the bridge's own count of the frames it filled (gaps, underruns, mutes)."""
        empty = np.zeros(0, np.int64)
        slots = np.concatenate(self.wrong_slots) if self.wrong_slots else empty
        mine = np.concatenate(self.wrong_frames) if self.wrong_frames else empty
        duplicated = int(np.count_nonzero(self._delivered(mine))) + len(mine) - len(np.unique(mine))
        # A slot holding a wrong frame loses its own, unless that frame turned up elsewhere.
        missing = int(np.count_nonzero(~np.isin(slots, mine)))
        return {
            "frames": self.frames,
            "wet": self.aligned,
            "gap": self.silent,
            "counted_gap": counted_gaps,
            "lost": missing + max(0, self.silent - counted_gaps),
            "duplicated": duplicated,
            "misaligned": self.frames - self.aligned - self.silent,
            "foreign": self.foreign,
        }


# ---------------------------------------------------------------------- the server process


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SoakServer:
    """``python -m stemserve.bench.soak serve`` on fixed ports, so clients can outlive a restart."""

    def __init__(self, unet: Path, log_path: Path, threads: int = 1) -> None:
        self.port = free_port()
        self.osc_port = free_port(socket.SOCK_DGRAM)
        self.unet = unet
        self.log_path = log_path
        self.threads = threads
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        command = [sys.executable, "-m", "stemserve.bench.soak", "serve", "--port", str(self.port)]
        command += ["--osc-port", str(self.osc_port), "--unet", str(self.unet), "--threads", str(self.threads)]
        mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + TIMEOUT * 2
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[mark:].decode(errors="replace")
            if "stemserve ready" in text:
                return
            if self._proc.poll() is not None:
                raise RuntimeError(f"soak server exited with {self._proc.returncode}: {text[-2000:]}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"soak server not ready in {TIMEOUT * 2:.0f} s: see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: no drain, sockets reset."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(TIMEOUT)
            self._proc = None

    def terminate(self) -> int:
        """SIGTERM: the server drains and exits; returns its exit status."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(TIMEOUT)
            raise
        self._proc = None
        return code


def serve(argv: list[str]) -> int:
    """The server process: ``pass`` and ``unet`` on 127.0.0.1, gRPC and OSC, until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m stemserve.bench.soak serve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--osc-port", type=int, required=True)
    parser.add_argument("--unet", required=True, help="checkpoint of the tiny U-Net")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from stemserve.bench.passthrough import Passthrough
    from stemserve.server.app import App, ServerConfig
    from stemserve.server.engine.engine import Engine, EngineConfig

    torch.set_num_threads(args.threads)
    # Admission measures the machine's spare speed, which the soak's own clients take: off.
    engine = Engine(EngineConfig(device="cpu", realtime_capacity=float("inf")))
    engine.load_model("pass", model=Passthrough(), warm_up=False)
    engine.load_model("unet", args.unet, warm_up=False)
    config = ServerConfig(host="127.0.0.1", port=args.port, osc_port=args.osc_port, grace_seconds=0.5)
    asyncio.run(App(config, engine).run_until_signal())
    return 0


# ---------------------------------------------------------------------- bridge clients


def bridge_settings(address: str, model: str, rate: int, channels: int, **kw: Any) -> Any:
    from stemserve.plugin_bridge.bridge import BridgeSettings

    return BridgeSettings(
        address,
        model,
        rate,
        channels,
        underrun="silence",
        margin_samples=0,
        max_block=MAX_BLOCK,
        backoff_max_s=0.2,
        client_name=f"soak-{model}",
        **kw,
    )


@dataclass
class Track:
    """One bridge session on ``pass`` streaming its code in random blocks until told to stop."""

    number: int
    address: str
    seed: int
    ledger: Ledger | None = None
    blocks: int = 0
    smallest: int = MAX_BLOCK
    largest: int = 0
    frames: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    latency: int = -1
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._bridge: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"soak-track-{self.number}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT * 2)

    def _run(self) -> None:
        from stemserve.plugin_bridge.bridge import Bridge

        rng = np.random.default_rng(self.seed)
        # "mix" is the passthrough model's one stem (not the dry/wet parameter).
        bridge = Bridge(bridge_settings(self.address, "pass", PASS_RATE, PASS_CHANNELS, gains={"mix": GAIN}))
        self._bridge = bridge
        try:
            report = bridge.start(wait_s=TIMEOUT)
            if report is None:
                raise RuntimeError(f"track {self.number} did not connect")
            self.latency = report.total
            self.ledger = Ledger(self.number, report.total)
            while not self._stop.is_set() and self.frames + MAX_BLOCK < MAX_FRAMES:
                n = int(rng.integers(1, MAX_BLOCK + 1))
                self.ledger.add(bridge.process(code_signal(self.number, self.frames, n)))
                self.blocks += 1
                self.frames += n
                self.smallest, self.largest = min(self.smallest, n), max(self.largest, n)
                if not bridge.connected:
                    time.sleep(n / PASS_RATE)  # no server: a host keeps real time, not more
        except BaseException as err:  # reported by run()
            self.error = err
        finally:
            bridge.stop()
            self.stats = bridge.stats()

    def stats_now(self) -> dict[str, int]:
        """The bridge's counters now (they only grow; read from another thread)."""
        return dict(self._bridge.stats()) if self._bridge is not None else {}

    def result(self) -> dict[str, Any]:
        if self.ledger is None:
            raise RuntimeError(f"track {self.number} never connected")
        s = self.stats
        counted = s.get("gap_frames", 0) + s.get("underrun_frames", 0) + s.get("muted_frames", 0)
        row: dict[str, Any] = {"track": self.number, "blocks": self.blocks}
        row.update(self.ledger.result(counted))
        row["smallest_block"], row["largest_block"] = self.smallest, self.largest
        row["reconnects"] = s.get("reconnects", 0)
        row["latency"] = self.latency
        return row


def render(
    address: str, audio: np.ndarray, sizes: list[int], between: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, dict[str, int], int]:
    """A bridge session on ``unet`` renders ``audio (1, T)`` in blocks of ``sizes``: output, counters, latency.

    ``between(index, frames)`` is called after each block (the soak paces and holds the session with it).
    """
    from stemserve.plugin_bridge.bridge import Bridge

    # A slow answer under load is not what this session checks: only a dead server should end it.
    bridge = Bridge(bridge_settings(address, "unet", UNET_RATE, 1, stall_timeout_s=TIMEOUT))
    out = []
    try:
        report = bridge.start(wait_s=TIMEOUT)
        if report is None:
            raise RuntimeError("the clean session did not connect")
        start = 0
        for index, n in enumerate(sizes):
            out.append(bridge.process(audio[:, start : start + n]))
            start += n
            if between is not None:
                between(index, n)
    finally:
        bridge.stop()
    return np.concatenate(out, axis=1), bridge.stats(), report.total


def client(argv: list[str]) -> int:
    """A client process that streams noise to ``pass`` until it is killed; prints STREAMING once it does."""
    parser = argparse.ArgumentParser(prog="python -m stemserve.bench.soak client")
    parser.add_argument("--address", required=True)
    args = parser.parse_args(argv)
    from stemserve.plugin_bridge.bridge import Bridge

    rng = np.random.default_rng(os.getpid())
    bridge = Bridge(bridge_settings(args.address, "pass", PASS_RATE, PASS_CHANNELS))
    if bridge.start(wait_s=TIMEOUT) is None:
        return 1
    announced = False
    while True:
        n = int(rng.integers(1, MAX_BLOCK + 1))
        bridge.process((0.1 * rng.standard_normal((PASS_CHANNELS, n))).astype(np.float32))
        if not announced and bridge.stats()["blocks_received"]:
            print("STREAMING", flush=True)
            announced = True
        time.sleep(n / PASS_RATE)


def start_clients(address: str, count: int) -> list[subprocess.Popen[str]]:
    procs = []
    for _ in range(count):
        command = [sys.executable, "-m", "stemserve.bench.soak", "client", "--address", address]
        procs.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True))
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until it streams (or dies)
        if line.strip() != "STREAMING":
            for p in procs:
                p.kill()
                p.wait(TIMEOUT)
            raise RuntimeError(f"soak client {proc.pid} did not stream: {line!r}")
    return procs


# ---------------------------------------------------------------------- malformed input


@dataclass
class Target:
    """What a malformed-input case talks to: the server's gRPC stub and OSC port, and a live session."""

    address: str
    osc_port: int
    stub: pb_grpc.SeparationStub
    channel: grpc.Channel
    session: str  # a session open on ``unet`` (OSC cases address it)


@dataclass(frozen=True)
class Case:
    transport: str
    name: str
    expected: str
    send: Callable[[Target], str]


def _opening(model: str = "unet", rate: int = UNET_RATE, channels: int = 1, **kw: Any) -> Any:
    return pb.StreamRequest(open=pb.OpenSession(model=model, sample_rate=rate, channels=channels, **kw))


def _block(data: bytes, frames: int = 0) -> Any:
    return pb.StreamRequest(block=pb.AudioBlock(seq=0, position=0, frames=frames, pcm=data))


def _pcm(audio: np.ndarray) -> bytes:
    return np.ascontiguousarray(audio.T, dtype="<f4").tobytes()


def _noise(frames: int, channels: int = 1) -> np.ndarray:
    return (0.1 * np.random.default_rng(frames).standard_normal((channels, frames))).astype(np.float32)


def _stream(*requests: Any) -> Callable[[Target], str]:
    """Send ``requests`` on one Stream (then half-close); the call's status code, with any session statuses."""

    def send(target: Target) -> str:
        statuses = []
        try:
            for reply in target.stub.Stream(iter(requests), timeout=TIMEOUT):
                if reply.WhichOneof("kind") == "status":
                    name = pb.SessionStatus.Code.Name(reply.status.code)
                    statuses.append(f"{name} ({reply.status.count})" if reply.status.count else name)
        except grpc.RpcError as err:
            return " + ".join([*statuses, err.code().name])
        return " + ".join([*statuses, "OK"])

    return send


def _unary(method: str, request: Callable[[Target], Any]) -> Callable[[Target], str]:
    def send(target: Target) -> str:
        try:
            getattr(target.stub, method)(request(target), timeout=TIMEOUT)
        except grpc.RpcError as err:
            return str(err.code().name)
        return "OK"

    return send


def _separate(*requests: Any) -> Callable[[Target], str]:
    def send(target: Target) -> str:
        try:
            for _ in target.stub.Separate(iter(requests), timeout=TIMEOUT):
                pass
        except grpc.RpcError as err:
            return str(err.code().name)
        return "OK"

    return send


def _raw_unary(method: str, data: bytes) -> Callable[[Target], str]:
    """Bytes that are no protobuf message (or a method that does not exist), sent as a unary call."""

    def send(target: Target) -> str:
        call = target.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(data, timeout=TIMEOUT)
        except grpc.RpcError as err:
            return str(err.code().name)
        return "OK"

    return send


def _tcp_garbage(data: bytes) -> Callable[[Target], str]:
    """Bytes that are not HTTP/2 on the gRPC port: the server must close that connection, nothing more."""

    def send(target: Target) -> str:
        host, port = target.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            sock.sendall(data)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(4096):
                    received += chunk
        return "connection closed" + (" after a GOAWAY" if received[3:4] == b"\x07" else "")

    return send


def _osc_stats(target: Target) -> dict[str, int]:
    return dict(json.loads(target.stub.GetStats(pb.GetStatsRequest(), timeout=TIMEOUT).extra_json)["osc"])


def _osc(address: str, *args: Any) -> Callable[[Target], str]:
    """One OSC message to the server; its reply (``/stemserve/error <reason>`` for a refusal)."""

    def send(target: Target) -> str:
        from pythonosc.osc_message import OscMessage
        from pythonosc.osc_message_builder import OscMessageBuilder

        builder = OscMessageBuilder(address.format(session=target.session))
        for arg in args:
            builder.add_arg(arg)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendto(builder.build().dgram, ("127.0.0.1", target.osc_port))
            reply = OscMessage(sock.recv(65536))
        return " ".join([reply.address, *map(str, reply.params)]).replace(target.session, "<session>")

    return send


def _osc_raw(data: bytes) -> Callable[[Target], str]:
    """A datagram that is no OSC packet: no reply; the server must count it as malformed."""

    def send(target: Target) -> str:
        before = _osc_stats(target)["malformed"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(data, ("127.0.0.1", target.osc_port))
        deadline = time.monotonic() + TIMEOUT
        while (counted := _osc_stats(target)["malformed"] - before) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return f"counted malformed ({counted})"

    return send


def malformed_inputs() -> list[Case]:
    """Every malformed input the soak sends, with the status each must get."""
    nan = _noise(64)
    nan[0, [3, 10, 11]] = [np.nan, np.inf, -np.inf]
    limit = 16 * 1024 * 1024  # the server's default --max-message-mb
    refused = "/stemserve/error"
    return [
        Case("gRPC Stream", "no message at all (half-closed at once)", "INVALID_ARGUMENT", _stream()),
        Case("gRPC Stream", "audio before open", "INVALID_ARGUMENT", _stream(_block(_pcm(_noise(64))))),
        Case("gRPC Stream", "unknown model", "NOT_FOUND", _stream(_opening("kazoo-net"))),
        Case(
            "gRPC Stream",
            "unknown target at open",
            "INVALID_ARGUMENT",
            _stream(_opening(parameters=pb.Parameters(target="kazoo"))),
        ),
        Case("gRPC Stream", "unsupported sample rate (1000 Hz)", "INVALID_ARGUMENT", _stream(_opening(rate=1000))),
        Case("gRPC Stream", "3 channels at open", "INVALID_ARGUMENT", _stream(_opening(channels=3))),
        Case("gRPC Stream", "0 channels at open", "INVALID_ARGUMENT", _stream(_opening(channels=0))),
        Case(
            "gRPC Stream",
            "pcm not a whole number of frames (6 bytes)",
            "INVALID_ARGUMENT",
            _stream(_opening(), _block(b"\0" * 6)),
        ),
        Case(
            "gRPC Stream",
            "frames field disagrees with the pcm",
            "INVALID_ARGUMENT",
            _stream(_opening(), _block(_pcm(_noise(160)), frames=80)),
        ),
        Case("gRPC Stream", "empty block", "INVALID_ARGUMENT", _stream(_opening(), _block(b""))),
        Case(
            "gRPC Stream",
            "mix 1.5 mid-stream",
            "INVALID_ARGUMENT",
            _stream(_opening(), pb.StreamRequest(parameters=pb.Parameters(mix=1.5))),
        ),
        Case(
            "gRPC Stream",
            "gain for a stem the model lacks",
            "INVALID_ARGUMENT",
            _stream(_opening(), pb.StreamRequest(parameters=pb.Parameters(gains={"kazoo": 0.5}))),
        ),
        Case(
            "gRPC Stream",
            "NaN and ±Inf samples (3 in a block)",
            "INVALID_SAMPLES (3) + OK",
            _stream(_opening(), _block(_pcm(nan))),
        ),
        Case("gRPC Stream", "a second open on a live session", "INVALID_ARGUMENT", _stream(_opening(), _opening())),
        Case(
            "gRPC Stream",
            "unknown control kind (99)",
            "INVALID_ARGUMENT",
            _stream(_opening(), pb.StreamRequest(control=pb.Control(kind=99))),  # type: ignore[arg-type] # on purpose
        ),
        Case(
            "gRPC Stream",
            "block over the 16 MiB message limit",
            "RESOURCE_EXHAUSTED",
            _stream(_opening(), _block(b"\0" * (limit + 4096))),
        ),
        Case(
            "gRPC SetParameters",
            "unknown session",
            "NOT_FOUND",
            _unary("SetParameters", lambda t: pb.SetParametersRequest(session_id="no-such-session")),
        ),
        Case(
            "gRPC SetParameters",
            "mix -0.5 on a live session",
            "INVALID_ARGUMENT",
            _unary(
                "SetParameters",
                lambda t: pb.SetParametersRequest(session_id=t.session, parameters=pb.Parameters(mix=-0.5)),
            ),
        ),
        Case(
            "gRPC Separate",
            "audio before start",
            "INVALID_ARGUMENT",
            _separate(pb.SeparateRequest(pcm=_pcm(_noise(64)))),
        ),
        Case(
            "gRPC Separate",
            "unknown stem",
            "INVALID_ARGUMENT",
            _separate(
                pb.SeparateRequest(start=pb.SeparateStart(model="unet", sample_rate=UNET_RATE, channels=1, stems=["x"]))
            ),
        ),
        Case(  # grpcio answers a request it cannot parse before any servicer runs
            "gRPC",
            "bytes that are no protobuf message (SetParameters)",
            "UNKNOWN",
            _raw_unary("/stemserve.v1.Separation/SetParameters", b"\xff\xff\xff\xff"),
        ),
        Case("gRPC", "a method that does not exist", "UNIMPLEMENTED", _raw_unary("/stemserve.v1.Separation/Nope", b"")),
        Case("TCP", "HTTP/1.1 request on the gRPC port", "connection closed", _tcp_garbage(b"GET / HTTP/1.1\r\n\r\n")),
        Case("OSC", "unknown session", refused, _osc("/stemserve/no-such-session/mix", 0.5)),
        Case("OSC", "mix 1.5", refused, _osc("/stemserve/{session}/mix", 1.5)),
        Case("OSC", "mix as a string", refused, _osc("/stemserve/{session}/mix", "loud")),
        Case("OSC", "mix without a value", refused, _osc("/stemserve/{session}/mix")),
        Case("OSC", "unknown target", refused, _osc("/stemserve/{session}/target", "kazoo")),
        Case("OSC", "gain for an unknown stem", refused, _osc("/stemserve/{session}/gain/kazoo", 0.5)),
        Case("OSC", "unknown model", refused, _osc("/stemserve/{session}/model", "kazoo-net")),
        Case("OSC", "unknown parameter address", refused, _osc("/stemserve/{session}/tempo", 120.0)),
        Case("OSC", "another application's address", refused, _osc("/some/other/app", 1)),
        Case("OSC", "garbage bytes", "counted malformed (1)", _osc_raw(b"\x00\x01garbage")),
        Case("OSC", "empty datagram", "counted malformed (1)", _osc_raw(b"")),
        Case("OSC", "all 256 byte values", "counted malformed (1)", _osc_raw(bytes(range(256)))),
        Case("OSC", "truncated bundle", "counted malformed (1)", _osc_raw(b"#bundle\x00\xff")),
    ]


def run_cases(target: Target, cases: list[Case], until: threading.Event) -> list[dict[str, Any]]:
    """Send every case, round after round, until ``until`` is set (at least one round).

    A case is ok when every round returned what it expects; ``returned`` lists the distinct answers.
    """
    answers: list[list[str]] = [[] for _ in cases]
    while True:
        for case, seen in zip(cases, answers, strict=True):
            try:
                seen.append(case.send(target))
            except Exception as err:  # a case that breaks the client is a result, not a crash of the soak
                seen.append(f"client error: {type(err).__name__}: {err}")
        if until.is_set():
            break
    return [
        {
            "transport": case.transport,
            "input": case.name,
            "expected": case.expected,
            "returned": " | ".join(dict.fromkeys(seen)),
            "tries": len(seen),
            "ok": all(answer.startswith(case.expected) for answer in seen),
        }
        for case, seen in zip(cases, answers, strict=True)
    ]


@contextlib.contextmanager
def live_session(stub: pb_grpc.SeparationStub) -> Iterator[str]:
    """A Stream session on ``unet`` held open (no audio): the session OSC cases address."""
    import queue

    outbox: queue.Queue[Any] = queue.Queue()
    outbox.put(_opening())
    call = stub.Stream(iter(outbox.get, None))
    try:
        reply = next(call)
        yield reply.opened.session_id
    finally:
        outbox.put(None)
        for _ in call:
            pass


# ---------------------------------------------------------------------- the run


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> float:
    """Seconds until ``condition()`` held; RuntimeError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def reconnected(tracks: list[Track], before: list[int]) -> bool:
    """Every track has reconnected since its count was ``before`` (or has failed: reported later)."""
    return all(t.stats_now().get("reconnects", 0) > n or t.error for t, n in zip(tracks, before, strict=True))


def offline_difference(checkpoint: Path, clip: np.ndarray, out: np.ndarray, latency: int) -> float:
    """Largest ``|out[n] - offline[n - latency]|``: the stream against the model's offline pass on ``clip``."""
    import torch

    from stemserve.models.apply import separate_signal
    from stemserve.models.checkpoint import load_model

    model = load_model(checkpoint).eval()
    with torch.inference_mode():
        offline = separate_signal(model, torch.from_numpy(clip)).numpy().sum(axis=0)  # all stems, gain 1
    return float(np.abs(out[:, latency:] - offline[:, : out.shape[1] - latency]).max())


def write_unet(folder: Path) -> Path:
    import torch

    from stemserve.models import registry
    from stemserve.models.checkpoint import save_checkpoint

    torch.manual_seed(1)
    return Path(save_checkpoint(registry.build("multi_unet", UNET_CONFIG), folder / "unet.pt"))


def random_sizes(total: int, rng: np.random.Generator) -> list[int]:
    sizes, done = [], 0
    while done < total:
        n = min(int(rng.integers(1, MAX_BLOCK + 1)), total - done)
        sizes.append(n)
        done += n
    return sizes


def run(options: Options) -> dict[str, Any]:

    tiny = options.tiny
    k = int(options.extra.get("tracks", 3 if tiny else 8))
    killed_clients = int(options.extra.get("clients", 2 if tiny else 6))
    cycles = int(options.extra.get("cycles", 1 if tiny else 3))
    hold = 1.5 if tiny else float(options.duration or 30.0)
    clip_s = float(options.extra.get("clip_s", 4.0 if tiny else 20.0))
    # One forward-pass thread, as `stemserve serve` has on a 2-core machine. With two, a window's
    # estimate can differ in the last bit with the size of the batch it rides in (torch splits
    # the work by shape), which a bit-for-bit comparison would report; see docs/reliability.md.
    server_threads = int(options.extra.get("server_threads", 1))
    rng = np.random.default_rng(21)
    clip = (0.3 * rng.standard_normal((1, int(clip_s * UNET_RATE)))).astype(np.float32)
    sizes = random_sizes(clip.shape[1], rng)
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="stemserve-soak-") as tmp:
        unet = write_unet(Path(tmp))
        server = SoakServer(unet, Path(tmp) / "server.log", threads=server_threads)
        server.start()
        tracks = [Track(i, server.address, seed=100 + i) for i in range(k)]
        clients: list[subprocess.Popen[str]] = []
        channel = grpc.insecure_channel(server.address)
        try:
            stub = pb_grpc.SeparationStub(channel)

            def sessions() -> int:
                return int(stub.GetStats(pb.GetStatsRequest(), timeout=TIMEOUT).sessions)

            def sessions_are(count: int) -> bool:
                return sessions() == count

            # 1. The clean run: the unet session alone.
            reference, reference_stats, latency = render(server.address, clip, sizes)
            offline = offline_difference(unet, clip, reference, latency)

            # 2. Tracks stream; bad input arrives while the clean session renders the clip again.
            for track in tracks:
                track.start()
            wait_until(lambda: all(t.blocks > 10 or t.error for t in tracks), "every track to stream")
            # The clean session renders in real time; the cases repeat until it is about to end.
            nearly_done, cases_done = threading.Event(), threading.Event()
            during = [0]

            def pace(index: int, n: int) -> None:
                if not cases_done.is_set():
                    during[0] += 1
                time.sleep(n / UNET_RATE)
                if index == len(sizes) - 2:
                    nearly_done.set()
                    cases_done.wait(TIMEOUT * 5)  # the session stays open until the last round was sent

            box: dict[str, Any] = {}

            def clean() -> None:
                try:
                    box["out"], box["stats"], _ = render(server.address, clip, sizes, between=pace)
                except BaseException as err:  # reported below
                    box["error"] = err
                finally:
                    nearly_done.set()

            clean_thread = threading.Thread(target=clean, name="soak-clean")
            clean_thread.start()
            wait_until(lambda: during[0] > 0 or "error" in box, "the clean session to stream")
            with live_session(stub) as session:
                target = Target(server.address, server.osc_port, stub, channel, session)
                case_rows = run_cases(target, malformed_inputs(), until=nearly_done)
            cases_done.set()
            clean_thread.join(TIMEOUT * 5)
            if "error" in box:
                raise RuntimeError(f"the clean session failed: {box['error']}") from box["error"]
            identical = bool(np.array_equal(box["out"], reference))
            differs = np.flatnonzero(np.any(box["out"] != reference, axis=0))
            for row in case_rows:
                row["clean_identical"] = identical

            # 3. Faults under the tracks: killed clients, a killed server, a stopped server.
            faults: dict[str, Any] = {"cycles": cycles, "clients_killed": 0, "freed_s": [], "reconnect_s": {}}
            for _ in range(cycles):
                before = sessions()
                clients = start_clients(server.address, killed_clients)
                faults.setdefault("sessions_with_clients", []).append(sessions())
                for proc in clients:
                    proc.kill()
                    proc.wait(TIMEOUT)
                faults["clients_killed"] += len(clients)
                faults["freed_s"].append(wait_until(partial(sessions_are, before), "killed clients' sessions to close"))
                time.sleep(hold)
                for how in ("SIGKILL", "SIGTERM"):
                    counts = [t.stats_now().get("reconnects", 0) for t in tracks]
                    if how == "SIGKILL":
                        server.kill()
                    elif (code := server.terminate()) != 0:
                        raise RuntimeError(f"the server exited with {code} on SIGTERM")
                    time.sleep(0.5)  # the tracks stream into no server meanwhile
                    server.start()
                    seconds = wait_until(partial(reconnected, tracks, counts), f"every track to reconnect after {how}")
                    faults["reconnect_s"].setdefault(how, []).append(seconds)
                    time.sleep(hold)
            faults["server_starts"] = server.starts
        finally:
            for track in tracks:
                track.stop()
            for proc in clients:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(TIMEOUT)
                if proc.stdout is not None:
                    proc.stdout.close()
            channel.close()
            with contextlib.suppress(Exception):
                server.terminate()
        errors = [f"track {t.number}: {t.error!r}" for t in tracks if t.error]
        if errors:
            raise RuntimeError("; ".join(errors))

    rows = [t.result() for t in tracks]
    totals = {
        c: sum(r[c] for r in rows) for c in ("blocks", "frames", "wet", "gap", "lost", "duplicated", "misaligned")
    }
    totals["track"] = "all"
    clean_summary = {
        "blocks": len(sizes),
        "frames": int(clip.shape[1]),
        "blocks_during_bad_input": during[0],
        "bit_identical": identical,
        "offline_max_abs_difference": offline,
        "frames_differing": len(differs),
        "first_differing_frame": int(differs[0]) if len(differs) else None,
        "max_abs_difference": float(np.abs(box["out"] - reference).max()),
        "reference_bridge": {k: v for k, v in reference_stats.items() if v},
        "concurrent_bridge": {k: v for k, v in box["stats"].items() if v},
    }
    result = {
        "title": TITLE,
        "rows": rows,
        "totals": totals,
        "cases": case_rows,
        "clean_session": clean_summary,
        "faults": faults,
        "tracks": k,
        "server_threads": server_threads,
        "soak_s": time.monotonic() - started,
    }
    print(TITLE)
    print(table([*rows, totals], COLUMNS))
    print(table(case_rows, CASE_COLUMNS))
    print("clean session:", clean_summary)
    print("faults:", faults)
    plot(result, options)
    return result


def plot(result: dict[str, Any], options: Options) -> None:
    fig, axes = figure(1, 2)
    rows = result["rows"]
    ax = axes[0][0]
    x = [r["track"] for r in rows]
    ax.bar(x, [r["wet"] for r in rows], label="wet (aligned)")
    ax.bar(x, [r["gap"] for r in rows], bottom=[r["wet"] for r in rows], label="gap (counted)")
    ax.set_xlabel("track")
    ax.set_ylabel("host output frames")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    cases = result["cases"]
    ok = sum(1 for c in cases if c["ok"])
    ax.bar(["status as expected", "other"], [ok, len(cases) - ok], color=["tab:green", "tab:red"])
    ax.set_ylabel(f"malformed inputs ({len(cases)})")
    save_figure(fig, options.out, ITEM, TITLE)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        return serve(args[1:])
    if args[:1] == ["client"]:
        return client(args[1:])
    print("usage: python -m stemserve.bench.soak serve|client ... (the soak itself: stemserve bench soak)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
