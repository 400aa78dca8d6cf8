"""Event-mixing augmentation: deterministic per seed, mixture == sum(stems) preserved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data.augment import (
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


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(drop_probability=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(gain_db=(3.0, -3.0))
    with pytest.raises(ValueError):
        augment_stems(torch.zeros(2, 10), STRONG, generator_for(0))
