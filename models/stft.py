"""The shared STFT front end: magnitude in, mixture phase for inversion.

No centring and no implicit padding: frame ``k`` covers input samples
``[k * hop, k * hop + n_fft)``. That is the convention a streaming engine can
reproduce block by block, so offline and streaming paths share it. Channels
(stereo) are carried as a leading dimension and never mixed.

Inversion is weighted overlap-add with a periodic Hann window used for both
analysis and synthesis, normalised by the summed squared window, which is
exact wherever that sum is non-zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hann_window(n_fft: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Periodic Hann window of ``n_fft`` samples."""
    return torch.hann_window(n_fft, periodic=True, device=device, dtype=dtype)


def num_frames(num_samples: int, n_fft: int, hop_length: int) -> int:
    """Frames :func:`stft` returns for ``num_samples`` input samples (0 if too short)."""
    if num_samples < n_fft:
        return 0
    return 1 + (num_samples - n_fft) // hop_length


def stft(wav: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """Complex STFT.

    Args:
        wav: ``(..., samples)`` real waveform.
    Returns:
        ``(..., n_fft // 2 + 1, frames)`` complex spectrogram, ``frames = num_frames(samples)``.
    """
    if wav.shape[-1] < n_fft:
        raise ValueError(f"need at least n_fft={n_fft} samples, got {wav.shape[-1]}")
    frames = wav.unfold(-1, n_fft, hop_length)  # (..., frames, n_fft)
    window = hann_window(n_fft, wav.device, wav.dtype)
    spec = torch.fft.rfft(frames * window, dim=-1)  # (..., frames, bins)
    return spec.transpose(-1, -2)


def overlap_add(frames: torch.Tensor, hop_length: int) -> torch.Tensor:
    """Overlap-add ``(..., n_fft, frames)`` time frames into ``(..., (frames-1)*hop + n_fft)``."""
    lead = frames.shape[:-2]
    n_fft, count = frames.shape[-2], frames.shape[-1]
    length = (count - 1) * hop_length + n_fft
    flat = frames.reshape(-1, n_fft, count)
    out = F.fold(flat, output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop_length))
    return out.reshape(*lead, length)


def window_sum_square(
    count: int, n_fft: int, hop_length: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Sum of squared synthesis windows over ``count`` frames, ``((count-1)*hop + n_fft,)``."""
    window = hann_window(n_fft, device, dtype) ** 2
    return overlap_add(window[:, None].expand(n_fft, count), hop_length)


def istft(spec: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """Inverse of :func:`stft` by weighted overlap-add.

    Args:
        spec: ``(..., n_fft // 2 + 1, frames)`` complex spectrogram.
    Returns:
        ``(..., (frames - 1) * hop + n_fft)`` waveform. Samples not covered by a
        window with non-zero weight (the very first and last of a Hann-windowed
        signal) are zero.
    """
    window = hann_window(n_fft, spec.device, spec.real.dtype)
    frames = torch.fft.irfft(spec.transpose(-1, -2), n=n_fft, dim=-1) * window  # (..., frames, n_fft)
    out = overlap_add(frames.transpose(-1, -2), hop_length)
    norm = window_sum_square(spec.shape[-1], n_fft, hop_length, spec.device, out.dtype)
    return torch.where(norm > 1e-8, out / norm.clamp_min(1e-8), torch.zeros_like(out))


def magnitude_phase(spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a complex spectrogram into magnitude and unit-modulus phase."""
    mag = spec.abs()
    phase = torch.where(mag > 0, spec / mag.clamp_min(1e-20), torch.ones_like(spec))
    return mag, phase
