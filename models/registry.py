"""Names of the architectures (and their named variants) the server can build.

A *preset* is a registry name bound to an architecture class plus config
overrides, e.g. ``conv_tasnet_causal`` is :class:`ConvTasNet` with
``causal=True``. ``stemserve models --json`` lists every preset.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from stemserve.models.base import Separator, config_from_dict, config_to_dict

S = TypeVar("S", bound=type[Separator])

# Modules that register architectures when imported. Kept explicit so that
# importing the registry never depends on import order elsewhere.
_ARCHITECTURE_MODULES = (
    "stemserve.models.unet",
    "stemserve.models.open_unmix",
    "stemserve.models.mask_inference",
    "stemserve.models.deep_clustering",
    "stemserve.models.chimera",
    "stemserve.models.tasnet",
    "stemserve.models.conv_tasnet",
    "stemserve.models.wave_unet",
    "stemserve.models.demucs",
    "stemserve.models.htdemucs",
    "stemserve.models.multitask_unet",
)


class UnknownModelError(KeyError):
    """Raised for a registry name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


@dataclass(frozen=True)
class Preset:
    name: str
    cls: type[Separator]
    overrides: Mapping[str, Any]
    summary: str


_PRESETS: dict[str, Preset] = {}
# Architectures a checkpoint may name that are no preset of their own (a bag of HTDemucs models
# is made from files, not built from a name), by their ``architecture``.
_ARCHITECTURES: dict[str, type[Separator]] = {}


def register(name: str, summary: str = "", **overrides: Any) -> Callable[[S], S]:
    """Class decorator: register ``cls`` under ``name`` with config ``overrides``."""

    def decorate(cls: S) -> S:
        if name in _PRESETS and _PRESETS[name].cls is not cls:
            raise ValueError(f"model name {name!r} registered twice")
        field_names = {f.name for f in dataclasses.fields(cls.config_class)}
        bad = set(overrides) - field_names
        if bad:
            raise ValueError(f"preset {name!r} overrides unknown fields {sorted(bad)}")
        _PRESETS[name] = Preset(name, cls, dict(overrides), summary or (cls.__doc__ or "").strip().split("\n")[0])
        return cls

    return decorate


def register_architecture(cls: S) -> S:
    """Class decorator: ``cls`` loads from checkpoints (``architecture_class``) without being a preset."""
    known = _ARCHITECTURES.get(cls.architecture)
    if known is not None and known is not cls:
        raise ValueError(f"architecture {cls.architecture!r} registered twice")
    _ARCHITECTURES[cls.architecture] = cls
    return cls


def _load_all() -> None:
    for module in _ARCHITECTURE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            # Only tolerate the architecture module itself being absent (a
            # partial checkout); a missing dependency inside it is a real error.
            if err.name != module:
                raise


def presets() -> dict[str, Preset]:
    """All registered presets, by name, in registration order."""
    _load_all()
    return dict(_PRESETS)


def preset(name: str) -> Preset:
    available = presets()
    if name not in available:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(sorted(available))}")
    return available[name]


def build(name: str, config: Mapping[str, Any] | None = None) -> Separator:
    """Build preset ``name``; ``config`` entries override the preset's values."""
    chosen = preset(name)
    values = dict(chosen.overrides)
    values.update(config or {})
    return chosen.cls(config_from_dict(chosen.cls.config_class, values))


def architecture_class(architecture: str) -> type[Separator]:
    """The class whose ``architecture`` attribute is ``architecture`` (a preset's, or one registered
    with :func:`register_architecture`)."""
    for p in presets().values():
        if p.cls.architecture == architecture:
            return p.cls
    if architecture in _ARCHITECTURES:
        return _ARCHITECTURES[architecture]
    raise UnknownModelError(f"unknown architecture {architecture!r}")


def describe_all() -> list[dict[str, Any]]:
    """Description of every preset built with its default config (for ``models --json``)."""
    import torch

    out = []
    for p in presets().values():
        try:
            with torch.device("meta"):  # no memory, no init cost: only shapes are needed
                model = build(p.name)
        except (RuntimeError, NotImplementedError):  # an init that reads tensor values
            model = build(p.name)
        params = sum(t.numel() for t in model.parameters())
        out.append(
            {
                "name": p.name,
                "summary": p.summary,
                "description": model.describe().to_dict(),
                "config": config_to_dict(model.config),
                "parameters": params,
            }
        )
    return out
