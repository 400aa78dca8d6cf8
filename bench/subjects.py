"""Which models the benchmarks measure, and with which weights.

Trained weights bundled in ``models/weights/`` are used when present (their file
stem is the model name); otherwise the registry preset with random weights
(time and memory do not depend on the weights' values). ``--tiny`` swaps in
tiny configs so that CI runs every item in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stemserve.models.base import Separator

# Tiny configs per preset (CI only): same code paths, a few thousand parameters.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "conditioned_unet": {"channels": [4, 8], "window_frames": 16, "n_fft": 256, "hop_length": 64, "bins": 128},
    "multi_unet": {"channels": [4, 8], "window_frames": 16, "n_fft": 256, "hop_length": 64, "bins": 128},
    "conv_tasnet_causal": {"N": 16, "B": 8, "H": 16, "X": 2, "R": 1, "Sc": 8},
    "conv_tasnet": {"N": 16, "B": 8, "H": 16, "X": 2, "R": 1, "Sc": 8, "segment": 0.5},
    "chimera": {"hidden_size": 8, "num_layers": 1, "window_frames": 16},
    "open_unmix": {"hidden_size": 8, "nb_layers": 1, "n_fft": 256, "hop_length": 64, "nb_bins": 129, "max_bin": 64},
    "open_unmix_causal": {
        "hidden_size": 8,
        "nb_layers": 1,
        "n_fft": 256,
        "hop_length": 64,
        "nb_bins": 129,
        "max_bin": 64,
        "window_frames": 16,
    },
    "demucs": {"channels": 4, "depth": 3, "segment": 0.5},
    "demucs_causal": {"channels": 4, "depth": 3},
}

# The models the serving-side items measure by default: the three that get trained
# bundled weights, plus Open-Unmix (causal) as the music LSTM.
DEFAULT_MODELS = ("conditioned_unet", "conv_tasnet_causal", "chimera", "open_unmix_causal")


@dataclass(frozen=True)
class Subject:
    """A model to measure: its name, where its weights come from, and config overrides."""

    name: str
    path: str | None = None
    config: Mapping[str, Any] | None = None

    @property
    def weights(self) -> str:
        if self.path is not None:
            return f"trained ({self.path.rsplit('/', 1)[-1]})"
        return "random (tiny config)" if self.config else "random (registry preset)"

    def spec(self) -> str:
        """``NAME``, ``NAME=PATH`` or ``NAME:JSON`` for :mod:`bench.server_proc`."""
        import json

        if self.path is not None:
            return f"{self.name}={self.path}"
        if self.config:
            return f"{self.name}:{json.dumps(dict(self.config))}"
        return self.name

    def build(self) -> Separator:
        from stemserve.models import registry
        from stemserve.models.checkpoint import load_model

        model = load_model(self.path) if self.path is not None else registry.build(self.name, self.config)
        return model.eval()


def subject(name: str, tiny: bool = False) -> Subject:
    from stemserve.server.engine.pool import bundled_models

    if tiny:
        return Subject(name, None, TINY_CONFIGS.get(name))
    path = bundled_models().get(name)
    return Subject(name, path, None)


def parse_spec(spec: str) -> Subject:
    """Inverse of :meth:`Subject.spec`."""
    import json

    if ":" in spec and ("=" not in spec or spec.index(":") < spec.index("=")):
        name, _, config = spec.partition(":")
        return Subject(name, None, json.loads(config))
    name, _, path = spec.partition("=")
    return Subject(name, path or None, None)
