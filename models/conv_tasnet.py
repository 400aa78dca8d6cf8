"""Conv-TasNet (Luo & Mesgarani, 2019): learned filterbank + temporal convolutional network.

The waveform is cut into overlapping frames by a learned 1-D convolution
(``N`` filters of ``L`` samples, stride ``L/2``); a temporal convolutional
network (TCN) of ``R`` repeats of ``X`` dilated depthwise-separable blocks
estimates one mask per source on that representation; a transposed
convolution (the decoder) turns each masked representation back into a
waveform by overlap-add.

Timing (``S = L/2`` is the encoder stride). The input is padded with ``L - S``
zeros on the left, so frame ``k`` covers input samples ``[(k-1)S, (k+1)S)`` and
every output sample is the overlap-add of exactly two frames. With
``D = R (P-1) (2^X - 1)`` the TCN's one-sided context in frames:

* causal variant (left-padded convolutions): output sample ``t`` depends on
  input samples up to ``t + L - 1`` (the lookahead is the encoder window) and,
  for the per-frame ``"channel"`` norm, down to ``t - (D + 2) S + 1`` (the
  receptive field is ``(D + 2) S`` samples). The paper's cumulative layer
  norm (cLN) normalises each frame with statistics of *every* frame since
  the stream start, so with cLN the receptive field is unbounded (``None``).
* non-causal variant (symmetric padding, global layer norm): every output
  depends on the whole input through gLN's statistics.

Multichannel audio is separated channel by channel (channels fold into the
batch); the speech presets are mono.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stemserve.models.base import Separator, check_waveform
from stemserve.models.description import ModelDescription
from stemserve.models.registry import register

NormKind = Literal["gln", "cln", "channel"]

_EPS = 1e-8


@dataclass(frozen=True)
class ConvTasNetConfig:
    """Hyperparameters of Conv-TasNet; defaults are the paper's best non-causal model.

    Attributes (paper symbols in capitals, Table I of Luo & Mesgarani 2019):
        sources: output stem names (unordered speakers for the speech presets).
        sample_rate: audio rate in Hz (8 kHz, WSJ0-2mix).
        audio_channels: channels in and out; each channel is separated independently.
        N: number of encoder filters (basis signals).
        L: encoder filter length in samples; the encoder stride is ``L / 2`` (L must be even).
        B: bottleneck channels (input/residual width of every TCN block).
        H: channels inside each TCN block (the depthwise convolution's width).
        P: kernel size of the depthwise convolutions.
        X: blocks per repeat; block ``x`` has dilation ``2**x``.
        R: number of repeats.
        Sc: skip-connection channels (the paper uses ``Sc = B``).
        mask_activation: mask nonlinearity, ``"sigmoid"`` (paper) or ``"relu"``.
        causal: left (causal) padding in the TCN and a causal normalisation.
        norm: normalisation layer: ``"gln"`` (global layer norm, non-causal),
            ``"cln"`` (cumulative layer norm, causal, paper), ``"channel"`` (layer
            norm over channels of each frame: causal with a finite receptive field).
            ``None`` picks the paper's choice: cLN when causal, gLN otherwise.
        segment: preferred chunk length in seconds for the non-causal model
            (the paper trains on 4-second segments).
    """

    sources: tuple[str, ...] = ("speaker1", "speaker2")
    sample_rate: int = 8000
    audio_channels: int = 1
    N: int = 512
    L: int = 16
    B: int = 128
    H: int = 512
    P: int = 3
    X: int = 8
    R: int = 3
    Sc: int = 128
    mask_activation: Literal["sigmoid", "relu"] = "sigmoid"
    causal: bool = False
    norm: NormKind | None = None
    segment: float = 4.0

    def __post_init__(self) -> None:
        if self.L < 2 or self.L % 2:
            raise ValueError(f"L must be an even number >= 2 (stride L/2), got {self.L}")
        for name in ("N", "B", "H", "P", "X", "R", "Sc", "audio_channels", "sample_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mask_activation not in ("sigmoid", "relu"):
            raise ValueError(f"mask_activation must be 'sigmoid' or 'relu', got {self.mask_activation!r}")
        if self.norm not in (None, "gln", "cln", "channel"):
            raise ValueError(f"norm must be 'gln', 'cln', 'channel' or None, got {self.norm!r}")
        if self.causal and self.norm == "gln":
            raise ValueError("gLN uses statistics of the whole signal: it cannot be causal")
        if self.segment <= 0:
            raise ValueError("segment must be positive")

    @property
    def norm_kind(self) -> NormKind:
        """The normalisation actually used (``norm`` or the paper's default)."""
        if self.norm is not None:
            return self.norm
        return "cln" if self.causal else "gln"

    @property
    def stride(self) -> int:
        """Encoder hop in samples (``L / 2``)."""
        return self.L // 2

    @property
    def context_frames(self) -> int:
        """``D``: frames of one-sided TCN context (sum of (P-1) * dilation over all blocks)."""
        return self.R * (self.P - 1) * (2**self.X - 1)


class GlobalLayerNorm(nn.Module):
    """gLN: normalise each item over channels *and* time, then a per-channel affine.

    ``(batch, channels, frames) -> (batch, channels, frames)``. Non-causal.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2), keepdim=True)  # (batch, 1, 1)
        var = (x - mean).pow(2).mean(dim=(1, 2), keepdim=True)  # (batch, 1, 1)
        return self.gain * (x - mean) / torch.sqrt(var + _EPS) + self.bias


class CumulativeLayerNorm(nn.Module):
    """cLN: frame ``k`` is normalised with the statistics of frames ``0..k`` (all channels).

    ``(batch, channels, frames) -> (batch, channels, frames)``. Causal, but every
    frame depends on all earlier frames (unbounded receptive field).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, frames = x.shape[1], x.shape[2]
        count = channels * torch.arange(1, frames + 1, device=x.device, dtype=x.dtype)  # (frames,)
        total = x.sum(dim=1, keepdim=True).cumsum(dim=2)  # (batch, 1, frames)
        total_sq = x.pow(2).sum(dim=1, keepdim=True).cumsum(dim=2)  # (batch, 1, frames)
        mean = total / count  # (batch, 1, frames)
        var = (total_sq / count - mean.pow(2)).clamp_min(0.0)  # (batch, 1, frames)
        return self.gain * (x - mean) / torch.sqrt(var + _EPS) + self.bias

    def step(self, x: torch.Tensor, stats: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming form: ``x`` the next frames, ``stats`` ``(batch, 2)`` float64 running sum and sum of
        squares of every earlier frame, ``frames`` ``(batch, 1)`` how many there were.
        Returns the normalised frames and the updated ``stats``."""
        channels, count = x.shape[1], x.shape[2]
        # Per-frame sums in the input's precision (as the offline pass), accumulated over frames in
        # float64 so that a stream of any length keeps its running statistics exact.
        total = stats[:, 0:1] + x.sum(dim=1).to(torch.float64).cumsum(dim=1)  # (batch, frames)
        total_sq = stats[:, 1:2] + x.pow(2).sum(dim=1).to(torch.float64).cumsum(dim=1)  # (batch, frames)
        seen = channels * (frames + torch.arange(1, count + 1, device=x.device, dtype=torch.float64))
        mean = total / seen  # (batch, frames)
        var = (total_sq / seen - mean.pow(2)).clamp_min(0.0)  # (batch, frames)
        scale = torch.rsqrt(var + _EPS)
        y = self.gain * ((x - mean[:, None].to(x.dtype)) * scale[:, None].to(x.dtype)) + self.bias
        return y, torch.stack([total[:, -1], total_sq[:, -1]], dim=1)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of each frame separately.

    ``(batch, channels, frames) -> (batch, channels, frames)``. Causal and local.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)  # (batch, 1, frames)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)  # (batch, 1, frames)
        return self.gain * (x - mean) / torch.sqrt(var + _EPS) + self.bias


def make_norm(kind: NormKind, channels: int) -> nn.Module:
    """The normalisation layer named ``kind`` for ``channels`` channels."""
    if kind == "gln":
        return GlobalLayerNorm(channels)
    if kind == "cln":
        return CumulativeLayerNorm(channels)
    if kind == "channel":
        return ChannelLayerNorm(channels)
    raise ValueError(f"unknown norm {kind!r}")


class DepthwiseConv(nn.Module):
    """Dilated depthwise 1-D convolution that keeps the number of frames.

    ``(batch, channels, frames) -> (batch, channels, frames)``. Causal: all
    ``(P-1) * dilation`` padding on the left, so frame ``k`` sees frames
    ``k - (P-1) * dilation .. k``; otherwise the padding is split evenly.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, causal: bool) -> None:
        super().__init__()
        total = (kernel_size - 1) * dilation
        self.padding = (total, 0) if causal else (total // 2, total - total // 2)
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))

    @property
    def reach(self) -> int:
        """Earlier frames a frame sees (the causal cache length)."""
        return self.padding[0]

    def step(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming form (causal only): ``cache`` holds the last :attr:`reach` input frames."""
        full = torch.cat([cache, x], dim=2)  # (batch, channels, reach + frames)
        return self.conv(full), full[..., full.shape[2] - self.reach :]


class TCNBlock(nn.Module):
    """One 1-D conv block of the TCN (Fig. 1C of the paper).

    1x1 conv ``B -> H``, PReLU, norm, depthwise conv (``P``, dilation), PReLU, norm,
    then two 1x1 convs: the residual path ``H -> B`` (absent on the very last block,
    whose residual output nobody reads) and the skip path ``H -> Sc``.

    ``(batch, B, frames) -> ((batch, B, frames) or None, (batch, Sc, frames))``
    """

    def __init__(
        self,
        bottleneck: int,
        hidden: int,
        skip: int,
        kernel_size: int,
        dilation: int,
        norm: NormKind,
        causal: bool,
        residual: bool,
    ) -> None:
        super().__init__()
        self.expand = nn.Conv1d(bottleneck, hidden, 1)
        self.act1 = nn.PReLU()
        self.norm1 = make_norm(norm, hidden)
        self.depthwise = DepthwiseConv(hidden, kernel_size, dilation, causal)
        self.act2 = nn.PReLU()
        self.norm2 = make_norm(norm, hidden)
        self.residual = nn.Conv1d(hidden, bottleneck, 1) if residual else None
        self.skip = nn.Conv1d(hidden, skip, 1)

    def forward(
        self, x: torch.Tensor, stream: Stream | None = None, prefix: str = ""
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Offline, or (``stream`` given) the next frames of a stream: this block's entries of
        ``stream.cache`` (keys starting with ``prefix``) are read and replaced."""
        y = _norm(self.norm1, self.act1(self.expand(x)), stream, prefix + "norm1")  # (batch, H, frames)
        if stream is None:
            y = self.depthwise(y)
        else:
            y, stream.cache[prefix + "conv"] = self.depthwise.step(y, stream.cache[prefix + "conv"])
        y = _norm(self.norm2, self.act2(y), stream, prefix + "norm2")  # (batch, H, frames)
        skip = self.skip(y)  # (batch, Sc, frames)
        if self.residual is None:
            return None, skip
        return x + self.residual(y), skip  # (batch, B, frames), (batch, Sc, frames)


@dataclass
class Stream:
    """A streaming call's caches (``TemporalConvNet.cache_shapes`` keys, flattened batch) and the
    number of frames each stream has seen before this call, ``(batch, 1)`` float64."""

    cache: dict[str, torch.Tensor]
    frames: torch.Tensor


def _norm(norm: nn.Module, x: torch.Tensor, stream: Stream | None, key: str) -> torch.Tensor:
    """One normalisation layer, offline or streaming (cLN carries running statistics; channel norm is local)."""
    if stream is None:
        return norm(x)
    if isinstance(norm, CumulativeLayerNorm):
        y, stream.cache[key] = norm.step(x, stream.cache[key], stream.frames)
        return y
    if isinstance(norm, ChannelLayerNorm):
        return norm(x)
    raise ValueError(f"{type(norm).__name__} cannot stream (it needs the whole signal)")


class TemporalConvNet(nn.Module):
    """The separator: norm, bottleneck, ``R x X`` TCN blocks, mask head.

    ``(batch, N, frames)`` encoder output -> ``(batch, sources, N, frames)`` masks.
    """

    def __init__(
        self,
        N: int,
        B: int,
        H: int,
        P: int,
        X: int,
        R: int,
        Sc: int,
        sources: int,
        norm: NormKind,
        causal: bool,
        mask_activation: Literal["sigmoid", "relu"],
    ) -> None:
        super().__init__()
        self.sources = sources
        self.filters = N
        self.input_norm = make_norm(norm, N)
        self.bottleneck = nn.Conv1d(N, B, 1)
        count = R * X
        self.blocks = nn.ModuleList(
            TCNBlock(B, H, Sc, P, 2 ** (i % X), norm, causal, residual=i < count - 1) for i in range(count)
        )
        self.output_act = nn.PReLU()
        self.mask_conv = nn.Conv1d(Sc, sources * N, 1)
        self.mask_activation: nn.Module = nn.Sigmoid() if mask_activation == "sigmoid" else nn.ReLU()

    def forward(self, w: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        """Offline, or (``stream`` given) the next frames of a stream, updating its caches."""
        batch, _, frames = w.shape
        x = self.bottleneck(_norm(self.input_norm, w, stream, "input_norm"))  # (batch, B, frames)
        skips = torch.zeros((), device=w.device, dtype=w.dtype)
        for i, block in enumerate(self.blocks):
            residual, skip = block(x, stream, f"block{i}.")  # (batch, B, frames) or None, (batch, Sc, frames)
            skips = skips + skip
            if residual is not None:
                x = residual
        logits = self.mask_conv(self.output_act(skips))  # (batch, sources * N, frames)
        masks = self.mask_activation(logits)  # (batch, sources * N, frames)
        return masks.view(batch, self.sources, self.filters, frames)

    def cache_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-stream cache entries: name -> (shape without batch, dtype)."""
        shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        norms = [("input_norm", self.input_norm)]
        for i, block in enumerate(self.blocks):
            assert isinstance(block, TCNBlock)
            norms += [(f"block{i}.norm1", block.norm1), (f"block{i}.norm2", block.norm2)]
            shapes[f"block{i}.conv"] = ((block.depthwise.conv.in_channels, block.depthwise.reach), torch.float32)
        for key, norm in norms:
            if isinstance(norm, CumulativeLayerNorm):
                shapes[key] = ((2,), torch.float64)
        return shapes


@register(
    "conv_tasnet_causal",
    summary="Conv-TasNet (Luo & Mesgarani 2019), causal: cLN, left-padded TCN",
    causal=True,
)
@register("conv_tasnet", summary="Conv-TasNet (Luo & Mesgarani 2019), non-causal: gLN, symmetric TCN")
class ConvTasNet(Separator):
    """Conv-TasNet: learned encoder, TCN mask estimator, transposed-conv decoder.

    ``separate(wav)``: ``(batch, audio_channels, samples) -> (batch, sources,
    audio_channels, samples)`` for any ``samples >= 1``.
    """

    architecture = "conv_tasnet"
    config_class = ConvTasNetConfig
    config: ConvTasNetConfig

    def __init__(self, config: ConvTasNetConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = nn.Conv1d(1, c.N, c.L, stride=c.stride, bias=False)
        self.separator = TemporalConvNet(
            c.N, c.B, c.H, c.P, c.X, c.R, c.Sc, len(c.sources), c.norm_kind, c.causal, c.mask_activation
        )
        self.decoder = nn.ConvTranspose1d(c.N, 1, c.L, stride=c.stride, bias=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Separate ``(batch, channels, samples)`` into ``(batch, sources, channels, samples)``."""
        check_waveform(wav, self.config.audio_channels)
        c = self.config
        batch, channels, samples = wav.shape
        stride = c.stride
        left = c.L - stride
        right = (-samples) % stride + stride  # one extra frame so the last samples see two frames
        x = wav.reshape(batch * channels, 1, samples)  # (batch*channels, 1, samples)
        x = F.pad(x, (left, right))  # (batch*channels, 1, left + samples + right)
        w = torch.relu(self.encoder(x))  # (batch*channels, N, frames)
        masks = self.separator(w)  # (batch*channels, sources, N, frames)
        masked = (masks * w[:, None]).flatten(0, 1)  # (batch*channels*sources, N, frames)
        y = self.decoder(masked)  # (batch*channels*sources, 1, left + samples + right)
        y = y[:, 0, left : left + samples]  # (batch*channels*sources, samples)
        y = y.reshape(batch, channels, len(c.sources), samples)  # (batch, channels, sources, samples)
        return y.transpose(1, 2)  # (batch, sources, channels, samples)

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`forward`; ``target`` is unused (all sources are returned)."""
        return self(x)

    def stream_init(self, batch: int) -> dict[str, torch.Tensor]:
        """Caches of ``batch`` fresh streams (causal variant): the encoder's and decoder's last
        ``L - stride`` samples, every depthwise convolution's last frames, cLN running sums."""
        c = self.config
        if not c.causal:
            raise ValueError("the non-causal Conv-TasNet (gLN) needs the whole signal: it cannot stream")
        weight = self.encoder.weight
        lead = (batch, c.audio_channels)
        tail = c.L - c.stride
        state = {
            "encoder": weight.new_zeros(*lead, tail),
            "decoder": weight.new_zeros(*lead, len(c.sources), tail),
            "frames": torch.zeros(*lead, 1, device=weight.device, dtype=torch.float64),
        }
        for key, (shape, dtype) in self.separator.cache_shapes().items():
            state[key] = torch.zeros(
                *lead, *shape, device=weight.device, dtype=weight.dtype if dtype != torch.float64 else dtype
            )
        return state

    def stream_step(
        self, x: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(batch, channels, n)`` new samples (``n`` a multiple of ``L / 2``) -> ``(batch, sources,
        channels, n)`` estimates of the samples ``L / 2`` earlier, and the new state."""
        check_waveform(x, self.config.audio_channels)
        c = self.config
        batch, channels, n = x.shape
        if n % c.stride:
            raise ValueError(f"a step must be a multiple of {c.stride} samples, got {n}")
        flat = {k: v.flatten(0, 1) for k, v in state.items()}  # (batch*channels, ...)
        tail = c.L - c.stride
        signal = torch.cat([flat["encoder"][:, None], x.reshape(batch * channels, 1, n)], dim=2)
        w = torch.relu(self.encoder(signal))  # (batch*channels, N, n / stride)
        masks = self.separator(w, Stream(flat, flat["frames"]))  # (batch*channels, sources, N, frames)
        y = self.decoder((masks * w[:, None]).flatten(0, 1))  # (batch*channels*sources, 1, n + tail)
        y = y.view(batch * channels, len(c.sources), n + tail)
        y[..., :tail] += flat["decoder"]
        flat["encoder"] = signal[:, 0, signal.shape[2] - tail :]
        flat["decoder"] = y[..., n:].clone()
        flat["frames"] = flat["frames"] + w.shape[2]
        out = y[..., :n].reshape(batch, channels, len(c.sources), n).transpose(1, 2)
        new_state = {k: v.reshape(batch, channels, *v.shape[1:]) for k, v in flat.items()}
        return out, new_state

    def describe(self) -> ModelDescription:
        c = self.config
        stride = c.stride
        extras: dict[str, object] = {"norm": c.norm_kind, "context_frames": c.context_frames}
        if c.causal:
            # Reach of the convolutions alone; cLN adds a dependency on the whole past.
            conv_field = (c.context_frames + 2) * stride
            extras["conv_receptive_field"] = conv_field
            receptive_field = conv_field if c.norm_kind == "channel" else None
            lookahead = c.L - 1
            segment = None
        else:
            # gLN statistics span the whole chunk: the first sample of a chunk waits
            # for its last one.
            receptive_field = None
            segment = round(c.segment * c.sample_rate)
            lookahead = segment - 1
        return ModelDescription(
            architecture=self.architecture,
            sources=c.sources,
            conditioned=False,
            sample_rate=c.sample_rate,
            audio_channels=c.audio_channels,
            domain="waveform",
            causal=c.causal,
            receptive_field=receptive_field,
            lookahead=lookahead,
            stride=stride,
            segment=segment,
            stream_delay=c.L - stride if c.causal else None,
            extras=extras,
        )
