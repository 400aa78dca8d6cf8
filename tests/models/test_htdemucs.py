"""HTDemucs (Demucs v4) files and bags load unchanged and separate as the ``demucs`` package does.

Every file is written in the published layout (``<sig>-<checksum>.th``, the
``serialize_model`` dict) from the package's own ``HTDemucs`` with random
weights; bags are ``.yaml`` files beside them, read by the package's
``demucs.repo`` for the reference. Models are small (8 channels, 2 transformer
layers, 1 s chunks) so that every case runs in seconds on a CPU.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import demucs.apply  # test-only oracle
import pytest
import torch

from stemserve.models.checkpoint import CheckpointError, load_model, save_checkpoint
from stemserve.models.demucs import FileOptions
from stemserve.models.htdemucs import HTDemucs, HTDemucsBag, HTDemucsConfig
from stemserve.models.registry import build
from tests.models.official_peers import (
    clip,
    package_bag,
    package_htdemucs,
    sdr_db,
    write_htdemucs_file,
)

TOLERANCE = 1e-4  # max abs difference
FOUR = ["drums", "bass", "other", "vocals"]
SIX = ["drums", "bass", "other", "vocals", "guitar", "piano"]
RATE = 8000  # file tests: the published structure at a lower rate (fewer samples per chunk)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def assert_same(ours: torch.Tensor, peer: torch.Tensor) -> None:
    assert ours.shape == peer.shape
    assert float((ours - peer).abs().max()) <= TOLERANCE
    assert sdr_db(peer, ours) >= 80.0
    assert float(peer.abs().max()) > 1e-2  # a separation, not silence


@pytest.mark.parametrize(
    ("sources", "options", "half"),
    [
        # the published htdemucs structure at 44.1 kHz: nfft 4096, depth 4, DConv in both halves
        (FOUR, {}, False),
        # htdemucs_6s-like: six sources, 1x1 projections around the transformer, float16 state as released
        (SIX, {"bottom_channels": 16, "samplerate": RATE}, True),
        # the branches merge below the last spectral layer (nfft 256, depth 3); CAPE positions; norms from layer 2
        (["a", "b"], {"nfft": 256, "depth": 3, "t_emb": "cape", "norm_starts": 2, "samplerate": RATE}, False),
        # post-norm, learnt positions, cross-attention first, no layer scale, DConv in the encoder only
        (["a", "b"], {"t_emb": "scaled", "t_norm_first": False, "t_layer_scale": False, "t_cross_first": True,
                      "dconv_mode": 1, "samplerate": RATE}, False),
    ],
    ids=["htdemucs", "six-sources-bottom-half", "merged-branches-cape", "post-norm-scaled"],
)  # fmt: skip
def test_package_files_load_unchanged_and_compute_the_package_forward(
    tmp_path: Path, sources: list[str], options: dict, half: bool
) -> None:
    reference = package_htdemucs(sources, **options)
    path = write_htdemucs_file(reference, tmp_path, "955717e8", half=half)
    if half:  # the package's own model holds what the file holds
        reference.load_state_dict({k: v.float() for k, v in torch.load(path, weights_only=False)["state"].items()})
    model = load_model(path)
    assert isinstance(model, HTDemucs)
    rate = options.get("samplerate", 44100)
    chunk = rate  # 1 s
    d = model.describe()
    assert d.sources == tuple(sources) and d.sample_rate == rate and not d.causal
    assert (d.segment, d.lookahead, d.domain) == (chunk, chunk - 1, "waveform")
    mix = clip(2, 1.0, rate, seed=3).unsqueeze(0).repeat(2, 1, 1)
    mix[1] *= 0.5  # each item standardised on its own
    # a batch of whole chunks, and a shorter chunk (padded on the right, cut back)
    for batch in (mix, mix[:1, :, : chunk - 777]):
        with torch.no_grad():
            expected = reference(batch)
            got = model(batch)
        assert got.shape == (batch.shape[0], len(sources), 2, batch.shape[-1])
        assert_same(got, expected)


@pytest.mark.parametrize(
    "options",
    [{}, {"shifts": 0, "overlap": 0.5, "transition_power": 2.0, "segment": 0.6}, {"shifts": 2}],
    ids=["defaults", "no-shift-overlap0.5-power2-segment0.6", "two-shifts"],
)
def test_files_separate_as_apply_model(tmp_path: Path, options: dict) -> None:
    """3.3 s at 8 kHz: 4-5 segments of the model's 1 s (or 0.6 s), shifted by up to 0.5 s."""
    reference = package_htdemucs(FOUR, samplerate=RATE)
    model = load_model(write_htdemucs_file(reference, tmp_path, "d12395a8"))
    assert isinstance(model, HTDemucs)
    mix = clip(2, 3.3, RATE, seed=4)
    random.seed(0)  # the package draws its shifts from Python's global generator
    with torch.no_grad():
        expected = demucs.apply.apply_model(reference, mix.unsqueeze(0), **options)[0]
    assert_same(model.separate_offline(mix, FileOptions(seed=0, **options)), expected)


