"""STFT front end: frame convention, perfect reconstruction, stereo independence."""

from __future__ import annotations

import torch

from stemserve.models import stft


def test_frames_cover_n_fft_samples_every_hop_without_centring() -> None:
    wav = torch.zeros(1, 1000)
    wav[0, 300] = 1.0
    spec = stft.stft(wav, n_fft=256, hop_length=64)
    assert spec.shape == (1, 129, stft.num_frames(1000, 256, 64)) == (1, 129, 12)
    energy = spec.abs().sum(1)[0]
    # sample 300 lies in frames k with k*64 <= 300 < k*64 + 256, i.e. k = 1..4
    assert torch.nonzero(energy > 1e-9).flatten().tolist() == [1, 2, 3, 4]


def test_istft_inverts_stft_where_windows_overlap() -> None:
    wav = torch.randn(2, 2, 4096, dtype=torch.float64)
    spec = stft.stft(wav, 512, 128)
    back = stft.istft(spec, 512, 128)
    assert back.shape[-1] == (spec.shape[-1] - 1) * 128 + 512
    inner = slice(512, back.shape[-1] - 512)
    torch.testing.assert_close(back[..., inner], wav[..., : back.shape[-1]][..., inner])


def test_channels_are_transformed_independently() -> None:
    wav = torch.randn(2, 2048)
    both = stft.stft(wav, 256, 64)
    torch.testing.assert_close(both[1], stft.stft(wav[1:], 256, 64)[0])


def test_magnitude_phase_recombine_to_the_spectrum() -> None:
    spec = stft.stft(torch.randn(1, 1024), 128, 32)
    mag, phase = stft.magnitude_phase(spec)
    torch.testing.assert_close(mag * phase, spec)
