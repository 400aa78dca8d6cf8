"""Published-layout files built with the peer packages (random weights), and the peers' own file APIs.

Test-only: ``openunmix`` and ``demucs`` are oracles, never imported by product code.
``openunmix`` imports torchaudio at import time, which has no build here; the
package needs it only to read audio files, so :func:`openunmix_package` (the
bench's, :mod:`bench.files`, which times the same peer) puts an empty stand-in
module in its place for the duration of a test and removes it, and the
package's modules, afterwards.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stemserve.bench.files import openunmix_package as openunmix_package  # re-exported for the tests


def randomise(model: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Random weights and BatchNorm statistics (nothing is an identity), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def write_umx_folder(
    umx: types.ModuleType,
    folder: Path,
    targets: tuple[str, ...],
    *,
    hidden_size: int,
    nb_channels: int,
    sample_rate: int,
    n_fft: int,
    n_hop: int,
    max_bin: int,
) -> Path:
    """A model folder as the package's training writes it: ``separator.json``, ``<target>.json``
    (training arguments) and ``<target>.pth`` (state dict), from ``openunmix.model.OpenUnmix``
    networks with random weights (3 LSTM layers, the published depth and the loader's)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, target in enumerate(targets):
        net = umx.model.OpenUnmix(
            nb_bins=n_fft // 2 + 1, nb_channels=nb_channels, hidden_size=hidden_size, max_bin=max_bin
        )
        torch.save(randomise(net, seed=i).state_dict(), folder / f"{target}.pth")
        args = {"nfft": n_fft, "nhop": n_hop, "nb_channels": nb_channels, "hidden_size": hidden_size}
        (folder / f"{target}.json").write_text(json.dumps({"args": args}))
    separator = {"targets": list(targets), "sample_rate": sample_rate, "nfft": n_fft, "nhop": n_hop}
    (folder / "separator.json").write_text(json.dumps({**separator, "nb_channels": nb_channels}))
    return folder


# The package's Demucs class with the arguments that make it compute Demucs v2, small.
DEMUCS_SOURCES = ["drums", "bass", "other", "vocals"]
DEMUCS_V2: dict[str, Any] = {"gelu": False, "glu": True, "norm_starts": 99, "dconv_mode": 0, "context": 1}
DEMUCS_SMALL: dict[str, Any] = {"audio_channels": 2, "channels": 4, "depth": 4, "lstm_layers": 2}


def package_demucs(**options: Any) -> Any:
    """A ``demucs.demucs.Demucs`` (v2 options, small) with the package's own random initialisation."""
    import demucs.demucs

    torch.manual_seed(0)
    return demucs.demucs.Demucs(DEMUCS_SOURCES, **{**DEMUCS_SMALL, **DEMUCS_V2, **options}).eval()


def write_demucs_file(model: Any, path: Path) -> Path:
    """The package's serialised layout (``klass``, ``args``, ``kwargs``, ``state``), as ``demucs.states``
    builds it (its ``serialize_model`` also needs omegaconf for training arguments)."""
    import demucs.states

    args, kwargs = model._init_args_kwargs
    content = {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": demucs.states.get_state(model, None, half=False),
        "training_args": {"lr": 3e-4},
    }
    torch.save(content, path)
    return path


def clip(channels: int, seconds: float, rate: int, seed: int = 0) -> torch.Tensor:
    """``(channels, samples)``: noise under a few tones, loud enough at both ends (edges matter)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    tones = sum(torch.sin(2 * torch.pi * f * t + k) for k, f in enumerate((110.0, 440.0, 1530.0)))
    noise = torch.randn(channels, t.numel(), generator=gen)
    return (0.1 * tones + 0.1 * noise).float()


def sdr_db(reference: np.ndarray | torch.Tensor, estimate: np.ndarray | torch.Tensor) -> float:
    """Signal-to-distortion ratio of ``estimate`` against ``reference`` over all their samples, in dB."""
    ref = np.asarray(reference, dtype=np.float64)
    err = ref - np.asarray(estimate, dtype=np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum(err**2), 1e-30)))


# The package's HTDemucs, small: the published structure (nfft 4096, depth 4, DConv in encoder and
# decoder, cross-domain transformer) with few channels, two transformer layers and 1 s chunks.
HTDEMUCS_SMALL: dict[str, Any] = {
    "channels": 8,
    "dconv_mode": 3,
    "dconv_comp": 4,
    "t_layers": 2,
    "t_heads": 4,
    "segment": 1,
}


def package_htdemucs(sources: list[str], seed: int = 0, **options: Any) -> Any:
    """A ``demucs.htdemucs.HTDemucs`` with every parameter random (the package's initial layer
    scales of 1e-3 / 1e-4 would hide the DConv and transformer branches), eval mode."""
    import demucs.htdemucs

    torch.manual_seed(seed)
    model = demucs.htdemucs.HTDemucs(sources, **{**HTDEMUCS_SMALL, **options})
    return randomise(model, seed=seed, scale=0.1)


def write_htdemucs_file(model: Any, folder: Path, signature: str, half: bool = False) -> Path:
    """``folder/<signature>-<checksum>.th`` as the package's releases are: ``serialize_model``'s dict
    (``half``: float16 state, as published) saved by ``demucs.states.save_with_checksum``."""
    import demucs.states

    args, kwargs = model._init_args_kwargs
    content = {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": demucs.states.get_state(model, None, half=half),
        "training_args": {"optim": {"lr": 3e-4}, "dset": {"segment": 11}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    demucs.states.save_with_checksum(content, folder / f"{signature}.th")
    (path,) = folder.glob(f"{signature}-*.th")
    return path


def package_bag(folder: Path, name: str) -> Any:
    """The bag ``folder/<name>.yaml`` as the package loads it (``demucs.repo``: checksums checked)."""
    import demucs.repo

    models = demucs.repo.LocalRepo(folder)
    return demucs.repo.BagOnlyRepo(folder, models).get_model(name)
