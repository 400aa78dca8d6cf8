"""Batched k-means: finds well separated clusters, deterministic per seed."""

from __future__ import annotations

import torch

from stemserve.models.kmeans import kmeans


def test_kmeans_recovers_separated_clusters_per_batch_item() -> None:
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    truth = torch.randint(0, 3, (2, 90))
    points = centres[truth] + 0.1 * torch.randn(2, 90, 2)
    labels, _ = kmeans(points, 3, seed=1)
    for b in range(2):
        # same partition up to relabelling: each found cluster maps to one true cluster
        pairs = {(int(t), int(lab)) for t, lab in zip(truth[b], labels[b], strict=True)}
        assert len(pairs) == 3


def test_kmeans_is_deterministic_for_a_seed() -> None:
    points = torch.randn(1, 50, 3)
    a, _ = kmeans(points, 2, seed=7)
    b, _ = kmeans(points, 2, seed=7)
    assert torch.equal(a, b)
