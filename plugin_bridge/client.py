"""Scripting client for a stemserve server: list models, separate arrays or files.

Torch-free (numpy, soundfile, grpc) so it lives beside the bridge. Example::

    from stemserve.plugin_bridge.client import StemClient
    with StemClient("127.0.0.1:50051") as client:
        stems = client.separate_array(audio, 44100, model="conditioned_unet", stems=["vocals"])
        # stems["vocals"] has audio's shape (channels, frames)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc

# Must agree with server/app.py: the server refuses pings more often than every 10 s.
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# How long a client tries to connect before saying the server cannot be reached: a refused
# port fails at once and is retried until then; only a server that answers waits longer.
CONNECT_TIMEOUT_S = 3.0
# Frames per Separate request chunk: 1 s at 44.1 kHz stereo is ~350 KB on the wire.
CHUNK_FRAMES = 44_100

Progress = Callable[[int, int], None]


class StemServeError(RuntimeError):
    """A server-side refusal, with the gRPC status code name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RemoteModel:
    name: str
    sources: tuple[str, ...]
    conditioned: bool
    sample_rate: int
    channels: int
    domain: str
    causal: bool
    latency_samples: int
    description: dict[str, Any]


def encode(audio: np.ndarray) -> bytes:
    """``(channels, frames)`` -> interleaved little-endian float32."""
    return np.ascontiguousarray(np.asarray(audio).T, dtype="<f4").tobytes()


def decode(data: bytes, channels: int) -> np.ndarray:
    """Interleaved little-endian float32 -> ``(channels, frames)``."""
    return np.frombuffer(data, dtype="<f4").reshape(-1, channels).T.copy()


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


def open_channel(address: str, tls_root: bytes | None = None) -> grpc.Channel:
    if tls_root is not None:
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(tls_root), options=channel_options())
    return grpc.insecure_channel(address, options=channel_options())


