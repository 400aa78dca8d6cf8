"""Spectrogram U-Net (Jansson et al., 2017) and its conditioned and multi-source variants.

Three architectures share one encoder/decoder (:class:`UNetCore`):

* :class:`UNet` — one network per source, as in the paper.
* :class:`ConditionedUNet` — one network for all sources; a target index drives
  FiLM layers (Perez et al., 2018; Meseguer-Brocal & Peeters, 2019) that scale and
  shift every encoder feature map per channel, so the plugin's "target source"
  parameter chooses the stem.
* :class:`MultiSourceUNet` — one network, K masks at once (Spleeter-style multi-stem).

All take a magnitude spectrogram window of fixed shape ``(channels, bins, frames)``
and return sigmoid masks times the mixture magnitude. Stereo channels are the
input channels of the first convolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from stemserve.models.base import Separator
from stemserve.models.description import ModelDescription, window_span
from stemserve.models.registry import register

MUSIC_SOURCES = ("vocals", "drums", "bass", "other")


@dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters of the spectrogram U-Nets (Jansson et al. values as defaults).

    Attributes:
        sources: stem names. :class:`UNet` needs exactly one; :class:`ConditionedUNet`
            lists the targets it can be conditioned on; :class:`MultiSourceUNet` outputs all.
        sample_rate: audio rate in Hz.
        audio_channels: 1 (mono) or 2 (stereo); the first conv's input channels.
        n_fft, hop_length: STFT size and hop in samples.
        bins: lowest frequency bins fed to the network (the paper drops the Nyquist bin:
            512 of 513). Masks for bins above are copies of the top bin's mask.
        window_frames: frames per input window, the fixed shape the model is trained on.
        channels: output channels of the 6 strided encoder convs (16 ... 512 in the paper).
        kernel_size: square kernel of every (transposed) conv, 5 in the paper.
        leaky_slope: negative slope of the encoder's leaky ReLU (0.2 in the paper).
        dropout: dropout probability (0.5 in the paper).
        dropout_layers: which three layers get dropout. The paper applies it to the
            first three *decoder* layers; the seed text says encoder. Paper by default.
        film_hidden: size of the target embedding feeding the FiLM generators
            (conditioned variant only).
        mask_activation: ``"sigmoid"`` (independent masks) or ``"softmax"`` across
            sources (multi-source variant only: masks then sum to one).
        joint_stems: when all sources are asked for, share the mixture out among
            them in proportion to their estimates (:mod:`models.joint`), and train
            the conditioned variant for that (:func:`models.losses.joint_mask_l1`).
        joint_power: the estimates' exponent in that sharing (2: by power, Wiener).
        spatial_seconds: when above 0 and the model is stereo, that sharing is the causal
            multichannel Wiener filter of :mod:`models.wiener` instead, its stems' spatial
            covariances averaged over this many seconds. An inference setting: training
            is unchanged.
    """

    sources: tuple[str, ...] = ("vocals",)
    sample_rate: int = 44100
    audio_channels: int = 2
    n_fft: int = 1024
    hop_length: int = 256
    bins: int = 512
    window_frames: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    kernel_size: int = 5
    leaky_slope: float = 0.2
    dropout: float = 0.5
    dropout_layers: Literal["decoder", "encoder"] = "decoder"
    film_hidden: int = 64
    mask_activation: Literal["sigmoid", "softmax"] = "sigmoid"
    joint_stems: bool = False
    joint_power: float = 2.0
    spatial_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.bins > self.n_fft // 2 + 1:
            raise ValueError(f"bins={self.bins} exceeds n_fft // 2 + 1 = {self.n_fft // 2 + 1}")
        if self.kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd")
        if len(self.channels) < 1:
            raise ValueError("need at least one encoder layer")
        if self.spatial_seconds < 0:
            raise ValueError(f"spatial_seconds must be >= 0, got {self.spatial_seconds}")


class EncoderLayer(nn.Module):
    """Strided conv -> batch norm -> [FiLM] -> leaky ReLU -> [dropout].

    ``(B, C_in, F, T) -> (B, C_out, ceil(F / 2), ceil(T / 2))``
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, slope: float, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.LeakyReLU(slope)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if film is not None:
            gamma, beta = film  # (B, C_out) each
            x = gamma[:, :, None, None] * x + beta[:, :, None, None]
        return self.dropout(self.activation(x))


class DecoderLayer(nn.Module):
    """Transposed strided conv -> batch norm -> ReLU -> [dropout].

    ``(B, C_in, F, T) -> (B, C_out, F_skip, T_skip)``: ``output_size`` restores the
    encoder's shape exactly, so any window size works (odd sizes included).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.dropout(self.activation(self.norm(self.deconv(x, output_size=list(size)))))


