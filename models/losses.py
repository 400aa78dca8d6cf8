"""Training losses of the seed architectures.

Shapes use ``B`` batch, ``S`` sources, ``C`` audio channels, ``F`` frequency bins,
``T`` frames or samples, ``D`` embedding size. Every loss returns a scalar mean
over the batch unless ``reduction="none"`` (then ``(B,)``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from stemserve.models.joint import normalise_stems

EPS = 1e-8


def _reduce(per_item: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_item.mean()
    if reduction == "none":
        return per_item
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def mask_inference_l1(estimate: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mask Inference loss: L1 between masked mixture and target magnitudes.

    Args:
        estimate: ``(B, S, ...)`` estimated magnitudes (mask x mixture magnitude).
        target: same shape, reference source magnitudes.
    """
    if estimate.shape != target.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and target {tuple(target.shape)} differ")
    per_item = (estimate - target).abs().flatten(1).mean(1)
    return _reduce(per_item, reduction)


def joint_mask_l1(
    estimate: torch.Tensor,
    target: torch.Tensor,
    mixture: torch.Tensor,
    joint_weight: float = 0.5,
    power: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Mask Inference L1 on every stem as estimated and as jointly normalised.

    ``(1 - joint_weight) * L1(estimate) + joint_weight * L1(normalised)``, where the
    normalised stems share the mixture magnitude out in proportion to the
    estimates to the ``power`` (:func:`models.joint.normalise_stems`). The first term keeps each
    stem usable on its own (a DAW session asks for one); the second trains the
    stems to divide the mixture between them without overlap.

    Args:
        estimate: ``(B, S, ...)`` estimated magnitudes of all ``S`` stems.
        target: same shape, reference magnitudes.
        mixture: ``(B, ...)`` mixture magnitudes.
    """
    normalised = normalise_stems(estimate, mixture, dim=1, power=power)
    plain = mask_inference_l1(estimate, target, reduction="none")
    joint = mask_inference_l1(normalised, target, reduction="none")
    return _reduce((1.0 - joint_weight) * plain + joint_weight * joint, reduction)


def deep_clustering_loss(
    embedding: torch.Tensor,
    assignment: torch.Tensor,
    weights: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Deep Clustering affinity loss ``|VV^T - YY^T|_F^2`` in its efficient form.

    Expands to ``|V^T V|^2 - 2 |V^T Y|^2 + |Y^T Y|^2`` so the ``N x N`` affinity
    matrix (``N`` = time-frequency bins) is never built; cost is ``O(N D^2)``.

    Args:
        embedding: ``(B, N, D)`` unit-norm embeddings, one per TF bin.
        assignment: ``(B, N, S)`` one-hot (or soft) source dominance per TF bin.
        weights: optional ``(B, N)`` per-bin weights (e.g. magnitude ratio, to
            ignore silent bins), applied as ``sqrt(w)`` to both V and Y.
    Returns:
        the loss normalised by the squared total weight (or ``N^2``).
    """
    if embedding.dim() != 3 or assignment.dim() != 3 or embedding.shape[:2] != assignment.shape[:2]:
        raise ValueError(
            f"embedding (B, N, D) and assignment (B, N, S) must agree, got "
            f"{tuple(embedding.shape)} and {tuple(assignment.shape)}"
        )
    v, y = embedding, assignment.to(embedding.dtype)
    if weights is not None:
        w = weights.to(embedding.dtype).clamp_min(0).sqrt().unsqueeze(-1)
        v, y = v * w, y * w
        norm = weights.sum(1).clamp_min(EPS) ** 2
    else:
        norm = torch.full((v.shape[0],), float(v.shape[1]) ** 2, device=v.device, dtype=v.dtype)
    vtv = torch.einsum("bnd,bne->bde", v, v)
    vty = torch.einsum("bnd,bns->bds", v, y)
    yty = torch.einsum("bns,bnt->bst", y, y)
    per_item = (vtv.pow(2).sum((1, 2)) - 2 * vty.pow(2).sum((1, 2)) + yty.pow(2).sum((1, 2))) / norm
    return _reduce(per_item, reduction)


def ideal_binary_assignment(sources_mag: torch.Tensor) -> torch.Tensor:
    """One-hot dominance of each TF bin.

    Args:
        sources_mag: ``(B, S, C, F, T)`` source magnitudes.
    Returns:
        ``(B, C*F*T, S)`` one-hot assignment, bins flattened in ``(C, F, T)`` order.
    """
    dominant = sources_mag.argmax(1)  # (B, C, F, T)
    onehot = torch.nn.functional.one_hot(dominant, sources_mag.shape[1])
    return onehot.flatten(1, 3).to(sources_mag.dtype)


def chimera_loss(
    estimate: torch.Tensor,
    target: torch.Tensor,
    embedding: torch.Tensor,
    assignment: torch.Tensor,
    alpha: float = 0.975,
    weights: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Chimera multi-task loss: ``alpha * DC + (1 - alpha) * MI``.

    The default ``alpha`` follows Luo et al. (2017), where the DC term is
    normalised per bin and so much smaller than the MI term.
    """
    dc = deep_clustering_loss(embedding, assignment, weights, reduction="none")
    mi = mask_inference_l1(estimate, target, reduction="none")
    return _reduce(alpha * dc + (1 - alpha) * mi, reduction)


def si_snr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SNR in dB along the last axis (zero-mean signals).

    Args:
        estimate, reference: ``(..., T)``.
    Returns:
        ``(...)`` SI-SNR in dB.
    """
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ")
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + EPS)
    projection = scale * reference
    noise = estimate - projection
    ratio = projection.pow(2).sum(-1) / (noise.pow(2).sum(-1) + EPS)
    return 10 * torch.log10(ratio + EPS)


def neg_si_snr(estimate: torch.Tensor, reference: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative SI-SNR averaged over sources and channels: ``(B, S, [C,] T)`` -> loss."""
    per_item = -si_snr(estimate, reference).flatten(1).mean(1)
    return _reduce(per_item, reduction)


def mse(estimate: torch.Tensor, reference: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error per item (Wave-U-Net)."""
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ")
    return _reduce((estimate - reference).pow(2).flatten(1).mean(1), reduction)


def length_scaled_l1(estimate: torch.Tensor, reference: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Demucs' L1: sum of absolute errors divided by the signal length in samples."""
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ")
    per_item = (estimate - reference).abs().flatten(1).sum(1) / estimate.shape[-1]
    return _reduce(per_item, reduction)


PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pit(
    loss: Callable[..., torch.Tensor],
    estimate: torch.Tensor,
    reference: torch.Tensor,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation-invariant training wrapper for unordered sources (e.g. speakers).

    Tries every permutation of the estimate's source axis (axis 1) and keeps,
    per item, the one with the lowest loss. ``loss`` must accept
    ``reduction="none"`` and return ``(B,)``. Fine for the 2-4 sources used
    here (S! permutations).

    Returns:
        ``(loss, permutation)``: the reduced best loss and ``(B, S)`` indices such
        that ``estimate[b, permutation[b]]`` lines up with ``reference[b]``.
    """
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ")
    sources = estimate.shape[1]
    perms = torch.tensor(list(itertools.permutations(range(sources))), device=estimate.device)
    losses = torch.stack([loss(estimate[:, p], reference, reduction="none") for p in perms], dim=1)  # (B, P)
    best, index = losses.min(1)
    return _reduce(best, reduction), perms[index]
