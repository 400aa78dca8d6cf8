"""Multitask training end to end: loaders emit the renderer's labels aligned to each example's STFT frames
(through crops, remixing, dropped stems and repitching), `train` lowers every head's loss, `eval` scores the heads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stemserve.models import registry
from stemserve.models.checkpoint import load_checkpoint
from stemserve.models.data import labels, music
from stemserve.models.data.augment import AugmentConfig, StemEvent
from stemserve.models.data.datasets import MusicStems
from stemserve.models.evaluate import evaluate
from stemserve.models.multitask_unet import MultitaskUNet
from stemserve.models.train import TrainingObjective, TrainOptions, choose_task, train
from tests.models.data.tiny import render_music

N_FFT, HOP = 1024, 256
TINY = {
    "n_fft": 1024,
    "hop_length": 512,
    "bins": 256,
    "window_frames": 33,
    "channels": [8, 16, 32],
    "dropout": 0.0,
    "activity_weight": 1.0,
    "voicing_weight": 1.0,
    "f0_weight": 1.0,
}
SILENT = 1e-10  # mean square of a frame: digital silence (FluidSynth's float output has no noise floor)
AUDIBLE = 1e-7  # -70 dBFS


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_music(tmp_path_factory.mktemp("multitask") / "music", seed=3, seconds=3.0)


def frame_power(audio: torch.Tensor) -> np.ndarray:
    """``(S, C, T)`` stems -> ``(S, N)`` mean square of each STFT frame's samples (no centring)."""
    frames = audio.unfold(-1, N_FFT, HOP)  # (S, C, N, n_fft)
    return frames.pow(2).mean(dim=(1, 3)).numpy()


def test_labels_follow_the_audio_through_augmentation(data: Path) -> None:
    """Wherever a stem's rendered audio is silent in a frame its label is 0, and wherever the label
    says it plays the audio is there, for crops whose stems come from other songs, other offsets,
    other speeds, or are dropped."""
    augment = AugmentConfig(drop_probability=0.3, remix_probability=0.7, repitch_probability=0.5)
    stems_set = MusicStems(
        data, "train", 1.5, augment=augment, seed=1, items_per_track=12, label_frames=(N_FFT, HOP)
    )  # fmt: skip
    silent_frames = playing_frames = repitched = 0
    for index in range(len(stems_set)):
        _, stems, activity, f0 = stems_set[index]
        power = frame_power(stems)
        assert activity.shape == power.shape == (4, (stems.shape[-1] - N_FFT) // HOP + 1)
        active = activity.numpy() > 0.5
        silent = power < SILENT
        assert not (active & silent).any(), f"example {index}: a label says a silent stem plays"
        assert (power[active] > AUDIBLE).all(), f"example {index}: an active label where the stem is inaudible"
        lead = music.SOURCES.index(labels.LEAD)
        assert torch.equal(f0 > 0, activity[lead] > 0.5)  # the lead is voiced exactly where it plays
        silent_frames += int(silent.sum())
        playing_frames += int(active.sum())
        _, _, events = stems_set._example(index)
        repitched += any(e.speed != 1.0 for e in events)
    # The check had both kinds of frame to judge, and repitched examples among them.
    assert silent_frames > 100 and playing_frames > 1000 and repitched > 3


def test_labels_of_an_event_are_the_tracks_frame_labels_at_its_offset_and_speed(data: Path) -> None:
    stems_set = MusicStems(data, "train", 1.0, label_frames=(N_FFT, HOP))
    notes = labels.read_notes(stems_set.tracks[1])
    offset, samples = 22050, 44100
    plain = [StemEvent(s, 1, offset, 1.0, False, False) for s in range(4)]
    activity, f0 = stems_set.labels_of(plain, samples)
    frames = (samples - N_FFT) // HOP + 1
    want = labels.frame_labels(notes, music.SOURCES, offset, frames, N_FFT, HOP, 44100)
    assert np.array_equal(activity.numpy(), want.activity) and np.array_equal(f0.numpy(), want.f0)
    assert want.voiced.any() and not want.voiced.all()

    speed = 2.0 ** (2 / 12)  # two semitones up, 12 % faster
    fast = [StemEvent(s, 1, offset, 0.5, True, s == 0, speed) for s in range(4)]  # drums dropped
    activity, f0 = stems_set.labels_of(fast, samples)
    times = offset / 44100 + (np.arange(frames) * HOP + N_FFT / 2) / 44100 * speed
    lead = labels.lead_f0_at(notes[labels.LEAD], times)
    assert not activity[0].any()
    assert np.allclose(f0.numpy(), np.where(lead > 0, lead + 2.0, 0.0), atol=1e-4)
    assert np.array_equal(activity[1].numpy(), labels.activity_at(notes["bass"], times))


def test_other_models_get_no_labels(data: Path) -> None:
    plain = registry.build("multi_unet", {k: v for k, v in TINY.items() if not k.endswith("_weight")})
    multitask = registry.build("multitask_unet", TINY)
    assert choose_task(plain).objective == "mask_inference"
    assert choose_task(multitask).objective == "multitask"
    assert len(MusicStems(data, "train", 1.0)[0]) == 2


def test_training_lowers_every_heads_loss(data: Path, tmp_path: Path) -> None:
    """A few steps of `train` on the tiny rendered songs lower each head's loss on the training examples."""
    torch.set_num_threads(1)
    options = TrainOptions(
        model="multitask_unet", data=str(data), out=str(tmp_path / "mt.safetensors"), steps=40, batch=4, lr=3e-3,
        valid_every=40, config=TINY, threads=1, progress=False, seed=5,
    )  # fmt: skip
    torch.manual_seed(options.seed)  # train builds its model right after seeding: the same start
    start = registry.build("multitask_unet", TINY)
    task = choose_task(start)
    examples = MusicStems(
        data, "train", task.segment_samples / 44100, sources=start.describe().sources, items_per_track=4, seed=9,
        label_frames=(1024, 512),
    )  # fmt: skip
    batch = [torch.stack(items) for items in zip(*[examples[i] for i in range(len(examples))], strict=True)]

    def head_losses(model: MultitaskUNet) -> dict[str, float]:
        objective = TrainingObjective(model.eval(), task)
        with torch.no_grad():
            objective(batch[0], batch[1], None, None, batch[2], batch[3])
        return objective.parts

    before = head_losses(start)
    result = train(options)
    trained = load_checkpoint(result.checkpoint)
    assert isinstance(trained, MultitaskUNet) and result.best_step == 40
    after = head_losses(trained)
    for part in ("separation", "activity", "voicing", "f0"):
        assert after[part] < before[part], f"{part}: {before[part]:.4f} -> {after[part]:.4f}"
    assert {"val_activity", "val_voicing", "val_f0", "val_separation"} <= set(result.history[-1])

    report, _ = evaluate(trained, data, split="train", keep_first=False)  # the tiny test song has no lead
    heads = report["heads"]
    assert heads["frames"] == 2 * ((3 * 44100 - 1024) // 512 + 1)
    assert 0.0 <= heads["raw_pitch_accuracy"] <= 1.0 and not math.isnan(heads["voicing_false_alarm"])
    assert set(heads) >= {f"activity_f1/{s}" for s in music.SOURCES}
