"""Joint normalisation of the stem estimates of one mixture.

A mask model that estimates each stem on its own (sigmoid masks, or one
conditioned pass per target) leaves the stems free to claim the same energy
twice or to leave some unclaimed. When every stem of the mixture is estimated,
sharing the mixture magnitude out in proportion to a power of the estimates,

    Y_j = |X| * E_j^p / sum_k E_k^p,

makes the stems sum to the mixture. ``p = 1`` is the ratio-mask form of the
oracle IRM (``|S_j| / sum_k |S_k|``); ``p = 2`` shares by power, the
single-channel Wiener filter (Spleeter's mask normalisation, and the
single-pass cousin of Open-Unmix's multichannel Wiener post-filter). On the
bundled U-Net's 16 test songs, ``p = 2`` scored higher (56 % of the oracle-IRM
gain against 52 % for ``p = 1`` and 50 % unnormalised, before joint training),
mostly on vocals.

Models opt in with ``extras["joint_stems"]`` (and ``extras["joint_power"]``,
``p``) in their description; training
then optimises the normalised stems as well (:mod:`models.train`), and offline
separation (:mod:`models.apply`) and the streaming engine normalise whenever a
request asks for all of the model's sources, both through :class:`JointStems`.
A stereo model may instead share the mixture out with the causal multichannel
Wiener filter of :mod:`models.wiener` (``extras["joint_spatial_frames"]`` > 0),
which also uses where the stems sit in the stereo field.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stemserve.models.description import ModelDescription
from stemserve.models.wiener import SpatialWiener

EPS = 1e-8


def joint_stems(description: ModelDescription, stems: Sequence[int] | None) -> bool:
    """Whether estimates of ``stems`` (source indices; None: all) are normalised jointly."""
    if not description.extras.get("joint_stems") or len(description.sources) < 2:
        return False
    return stems is None or sorted(stems) == list(range(len(description.sources)))


def joint_power(description: ModelDescription) -> float:
    """The exponent ``p`` the model's stems are shared out by (1 when the description predates it)."""
    return float(description.extras.get("joint_power", 1.0))


def normalise_stems(estimates: torch.Tensor, mixture: torch.Tensor, dim: int = 0, power: float = 1.0) -> torch.Tensor:
    """Share ``mixture`` out among the stems in proportion to ``estimates ** power``.

    Args:
        estimates: non-negative magnitudes with the stems along ``dim``, e.g. ``(S, C, F, T)``.
        mixture: the mixture magnitude, broadcastable to ``estimates`` once ``dim`` is
            inserted, e.g. ``(C, F, T)``.
        power: 1 shares by magnitude, 2 by power (Wiener).
    Returns:
        ``estimates``' shape; the stems sum to ``mixture`` wherever any estimate is
        non-zero, and are zero where all are.
    """
    weights = estimates if power == 1 else estimates.pow(power)
    total = weights.sum(dim, keepdim=True)
    return mixture.unsqueeze(dim) * weights / total.clamp_min(EPS**power)


class JointStems:
    """The joint step of one stream of frames: the mixture shared out among all the stems.

    Power sharing (:func:`normalise_stems`) is frame by frame; the spatial Wiener
    filter keeps state across calls, so feed a stream's frames in order and
    :meth:`reset` between streams.
    """

    def __init__(self, description: ModelDescription) -> None:
        self.power = joint_power(description)
        frames = float(description.extras.get("joint_spatial_frames", 0.0))
        self.spatial: SpatialWiener | None = None
        if frames > 0 and description.audio_channels == SpatialWiener.channels and description.n_fft:
            bins = description.n_fft // 2 + 1
            self.spatial = SpatialWiener(len(description.sources), bins, max(1.0, frames))

    def reset(self) -> None:
        if self.spatial is not None:
            self.spatial.reset()

    def __call__(self, estimates: torch.Tensor, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """Share out the next frames.

        Args:
            estimates: ``(S, C, F, T)`` magnitude estimates of every stem.
            magnitude, phase: the mixture STFT's ``(C, F, T)`` magnitude and unit-modulus
                phase (:func:`models.stft.magnitude_phase`).
        Returns:
            ``(S, C, F, T)`` complex stem STFTs that sum to the mixture.
        """
        if self.spatial is not None:
            return self.spatial(estimates, magnitude, phase)
        return normalise_stems(estimates, magnitude, power=self.power) * phase
