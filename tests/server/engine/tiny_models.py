"""Tiny test-local separators, one per streaming family, implementing the model contract.

Random weights: streaming equivalence is about buffering, not quality. Each
model's output depends on context in the way its family allows (a whole
spectrogram window; a causal receptive field with stride > 1; a whole chunk),
so buffering mistakes show up as mismatches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stemserve.models.base import Separator
from stemserve.models.description import ModelDescription, window_span

# A U-Net preset's config shrunk to test size (16 kHz stereo, 8-frame windows), for registry.build.
TINY_UNET_CONFIG = {
    "sample_rate": 16000,
    "audio_channels": 2,
    "n_fft": 64,
    "hop_length": 16,
    "bins": 32,
    "window_frames": 8,
    "channels": (4, 8),
    "dropout": 0.0,
}


@dataclass(frozen=True)
class TinySpecConfig:
    sources: tuple[str, ...] = ("vocals", "drums", "bass")
    sample_rate: int = 16000
    channels: int = 2
    n_fft: int = 64
    hop_length: int = 16
    window_frames: int = 8
    conditioned: bool = False
    identity: bool = False
    seed: int = 0


class TinySpecNet(Separator):
    """Spectrogram mask model: a 3x3 conv over (bins, frames) plus a whole-window term.

    ``(B, C, F, W)`` magnitudes -> ``(B, S, C, F, W)`` (``S = 1`` when conditioned).
    ``identity=True``: every mask is 1 (perfect reconstruction, for impulse tests).
    """

    architecture = "tiny_spec"
    config_class = TinySpecConfig
    config: TinySpecConfig

    def __init__(self, config: TinySpecConfig = TinySpecConfig()) -> None:
        super().__init__(config)
        torch.manual_seed(config.seed)
        c = config.channels
        out = 1 if config.conditioned else len(config.sources)
        self.out = out
        self.conv = nn.Conv2d(c, out * c, 3, padding=1)
        self.window_term = nn.Linear(c, out * c)
        self.embed = nn.Embedding(len(config.sources), out * c)

    def describe(self) -> ModelDescription:
        cfg = self.config
        span = window_span(cfg.window_frames, cfg.hop_length, cfg.n_fft)
        return ModelDescription(
            architecture=self.architecture,
            sources=cfg.sources,
            conditioned=cfg.conditioned,
            sample_rate=cfg.sample_rate,
            audio_channels=cfg.channels,
            domain="spectrogram",
            causal=False,
            receptive_field=span,
            lookahead=span - 1,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            window_frames=cfg.window_frames,
            stride=cfg.hop_length,
        )

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        b, c, f, w = x.shape
        if self.config.identity:
            return x[:, None].expand(b, self.out, c, f, w).clone()
        if w != self.config.window_frames:
            raise ValueError(f"trained on {self.config.window_frames} frames, got {w}")
        z = torch.log1p(x)
        logits = self.conv(z) + self.window_term(z.mean(dim=(2, 3)))[:, :, None, None]
        if self.config.conditioned:
            if target is None:
                raise ValueError("conditioned model needs a target")
            logits = logits + self.embed(target)[:, :, None, None]
        masks = torch.sigmoid(logits).view(b, self.out, c, f, w)
        return masks * x[:, None]


@dataclass(frozen=True)
class TinyCausalConfig:
    sources: tuple[str, ...] = ("speech", "noise")
    sample_rate: int = 8000
    channels: int = 1
    stride: int = 4
    hidden: int = 8
    identity: bool = False
    seed: int = 0


class TinyCausalNet(Separator):
    """Causal waveform model with stride 4: encoder frames, a dilated causal conv, a decoder.

    Frame ``k`` (encoder kernel 2*stride) covers input samples ``[k*s - s, k*s + s)``;
    the frame conv sees frames ``k-4, k-2, k``; output samples ``[k*s, (k+1)*s)``
    come from frame ``k``. So an output depends on ``s - 1`` future samples
    (lookahead) and on ``5*s + 1`` samples up to itself... stated generously
    below as the receptive field. ``(B, C, T) -> (B, S, C, T)``.
    """

    architecture = "tiny_causal"
    config_class = TinyCausalConfig
    config: TinyCausalConfig

    def __init__(self, config: TinyCausalConfig = TinyCausalConfig()) -> None:
        super().__init__(config)
        torch.manual_seed(config.seed)
        s, c, h = config.stride, config.channels, config.hidden
        self.encoder = nn.Conv1d(c, h, 2 * s, stride=s)
        self.frames = nn.Conv1d(h, h, 3, dilation=2)
        self.decoder = nn.ConvTranspose1d(h, len(config.sources) * c, s, stride=s)

    def describe(self) -> ModelDescription:
        cfg = self.config
        s = cfg.stride
        return ModelDescription(
            architecture=self.architecture,
            sources=cfg.sources,
            conditioned=False,
            sample_rate=cfg.sample_rate,
            audio_channels=cfg.channels,
            domain="waveform",
            causal=True,
            receptive_field=1 if cfg.identity else 6 * s + 1,
            lookahead=0 if cfg.identity else s - 1,
            stride=s,
        )

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        b, c, t = x.shape
        n = len(self.config.sources)
        if self.config.identity:
            return x[:, None].expand(b, n, c, t).clone()
        s = self.config.stride
        padded = F.pad(x, (s, -t % s))  # left: the encoder's extra frame; right: whole frames
        frames = torch.tanh(self.encoder(padded))  # (B, H, ceil(t / s))
        frames = torch.tanh(self.frames(F.pad(frames, (4, 0))))  # causal over frames
        out = self.decoder(frames)[..., :t]  # (B, S*C, t)
        return out.view(b, n, c, t)


@dataclass(frozen=True)
class TinyChunkConfig:
    sources: tuple[str, ...] = ("a", "b")
    sample_rate: int = 8000
    channels: int = 2
    segment: int = 256
    lookahead: int = 32
    identity: bool = False
    seed: int = 0


class TinyChunkNet(Separator):
    """Non-causal waveform model: a centred conv plus a term from the whole chunk's mean.

    Its output depends on everything in the chunk, so only the chunked plan defines it.
    ``(B, C, T) -> (B, S, C, T)``.
    """

    architecture = "tiny_chunk"
    config_class = TinyChunkConfig
    config: TinyChunkConfig

    def __init__(self, config: TinyChunkConfig = TinyChunkConfig()) -> None:
        super().__init__(config)
        torch.manual_seed(config.seed)
        c, n = config.channels, len(config.sources)
        self.conv = nn.Conv1d(c, n * c, 9, padding=4)
        self.global_term = nn.Linear(c, n * c)

    def describe(self) -> ModelDescription:
        cfg = self.config
        return ModelDescription(
            architecture=self.architecture,
            sources=cfg.sources,
            conditioned=False,
            sample_rate=cfg.sample_rate,
            audio_channels=cfg.channels,
            domain="waveform",
            causal=False,
            receptive_field=None,
            lookahead=cfg.lookahead,
            segment=cfg.segment,
        )

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        b, c, t = x.shape
        n = len(self.config.sources)
        if self.config.identity:
            return x[:, None].expand(b, n, c, t).clone()
        y = torch.tanh(self.conv(x) + self.global_term(x.mean(dim=-1))[:, :, None])
        return y.view(b, n, c, t) * x[:, None]


class Slow(TinySpecNet):
    """TinySpecNet that takes ``delay`` seconds per forward pass (late-block tests)."""

    delay = 0.05

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        time.sleep(self.delay)
        return super().separate(x, target)


class Fragile(TinySpecNet):
    """TinySpecNet that raises on any input magnitude above 1e3 (isolation tests)."""

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if bool((x > 1e3).any()):
            raise RuntimeError("input out of range")
        return super().separate(x, target)


class Recording(TinySpecNet):
    """TinySpecNet that records the batch size of every forward pass (warm-up tests)."""

    def __init__(self, config: TinySpecConfig = TinySpecConfig()) -> None:
        super().__init__(config)
        self.batch_sizes: list[int] = []

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return super().separate(x, target)
