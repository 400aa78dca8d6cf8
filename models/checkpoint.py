"""One-file checkpoints: description + config + state dict, never pickled code.

Two encodings of the same content:

* ``.pt`` / ``.pth`` / ``.th``: a ``torch.save`` of a dict holding only tensors and
  primitives, read back with ``torch.load(weights_only=True)``.
* ``.safetensors``: the state dict as tensors and the rest as JSON metadata.

:func:`load_model` also accepts the official Open-Unmix and Demucs v2 files that
``models/`` supports (see :mod:`models.official`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from stemserve.models.base import Separator, config_from_dict
from stemserve.models.description import ModelDescription
from stemserve.models.registry import architecture_class

log = logging.getLogger(__name__)

FORMAT = "stemserve-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint, with the reason."""


def checkpoint_dict(model: Separator, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of a checkpoint for ``model`` (tensors on CPU)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": model.architecture,
        "config": model.config_dict(),
        "description": model.describe().to_dict(),
        "metadata": dict(metadata or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }


def save_checkpoint(model: Separator, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path``; the suffix picks the encoding."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = checkpoint_dict(model, metadata)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        header = {k: v for k, v in content.items() if k != "state_dict"}
        save_file(content["state_dict"], str(tmp), metadata={FORMAT: json.dumps(header)})
    else:
        torch.save(content, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a half-written checkpoint
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a stemserve checkpoint's content without building the model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if FORMAT not in meta:
            raise CheckpointError(f"{path}: safetensors file without {FORMAT} metadata")
        content = json.loads(meta[FORMAT])
        content["state_dict"] = load_file(str(path))
        return content
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"{path}: not loadable with weights_only=True ({type(err).__name__}: {err})") from err
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    return content


def model_from_content(content: dict[str, Any]) -> Separator:
    """Build and load a model from a checkpoint's content (as :func:`read_checkpoint` returns)."""
    if content.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint version {content['version']} is newer than this code ({VERSION})")
    cls = architecture_class(content["architecture"])
    model = cls(config_from_dict(cls.config_class, content["config"]))
    missing, unexpected = model.load_state_dict(content["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"state dict does not match {cls.__name__}: missing {missing}, unexpected {unexpected}")
    stored = ModelDescription.from_dict(content["description"])
    # Fields (and extras) this file predates, added to the description since, keep their defaults.
    rebuilt = model.describe().to_dict()
    stored_dict = content["description"]
    rebuilt = {k: v for k, v in rebuilt.items() if k in stored_dict}
    if isinstance(rebuilt.get("extras"), dict) and isinstance(stored_dict.get("extras"), dict):
        rebuilt["extras"] = {k: v for k, v in rebuilt["extras"].items() if k in stored_dict["extras"]}
    current = ModelDescription.from_dict(rebuilt)
    if stored != current:
        # The stored description is informative; the config is authoritative.
        log.warning("stored description differs from the rebuilt model's; using the rebuilt one")
    return model


def same_weights(a: Separator, b: Separator) -> bool:
    """Whether ``a`` and ``b`` are one architecture with the same weight names and shapes."""
    ours, theirs = a.state_dict(), b.state_dict()
    return type(a) is type(b) and ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)


def reconfigure(content: dict[str, Any], overrides: dict[str, Any]) -> tuple[Separator, dict[str, Any]]:
    """The checkpoint's model with config ``overrides`` that leave every weight's shape alone.

    For inference settings (e.g. ``spatial_seconds``, ``joint_power``) of trained weights.
    Returns the model and the changed settings as ``{key: [old, new]}``; raises
    :class:`CheckpointError` for unknown keys or a change of any weight's shape.
    """
    model = model_from_content(content)
    cls = type(model)
    old = model.config_dict()
    try:
        config = config_from_dict(cls.config_class, {**old, **overrides})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot set {overrides}: {err}") from err
    changed = cls(config)
    if not same_weights(model, changed):
        raise CheckpointError(f"{sorted(overrides)}: changes the shape of the weights; train a new model instead")
    changed.load_state_dict(model.state_dict())
    new = changed.config_dict()
    return changed.eval(), {k: [old.get(k), new[k]] for k in new if old.get(k) != new[k]}


def load_checkpoint(path: str | Path) -> Separator:
    """Load a stemserve checkpoint (``.pt`` or ``.safetensors``) on CPU, in eval mode."""
    model = model_from_content(read_checkpoint(path))
    return model.eval()


SUPPORTED = (
    "stemserve checkpoints (.pt/.pth/.th, .safetensors), Open-Unmix <target>.pth files and folders "
    "(umxhq, umxl, umxse, any hidden size), Demucs v2 files (package file or state dict), "
    "HTDemucs files (htdemucs, htdemucs_6s) and bags of them (.yaml, htdemucs_ft)"
)


def short_reason(err: BaseException, limit: int = 160) -> str:
    """The first line of an error's message, without a leading ``path:``, at most ``limit`` characters.

    torch's load errors run to many lines of advice; a user needs what was found.
    """
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _found(path: Path, ours: CheckpointError, official: CheckpointError) -> str:
    """What ``path`` holds, in a phrase: the most specific of the loaders' reasons."""
    from stemserve.models.demucs import PickledGlobal, restricted_torch_load

    if path.suffix == ".safetensors":
        return short_reason(ours).removeprefix(f"{path}: ")
    if path.suffix.lower() in (".yaml", ".yml"):
        reason = short_reason(CheckpointError(str(official).removeprefix(f"{path}: ")))
        return f"a bag of models that does not load ({reason})"
    try:
        content = restricted_torch_load(path)  # inert: no pickled code runs
    except CheckpointError as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        return f"not a readable torch file, truncated or corrupt ({type(cause).__name__}: {short_reason(cause, 100)})"
    if isinstance(content, dict) and content.get("format") == FORMAT:
        return short_reason(ours).removeprefix(f"{path}: ")
    if isinstance(content, dict) and "klass" in content:
        klass = content["klass"]
        name = klass.qualified_name() if isinstance(klass, type) and issubclass(klass, PickledGlobal) else repr(klass)
        reasons = [r for r in str(official).split("; ") if r.startswith("Demucs: ")]
        detail = short_reason(CheckpointError(reasons[0].removeprefix("Demucs: "))) if reasons else ""
        return f"a Demucs package file of class {name} ({detail.removeprefix(f'{path}: ')})"
    if isinstance(content, dict) and content and all(isinstance(v, torch.Tensor) for v in content.values()):
        keys = list(content)
        if any(k in content for k in ("fc1.weight", "input_mean")):
            family = "Open-Unmix: "
        elif any(k.startswith("encoder.0") for k in keys):
            family = "Demucs: "
        else:
            shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
            return f"a state dict of {len(keys)} tensors ({shown}) that matches no supported architecture"
        reasons = [r.removeprefix(family) for r in str(official).split("; ") if r.startswith(family)]
        reason = reasons[0].removeprefix(f"{path}: ") if reasons else short_reason(official)
        return f"a state dict that looks {family[:-2]} but does not fit it ({short_reason(CheckpointError(reason))})"
    return f"a torch file holding a {type(content).__name__}, not a model"


def load_model(path: str | Path) -> Separator:
    """Load any supported model file or folder: ours, or official Open-Unmix / Demucs v2.

    Raises:
        CheckpointError: one line naming ``path``, what it holds and what is supported.
    """
    path = Path(path)
    if path.is_file():
        try:
            return load_checkpoint(path)
        except CheckpointError as ours:
            from stemserve.models import official

            try:
                return official.load_official(path)
            except CheckpointError as theirs:
                log.debug("%s: %s; %s", path, ours, theirs)
                found = _found(path, ours, theirs)
                raise CheckpointError(f"{path}: unsupported checkpoint: {found}; supported: {SUPPORTED}") from theirs
    if path.is_dir():
        from stemserve.models import official

        try:
            return official.load_official(path)
        except CheckpointError as err:
            log.debug("%s: %s", path, err)
            reason = short_reason(CheckpointError(str(err).removeprefix(f"{path}: ").split("; ")[0]), 200)
            raise CheckpointError(f"{path}: unsupported model folder: {reason}; supported: {SUPPORTED}") from err
    raise CheckpointError(f"{path}: no such file or folder")
