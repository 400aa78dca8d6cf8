"""Whole-file options (``shifts``, ``split``, ``overlap``, ``segment``; ``niter``, ``residual``) from the
command line and the wire to the model, against the peer packages' own file APIs on the same files.

A real server on a loopback port serves a Demucs v2 file and an Open-Unmix folder written by the
packages (random weights, small) and a tiny U-Net (a model that streams its files). Clients are
``StemClient`` over gRPC and ``stemserve separate``: with ``--server`` in this process (its
``main``), embedded in a subprocess for the long Demucs file; stems are read back with soundfile.
Equal within 1e-4 everywhere.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import demucs.apply  # test-only oracle
import numpy as np
import pytest
import soundfile as sf
import torch

from stemserve.plugin_bridge.client import StemClient, StemServeError
from stemserve.server.cli import main
from stemserve.server.embedded import EmbeddedServer
from tests.models.official_peers import clip, openunmix_package, package_demucs, write_demucs_file, write_umx_folder
from tests.server.conftest import running_server

ROOT = Path(__file__).resolve().parents[2]
RATE = 44100
TOLERANCE = 1e-4
UMX_TARGETS = ("vocals", "drums")


@dataclass
class Official:
    demucs: Any  # the package's Demucs, the oracle's network
    demucs_path: Path
    umx_folder: Path
    umx_one: Path  # one target: the post-filter needs the residual as its second source


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Official:
    folder = tmp_path_factory.mktemp("official")
    reference = package_demucs(normalize=True, resample=False, segment=4)
    with openunmix_package() as umx:
        umx_folder = write_umx_folder(
            umx, folder / "umx", UMX_TARGETS, hidden_size=32, nb_channels=2, sample_rate=RATE,
            n_fft=4096, n_hop=1024, max_bin=1487,
        )  # fmt: skip
        umx_one = write_umx_folder(
            umx, folder / "umx1", ("vocals",), hidden_size=16, nb_channels=2, sample_rate=RATE,
            n_fft=4096, n_hop=1024, max_bin=1487,
        )  # fmt: skip
    return Official(reference, write_demucs_file(reference, folder / "demucs.th"), umx_folder, umx_one)


@pytest.fixture(scope="module")
def served(official: Official, checkpoints: dict[str, str]) -> Iterator[EmbeddedServer]:
    models = {
        "demucs": str(official.demucs_path),
        "umx": str(official.umx_folder),
        "umx1": str(official.umx_one),
        "multi": checkpoints["multi"],
    }
    with running_server(models) as server:
        yield server


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "stemserve.server.cli", "separate", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def separate(address: str, model: str, mix: np.ndarray, stems: tuple[str, ...] = (), **options: Any) -> np.ndarray:
    """``(S, C, T)``: the whole of a Separate call with SeparateStart ``options``, stems in answer order."""
    with StemClient(address) as client:
        parts = list(client.separate_chunks(iter([mix]), mix.shape[0], RATE, model, stems, mix.shape[1], None, options))
    return np.concatenate([chunk for _, chunk in parts], axis=-1)


def apply_model(reference: Any, mix: np.ndarray, **options: Any) -> np.ndarray:
    random.seed(0)  # the package draws its shifts from Python's random; a file job seeds its own draws with 0
    with torch.no_grad():
        return demucs.apply.apply_model(reference, torch.from_numpy(mix)[None], **options)[0].numpy()


def assert_same(ours: np.ndarray, peer: np.ndarray) -> None:
    assert ours.shape == peer.shape
    assert float(np.abs(peer).max()) > 1e-2  # a separation, not silence
    for part in (slice(None), slice(0, RATE), slice(-RATE, None)):  # whole, first and last second
        assert float(np.abs(ours[..., part] - peer[..., part]).max()) <= TOLERANCE


def read_stems(folder: Path, names: tuple[str, ...]) -> np.ndarray:
    stems = []
    for name in names:
        data, rate = sf.read(folder / f"{name}.wav", dtype="float32", always_2d=True)
        assert rate == RATE
        stems.append(data.T)
    return np.stack(stems)


@pytest.mark.parametrize(
    "options",
    [{"shifts": 2}, {"shifts": 0, "split": False}, {"overlap": 0.5, "segment_seconds": 1.0}, {}],
    ids=["shifts2", "no-split", "overlap-segment", "defaults"],
)
def test_demucs_options_over_the_wire_equal_apply_model(
    served: EmbeddedServer, official: Official, options: dict[str, Any]
) -> None:
    mix = clip(2, 3.0, RATE, seed=11).numpy()
    peer_options = {("segment" if k == "segment_seconds" else k): v for k, v in options.items()}
    expected = apply_model(official.demucs, mix, **peer_options)
    assert_same(separate(served.address, "demucs", mix, **options), expected)


def test_demucs_shifts_change_the_stems(served: EmbeddedServer) -> None:
    """The options are not dropped on the way: two shifts differ from the default one."""
    mix = clip(2, 2.0, RATE, seed=12).numpy()
    one, two = separate(served.address, "demucs", mix), separate(served.address, "demucs", mix, shifts=2)
    assert float(np.abs(one - two).max()) > 1e-3


def test_niter_and_residual_from_the_command_line_equal_openunmix_separator(
    served: EmbeddedServer, official: Official, tmp_path: Path
) -> None:
    mix = clip(2, 2.5, RATE, seed=13)
    with openunmix_package() as umx:
        peer = umx.utils.load_separator(
            str(official.umx_folder), targets=list(UMX_TARGETS), niter=1, residual=True
        ).eval()
        with torch.no_grad():
            expected = peer(mix.unsqueeze(0))[0].numpy()  # (vocals, drums, residual)
    song = tmp_path / "song.wav"
    sf.write(song, mix.numpy().T, RATE, subtype="FLOAT")
    out = tmp_path / "out"
    code = main(["separate", str(song), "--server", served.address, "--model", "umx", "--niter", "1",
                 "--residual", "--clip", "none", "-o", str(out)])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in (out / "umx" / "song").iterdir()) == ["drums.wav", "residual.wav", "vocals.wav"]
    assert_same(read_stems(out / "umx" / "song", (*UMX_TARGETS, "residual")), expected)

    # The residual can be chosen like any stem, in the order asked.
    got = separate(served.address, "umx", mix.numpy(), ("residual", "vocals"), niter=1, residual=True)
    assert_same(got, expected[[2, 0]])


def test_a_demucs_file_job_reports_progress_pass_by_pass_before_its_stems(
    served: EmbeddedServer, official: Official
) -> None:
    """A whole-signal job computes the whole file before its first chunk: meanwhile the client gets
    the samples done after each model pass (6 s in 1-s segments every 0.5 s, two shifts: 26 passes),
    increasing, and the stems then equal the package's."""
    mix = clip(2, 6.0, RATE, seed=15).numpy()
    events: list[tuple[str, int]] = []
    with StemClient(served.address) as client:
        chunks = client.separate_chunks(
            iter([mix]), 2, RATE, "demucs", (), mix.shape[1], lambda done, total: events.append(("progress", done)),
            {"segment_seconds": 1.0, "overlap": 0.5, "shifts": 2},
        )  # fmt: skip
        parts = []
        for _, chunk in chunks:
            events.append(("chunk", len(parts)))
            parts.append(chunk)
    before = [done for kind, done in events[: events.index(("chunk", 0))] if kind == "progress"]
    print(f"{len(before)} progress reports before the first chunk: {before}")
    assert len(before) >= 10
    assert before == sorted(set(before)) and before[0] > 0 and before[-1] == mix.shape[1]
    expected = apply_model(official.demucs, mix, shifts=2, overlap=0.5, segment=1.0)
    assert_same(np.concatenate(parts, axis=-1), expected)


