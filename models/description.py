"""What the server needs to know about a network, as plain data.

Every architecture answers :meth:`models.base.Separator.describe` with a
:class:`ModelDescription`. The server decides how to stream a model from this
description alone (window batcher, causal streamer or chunked overlap); it
never looks inside the network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Domain = Literal["spectrogram", "waveform"]
# Per-frame auxiliary outputs a model may state in ``ModelDescription.heads``.
HEAD_NAMES = ("activity", "voicing", "f0")


def window_span(window_frames: int, hop_length: int, n_fft: int) -> int:
    """Samples covered by ``window_frames`` STFT frames of ``n_fft`` samples, ``hop_length`` apart."""
    return (window_frames - 1) * hop_length + n_fft


@dataclass(frozen=True)
class ModelDescription:
    """The contract between a network and the server.

    Attributes:
        architecture: registry name of the architecture (``"unet"``, ``"conv_tasnet"``, ...).
        sources: stem names the model outputs, in output order. For a conditioned
            model, the names it can be conditioned on (it outputs one stem at a time).
        conditioned: True when the model takes a target index and returns that stem only.
        sample_rate: audio rate in Hz the model was built / trained for.
        audio_channels: channels the model consumes and returns (1 = mono, 2 = stereo).
        domain: ``"spectrogram"`` (magnitude estimate on an STFT) or ``"waveform"``.
        n_fft: STFT size in samples (spectrogram models only).
        hop_length: STFT hop in samples (spectrogram models only).
        window_frames: the fixed number of STFT frames per forward pass the model was
            trained on (spectrogram models only); the server batches windows of exactly
            this many frames.
        causal: True when output sample t depends only on input samples <= t + lookahead.
        receptive_field: number of past input samples (including the current one) that
            influence an output sample, or None when unbounded (recurrent state).
        lookahead: number of future input samples an output sample depends on. For
            non-causal waveform models this is the right context the server waits for.
        stride: input samples per model step (encoder stride / total downsampling; the
            STFT hop for spectrogram models). A causal model run on a segment that starts
            at a multiple of ``stride`` from the stream start, with at least
            ``receptive_field`` samples of left context, reproduces its offline output.
        segment: preferred chunk length in samples for non-causal waveform models,
            or None when any length works equally well.
        stream_delay: set when the model keeps per-layer caches (``stream_init`` /
            ``stream_step``, see :mod:`models.streaming`): a step of any multiple of
            ``stride`` samples returns estimates delayed by this many samples. None
            when the model can only be streamed by recomputing its left context.
        heads: the per-frame auxiliary outputs the model computes beside its stems, in the
            same forward pass (``separate_with_heads``): ``"activity"`` (probability that each
            source plays), ``"voicing"`` (the lead's voicing probability), ``"f0"`` (the lead's
            pitch). Empty for models without heads.
        extras: architecture-specific facts, primitives only (e.g. embedding size).
    """

    architecture: str
    sources: tuple[str, ...]
    conditioned: bool
    sample_rate: int
    audio_channels: int
    domain: Domain
    causal: bool
    receptive_field: int | None
    lookahead: int
    n_fft: int | None = None
    hop_length: int | None = None
    window_frames: int | None = None
    stride: int = 1
    segment: int | None = None
    stream_delay: int | None = None
    heads: tuple[str, ...] = ()
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("a model must name at least one source")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"duplicate source names: {self.sources}")
        if self.sample_rate <= 0 or self.audio_channels <= 0:
            raise ValueError("sample_rate and audio_channels must be positive")
        if self.domain == "spectrogram":
            if not (self.n_fft and self.hop_length and self.window_frames):
                raise ValueError("spectrogram models must state n_fft, hop_length and window_frames")
        elif self.domain != "waveform":
            raise ValueError(f"unknown domain {self.domain!r}")
        if self.stride <= 0:
            raise ValueError("stride must be >= 1")
        if self.lookahead < 0:
            raise ValueError("lookahead must be >= 0")
        unknown_heads = set(self.heads) - set(HEAD_NAMES)
        if unknown_heads:
            raise ValueError(f"unknown heads {sorted(unknown_heads)} (known: {', '.join(HEAD_NAMES)})")
        if self.stream_delay is not None and (self.stream_delay < 0 or not self.causal or self.domain != "waveform"):
            raise ValueError("stream_delay is for causal waveform models and must be >= 0")

    @property
    def window_samples(self) -> int | None:
        """Samples spanned by one fixed spectrogram window, or None for waveform models."""
        if self.domain != "spectrogram":
            return None
        assert self.n_fft is not None and self.hop_length is not None and self.window_frames is not None
        return window_span(self.window_frames, self.hop_length, self.n_fft)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of primitives (lists, not tuples) for JSON and checkpoints."""
        data = dataclasses.asdict(self)
        data["sources"] = list(self.sources)
        data["heads"] = list(self.heads)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelDescription:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown description fields: {sorted(unknown)}")
        values = dict(data)
        values["sources"] = tuple(values["sources"])
        values["heads"] = tuple(values.get("heads") or ())
        values["extras"] = dict(values.get("extras") or {})
        return cls(**values)
