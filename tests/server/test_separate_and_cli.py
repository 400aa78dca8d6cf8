"""Whole files: the Separate RPC equals offline separation; `stemserve separate` writes
stems in the input's format and length; `stemserve serve` starts with no arguments."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
import torch

from stemserve.plugin_bridge.client import StemClient, StemServeError
from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from stemserve.server.embedded import EmbeddedServer
from stemserve.server.engine.pool import bundled_models
from tests.server.conftest import RATE, TOLERANCE, noise, offline

ROOT = Path(__file__).resolve().parents[2]


def test_separate_of_a_file_equals_offline_separation(
    server: EmbeddedServer, checkpoints: dict[str, str], tmp_path: Path
) -> None:
    audio = noise(1.3, seed=4)
    path = tmp_path / "song.wav"
    sf.write(path, audio.T, RATE, subtype="FLOAT")
    progress: list[tuple[int, int]] = []
    with StemClient(server.address) as client:
        written = client.separate_file(
            path, tmp_path / "out", "multi", ["bass", "vocals"], lambda d, t: progress.append((d, t))
        )
    assert list(written) == ["bass", "vocals"]
    ref = offline(checkpoints["multi"], audio, file=True)
    for name, index in (("bass", 2), ("vocals", 0)):
        stem, rate = sf.read(written[name], dtype="float32", always_2d=True)
        assert rate == RATE
        assert stem.shape == audio.T.shape
        assert np.abs(stem.T - ref[index]).max() <= TOLERANCE
    assert progress[-1] == (audio.shape[1], audio.shape[1])
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_separate_array_with_tiny_chunks_and_a_short_signal(
    server: EmbeddedServer, checkpoints: dict[str, str]
) -> None:
    with StemClient(server.address) as client:
        for seconds, chunk in ((0.5, 777), (0.004, 10)):  # the second is shorter than the latency
            audio = noise(seconds, seed=5)
            stems = client.separate_array(audio, RATE, "conditioned", ["drums"], chunk_frames=chunk)
            ref = offline(checkpoints["conditioned"], audio, target=1, file=True)[0]
            assert stems["drums"].shape == audio.shape
            assert np.abs(stems["drums"] - ref).max() <= TOLERANCE


def test_client_errors_carry_the_status(server: EmbeddedServer) -> None:
    with StemClient(server.address) as client, pytest.raises(StemServeError) as caught:
        client.separate_array(noise(0.1), RATE, "kazoo-net")
    assert caught.value.code == "NOT_FOUND"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stemserve.server.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_separate_cli_against_a_server_writes_pcm16_stems_of_the_input_length(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    audio = noise(0.7, channels=1, seed=6)
    path = tmp_path / "take.wav"
    sf.write(path, audio.T, RATE, subtype="PCM_16")
    done = run_cli(
        "separate",
        str(path),
        "--server",
        server.address,
        "--model",
        "multi",
        "--stems",
        "drums,bass",
        "--out",
        str(tmp_path / "stems"),
    )
    assert done.returncode == 0, done.stderr
    for name in ("drums", "bass"):
        info = sf.info(str(tmp_path / "stems" / "multi" / "take" / f"{name}.wav"))
        assert (info.frames, info.samplerate, info.channels, info.subtype) == (audio.shape[1], RATE, 1, "PCM_16")
    assert "100%" in done.stderr  # the tqdm bar ran to the end


def test_separate_cli_without_server_uses_an_embedded_one(checkpoints: dict[str, str], tmp_path: Path) -> None:
    audio = noise(0.4, channels=2, seed=8)  # stereo into a mono model: averaged in, duplicated out
    path = tmp_path / "take.flac"
    sf.write(path, audio.T, RATE, subtype="PCM_24")
    done = run_cli(
        "separate",
        str(path),
        "--model",
        f"tiny={checkpoints['multi']}",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "stems"),
    )
    assert done.returncode == 0, done.stderr
    for name in ("vocals", "drums", "bass", "other"):
        info = sf.info(str(tmp_path / "stems" / "tiny" / "take" / f"{name}.flac"))
        assert (info.frames, info.channels, info.format, info.subtype) == (audio.shape[1], 2, "FLAC", "PCM_24")


def test_separate_cli_reports_a_missing_file(tmp_path: Path) -> None:
    done = run_cli("separate", str(tmp_path / "nothing.wav"), "--server", "127.0.0.1:1")
    assert done.returncode == 2
    assert "no such file" in done.stderr


def free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_serve_with_no_arguments_starts_and_answers_list_models() -> None:
    # No arguments at all when the default port is free (else the same with --port 0).
    args = [] if free(50051) else ["--port", "0"]
    env = {**os.environ, "STEMSERVE_TOKEN": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "stemserve.server.cli", "serve", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        seen = []
        while not (match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line := process.stdout.readline())):
            assert line, f"serve exited: {''.join(seen)}"
            seen.append(line)
        if not bundled_models():  # the placeholder says what it is
            assert any("UNTRAINED" in x for x in seen), seen
        address = f"127.0.0.1:{match.group(1)}"
        with StemClient(address) as client:
            # Loading and warming up every batch shape of the bundled models takes seconds
            # on an idle 2-core machine, and far longer on a loaded one.
            client.wait_serving(timeout=300)
            models = client.list_models()
        assert models and all(m.sources for m in models)
        if bundled_models():  # the DAW default is listed first
            assert models[0].name == "conditioned_unet"
        with grpc.insecure_channel(address) as channel:
            assert pb_grpc.SeparationStub(channel).GetStats(pb.GetStatsRequest()).sessions == 0
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0


def test_serve_cli_passes_engine_settings_through() -> None:
    import argparse

    from stemserve.server import serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.configure(parser)
    threads = torch.get_num_threads()
    args = ["--device", "cpu", "--causal-hop", "64", "--max-batch", "4", "--threads", "1", "--resample", "HQ"]
    engine = serve_cli.build_engine(parser.parse_args(args))
    try:
        assert (engine.config.causal_hop, engine.config.max_batch, engine.config.device) == (64, 4, "cpu")
        assert engine.config.resample_quality == "HQ"
        assert torch.get_num_threads() == 1
    finally:
        engine.shutdown()
        torch.set_num_threads(threads)


def test_serve_leaves_a_core_to_the_transport_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from stemserve.server import serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.configure(parser)
    threads = torch.get_num_threads()
    try:
        for cores, expected in ((2, 1), (1, 1), (8, min(threads, 7))):
            monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
            torch.set_num_threads(threads)
            engine = serve_cli.build_engine(parser.parse_args(["--device", "cpu"]))
            engine.shutdown()
            assert torch.get_num_threads() == expected, cores
    finally:
        torch.set_num_threads(threads)