def test_a_25_s_demucs_file_through_the_embedded_command_equals_apply_model(official: Official, tmp_path: Path) -> None:
    mix = clip(2, 25.0, RATE, seed=14).numpy()  # 25 s: segments of 4 s every 2 s, two shifts
    song = tmp_path / "long.wav"
    sf.write(song, mix.T, RATE, subtype="FLOAT")
    out = tmp_path / "out"
    done = run_cli(str(song), "--model", f"demucs={official.demucs_path}", "--max-batch", "1", "--shifts", "2",
                   "--overlap", "0.5", "--split", "--clip", "none", "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    sources = tuple(official.demucs.sources)
    assert_same(read_stems(out / "demucs" / "long", sources), apply_model(official.demucs, mix, shifts=2, overlap=0.5))


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        ("demucs", {"niter": 1}, "demucs does not take niter (its file options: overlap, segment, shifts, split)"),
        ("demucs", {"overlap": 1.0}, "overlap must be in [0, 1), got 1.0"),
        ("demucs", {"segment_seconds": 0.0001, "overlap": 0.9}, "leaves no hop"),
        (
            "demucs",
            {"segment_seconds": 0.002, "overlap": 0.5},
            "segment 0.002 s, overlap 0.5, shifts 1: about 1003 model passes on 0.5 s of audio, more than 100",
        ),
        ("umx", {"shifts": 2}, "model umx does not take shifts (its file options: niter, residual)"),
        ("umx1", {"niter": 1}, "model umx1: the Wiener post-filter (niter > 0) needs two sources: add residual=True"),
        ("multi", {"shifts": 2}, "model multi streams its files and takes no file options (got shifts)"),
    ],
    ids=[
        "niter-on-demucs",
        "overlap-1",
        "no-hop",
        "too-many-passes",
        "shifts-on-umx",
        "one-target-niter",
        "streaming-model",
    ],
)
def test_options_a_model_does_not_take_are_invalid_argument(
    served: EmbeddedServer, model: str, options: dict[str, Any], message: str
) -> None:
    mix = clip(2, 0.5, RATE).numpy()
    with pytest.raises(StemServeError) as caught:
        separate(served.address, model, mix, **options)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert message in str(caught.value)


def test_the_command_line_refuses_bad_options_with_exit_2(
    served: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    song = tmp_path / "song.wav"
    sf.write(song, clip(2, 0.5, RATE).numpy().T, RATE)
    common = ["separate", str(song), "--server", served.address, "-o", str(tmp_path / "out")]
    assert main([*common, "--model", "demucs", "--overlap", "1"]) == 2
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "overlap must be in [0, 1)" in err and "Traceback" not in err
    assert main([*common, "--model", "umx", "--stems", "residual"]) == 2  # residual only with --residual
    assert "unknown stems ['residual']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as parse_error:
        main([*common, "--model", "demucs", "--shifts", "-1"])
    assert parse_error.value.code == 2 and "--shifts: must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
