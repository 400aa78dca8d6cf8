"""Hybrid Transformer Demucs (Demucs v4; Rouard, Massa & Défossez, 2023) and bags of them.

Two U-Nets run side by side on the same mixture and meet at the bottom:

* the **spectral branch** takes the mixture's STFT (``nfft`` samples, hop
  ``nfft / 4``, highest bin dropped) as real and imaginary channels ("complex as
  channels"), standardised over the whole chunk. Its encoder layers convolve
  along frequency only (kernel ``[K, 1]``, stride ``[S, 1]``), dividing the bins
  by ``S`` per layer; the first layer's output gets a learnt frequency embedding.
  Its decoder outputs a complex spectrogram per source, inverted by the iSTFT.
* the **temporal branch** takes the standardised waveform; its encoder layers
  are strided 1-D convolutions (``stride ** depth`` samples per bottom step).
* each encoder layer (either branch): strided convolution, [group norm], GELU,
  [a residual "DConv" branch of dilated convolutions], a rewrite convolution
  with [group norm] and GLU. Each decoder layer adds the matching encoder output
  (skip), then rewrite + GLU, [DConv], transposed convolution, [norm], GELU
  (none on the output layer). Group norm is used from layer ``norm_starts`` on.
* the **cross-domain transformer** at the bottom flattens the spectral map to a
  sequence of ``bins x frames`` tokens (2-D sinusoidal positions) and the
  temporal one to its frames (1-D sinusoidal positions); layers alternate
  self-attention within each branch and cross-attention from each branch to the
  other (pre-norm, GELU feed-forward, layer scale, a group norm on each layer's
  output). ``bottom_channels`` adds 1x1 projections around it.

The output is the sum of both branches' estimates. A model trained with
``use_train_segment`` (the published ones) runs on chunks of exactly
``segment`` seconds: a shorter input is zero-padded on the right and the
output cut back; a longer one is refused. Every output sample depends on the
whole chunk (the transformer's attention, the standardisation): the model is
non-causal with a lookahead of a chunk, so it serves whole files
(:meth:`HTDemucs.separate_offline`, the ``demucs`` package's ``apply_model``
cutting) and live sessions only through the server's chunked overlap, whose
latency (seconds) is far over a real-time budget.

Official files. The package saves a dict ``{"klass", "args", "kwargs",
"state", "training_args"}`` per model (``<sig>-<checksum>.th``) and lists the
members of a bag in a ``.yaml`` (``models: [sig, ...]``, optional
``weights:`` one list of per-source weights per model, optional ``segment:``).
:func:`load_official` and :func:`load_bag` read both with the restricted
unpickler of :mod:`models.demucs` (no pickled code runs). Parameter names are
the package's, except inside the DConv branches (see :func:`translate_state_dict`).

Shapes: ``B`` batch, ``C`` audio channels, ``S`` sources, ``T`` samples,
``F`` bins, ``N`` frames.
"""

from __future__ import annotations

import fractions
import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from stemserve.models.base import Separator, check_waveform, config_from_dict, config_to_dict
from stemserve.models.checkpoint import CheckpointError
from stemserve.models.demucs import FileOptions, FractionDone, PickledGlobal, apply_segments, restricted_torch_load
from stemserve.models.description import ModelDescription
from stemserve.models.registry import register, register_architecture

log = logging.getLogger(__name__)

MUSIC_SOURCES = ("drums", "bass", "other", "vocals")
SIX_SOURCES = ("drums", "bass", "other", "vocals", "guitar", "piano")
PACKAGE_CLASS = "demucs.htdemucs.HTDemucs"

PositionalEmbedding = Literal["sin", "cape", "scaled"]


