"""TasNet (Luo & Mesgarani, 2018): gated conv encoder, LSTM mask estimator, linear decoder.

The waveform is cut into non-overlapping segments of ``L`` samples. Each
segment is scaled to unit L2 norm and encoded by a gated 1-D convolution into
``N`` non-negative weights, ``w = ReLU(x * U) . sigmoid(x * V)``. A stack of
LSTM layers (bidirectional for the non-causal model, unidirectional for the
causal one) estimates one mask per source on ``w``; the linear decoder maps each
masked weight vector back to ``L`` samples, which are scaled back by the
segment's norm.

Timing: segment ``k`` covers samples ``[kL, (k+1)L)`` and its output depends on
the whole segment, so an output sample depends on at most ``L - 1`` future
input samples (the lookahead); with a unidirectional LSTM it also depends on
every earlier segment (the receptive field is unbounded, ``None``).
Multichannel audio is separated channel by channel.
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

_EPS = 1e-8


@dataclass(frozen=True)
class TasNetConfig:
    """Hyperparameters of TasNet; defaults follow the paper (8 kHz, 2 speakers).

    Attributes (paper symbols in capitals):
        sources: output stem names (unordered speakers for the speech presets).
        sample_rate: audio rate in Hz.
        audio_channels: channels in and out; each channel is separated independently.
        N: number of basis signals (encoder filters), 500 in the paper.
        L: segment length in samples, 40 (5 ms) in the paper; also the stride.
        hidden: LSTM units per direction (500 in the paper).
        layers: LSTM layers (4 in the paper).
        skip: identity skip connections around the LSTM layers whose input and
            output widths agree (every layer after the first); the paper adds
            identity skips to ease training of the deep LSTM.
        mask_activation: ``"softmax"`` across sources (paper: masks sum to one) or
            ``"sigmoid"`` (independent masks).
        causal: unidirectional LSTM (real-time variant) instead of a BLSTM.
        segment: preferred chunk length in seconds for the non-causal model.
    """

    sources: tuple[str, ...] = ("speaker1", "speaker2")
    sample_rate: int = 8000
    audio_channels: int = 1
    N: int = 500
    L: int = 40
    hidden: int = 500
    layers: int = 4
    skip: bool = True
    mask_activation: Literal["softmax", "sigmoid"] = "softmax"
    causal: bool = False
    segment: float = 4.0

    def __post_init__(self) -> None:
        for name in ("N", "L", "hidden", "layers", "audio_channels", "sample_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mask_activation not in ("softmax", "sigmoid"):
            raise ValueError(f"mask_activation must be 'softmax' or 'sigmoid', got {self.mask_activation!r}")
        if self.segment <= 0:
            raise ValueError("segment must be positive")


class GatedEncoder(nn.Module):
    """Unit-norm segments -> gated non-negative weights.

    ``(batch, 1, K * L)`` -> ``w (batch, N, K)`` and the segment norms ``(batch, K)``.
    """

    def __init__(self, N: int, L: int) -> None:
        super().__init__()
        self.segment = L
        self.conv_u = nn.Conv1d(1, N, L, stride=L, bias=False)
        self.conv_v = nn.Conv1d(1, N, L, stride=L, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        segments = x.view(batch, -1, self.segment)  # (batch, K, L)
        norms = segments.norm(dim=2)  # (batch, K)
        unit = (segments / (norms[..., None] + _EPS)).view(batch, 1, -1)  # (batch, 1, K * L)
        w = torch.relu(self.conv_u(unit)) * torch.sigmoid(self.conv_v(unit))  # (batch, N, K)
        return w, norms


class LSTMSeparator(nn.Module):
    """Layer norm, stacked (B)LSTM with identity skips, fully connected mask head.

    ``(batch, N, K)`` weights -> ``(batch, sources, N, K)`` masks.
    """

    def __init__(
        self,
        N: int,
        hidden: int,
        layers: int,
        sources: int,
        bidirectional: bool,
        skip: bool,
        mask_activation: Literal["softmax", "sigmoid"],
    ) -> None:
        super().__init__()
        self.sources = sources
        self.filters = N
        self.skip = skip
        self.mask_activation = mask_activation
        width = hidden * (2 if bidirectional else 1)
        self.norm = nn.LayerNorm(N)
        self.lstms = nn.ModuleList(
            nn.LSTM(N if i == 0 else width, hidden, batch_first=True, bidirectional=bidirectional)
            for i in range(layers)
        )
        self.mask = nn.Linear(width, sources * N)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        batch, _, segments = w.shape
        h = self.norm(w.transpose(1, 2))  # (batch, K, N)
        for i, lstm in enumerate(self.lstms):
            out, _ = lstm(h)  # (batch, K, width)
            h = out + h if self.skip and i > 0 else out  # (batch, K, width)
        logits = self.mask(h).view(batch, segments, self.sources, self.filters)  # (batch, K, sources, N)
        softmax = self.mask_activation == "softmax"  # masks summing to one across sources
        masks = torch.softmax(logits, dim=2) if softmax else torch.sigmoid(logits)
        return masks.permute(0, 2, 3, 1)  # (batch, sources, N, K)

    def step(
        self, w: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Streaming form (unidirectional only): ``h``, ``c`` are ``(layers, batch, hidden)`` LSTM states
        after the earlier segments; returns the masks and the states after these segments."""
        batch, _, segments = w.shape
        x = self.norm(w.transpose(1, 2))  # (batch, K, N)
        hs, cs = [], []
        for i, lstm in enumerate(self.lstms):
            out, (h_i, c_i) = lstm(x, (h[i : i + 1].contiguous(), c[i : i + 1].contiguous()))  # (batch, K, hidden)
            x = out + x if self.skip and i > 0 else out
            hs.append(h_i[0])
            cs.append(c_i[0])
        logits = self.mask(x).view(batch, segments, self.sources, self.filters)
        softmax = self.mask_activation == "softmax"
        masks = torch.softmax(logits, dim=2) if softmax else torch.sigmoid(logits)
        return masks.permute(0, 2, 3, 1), torch.stack(hs), torch.stack(cs)


