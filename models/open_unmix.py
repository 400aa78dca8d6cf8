"""Open-Unmix (Stöter, Uhlich, Liutkus & Mitsufuji, JOSS 2019) and its published weights.

One network estimates one target's magnitude spectrogram from the mixture's:

1. crop to the lowest ``max_bin`` bins (16 kHz bandwidth at 44.1 kHz) and
   standardise each bin with learnt ``input_mean`` / ``input_scale``;
2. ``fc1`` (all channels' bins -> ``hidden_size``) + ``bn1`` + tanh;
3. a ``nb_layers``-deep LSTM over frames (bidirectional, ``hidden_size / 2`` per
   direction; unidirectional with ``hidden_size`` for the causal variant),
   dropout 0.4 between layers;
4. skip connection: the LSTM input and output are concatenated (``2 * hidden_size``);
5. ``fc2`` + ``bn2`` + ReLU, then ``fc3`` + ``bn3`` back to all bins of all channels;
6. per-bin ``output_scale`` / ``output_mean``, ReLU, times the mixture magnitude.

Parameter and buffer names are those of ``openunmix.model.OpenUnmix`` (fc1, bn1,
lstm, fc2, bn2, fc3, bn3, input_mean, input_scale, output_scale, output_mean),
so a published state dict loads with ``load_state_dict`` unchanged. As in the
package, ``input_mean`` holds the *negated* dataset mean and ``input_scale`` the
*reciprocal* standard deviation: the input transform is ``(x + mean) * scale``.

The official release has one network per target; :class:`OpenUnmixStems` holds
one :class:`OpenUnmix` per target. :func:`load_official` reads a published
``<target>.pth`` file or a model folder (``separator.json`` + ``<target>.pth``).

Shapes: ``B`` batch, ``C`` audio channels, ``F`` frequency bins (``nb_bins``),
``M`` input bins (``max_bin``), ``T`` frames, ``H`` hidden size, ``S`` targets.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stemserve.models.base import Separator
from stemserve.models.checkpoint import FORMAT as STEMSERVE_FORMAT
from stemserve.models.checkpoint import CheckpointError
from stemserve.models.description import ModelDescription, window_span
from stemserve.models.registry import register

log = logging.getLogger(__name__)

MUSIC_TARGETS = ("vocals", "drums", "bass", "other")

# (h, c) of the LSTM, each (nb_layers, B, hidden_size): the carried state of a causal stream.
LSTMState = tuple[torch.Tensor, torch.Tensor]

# Entries of published state dicts that are not network weights: older releases
# saved the STFT window and the sample rate inside the model's state dict.
_LEGACY_KEYS = ("sample_rate", "stft.window", "transform.0.window")
_SEPARATOR_JSON = "separator.json"


def bandwidth_to_max_bin(sample_rate: int, n_fft: int, bandwidth: float) -> int:
    """Number of STFT bins whose centre frequency is at most ``bandwidth`` Hz.

    Bin ``k`` is centred at ``k * sample_rate / n_fft``; 16 kHz at 44.1 kHz with
    ``n_fft = 4096`` gives 1487, the published models' ``max_bin``.
    """
    if sample_rate <= 0 or n_fft <= 0 or bandwidth < 0:
        raise ValueError("sample_rate and n_fft must be positive and bandwidth non-negative")
    return min(int(bandwidth * n_fft // sample_rate) + 1, n_fft // 2 + 1)


@dataclass(frozen=True)
class OpenUnmixHyperparameters:
    """Hyperparameters one Open-Unmix network shares with its siblings (paper values as defaults).

    Attributes:
        nb_bins: STFT bins of the input and output, ``n_fft // 2 + 1``.
        nb_channels: audio channels (2 = stereo); they are concatenated before ``fc1``.
        hidden_size: width ``H`` of the bottleneck layers and of the LSTM output.
        nb_layers: stacked LSTM layers.
        unidirectional: a forward-only LSTM, so output frame ``t`` depends only on
            input frames ``<= t`` (the causal, real-time variant).
        max_bin: the network sees only the lowest ``max_bin`` bins (None: all bins);
            its output still covers all ``nb_bins``.
        lstm_dropout: dropout between LSTM layers (only when ``nb_layers > 1``).
        sample_rate: audio rate in Hz.
        n_fft: STFT size in samples.
        hop_length: STFT hop in samples.
        window_frames: frames per forward pass the server batches; 256 frames at
            hop 1024 and 44.1 kHz is about 6 s, the paper's training excerpt length.
    """

    nb_bins: int = 2049
    nb_channels: int = 2
    hidden_size: int = 512
    nb_layers: int = 3
    unidirectional: bool = False
    max_bin: int | None = 1487
    lstm_dropout: float = 0.4
    sample_rate: int = 44100
    n_fft: int = 4096
    hop_length: int = 1024
    window_frames: int = 256

    def __post_init__(self) -> None:
        if self.nb_bins != self.n_fft // 2 + 1:
            expected = self.n_fft // 2 + 1
            raise ValueError(f"nb_bins={self.nb_bins} does not match n_fft={self.n_fft} (expected {expected})")
        if self.max_bin is not None and not 1 <= self.max_bin <= self.nb_bins:
            raise ValueError(f"max_bin={self.max_bin} must be in [1, nb_bins={self.nb_bins}] or None")
        if self.nb_channels < 1 or self.nb_layers < 1 or self.hidden_size < 1:
            raise ValueError("nb_channels, nb_layers and hidden_size must be >= 1")
        if not self.unidirectional and self.hidden_size % 2:
            # Each direction gets hidden_size // 2 units; the skip concatenation needs them to add up.
            raise ValueError(f"a bidirectional model needs an even hidden_size, got {self.hidden_size}")
        if not 0.0 <= self.lstm_dropout < 1.0:
            raise ValueError(f"lstm_dropout must be in [0, 1), got {self.lstm_dropout}")
        if self.sample_rate <= 0 or self.hop_length <= 0 or self.window_frames < 1:
            raise ValueError("sample_rate, hop_length and window_frames must be positive")

    @property
    def input_bins(self) -> int:
        """Bins the network reads (``M``): ``max_bin`` or all of them."""
        return self.max_bin if self.max_bin is not None else self.nb_bins

    def hyperparameters(self) -> dict[str, Any]:
        """The shared fields only, as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(OpenUnmixHyperparameters)}


