"""The bundled weights load (without pickle) and separate held-out audio better than the mixture.

The clips in tests/assets/heldout/ come from seeds that no training, validation or
test split used. The margins are well below what the models reach there (see the
README table), and far above what an untrained or broken model gets (it scores at
or below the mixture baseline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemserve.models.apply import separate_signal
from stemserve.models.checkpoint import load_checkpoint
from stemserve.models.evaluate import best_permutation, si_sdr
from stemserve.server.engine.pool import bundled_models

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = ROOT / "tests" / "assets" / "heldout"


def _read(path: Path) -> np.ndarray:
    audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T)


def _weights(name: str) -> Path:
    path = ROOT / "models" / "weights" / f"{name}.safetensors"
    assert path.is_file(), f"bundled weights {path} missing"
    return path


def test_the_bundled_models_are_the_ones_serve_uses() -> None:
    names = list(bundled_models())
    assert names[0] == "conditioned_unet"  # the DAW default comes first
    assert {"conditioned_unet", "chimera", "conv_tasnet_causal", "demucs_causal_music"} <= set(names)
    for path in bundled_models().values():
        assert path is not None and Path(path).stat().st_size <= 25 * 2**20


@torch.no_grad()
def test_conditioned_unet_beats_the_mixture_on_a_held_out_song() -> None:
    model = load_checkpoint(_weights("conditioned_unet")).eval()
    sources = model.describe().sources
    mixture = _read(HELDOUT / "music" / "mixture.flac")
    stems = np.stack([_read(HELDOUT / "music" / f"{s}.flac") for s in sources])
    estimates = separate_signal(model, torch.from_numpy(mixture)).numpy()
    gains = {s: si_sdr(ref, est) - si_sdr(ref, mixture) for s, ref, est in zip(sources, stems, estimates, strict=True)}
    # Every stem improves on the mixture, and on average by a clear margin.
    assert all(g > 0.5 for g in gains.values()), gains
    assert np.mean(list(gains.values())) > 3.0, gains


@torch.no_grad()
@pytest.mark.parametrize("index", [0, 1])
def test_chimera_separates_two_held_out_speakers(index: int) -> None:
    """Measured SI-SDR gains: +1.9 / +5.0 dB on clip 0, +10.3 / +6.5 dB on clip 1."""
    model = load_checkpoint(_weights("chimera")).eval()
    mixture = _read(HELDOUT / "speech" / f"mix_{index}.flac")
    refs = np.stack([_read(HELDOUT / "speech" / f"s{k}_{index}.flac") for k in (1, 2)])
    estimates = separate_signal(model, torch.from_numpy(mixture)).numpy()
    estimates = estimates[best_permutation(refs, estimates)]  # speakers are unordered
    gains = [si_sdr(r, e) - si_sdr(r, mixture) for r, e in zip(refs, estimates, strict=True)]
    assert np.mean(gains) > 3.0, gains


@torch.no_grad()
def test_causal_conv_tasnet_separates_held_out_speakers() -> None:
    model = load_checkpoint(_weights("conv_tasnet_causal")).eval()
    assert model.describe().causal
    gains = []
    for index in (0, 1):
        mixture = _read(HELDOUT / "speech" / f"mix_{index}.flac")
        refs = np.stack([_read(HELDOUT / "speech" / f"s{k}_{index}.flac") for k in (1, 2)])
        estimates = separate_signal(model, torch.from_numpy(mixture)).numpy()
        estimates = estimates[best_permutation(refs, estimates)]
        gains += [si_sdr(r, e) - si_sdr(r, mixture) for r, e in zip(refs, estimates, strict=True)]
    # CPU training: a modest but real improvement (measured: +2.3 ... +6.0 dB, mean +4.1).
    assert np.mean(gains) > 1.0 and min(gains) > 0.0, gains


@torch.no_grad()
def test_low_latency_causal_demucs_separates_drums_and_bass_of_a_held_out_song() -> None:
    """Measured SI-SDR gains on the held-out song: drums +6.8, bass +13.5, other -1.8, vocals -0.6 dB.

    (Stage 1 numbers; stage 2 is 8500 CPU steps on 104 varied songs.) Drums and bass are learnt, other
    and vocals are not yet (README table).
    """
    model = load_checkpoint(_weights("demucs_causal_music")).eval()
    description = model.describe()
    assert description.causal and description.stream_delay is not None
    assert description.lookahead <= 0.050 * description.sample_rate  # <= 50 ms at 44.1 kHz
    sources = description.sources
    mixture = _read(HELDOUT / "music" / "mixture.flac")
    stems = np.stack([_read(HELDOUT / "music" / f"{s}.flac") for s in sources])
    estimates = separate_signal(model, torch.from_numpy(mixture)).numpy()
    gains = {s: si_sdr(ref, est) - si_sdr(ref, mixture) for s, ref, est in zip(sources, stems, estimates, strict=True)}
    assert gains["drums"] > 4.0 and gains["bass"] > 8.0, gains
    assert np.mean(list(gains.values())) > 3.0, gains
