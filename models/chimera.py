"""Chimera (Luo et al. 2017): one BLSTM trunk, a Mask Inference head and a Deep Clustering head.

Both heads are trained together (:func:`models.losses.chimera_loss`); the DC head
acts as a regulariser and inference uses the MI head only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stemserve.models.blstm import BLSTMTrunk
from stemserve.models.deep_clustering import DeepClusteringConfig, EmbeddingHead
from stemserve.models.mask_inference import MaskHead, RecurrentSpectrogramModel
from stemserve.models.registry import register


@dataclass(frozen=True)
class ChimeraConfig(DeepClusteringConfig):
    """Deep Clustering hyperparameters plus the loss weight.

    Attributes:
        alpha: weight of the DC loss; the MI loss gets ``1 - alpha``.
    """

    alpha: float = 0.975


@register("chimera", summary="Chimera: shared BLSTM trunk with Mask Inference and Deep Clustering heads")
class Chimera(RecurrentSpectrogramModel):
    """Chimera network; ``forward`` returns both heads, ``separate`` uses the mask head."""

    architecture = "chimera"
    config_class = ChimeraConfig
    config: ChimeraConfig

    def __init__(self, config: ChimeraConfig = ChimeraConfig()) -> None:
        super().__init__(config)
        c, f = config.audio_channels, config.bins
        self.trunk = BLSTMTrunk(c * f, config.hidden_size, config.num_layers, config.dropout, config.bidirectional)
        self.mask = MaskHead(self.trunk.output_size, len(config.sources), c, f)
        self.embedding = EmbeddingHead(self.trunk.output_size, c, f, config.embedding_size)

    def forward(self, mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, F, T)`` -> ``(estimates (B, S, C, F, T), embeddings (B, C*F*T, D))``."""
        self._check(mag)
        features = self.trunk(mag)  # (B, T, H)
        return self.mask(features) * mag[:, None], self.embedding(features)

    def embed(self, mag: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, C*F*T, D)`` embeddings of the DC head."""
        self._check(mag)
        return self.embedding(self.trunk(mag))

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T)`` magnitudes -> ``(B, S, C, F, T)`` magnitude estimates (MI head)."""
        self._check(x)
        return self.mask(self.trunk(x)) * x[:, None]

    def _extras(self) -> dict[str, int | float | str]:
        return {"embedding_size": self.config.embedding_size, "unordered_sources": 1}
