"""Wave-U-Net (Stoller, Ewert & Dixon, 2018): a 1-D U-Net on the raw waveform.

``L`` downsampling blocks (convolution, LeakyReLU, then decimation: every other
time step is dropped) lead to a bottom convolution; ``L`` upsampling blocks
(linear interpolation x2, concatenation with the matching downsampling
block's features, convolution, LeakyReLU) climb back; the input mixture is
concatenated once more and a 1x1 convolution with ``tanh`` outputs the
sources directly, or ``K - 1`` sources plus "mixture minus their sum" (the
paper's difference output layer).

The paper uses valid (unpadded) convolutions and a larger input than output.
Here convolutions are zero-padded ("same") and the input is padded on the
right to a multiple of ``2**L`` and cropped back, so the output has exactly
the input's length for any length. Every output sample then depends on a
bounded neighbourhood of the input, computed exactly by
:func:`dependency_reach` and stated in :meth:`WaveUNet.describe`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stemserve.models.base import Separator, check_waveform
from stemserve.models.description import ModelDescription
from stemserve.models.registry import register

MUSIC_SOURCES = ("drums", "bass", "other", "vocals")


@dataclass(frozen=True)
class WaveUNetConfig:
    """Hyperparameters of Wave-U-Net; defaults are the paper's (Section 3, model M4 and up).

    Attributes (paper symbols):
        sources: output stem names (``K`` = their number).
        sample_rate: audio rate in Hz.
        audio_channels: channels in and out (stereo input/output as in the paper's M5).
        L: number of downsampling (and upsampling) blocks, 12 in the paper.
        Fc: extra filters per block: block ``i`` (1-based) has ``Fc * i`` filters, the
            bottom convolution ``Fc * (L + 1)``; 24 in the paper.
        fd: kernel size of the downsampling (and bottom) convolutions, 15.
        fu: kernel size of the upsampling convolutions, 5.
        leaky_slope: negative slope of the LeakyReLU activations.
        output: ``"direct"`` (K sources, tanh) or ``"difference"`` (K - 1 sources with
            tanh, the last is the mixture minus their sum).
        segment: preferred chunk length in seconds.
    """

    sources: tuple[str, ...] = MUSIC_SOURCES
    sample_rate: int = 44100
    audio_channels: int = 2
    L: int = 12
    Fc: int = 24
    fd: int = 15
    fu: int = 5
    leaky_slope: float = 0.2
    output: Literal["direct", "difference"] = "direct"
    segment: float = 6.0

    def __post_init__(self) -> None:
        for name in ("L", "Fc", "fd", "fu", "audio_channels", "sample_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.output not in ("direct", "difference"):
            raise ValueError(f"output must be 'direct' or 'difference', got {self.output!r}")
        if self.output == "difference" and len(self.sources) < 2:
            raise ValueError("the difference output layer needs at least two sources")
        if self.segment <= 0:
            raise ValueError("segment must be positive")


def _same_padding(kernel_size: int) -> tuple[int, int]:
    """Zero padding (left, right) that keeps the length for ``kernel_size``."""
    return (kernel_size - 1) // 2, kernel_size // 2


class SameConv(nn.Module):
    """1-D convolution with zero "same" padding and a LeakyReLU.

    ``(batch, in_channels, T) -> (batch, out_channels, T)``
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, slope: float) -> None:
        super().__init__()
        self.padding = _same_padding(kernel_size)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size)
        self.activation = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(F.pad(x, self.padding)))


def upsample_linear(x: torch.Tensor) -> torch.Tensor:
    """Linear interpolation x2: ``(batch, channels, T) -> (batch, channels, 2T)``.

    Even outputs are the input samples; odd outputs are the mean of two
    neighbours (the last one repeats the final sample).
    """
    following = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)  # (batch, channels, T)
    middle = 0.5 * (x + following)  # (batch, channels, T)
    return torch.stack([x, middle], dim=-1).flatten(-2)  # (batch, channels, 2T)


class DownBlock(nn.Module):
    """Convolution + LeakyReLU, then decimation.

    ``(batch, in_channels, T) -> (batch, out_channels, T / 2)`` plus the
    full-rate features ``(batch, out_channels, T)`` for the skip connection.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, slope: float) -> None:
        super().__init__()
        self.conv = SameConv(in_channels, out_channels, kernel_size, slope)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x)  # (batch, out_channels, T)
        return features[..., ::2], features  # (batch, out_channels, T/2), (batch, out_channels, T)


class UpBlock(nn.Module):
    """Linear upsampling x2, concatenation with the skip features, convolution + LeakyReLU.

    ``(batch, in_channels, T / 2)`` and skip ``(batch, skip_channels, T)`` ->
    ``(batch, out_channels, T)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, kernel_size: int, slope: float) -> None:
        super().__init__()
        self.conv = SameConv(in_channels + skip_channels, out_channels, kernel_size, slope)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = upsample_linear(x)  # (batch, in_channels, T)
        x = torch.cat([x, skip], dim=1)  # (batch, in_channels + skip_channels, T)
        return self.conv(x)  # (batch, out_channels, T)


