"""Multi-source U-Net with auxiliary heads: per-stem activity, lead voicing and lead f0 per STFT frame.

The seed's multitask variants: the U-Net also learns which stems play, when
the lead "sings", and at what pitch. The heads sit on the multi-source U-Net
rather than on the conditioned one because activity is an answer about every
stem at once: the conditioned U-Net's FiLM layers change every feature map
for the one target of a pass, so its features would describe that target
only and the heads would need a pass per stem.

The heads read the last decoder layer's features, ``(B, W, F', T')`` with
``W = 2 * channels[0]``, ``F' = ceil(bins / 2)``, ``T' = ceil(frames / 2)``
(what the mask convolution reads; :meth:`models.unet.UNetCore.features`):

* **activity** (one logit per stem) and **voicing** (one logit): the features
  averaged over frequency, then two 1x1 convolutions over channels;
* **f0**: a 1x1 convolution to one salience value per (frequency row, frame),
  then a linear map from the ``F'`` rows to the semitones
  ``pitch_min .. pitch_max`` (a pitch-class-and-octave classifier; the
  voicing head says whether there is a pitch at all).

Each head's frames are repeated twice along time and cut to the window's
``frames``, so head frame ``k`` is STFT frame ``k``, the frame that
:func:`models.data.labels.frame_labels` labels. Separation is unchanged:
``forward`` / ``separate`` are the multi-source U-Net's.

Losses (:func:`multitask_loss`): binary cross-entropy for activity and voicing,
cross-entropy over semitones on voiced frames only, each weighted (config
``activity_weight``, ``voicing_weight``, ``f0_weight``) and added to the
separation loss. Metrics (:func:`multitask_metrics`): raw pitch accuracy
(50 cents, on frames voiced in the labels), voicing recall and false alarm,
activity F1 per stem.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stemserve.models.description import ModelDescription
from stemserve.models.registry import register
from stemserve.models.unet import MUSIC_SOURCES, MultiSourceUNet, UNetConfig


@dataclass(frozen=True)
class MultitaskUNetConfig(UNetConfig):
    """:class:`~models.unet.UNetConfig` plus the heads'.

    Attributes:
        pitch_min, pitch_max: MIDI pitches of the f0 head's first and last class (semitones).
        head_hidden: channels of the activity and voicing heads' hidden 1x1 convolution.
        activity_weight, voicing_weight, f0_weight: weights of the auxiliary losses, added to
            the separation loss.
    """

    sources: tuple[str, ...] = MUSIC_SOURCES
    pitch_min: int = 36
    pitch_max: int = 96
    head_hidden: int = 32
    activity_weight: float = 0.1
    voicing_weight: float = 0.1
    f0_weight: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pitch_max <= self.pitch_min:
            raise ValueError("pitch_max must exceed pitch_min")
        if min(self.activity_weight, self.voicing_weight, self.f0_weight) < 0:
            raise ValueError("loss weights must be >= 0")


@dataclass
class HeadOutputs:
    """Logits per STFT frame: ``activity (B, K, T)``, ``voicing (B, T)``, ``pitch (B, P, T)``."""

    activity: torch.Tensor
    voicing: torch.Tensor
    pitch: torch.Tensor


class FrameHead(nn.Module):
    """Frequency-averaged features -> logits per frame: ``(B, W, F', T') -> (B, out, T')``."""

    def __init__(self, width: int, hidden: int, out: int) -> None:
        super().__init__()
        self.hidden = nn.Conv1d(width, hidden, 1)
        self.out = nn.Conv1d(hidden, out, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=2)  # (B, W, T')
        return self.out(torch.relu(self.hidden(pooled)))  # (B, out, T')


class PitchHead(nn.Module):
    """Salience over frequency rows -> semitone logits: ``(B, W, F', T') -> (B, P, T')``."""

    def __init__(self, width: int, rows: int, pitches: int) -> None:
        super().__init__()
        self.salience = nn.Conv2d(width, 1, 1)
        self.classify = nn.Conv1d(rows, pitches, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        salience = torch.relu(self.salience(features))[:, 0]  # (B, F', T')
        return self.classify(salience)  # (B, P, T')


@register(
    "multitask_unet",
    summary="Multi-source spectrogram U-Net with heads for per-stem activity, lead voicing and lead f0 per frame",
)
class MultitaskUNet(MultiSourceUNet):
    """:class:`~models.unet.MultiSourceUNet` plus activity, voicing and f0 heads (see module doc)."""

    architecture = "multitask_unet"
    config_class = MultitaskUNetConfig
    config: MultitaskUNetConfig

    def __init__(self, config: MultitaskUNetConfig = MultitaskUNetConfig()) -> None:
        super().__init__(config)
        c = config
        width = 2 * c.channels[0] if len(c.channels) > 1 else c.channels[-1]
        rows = (c.bins + 1) // 2
        self.activity_head = FrameHead(width, c.head_hidden, len(c.sources))
        self.voicing_head = FrameHead(width, c.head_hidden, 1)
        self.pitch_head = PitchHead(width, rows, c.pitch_max - c.pitch_min + 1)

    def forward_heads(self, mag: torch.Tensor) -> tuple[torch.Tensor, HeadOutputs]:
        """``(B, C, F, T)`` magnitudes -> masks ``(B, K, C, F, T)`` and the heads' logits per frame."""
        self._check(mag)
        features, size = self.core.features(self._normalise(mag))  # (B, W, F', T')
        masks = self._masks(self.core.output(features, output_size=list(size)), mag)
        frames = mag.shape[-1]

        def per_frame(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(2, dim=-1)[..., :frames]  # head frame k -> STFT frames 2k, 2k+1

        heads = HeadOutputs(
            activity=per_frame(self.activity_head(features)),
            voicing=per_frame(self.voicing_head(features))[:, 0],
            pitch=per_frame(self.pitch_head(features)),
        )
        return masks, heads

    def separate_with_heads(
        self, x: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, HeadOutputs]:
        """``(B, C, F, T)`` magnitudes -> ``(B, K, C, F, T)`` estimates (:meth:`separate`'s) and the
        heads' logits, from one forward pass (the server's live sessions read both)."""
        masks, heads = self.forward_heads(x)
        return masks * x[:, None], heads

    def describe(self) -> ModelDescription:
        d = super().describe()
        extras = {**d.extras, "pitch_min": self.config.pitch_min, "pitch_max": self.config.pitch_max}
        return dataclasses.replace(d, heads=("activity", "voicing", "f0"), extras=extras)

    def pitch_of(self, heads: HeadOutputs) -> torch.Tensor:
        """Estimated lead f0 per frame as a MIDI pitch, 0 where the voicing head says unvoiced: ``(B, T)``."""
        pitch = heads.pitch.argmax(dim=1).to(heads.voicing.dtype) + self.config.pitch_min
        return torch.where(heads.voicing > 0, pitch, torch.zeros_like(pitch))


def multitask_loss(
    heads: HeadOutputs, activity: torch.Tensor, f0: torch.Tensor, config: MultitaskUNetConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted auxiliary loss and its parts.

    Args:
        heads: the logits of :meth:`MultitaskUNet.forward_heads`.
        activity: ``(B, K, T)`` labels in {0, 1}.
        f0: ``(B, T)`` lead MIDI pitch, 0 where unvoiced (voiced frames outside the head's range
            are clamped to its ends).
    """
    voiced = (f0 > 0).to(heads.voicing.dtype)
    activity_loss = F.binary_cross_entropy_with_logits(heads.activity, activity.to(heads.activity.dtype))
    voicing_loss = F.binary_cross_entropy_with_logits(heads.voicing, voiced)
    target = (f0.round().long() - config.pitch_min).clamp(0, config.pitch_max - config.pitch_min)
    per_frame = F.cross_entropy(heads.pitch, target, reduction="none")  # (B, T)
    f0_loss = (per_frame * voiced).sum() / voiced.sum().clamp(min=1.0)
    total = config.activity_weight * activity_loss + config.voicing_weight * voicing_loss + config.f0_weight * f0_loss
    parts = {
        name: float(value.detach())
        for name, value in (("activity", activity_loss), ("voicing", voicing_loss), ("f0", f0_loss))
    }
    return total, parts


def multitask_metrics(
    model: MultitaskUNet, heads: HeadOutputs, activity: torch.Tensor, f0: torch.Tensor
) -> dict[str, float]:
    """Raw pitch accuracy (within 50 cents on frames voiced in the labels), voicing recall and false
    alarm rate, and activity F1 per stem (``activity_f1/<stem>``), over every frame given."""
    voiced = f0 > 0
    said_voiced = heads.voicing > 0
    out: dict[str, float] = {}
    if voiced.any():
        # The raw pitch of a frame the voicing head calls unvoiced is still the pitch head's answer.
        raw = heads.pitch.argmax(dim=1).to(f0.dtype) + model.config.pitch_min
        cents = 100.0 * (raw[voiced] - f0[voiced])  # MIDI pitches are semitones
        out["raw_pitch_accuracy"] = float((cents.abs() < 50.0).float().mean())
        out["voicing_recall"] = float(said_voiced[voiced].float().mean())
    if (~voiced).any():
        out["voicing_false_alarm"] = float(said_voiced[~voiced].float().mean())
    said_active = heads.activity > 0
    truth = activity > 0.5
    for k, stem in enumerate(model.config.sources):
        tp = float((said_active[:, k] & truth[:, k]).sum())
        fp = float((said_active[:, k] & ~truth[:, k]).sum())
        fn = float((~said_active[:, k] & truth[:, k]).sum())
        out[f"activity_f1/{stem}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return out