class UNetCore(nn.Module):
    """The shared encoder/decoder with skip concatenation.

    ``(B, C_in, F, T) -> (B, C_out, F, T)`` logits (no final activation).
    The last decoder layer is a bare transposed conv to ``out_channels``.
    """

    def __init__(self, config: UNetConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        widths = list(config.channels)
        k = config.kernel_size
        enc_drop = [config.dropout if config.dropout_layers == "encoder" and i < 3 else 0.0 for i in range(len(widths))]
        self.encoder = nn.ModuleList(
            EncoderLayer(c_in, c_out, k, config.leaky_slope, enc_drop[i])
            for i, (c_in, c_out) in enumerate(zip([in_channels, *widths[:-1]], widths, strict=True))
        )
        # Decoder j maps encoder depth d = n-1-j back to depth d-1; its input has the
        # previous decoder's channels concatenated with the matching encoder skip.
        self.decoder = nn.ModuleList()
        n = len(widths)
        for j in range(n - 1):
            c_in = widths[-1] if j == 0 else 2 * widths[n - 1 - j]
            c_out = widths[n - 2 - j]
            drop = config.dropout if config.dropout_layers == "decoder" and j < 3 else 0.0
            self.decoder.append(DecoderLayer(c_in, c_out, k, drop))
        last_in = widths[-1] if n == 1 else 2 * widths[0]
        self.output = nn.ConvTranspose2d(last_in, out_channels, k, stride=2, padding=k // 2)

    def forward(self, x: torch.Tensor, films: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        features, size = self.features(x, films)
        return self.output(features, output_size=list(size))  # (B, out_channels, F, T)

    def features(
        self, x: torch.Tensor, films: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> tuple[torch.Tensor, torch.Size]:
        """The last decoder layer's features ``(B, 2 * channels[0], ceil(F / 2), ceil(T / 2))`` (what the
        output convolution reads; auxiliary heads read them too) and the input's ``(F, T)``."""
        sizes = [x.shape[-2:]]
        skips = []
        for i, layer in enumerate(self.encoder):
            x = layer(x, films[i] if films is not None else None)  # (B, widths[i], F/2^(i+1), T/2^(i+1))
            skips.append(x)
            sizes.append(x.shape[-2:])
        for j, layer in enumerate(self.decoder):
            depth = len(self.encoder) - 1 - j
            x = layer(x, sizes[depth])  # back to the shape of encoder output depth-1
            x = torch.cat([x, skips[depth - 1]], dim=1)
        return x, sizes[0]


class _SpectrogramUNet(Separator):
    """Input normalisation, mask application and description shared by the U-Nets."""

    config_class = UNetConfig
    config: UNetConfig
    conditioned: ClassVar[bool] = False

    def __init__(self, config: UNetConfig, out_masks: int) -> None:
        super().__init__(config)
        c = config.audio_channels
        self.out_masks = out_masks
        # Per-bin affine on log-magnitudes. Not in the paper (which normalises magnitudes
        # to [0, 1] per dataset); learnable so no dataset statistics are needed up front.
        self.input_mean = nn.Parameter(torch.zeros(config.bins))
        self.input_scale = nn.Parameter(torch.ones(config.bins))
        self.core = UNetCore(config, in_channels=c, out_channels=out_masks * c)

    def _check(self, mag: torch.Tensor) -> None:
        cfg = self.config
        expected_bins = cfg.n_fft // 2 + 1
        if mag.dim() != 4 or mag.shape[1] != cfg.audio_channels or mag.shape[2] != expected_bins:
            raise ValueError(
                f"expected magnitudes (batch, {cfg.audio_channels}, {expected_bins}, frames), got {tuple(mag.shape)}"
            )

    def _normalise(self, mag: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(mag[:, :, : self.config.bins])  # (B, C, bins, T)
        return (x - self.input_mean[:, None]) * self.input_scale[:, None]

    def _masks(self, logits: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K*C, bins, T)`` -> masks ``(B, K, C, F, T)`` over all ``F`` bins."""
        b, _, bins, t = logits.shape
        logits = logits.view(b, self.out_masks, self.config.audio_channels, bins, t)
        if self.config.mask_activation == "softmax" and self.out_masks > 1:
            masks = torch.softmax(logits, dim=1)
        else:
            masks = torch.sigmoid(logits)
        missing = mag.shape[2] - bins
        if missing > 0:
            masks = torch.cat([masks, masks[..., -1:, :].expand(-1, -1, -1, missing, -1)], dim=3)
        return masks

    def describe(self) -> ModelDescription:
        cfg = self.config
        span = window_span(cfg.window_frames, cfg.hop_length, cfg.n_fft)
        return ModelDescription(
            architecture=self.architecture,
            sources=cfg.sources,
            conditioned=self.conditioned,
            sample_rate=cfg.sample_rate,
            audio_channels=cfg.audio_channels,
            domain="spectrogram",
            causal=False,
            # A window is processed as a whole: every output frame may depend on every
            # input frame of its window, so both bounds are the window's span.
            receptive_field=span,
            lookahead=span - 1,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            window_frames=cfg.window_frames,
            stride=cfg.hop_length,
            extras={
                "bins": cfg.bins,
                "mask_activation": cfg.mask_activation,
                "joint_stems": cfg.joint_stems,
                "joint_power": cfg.joint_power,
                "joint_spatial_frames": cfg.spatial_seconds * cfg.sample_rate / cfg.hop_length,
            },
        )


@register("unet", summary="Spectrogram U-Net (Jansson et al. 2017), one network per source")
class UNet(_SpectrogramUNet):
    """Single-source spectrogram U-Net: magnitude window in, one sigmoid mask out."""

    architecture = "unet"

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        if len(config.sources) != 1:
            raise ValueError(f"UNet separates one source; got {config.sources} (use MultiSourceUNet)")
        super().__init__(config, out_masks=1)

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, 1, C, F, T)`` masks in [0, 1]."""
        self._check(mag)
        return self._masks(self.core(self._normalise(mag)), mag)

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, 1, C, F, T)`` magnitude estimates."""
        return self(x) * x[:, None]


@register(
    "multi_unet",
    summary="Multi-source spectrogram U-Net: one network, one mask per stem",
    sources=MUSIC_SOURCES,
)
class MultiSourceUNet(_SpectrogramUNet):
    """Spectrogram U-Net with K output masks, one per source."""

    architecture = "multi_unet"

    def __init__(self, config: UNetConfig = UNetConfig(sources=MUSIC_SOURCES)) -> None:
        super().__init__(config, out_masks=len(config.sources))

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, K, C, F, T)`` masks in [0, 1]."""
        self._check(mag)
        return self._masks(self.core(self._normalise(mag)), mag)

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, K, C, F, T)`` magnitude estimates."""
        return self(x) * x[:, None]


class FiLMGenerator(nn.Module):
    """Target index -> per-layer, per-channel ``(gamma, beta)``.

    ``(B,)`` long -> list over encoder layers of ``((B, C_i), (B, C_i))``.
    Initialised to the identity transform (gamma = 1, beta = 0).
    """

    def __init__(self, num_targets: int, hidden: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.channels = channels
        self.embedding = nn.Embedding(num_targets, hidden)
        self.hidden = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.to_film = nn.Linear(hidden, 2 * sum(channels))
        nn.init.zeros_(self.to_film.weight)
        nn.init.zeros_(self.to_film.bias)

    def forward(self, target: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        params = self.to_film(self.hidden(self.embedding(target)))  # (B, 2 * sum(C_i))
        out = []
        offset = 0
        for c in self.channels:
            gamma = 1 + params[:, offset : offset + c]
            beta = params[:, offset + c : offset + 2 * c]
            out.append((gamma, beta))
            offset += 2 * c
        return out


@register(
    "conditioned_unet",
    summary="Conditioned U-Net: one network, the target source chosen by FiLM control",
    sources=MUSIC_SOURCES,
)
class ConditionedUNet(_SpectrogramUNet):
    """Spectrogram U-Net whose encoder is modulated by a target-source control (FiLM)."""

    architecture = "conditioned_unet"
    conditioned = True

    def __init__(self, config: UNetConfig = UNetConfig(sources=MUSIC_SOURCES)) -> None:
        super().__init__(config, out_masks=1)
        self.film = FiLMGenerator(len(config.sources), config.film_hidden, config.channels)

    def forward(self, mag: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes and ``(B,)`` target indices -> ``(B, 1, C, F, T)`` masks."""
        self._check(mag)
        if target is None:
            raise ValueError("ConditionedUNet needs a target index per batch item")
        if target.shape != (mag.shape[0],):
            raise ValueError(f"target must have shape ({mag.shape[0]},), got {tuple(target.shape)}")
        if int(target.min()) < 0 or int(target.max()) >= len(self.config.sources):
            raise ValueError(f"target indices must be in [0, {len(self.config.sources)})")
        return self._masks(self.core(self._normalise(mag), self.film(target)), mag)

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, 1, C, F, T)`` estimates of each item's target."""
        return self(x, target) * x[:, None]
