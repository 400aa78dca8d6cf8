"""`stemserve separate` as Demucs users expect: several inputs, OUT/<model>/<track>/<stem>.<ext>,
--filename, --two-stems, --format / sample format, clipping protection; untrained weights never
served silently; reflection v1 beside v1alpha."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from grpc_reflection.v1alpha import reflection_pb2

from stemserve.server.embedded import EmbeddedServer
from stemserve.server.separate_cli import protect
from tests.server.conftest import RATE, TOLERANCE, noise, offline

ROOT = Path(__file__).resolve().parents[2]
FOUR = ("vocals", "drums", "bass", "other")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stemserve.server.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_several_inputs_each_into_out_model_track(server: EmbeddedServer, tmp_path: Path) -> None:
    inputs = {"a.wav": ("WAV", "PCM_16"), "b.flac": ("FLAC", "PCM_24"), "c.ogg": ("OGG", "VORBIS")}
    for seed, (name, (fmt, subtype)) in enumerate(inputs.items()):
        sf.write(tmp_path / name, noise(0.3 + 0.1 * seed, seed=seed).T, RATE, format=fmt, subtype=subtype)
    out = tmp_path / "sep"
    done = run_cli(
        "separate", *(str(tmp_path / n) for n in inputs), "--server", server.address, "-n", "multi", "-o", str(out)
    )
    assert done.returncode == 0, done.stderr
    for name, (fmt, subtype) in inputs.items():
        track, ext = name.split(".")
        for stem in FOUR:
            info = sf.info(str(out / "multi" / track / f"{stem}.{ext}"))
            assert (info.format, info.subtype) == (fmt, subtype)  # like the input
            assert info.frames == sf.info(str(tmp_path / name)).frames
    assert sorted(p.name for p in (out / "multi").iterdir()) == ["a", "b", "c"]


def test_filename_template_places_stems(server: EmbeddedServer, tmp_path: Path) -> None:
    sf.write(tmp_path / "song.wav", noise(0.3).T, RATE)
    template = "{track}-{model}/{stem}.{ext}"
    done = run_cli("separate", str(tmp_path / "song.wav"), "--server", server.address, "--model", "multi",
                   "--stems", "bass", "--out", str(tmp_path / "o"), "--filename", template)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.wav")] == [
        "song-multi/bass.wav"
    ]
    bad = run_cli("separate", str(tmp_path / "song.wav"), "--server", server.address, "--model", "multi",
                  "--out", str(tmp_path / "p"), "--filename", "{song}.{ext}")  # fmt: skip
    assert bad.returncode == 2 and "--filename" in bad.stderr
    assert not (tmp_path / "p").exists()


def test_two_stems_writes_the_target_and_the_sum_of_the_others(
    server: EmbeddedServer, checkpoints: dict[str, str], tmp_path: Path
) -> None:
    audio = noise(0.6, seed=3)
    sf.write(tmp_path / "mix.wav", audio.T, RATE, subtype="FLOAT")
    done = run_cli("separate", str(tmp_path / "mix.wav"), "--server", server.address, "--model", "multi",
                   "--two-stems", "vocals", "--clip", "none", "--out", str(tmp_path / "o"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "o" / "multi" / "mix"
    assert sorted(p.name for p in folder.iterdir()) == ["no_vocals.wav", "vocals.wav"]
    ref = offline(checkpoints["multi"], audio, file=True)
    vocals, _ = sf.read(folder / "vocals.wav", dtype="float32", always_2d=True)
    rest, _ = sf.read(folder / "no_vocals.wav", dtype="float32", always_2d=True)
    assert np.abs(vocals.T - ref[0]).max() <= TOLERANCE
    assert np.abs(rest.T - ref[1:].sum(axis=0)).max() <= 3 * TOLERANCE
    missing = run_cli("separate", str(tmp_path / "mix.wav"), "--server", server.address, "--model", "multi",
                      "--two-stems", "kazoo", "--out", str(tmp_path / "q"))  # fmt: skip
    assert missing.returncode == 2 and "kazoo" in missing.stderr and not (tmp_path / "q").exists()


def test_format_and_sample_format_options(server: EmbeddedServer, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", noise(0.3, seed=2).T, RATE, subtype="FLOAT")
    common = ["--server", server.address, "--model", "multi", "--stems", "drums"]
    done = run_cli(
        "separate", str(tmp_path / "in.wav"), *common, "--format", "flac", "--int24", "-o", str(tmp_path / "f")
    )
    assert done.returncode == 0, done.stderr
    info = sf.info(str(tmp_path / "f" / "multi" / "in" / "drums.flac"))
    assert (info.format, info.subtype, info.frames) == ("FLAC", "PCM_24", int(0.3 * RATE))
    done = run_cli("separate", str(tmp_path / "in.wav"), *common, "--format", "mp3", "-o", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    assert sf.info(str(tmp_path / "m" / "multi" / "in" / "drums.mp3")).format == "MP3"
    refused = run_cli(
        "separate", str(tmp_path / "in.wav"), *common, "--format", "flac", "--float32", "-o", str(tmp_path / "x")
    )
    assert refused.returncode == 2 and "FLAC cannot hold FLOAT" in refused.stderr
    assert not (tmp_path / "x").exists()


def test_protect_rescales_together_clamps_or_reports() -> None:
    loud = {"a": np.array([[2.0, -0.5]], np.float32), "b": np.array([[0.5, 0.25]], np.float32)}
    note = protect(loud, "rescale")
    assert note is not None and "scaled" in note
    assert np.abs(loud["a"]).max() < 1.0 and loud["a"][0, 0] / loud["b"][0, 0] == pytest.approx(4.0)
    clamped = {"a": np.array([[2.0, -3.0, 0.5]], np.float32)}
    assert "2 samples clamped" in (protect(clamped, "clamp") or "")
    assert clamped["a"].tolist() == [[1.0, -1.0, 0.5]]
    left = {"a": np.array([[1.5]], np.float32)}
    assert "left as is" in (protect(left, "none") or "") and left["a"][0, 0] == 1.5
    assert protect({"a": np.array([[0.9]], np.float32)}, "rescale") is None


def test_loud_input_is_rescaled_and_reported(server: EmbeddedServer, tmp_path: Path) -> None:
    sf.write(tmp_path / "loud.wav", (8.0 * noise(0.4, seed=9)).T, RATE, subtype="FLOAT")
    common = ["separate", str(tmp_path / "loud.wav"), "--server", server.address, "--model", "multi"]
    raw = run_cli(*common, "--clip", "none", "--float32", "-o", str(tmp_path / "raw"))
    assert raw.returncode == 0, raw.stderr
    peaks = {s: np.abs(sf.read(tmp_path / "raw" / "multi" / "loud" / f"{s}.wav")[0]).max() for s in FOUR}
    assert max(peaks.values()) > 1.0 and "left as is" in raw.stderr  # the premise of this test
    done = run_cli(*common, "--int16", "-o", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert "scaled by" in done.stderr
    gain = 1.0 / (1.01 * max(peaks.values()))
    for stem in FOUR:
        data, _ = sf.read(tmp_path / "o" / "multi" / "loud" / f"{stem}.wav")
        assert np.abs(data).max() == pytest.approx(gain * peaks[stem], abs=2e-4)


def test_models_lists_which_presets_have_trained_weights() -> None:
    from stemserve.server.engine.pool import bundled_models

    done = run_cli("models", "--json")
    assert done.returncode == 0, done.stderr
    trained = {e["name"]: e["trained_weights"] for e in json.loads(done.stdout)}
    assert {n for n, w in trained.items() if w} == set(bundled_models()) & set(trained)
    assert trained["unet"] is None
    table = run_cli("models").stdout.splitlines()
    assert table[0].split()[:2] == ["name", "trained"]
    row = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert row["unet"] == "-" and all(row[n] == "yes" for n, w in trained.items() if w)


def test_untrained_preset_warns_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    from stemserve.server.serve_cli import check_models

    with caplog.at_level(logging.WARNING):
        check_models({"unet": None})
    assert any("RANDOM weights" in r.getMessage() and "'unet'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_models({"unet": None}, allow_untrained=True)
        check_models({"conditioned_unet": None, "mine": "/x.pt"})
    assert not caplog.records


@pytest.mark.parametrize("command", ["serve", "separate"])
def test_unknown_model_without_server_is_one_line_and_exit_2(command: str) -> None:
    done = (
        run_cli(command, "--model", "kazoo-net", "--port", "0")
        if command == "serve"
        else run_cli(command, "-n", "kazoo-net")
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "unknown model 'kazoo-net'" in done.stderr


def test_reflection_answers_v1_clients(server: EmbeddedServer) -> None:
    # v1's messages are v1alpha's under another package name, so v1alpha's classes encode them.
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(call(iter([request]), timeout=30)))
        names = {s.name for s in reply.list_services_response.service}
        assert {"stemserve.v1.Separation", "grpc.reflection.v1.ServerReflection"} <= names
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="stemserve.v1.Separation")
        reply = next(iter(call(iter([request]), timeout=30)))
        assert reply.file_descriptor_response.file_descriptor_proto
