"""Demucs v2 (Défossez et al., 2019): a waveform U-Net with GLU convolutions and a BLSTM.

``depth`` encoder layers (strided convolution ``kernel_size``/``stride``, ReLU,
1x1 "rewrite" convolution, GLU) each divide the time resolution by ``stride``
and grow the channels; a 2-layer BLSTM runs at the bottom; ``depth`` decoder layers
(convolution with ``2 * context + 1`` taps, GLU, transposed convolution, ReLU
except at the output) climb back, each adding the matching encoder output
first (skip connections). The input is optionally resampled x2 before the
encoder and back after the decoder (``resample``), optionally normalised by
its mean and standard deviation (``normalize``), and zero-padded on both sides
to :meth:`Demucs.valid_length` so that no convolution drops samples; the output
is centre-cropped back to exactly the input length.

Official checkpoints. The computation is the one of the ``demucs`` package's
``demucs.demucs.Demucs`` with the v2-equivalent options (``dconv_mode=0``,
``gelu=False``, no group norm, ``context=1``, 2 LSTM layers). The original v2
code named the decoder convolution's kernel size ``context`` (3) and ran it
without padding; here, as in today's package, ``context`` is the number of taps
on each side (3 taps = ``context=1``) and the convolution is zero-padded. State
dicts load in three key layouts: ours (named submodules), the v2 code's
(``encoder.{i}.0`` conv, ``encoder.{i}.2`` rewrite, ``decoder.{j}.0`` rewrite,
``decoder.{j}.2`` transposed conv) and today's package's (``encoder.{i}.3``
rewrite, ``decoder.{j}.3`` transposed conv); see :func:`official_key_map`.
:func:`load_official` reads the package's pickled files without running
pickled code.

Streaming (causal variant): :meth:`Demucs.stream_step` keeps per-layer caches
(encoder inputs, LSTM state, decoder context, transposed-convolution tails and
delayed skips), so a step of ``stride ** depth`` samples costs only those
samples and the stream equals the offline pass (which, like a stream, treats
the future past the signal's end as silence).

Causal variant (``causal=True``, after the real-time speech Demucs):
unidirectional LSTM, no resampling, no normalisation, every convolution padded
on the left only. Encoder frame ``n`` of a layer covers its input samples
``[nS - (K - S), nS + S)`` (``K`` kernel, ``S`` stride) and the transposed
convolution writes frame ``n`` back to the same span, so skips line up without
cropping. The lookahead this leaves (about ``2 S^depth`` samples) and, without
LSTM, the receptive field are computed exactly by :func:`causal_reach`.
"""

from __future__ import annotations

import collections
import fractions
import logging
import math
import pickle
import random
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stemserve.models.base import Separator, check_waveform
from stemserve.models.checkpoint import CheckpointError
from stemserve.models.description import ModelDescription
from stemserve.models.registry import register

log = logging.getLogger(__name__)

MUSIC_SOURCES = ("drums", "bass", "other", "vocals")


