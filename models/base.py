"""The base class every architecture derives from, and config helpers.

An architecture is a plain ``nn.Module`` built from one frozen dataclass config
(the single source of its hyperparameters, paper values as defaults). The
checkpoint stores that config as a plain dict, so loading never needs pickle.

Inference goes through one method, :meth:`Separator.separate`:

* spectrogram models: ``separate(mag, target)`` with ``mag`` of shape
  ``(batch, channels, bins, frames)`` returns magnitude estimates of shape
  ``(batch, sources, channels, bins, frames)``; the caller applies the
  mixture phase and inverts the STFT.
* waveform models: ``separate(wav)`` with ``wav`` of shape
  ``(batch, channels, samples)`` returns ``(batch, sources, channels, samples)``.

For a conditioned model ``sources`` in the output is 1 and ``target`` (a
``LongTensor`` of shape ``(batch,)``) indexes ``describe().sources``.
``forward`` is whatever training needs (masks, embeddings, ...).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from stemserve.models.description import ModelDescription

C = TypeVar("C")


class Separator(nn.Module):
    """Base of all architectures: holds the config and answers the contract."""

    architecture: ClassVar[str] = ""
    config_class: ClassVar[type[Any]]

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def describe(self) -> ModelDescription:
        raise NotImplementedError

    def separate(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def stream_init(self, batch: int) -> dict[str, torch.Tensor]:
        """Caches of ``batch`` fresh streams (models whose description states ``stream_delay``)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-layer caches")

    def stream_step(
        self, x: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(batch, channels, n)`` new samples -> ``(batch, sources, channels, n)``, delayed by
        ``describe().stream_delay``; see :mod:`models.streaming`."""
        raise NotImplementedError(f"{type(self).__name__} has no per-layer caches")

    def config_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)


def check_waveform(wav: torch.Tensor, channels: int) -> None:
    """Raise ValueError unless ``wav`` is a floating-point ``(batch, channels, samples >= 1)`` tensor."""
    if wav.dim() != 3 or wav.shape[1] != channels or wav.shape[2] < 1:
        raise ValueError(f"expected a waveform (batch, {channels}, samples >= 1), got {tuple(wav.shape)}")
    if not wav.is_floating_point():
        raise ValueError(f"expected a floating-point waveform, got {wav.dtype}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a dict of primitives (tuples become lists)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        out[field.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_from_dict(config_class: type[C], data: dict[str, Any]) -> C:
    """Build a dataclass config from a plain dict, rejecting unknown keys.

    Lists are turned back into tuples where the field is declared as a tuple.
    """
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"{config_class!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields: {sorted(unknown)}")
    hints = typing.get_type_hints(config_class)
    values: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, list) and _is_tuple_type(hints.get(name)):
            value = tuple(value)
        values[name] = value
    return config_class(**values)


def _is_tuple_type(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple_type(arg) for arg in typing.get_args(hint))
    return False
