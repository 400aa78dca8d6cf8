"""Batched k-means in torch, deterministic for a given seed (Deep Clustering inference)."""

from __future__ import annotations

import torch


def kmeans(
    points: torch.Tensor,
    k: int,
    iterations: int = 20,
    weights: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each batch item's points independently.

    Initialisation is k-means++ with a private generator, so the result depends
    only on the inputs and ``seed``.

    Args:
        points: ``(B, N, D)``.
        k: clusters per item.
        iterations: Lloyd iterations.
        weights: optional ``(B, N)`` non-negative point weights (e.g. TF-bin energy,
            so silent bins do not pull the centroids).
    Returns:
        ``(labels (B, N) long, centroids (B, k, D))``.
    """
    if points.dim() != 3:
        raise ValueError(f"points must be (batch, points, dims), got {tuple(points.shape)}")
    b, n, _ = points.shape
    if n < k:
        raise ValueError(f"need at least k={k} points, got {n}")
    w = torch.ones(b, n, device=points.device, dtype=points.dtype) if weights is None else weights.to(points.dtype)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batch = torch.arange(b, device=points.device)

    # k-means++: first centre by weight, the others proportional to weight * distance^2.
    first = torch.multinomial((w + 1e-12).cpu(), 1, generator=generator).squeeze(1).to(points.device)
    centroids = [points[batch, first]]
    dist = torch.cdist(points, centroids[0][:, None]).squeeze(-1) ** 2  # (B, N)
    for _ in range(1, k):
        probs = (w * dist + 1e-12).cpu()
        pick = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(points.device)
        centroids.append(points[batch, pick])
        dist = torch.minimum(dist, torch.cdist(points, centroids[-1][:, None]).squeeze(-1) ** 2)
    centres = torch.stack(centroids, dim=1)  # (B, k, D)

    labels = torch.zeros(b, n, dtype=torch.long, device=points.device)
    for _ in range(iterations):
        labels = torch.cdist(points, centres).argmin(-1)  # (B, N)
        onehot = torch.nn.functional.one_hot(labels, k).to(points.dtype) * w[..., None]  # (B, N, k)
        mass = onehot.sum(1)  # (B, k)
        sums = torch.einsum("bnk,bnd->bkd", onehot, points)
        # An empty cluster keeps its previous centre instead of collapsing to zero.
        centres = torch.where(mass[..., None] > 0, sums / mass.clamp_min(1e-12)[..., None], centres)
    labels = torch.cdist(points, centres).argmin(-1)
    return labels, centres