@dataclass(frozen=True)
class DemucsConfig:
    """Hyperparameters of Demucs v2; names follow the ``demucs`` package's arguments.

    Attributes (paper: Défossez et al. 2019, "Music Source Separation in the Waveform Domain"):
        sources: output stem names (the package's ``sources``).
        audio_channels: channels in and out (stereo).
        channels: output channels of the first encoder layer (``H = 64`` in the paper,
            48 or 100 for other published models).
        growth: channel multiplier from one encoder layer to the next (2; the width of
            layer ``i + 1`` is ``int(growth * width_i)`` as in the package).
        depth: number of encoder and of decoder layers (``L = 6``).
        rewrite: add the 1x1 convolution after each encoder convolution and the
            context convolution before each transposed convolution.
        glu: GLU after the rewrite convolutions (doubling their output channels);
            ReLU when False.
        lstm_layers: layers of the LSTM at the bottom (2); 0 for none.
        kernel_size: kernel of the strided (transposed) convolutions (``K = 8``).
        stride: their stride (``S = 4``).
        context: taps on each side of the decoder's first convolution (kernel
            ``2 * context + 1``). The v2 code's ``context=3`` (a kernel size) is ``context=1``.
        resample: upsample the input x2 before the encoder and downsample the output
            /2 after the decoder (windowed-sinc resampling, as the v2 code).
        normalize: standardise the input by the mean and standard deviation of its
            mono mix and undo it on the output (off in v2 by default).
        rescale: initial weights of every (transposed) convolution are rescaled so
            their standard deviation moves towards this value (0 disables it).
        samplerate: audio rate in Hz (the package's ``samplerate``).
        segment: preferred chunk length in seconds for the non-causal model (the
            package's ``segment``; the server's chunked overlap uses it).
        causal: the real-time variant described in the module docstring.
    """

    sources: tuple[str, ...] = MUSIC_SOURCES
    audio_channels: int = 2
    channels: int = 64
    growth: float = 2.0
    depth: int = 6
    rewrite: bool = True
    glu: bool = True
    lstm_layers: int = 2
    kernel_size: int = 8
    stride: int = 4
    context: int = 1
    resample: bool = True
    normalize: bool = False
    rescale: float = 0.1
    samplerate: int = 44100
    segment: float = 10.0
    causal: bool = False

    def __post_init__(self) -> None:
        for name in ("audio_channels", "channels", "depth", "kernel_size", "stride", "samplerate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kernel_size < self.stride:
            raise ValueError(f"kernel_size ({self.kernel_size}) must be >= stride ({self.stride})")
        if self.context < 0 or self.lstm_layers < 0:
            raise ValueError("context and lstm_layers must be >= 0")
        if self.growth <= 0:
            raise ValueError("growth must be positive")
        if self.segment <= 0:
            raise ValueError("segment must be positive")
        if self.causal and (self.resample or self.normalize):
            raise ValueError("the causal Demucs cannot resample or normalize (both look at the whole signal)")

    @property
    def widths(self) -> list[int]:
        """Output channels of encoder layers ``0 .. depth-1`` (as the package computes them)."""
        out, width = [], self.channels
        for _ in range(self.depth):
            out.append(width)
            width = int(self.growth * width)
        return out

    @property
    def total_stride(self) -> int:
        """Input samples per bottom (LSTM) step, at the model's input rate."""
        steps = self.stride**self.depth
        return steps // 2 if self.resample else steps


# ----------------------------------------------------------------------------- resampling


def sinc_resample_kernels(old: int, new: int, zeros: int = 24, rolloff: float = 0.945) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc filters for resampling by ``new / old`` (J. O. Smith's method).

    The band limit is ``rolloff`` times the lower of the two Nyquist rates; the
    ideal sinc interpolator is truncated after ``zeros`` zero crossings and
    tapered by a raised-cosine (Hann) window; each of the ``new`` phases is
    normalised to unit DC gain. These are the parameters Demucs resamples with.

    Returns:
        ``(kernels, half)``: ``(new, 1, 2 * half + old)`` float64 filters, and the
        number of input samples each output looks at on either side.
    """
    cutoff = min(old, new) * rolloff
    half = math.ceil(zeros * old / cutoff)
    # Always computed on the CPU: the filters are fixed numbers, and under a meta
    # default device (``stemserve models``) torch would trace these ops instead.
    cpu = torch.device("cpu")
    taps = torch.arange(-half, half + old, dtype=torch.float64, device=cpu)  # (2*half + old,)
    phase = torch.arange(new, dtype=torch.float64, device=cpu)[:, None] / new  # (new, 1)
    t = ((taps / old - phase) * cutoff).clamp(-zeros, zeros) * math.pi  # (new, taps)
    window = torch.cos(t / (2 * zeros)) ** 2
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    kernels = sinc * window
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    return kernels[:, None, :], half


class SincResample(nn.Module):
    """Resample by the rational factor ``new / old`` with windowed-sinc filters.

    ``(..., T) -> (..., floor(T * new / old))``. The signal is extended by
    repeating its edge samples. The filters are a non-persistent buffer: they
    are not part of the state dict.
    """

    kernels: torch.Tensor

    def __init__(self, old: int, new: int) -> None:
        super().__init__()
        gcd = math.gcd(old, new)
        self.old, self.new = old // gcd, new // gcd
        kernels, self.reach = sinc_resample_kernels(self.old, self.new)
        self.register_buffer("kernels", kernels.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, samples = x.shape
        flat = x.reshape(-1, 1, samples)  # (batch, 1, T)
        flat = F.pad(flat, (self.reach, self.reach + self.old), mode="replicate")  # (batch, 1, T + 2*reach + old)
        phases = F.conv1d(flat, self.kernels.to(x.dtype), stride=self.old)  # (batch, new, T // old + 1)
        out = phases.transpose(1, 2).reshape(flat.shape[0], -1)  # (batch, new * (T // old + 1))
        return out[:, : samples * self.new // self.old].reshape(*lead, -1)  # (..., floor(T * new / old))


# ----------------------------------------------------------------------------- layers


def center_crop(x: torch.Tensor, length: int) -> torch.Tensor:
    """Keep ``length`` samples of the last axis, removing ``delta // 2`` on the left and the rest on the right."""
    delta = x.shape[-1] - length
    if delta < 0:
        raise ValueError(f"cannot crop {x.shape[-1]} samples to {length}")
    return x[..., delta // 2 : delta // 2 + length]


class EncoderLayer(nn.Module):
    """Strided conv, ReLU, [1x1 rewrite conv, GLU (or ReLU)].

    ``(batch, in_channels, T) -> (batch, channels, T')`` with
    ``T' = floor((T - K) / S) + 1``, or ``T / S`` in causal mode (left padding ``K - S``,
    ``T`` a multiple of ``S``).
    """

    def __init__(
        self, in_channels: int, channels: int, kernel_size: int, stride: int, rewrite: bool, glu: bool, causal: bool
    ) -> None:
        super().__init__()
        self.left_pad = kernel_size - stride if causal else 0
        self.glu = glu
        self.conv = nn.Conv1d(in_channels, channels, kernel_size, stride)
        self.rewrite = nn.Conv1d(channels, 2 * channels if glu else channels, 1) if rewrite else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left_pad:
            x = F.pad(x, (self.left_pad, 0))
        return self._layers(x)

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))  # (batch, channels, T')
        if self.rewrite is not None:
            y = self.rewrite(x)  # (batch, 2*channels or channels, T')
            x = F.glu(y, dim=1) if self.glu else torch.relu(y)  # (batch, channels, T')
        return x

    def step(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal streaming: ``(batch, in, n)`` new inputs (``n`` a multiple of ``S``) and the last
        ``K - S`` inputs before them -> ``(batch, channels, n / S)`` new frames and the next cache."""
        x = torch.cat([cache, x], dim=-1)  # (batch, in, K - S + n)
        return self._layers(x), x[..., x.shape[-1] - self.left_pad :]


class DecoderLayer(nn.Module):
    """[Context conv (``2 * context + 1`` taps), GLU (or ReLU)], transposed strided conv, [ReLU].

    ``(batch, channels, T) -> (batch, out_channels, (T - 1) * S + K)``, or
    ``T * S`` in causal mode (context conv padded on the left, the transposed
    conv's first ``K - S`` samples dropped so frame ``n`` lands where encoder
    frame ``n`` was read). The output layer has no final ReLU.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        context: int,
        rewrite: bool,
        glu: bool,
        final_relu: bool,
        causal: bool,
    ) -> None:
        super().__init__()
        self.glu = glu
        self.final_relu = final_relu
        self.stride = stride
        self.trim = kernel_size - stride if causal else 0
        # Causal: all context on the left, padded explicitly; otherwise the conv pads both sides itself
        # (no padded copy of the input).
        self.context_pad = 2 * context if causal else 0
        width = 2 * channels if glu else channels
        padding = 0 if causal else context
        self.rewrite = nn.Conv1d(channels, width, 2 * context + 1, padding=padding) if rewrite else None
        self.conv_tr = nn.ConvTranspose1d(channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        if self.rewrite is not None:
            if self.context_pad:
                x = F.pad(x, (self.context_pad, 0))
            y = self.rewrite(x)  # (batch, 2*channels or channels, T)
            x = F.glu(y, dim=1) if self.glu else torch.relu(y)  # (batch, channels, T)
        x = self.conv_tr(x)  # (batch, out_channels, (T - 1) * S + K)
        if self.trim:
            x = x[..., self.trim : self.trim + frames * self.stride]  # (batch, out_channels, T * S)
        return torch.relu(x) if self.final_relu else x

    def step(
        self, x: torch.Tensor, context: torch.Tensor, tail: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal streaming: ``(batch, channels, n)`` new frames -> ``(batch, out_channels, n * S)``.

        ``context`` holds the last ``2 * context`` inputs of the context convolution,
        ``tail`` the ``K - S`` outputs the transposed convolution has begun but
        not finished (overlap-add, bias not yet added). The samples returned are
        the ones no later frame adds to: ``K - S`` samples behind the layer's
        offline output grid. Returns them with the next ``context`` and ``tail``.
        """
        if self.rewrite is not None:
            x = torch.cat([context, x], dim=-1)  # (batch, channels, 2 * context + n)
            context = x[..., x.shape[-1] - self.context_pad :]
            y = self.rewrite(x)  # (batch, 2*channels or channels, n)
            x = F.glu(y, dim=1) if self.glu else torch.relu(y)  # (batch, channels, n)
        n = x.shape[-1] * self.stride
        y = F.conv_transpose1d(x, self.conv_tr.weight, None, self.stride)  # (batch, out, n + K - S)
        y = torch.cat([y[..., : self.trim] + tail, y[..., self.trim :]], dim=-1)
        out = y[..., :n]
        if self.conv_tr.bias is not None:
            out = out + self.conv_tr.bias[:, None]
        return (torch.relu(out) if self.final_relu else out), context, y[..., n:]


class BottleneckLSTM(nn.Module):
    """LSTM over the bottom time steps; bidirectional with a linear ``2C -> C`` projection.

    ``(batch, channels, T) -> (batch, channels, T)``
    """

    def __init__(self, channels: int, layers: int, bidirectional: bool) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers=layers, bidirectional=bidirectional)
        self.linear = nn.Linear(2 * channels, channels) if bidirectional else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x.permute(2, 0, 1))  # (T, batch, channels or 2*channels)
        if self.linear is not None:
            h = self.linear(h)  # (T, batch, channels)
        return h.permute(1, 2, 0)  # (batch, channels, T)

    def step(
        self, x: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unidirectional streaming: ``(batch, channels, n)`` and ``(batch, layers, channels)`` states."""
        if self.linear is not None:
            raise ValueError("a bidirectional LSTM cannot stream")
        state = (hidden.transpose(0, 1).contiguous(), cell.transpose(0, 1).contiguous())  # (layers, batch, C)
        h, (hidden, cell) = self.lstm(x.permute(2, 0, 1), state)  # (n, batch, channels)
        return h.permute(1, 2, 0), hidden.transpose(0, 1), cell.transpose(0, 1)


def _rescale_initial_weights(module: nn.Module, reference: float) -> None:
    """Move each conv's weight std towards ``reference`` (divide by ``sqrt(std / reference)``)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (nn.Conv1d, nn.ConvTranspose1d)):
                factor = math.sqrt(float(sub.weight.std()) / reference)
                sub.weight.div_(factor)
                if sub.bias is not None:
                    sub.bias.div_(factor)


# ----------------------------------------------------------------------------- model


@register(
    "demucs_causal_music",
    summary="Causal Demucs sized for a CPU: depth 4, 24 channels, 1 LSTM layer; 595 samples (13.5 ms) of lookahead "
    "at 44.1 kHz, streamed with per-layer caches",
    causal=True,
    resample=False,
    normalize=False,
    depth=4,
    channels=24,
    lstm_layers=1,
)
@register(
    "demucs_causal",
    summary="Causal Demucs: unidirectional LSTM, left-padded convs, no resampling (streams with a fixed lookahead)",
    causal=True,
    resample=False,
    normalize=False,
    depth=5,
)
@register("demucs", summary="Demucs v2 (Défossez et al. 2019): waveform U-Net with GLUs and a BLSTM")
class Demucs(Separator):
    """Demucs v2 waveform U-Net.

    ``separate(wav)``: ``(batch, audio_channels, samples) -> (batch, sources,
    audio_channels, samples)`` for any ``samples >= 1``. Loads official v2 and
    package state dicts directly (``load_state_dict`` translates their keys).
    """

    architecture = "demucs"
    config_class = DemucsConfig
    config: DemucsConfig

    def __init__(self, config: DemucsConfig) -> None:
        super().__init__(config)
        c = config
        widths = c.widths
        inputs = [c.audio_channels, *widths[:-1]]
        self.encoder = nn.ModuleList(
            EncoderLayer(inputs[i], widths[i], c.kernel_size, c.stride, c.rewrite, c.glu, c.causal)
            for i in range(c.depth)
        )
        # decoder[j] undoes encoder[depth - 1 - j]; the last one outputs every source.
        outputs = [len(c.sources) * c.audio_channels, *widths[:-1]]
        self.decoder = nn.ModuleList(
            DecoderLayer(
                widths[i],
                outputs[i],
                c.kernel_size,
                c.stride,
                c.context,
                c.rewrite,
                c.glu,
                final_relu=i > 0,
                causal=c.causal,
            )
            for i in reversed(range(c.depth))
        )
        self.lstm = BottleneckLSTM(widths[-1], c.lstm_layers, not c.causal) if c.lstm_layers else None
        self.upsample = SincResample(1, 2) if c.resample else None
        self.downsample = SincResample(2, 1) if c.resample else None
        # Rescaling reads the initial weights' values; a model built on the meta device
        # (shapes only, as ``stemserve models`` does) has none, and needs none.
        if c.rescale and not any(w.is_meta for w in self.parameters()):
            _rescale_initial_weights(self, c.rescale)
        self.register_load_state_dict_pre_hook(_translate_official_keys)

    def valid_length(self, length: int) -> int:
        """Smallest padded length >= ``length`` for which no (transposed) convolution drops samples.

        Non-causal: the package's rule (at the doubled rate when resampling);
        causal: the next multiple of ``stride ** depth``.
        """
        c = self.config
        if c.causal:
            return length + (-length) % (c.stride**c.depth)
        if c.resample:
            length *= 2
        for _ in range(c.depth):
            length = max(1, math.ceil((length - c.kernel_size) / c.stride) + 1)
        for _ in range(c.depth):
            length = (length - 1) * c.stride + c.kernel_size
        if c.resample:
            length = math.ceil(length / 2)
        return int(length)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Separate ``(batch, channels, samples)`` into ``(batch, sources, channels, samples)``."""
        check_waveform(wav, self.config.audio_channels)
        c = self.config
        batch, _, length = wav.shape
        if c.normalize:
            mono = wav.mean(dim=1, keepdim=True)  # (batch, 1, T)
            mean = mono.mean(dim=-1, keepdim=True)  # (batch, 1, 1)
            # A single sample has no spread; the package's unbiased std would be NaN there.
            std = mono.std(dim=-1, keepdim=True) if length > 1 else torch.zeros_like(mean)  # (batch, 1, 1)
            x = (wav - mean) / (1e-5 + std)  # (batch, C, T)
        else:
            x = wav
        # Causal: the future past the end is silence, as it is to a stream (stream_step), so the
        # last samples' decoder frames see encoder frames of zeros rather than the edge.
        padded = self.level_delays()[0] + length if c.causal else length
        delta = self.valid_length(padded) - length
        left = 0 if c.causal else delta // 2
        x = F.pad(x, (left, delta - left))  # (batch, C, valid_length)
        if self.upsample is not None:
            x = self.upsample(x)  # (batch, C, 2 * valid_length)
        skips = []
        for layer in self.encoder:
            x = layer(x)  # (batch, width_i, T_i)
            skips.append(x)
        if self.lstm is not None:
            x = self.lstm(x)  # (batch, width_last, T_depth)
        for layer in self.decoder:
            skip = center_crop(skips.pop(), x.shape[-1])  # (batch, width_i, T_i')
            x = layer(x + skip)  # (batch, width_(i-1) or sources*C, T_(i-1)')
        if self.downsample is not None:
            x = self.downsample(x)  # (batch, sources*C, T_out / 2)
        if c.normalize:
            x = x * std + mean  # (batch, sources*C, T_out)
        x = x[..., :length] if c.causal else center_crop(x, length)  # (batch, sources*C, T)
        return x.reshape(batch, len(c.sources), c.audio_channels, length)  # (batch, sources, C, T)

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`forward`; ``target`` is unused (all sources are returned)."""
        return self(x)

    def separate_offline(
        self, mix: torch.Tensor, options: FileOptions | None = None, progress: FractionDone | None = None
    ) -> torch.Tensor:
        """A whole file as the ``demucs`` package's ``apply_model`` separates it (see :func:`apply_segments`).

        ``(channels, samples) -> (sources, channels, samples)``; ``segment`` defaults to the model's.
        ``progress(fraction)`` is called after each model pass.
        """
        if self.config.causal:
            raise ValueError("the causal Demucs streams; separate_offline is the non-causal file path")
        check_waveform(mix.unsqueeze(0), self.config.audio_channels)
        with torch.no_grad():
            return apply_segments(
                self,
                mix,
                self.valid_length,
                self.config.samplerate,
                self.config.segment,
                options or FileOptions(),
                progress=progress,
            )

    def level_delays(self) -> list[int]:
        """Causal streaming: per level (0 = samples ... ``depth`` = bottleneck), how many of its frames
        a step's decoder output there trails the encoder: each transposed convolution finishes a
        sample only when no later frame adds to it, ``K - S`` behind, and the levels above it scale
        that by ``S``. ``level_delays()[0]`` is the stream delay in samples."""
        c = self.config
        delays = [0]
        for _ in range(c.depth):
            delays.insert(0, c.stride * delays[0] + c.kernel_size - c.stride)
        return delays

    def _causal_layers(self) -> tuple[list[EncoderLayer], list[DecoderLayer]]:
        encoders = [typing.cast(EncoderLayer, m) for m in self.encoder]
        return encoders, [typing.cast(DecoderLayer, m) for m in self.decoder]

    def stream_init(self, batch: int) -> dict[str, torch.Tensor]:
        """Per-layer caches of ``batch`` fresh streams (causal variant only; see :meth:`stream_step`)."""
        c = self.config
        if not c.causal:
            raise ValueError("the non-causal Demucs (BLSTM, centred padding) needs whole chunks: it cannot stream")
        encoders, decoders = self._causal_layers()
        weight = encoders[0].conv.weight
        delays = self.level_delays()
        widths = c.widths
        inputs = [c.audio_channels, *widths[:-1]]
        state = {"position": torch.zeros(batch, 1, dtype=torch.int64, device=weight.device)}
        for i in range(c.depth):
            state[f"encoder.{i}"] = weight.new_zeros(batch, inputs[i], c.kernel_size - c.stride)
        for j, layer in enumerate(decoders):
            level = c.depth - j
            width = widths[level - 1]
            state[f"decoder.{j}.skip"] = weight.new_zeros(batch, width, delays[level])
            state[f"decoder.{j}.context"] = weight.new_zeros(batch, width, layer.context_pad)
            state[f"decoder.{j}.tail"] = weight.new_zeros(batch, layer.conv_tr.out_channels, c.kernel_size - c.stride)
        if self.lstm is not None:
            state["lstm.hidden"] = weight.new_zeros(batch, c.lstm_layers, widths[-1])
            state["lstm.cell"] = weight.new_zeros(batch, c.lstm_layers, widths[-1])
        return state

    def stream_step(
        self, x: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(batch, channels, n)`` new samples (``n`` a multiple of ``stride ** depth``) -> ``(batch,
        sources, channels, n)`` estimates of the samples :meth:`level_delays` ``[0]`` earlier, and the
        new state (the given one is only read).

        Nothing is recomputed: each encoder layer keeps its last ``K - S`` inputs,
        the LSTM its state, each decoder layer its context convolution's last
        inputs, its transposed convolution's unfinished outputs and the encoder
        frames (skips) its delayed input has not reached yet. Decoder inputs for
        frames before the stream start are zeroed, as the offline pass's padding is.
        """
        check_waveform(x, self.config.audio_channels)
        c = self.config
        batch, _, n = x.shape
        if n % c.total_stride:
            raise ValueError(f"a step must be a multiple of {c.total_stride} samples, got {n}")
        encoders, decoders = self._causal_layers()
        new: dict[str, torch.Tensor] = {"position": state["position"] + n}
        h = x
        skips = []
        for i, encoder in enumerate(encoders):
            h, new[f"encoder.{i}"] = encoder.step(h, state[f"encoder.{i}"])  # (batch, width_i, n / S^(i+1))
            skips.append(h)
        if self.lstm is not None:
            lstm = typing.cast(BottleneckLSTM, self.lstm)
            h, new["lstm.hidden"], new["lstm.cell"] = lstm.step(h, state["lstm.hidden"], state["lstm.cell"])
        delays = self.level_delays()
        for j, layer in enumerate(decoders):
            level = c.depth - j
            skip = skips.pop()  # (batch, width, frames): this step's encoder frames at this level
            frames = skip.shape[-1]
            held = torch.cat([state[f"decoder.{j}.skip"], skip], dim=-1)
            new[f"decoder.{j}.skip"] = held[..., frames:]
            if delays[level]:
                first = state["position"] // c.stride**level - delays[level]  # (batch, 1) level index of h[..., 0]
                started = first + torch.arange(frames, device=h.device) >= 0  # (batch, frames)
                h = h * started[:, None, :]
            h, new[f"decoder.{j}.context"], new[f"decoder.{j}.tail"] = layer.step(
                h + held[..., :frames], state[f"decoder.{j}.context"], state[f"decoder.{j}.tail"]
            )  # (batch, width_(level-1) or sources*C, frames * S)
        return h.reshape(batch, len(c.sources), c.audio_channels, n), new

    def describe(self) -> ModelDescription:
        c = self.config
        if c.causal:
            receptive_field, lookahead = causal_reach(c)
            segment = None
        else:
            # BLSTM, normalisation and centred padding make every output depend on the
            # whole chunk: the first sample of a chunk waits for its last one.
            receptive_field = None
            segment = round(c.segment * c.samplerate)
            lookahead = segment - 1
        return ModelDescription(
            architecture=self.architecture,
            sources=c.sources,
            conditioned=False,
            sample_rate=c.samplerate,
            audio_channels=c.audio_channels,
            domain="waveform",
            causal=c.causal,
            receptive_field=receptive_field,
            lookahead=lookahead,
            stride=c.total_stride,
            segment=segment,
            stream_delay=self.level_delays()[0] if c.causal else None,
            extras={"recurrent": c.lstm_layers > 0, "resample": c.resample, "normalize": c.normalize},
        )


# ----------------------------------------------------------------------------- file separation


@dataclass(frozen=True)
class FileOptions:
    """How a whole file is cut for a Demucs model, with the ``demucs`` package's defaults.

    Attributes:
        shifts: passes, each on the file delayed by a random 0..0.5 s (zeros before it),
            averaged once the delay is undone; 0: one pass, no delay.
        split: run segments of ``segment`` seconds cross-faded with triangular weights,
            instead of the whole file at once.
        overlap: fraction of a segment shared with the next one.
        transition_power: exponent of the triangular weights (>= 1).
        segment: seconds per segment; None: the model's own.
        seed: seeds the delays' draws (``random.Random(seed).randint(0, max_shift)`` per
            pass, the draw the package makes from Python's global ``random``), so a
            file separates the same every time.
    """

    shifts: int = 1
    split: bool = True
    overlap: float = 0.25
    transition_power: float = 1.0
    segment: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shifts < 0:
            raise ValueError(f"shifts must be >= 0, got {self.shifts}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.transition_power < 1.0:
            raise ValueError(f"transition_power must be >= 1, got {self.transition_power}")
        if self.segment is not None and self.segment <= 0:
            raise ValueError(f"segment must be positive, got {self.segment}")


class SignalSpan:
    """``length`` samples from ``offset`` of a longer ``(channels, samples)`` signal.

    :meth:`padded` widens the span symmetrically by reading the signal's own
    neighbouring samples, zeros only beyond the signal's ends: a segment's
    context is real audio, as in the package.
    """

    signal: torch.Tensor
    offset: int
    length: int

    def __init__(self, signal: torch.Tensor | SignalSpan, offset: int = 0, length: int | None = None) -> None:
        available = signal.length if isinstance(signal, SignalSpan) else int(signal.shape[-1])
        if not 0 <= offset < available:
            raise ValueError(f"offset {offset} outside a span of {available} samples")
        self.length = available - offset if length is None else min(available - offset, length)
        if isinstance(signal, SignalSpan):
            self.signal = signal.signal
            self.offset = signal.offset + offset
        else:
            self.signal = signal
            self.offset = offset

    def padded(self, length: int) -> torch.Tensor:
        """``(channels, length)``: the span centred, ``(length - self.length) // 2`` samples of context on the left."""
        delta = length - self.length
        if delta < 0:
            raise ValueError(f"cannot pad {self.length} samples to {length}")
        start = self.offset - delta // 2
        end = start + length
        total = self.signal.shape[-1]
        inside = self.signal[..., max(0, start) : min(total, end)]
        return F.pad(inside, (max(0, start) - start, end - min(total, end)))


# A file job's progress: called with the fraction (0..1] of the job done.
FractionDone = Callable[[float], None]

# A file's segments may run at most this many model passes per second of audio (and 100 in any case):
# the package's defaults run 0.17 (7.8 s segments, overlap 0.25); a tiny segment with a large
# overlap would run for hours and is refused up front instead.
MAX_PASSES_PER_SECOND = 50.0
MIN_PASS_LIMIT = 100


def apply_segments(
    model: Callable[[torch.Tensor], torch.Tensor],
    mix: torch.Tensor,
    valid_length: Callable[[int], int],
    samplerate: int,
    segment: float,
    options: FileOptions,
    rng: random.Random | None = None,
    progress: FractionDone | None = None,
) -> torch.Tensor:
    """Separate a whole ``(channels, samples)`` signal in the package's ``apply_model`` way.

    ``model`` maps ``(1, channels, n)`` to ``(1, sources, channels, m)`` for
    ``n = valid_length(len)`` (its output centre-cropped to ``len``). With
    ``shifts``, each pass delays the file by ``d`` (0..0.5 s, zero-padded) and
    its output is read ``d`` later; with ``split``, segments start every
    ``(1 - overlap) * segment`` seconds and are weighted by a triangle
    (``1..n/2`` up, ``n - n/2..1`` down, over its peak, to ``transition_power``),
    each padded with its neighbours' samples to the model's valid length.

    The delays are drawn from ``rng`` (default ``random.Random(options.seed)``); a bag of
    models passes one generator to all its models, as the package's global one is.
    ``progress(fraction)`` is called after each model pass (each shift pass an equal share).
    A cut into more than ``MAX_PASSES_PER_SECOND`` passes per second of audio (and more than
    ``MIN_PASS_LIMIT``) is a ValueError before any pass runs.

    Returns:
        ``(sources, channels, samples)``.
    """
    rng = rng if rng is not None else random.Random(options.seed)
    seconds = options.segment if options.segment is not None else segment
    size = int(samplerate * seconds)
    stride = int((1 - options.overlap) * size)
    if options.split and stride < 1:
        raise ValueError(f"segment {seconds} s with overlap {options.overlap} leaves no hop")
    check_pass_count(mix.shape[-1], samplerate, seconds, stride, options)
    done = [0.0, 1.0]  # the job's fraction done before the current shift pass, and that pass's share

    def report(fraction_of_pass: float) -> None:
        if progress is not None:
            progress(done[0] + done[1] * min(1.0, fraction_of_pass))

    def run(span: SignalSpan, shifts: int, split: bool) -> torch.Tensor:
        length = span.length
        if shifts:
            max_shift = int(0.5 * samplerate)
            delayed = span.padded(length + 2 * max_shift)  # (C, length + 2 max_shift)
            total: torch.Tensor | None = None
            done[1] = 1.0 / shifts
            for k in range(shifts):
                offset = rng.randint(0, max_shift)
                done[0] = k / shifts
                out = run(SignalSpan(delayed, offset, length + max_shift - offset), 0, split)
                out = out[..., max_shift - offset :]  # (S, C, length)
                total = out if total is None else total + out
            assert total is not None
            return total / shifts
        if split:
            ramp = torch.cat([torch.arange(1, size // 2 + 1), torch.arange(size - size // 2, 0, -1)])
            weight = (ramp / ramp.max()) ** options.transition_power  # (size,)
            acc: torch.Tensor | None = None
            weights = torch.zeros(length)
            for offset in range(0, length, stride):
                piece = run(SignalSpan(span, offset, size), 0, False)  # (S, C, n)
                report((offset + stride) / length)
                n = piece.shape[-1]
                if acc is None:
                    acc = torch.zeros(*piece.shape[:-1], length, dtype=piece.dtype)
                acc[..., offset : offset + n] += weight[:n].to(piece.dtype) * piece
                weights[offset : offset + n] += weight[:n]
            assert acc is not None
            return acc / weights.to(acc.dtype)
        padded = span.padded(valid_length(length))  # (C, valid)
        out = center_crop(model(padded.unsqueeze(0))[0], length)  # (S, C, length)
        if not options.split:
            report(1.0)
        return out

    return run(SignalSpan(mix), options.shifts, options.split)


def check_pass_count(samples: int, samplerate: int, seconds: float, stride: int, options: FileOptions) -> None:
    """ValueError when cutting ``samples`` by ``options`` (segments of ``seconds`` every ``stride``
    samples) would run more than ``MAX_PASSES_PER_SECOND`` model passes per second of audio and
    more than ``MIN_PASS_LIMIT``: such a cut would run for hours, so it is refused before it starts."""
    passes = max(1, options.shifts)
    if options.split:
        delayed = samples + (int(0.5 * samplerate) if options.shifts else 0)  # a shift pass's longest span
        passes *= -(-delayed // stride)
    limit = max(MIN_PASS_LIMIT, math.ceil(MAX_PASSES_PER_SECOND * samples / samplerate))
    if passes > limit:
        cut = f"segment {seconds:g} s, overlap {options.overlap:g}, " if options.split else ""
        raise ValueError(
            f"{cut}shifts {options.shifts}: about {passes} model passes on {samples / samplerate:.1f} s of audio, "
            f"more than {limit} ({MAX_PASSES_PER_SECOND:g} per second of audio); "
            "use a longer segment, less overlap or fewer shifts"
        )


def causal_reach(config: DemucsConfig) -> tuple[int | None, int]:
    """``(receptive_field, lookahead)`` in samples of the causal Demucs.

    Tracks, for every time step of every layer, the first and last input sample
    it depends on (strided convs, context convs and transposed convs each map an
    interval of indices to an interval; skip additions take the union) over a
    signal long enough that one period of ``stride ** depth`` samples in its
    middle sees no edge, and takes the worst case over that period. The
    receptive field is ``None`` when the LSTM carries state from the stream start.
    """
    c = config
    if not c.causal:
        raise ValueError("causal_reach is defined for causal=True only")
    K, S, D = c.kernel_size, c.stride, c.depth
    period = S**D
    bound = 2 * (K + 2 * c.context * S + S) * period  # generous a-priori bound on either reach
    periods = 2 * math.ceil(bound / period) + 1
    index = np.arange(periods * period)
    first, last = index.copy(), index.copy()
    skips = []
    for _ in range(D):
        frame = np.arange(len(first) // S)
        first = first[np.clip(frame * S - (K - S), 0, None)]
        last = last[frame * S + S - 1]
        skips.append((first, last))
    for _ in range(D):
        skip_first, skip_last = skips.pop()
        first, last = np.minimum(first, skip_first), np.maximum(last, skip_last)
        if c.rewrite:
            first = first[np.clip(np.arange(len(first)) - 2 * c.context, 0, None)]
        t = np.arange(len(first) * S)
        first = first[t // S]
        last = last[np.minimum((t + K - S) // S, len(last) - 1)]
    middle = slice((periods // 2) * period, (periods // 2 + 1) * period)
    lookahead = int((last - index)[middle].max())
    if c.lstm_layers:
        return None, lookahead
    return int((index - first)[middle].max()) + 1, lookahead


# ----------------------------------------------------------------------------- official key layouts


def official_key_map(config: DemucsConfig) -> dict[str, str]:
    """Map official parameter-name prefixes (v2 code and today's package) to ours.

    The v2 code built encoder layers as ``[conv, ReLU, rewrite, GLU]`` and decoder
    layers as ``[context conv, GLU, transposed conv, ReLU]``; the package inserts a
    (possibly identity) norm after each conv, which shifts the later indices by one.
    Without ``rewrite`` both reduce to the (transposed) conv at index 0.
    """
    mapping: dict[str, str] = {}
    for i in range(config.depth):
        mapping[f"encoder.{i}.0."] = f"encoder.{i}.conv."
        if config.rewrite:
            mapping[f"encoder.{i}.2."] = f"encoder.{i}.rewrite."  # v2
            mapping[f"encoder.{i}.3."] = f"encoder.{i}.rewrite."  # package
            mapping[f"decoder.{i}.0."] = f"decoder.{i}.rewrite."
            mapping[f"decoder.{i}.2."] = f"decoder.{i}.conv_tr."  # v2
            mapping[f"decoder.{i}.3."] = f"decoder.{i}.conv_tr."  # package
        else:
            mapping[f"decoder.{i}.0."] = f"decoder.{i}.conv_tr."
    return mapping


def translate_state_dict(state: Mapping[str, Any], config: DemucsConfig, prefix: str = "") -> dict[str, Any]:
    """``state`` with official key names (under ``prefix``) renamed to this module's."""
    mapping = official_key_map(config)
    out: dict[str, Any] = {}
    for key, value in state.items():
        new_key = key
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            head = rest.rsplit(".", 1)[0] + "."
            if head in mapping:
                new_key = prefix + mapping[head] + rest[len(head) :]
        if new_key in out:
            raise ValueError(f"state dict holds {key!r} in two key layouts")
        out[new_key] = value
    return out


def _translate_official_keys(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load-state-dict pre-hook: rename official keys in place (the dict is load_state_dict's own copy)."""
    assert isinstance(module, Demucs)
    translated = translate_state_dict(state_dict, module.config, prefix)
    state_dict.clear()
    state_dict.update(translated)


# ----------------------------------------------------------------------------- official files


class PickledGlobal:
    """Stands in for a class or function a pickle names but that we refuse to import.

    :func:`load_official` unpickles with :class:`RestrictedUnpickler`, which maps
    every global outside a small allow-list (the tensor rebuild functions,
    ``OrderedDict``, ``Fraction``, torch dtypes) to a fresh subclass of this class
    remembering the module and name. Calling it, ``__new__`` on it or setting its
    state only stores the arguments: no code from the file ever runs.
    """

    pickled_module: ClassVar[str] = ""
    pickled_name: ClassVar[str] = ""
    pickled_args: tuple[Any, ...]
    pickled_state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledGlobal:
        obj = super().__new__(cls)
        obj.pickled_args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.pickled_state = state

    @classmethod
    def qualified_name(cls) -> str:
        return f"{cls.pickled_module}.{cls.pickled_name}"


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "Size"): torch.Size,
    ("fractions", "Fraction"): fractions.Fraction,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that imports nothing: allowed globals or :class:`PickledGlobal` placeholders.

    ``torch.load`` wraps it (resolving storage types itself and reading tensor
    data through its ``persistent_load``), so a ``torch.save`` file of tensors,
    containers and primitives loads as usual, while any class reference (the
    Demucs ``klass`` entry, an ``argparse.Namespace`` of training arguments)
    comes back as an inert placeholder.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        namespace = {"pickled_module": module, "pickled_name": name, "__module__": module}
        return type(name, (PickledGlobal,), namespace)


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs from a pickle module, restricted."""

    __name__ = "stemserve_restricted_pickle"
    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file: IO[bytes], **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


def restricted_torch_load(path: str | Path) -> Any:
    """``torch.load`` of a possibly pickled-class-holding file, without running pickled code.

    ``weights_only=True`` would refuse the package's files outright (they name the
    model class), so this loads with ``weights_only=False`` but through
    :class:`RestrictedUnpickler`: torch still rebuilds tensors from the file's
    storages, and every other global becomes a :class:`PickledGlobal`.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{path}: not a readable torch file ({type(err).__name__}: {err})") from err


# Positional argument order of the two official constructors.
_V2_ARGS = (
    *("sources", "audio_channels", "channels", "depth", "rewrite", "glu", "rescale", "resample"),
    *("kernel_size", "stride", "growth", "lstm_layers", "context", "normalize", "samplerate", "segment_length"),
)
_PACKAGE_ARGS = (
    *("sources", "audio_channels", "channels", "growth", "depth", "rewrite", "lstm_layers", "kernel_size"),
    *("stride", "context", "gelu", "glu", "norm_starts", "norm_groups", "dconv_mode", "dconv_depth"),
    *("dconv_comp", "dconv_attn", "dconv_lstm", "dconv_init", "normalize", "resample", "rescale"),
    *("samplerate", "segment"),
)
# Defaults of the options that shapes cannot tell (v2 code / today's package).
_V2_DEFAULTS: dict[str, Any] = {"stride": 4, "resample": True, "normalize": False, "samplerate": 44100}
_PACKAGE_DEFAULTS: dict[str, Any] = {
    "stride": 4,
    "resample": True,
    "normalize": True,
    "samplerate": 44100,
    "segment": 40,
    "gelu": True,
    "norm_starts": 4,
    "dconv_mode": 1,
}
_DEMUCS_CLASSES = {"demucs.model.Demucs": "v2", "demucs.demucs.Demucs": "package"}


def _placeholder_calls(value: Any, depth: int = 0) -> set[str]:
    """Qualified names of the :class:`PickledGlobal` instances inside nested containers."""
    if isinstance(value, PickledGlobal):
        return {type(value).qualified_name()}
    if depth > 16:  # genuine args / kwargs / states are shallow
        return {"<nested too deep>"}
    if isinstance(value, Mapping):
        items: list[Any] = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        return set()
    found: set[str] = set()
    for item in items:
        found |= _placeholder_calls(item, depth + 1)
    return found


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _shape(state: Mapping[str, torch.Tensor], *keys: str) -> tuple[int, ...] | None:
    for key in keys:
        if key in state:
            return tuple(state[key].shape)
    return None


def config_from_state_dict(state: Mapping[str, torch.Tensor], **options: Any) -> DemucsConfig:
    """A config matching an official (or our) Demucs state dict.

    Widths, depth, kernel size, context taps, rewrite/GLU, LSTM layers and the
    number of sources come from the tensor shapes; ``options`` (stride, resample,
    normalize, samplerate, segment, source names) supply what shapes cannot tell.
    """
    depth = 0
    while _shape(state, f"encoder.{depth}.0.weight", f"encoder.{depth}.conv.weight") is not None:
        depth += 1
    if depth == 0:
        raise CheckpointError("no encoder.0 convolution: not a Demucs state dict")
    widths, kernel_size, audio_channels = [], 0, 0
    for i in range(depth):
        shape = _shape(state, f"encoder.{i}.0.weight", f"encoder.{i}.conv.weight")
        assert shape is not None
        widths.append(shape[0])
        if i == 0:
            audio_channels, kernel_size = shape[1], shape[2]
    rewrite_shape = _shape(state, "encoder.0.2.weight", "encoder.0.3.weight", "encoder.0.rewrite.weight")
    rewrite = rewrite_shape is not None
    glu = rewrite_shape is not None and rewrite_shape[0] == 2 * widths[0]
    context = 1
    if rewrite:
        context_shape = _shape(state, "decoder.0.0.weight", "decoder.0.rewrite.weight")
        if context_shape is None or context_shape[2] % 2 != 1:
            raise CheckpointError(f"decoder context convolution of unexpected shape {context_shape}")
        context = context_shape[2] // 2
    last = depth - 1
    out_shape = (
        _shape(state, f"decoder.{last}.2.weight", f"decoder.{last}.3.weight", f"decoder.{last}.conv_tr.weight")
        if rewrite
        else _shape(state, f"decoder.{last}.0.weight", f"decoder.{last}.conv_tr.weight")
    )
    if out_shape is None or out_shape[1] % audio_channels:
        raise CheckpointError(f"output transposed convolution of unexpected shape {out_shape}")
    num_sources = out_shape[1] // audio_channels
    lstm_layers = 0
    while f"lstm.lstm.weight_ih_l{lstm_layers}" in state:
        lstm_layers += 1
    growth = widths[1] / widths[0] if depth > 1 else 2.0
    sources = options.pop("sources", None)
    if sources is None and num_sources == len(MUSIC_SOURCES):
        sources = MUSIC_SOURCES
    elif sources is None:
        sources = tuple(f"source{i}" for i in range(num_sources))
    sources = tuple(sources)
    if len(sources) != num_sources:
        raise CheckpointError(f"{len(sources)} source names for a model with {num_sources} outputs")
    try:
        config = DemucsConfig(
            sources=sources,
            audio_channels=audio_channels,
            channels=widths[0],
            growth=growth,
            depth=depth,
            rewrite=rewrite,
            glu=glu,
            lstm_layers=lstm_layers,
            kernel_size=kernel_size,
            context=context,
            rescale=0.0,  # the weights are about to be replaced
            **options,
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"unsupported Demucs options: {err}") from err
    if config.widths != widths:
        raise CheckpointError(f"encoder widths {widths} do not follow a constant growth")
    return config


def _official_options(layout: str, args: Any, kwargs: Any) -> dict[str, Any]:
    """Our config options from an official file's constructor ``args`` / ``kwargs``."""
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, Mapping):
        raise CheckpointError("malformed args/kwargs")
    names = _V2_ARGS if layout == "v2" else _PACKAGE_ARGS
    if len(args) > len(names):
        raise CheckpointError(f"{len(args)} positional arguments for a Demucs constructor")
    given = dict(zip(names, args, strict=False))
    given.update(kwargs)
    merged = {**(_V2_DEFAULTS if layout == "v2" else _PACKAGE_DEFAULTS), **given}
    if layout == "package":
        unsupported = {
            "dconv_mode": merged["dconv_mode"] != 0,
            "gelu": bool(merged["gelu"]),
            "norm_starts": "depth" in merged and merged["norm_starts"] < merged["depth"],
        }
        bad = [f"{name}={merged[name]!r}" for name, is_bad in unsupported.items() if is_bad]
        if "depth" not in merged and merged["norm_starts"] < 6:
            bad.append(f"norm_starts={merged['norm_starts']!r}")
        if bad:
            raise CheckpointError(f"uses options this Demucs v2 class does not implement: {', '.join(bad)}")
    elif isinstance(given.get("sources"), int):
        raise CheckpointError("a Demucs v1 file (sources given as a count); only v2 and later are supported")
    options: dict[str, Any] = {}
    for name in ("stride", "resample", "normalize", "samplerate"):
        options[name] = merged[name]
    if "segment" in merged:
        options["segment"] = float(merged["segment"])
    elif "segment_length" in merged:
        options["segment"] = float(merged["segment_length"]) / float(merged["samplerate"])
    if "sources" in given:
        sources = given["sources"]
        if not isinstance(sources, (list, tuple)) or not all(isinstance(s, str) for s in sources):
            raise CheckpointError(f"source names must be strings, got {sources!r}")
        options["sources"] = tuple(sources)
    return options


def load_official(path: str | Path) -> Demucs:
    """Load an official Demucs v2 file (a package-serialised model or a bare state dict).

    Accepted: the ``{'klass', 'args', 'kwargs', 'state', ...}`` dict the ``demucs``
    package saves with ``torch.save`` (v2's ``demucs.model.Demucs`` or today's
    ``demucs.demucs.Demucs`` with v2 options), or a bare state dict as the v2
    pretrained files are. The file is read by :func:`restricted_torch_load`:
    nothing pickled runs. Raises :class:`models.checkpoint.CheckpointError` with
    the reason for anything else (other Demucs generations, quantized states, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    content = restricted_torch_load(path)
    if isinstance(content, Mapping) and "klass" in content and "state" in content:
        klass = content["klass"]
        name = klass.qualified_name() if isinstance(klass, type) and issubclass(klass, PickledGlobal) else repr(klass)
        layout = _DEMUCS_CLASSES.get(name)
        if layout is None:
            raise CheckpointError(f"{path}: holds a {name} model, not a Demucs v2 waveform model")
        state = content["state"]
        args, kwargs = content.get("args", ()), content.get("kwargs", {})
        # What we read must be plain data: a placeholder *instance* there means the file
        # asked for a call (pickle's REDUCE) that a genuine Demucs file never makes.
        called = _placeholder_calls((args, kwargs, state))
        if called:
            raise CheckpointError(f"{path}: refused, the file asks to call {', '.join(sorted(called))}")
        options = _official_options(layout, args, kwargs)
    elif _is_state_dict(content):
        state, options = content, dict(_V2_DEFAULTS)
    else:
        raise CheckpointError(f"{path}: neither a Demucs package file nor a Demucs state dict")
    if isinstance(state, Mapping) and ("__quantized" in state or "compressed" in state):
        raise CheckpointError(f"{path}: quantized Demucs states (diffq) are not supported")
    if not _is_state_dict(state):
        raise CheckpointError(f"{path}: its 'state' entry is not a dict of tensors")
    try:
        config = config_from_state_dict(state, **options)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    model = Demucs(config)
    try:
        model.load_state_dict(dict(state))
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: state dict does not fit Demucs({config}): {err}") from err
    log.info("loaded official Demucs from %s (%s)", path, config)
    return model.eval()