class LinearDecoder(nn.Module):
    """Masked weights -> waveform segments through the learned basis ``B`` (N x L).

    ``(batch, N, K)`` -> ``(batch, K * L)``; segments do not overlap.
    """

    def __init__(self, N: int, L: int) -> None:
        super().__init__()
        self.basis = nn.ConvTranspose1d(N, 1, L, stride=L, bias=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.basis(w)[:, 0]  # (batch, K * L)


@register("tasnet_causal", summary="TasNet (Luo & Mesgarani 2018), causal: unidirectional LSTM", causal=True)
@register("tasnet", summary="TasNet (Luo & Mesgarani 2018), non-causal: BLSTM separator")
class TasNet(Separator):
    """TasNet: gated conv encoder, (B)LSTM masks, linear decoder.

    ``separate(wav)``: ``(batch, audio_channels, samples) -> (batch, sources,
    audio_channels, samples)`` for any ``samples >= 1``.
    """

    architecture = "tasnet"
    config_class = TasNetConfig
    config: TasNetConfig

    def __init__(self, config: TasNetConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = GatedEncoder(c.N, c.L)
        self.separator = LSTMSeparator(c.N, c.hidden, c.layers, len(c.sources), not c.causal, c.skip, c.mask_activation)
        self.decoder = LinearDecoder(c.N, c.L)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Separate ``(batch, channels, samples)`` into ``(batch, sources, channels, samples)``."""
        check_waveform(wav, self.config.audio_channels)
        c = self.config
        batch, channels, samples = wav.shape
        sources = len(c.sources)
        x = wav.reshape(batch * channels, 1, samples)  # (batch*channels, 1, samples)
        x = F.pad(x, (0, (-samples) % c.L))  # (batch*channels, 1, K * L)
        w, norms = self.encoder(x)  # (batch*channels, N, K), (batch*channels, K)
        masks = self.separator(w)  # (batch*channels, sources, N, K)
        y = self.decoder((masks * w[:, None]).flatten(0, 1))  # (batch*channels*sources, K * L)
        y = y.view(batch * channels, sources, -1, c.L) * norms[:, None, :, None]  # (batch*channels, sources, K, L)
        y = y.flatten(2)[..., :samples]  # (batch*channels, sources, samples)
        return y.view(batch, channels, sources, samples).transpose(1, 2)  # (batch, sources, channels, samples)

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`forward`; ``target`` is unused (all sources are returned)."""
        return self(x)

    def stream_init(self, batch: int) -> dict[str, torch.Tensor]:
        """LSTM states of ``batch`` fresh streams (causal variant): ``(batch, channels, layers, hidden)``."""
        c = self.config
        if not c.causal:
            raise ValueError("the non-causal TasNet (BLSTM) needs the whole chunk: it cannot stream")
        zeros = self.decoder.basis.weight.new_zeros(batch, c.audio_channels, c.layers, c.hidden)
        return {"h": zeros, "c": zeros.clone()}

    def stream_step(
        self, x: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(batch, channels, n)`` new samples (``n`` a multiple of ``L``) -> ``(batch, sources,
        channels, n)`` estimates of the same samples (no delay: a segment is final once complete)."""
        check_waveform(x, self.config.audio_channels)
        c = self.config
        batch, channels, n = x.shape
        if n % c.L:
            raise ValueError(f"a step must be a multiple of {c.L} samples, got {n}")
        h = state["h"].flatten(0, 1).transpose(0, 1)  # (layers, batch*channels, hidden)
        cell = state["c"].flatten(0, 1).transpose(0, 1)
        w, norms = self.encoder(x.reshape(batch * channels, 1, n))  # (batch*channels, N, K), (batch*channels, K)
        masks, h, cell = self.separator.step(w, h, cell)
        y = self.decoder((masks * w[:, None]).flatten(0, 1))  # (batch*channels*sources, n)
        y = y.view(batch * channels, len(c.sources), -1, c.L) * norms[:, None, :, None]
        out = y.flatten(2).view(batch, channels, len(c.sources), n).transpose(1, 2)
        lead = (batch, channels, c.layers, c.hidden)
        return out, {"h": h.transpose(0, 1).reshape(lead), "c": cell.transpose(0, 1).reshape(lead)}

    def describe(self) -> ModelDescription:
        c = self.config
        if c.causal:
            lookahead = c.L - 1  # the rest of the current segment
            segment = None
        else:
            # A BLSTM output depends on the whole chunk: the first sample of a chunk
            # waits for its last one.
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
            receptive_field=None,  # recurrent state: unbounded
            lookahead=lookahead,
            stride=c.L,
            segment=segment,
            stream_delay=0 if c.causal else None,
            extras={"recurrent": True},
        )
