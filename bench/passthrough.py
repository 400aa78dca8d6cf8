"""A model that returns its input: the engine and transport costs with no network to speak of."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stemserve.models.base import Separator
from stemserve.models.description import ModelDescription


@dataclass(frozen=True)
class PassthroughConfig:
    sample_rate: int = 44100
    channels: int = 2


class Passthrough(Separator):
    """Causal waveform "separator" with one source equal to the mixture.

    ``(B, C, T)`` -> ``(B, 1, C, T)``; receptive field 1, no lookahead, stride 1,
    so the engine streams it with a causal plan whose latency is one step.
    """

    architecture = "passthrough"
    config_class = PassthroughConfig
    config: PassthroughConfig

    def __init__(self, config: PassthroughConfig = PassthroughConfig()) -> None:
        super().__init__(config)

    def describe(self) -> ModelDescription:
        return ModelDescription(
            architecture=self.architecture,
            sources=("mix",),
            conditioned=False,
            sample_rate=self.config.sample_rate,
            audio_channels=self.config.channels,
            domain="waveform",
            causal=True,
            receptive_field=1,
            lookahead=0,
        )

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.config.channels:
            raise ValueError(f"expected (batch, {self.config.channels}, samples), got {tuple(x.shape)}")
        return x[:, None].clone()  # (B, 1, C, T)
