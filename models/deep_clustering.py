"""Deep Clustering (Hershey et al. 2016): a unit-norm embedding per time-frequency bin.

At inference, k-means on the embeddings of each window groups the bins by
source; one binary mask per cluster. Cluster order is arbitrary, so outputs are
unordered sources (speakers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stemserve.models.blstm import BLSTMTrunk
from stemserve.models.kmeans import kmeans
from stemserve.models.mask_inference import RecurrentSpectrogramConfig, RecurrentSpectrogramModel
from stemserve.models.registry import register


@dataclass(frozen=True)
class DeepClusteringConfig(RecurrentSpectrogramConfig):
    """Recurrent trunk hyperparameters plus the embedding.

    Attributes:
        embedding_size: D, the embedding dimension per TF bin (20 in the paper).
        kmeans_iterations: Lloyd iterations at inference.
        kmeans_seed: seed of the k-means++ initialisation (deterministic inference).
    """

    embedding_size: int = 20
    kmeans_iterations: int = 20
    kmeans_seed: int = 0


class EmbeddingHead(nn.Module):
    """``(B, T, H)`` features -> ``(B, C*F*T, D)`` unit-norm embeddings, bins in (C, F, T) order."""

    def __init__(self, features: int, channels: int, bins: int, embedding_size: int) -> None:
        super().__init__()
        self.shape = (channels, bins, embedding_size)
        self.linear = nn.Linear(features, channels * bins * embedding_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, t, _ = features.shape
        emb = torch.tanh(self.linear(features)).view(b, t, *self.shape)  # (B, T, C, F, D)
        emb = emb.permute(0, 2, 3, 1, 4).reshape(b, -1, self.shape[-1])  # (B, C*F*T, D)
        return nn.functional.normalize(emb, dim=-1)


def cluster_masks(embedding: torch.Tensor, mag: torch.Tensor, sources: int, iterations: int, seed: int) -> torch.Tensor:
    """Binary masks from k-means on embeddings.

    Args:
        embedding: ``(B, C*F*T, D)``.
        mag: ``(B, C, F, T)`` mixture magnitudes (weights: louder bins count more).
    Returns:
        ``(B, S, C, F, T)`` masks, one-hot across sources.
    """
    labels, _ = kmeans(embedding, sources, iterations, weights=mag.flatten(1), seed=seed)
    onehot = nn.functional.one_hot(labels, sources).to(mag.dtype)  # (B, N, S)
    return onehot.transpose(1, 2).reshape(mag.shape[0], sources, *mag.shape[1:])


@register("deep_clustering", summary="Deep Clustering: BLSTM trunk + TF-bin embeddings, k-means at inference")
class DeepClustering(RecurrentSpectrogramModel):
    """Deep Clustering network trained with the affinity loss."""

    architecture = "deep_clustering"
    config_class = DeepClusteringConfig
    config: DeepClusteringConfig

    def __init__(self, config: DeepClusteringConfig = DeepClusteringConfig()) -> None:
        super().__init__(config)
        c, f = config.audio_channels, config.bins
        self.trunk = BLSTMTrunk(c * f, config.hidden_size, config.num_layers, config.dropout, config.bidirectional)
        self.embedding = EmbeddingHead(self.trunk.output_size, c, f, config.embedding_size)

    def embed(self, mag: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, C*F*T, D)`` unit-norm embeddings."""
        self._check(mag)
        return self.embedding(self.trunk(mag))

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        return self.embed(mag)

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, S, C, F, T)`` magnitude estimates (binary masks)."""
        cfg = self.config
        masks = cluster_masks(self.embed(x), x, len(cfg.sources), cfg.kmeans_iterations, cfg.kmeans_seed)
        return masks * x[:, None]

    def _extras(self) -> dict[str, int | float | str]:
        return {"embedding_size": self.config.embedding_size, "unordered_sources": 1}
