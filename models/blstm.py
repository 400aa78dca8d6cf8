"""The recurrent trunk shared by Mask Inference, Deep Clustering and Chimera.

Spectrogram in, one feature vector per frame out: log-magnitude -> batch norm
over the (channel, bin) features -> stacked BLSTM.
"""

from __future__ import annotations

import torch
from torch import nn


class BLSTMTrunk(nn.Module):
    """``(B, C, F, T)`` magnitudes -> ``(B, T, 2 * hidden_size)`` features.

    Args:
        num_features: ``C * F`` input features per frame.
        hidden_size: LSTM units per direction.
        num_layers: stacked LSTM layers.
        dropout: dropout on the outputs of every layer but the last (so, with 4
            layers, on the first 3 as the seed describes).
        bidirectional: False makes the trunk causal in frames.
    """

    def __init__(
        self, num_features: int, hidden_size: int, num_layers: int, dropout: float, bidirectional: bool = True
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(num_features)
        self.lstm = nn.LSTM(
            num_features,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
            batch_first=True,
        )
        self.output_size = hidden_size * (2 if bidirectional else 1)

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        b, c, f, t = mag.shape
        x = torch.log1p(mag).reshape(b, c * f, t)  # (B, C*F, T)
        x = self.norm(x).transpose(1, 2)  # (B, T, C*F)
        out, _ = self.lstm(x)  # (B, T, H * directions)
        return out