class OutputLayer(nn.Module):
    """1x1 convolution on ``[features, mixture]`` to the sources.

    ``(batch, Fc + C, T)`` and mixture ``(batch, C, T)`` -> ``(batch, K, C, T)``.
    """

    def __init__(self, in_channels: int, audio_channels: int, sources: int, difference: bool) -> None:
        super().__init__()
        self.audio_channels = audio_channels
        self.difference = difference
        estimated = sources - 1 if difference else sources
        self.conv = nn.Conv1d(in_channels, estimated * audio_channels, 1)

    def forward(self, x: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        batch, _, samples = x.shape
        y = torch.tanh(self.conv(x))  # (batch, estimated * C, T)
        y = y.view(batch, -1, self.audio_channels, samples)  # (batch, estimated, C, T)
        if self.difference:
            rest = mixture - y.sum(dim=1)  # (batch, C, T)
            y = torch.cat([y, rest[:, None]], dim=1)  # (batch, K, C, T)
        return y


@register("wave_unet", summary="Wave-U-Net (Stoller et al. 2018): 1-D U-Net on waveforms, direct outputs")
class WaveUNet(Separator):
    """Wave-U-Net with same-padded convolutions.

    ``separate(wav)``: ``(batch, audio_channels, samples) -> (batch, sources,
    audio_channels, samples)`` for any ``samples >= 1``.
    """

    architecture = "wave_unet"
    config_class = WaveUNetConfig
    config: WaveUNetConfig

    def __init__(self, config: WaveUNetConfig) -> None:
        super().__init__(config)
        c = config
        widths = [c.Fc * (i + 1) for i in range(c.L)]  # filters of blocks 1..L
        self.down = nn.ModuleList(
            DownBlock(c.audio_channels if i == 0 else widths[i - 1], widths[i], c.fd, c.leaky_slope) for i in range(c.L)
        )
        self.bottom = SameConv(widths[-1], c.Fc * (c.L + 1), c.fd, c.leaky_slope)
        # up[j] climbs from level L - j to level L - j - 1; its skip is down[L - 1 - j].
        self.up = nn.ModuleList(
            UpBlock(c.Fc * (i + 2), widths[i], widths[i], c.fu, c.leaky_slope) for i in reversed(range(c.L))
        )
        difference = c.output == "difference"
        self.output = OutputLayer(widths[0] + c.audio_channels, c.audio_channels, len(c.sources), difference)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Separate ``(batch, channels, samples)`` into ``(batch, sources, channels, samples)``."""
        check_waveform(wav, self.config.audio_channels)
        samples = wav.shape[-1]
        x = F.pad(wav, (0, (-samples) % (2**self.config.L)))  # (batch, C, T), T a multiple of 2^L
        mixture = x
        skips = []
        for block in self.down:
            x, features = block(x)  # (batch, Fc*i, T/2^i), (batch, Fc*i, T/2^(i-1))
            skips.append(features)
        x = self.bottom(x)  # (batch, Fc*(L+1), T/2^L)
        for block in self.up:
            x = block(x, skips.pop())  # (batch, Fc*i, T/2^(i-1))
        x = torch.cat([x, mixture], dim=1)  # (batch, Fc + C, T)
        y = self.output(x, mixture)  # (batch, K, C, T)
        return y[..., :samples]  # (batch, K, C, samples)

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`forward`; ``target`` is unused (all sources are returned)."""
        return self(x)

    def describe(self) -> ModelDescription:
        c = self.config
        past, future = dependency_reach(c)
        return ModelDescription(
            architecture=self.architecture,
            sources=c.sources,
            conditioned=False,
            sample_rate=c.sample_rate,
            audio_channels=c.audio_channels,
            domain="waveform",
            causal=False,
            receptive_field=past + 1,
            lookahead=future,
            stride=2**c.L,
            segment=round(c.segment * c.sample_rate),
            extras={"output": c.output},
        )


def dependency_reach(config: WaveUNetConfig) -> tuple[int, int]:
    """``(past, future)``: the most input samples before / after ``t`` that output ``t`` can depend on.

    Tracks, for every time step of every layer, the first and last input sample
    it depends on (convolutions widen the interval, decimation and upsampling
    re-index it, concatenation takes the union) on a signal long enough that one
    period of ``2**L`` samples in its middle sees no edge, and takes the worst
    case over that period. Zero padding only removes dependencies, so the bounds
    hold at the edges too.
    """
    c = config
    period = 2**c.L
    bound = (c.fd + c.fu + 2) * 2 * period  # generous a-priori bound on either reach
    periods = 2 * math.ceil(bound / period) + 1
    index = np.arange(periods * period)
    first, last = index.copy(), index.copy()

    def conv(first: np.ndarray, last: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray]:
        left, right = _same_padding(kernel)
        pos = np.arange(len(first))
        return first[np.clip(pos - left, 0, len(first) - 1)], last[np.clip(pos + right, 0, len(last) - 1)]

    skips = []
    for _ in range(c.L):
        first, last = conv(first, last, c.fd)
        skips.append((first, last))
        first, last = first[::2], last[::2]
    first, last = conv(first, last, c.fd)
    for _ in range(c.L):
        pos = np.arange(2 * len(first))
        first, last = first[pos // 2], last[np.minimum((pos + 1) // 2, len(last) - 1)]
        skip_first, skip_last = skips.pop()
        first, last = np.minimum(first, skip_first), np.maximum(last, skip_last)
        first, last = conv(first, last, c.fu)
    first, last = np.minimum(first, index), np.maximum(last, index)
    middle = slice((periods // 2) * period, (periods // 2 + 1) * period)
    return int((index - first)[middle].max()), int((last - index)[middle].max())