@dataclass(frozen=True)
class OpenUnmixConfig(OpenUnmixHyperparameters):
    """One Open-Unmix network: the shared hyperparameters plus the target it estimates."""

    target: str = "vocals"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.target:
            raise ValueError("target must be a non-empty name")


@dataclass(frozen=True)
class OpenUnmixStemsConfig(OpenUnmixHyperparameters):
    """One Open-Unmix network per target, all with the same hyperparameters."""

    targets: tuple[str, ...] = MUSIC_TARGETS

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.targets or not all(self.targets):
            raise ValueError(f"targets must be non-empty names, got {self.targets}")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"duplicate targets: {self.targets}")

    def target_config(self, target: str) -> OpenUnmixConfig:
        return OpenUnmixConfig(target=target, **self.hyperparameters())


def _describe(architecture: str, sources: tuple[str, ...], cfg: OpenUnmixHyperparameters) -> ModelDescription:
    """The description both classes give.

    Timing in samples, with the STFT convention of :mod:`models.stft` (frame ``k``
    covers samples ``[k * hop, k * hop + n_fft)``):

    * causal variant: output frame ``k`` depends on input frames ``<= k``, whose
      last sample is ``k * hop + n_fft - 1``; the first output sample that frame
      contributes to is ``k * hop``. So although the network has no lookahead in
      frames, an output *sample* depends on up to ``n_fft - 1`` future samples,
      the unavoidable latency of analysing a whole frame. That is the lookahead.
    * bidirectional: every output frame depends on every frame of the window the
      server runs, so the first sample of a window depends on its last one:
      ``lookahead = window_samples - 1``.
    * receptive field: None, the LSTM state reaches back without bound (the causal
      variant is streamed with carried state, see :meth:`OpenUnmix.separate_stream`).
    """
    span = window_span(cfg.window_frames, cfg.hop_length, cfg.n_fft)
    lookahead = cfg.n_fft - 1 if cfg.unidirectional else span - 1
    return ModelDescription(
        architecture=architecture,
        sources=sources,
        conditioned=False,
        sample_rate=cfg.sample_rate,
        audio_channels=cfg.nb_channels,
        domain="spectrogram",
        causal=cfg.unidirectional,
        receptive_field=None,
        lookahead=lookahead,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        window_frames=cfg.window_frames,
        stride=cfg.hop_length,
        extras={
            "max_bin": cfg.input_bins,
            "hidden_size": cfg.hidden_size,
            "nb_layers": cfg.nb_layers,
            "lookahead_frames": 0 if cfg.unidirectional else cfg.window_frames - 1,
            # True when separate_stream() can carry LSTM state across calls.
            "stateful_stream": cfg.unidirectional,
        },
    )


