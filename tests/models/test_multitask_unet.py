"""Multitask U-Net: heads per STFT frame, separation untouched, losses and metrics, learning from renderer labels."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from stemserve.models import registry
from stemserve.models.data import labels, music
from stemserve.models.multitask_unet import HeadOutputs, MultitaskUNet, multitask_loss, multitask_metrics
from stemserve.models.stft import magnitude_phase, stft
from stemserve.models.unet import MultiSourceUNet

TINY = {
    "n_fft": 1024,
    "hop_length": 512,
    "bins": 256,
    "window_frames": 65,  # odd: the heads' doubled frames must be cut back
    "channels": [8, 16, 32],
    "dropout": 0.0,
    "sources": list(music.SOURCES),
}


def build(**overrides: object) -> MultitaskUNet:
    torch.manual_seed(0)
    model = registry.build("multitask_unet", {**TINY, **overrides})
    assert isinstance(model, MultitaskUNet)
    return model


def test_heads_give_one_value_per_stft_frame() -> None:
    model = build().eval()
    mag = torch.rand(2, 2, 513, 65)
    with torch.no_grad():
        masks, heads = model.forward_heads(mag)
    assert masks.shape == (2, 4, 2, 513, 65)
    assert heads.activity.shape == (2, 4, 65)
    assert heads.voicing.shape == (2, 65)
    assert heads.pitch.shape == (2, 96 - 36 + 1, 65)


def test_separation_is_the_multi_source_unets() -> None:
    model = build().eval()
    plain = MultiSourceUNet(model.config).eval()
    plain.load_state_dict(model.state_dict(), strict=False)  # the heads' weights are the only extras
    mag = torch.rand(1, 2, 513, 65)
    with torch.no_grad():
        assert torch.equal(model.forward_heads(mag)[0], plain(mag))
        assert torch.equal(model.separate(mag), plain.separate(mag))


def test_loss_counts_f0_on_voiced_frames_only() -> None:
    model = build().eval()
    with torch.no_grad():
        _, heads = model.forward_heads(torch.rand(1, 2, 513, 65))
    activity = torch.zeros(1, 4, 65)
    unvoiced = torch.zeros(1, 65)
    _, parts = multitask_loss(heads, activity, unvoiced, model.config)
    assert parts["f0"] == 0.0
    voiced = torch.full((1, 65), 60.0)
    total, parts = multitask_loss(heads, activity, voiced, model.config)
    assert parts["f0"] > 0 and total > 0


def test_metrics_of_perfect_logits() -> None:
    model = build()
    activity = torch.tensor([[[1.0, 0.0, 1.0]] * 4])  # (1, 4, 3)
    f0 = torch.tensor([[60.0, 0.0, 72.0]])
    pitch = torch.full((1, 61, 3), -10.0)
    pitch[0, 60 - 36, 0] = pitch[0, 72 - 36, 2] = 10.0

    heads = HeadOutputs(activity=activity * 20 - 10, voicing=(f0 > 0).float() * 20 - 10, pitch=pitch)
    got = multitask_metrics(model, heads, activity, f0)
    assert got["raw_pitch_accuracy"] == 1.0 and got["voicing_recall"] == 1.0 and got["voicing_false_alarm"] == 0.0
    assert all(got[f"activity_f1/{s}"] == 1.0 for s in music.SOURCES)
    assert model.pitch_of(heads).tolist() == [[60.0, 0.0, 72.0]]


@pytest.fixture(scope="module")
def window(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A rendered track's magnitudes over 65 frames (0.75 s) and the labels the renderer's notes give them:
    a window where the lead sings about a third of the time, on two pitches, and the drums come in."""
    track = music.render_track(tmp_path_factory.mktemp("mt"), "train", 0, 31, music.RenderSettings(seconds=4.0))
    mixture = torch.from_numpy(sf.read(str(track / "mixture.wav"), dtype="float32")[0].T.copy())
    start = 66150  # 1.5 s in
    n_fft, hop = TINY["n_fft"], TINY["hop_length"]
    segment = mixture[:, start : start + (65 - 1) * hop + n_fft]
    mag, _ = magnitude_phase(stft(segment, n_fft, hop))  # (2, 513, 65)
    got = labels.frame_labels(labels.read_notes(track), music.SOURCES, start, 65, n_fft, hop, 44100)
    assert 0.2 < got.voiced.mean() < 0.8 and len(set(got.f0.tolist()) - {0.0}) >= 2
    assert 0.2 < got.activity[0].mean() < 0.8  # drums
    return mag[None], torch.from_numpy(got.activity)[None], torch.from_numpy(got.f0)[None]


def test_the_heads_learn_the_renderers_labels(window: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """Gradients reach every head: 200 steps on one window fit its labels (memorising, not generalising)."""
    torch.set_num_threads(1)
    model = build(activity_weight=1.0, voicing_weight=1.0, f0_weight=1.0).train()
    mag, activity, f0 = window
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        _, heads = model.forward_heads(mag)
        loss, _ = multitask_loss(heads, activity, f0, model.config)
        first = float(loss.detach()) if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        _, heads = model.forward_heads(mag)
    got = multitask_metrics(model, heads, activity, f0)
    assert float(loss.detach()) < 0.2 * first
    assert got["raw_pitch_accuracy"] > 0.9 and got["voicing_recall"] > 0.9 and got["voicing_false_alarm"] < 0.1
    playing = [s for k, s in enumerate(music.SOURCES) if activity[0, k].any()]
    assert playing and all(got[f"activity_f1/{s}"] > 0.9 for s in playing)


def test_bad_head_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="pitch_max"):
        build(pitch_min=60, pitch_max=60)
    with pytest.raises(ValueError, match="weights"):
        build(f0_weight=-1.0)
    assert np.isfinite(build().config.activity_weight)
