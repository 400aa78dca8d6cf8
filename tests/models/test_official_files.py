"""Official files users already have: they load unchanged and separate whole files as the peers do.

Every file here is written in its published layout by the peer package itself
(random weights); the reference output is the peer's own file API on the same
audio. Demucs clips are 26 s, so several segments and both edges are compared.
"""

from __future__ import annotations

import random
from pathlib import Path

import demucs.apply  # test-only oracle, installed by scripts/install-deps
import pytest
import torch

from stemserve.models.checkpoint import CheckpointError, load_model
from stemserve.models.demucs import Demucs, FileOptions, config_from_state_dict
from stemserve.models.open_unmix import FileOptions as UmxOptions
from stemserve.models.open_unmix import OpenUnmix, OpenUnmixConfig, OpenUnmixStems
from tests.models.official_peers import (
    clip,
    openunmix_package,
    package_demucs,
    sdr_db,
    write_demucs_file,
    write_umx_folder,
)

TOLERANCE = 1e-4  # max abs difference
MIN_SDR_DB = 80.0


def assert_same(ours: torch.Tensor, peer: torch.Tensor, rate: int) -> None:
    """Whole signal and each edge (first and last second) within the tolerance."""
    assert ours.shape == peer.shape
    for part in (slice(None), slice(0, rate), slice(-rate, None)):
        assert float((ours[..., part] - peer[..., part]).abs().max()) <= TOLERANCE
    assert sdr_db(peer, ours) >= MIN_SDR_DB
    assert float(peer.abs().max()) > 1e-2  # a separation, not silence


@pytest.mark.parametrize(
    "layout",
    [
        # umxl: hidden size 1024, stereo 44.1 kHz, 16 kHz bandwidth (one of its four targets, and the
        # residual; the package's EM loops take 20 s here, so the stereo post-filter is the last case's)
        {"targets": ("vocals",), "hidden_size": 1024, "nb_channels": 2, "sample_rate": 44100,
         "n_fft": 4096, "n_hop": 1024, "max_bin": 1487, "niter": 0, "residual": True,
         "seconds": 7.3, "wiener_win_len": 300},
        # umxse: speech enhancement, mono 16 kHz, n_fft 1024, hop 512, all 513 bins
        {"targets": ("speech", "noise"), "hidden_size": 256, "nb_channels": 1, "sample_rate": 16000,
         "n_fft": 1024, "n_hop": 512, "max_bin": 513, "niter": 1, "residual": True,
         "seconds": 7.3, "wiener_win_len": 300},
        # any hidden size; the stereo post-filter (one EM step, the umx default) on excerpts of 60 frames
        {"targets": ("vocals", "drums", "bass"), "hidden_size": 96, "nb_channels": 2, "sample_rate": 44100,
         "n_fft": 4096, "n_hop": 1024, "max_bin": 1487, "niter": 1, "residual": False,
         "seconds": 3.1, "wiener_win_len": 60},
    ],
    ids=["umxl", "umxse", "hidden96"],
)  # fmt: skip
def test_open_unmix_folders_load_unchanged_and_separate_files_as_the_package(tmp_path: Path, layout: dict) -> None:
    niter, residual = layout.pop("niter"), layout.pop("residual")
    seconds, excerpt = layout.pop("seconds"), layout.pop("wiener_win_len")
    rate = layout["sample_rate"]
    with openunmix_package() as umx:
        folder = write_umx_folder(umx, tmp_path / "model", **layout)
        peer = umx.utils.load_separator(
            str(folder), targets=list(layout["targets"]), niter=niter, residual=residual, wiener_win_len=excerpt
        ).eval()
        mix = clip(layout["nb_channels"], seconds, rate)
        with torch.no_grad():
            expected = peer(mix.unsqueeze(0))[0]  # (targets [+ residual], C, T)

    model = load_model(folder)
    assert isinstance(model, OpenUnmixStems if len(layout["targets"]) > 1 else OpenUnmix)
    c = model.config
    assert model.describe().sources == layout["targets"]
    assert (c.hidden_size, c.nb_channels, c.sample_rate) == (layout["hidden_size"], layout["nb_channels"], rate)
    assert (c.n_fft, c.hop_length, c.input_bins, c.nb_layers) == (
        layout["n_fft"],
        layout["n_hop"],
        layout["max_bin"],
        3,
    )
    got = model.separate_offline(mix, UmxOptions(niter=niter, residual=residual, wiener_win_len=excerpt))
    assert_same(got, expected, rate)