def test_a_bag_yaml_with_weights_and_segment_separates_as_bag_of_models(tmp_path: Path) -> None:
    """Three models, per-source weights (one-hot rows as htdemucs_ft, and a blend) and a bag segment
    shorter than the models' (it shortens their chunks, as ``BagOfModels`` does)."""
    signatures = ["f7e0c4bc", "92cfc3b6", "04573f0d"]
    for seed, sig in enumerate(signatures):
        write_htdemucs_file(package_htdemucs(FOUR, seed=seed, samplerate=RATE), tmp_path, sig)
    (tmp_path / "mybag.yaml").write_text(
        f"models: {signatures}\n"
        "weights: [\n  [1., 0., 0., 0.5],\n  [0., 1., 0., 0.25],\n  [0., 0., 1., 0.25],\n]\n"
        "segment: 0.8\n"
    )
    reference = package_bag(tmp_path, "mybag")
    bag = load_model(tmp_path / "mybag.yaml")
    assert isinstance(bag, HTDemucsBag) and len(bag.models) == 3
    assert bag.describe().segment == int(0.8 * RATE) and bag.describe().extras["bag_members"] == 3
    mix = clip(2, 2.5, RATE, seed=5)
    random.seed(0)
    with torch.no_grad():
        expected = demucs.apply.apply_model(reference, mix.unsqueeze(0))[0]
    got = bag.separate_offline(mix, FileOptions(seed=0))
    assert_same(got, expected)
    # the blend is not any one model's: source 3 mixes all three
    alone = bag._members()[0].separate_offline(mix, FileOptions(seed=0))
    assert float((alone[3] - got[3]).abs().max()) > 1e-3

    # Saved as a stemserve checkpoint (safetensors: no pickle), it loads back as the same bag; a
    # file job reports its progress pass by pass, each member a third of it.
    saved = load_model(save_checkpoint(bag, tmp_path / "bag.safetensors"))
    assert isinstance(saved, HTDemucsBag) and saved.describe() == bag.describe()
    fractions: list[float] = []
    assert torch.equal(saved.separate_offline(mix, FileOptions(seed=0), progress=fractions.append), got)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [f for f in fractions if f in (1 / 3, 2 / 3)] == [1 / 3, 2 / 3]  # each member's last pass