def _check_magnitudes(mag: torch.Tensor, cfg: OpenUnmixHyperparameters) -> None:
    if mag.dim() != 4 or mag.shape[1] != cfg.nb_channels or mag.shape[2] != cfg.nb_bins or mag.shape[3] < 1:
        raise ValueError(
            f"expected magnitudes (batch, {cfg.nb_channels}, {cfg.nb_bins}, frames >= 1), got {tuple(mag.shape)}"
        )
    if mag.shape[0] < 1:
        raise ValueError(f"expected a non-empty batch, got {tuple(mag.shape)}")


@register("open_unmix", summary="Open-Unmix (Stöter et al. 2019): BLSTM mask estimator, one network per target")
@register(
    "open_unmix_causal",
    summary="Open-Unmix with a unidirectional LSTM (causal, real-time)",
    unidirectional=True,
)
class OpenUnmix(Separator):
    """One Open-Unmix network: mixture magnitudes in, one target's magnitudes out."""

    architecture = "open_unmix"
    config_class = OpenUnmixConfig
    config: OpenUnmixConfig

    def __init__(self, config: OpenUnmixConfig = OpenUnmixConfig()) -> None:
        super().__init__(config)
        c, h, m, f = config.nb_channels, config.hidden_size, config.input_bins, config.nb_bins
        self.fc1 = nn.Linear(c * m, h, bias=False)
        self.bn1 = nn.BatchNorm1d(h)
        self.lstm = nn.LSTM(
            input_size=h,
            hidden_size=h if config.unidirectional else h // 2,
            num_layers=config.nb_layers,
            bidirectional=not config.unidirectional,
            batch_first=True,
            dropout=config.lstm_dropout if config.nb_layers > 1 else 0.0,
        )
        self.fc2 = nn.Linear(2 * h, h, bias=False)
        self.bn2 = nn.BatchNorm1d(h)
        self.fc3 = nn.Linear(h, c * f, bias=False)
        self.bn3 = nn.BatchNorm1d(c * f)
        # Neutral until trained or loaded: zero shift, unit scale in; unit scale, +1 offset out
        # (the package's initial values, so an untrained mask starts near one).
        self.input_mean = nn.Parameter(torch.zeros(m))
        self.input_scale = nn.Parameter(torch.ones(m))
        self.output_scale = nn.Parameter(torch.ones(f))
        self.output_mean = nn.Parameter(torch.ones(f))

    def _estimate(self, mag: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
        """``(B, C, F, T)`` magnitudes -> ``(B, C, F, T)`` estimates and the LSTM's final state."""
        cfg = self.config
        b, c, _, t = mag.shape
        x = mag[:, :, : cfg.input_bins].permute(0, 3, 1, 2)  # (B, T, C, M): frames become the sequence
        x = (x + self.input_mean) * self.input_scale  # per-bin standardisation
        x = self.fc1(x.reshape(b * t, c * cfg.input_bins))  # (B*T, H)
        x = torch.tanh(self.bn1(x)).reshape(b, t, cfg.hidden_size)  # (B, T, H)
        y, new_state = self.lstm(x, state)  # (B, T, H)
        x = torch.cat([x, y], dim=-1).reshape(b * t, 2 * cfg.hidden_size)  # skip: (B*T, 2H)
        x = F.relu(self.bn2(self.fc2(x)))  # (B*T, H)
        x = self.bn3(self.fc3(x)).reshape(b, t, c, cfg.nb_bins)  # (B, T, C, F)
        x = x * self.output_scale + self.output_mean
        mask = F.relu(x).permute(0, 2, 3, 1)  # (B, C, F, T), non-negative
        return mask * mag, new_state

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` mixture magnitudes -> ``(B, C, F, T)`` target magnitudes.

        Same contract as ``openunmix.model.OpenUnmix.forward``.
        """
        _check_magnitudes(mag, self.config)
        return self._estimate(mag, None)[0]

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, 1, C, F, T)`` estimates. ``target`` is ignored (not conditioned)."""
        return self(x).unsqueeze(1)

    def separate_stream(self, x: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        """Causal variant only: separate the next frames of a stream, carrying the LSTM state.

        Args:
            x: ``(B, C, F, T)`` magnitudes of the frames that follow those already seen.
            state: what the previous call returned, or None at the start of a stream.
        Returns:
            ``(B, 1, C, F, T)`` estimates and the state for the next call. In eval mode,
            feeding a stream in pieces gives the same estimates as one :meth:`separate`
            call on the whole stream. The caller (a session) owns the state.
        """
        if not self.config.unidirectional:
            raise ValueError("separate_stream needs the unidirectional (causal) variant")
        _check_magnitudes(x, self.config)
        if state is not None:
            expected = (self.config.nb_layers, x.shape[0], self.config.hidden_size)
            if len(state) != 2 or any(tuple(s.shape) != expected for s in state):
                raise ValueError(f"expected an (h, c) state of shape {expected} each")
        estimate, new_state = self._estimate(x, state)
        return estimate.unsqueeze(1), new_state

    def separate_offline(self, mix: torch.Tensor, options: FileOptions | None = None) -> torch.Tensor:
        """A whole file, as ``openunmix.Separator``: ``(C, samples) -> (1 [+ residual], C, samples)``."""
        return separate_offline([self], mix, options or FileOptions())

    def describe(self) -> ModelDescription:
        return _describe(self.architecture, (self.config.target,), self.config)


@register(
    "open_unmix_stems",
    summary="Open-Unmix for vocals, drums, bass and other: one network per target",
    targets=MUSIC_TARGETS,
)
class OpenUnmixStems(Separator):
    """Several :class:`OpenUnmix` networks, one per target, run on the same mixture.

    ``target_models`` is keyed by target name, as in the package's ``Separator``, so
    the state dict reads ``target_models.<target>.fc1.weight`` and so on.
    """

    architecture = "open_unmix_stems"
    config_class = OpenUnmixStemsConfig
    config: OpenUnmixStemsConfig

    def __init__(self, config: OpenUnmixStemsConfig = OpenUnmixStemsConfig()) -> None:
        super().__init__(config)
        self.target_models = nn.ModuleDict({name: OpenUnmix(config.target_config(name)) for name in config.targets})

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` mixture magnitudes -> ``(B, S, C, F, T)`` target magnitudes."""
        _check_magnitudes(mag, self.config)
        return torch.stack([self.target_models[name](mag) for name in self.config.targets], dim=1)

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, S, C, F, T)`` estimates, targets in config order."""
        return self(x)

    def separate_stream(
        self, x: torch.Tensor, state: dict[str, LSTMState] | None = None
    ) -> tuple[torch.Tensor, dict[str, LSTMState]]:
        """Causal variant only: :meth:`OpenUnmix.separate_stream` for every target, states keyed by target."""
        outputs, new_state = [], {}
        for name in self.config.targets:
            model = self.target_models[name]
            assert isinstance(model, OpenUnmix)
            out, new_state[name] = model.separate_stream(x, None if state is None else state[name])
            outputs.append(out)
        return torch.cat(outputs, dim=1), new_state

    def separate_offline(self, mix: torch.Tensor, options: FileOptions | None = None) -> torch.Tensor:
        """A whole file, as ``openunmix.Separator``: ``(C, samples) -> (S [+ residual], C, samples)``."""
        models = [self.target_models[name] for name in self.config.targets]
        return separate_offline(models, mix, options or FileOptions())  # type: ignore[arg-type]

    def describe(self) -> ModelDescription:
        return _describe(self.architecture, self.config.targets, self.config)


# --------------------------------------------------------------------------------------
# File separation: the package's whole-signal path


@dataclass(frozen=True)
class FileOptions:
    """How :func:`separate_offline` filters, with the defaults of ``openunmix.Separator``.

    Attributes:
        niter: expectation-maximisation steps of the multichannel Wiener post-filter
            (0: the estimated magnitudes with the mixture's phase).
        residual: add a ``residual`` source, the mixture minus the other estimates,
            before the post-filter.
        softmask: start from ratio masks of the estimates instead of their magnitudes.
        wiener_win_len: frames filtered together (each excerpt has its own spatial
            covariances); None: the whole file at once.
    """

    niter: int = 0
    residual: bool = False
    softmask: bool = False
    wiener_win_len: int | None = 300

    def __post_init__(self) -> None:
        if self.niter < 0:
            raise ValueError(f"niter must be >= 0, got {self.niter}")
        if self.wiener_win_len is not None and self.wiener_win_len < 1:
            raise ValueError(f"wiener_win_len must be >= 1 or None, got {self.wiener_win_len}")


def _invert_2x2(m: torch.Tensor) -> torch.Tensor:
    """Inverse of ``(..., 2, 2)`` complex matrices by the adjugate (what the package does, in closed form)."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    inv_det = 1.0 / (a * d - b * c)
    return torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) * inv_det[..., None, None]


def expectation_maximization(y: torch.Tensor, x: torch.Tensor, iterations: int, eps: float = 1e-10) -> torch.Tensor:
    """Refine source STFTs with the simplified multichannel Wiener EM of Open-Unmix's post-filter.

    Each step estimates per source ``j`` a power spectral density ``v_j`` (frames x bins,
    mean over channels of ``|y_j|^2``) and a spatial covariance ``R_j`` per bin (the
    ``v``-weighted average of ``y_j y_j^H`` over frames), then sets
    ``y_j = v_j R_j (sum_k v_k R_k + sqrt(eps) I)^{-1} x``.

    Args:
        y: ``(frames, bins, channels, sources)`` complex initial estimates.
        x: ``(frames, bins, channels)`` complex mixture STFT.
    Returns:
        ``(frames, bins, channels, sources)`` complex refined estimates.
    """
    channels = x.shape[-1]
    if channels > 2:
        raise ValueError(f"the Wiener post-filter handles 1 or 2 channels, got {channels}")
    eye = torch.eye(channels, dtype=x.dtype, device=x.device)
    regularization = math.sqrt(eps) * eye  # (C, C)
    for _ in range(iterations):
        v = (y.real**2 + y.imag**2).mean(dim=2)  # (T, F, S)
        outer = y.unsqueeze(3) * y.conj().unsqueeze(2)  # (T, F, C, C, S): y_j y_j^H
        r = outer.sum(dim=0) / (eps + v.sum(dim=0))[:, None, None, :]  # (F, C, C, S)
        cxx = regularization + torch.einsum("tfs,fabs->tfab", v.to(x.dtype), r)  # (T, F, C, C)
        inv = 1.0 / cxx if channels == 1 else _invert_2x2(cxx)  # (T, F, C, C)
        gain = torch.einsum("fabs,tfbc->tfacs", r, inv) * v[:, :, None, None, :]  # (T, F, C, C, S)
        y = torch.einsum("tfacs,tfc->tfas", gain, x)  # (T, F, C, S)
    return y


def wiener(
    spectrograms: torch.Tensor,
    mix: torch.Tensor,
    options: FileOptions,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
) -> torch.Tensor:
    """Source STFTs from estimated magnitudes, as the package's ``filtering.wiener``.

    Args:
        spectrograms: ``(frames, bins, channels, sources)`` non-negative magnitudes.
        mix: ``(frames, bins, channels)`` complex mixture STFT.
    Returns:
        ``(frames, bins, channels, sources [+ 1 residual])`` complex estimates.
    """
    if options.softmask:
        share = spectrograms / (eps + spectrograms.sum(dim=-1, keepdim=True))
        y = mix.unsqueeze(-1) * share.to(mix.dtype)
    else:
        y = torch.polar(spectrograms, torch.angle(mix).unsqueeze(-1).expand_as(spectrograms))
    if options.residual:
        y = torch.cat([y, mix.unsqueeze(-1) - y.sum(dim=-1, keepdim=True)], dim=-1)
    if options.niter == 0:
        return y
    # EM runs on a mixture scaled to peak magnitude <= scale_factor (the package's conditioning).
    peak = max(1.0, float(mix.abs().max()) / scale_factor)
    return expectation_maximization(y / peak, mix / peak, options.niter, eps) * peak


def separate_offline(
    models: Sequence[OpenUnmix], mix: torch.Tensor, options: FileOptions = FileOptions()
) -> torch.Tensor:
    """A whole file as ``openunmix.Separator`` separates it.

    The STFT is centred (``n_fft / 2`` samples of reflection padding at both ends, a
    periodic Hann window), every target network sees the whole file's magnitudes at
    once, the post-filter runs on excerpts of ``wiener_win_len`` frames, and the
    inverse STFT is cut to the input length.

    Args:
        models: the target networks (one shared STFT configuration).
        mix: ``(channels, samples)`` at the models' rate, ``samples > n_fft / 2``.
    Returns:
        ``(targets [+ 1 residual], channels, samples)``.
    """
    cfg = models[0].config
    if mix.dim() != 2 or mix.shape[0] != cfg.nb_channels:
        raise ValueError(f"expected ({cfg.nb_channels}, samples), got {tuple(mix.shape)}")
    if mix.shape[1] <= cfg.n_fft // 2:
        raise ValueError(f"{mix.shape[1]} samples: Open-Unmix files need more than n_fft / 2 = {cfg.n_fft // 2}")
    if len(models) + int(options.residual) == 1 and options.niter > 0:
        raise ValueError("the Wiener post-filter (niter > 0) needs two sources: add residual=True")
    window = torch.hann_window(cfg.n_fft, device=mix.device, dtype=mix.dtype)
    stft = torch.stft(
        mix, cfg.n_fft, cfg.hop_length, window=window, center=True, pad_mode="reflect", return_complex=True
    )  # (C, F, T)
    mag = stft.abs()
    if cfg.nb_channels == 1:  # the package's mono ComplexNorm (a mean over one channel)
        mag = mag.mean(dim=0, keepdim=True)
    with torch.no_grad():
        estimates = torch.stack([m(mag.unsqueeze(0))[0] for m in models], dim=-1)  # (C, F, T, S)
    spectrograms = estimates.permute(2, 1, 0, 3)  # (T, F, C, S)
    mixture = stft.permute(2, 1, 0)  # (T, F, C)
    frames = mixture.shape[0]
    step = options.wiener_win_len or frames
    pieces = [
        wiener(spectrograms[start : start + step], mixture[start : start + step], options)
        for start in range(0, frames, step)
    ]
    targets = torch.cat(pieces, dim=0).permute(3, 2, 1, 0)  # (S, C, F, T)
    sources = targets.shape[0]
    audio = torch.istft(
        targets.reshape(sources * cfg.nb_channels, *targets.shape[2:]),
        cfg.n_fft,
        cfg.hop_length,
        window=window,
        center=True,
        length=mix.shape[1],
    )  # (S * C, samples)
    return audio.reshape(sources, cfg.nb_channels, -1)  # (S, C, samples)


# --------------------------------------------------------------------------------------
# Published weights


def load_official(path: str | Path) -> Separator:
    """Load published Open-Unmix weights, in eval mode.

    Args:
        path: either one ``<target>.pth`` state dict (also ``<target>-<hash>.pth`` as
            served by torch.hub), or a model folder holding ``separator.json`` and one
            ``<target>.pth`` per target.
    Returns:
        :class:`OpenUnmix` for one target, :class:`OpenUnmixStems` for several.

    Hyperparameters come from the tensors' shapes (bins, ``max_bin``, hidden size,
    channels, layers, direction). The STFT hop and the sample rate are not in the
    weights: they come from ``separator.json`` (``nhop``, ``sample_rate``), which is
    also read when it lies beside a single file; otherwise a single file is assumed
    to use ``hop = n_fft / 4`` and its stored ``sample_rate`` (44.1 kHz if none), the
    published music models' values.

    Raises:
        CheckpointError: for anything that is not an Open-Unmix file or folder.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path).eval()
    if path.is_file():
        separator = _read_separator_json(path.parent / _SEPARATOR_JSON, required=False)
        state = _read_state_dict(path)
        return _model_from_state(_target_name(path), state, separator).eval()
    raise CheckpointError(f"{path}: no such file or folder")