def test_the_post_filter_needs_two_sources() -> None:
    model = OpenUnmix(OpenUnmixConfig(hidden_size=8, nb_layers=1)).eval()
    with pytest.raises(ValueError, match="residual"):
        model.separate_offline(torch.zeros(2, 44100), UmxOptions(niter=1))
    with pytest.raises(ValueError, match="n_fft / 2"):
        model.separate_offline(torch.zeros(2, 2048))


@pytest.mark.parametrize(
    ("build", "options"),
    [
        # the package's default options: one random shift, split, overlap 0.25
        ({"normalize": True, "segment": 4}, {}),
        # no shifts, half-overlapping segments, sharper transitions, no x2 resampling
        ({"normalize": False, "resample": False, "segment": 4}, {"shifts": 0, "overlap": 0.5, "transition_power": 2.0}),
    ],
    ids=["defaults", "overlap0.5-power2"],
)
def test_demucs_package_files_separate_files_as_apply_model(tmp_path: Path, build: dict, options: dict) -> None:
    reference = package_demucs(**build)
    path = write_demucs_file(reference, tmp_path / "demucs.th")
    model = load_model(path)
    assert isinstance(model, Demucs) and model.config.segment == build["segment"]
    mix = clip(2, 26.0, 44100)  # 26 s: 9 segments of 4 s every 3 s
    random.seed(0)  # the package draws its shifts from Python's global generator
    with torch.no_grad():
        expected = demucs.apply.apply_model(reference, mix.unsqueeze(0), **options)[0]
    got = model.separate_offline(mix, FileOptions(seed=0, **options))
    assert_same(got, expected, 44100)


def test_a_demucs_state_dict_separates_files_as_apply_model() -> None:
    """A bare state dict (as the v2 releases are) has no options: v2's defaults, 10 s segments."""
    reference = package_demucs(normalize=False)
    model = Demucs(config_from_state_dict(reference.state_dict(), normalize=False)).eval()
    model.load_state_dict(reference.state_dict())
    assert model.config.segment == 10.0
    mix = clip(2, 25.0, 44100, seed=1)
    with torch.no_grad():
        expected = demucs.apply.apply_model(reference, mix.unsqueeze(0), shifts=0, segment=10.0)[0]
    assert_same(model.separate_offline(mix, FileOptions(shifts=0)), expected, 44100)


def test_file_options_are_validated() -> None:
    for bad in ({"shifts": -1}, {"overlap": 1.0}, {"transition_power": 0.5}, {"segment": 0.0}):
        with pytest.raises(ValueError):
            FileOptions(**bad)
    for bad_umx in ({"niter": -1}, {"wiener_win_len": 0}):
        with pytest.raises(ValueError):
            UmxOptions(**bad_umx)


def test_unsupported_checkpoints_get_one_line_naming_file_finding_and_support(tmp_path: Path) -> None:
    import demucs.hdemucs

    good = write_demucs_file(package_demucs(), tmp_path / "good.th").read_bytes()
    truncated = tmp_path / "truncated.th"
    truncated.write_bytes(good[: len(good) // 2])
    unknown_keys = tmp_path / "unknown.pth"
    torch.save({"a.weight": torch.zeros(3, 3), "b.bias": torch.zeros(3)}, unknown_keys)
    other_class = tmp_path / "hdemucs.th"  # Demucs v3 (hybrid, no transformer): not supported
    hybrid = demucs.hdemucs.HDemucs(["drums", "bass"], channels=4, depth=2)
    args, kwargs = hybrid._init_args_kwargs
    torch.save({"klass": hybrid.__class__, "args": args, "kwargs": kwargs, "state": hybrid.state_dict()}, other_class)
    cases = {truncated: "truncated or corrupt", unknown_keys: "matches no supported", other_class: "HDemucs"}
    for path, found in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        message = str(info.value)
        assert "\n" not in message and len(message) < 600
        assert message.startswith(f"{path}: unsupported checkpoint: ") and found in message
        assert "supported: stemserve checkpoints" in message