def test_stemserve_separate_writes_the_packages_stems(tmp_path: Path) -> None:
    """``stemserve separate song.wav --model htdemucs=FILE``, float WAV in and out, against ``apply_model``."""
    import soundfile as sf

    reference = package_htdemucs(SIX, samplerate=RATE)
    path = write_htdemucs_file(reference, tmp_path / "models", "5c90dfd2")
    mix = clip(2, 2.2, RATE, seed=6)
    random.seed(0)
    with torch.no_grad():
        expected = demucs.apply.apply_model(reference, mix.unsqueeze(0))[0]
    song = tmp_path / "song.wav"
    sf.write(song, mix.numpy().T, RATE, subtype="FLOAT")
    out = tmp_path / "stems"
    command = [sys.executable, "-m", "stemserve.server.cli", "separate", str(song), "--model", f"htdemucs={path}"]
    result = subprocess.run(
        [*command, "--out", str(out), "--max-batch", "1"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for i, stem in enumerate(SIX):
        written, rate = sf.read(out / "htdemucs" / "song" / f"{stem}.wav", dtype="float32", always_2d=True)
        assert rate == RATE
        assert_same(torch.from_numpy(written.T.copy()), expected[i])


def test_chunks_longer_than_the_model_runs_are_refused() -> None:
    model = HTDemucs(HTDemucsConfig(channels=8, dconv_comp=4, t_layers=2, t_heads=4, segment=0.5, samplerate=RATE))
    with pytest.raises(ValueError, match="longer than the model's 4000-sample chunk"):
        model(torch.zeros(1, 2, 4001))
    with pytest.raises(ValueError, match=r"longer than the 0\.5 s"):
        model.separate_offline(torch.zeros(2, 8000), FileOptions(segment=0.6))
    with pytest.raises(ValueError, match="split it"):
        model.separate_offline(torch.zeros(2, 8000), FileOptions(split=False, shifts=0))


def test_the_registry_builds_the_published_structure() -> None:
    with torch.device("meta"):
        model = build("htdemucs")
    c = model.config
    assert isinstance(model, HTDemucs)
    assert (c.nfft, c.depth, c.channels, c.t_layers, c.segment, len(c.sources)) == (4096, 4, 48, 5, 7.8, 4)
    assert model.describe().segment == 343980  # 7.8 s at 44.1 kHz


def _one_line_refusal(path: Path, found: str) -> None:
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 700, message
    assert message.startswith(f"{path}: unsupported checkpoint: ") and found in message, message
    assert "HTDemucs files" in message  # the supported list says what does load


def test_files_and_bags_that_do_not_load_get_one_line(tmp_path: Path) -> None:
    masking = write_htdemucs_file(package_htdemucs(["a", "b"], cac=False, samplerate=RATE), tmp_path, "aaaa0001")
    _one_line_refusal(masking, "class demucs.htdemucs.HTDemucs (uses options this HTDemucs does not implement: cac")
    write_htdemucs_file(package_htdemucs(FOUR, samplerate=RATE), tmp_path, "bbbb0002")
    write_htdemucs_file(package_htdemucs(["a", "b"], samplerate=RATE), tmp_path, "dddd0004")
    cases = {
        "missing.yaml": ("models: [bbbb0002, cccc0003]\n", "model cccc0003 listed but no cccc0003.th"),
        "weights.yaml": ("models: [bbbb0002]\nweights: [[1, 1]]\n", "weights must be 1 rows of 4"),
        "empty.yaml": ("models: []\n", "a bag of models lists its models"),
        "broken.yaml": ("models: [bbbb0002\n", "not a readable bag of models"),
        "mixed.yaml": ("models: [bbbb0002, dddd0004]\n", "the models of a bag must share sources"),
    }
    for name, (text, found) in cases.items():
        (tmp_path / name).write_text(text)
        _one_line_refusal(tmp_path / name, "a bag of models that does not load (" + found)


def test_live_sessions_get_the_chunked_plan_with_a_chunk_of_latency() -> None:
    """As Demucs v2 (a 10 s chunk): a live session is admitted on the chunked-overlap plan, its
    model latency one chunk (7.8 s for the published models), far over a real-time budget."""
    from stemserve.server.engine.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(device="cpu", max_batch=1))
    try:
        config = HTDemucsConfig(channels=8, dconv_comp=4, t_layers=2, t_heads=4, segment=0.5, samplerate=RATE)
        engine.load_model("htdemucs", model=HTDemucs(config).eval())
        session = engine.open_session("htdemucs", RATE, 2)
        assert session.latency.model == int(0.5 * RATE) - 1
    finally:
        engine.shutdown()