def _load_folder(folder: Path) -> Separator:
    separator = _read_separator_json(folder / _SEPARATOR_JSON, required=True)
    targets = _folder_targets(folder, separator)
    models = {name: _model_from_state(name, _read_state_dict(file), separator) for name, file in targets.items()}
    if len(models) == 1:
        return next(iter(models.values()))
    first = next(iter(models.values())).config
    shared = first.hyperparameters()
    for name, model in models.items():
        if model.config.hyperparameters() != shared:
            raise CheckpointError(
                f"{folder}: target {name!r} has hyperparameters {model.config.hyperparameters()}, "
                f"unlike {first.target!r} ({shared}); targets must share them"
            )
    stems = OpenUnmixStems(OpenUnmixStemsConfig(targets=tuple(models), **shared))
    for name, model in models.items():
        stems.target_models[name].load_state_dict(model.state_dict())
    return stems


def _read_separator_json(file: Path, required: bool) -> dict[str, Any]:
    if not file.is_file():
        if required:
            raise CheckpointError(f"{file.parent}: not an Open-Unmix model folder (no {_SEPARATOR_JSON})")
        return {}
    try:
        content = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable JSON ({err})") from err
    if not isinstance(content, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return content


def _target_name(file: Path) -> str:
    """``vocals.pth`` and torch.hub's ``vocals-b62c91ce.pth`` both name the target ``vocals``."""
    match = re.fullmatch(r"(.+?)(?:[-_][0-9a-f]{8,64})?", file.stem)
    assert match is not None  # the pattern matches any non-empty stem
    return match.group(1)


def _folder_targets(folder: Path, separator: dict[str, Any]) -> dict[str, Path]:
    """Target name -> weights file, in the order of ``separator.json``'s ``targets`` if given."""
    found: dict[str, Path] = {}
    for file in sorted(folder.glob("*.pth")):
        name = _target_name(file)
        if name in found:
            raise CheckpointError(f"{folder}: two weight files for target {name!r}: {found[name].name}, {file.name}")
        found[name] = file
    listed = separator.get("targets")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed) or not listed:
            raise CheckpointError(f"{folder / _SEPARATOR_JSON}: 'targets' must be a non-empty list of names")
        missing = [t for t in listed if t not in found]
        if missing:
            raise CheckpointError(f"{folder}: no weights for targets {missing} (expected <target>.pth)")
        return {t: found[t] for t in listed}
    if not found:
        raise CheckpointError(f"{folder}: no <target>.pth weight files")
    # The usual music order first, then any other targets alphabetically.
    order = sorted(found, key=lambda t: (MUSIC_TARGETS.index(t) if t in MUSIC_TARGETS else len(MUSIC_TARGETS), t))
    return {t: found[t] for t in order}


