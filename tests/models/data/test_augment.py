"""Event-mixing augmentation: deterministic per seed, mixture == sum(stems) preserved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stemserve.models.data.augment import (
    NO_AUGMENT,
    AugmentConfig,
    augment_stems,
    generator_for,
    random_crop,
    remix_batch,
    render_events,
    sample_events,
)

STRONG = AugmentConfig(gain_db=(-9.0, 3.0), drop_probability=0.3, remix_probability=1.0, channel_swap_probability=0.5)


def _stems(seed: int = 0, sources: int = 4, length: int = 1000) -> torch.Tensor:
    return torch.randn(sources, 2, length, generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_augmentation() -> None:
    stems = _stems()
    a = augment_stems(stems, STRONG, generator_for(1, 2, 3))
    b = augment_stems(stems, STRONG, generator_for(1, 2, 3))
    c = augment_stems(stems, STRONG, generator_for(1, 2, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augmentation_keeps_mixture_equal_to_stem_sum() -> None:
    for seed in range(20):
        out = augment_stems(_stems(seed), STRONG, generator_for(seed))
        mixture = out.sum(0)
        assert torch.allclose(mixture, out.sum(0))
        assert out.abs().amax((1, 2)).gt(0).any()  # keep_one: never all stems dropped
        # Each stem is the original, scaled (maybe channel-swapped), or silent.
        original = _stems(seed)
        for s in range(4):
            candidates = [original[s], original[s].flip(0)]
            ratios = [float((out[s] * c).sum() / (c * c).sum()) for c in candidates]
            assert any(torch.allclose(out[s], r * c, atol=1e-5) for r, c in zip(ratios, candidates, strict=True))


def test_numpy_in_numpy_out() -> None:
    stems = _stems().numpy()
    out = augment_stems(stems, STRONG, generator_for(0))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == stems.shape
    assert np.array_equal(out, augment_stems(stems, STRONG, generator_for(0)))


def test_no_augment_is_identity() -> None:
    stems = _stems()
    assert torch.equal(augment_stems(stems, NO_AUGMENT, generator_for(0)), stems)


def test_drop_probability_one_keeps_exactly_one_stem() -> None:
    config = AugmentConfig(drop_probability=1.0)
    out = augment_stems(_stems(), config, generator_for(0))
    assert int(out.abs().amax((1, 2)).gt(0).sum()) == 1


def test_remix_takes_each_stem_from_its_own_track_and_offset() -> None:
    lengths = [5000, 6000, 7000, 8000]
    events = sample_events(0, lengths, 4, 1000, STRONG, generator_for(3))
    assert len({(e.track, e.offset) for e in events}) > 1
    assert all(0 <= e.offset <= lengths[e.track] - 1000 for e in events)
    same = sample_events(0, lengths, 4, 1000, NO_AUGMENT, generator_for(3))
    assert {(e.track, e.offset) for e in same} == {(0, same[0].offset)}


def test_render_events_reads_what_the_events_say() -> None:
    tracks = [_stems(i, length=3000) for i in range(3)]
    events = sample_events(1, [3000] * 3, 4, 500, STRONG, generator_for(9))
    stems = render_events(events, lambda t, s, o, n: tracks[t][s, :, o : o + n], 500)
    assert stems.shape == (4, 2, 500)
    for e, stem in zip(events, stems, strict=True):
        source = tracks[e.track][e.stem, :, e.offset : e.offset + 500]
        expected = torch.zeros_like(source) if e.dropped else e.gain * (source.flip(0) if e.swap else source)
        assert torch.allclose(stem, expected)


def test_remix_batch_permutes_each_stem_across_the_batch() -> None:
    batch = torch.stack([_stems(i, length=100) for i in range(6)])  # (B, S, C, T)
    out = remix_batch(batch, generator_for(0))
    assert out.shape == batch.shape
    for s in range(4):
        rows = {tuple(batch[b, s, 0, :3].tolist()) for b in range(6)}
        assert {tuple(out[b, s, 0, :3].tolist()) for b in range(6)} == rows
    assert torch.equal(out, remix_batch(batch, generator_for(0)))
    assert isinstance(remix_batch(batch.numpy(), generator_for(0)), np.ndarray)


def test_random_crop_pads_short_audio() -> None:
    audio = torch.ones(2, 10)
    assert torch.equal(random_crop(audio, 16, generator_for(0))[:, 10:], torch.zeros(2, 6))
    crop = random_crop(np.arange(100.0), 10, generator_for(1))
    assert crop.shape == (10,) and np.all(np.diff(crop) == 1)


def test_without_repitch_the_random_stream_is_what_it_always_was() -> None:
    # Drawn before repitching existed: runs that do not repitch must reproduce exactly.
    events = sample_events(0, [5000, 7000, 9000], 4, 1000, STRONG, generator_for(11))
    assert [(e.track, e.offset, round(e.gain, 6), e.swap, e.dropped, e.speed) for e in events] == [
        (2, 7412, 0.906224, False, True, 1.0),
        (0, 660, 0.91689, True, False, 1.0),
        (0, 910, 0.663432, False, False, 1.0),
        (0, 1210, 0.484227, False, True, 1.0),
    ]


REPITCH = AugmentConfig(remix_probability=0.0, repitch_probability=1.0, repitch_semitones=2.0)


def test_repitch_draws_one_factor_per_song_within_the_semitone_range() -> None:
    factors = []
    for seed in range(40):
        events = sample_events(0, [44100], 4, 8000, REPITCH, generator_for(seed))
        assert len({e.speed for e in events}) == 1  # the stems of one song stay in time and in tune
        factors.append(events[0].speed)
        assert 0 <= events[0].offset <= 44100 - round(8000 * events[0].speed)  # the longer read still fits
    semitones = 12 * np.log2(factors)
    assert semitones.min() >= -2.0 and semitones.max() <= 2.0
    assert semitones.min() < -1.0 and semitones.max() > 1.0  # the range is used, both ways
    remixed = sample_events(
        0, [44100] * 4, 4, 8000, AugmentConfig(remix_probability=1.0, repitch_probability=1.0), generator_for(0)
    )
    assert len({e.speed for e in remixed}) == 4  # stems of different songs get their own factors


def test_a_repitched_stem_sounds_at_the_shifted_pitch() -> None:
    rate, segment = 8000, 8000
    t = torch.arange(3 * rate) / rate
    tone = torch.sin(2 * torch.pi * 440.0 * t).repeat(4, 2, 1)  # (S, C, T): a 440 Hz sine in every stem
    events = sample_events(0, [tone.shape[-1]], 4, segment, REPITCH, generator_for(5))
    stems = render_events(events, lambda _t, s, o, n: tone[s, :, o : o + n], segment)
    assert stems.shape == (4, 2, segment)
    spectrum = torch.fft.rfft(stems[0, 0] * torch.hann_window(segment)).abs()
    peak_hz = float(spectrum.argmax()) * rate / segment
    assert events[0].speed != 1.0
    assert peak_hz == pytest.approx(440.0 * events[0].speed, abs=2.0)
    expected_rms = events[0].gain / np.sqrt(2) * (0 if events[0].dropped else 1)
    assert float(stems[0, 0, 1000:-1000].pow(2).mean().sqrt()) == pytest.approx(expected_rms, rel=0.02)


def test_repitched_in_memory_stems_keep_their_shape_and_mixture() -> None:
    stems = _stems(length=4000)
    out = augment_stems(stems, REPITCH, generator_for(2))
    assert out.shape == stems.shape and torch.isfinite(out).all()
    for s in range(4):  # resampled noise is no longer a scaled copy of the original
        kept = out[s]
        if kept.abs().sum() == 0:
            continue  # dropped
        cosine = float((kept * stems[s]).sum() / (kept.norm() * stems[s].norm()))
        assert abs(cosine) < 0.9


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(drop_probability=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(gain_db=(3.0, -3.0))
    with pytest.raises(ValueError):
        AugmentConfig(repitch_probability=-0.1)
    with pytest.raises(ValueError):
        AugmentConfig(repitch_semitones=13.0)
    with pytest.raises(ValueError):
        augment_stems(torch.zeros(2, 10), STRONG, generator_for(0))
