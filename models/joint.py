"""Joint normalisation of the stem estimates of one mixture.

A mask model that estimates each stem on its own (sigmoid masks, or one
conditioned pass per target) leaves the stems free to claim the same energy
twice or to leave some unclaimed. When every stem of the mixture is estimated,
sharing the mixture magnitude out in proportion to the estimates,

    Y_j = |X| * E_j / sum_k E_k,

makes the stems sum to the mixture (the ratio-mask form of the oracle IRM,
``|S_j| / sum_k |S_k|``). It is the single-pass cousin of the Wiener
post-filter of Open-Unmix and the mask normalisation of Spleeter.

Models opt in with ``extras["joint_stems"]`` in their description; training
then optimises the normalised stems as well (:mod:`models.train`), and offline
separation (:mod:`models.apply`) and the streaming engine normalise whenever a
request asks for all of the model's sources.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.description import ModelDescription

EPS = 1e-8


def joint_stems(description: ModelDescription, stems: Sequence[int] | None) -> bool:
    """Whether estimates of ``stems`` (source indices; None: all) are normalised jointly."""
    if not description.extras.get("joint_stems") or len(description.sources) < 2:
        return False
    return stems is None or sorted(stems) == list(range(len(description.sources)))


def normalise_stems(estimates: torch.Tensor, mixture: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Share ``mixture`` out among the stems in proportion to ``estimates``.

    Args:
        estimates: non-negative magnitudes with the stems along ``dim``, e.g. ``(S, C, F, T)``.
        mixture: the mixture magnitude, broadcastable to ``estimates`` once ``dim`` is
            inserted, e.g. ``(C, F, T)``.
    Returns:
        ``estimates``' shape; the stems sum to ``mixture`` wherever any estimate is
        non-zero, and are zero where all are.
    """
    total = estimates.sum(dim, keepdim=True)
    return mixture.unsqueeze(dim) * estimates / total.clamp_min(EPS)