def _read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        content = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"{file}: not loadable with weights_only=True ({type(err).__name__}: {err})") from err
    if isinstance(content, dict) and content.get("format") == STEMSERVE_FORMAT:
        raise CheckpointError(f"{file}: a stemserve checkpoint, not a published Open-Unmix state dict")
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(f"{file}: not a state dict (expected a dict of tensors)")
    required = ("fc1.weight", "input_mean", "output_mean", "lstm.weight_ih_l0")
    missing = [k for k in required if k not in content]
    if missing:
        raise CheckpointError(f"{file}: not an Open-Unmix state dict (missing {missing})")
    return content


def _model_from_state(target: str, state: dict[str, torch.Tensor], separator: dict[str, Any]) -> OpenUnmix:
    """Infer the hyperparameters from tensor shapes, cross-check ``separator.json``, load."""
    weights = {k: v for k, v in state.items() if k not in _LEGACY_KEYS}
    nb_bins = int(weights["output_mean"].shape[0])
    max_bin = int(weights["input_mean"].shape[0])
    hidden_size, fc1_inputs = (int(n) for n in weights["fc1.weight"].shape)
    if max_bin < 1 or fc1_inputs % max_bin:
        raise CheckpointError(f"target {target!r}: fc1 input width {fc1_inputs} is not channels x max_bin {max_bin}")
    nb_channels = fc1_inputs // max_bin
    nb_layers = sum(1 for k in weights if re.fullmatch(r"lstm\.weight_ih_l\d+", k))
    unidirectional = "lstm.weight_ih_l0_reverse" not in weights

    n_fft = 2 * (nb_bins - 1)
    if "stft.window" in state:
        n_fft = int(state["stft.window"].numel())
    stated = {"nfft": n_fft, "nb_channels": nb_channels}
    for key, inferred in stated.items():
        if key in separator and separator[key] != inferred:
            raise CheckpointError(
                f"target {target!r}: {_SEPARATOR_JSON} says {key}={separator[key]}, the weights say {inferred}"
            )
    stored_rate = state["sample_rate"].item() if "sample_rate" in state else 44100
    sample_rate = _whole_number(separator.get("sample_rate", stored_rate), "sample_rate")
    hop_length = _whole_number(separator.get("nhop", n_fft // 4), "nhop")

    try:
        config = OpenUnmixConfig(
            target=target,
            nb_bins=nb_bins,
            nb_channels=nb_channels,
            hidden_size=hidden_size,
            nb_layers=nb_layers,
            unidirectional=unidirectional,
            max_bin=max_bin,
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
        )
    except ValueError as err:
        raise CheckpointError(f"target {target!r}: inconsistent hyperparameters ({err})") from err
    model = OpenUnmix(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:  # missing / unexpected keys or mismatched shapes
        raise CheckpointError(f"target {target!r}: state dict does not fit Open-Unmix ({err})") from err
    log.info("loaded Open-Unmix %r: %s", target, config)
    return model


def _whole_number(value: Any, name: str) -> int:
    """A positive whole number from JSON or a tensor (``44100.0`` is fine, ``"44100"`` is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise CheckpointError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)
