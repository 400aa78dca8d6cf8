"""Mask Inference network: spectrogram -> batch norm -> 4 BLSTM layers -> FC -> sigmoid mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stemserve.models.base import Separator
from stemserve.models.blstm import BLSTMTrunk
from stemserve.models.description import ModelDescription, window_span
from stemserve.models.registry import register

SPEAKERS = ("speaker1", "speaker2")


@dataclass(frozen=True)
class RecurrentSpectrogramConfig:
    """Hyperparameters shared by Mask Inference, Deep Clustering and Chimera.

    Defaults are the 2-speaker speech setting of the Chimera paper (Luo et al. 2017)
    scaled for real-time serving: 8 kHz mono, 32 ms frames (n_fft 256) with 8 ms hop.

    Attributes:
        sources: source names; for speech these are unordered (trained with PIT).
        sample_rate, audio_channels: audio format the model consumes.
        n_fft, hop_length: STFT size / hop in samples.
        window_frames: frames per window the model is trained and served on.
        hidden_size: LSTM units per direction.
        num_layers: stacked BLSTM layers (4 in the seed).
        dropout: dropout between LSTM layers (0.3 on the first 3 of 4 in the seed).
        bidirectional: False makes the trunk causal in frames.
    """

    sources: tuple[str, ...] = SPEAKERS
    sample_rate: int = 8000
    audio_channels: int = 1
    n_fft: int = 256
    hop_length: int = 64
    window_frames: int = 128
    hidden_size: int = 300
    num_layers: int = 4
    dropout: float = 0.3
    bidirectional: bool = True

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1


class RecurrentSpectrogramModel(Separator):
    """Shape checks and description for the BLSTM spectrogram models."""

    config: RecurrentSpectrogramConfig

    def _check(self, mag: torch.Tensor) -> None:
        cfg = self.config
        if mag.dim() != 4 or mag.shape[1] != cfg.audio_channels or mag.shape[2] != cfg.bins:
            raise ValueError(
                f"expected magnitudes (batch, {cfg.audio_channels}, {cfg.bins}, frames), got {tuple(mag.shape)}"
            )

    def describe(self) -> ModelDescription:
        cfg = self.config
        span = window_span(cfg.window_frames, cfg.hop_length, cfg.n_fft)
        return ModelDescription(
            architecture=self.architecture,
            sources=cfg.sources,
            conditioned=False,
            sample_rate=cfg.sample_rate,
            audio_channels=cfg.audio_channels,
            domain="spectrogram",
            causal=not cfg.bidirectional,
            # The LSTM state starts afresh in every window, so nothing outside a window
            # matters; a unidirectional trunk sees only up to the end of the current frame.
            receptive_field=span,
            lookahead=span - 1 if cfg.bidirectional else cfg.n_fft - 1,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            window_frames=cfg.window_frames,
            stride=cfg.hop_length,
            extras=self._extras(),
        )

    def _extras(self) -> dict[str, int | float | str]:
        return {}


class MaskHead(nn.Module):
    """``(B, T, H)`` features -> ``(B, S, C, F, T)`` sigmoid masks."""

    def __init__(self, features: int, sources: int, channels: int, bins: int) -> None:
        super().__init__()
        self.shape = (sources, channels, bins)
        self.linear = nn.Linear(features, sources * channels * bins)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, t, _ = features.shape
        masks = torch.sigmoid(self.linear(features))  # (B, T, S*C*F)
        return masks.view(b, t, *self.shape).permute(0, 2, 3, 4, 1)  # (B, S, C, F, T)


@register("mask_inference", summary="Mask Inference: BLSTM trunk + sigmoid mask head (2-speaker speech)")
class MaskInference(RecurrentSpectrogramModel):
    """Mask Inference network trained with the L1 "mask inference" loss."""

    architecture = "mask_inference"
    config_class = RecurrentSpectrogramConfig

    def __init__(self, config: RecurrentSpectrogramConfig = RecurrentSpectrogramConfig()) -> None:
        super().__init__(config)
        c, f = config.audio_channels, config.bins
        self.trunk = BLSTMTrunk(c * f, config.hidden_size, config.num_layers, config.dropout, config.bidirectional)
        self.mask = MaskHead(self.trunk.output_size, len(config.sources), c, f)

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, S, C, F, T)`` masks in [0, 1]."""
        self._check(mag)
        return self.mask(self.trunk(mag))

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, S, C, F, T)`` magnitude estimates."""
        return self(x) * x[:, None]
