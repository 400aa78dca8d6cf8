"""Models held once in (device) memory and shared by every session.

:class:`ModelPool` loads a model by registry preset name
(:func:`models.registry.build`) or from a file (:func:`models.checkpoint.load_model`),
moves it to the chosen device, puts it in eval mode and, on a GPU, optionally
in half precision. :meth:`LoadedModel.warm_up` runs every batch shape the
batcher will use once (first calls of a new shape cost seconds on a GPU) and
times them; ``ready`` is set when it has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from stemserve.models import registry
from stemserve.models.base import Separator
from stemserve.models.checkpoint import load_model
from stemserve.models.description import ModelDescription
from stemserve.models.streaming import split_state, stack_states
from stemserve.server.engine.errors import UnknownModelError

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "models" / "weights"
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
DEFAULT_BUNDLED = "conditioned_unet"  # the DAW default: listed (and chosen) first
TIMED_RUNS = 3


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` -> a device, checked."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"unknown device {spec!r} (auto | cpu | cuda | cuda:N)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {spec!r} (auto | cpu | cuda | cuda:N)")
    return device


def bundled_models() -> dict[str, str | None]:
    """The bundled weights in ``models/weights/``: ``{file stem: path}`` (empty if none).

    :data:`DEFAULT_BUNDLED` comes first, so clients that take the first listed model
    (``stemserve separate`` without ``--model``) get the music default.
    """
    if not WEIGHTS_DIR.is_dir():
        return {}
    files = [p for p in WEIGHTS_DIR.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    files.sort(key=lambda p: (p.stem != DEFAULT_BUNDLED, p.stem))
    return {p.stem: str(p) for p in files}


class LoadedModel:
    """One model on its device, with the one method the batcher calls.

    Attributes:
        name: the name sessions use to open it.
        model: the network (eval mode, on ``device``).
        description: ``model.describe()``, read once.
        device / dtype: where and in which precision it runs.
        ready: True once :meth:`warm_up` ran.
        timings: seconds per forward pass by batch size, from the warm-up.
    """

    def __init__(self, name: str, model: Separator, device: torch.device, half: bool = False) -> None:
        self.name = name
        self.description: ModelDescription = model.describe()
        self.device = device
        self.dtype = torch.float16 if half and device.type == "cuda" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.ready = False
        self.timings: dict[int, float] = {}
        self._fresh: dict[str, torch.Tensor] | None = None

    def run(self, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, *item)`` float32 CPU inputs -> ``(B, S, *item)`` float32 CPU outputs."""
        with torch.inference_mode():
            x = inputs.to(device=self.device, dtype=self.dtype, non_blocking=True)
            t = targets.to(self.device) if targets is not None else None
            out = self.model.separate(x, t)
            return out.to(device="cpu", dtype=torch.float32)

    def fresh_state(self) -> dict[str, torch.Tensor]:
        """Per-layer caches of one fresh stream, on the device (models with ``stream_delay``).

        Made once and shared: a step only reads its input state (it returns new tensors), so every
        new stream and every padding row of a static batch can start from the same one."""
        if self._fresh is None:
            with torch.inference_mode():
                self._fresh = self.model.stream_init(1)
        return self._fresh

    def run_step(
        self, inputs: torch.Tensor, states: Sequence[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """One cached step: ``(B, C, n)`` float32 CPU inputs and ``B`` per-stream states ->
        ``(B, S, C, n)`` float32 CPU outputs and the ``B`` new states (on the device)."""
        with torch.inference_mode():
            x = inputs.to(device=self.device, dtype=self.dtype, non_blocking=True)
            out, state = self.model.stream_step(x, stack_states(states))
            return out.to(device="cpu", dtype=torch.float32), split_state(state, len(states))

    def warm_up(
        self,
        item_shape: Sequence[int],
        batch_sizes: Sequence[int],
        timed: Sequence[int] | None = None,
        stateful: bool = False,
    ) -> dict[int, float]:
        """Run each batch shape once (first calls of a shape compile / autotune), then
        time the shapes in ``timed`` (default: all), best of ``TIMED_RUNS`` since other
        load on the machine only ever adds; sets :attr:`ready`. Returns seconds per
        forward pass of each timed shape. ``stateful``: the passes are cached steps."""
        timed_sizes = set(batch_sizes if timed is None else timed)
        for size in batch_sizes:
            inputs = torch.zeros(size, *item_shape)
            targets = torch.zeros(size, dtype=torch.long) if self.description.conditioned else None

            self._pass(inputs, targets, stateful)
            if size not in timed_sizes:
                continue
            best = float("inf")
            for _ in range(TIMED_RUNS):
                start = time.perf_counter()
                self._pass(inputs, targets, stateful)
                best = min(best, time.perf_counter() - start)
            self.timings[size] = best
        self.ready = True
        log.info(
            "model %s warm on %s: batch shapes %s, %s",
            self.name,
            self.device,
            list(batch_sizes),
            {k: f"{v * 1e3:.1f} ms" for k, v in self.timings.items()},
        )
        return dict(self.timings)

    def _pass(self, inputs: torch.Tensor, targets: torch.Tensor | None, stateful: bool) -> None:
        if stateful:
            self.run_step(inputs, [self.fresh_state() for _ in range(inputs.shape[0])])
        else:
            self.run(inputs, targets)

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


class ModelPool:
    """Loads each model once; thread-safe."""

    def __init__(self, device: str = "auto", half: bool = False) -> None:
        self.device = resolve_device(device)
        self.half = half
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def load(
        self,
        name: str,
        path: str | Path | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        model: Separator | None = None,
    ) -> LoadedModel:
        """Load ``name`` (or return it if loaded).

        Args:
            name: the session-facing name; a registry preset when neither
                ``path`` nor ``model`` is given.
            path: a checkpoint file or an official Open-Unmix / Demucs file or folder.
            config: overrides for the preset's config (registry builds only).
            model: an already built network (tests, embedding).
        """
        with self._lock:
            if name in self._models:
                return self._models[name]
            if model is None:
                if path is not None:
                    model = load_model(path)
                else:
                    try:
                        model = registry.build(name, config)
                    except registry.UnknownModelError as err:
                        raise UnknownModelError(str(err)) from err
            loaded = LoadedModel(name, model, self.device, self.half)
            self._models[name] = loaded
            log.info("loaded model %s (%s) on %s", name, loaded.description.architecture, self.device)
            return loaded

    def get(self, name: str) -> LoadedModel:
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            raise UnknownModelError(f"model {name!r} is not loaded; loaded: {known}") from None

    def names(self) -> list[str]:
        return list(self._models)

    def memory_bytes(self) -> int:
        """Device memory in use: CUDA's allocator count, or the parameters' size on CPU."""
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return sum(m.memory_bytes() for m in self._models.values())