@dataclass(frozen=True)
class HTDemucsConfig:
    """Hyperparameters of HTDemucs; names are the ``demucs`` package's constructor arguments.

    Defaults are the published ``htdemucs`` model's (4 sources, 7.8 s chunks).

    Attributes:
        sources: output stem names (4, or 6 for ``htdemucs_6s``).
        audio_channels: channels in and out.
        channels: width of the first spectral encoder layer (48).
        channels_time: width of the first temporal layer (None: ``channels``).
        growth: width multiplier from one layer to the next.
        nfft: STFT size in samples; the hop is ``nfft // 4``.
        depth: encoder (and decoder) layers per branch.
        rewrite: add the rewrite convolution (+ GLU) to every layer.
        freq_emb: weight of the frequency embedding added after the first spectral layer (0: none).
        emb_scale: the embedding's scale factor (its table is stored divided by it).
        kernel_size / stride: the strided convolutions' kernel and stride (``K = 8``, ``S = 4``).
        time_stride: stride of spectral layers once one bin is left (kernel ``2 * time_stride``).
        context: taps on each side of the decoder's rewrite convolution.
        context_enc: taps on each side of the encoder's rewrite convolution.
        norm_starts: first layer (counting from the outside) with group norm.
        norm_groups: groups of those norms.
        dconv_mode: DConv residual branches in the encoder (1), the decoder (2) or both (3).
        dconv_depth: dilated layers per DConv branch (negative: no dilation).
        dconv_comp: channel compression inside a DConv branch.
        bottom_channels: width of the transformer when it differs (1x1 projections; 0: none).
        t_layers: transformer layers per branch (self and cross attention alternate).
        t_emb: positional embedding of the temporal tokens: ``sin``, ``cape`` (at
            inference: sinusoids on centred positions) or ``scaled`` (learnt).
        t_hidden_scale: feed-forward width over the transformer width.
        t_heads: attention heads.
        t_max_positions: table size of the ``scaled`` embedding.
        t_norm_in / t_norm_in_group: layer norm (or a group norm with that many groups) before
            the positional embedding is added.
        t_group_norm: groups of a group norm over all tokens in place of each layer norm (0: layer norm).
        t_norm_first: pre-norm layers (the published models) instead of post-norm.
        t_norm_out: groups of the group norm over all tokens after each pre-norm layer (0: none).
        t_max_period: longest period of the sinusoidal embeddings.
        t_layer_scale: learnt per-channel scales on the residual branches.
        t_gelu: GELU in the feed-forward blocks (else ReLU).
        t_weight_pos_embed: weight of the positional embeddings.
        t_cape_mean_normalize: ``cape``: positions centred on their mean.
        t_cross_first: the first transformer layer is a cross-attention one.
        samplerate: audio rate in Hz.
        segment: the chunk length in seconds the model runs on.
        use_train_segment: pad every input to ``segment`` (the published models); False: any length.
    """

    sources: tuple[str, ...] = MUSIC_SOURCES
    audio_channels: int = 2
    channels: int = 48
    channels_time: int | None = None
    growth: float = 2.0
    nfft: int = 4096
    depth: int = 4
    rewrite: bool = True
    freq_emb: float = 0.2
    emb_scale: float = 10.0
    kernel_size: int = 8
    time_stride: int = 2
    stride: int = 4
    context: int = 1
    context_enc: int = 0
    norm_starts: int = 4
    norm_groups: int = 4
    dconv_mode: int = 3
    dconv_depth: int = 2
    dconv_comp: float = 8.0
    bottom_channels: int = 0
    t_layers: int = 5
    t_emb: PositionalEmbedding = "sin"
    t_hidden_scale: float = 4.0
    t_heads: int = 8
    t_max_positions: int = 10000
    t_norm_in: bool = True
    t_norm_in_group: int = 0
    t_group_norm: int = 0
    t_norm_first: bool = True
    t_norm_out: int = 1
    t_max_period: float = 10000.0
    t_layer_scale: bool = True
    t_gelu: bool = True
    t_weight_pos_embed: float = 1.0
    t_cape_mean_normalize: bool = True
    t_cross_first: bool = False
    samplerate: int = 44100
    segment: float = 7.8
    use_train_segment: bool = True

    def __post_init__(self) -> None:
        for name in ("audio_channels", "channels", "nfft", "depth", "kernel_size", "stride", "samplerate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nfft % 4:
            raise ValueError(f"nfft must be a multiple of 4, got {self.nfft}")
        if self.segment <= 0:
            raise ValueError(f"segment must be positive, got {self.segment}")
        if self.t_emb not in ("sin", "cape", "scaled"):
            raise ValueError(f"t_emb must be sin, cape or scaled, got {self.t_emb!r}")
        if self.t_layers and self.transformer_channels % self.t_heads:
            raise ValueError(f"{self.t_heads} heads do not divide the transformer width {self.transformer_channels}")
        if self.dconv_mode not in (0, 1, 2, 3):
            raise ValueError(f"dconv_mode must be 0..3, got {self.dconv_mode}")

    @property
    def training_length(self) -> int:
        """Samples per chunk, ``int(segment * samplerate)`` as the package computes it."""
        return int(self.segment * self.samplerate)

    @property
    def transformer_channels(self) -> int:
        """Width of the bottom spectral map (the transformer's unless ``bottom_channels``)."""
        return int(self.channels * self.growth ** (self.depth - 1))


# ----------------------------------------------------------------------------- layers


class LayerScale(nn.Module):
    """Multiply by a learnt per-channel scale: ``(..., C)`` (channels last) or ``(B, C, T)``."""

    def __init__(self, channels: int, init: float, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.scale = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x if self.channels_last else self.scale[:, None] * x


class DConvLayer(nn.Module):
    """One residual step of a DConv branch: ``x + scale * GLU(norm(1x1(GELU(norm(dilated conv(x))))))``.

    ``(B, C, T) -> (B, C, T)``; the dilated convolution (3 taps) narrows to ``C / compress``.
    """

    def __init__(self, channels: int, hidden: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, hidden, 3, dilation=dilation, padding=dilation)
        self.norm1 = nn.GroupNorm(1, hidden)
        self.expand = nn.Conv1d(hidden, 2 * channels, 1)
        self.norm2 = nn.GroupNorm(1, 2 * channels)
        self.scale = LayerScale(channels, 1e-3, channels_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.conv(x)))  # (B, hidden, T)
        y = F.glu(self.norm2(self.expand(y)), dim=1)  # (B, C, T)
        return x + self.scale(y)


class DConv(nn.Module):
    """Residual branch of dilated convolutions (dilation ``2 ** d`` at step ``d``): ``(B, C, T) -> (B, C, T)``."""

    def __init__(self, channels: int, depth: int, compress: float) -> None:
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList(DConvLayer(channels, hidden, 2**d if depth > 0 else 1) for d in range(abs(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _norm(groups: int, channels: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if groups else nn.Identity()


def _dconv_over_frames(dconv: DConv, y: torch.Tensor) -> torch.Tensor:
    """Run a DConv along time on ``(B, C, T)`` or, for every bin apart, on ``(B, C, F, T)``."""
    if y.dim() == 3:
        return dconv(y)
    b, c, bins, frames = y.shape
    flat = y.permute(0, 2, 1, 3).reshape(b * bins, c, frames)  # (B * F, C, N)
    return dconv(flat).view(b, bins, c, frames).permute(0, 2, 1, 3)  # (B, C, F, N)


class EncoderLayer(nn.Module):
    """One encoder layer of either branch.

    ``freq=True``: ``(B, C_in, F, N) -> (B, C_out, F', N)``, convolving along
    frequency only, ``F' = F / stride`` (``pad``: ``K // 4`` bins each side) or
    ``F' = 1`` (no padding, kernel = all bins). ``freq=False``: ``(B, C_in, T) ->
    (B, C_out, ceil(T / stride))`` (zero-padded on the right to a multiple of the
    stride; a 4-D input is flattened to channels first). ``conv_only``: just the
    strided convolution, whose output joins the other branch (``inject``).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        stride: int,
        *,
        freq: bool,
        pad: bool,
        norm_groups: int,
        rewrite: bool,
        context: int,
        dconv: tuple[int, float] | None,
        conv_only: bool = False,
    ) -> None:
        super().__init__()
        self.freq = freq
        self.stride = stride
        self.conv_only = conv_only
        padding = kernel_size // 4 if pad else 0
        self.conv: nn.Module
        self.rewrite: nn.Module | None = None
        self.dconv: DConv | None = None
        if freq:
            self.conv = nn.Conv2d(in_channels, channels, (kernel_size, 1), (stride, 1), (padding, 0))
        else:
            self.conv = nn.Conv1d(in_channels, channels, kernel_size, stride, padding)
        if conv_only:
            return
        self.norm1 = _norm(norm_groups, channels)
        if rewrite:
            conv = nn.Conv2d if freq else nn.Conv1d
            self.rewrite = conv(channels, 2 * channels, 1 + 2 * context, 1, context)
            self.norm2 = _norm(norm_groups, 2 * channels)
        if dconv is not None:
            self.dconv = DConv(channels, *dconv)

    def forward(self, x: torch.Tensor, inject: torch.Tensor | None = None) -> torch.Tensor:
        if not self.freq:
            if x.dim() == 4:
                x = x.flatten(1, 2)  # (B, C * F, N): one bin left
            x = F.pad(x, (0, -x.shape[-1] % self.stride))
        y = self.conv(x)  # (B, C_out, F', N) or (B, C_out, T / stride)
        if self.conv_only:
            return y
        if inject is not None:
            if inject.shape[-1] != y.shape[-1]:
                raise ValueError(f"branches out of step: {tuple(inject.shape)} vs {tuple(y.shape)}")
            y = y + (inject[:, :, None] if inject.dim() == 3 and y.dim() == 4 else inject)
        y = F.gelu(self.norm1(y))
        if self.dconv is not None:
            y = _dconv_over_frames(self.dconv, y)
        if self.rewrite is not None:
            y = F.glu(self.norm2(self.rewrite(y)), dim=1)  # (B, C_out, ...)
        return y


class DecoderLayer(nn.Module):
    """One decoder layer of either branch; undoes the matching :class:`EncoderLayer`.

    ``forward(x, skip, length)``: adds ``skip``, rewrite + GLU, [DConv], then the
    transposed convolution: ``(B, C_in, F, N) -> (B, C_out, F * stride, N)``
    (``pad`` bins cut on each side) or ``(B, C_in, T') -> (B, C_out, length)``.
    Returns the output (GELU unless ``last``) and the features before the
    transposed convolution. ``from_other``: the input is the other branch's
    features (no skip, no rewrite, no DConv).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        stride: int,
        *,
        freq: bool,
        pad: bool,
        norm_groups: int,
        rewrite: bool,
        context: int,
        dconv: tuple[int, float] | None,
        last: bool,
        from_other: bool = False,
    ) -> None:
        super().__init__()
        self.freq = freq
        self.in_channels = in_channels
        self.pad = kernel_size // 4 if pad else 0
        self.last = last
        self.from_other = from_other
        self.conv_tr: nn.Module
        self.rewrite: nn.Module | None = None
        self.dconv: DConv | None = None
        if freq:
            self.conv_tr = nn.ConvTranspose2d(in_channels, channels, (kernel_size, 1), (stride, 1))
        else:
            self.conv_tr = nn.ConvTranspose1d(in_channels, channels, kernel_size, stride)
        self.norm2 = _norm(norm_groups, channels)
        if from_other:
            return
        if rewrite:
            conv = nn.Conv2d if freq else nn.Conv1d
            self.rewrite = conv(in_channels, 2 * in_channels, 1 + 2 * context, 1, context)
            self.norm1 = _norm(norm_groups, 2 * in_channels)
        if dconv is not None:
            self.dconv = DConv(in_channels, *dconv)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.freq and x.dim() == 3:
            x = x.view(x.shape[0], self.in_channels, -1, x.shape[-1])  # (B, C_in, 1, N)
        if self.from_other:
            y = x
        else:
            assert skip is not None
            y = x + skip
            if self.rewrite is not None:
                y = F.glu(self.norm1(self.rewrite(y)), dim=1)
            if self.dconv is not None:
                y = _dconv_over_frames(self.dconv, y)
        z = self.norm2(self.conv_tr(y))
        if self.freq:
            if self.pad:
                z = z[..., self.pad : -self.pad, :]  # (B, C_out, F * stride, N)
        else:
            z = z[..., self.pad : self.pad + length]  # (B, C_out, length)
            if z.shape[-1] != length:
                raise ValueError(f"decoder produced {z.shape[-1]} samples for {length}")
        return (z if self.last else F.gelu(z)), y


class FrequencyEmbedding(nn.Module):
    """A learnt vector per bin, stored divided by ``scale`` (it trains ``scale`` times faster)."""

    def __init__(self, bins: int, channels: int, scale: float) -> None:
        super().__init__()
        # Starts at zero (loaded weights replace it): a random start would cost seconds under the
        # meta device that ``stemserve models`` builds presets on (torch traces ``normal_`` there).
        self.embedding = nn.Embedding(bins, channels, _weight=torch.zeros(bins, channels))
        self.scale = scale

    def forward(self, bins: int, device: torch.device) -> torch.Tensor:
        """``(C, bins)``."""
        return (self.embedding(torch.arange(bins, device=device)) * self.scale).t()


# ----------------------------------------------------------------------------- transformer


class TokenGroupNorm(nn.GroupNorm):
    """Group norm over all tokens and channels of ``(B, tokens, C)`` (channels in groups)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _token_norm(channels: int, groups: int) -> nn.Module:
    return TokenGroupNorm(groups, channels) if groups else nn.LayerNorm(channels)


class AttentionLayer(nn.Module):
    """Self-attention (``cross=False``) or cross-attention transformer layer on ``(B, tokens, C)``.

    Pre-norm (``norm_first``): ``x = q + g1 * attn(norm1(q), norm2(k))`` (self:
    ``k = q``, one norm), ``x = x + g2 * ff(norm(x))``, then the output group norm.
    Post-norm: ``x = norm1(q + g1 * attn(q, k))``, ``x = norm2(x + g2 * ff(x))``.
    Names follow ``torch.nn.TransformerEncoderLayer``: ``self_attn`` / ``cross_attn``,
    ``linear1`` / ``linear2``, ``norm1`` .. ``norm3``, ``gamma_1`` / ``gamma_2``, ``norm_out``.
    """

    def __init__(self, c: HTDemucsConfig, dim: int, cross: bool) -> None:
        super().__init__()
        self.cross = cross
        self.norm_first = c.t_norm_first
        attention = nn.MultiheadAttention(dim, c.t_heads, batch_first=True)
        if cross:
            self.cross_attn = attention
        else:
            self.self_attn = attention
        self.linear1 = nn.Linear(dim, int(dim * c.t_hidden_scale))
        self.linear2 = nn.Linear(int(dim * c.t_hidden_scale), dim)
        self.norm1 = _token_norm(dim, c.t_group_norm)
        self.norm2 = _token_norm(dim, c.t_group_norm)
        if cross:
            self.norm3 = _token_norm(dim, c.t_group_norm)
        self.norm_out = TokenGroupNorm(c.t_norm_out, dim) if c.t_norm_first and c.t_norm_out else None
        self.gamma_1: nn.Module = LayerScale(dim, 1e-4, True) if c.t_layer_scale else nn.Identity()
        self.gamma_2: nn.Module = LayerScale(dim, 1e-4, True) if c.t_layer_scale else nn.Identity()
        self.activation = F.gelu if c.t_gelu else F.relu

    def _attend(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        attention = self.cross_attn if self.cross else self.self_attn
        return attention(q, k, k, need_weights=False)[0]

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.activation(self.linear1(x)))

    def forward(self, q: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        """``q``: ``(B, T_q, C)``; ``k``: ``(B, T_k, C)`` for cross-attention. Returns ``(B, T_q, C)``."""
        if self.norm_first:
            if self.cross:
                assert k is not None
                x = q + self.gamma_1(self._attend(self.norm1(q), self.norm2(k)))
                x = x + self.gamma_2(self._feed_forward(self.norm3(x)))
            else:
                normed = self.norm1(q)
                x = q + self.gamma_1(self._attend(normed, normed))
                x = x + self.gamma_2(self._feed_forward(self.norm2(x)))
            return self.norm_out(x) if self.norm_out is not None else x
        key = k if self.cross and k is not None else q
        x = self.norm1(q + self.gamma_1(self._attend(q, key)))
        return self.norm2(x + self.gamma_2(self._feed_forward(x)))


def sin_embedding_1d(positions: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """``(T,) -> (T, dim)``: cosines then sines of ``positions / max_period ** (i / (dim / 2 - 1))``."""
    half = dim // 2
    rates = max_period ** (torch.arange(half, device=positions.device) / (half - 1))  # (half,)
    phase = positions[:, None] / rates  # (T, half)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def sin_embedding_2d(dim: int, bins: int, frames: int, max_period: float, device: torch.device) -> torch.Tensor:
    """``(dim, bins, frames)``: the first half of the channels encode the frame, the second the bin,
    alternating sine and cosine at rates ``max_period ** (-2i / (dim / 2))``."""
    if dim % 4:
        raise ValueError(f"the 2-D sinusoidal embedding needs a width divisible by 4, got {dim}")
    half = dim // 2
    rates = torch.exp(torch.arange(0.0, half, 2) * -(math.log(max_period) / half))  # (half / 2,)
    along_t = torch.arange(0.0, frames)[:, None] * rates  # (N, half / 2)
    along_f = torch.arange(0.0, bins)[:, None] * rates  # (F, half / 2)
    pe = torch.zeros(dim, bins, frames)
    pe[0:half:2] = torch.sin(along_t).t()[:, None, :].expand(-1, bins, -1)
    pe[1:half:2] = torch.cos(along_t).t()[:, None, :].expand(-1, bins, -1)
    pe[half::2] = torch.sin(along_f).t()[:, :, None].expand(-1, -1, frames)
    pe[half + 1 :: 2] = torch.cos(along_f).t()[:, :, None].expand(-1, -1, frames)
    return pe.to(device)


class CrossDomainTransformer(nn.Module):
    """The transformer between the branches' bottoms.

    ``(B, D, F, N)`` spectral map and ``(B, D, T')`` temporal map -> the same shapes.
    Spectral tokens are taken frame by frame (all bins of frame 0, then frame 1, ...).
    """

    def __init__(self, c: HTDemucsConfig, dim: int) -> None:
        super().__init__()
        self.config = c
        self.norm_in: nn.Module = nn.Identity()
        self.norm_in_t: nn.Module = nn.Identity()
        if c.t_norm_in:
            self.norm_in, self.norm_in_t = nn.LayerNorm(dim), nn.LayerNorm(dim)
        elif c.t_norm_in_group:
            self.norm_in = TokenGroupNorm(c.t_norm_in_group, dim)
            self.norm_in_t = TokenGroupNorm(c.t_norm_in_group, dim)
        if c.t_emb == "scaled":
            self.position_embeddings = FrequencyEmbedding(c.t_max_positions, dim, 3.0)
        cross_parity = 0 if c.t_cross_first else 1
        self.layers = nn.ModuleList(AttentionLayer(c, dim, i % 2 == cross_parity) for i in range(c.t_layers))
        self.layers_t = nn.ModuleList(AttentionLayer(c, dim, i % 2 == cross_parity) for i in range(c.t_layers))

    def _time_positions(self, frames: int, dim: int, device: torch.device) -> torch.Tensor:
        """``(frames, dim)``."""
        c = self.config
        if c.t_emb == "scaled":
            return self.position_embeddings(frames, device).t()
        positions = torch.arange(frames, device=device, dtype=torch.float32)
        if c.t_emb == "cape" and c.t_cape_mean_normalize:
            positions = positions - positions.mean()
        return sin_embedding_1d(positions, dim, c.t_max_period)

    def forward(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        b, dim, bins, frames = x.shape
        pos_2d = sin_embedding_2d(dim, bins, frames, c.t_max_period, x.device)  # (D, F, N)
        pos_2d = pos_2d.permute(2, 1, 0).reshape(frames * bins, dim)  # (N * F, D), frame-major
        x = x.permute(0, 3, 2, 1).reshape(b, frames * bins, dim)  # (B, N * F, D)
        x = self.norm_in(x) + c.t_weight_pos_embed * pos_2d
        xt = xt.transpose(1, 2)  # (B, T', D)
        xt = self.norm_in_t(xt) + c.t_weight_pos_embed * self._time_positions(xt.shape[1], dim, x.device)
        for layer, layer_t in zip(self.layers, self.layers_t, strict=True):
            assert isinstance(layer, AttentionLayer)
            if layer.cross:
                x, xt = layer(x, xt), layer_t(xt, x)
            else:
                x, xt = layer(x), layer_t(xt)
        x = x.reshape(b, frames, bins, dim).permute(0, 3, 2, 1)  # (B, D, F, N)
        return x, xt.transpose(1, 2)  # (B, D, F, N), (B, D, T')


# ----------------------------------------------------------------------------- STFT


def _reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflection padding that also works when the signal is not longer than the padding
    (zeros are added on the right first, as the package does)."""
    length = x.shape[-1]
    widest = max(left, right)
    if length <= widest:
        extra = widest - length + 1
        extra_right = min(right, extra)
        x = F.pad(x, (extra - extra_right, extra_right))
        left, right = left - (extra - extra_right), right - extra_right
    return F.pad(x, (left, right), mode="reflect")


def spectrogram(x: torch.Tensor, nfft: int) -> torch.Tensor:
    """``(B, C, T) -> (B, C, nfft / 2, ceil(T / hop))`` complex, hop ``nfft / 4``.

    The signal is reflected by ``3 hop / 2`` on each side (plus up to a hop on
    the right) so that frame ``n`` is centred on sample ``n hop + hop / 2``;
    normalised STFT with a Hann window, highest bin dropped.
    """
    hop = nfft // 4
    b, c, length = x.shape
    frames = math.ceil(length / hop)
    pad = hop // 2 * 3
    x = _reflect_pad(x.reshape(b * c, length), pad, pad + frames * hop - length)
    window = torch.hann_window(nfft, device=x.device, dtype=x.dtype)
    z = torch.stft(x, nfft, hop, window=window, normalized=True, center=True, pad_mode="reflect", return_complex=True)
    z = z[:, :-1, 2 : 2 + frames]  # (B * C, nfft / 2, frames)
    return z.view(b, c, nfft // 2, frames)


def inverse_spectrogram(z: torch.Tensor, nfft: int, length: int) -> torch.Tensor:
    """``(..., nfft / 2, N)`` complex -> ``(..., length)``: undoes :func:`spectrogram`."""
    hop = nfft // 4
    *lead, bins, frames = z.shape
    z = F.pad(z.reshape(-1, bins, frames), (2, 2, 0, 1))  # the dropped bin (zero) and 2 frames each side
    pad = hop // 2 * 3
    padded = hop * math.ceil(length / hop) + 2 * pad
    window = torch.hann_window(nfft, device=z.device, dtype=z.real.dtype)
    x = torch.istft(z, nfft, hop, window=window, win_length=nfft, normalized=True, length=padded, center=True)
    return x[..., pad : pad + length].reshape(*lead, length)


# ----------------------------------------------------------------------------- model


@register(
    "htdemucs",
    summary="Hybrid Transformer Demucs (v4): spectral and temporal U-Nets joined by a cross-domain "
    "transformer; non-causal, 7.8 s chunks (load the published htdemucs / htdemucs_ft / htdemucs_6s "
    "files with NAME=PATH)",
)
class HTDemucs(Separator):
    """Hybrid Transformer Demucs: ``separate(wav)``: ``(B, C, T) -> (B, S, C, T)``, ``T <= training_length``
    (any ``T`` without ``use_train_segment``)."""

    architecture = "htdemucs"
    config_class = HTDemucsConfig
    config: HTDemucsConfig

    def __init__(self, config: HTDemucsConfig) -> None:
        super().__init__(config)
        c = config
        dconv_enc = (c.dconv_depth, c.dconv_comp) if c.dconv_mode & 1 else None
        dconv_dec = (c.dconv_depth, c.dconv_comp) if c.dconv_mode & 2 else None
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.tencoder = nn.ModuleList()
        self.tdecoder = nn.ModuleList()
        self.freq_emb: FrequencyEmbedding | None = None
        in_t, in_z = c.audio_channels, 2 * c.audio_channels  # real and imaginary parts as channels
        out_t, out_z = c.channels_time or c.channels, c.channels
        bins = c.nfft // 2
        for index in range(c.depth):
            freq = bins > 1
            kernel, stride, pad, last_freq = c.kernel_size, c.stride, True, False
            if not freq:
                kernel, stride = 2 * c.time_stride, c.time_stride
            elif bins <= c.kernel_size:  # the last spectral layer takes all bins at once
                kernel, pad, last_freq = bins, False, True
                out_z = out_t = max(out_t, out_z)
            groups = c.norm_groups if index >= c.norm_starts else 0
            self.encoder.append(
                EncoderLayer(
                    in_z, out_z, kernel, stride, freq=freq, pad=pad, norm_groups=groups, rewrite=c.rewrite,
                    context=c.context_enc, dconv=dconv_enc,
                )
            )  # fmt: skip
            if freq:
                self.tencoder.append(
                    EncoderLayer(
                        in_t, out_t, c.kernel_size, c.stride, freq=False, pad=True, norm_groups=groups,
                        rewrite=c.rewrite, context=c.context_enc, dconv=dconv_enc, conv_only=last_freq,
                    )
                )  # fmt: skip
            if index == 0:
                in_t = c.audio_channels * len(c.sources)
                in_z = 2 * in_t
            self.decoder.insert(
                0,
                DecoderLayer(
                    out_z, in_z, kernel, stride, freq=freq, pad=pad, norm_groups=groups, rewrite=c.rewrite,
                    context=c.context, dconv=dconv_dec, last=index == 0,
                ),
            )  # fmt: skip
            if freq:
                self.tdecoder.insert(
                    0,
                    DecoderLayer(
                        out_t, in_t, c.kernel_size, c.stride, freq=False, pad=True, norm_groups=groups,
                        rewrite=c.rewrite, context=c.context, dconv=dconv_dec, last=index == 0,
                        from_other=last_freq,
                    ),
                )  # fmt: skip
            in_t, in_z = out_t, out_z
            out_t, out_z = int(c.growth * out_t), int(c.growth * out_z)
            if freq:
                bins = 1 if bins <= c.kernel_size else bins // c.stride
            if index == 0 and c.freq_emb:
                self.freq_emb = FrequencyEmbedding(bins, in_z, c.emb_scale)
        dim = c.transformer_channels
        if c.bottom_channels:
            self.channel_upsampler = nn.Conv1d(dim, c.bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(c.bottom_channels, dim, 1)
            self.channel_upsampler_t = nn.Conv1d(dim, c.bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(c.bottom_channels, dim, 1)
            dim = c.bottom_channels
        self.crosstransformer = CrossDomainTransformer(c, dim) if c.t_layers else None

    def _transform(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bottom: ``(B, D, F, N)`` and ``(B, D, T')`` through the transformer (and projections)."""
        if self.crosstransformer is None:
            return x, xt
        b, d, bins, frames = x.shape
        if self.config.bottom_channels:
            x = self.channel_upsampler(x.reshape(b, d, bins * frames)).view(b, -1, bins, frames)
            xt = self.channel_upsampler_t(xt)
        x, xt = self.crosstransformer(x, xt)
        if self.config.bottom_channels:
            x = self.channel_downsampler(x.reshape(b, -1, bins * frames)).view(b, d, bins, frames)
            xt = self.channel_downsampler_t(xt)
        return x, xt

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Separate ``(B, C, T)`` into ``(B, S, C, T)``."""
        check_waveform(wav, self.config.audio_channels)
        c = self.config
        length = wav.shape[-1]
        if c.use_train_segment:
            if length > c.training_length:
                raise ValueError(f"{length} samples: longer than the model's {c.training_length}-sample chunk")
            wav = F.pad(wav, (0, c.training_length - length))  # (B, C, L)
        total = wav.shape[-1]
        z = spectrogram(wav, c.nfft)  # (B, C, F, N) complex
        b, _, bins, frames = z.shape
        spec = torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(b, 2 * c.audio_channels, bins, frames)
        mean = spec.mean(dim=(1, 2, 3), keepdim=True)
        std = spec.std(dim=(1, 2, 3), keepdim=True)
        x = (spec - mean) / (1e-5 + std)  # (B, 2C, F, N): the spectral branch's input
        mean_t = wav.mean(dim=(1, 2), keepdim=True)
        std_t = wav.std(dim=(1, 2), keepdim=True)
        xt = (wav - mean_t) / (1e-5 + std_t)  # (B, C, L): the temporal branch's input

        skips, skips_t, lengths, lengths_t = [], [], [], []
        for index, layer in enumerate(self.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if index < len(self.tencoder):
                lengths_t.append(xt.shape[-1])
                tlayer = self.tencoder[index]
                xt = tlayer(xt)
                if tlayer.conv_only:
                    inject = xt  # same step as the spectral map from here on: joins it
                else:
                    skips_t.append(xt)
            x = layer(x, inject)
            if index == 0 and self.freq_emb is not None:
                x = x + c.freq_emb * self.freq_emb(x.shape[-2], x.device)[None, :, :, None]
            skips.append(x)

        x, xt = self._transform(x, xt)

        offset = c.depth - len(self.tdecoder)
        for index, layer in enumerate(self.decoder):
            x, before = layer(x, skips.pop(), lengths.pop())
            if index >= offset:
                tlayer = self.tdecoder[index - offset]
                if tlayer.from_other:
                    xt, _ = tlayer(before[:, :, 0], None, lengths_t.pop())  # the one bin left
                else:
                    xt, _ = tlayer(xt, skips_t.pop(), lengths_t.pop())

        sources = len(c.sources)
        x = x.view(b, sources, -1, bins, frames) * std[:, None] + mean[:, None]  # (B, S, 2C, F, N)
        z_out = torch.view_as_complex(
            x.view(b, sources, -1, 2, bins, frames).permute(0, 1, 2, 4, 5, 3).contiguous()
        )  # (B, S, C, F, N)
        from_spec = inverse_spectrogram(z_out, c.nfft, total)  # (B, S, C, L)
        from_time = xt.view(b, sources, -1, total) * std_t[:, None] + mean_t[:, None]  # (B, S, C, L)
        return (from_time + from_spec)[..., :length]

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`forward`; ``target`` is unused (all sources are returned)."""
        return self(x)

    def valid_length(self, length: int, segment: float | None = None) -> int:
        """Length a chunk of ``length`` samples is padded to with its neighbours' samples before the
        model pads it (zeros on the right) to its own chunk: ``segment`` seconds when given, else the
        model's chunk. ValueError when ``length`` does not fit the model's chunk."""
        c = self.config
        if not c.use_train_segment:
            return length
        if segment is not None:
            return int(segment * c.samplerate)
        if length > c.training_length:
            raise ValueError(f"{length} samples do not fit the model's {c.training_length}-sample chunk; split it")
        return c.training_length

    def separate_offline(
        self,
        mix: torch.Tensor,
        options: FileOptions | None = None,
        rng: random.Random | None = None,
        progress: FractionDone | None = None,
    ) -> torch.Tensor:
        """A whole file as the ``demucs`` package's ``apply_model`` separates it with an HTDemucs.

        ``(C, T) -> (S, C, T)``. Segments of the model's chunk (or ``options.segment``
        seconds, at most the chunk) every ``1 - overlap`` of a segment, triangular
        cross-fades, ``shifts`` random delays (drawn from ``rng``, else
        ``random.Random(options.seed)``); see :func:`models.demucs.apply_segments`.
        ``progress(fraction)`` is called after each model pass.
        """
        options = options or FileOptions()
        check_waveform(mix.unsqueeze(0), self.config.audio_channels)
        check_segment(self.config, options)
        draws = rng if rng is not None else random.Random(options.seed)
        sin_positions = self.crosstransformer is not None and self.config.t_emb == "sin"

        def chunk(x: torch.Tensor) -> torch.Tensor:
            if sin_positions:
                # The package's transformer draws its (zero) position shift from the generator the
                # delays come from, at every pass: draw it too, so later delays are the package's.
                draws.randrange(1)
            return self(x)

        with torch.no_grad():
            return apply_segments(
                chunk,
                mix,
                lambda n: self.valid_length(n, options.segment),
                self.config.samplerate,
                self.config.segment,
                options,
                rng=draws,
                progress=progress,
            )

    def describe(self) -> ModelDescription:
        return describe_htdemucs(self.architecture, self.config, members=1)


def check_segment(config: HTDemucsConfig, options: FileOptions) -> None:
    """ValueError for a segment the model cannot run (longer than its chunk)."""
    if options.segment is not None and config.use_train_segment and options.segment > config.segment:
        raise ValueError(f"segment {options.segment} s is longer than the {config.segment} s this HTDemucs runs on")


def describe_htdemucs(architecture: str, config: HTDemucsConfig, members: int) -> ModelDescription:
    """What the server needs: waveform, non-causal, one chunk of lookahead (every output sample of a
    chunk depends on its last input sample: attention and standardisation span the chunk)."""
    c = config
    segment = c.training_length if c.use_train_segment else round(c.segment * c.samplerate)
    return ModelDescription(
        architecture=architecture,
        sources=c.sources,
        conditioned=False,
        sample_rate=c.samplerate,
        audio_channels=c.audio_channels,
        domain="waveform",
        causal=False,
        receptive_field=None,
        lookahead=segment - 1,
        stride=1,
        segment=segment,
        extras={
            "segment_s": float(c.segment),
            "nfft": c.nfft,
            "transformer_layers": c.t_layers,
            "bag_members": members,
        },
    )


# ----------------------------------------------------------------------------- bags


@dataclass(frozen=True)
class HTDemucsBagConfig:
    """A bag: member configs (plain dicts of :class:`HTDemucsConfig`) and per-member, per-source weights.

    Attributes:
        members: one config dict per model; all share sources, rate and channels.
        weights: ``len(members)`` rows of ``len(sources)`` weights (empty: all ones).
    """

    members: tuple[dict[str, Any], ...] = field(default_factory=lambda: (config_to_dict(HTDemucsConfig()),))
    weights: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        configs = self.member_configs()
        if not configs:
            raise ValueError("a bag needs at least one model")
        first = configs[0]
        for other in configs[1:]:
            if (other.sources, other.samplerate, other.audio_channels) != (
                first.sources,
                first.samplerate,
                first.audio_channels,
            ):
                raise ValueError("the models of a bag must share sources, sample rate and channels")
        if self.weights:
            if len(self.weights) != len(configs) or any(len(w) != len(first.sources) for w in self.weights):
                raise ValueError(f"weights must be {len(configs)} rows of {len(first.sources)} per-source values")
            for k in range(len(first.sources)):
                if sum(float(w[k]) for w in self.weights) == 0:
                    raise ValueError(f"source {first.sources[k]!r} has zero total weight")

    def member_configs(self) -> list[HTDemucsConfig]:
        return [config_from_dict(HTDemucsConfig, dict(m)) for m in self.members]

    def weight_table(self) -> torch.Tensor:
        """``(models, sources)`` float64."""
        n, s = len(self.members), len(self.member_configs()[0].sources)
        return (
            torch.tensor(self.weights, dtype=torch.float64) if self.weights else torch.ones(n, s, dtype=torch.float64)
        )


@register_architecture
class HTDemucsBag(Separator):
    """A bag of HTDemucs models: per source, the weighted average of the models' estimates
    (``demucs.apply.BagOfModels`` as ``apply_model`` runs it). ``(B, C, T) -> (B, S, C, T)``."""

    architecture = "htdemucs_bag"
    config_class = HTDemucsBagConfig
    config: HTDemucsBagConfig

    def __init__(self, config: HTDemucsBagConfig) -> None:
        super().__init__(config)
        self.models = nn.ModuleList(HTDemucs(m) for m in config.member_configs())
        table = config.weight_table()
        self.weights = table.tolist()
        self.totals = table.sum(dim=0).tolist()

    def _members(self) -> list[HTDemucs]:
        return [m for m in self.models if isinstance(m, HTDemucs)]

    def _average(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Weighted per-source average of ``(..., S, C, T)`` estimates (in the package's order of operations)."""
        total: torch.Tensor | None = None
        for out, weights in zip(outputs, self.weights, strict=True):
            scaled = torch.stack([out[..., k, :, :] * w for k, w in enumerate(weights)], dim=-3)
            total = scaled if total is None else total + scaled
        assert total is not None
        return torch.stack([total[..., k, :, :] / t for k, t in enumerate(self.totals)], dim=-3)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self._average([m(wav) for m in self._members()])

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return self(x)

    def separate_offline(
        self, mix: torch.Tensor, options: FileOptions | None = None, progress: FractionDone | None = None
    ) -> torch.Tensor:
        """Each model separates the file as :meth:`HTDemucs.separate_offline` (one shared
        ``random.Random(options.seed)``, drawn model after model as the package's global generator
        is), then the weighted per-source average. ``(C, T) -> (S, C, T)``; ``progress(fraction)``
        after each model pass, each member an equal share."""
        options = options or FileOptions()
        rng = random.Random(options.seed)
        members = self._members()
        outputs = []
        for k, member in enumerate(members):
            share = None if progress is None else (lambda f, k=k: progress(k / len(members) + f / len(members)))
            outputs.append(member.separate_offline(mix, options, rng=rng, progress=share))
        return self._average(outputs)

    def describe(self) -> ModelDescription:
        shortest = min(self._members(), key=lambda m: m.config.training_length)
        return describe_htdemucs(self.architecture, shortest.config, members=len(self.models))


# ----------------------------------------------------------------------------- official files


class NotHTDemucsFileError(CheckpointError):
    """The file is not an HTDemucs package file (another loader may read it)."""


# Constructor argument order of the package's HTDemucs (positional ``args`` map onto these).
_PACKAGE_ARGS = (
    *("sources", "audio_channels", "channels", "channels_time", "growth", "nfft", "wiener_iters", "end_iters"),
    *("wiener_residual", "cac", "depth", "rewrite", "multi_freqs", "multi_freqs_depth", "freq_emb", "emb_scale"),
    *("emb_smooth", "kernel_size", "time_stride", "stride", "context", "context_enc", "norm_starts"),
    *("norm_groups", "dconv_mode", "dconv_depth", "dconv_comp", "dconv_init", "bottom_channels", "t_layers"),
    *("t_emb", "t_hidden_scale", "t_heads", "t_dropout", "t_max_positions", "t_norm_in", "t_norm_in_group"),
    *("t_group_norm", "t_norm_first", "t_norm_out", "t_max_period", "t_weight_decay", "t_lr", "t_layer_scale"),
    *("t_gelu", "t_weight_pos_embed", "t_sin_random_shift", "t_cape_mean_normalize", "t_cape_augment"),
    *("t_cape_glob_loc_scale", "t_sparse_self_attn", "t_sparse_cross_attn", "t_mask_type", "t_mask_random_seed"),
    *("t_sparse_attn_window", "t_global_window", "t_sparsity", "t_auto_sparsity", "t_cross_first", "rescale"),
    *("samplerate", "segment", "use_train_segment"),
)
# The package's defaults where they differ from this config's (the published files give them all).
_PACKAGE_DEFAULTS: dict[str, Any] = {"dconv_mode": 1, "segment": 10, "t_norm_out": True}
# Arguments that only matter for training or for initialisation.
_TRAINING_ONLY = {
    *("wiener_iters", "end_iters", "wiener_residual", "multi_freqs_depth", "emb_smooth", "dconv_init"),
    *("t_dropout", "t_weight_decay", "t_lr", "t_cape_augment", "t_cape_glob_loc_scale", "t_mask_type"),
    *("t_mask_random_seed", "t_sparse_attn_window", "t_global_window", "t_sparsity", "t_auto_sparsity", "rescale"),
}
# Arguments whose other values select computations this module does not implement.
_REQUIRED = {
    "cac": (True, "cac=False (magnitude masks + Wiener filtering)"),
    "t_sparse_self_attn": (False, "sparse self-attention (xformers)"),
    "t_sparse_cross_attn": (False, "sparse cross-attention (xformers)"),
    "t_sin_random_shift": (0, "t_sin_random_shift (random positions at inference)"),
}


def _plain(value: Any, depth: int = 0) -> bool:
    """True for nested containers of primitives, tensors and fractions (no placeholder objects)."""
    if depth > 16 or isinstance(value, (PickledGlobal, type)):
        return False
    if isinstance(value, Mapping):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_plain(v, depth + 1) for v in value)
    return value is None or isinstance(value, (bool, int, float, str, fractions.Fraction, torch.Tensor))


def _seconds(value: Any, samplerate: int) -> float:
    """A segment as a float whose ``int(x * samplerate)`` is the package's (a Fraction's exact) count."""
    exact = int(fractions.Fraction(value) * samplerate) if isinstance(value, (int, fractions.Fraction)) else None
    seconds = float(value)
    while exact is not None and int(seconds * samplerate) < exact:
        seconds = math.nextafter(seconds, math.inf)
    return seconds


def config_from_package(args: Any, kwargs: Any) -> HTDemucsConfig:
    """Our config from an HTDemucs file's constructor ``args`` / ``kwargs``.

    Raises CheckpointError naming the options it cannot compute.
    """
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, Mapping):
        raise CheckpointError("malformed args/kwargs")
    if len(args) > len(_PACKAGE_ARGS):
        raise CheckpointError(f"{len(args)} positional arguments for an HTDemucs constructor")
    given: dict[str, Any] = dict(zip(_PACKAGE_ARGS, args, strict=False))
    given.update(kwargs)
    unknown = sorted(set(given) - set(_PACKAGE_ARGS))
    if unknown:  # the package drops them too (with a warning)
        log.warning("HTDemucs file: ignoring unknown arguments %s", ", ".join(unknown))
    merged = {**_PACKAGE_DEFAULTS, **given}
    bad = [why for name, (value, why) in _REQUIRED.items() if name in merged and merged[name] != value]
    if merged.get("multi_freqs"):
        bad.append("multi_freqs (frequency bands split across layers)")
    if bad:
        raise CheckpointError(f"uses options this HTDemucs does not implement: {', '.join(bad)}")
    sources = merged.get("sources")
    if not isinstance(sources, (list, tuple)) or not sources or not all(isinstance(s, str) for s in sources):
        raise CheckpointError(f"source names must be a list of strings, got {sources!r}")
    values: dict[str, Any] = {}
    for name in set(merged) & set(_PACKAGE_ARGS) - _TRAINING_ONLY - set(_REQUIRED) - {"multi_freqs"}:
        values[name] = merged[name]
    values["sources"] = tuple(sources)
    for name in ("t_norm_in_group", "t_group_norm", "t_norm_out"):
        if name in values:
            values[name] = int(values[name])
    samplerate = int(values.get("samplerate", 44100))
    values["segment"] = _seconds(values["segment"], samplerate)
    for name in ("growth", "dconv_comp", "freq_emb", "emb_scale", "t_hidden_scale", "t_max_period"):
        if name in values:
            values[name] = float(values[name])
    try:
        return HTDemucsConfig(**values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"unsupported HTDemucs options: {err}") from err


_DCONV_KEY = re.compile(r"(\.dconv\.layers\.\d+\.)([0-9])\.")
_DCONV_NAMES = {"0": "conv.", "1": "norm1.", "3": "expand.", "4": "norm2.", "6": "scale."}


def translate_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's parameter names -> ours. Only the DConv branches differ: the package's
    ``dconv.layers.{d}.{0,1,3,4,6}`` (a sequential: conv, norm, GELU, 1x1 conv, norm, GLU, scale)
    are our ``dconv.layers.{d}.{conv,norm1,expand,norm2,scale}``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _DCONV_KEY.search(key)
        if match and match.group(2) in _DCONV_NAMES:
            key = key[: match.start()] + match.group(1) + _DCONV_NAMES[match.group(2)] + key[match.end() :]
        out[key] = value
    return out


def read_package_file(path: Path) -> tuple[HTDemucsConfig, dict[str, torch.Tensor]]:
    """Config and (translated) state of one HTDemucs package file; :class:`NotHTDemucsFileError` for other files."""
    if not path.is_file():
        raise NotHTDemucsFileError(f"{path}: not a file")
    content = restricted_torch_load(path)
    if not (isinstance(content, Mapping) and "klass" in content and "state" in content):
        raise NotHTDemucsFileError(f"{path}: not a package file (klass / args / kwargs / state)")
    klass = content["klass"]
    name = klass.qualified_name() if isinstance(klass, type) and issubclass(klass, PickledGlobal) else repr(klass)
    if name != PACKAGE_CLASS:
        raise NotHTDemucsFileError(f"{path}: holds a {name} model, not an HTDemucs")
    args, kwargs, state = content.get("args", ()), content.get("kwargs", {}), content["state"]
    if not _plain((args, kwargs, state)):
        raise CheckpointError(f"{path}: refused, its args / kwargs / state hold objects, not plain data")
    if isinstance(state, Mapping) and ("__quantized" in state or "quantized" in state):
        raise CheckpointError(f"{path}: quantized HTDemucs states (diffq) are not supported")
    if not (isinstance(state, Mapping) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f"{path}: its 'state' entry is not a dict of tensors")
    try:
        config = config_from_package(args, kwargs)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return config, translate_state_dict(state)


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(dict(state))
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:300]
        raise CheckpointError(f"{path}: state dict does not fit this HTDemucs config: {detail}") from err


def load_official(path: str | Path) -> HTDemucs:
    """Load one HTDemucs file the ``demucs`` package saved (``klass`` = ``demucs.htdemucs.HTDemucs``).

    The file is read by the restricted unpickler: nothing pickled runs. Raises
    :class:`NotHTDemucsFileError` for other files, CheckpointError (one line) for an
    HTDemucs file this module cannot compute.
    """
    path = Path(path)
    config, state = read_package_file(path)
    model = HTDemucs(config)
    _load_into(model, state, path)
    log.info("loaded official HTDemucs from %s (%d sources, %.2f s chunks)", path, len(config.sources), config.segment)
    return model.eval()


def _member_file(folder: Path, signature: str) -> Path:
    """``<sig>.th`` or the package's ``<sig>-<checksum>.th`` beside the bag's yaml."""
    exact = folder / f"{signature}.th"
    if exact.is_file():
        return exact
    found = sorted(folder.glob(f"{signature}-*.th"))
    if len(found) > 1:
        raise CheckpointError(f"several files for model {signature}: {', '.join(p.name for p in found)}")
    if not found:
        raise CheckpointError(f"model {signature} listed but no {signature}.th or {signature}-<checksum>.th beside it")
    return found[0]


def _read_bag_yaml(path: Path) -> tuple[list[str], Any, Any]:
    import yaml

    try:
        bag = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"not a readable bag of models ({reason})") from err
    if not isinstance(bag, Mapping) or not isinstance(bag.get("models"), list) or not bag["models"]:
        raise CheckpointError("a bag of models lists its models: 'models: [sig, ...]'")
    signatures = [str(s) for s in bag["models"]]
    if any(not re.fullmatch(r"[\w.-]+", s) for s in signatures):
        raise CheckpointError(f"model signatures must be plain names, got {signatures}")
    return signatures, bag.get("weights"), bag.get("segment")


def load_bag(path: str | Path) -> HTDemucsBag:
    """Load a bag of models: a ``.yaml`` listing ``models`` (signatures of ``<sig>[-<checksum>].th``
    HTDemucs files in the same folder), optional ``weights`` (per model, per source) and
    ``segment`` (seconds; shortens every model's chunk to it, as ``BagOfModels`` does)."""
    path = Path(path)
    try:
        signatures, weights, segment = _read_bag_yaml(path)
        members: list[tuple[HTDemucsConfig, dict[str, torch.Tensor], Path]] = []
        for signature in signatures:
            member = _member_file(path.parent, signature)
            try:
                config, state = read_package_file(member)
            except NotHTDemucsFileError as err:
                raise CheckpointError(f"only bags of HTDemucs models are supported: {err}") from err
            members.append((config, state, member))
        if segment is not None:
            if not isinstance(segment, (int, float)) or segment <= 0:
                raise CheckpointError(f"segment must be a positive number of seconds, got {segment!r}")
            members = [(replace(c, segment=float(segment)) if segment <= c.segment else c, s, p) for c, s, p in members]
        rows: tuple[tuple[float, ...], ...] = ()
        if weights is not None:
            if not isinstance(weights, list) or not all(isinstance(r, list) for r in weights):
                raise CheckpointError("weights must be a list of per-source lists")
            rows = tuple(tuple(float(w) for w in row) for row in weights)
        bag_config = HTDemucsBagConfig(members=tuple(config_to_dict(c) for c, _, _ in members), weights=rows)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    except (TypeError, ValueError) as err:  # weights that are no numbers, members that disagree
        raise CheckpointError(f"{path}: {err}") from err
    bag = HTDemucsBag(bag_config)
    for model, (_, state, member) in zip(bag.models, members, strict=True):
        _load_into(model, state, member)
    log.info("loaded a bag of %d HTDemucs models from %s", len(members), path)
    return bag.eval()