class StemClient:
    """Blocking client over one channel. Use as a context manager."""

    def __init__(self, address: str, token: str | None = None, tls_root: bytes | None = None) -> None:
        self.address = address
        self.channel = open_channel(address, tls_root)
        self.stub = pb_grpc.SeparationStub(self.channel)
        # Plain metadata, not call credentials (dropped on insecure channels).
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.last_connect_error = ""

    def __enter__(self) -> StemClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the channel is connected (the server may still be warming up)."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as err:
            raise StemServeError("UNAVAILABLE", f"no server at {self.address} after {timeout:g} s") from err

    def health(self, timeout: float = 5.0) -> str:
        """The standard health service's answer: ``"SERVING"``, ``"NOT_SERVING"`` (warming up or
        draining), or ``"UNREACHABLE"`` when no connection could be made within ``timeout``."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self.last_connect_error = err.details() if isinstance(err, grpc.Call) else str(err)
                return "UNREACHABLE"
            raise _error(err) from err
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        return "SERVING" if serving else "NOT_SERVING"

    def serving(self, timeout: float = 5.0) -> bool:
        """True when the standard health service says SERVING (models loaded and warm)."""
        return self.health(timeout) == "SERVING"

    def wait_serving(
        self, timeout: float = 300.0, poll: float = 0.2, connect_timeout: float = CONNECT_TIMEOUT_S
    ) -> None:
        """Wait until health says SERVING.

        Two waits, told apart: nothing answering at the address fails within ``connect_timeout``
        (StemServeError UNAVAILABLE "cannot reach ADDR: connection refused"); a server that answers
        NOT_SERVING (loading and warming its models) is waited for up to ``timeout``."""
        start = time.monotonic()
        reached = False
        while True:
            now = time.monotonic()
            limit = start + (timeout if reached else min(timeout, connect_timeout))
            state = self.health(timeout=max(0.1, min(5.0, limit - now)))
            if state == "SERVING":
                return
            reached = reached or state == "NOT_SERVING"
            if time.monotonic() >= limit:
                if not reached:
                    raise StemServeError("UNAVAILABLE", f"cannot reach {self.address}: {self._reason()}")
                raise StemServeError("UNAVAILABLE", f"{self.address} is up but not serving after {timeout:g} s")
            time.sleep(poll)

    def _reason(self) -> str:
        """Why the last connection attempt failed, in a user's words."""
        text = self.last_connect_error.lower()
        for needle, words in (
            ("connection refused", "connection refused (is the server running on that port?)"),
            ("dns", "name not resolved"),
            ("deadline", "no answer"),
            ("timed out", "no answer"),
        ):
            if needle in text:
                return words
        return self.last_connect_error or "no answer"

    def list_models(self) -> list[RemoteModel]:
        try:
            reply = self.stub.ListModels(pb.ListModelsRequest(), metadata=self.metadata)
        except grpc.RpcError as err:
            raise _error(err) from err
        return [
            RemoteModel(
                name=m.name,
                sources=tuple(m.sources),
                conditioned=m.conditioned,
                sample_rate=m.sample_rate,
                channels=m.channels,
                domain=m.domain,
                causal=m.causal,
                latency_samples=m.latency.total,
                description=json.loads(m.description_json or "{}"),
            )
            for m in reply.models
        ]

    def separate_array(
        self,
        audio: np.ndarray,
        sample_rate: int,
        model: str,
        stems: Sequence[str] = (),
        progress: Progress | None = None,
        chunk_frames: int = CHUNK_FRAMES,
    ) -> dict[str, np.ndarray]:
        """Separate ``audio (channels, frames)``; returns ``{stem: (channels, frames)}``."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2:
            raise ValueError(f"audio must be (channels, frames), got shape {audio.shape}")
        out: dict[str, list[np.ndarray]] = {}
        chunks = iter_chunks(audio, chunk_frames)
        for names, chunk in self.separate_chunks(
            chunks, audio.shape[0], sample_rate, model, stems, audio.shape[1], progress
        ):
            for name, data in zip(names, chunk, strict=True):
                out.setdefault(name, []).append(data)
        return {name: np.concatenate(parts, axis=1) for name, parts in out.items()}

    def separate_chunks(
        self,
        chunks: Iterator[np.ndarray],
        channels: int,
        sample_rate: int,
        model: str,
        stems: Sequence[str] = (),
        total_frames: int = 0,
        progress: Progress | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Stream ``(channels, n)`` chunks up; yield ``(stem names, (S, channels, m))`` chunks back in order.

        ``options``: SeparateStart's whole-file fields by their proto names (``shifts``, ``split``,
        ``overlap``, ``segment_seconds``, ``niter``, ``residual``); absent ones stay unset."""

        def requests() -> Iterator[pb.SeparateRequest]:
            yield pb.SeparateRequest(
                start=pb.SeparateStart(
                    model=model,
                    sample_rate=sample_rate,
                    channels=channels,
                    stems=list(stems),
                    total_frames=total_frames,
                    **dict(options or {}),
                )
            )
            for chunk in chunks:
                yield pb.SeparateRequest(pcm=encode(chunk))

        names: list[str] = []
        position = 0
        try:
            for reply in self.stub.Separate(requests(), metadata=self.metadata):
                kind = reply.WhichOneof("kind")
                if kind == "started":
                    names = list(reply.started.stems)
                elif kind == "chunk":
                    if reply.chunk.position != position:
                        raise StemServeError("DATA_LOSS", f"chunk at frame {reply.chunk.position}, expected {position}")
                    by_name = {s.name: decode(s.pcm, channels) for s in reply.chunk.stems}
                    position += reply.chunk.frames
                    yield names, np.stack([by_name[n] for n in names])
                elif kind == "progress" and progress is not None:
                    progress(reply.progress.frames_done, reply.progress.total_frames)
        except grpc.RpcError as err:
            raise _error(err) from err

    def separate_file(
        self,
        path: str | Path,
        out_dir: str | Path,
        model: str,
        stems: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> dict[str, Path]:
        """Separate an audio file; write ``<out_dir>/<stem>.<ext>`` in the input's format and length."""
        import soundfile as sf

        path, out_dir = Path(path), Path(out_dir)
        info = sf.info(str(path))
        # Made with the first stem, so a refused job leaves no empty folder behind.
        missing = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
        writers: dict[str, Any] = {}
        written: dict[str, Path] = {}
        try:
            # The request iterator owns the file: gRPC's request thread may still be reading it when
            # a refusal ends the call here, so closing it from this thread crashed libsndfile (FLAC, MP3).
            for names, chunk in self.separate_chunks(
                file_chunks(path), info.channels, info.samplerate, model, stems, info.frames, progress
            ):
                for name, data in zip(names, chunk, strict=True):
                    if name not in writers:
                        out_dir.mkdir(parents=True, exist_ok=True)
                        written[name] = out_dir / f"{name}{path.suffix}"
                        writers[name] = sf.SoundFile(
                            str(written[name]),
                            "w",
                            info.samplerate,
                            info.channels,
                            info.subtype,
                            format=info.format,
                        )
                    writers[name].write(data.T)
        except BaseException:
            for writer in writers.values():
                writer.close()
            for stem_path in written.values():
                stem_path.unlink(missing_ok=True)
            for folder in missing:  # innermost first; only the folders this job made, only if empty
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise
        for writer in writers.values():
            writer.close()
        check_length(written, info.frames)
        return written


def check_length(written: dict[str, Path], frames: int) -> None:
    """Raise StemServeError unless every written stem has ``frames`` frames."""
    import soundfile as sf

    for name, path in written.items():
        got = sf.info(str(path)).frames
        if got != frames:
            raise StemServeError("DATA_LOSS", f"stem {name}: {got} frames written, the input has {frames}")


def file_chunks(path: Path, frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
    """``(channels, n)`` float32 blocks of an audio file, opened and closed by whoever iterates."""
    import soundfile as sf

    with sf.SoundFile(str(path)) as source:
        for block in source.blocks(blocksize=frames, dtype="float32", always_2d=True):
            yield block.T


def iter_chunks(audio: np.ndarray, frames: int) -> Iterator[np.ndarray]:
    for start in range(0, audio.shape[1], frames):
        yield audio[:, start : start + frames]


def _error(err: grpc.RpcError) -> StemServeError:
    code = err.code().name if isinstance(err, grpc.Call) else "UNKNOWN"
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    return StemServeError(code, details or "")
