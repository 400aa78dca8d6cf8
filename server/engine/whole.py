"""The whole-signal file plan: models whose file separation is defined on the whole file.

An official model family reproduces its package's file separation only when it
sees what the package sees: Open-Unmix's ``Separator`` runs the networks on the
whole file's STFT (reflection-padded at both ends) and its Wiener post-filter
on excerpts of it; Demucs' ``apply_model`` cuts segments whose context is the
neighbouring audio. Such a model provides
``separate_offline(mix: (channels, samples)) -> (sources, channels, samples)``
(at its own rate and channels), and :meth:`Engine.separate_file
<server.engine.engine.Engine.separate_file>` hands a file job to
:func:`separate_whole` instead of streaming it block by block.

The job runs on the calling thread, not on the model's worker: the worker
keeps serving real-time sessions between their blocks, and both only read the
shared network. Resampling is soxr ``HQ`` over the whole signal (no streaming
lag to trim) and channels follow :mod:`server.engine.channels`. Audio is held
whole: memory grows with the file (about 5 MB per minute of stereo audio and
stem at 44.1 kHz, plus the model's own buffers).

File options (Demucs' ``shifts``, ``split``, ``overlap``, ``segment``; Open-Unmix's
``niter``, ``residual``) are the fields of the ``FileOptions`` dataclass that the
model's ``separate_offline(mix, options)`` is annotated with, so a model family
states its own; :func:`file_options` builds one from the fields a job sets and
refuses (:class:`InvalidParameterError`) a field the model does not take, and any
option at all for a model without a whole-signal method. Unset fields keep the
dataclass's defaults, which are the package APIs' (``apply_model``, ``Separator``).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import soxr
import torch

from stemserve.models.description import ModelDescription
from stemserve.server.engine import channels as channel_rules
from stemserve.server.engine.errors import InvalidParameterError
from stemserve.server.engine.pool import LoadedModel
from stemserve.server.engine.resample import FILE_RESAMPLE_QUALITY

log = logging.getLogger(__name__)

OfflineMethod = Callable[..., torch.Tensor]
# The options a job can set (the wire's names but ``segment``, in seconds); the rest of a
# model's FileOptions (seeds, excerpt lengths) keep their defaults over the wire.
FILE_OPTIONS = ("shifts", "split", "overlap", "segment", "niter", "residual")
# The extra source a file option adds after the model's own, in the order the model appends them.
EXTRA_SOURCES = {"residual": "residual"}


def offline_method(model: torch.nn.Module, description: ModelDescription) -> OfflineMethod | None:
    """The model's whole-signal file method, or None when it has none (it streams files too).

    Causal waveform models stream files exactly as they stream live (their offline
    output is the streamed one), so they keep the streaming plan.
    """
    method = getattr(model, "separate_offline", None)
    if method is None or not callable(method):
        return None
    if description.domain == "waveform" and description.causal:
        return None
    return method


def options_class(model: torch.nn.Module) -> type | None:
    """The ``FileOptions`` dataclass the model's ``separate_offline`` takes as ``options``, or None."""
    method = getattr(model, "separate_offline", None)
    if method is None:
        return None
    try:
        hint = typing.get_type_hints(method).get("options")
    except (NameError, TypeError):  # an annotation that does not resolve: no options
        return None
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def file_options(loaded: LoadedModel, values: Mapping[str, Any] | None) -> Any | None:
    """The model's ``FileOptions`` with ``values`` set (None when none are), validated.

    Raises:
        InvalidParameterError: an option the model does not take (any option for a model
            that streams its files), or a value its ``FileOptions`` refuses.
    """
    if not values:
        return None
    cls = options_class(loaded.model) if offline_method(loaded.model, loaded.description) is not None else None
    if cls is None:
        raise InvalidParameterError(
            f"model {loaded.name} streams its files and takes no file options (got {', '.join(sorted(values))})"
        )
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - fields)
    if unknown:
        taken = ", ".join(f for f in sorted(fields) if f in FILE_OPTIONS)
        raise InvalidParameterError(
            f"model {loaded.name} does not take {', '.join(unknown)} (its file options: {taken})"
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise InvalidParameterError(f"model {loaded.name}: {err}") from err


def file_sources(loaded: LoadedModel, options: Any | None) -> tuple[str, ...]:
    """The sources a whole-signal job returns: the model's, then those its options add (``residual``)."""
    extra = tuple(name for field, name in EXTRA_SOURCES.items() if getattr(options, field, False))
    return loaded.description.sources + extra


def min_samples(description: ModelDescription) -> int:
    """Shortest signal (model rate) the whole-signal plan takes: the centred STFT reflects ``n_fft / 2``."""
    if description.domain == "spectrogram" and description.n_fft:
        return description.n_fft // 2 + 1
    return 1


def applies(loaded: LoadedModel, samples: int, sample_rate: int) -> bool:
    """Whether a file of ``samples`` at ``sample_rate`` takes the whole-signal plan on ``loaded``."""
    d = loaded.description
    at_model_rate = samples * d.sample_rate // sample_rate
    return offline_method(loaded.model, d) is not None and at_model_rate >= min_samples(d)


def separate_whole(
    loaded: LoadedModel,
    audio: np.ndarray,
    sample_rate: int,
    stems: Sequence[int],
    progress_cb: Callable[[int, int], None] | None = None,
    options: Any | None = None,
) -> np.ndarray:
    """Separate a whole ``(channels, samples)`` float32 signal with the model's file method.

    Args:
        loaded: the model (its description gives rate and channels).
        audio: the client's samples at ``sample_rate``; NaN / Inf are zeroed first.
        stems: indices into :func:`file_sources`, in the order to return them.
        progress_cb: ``progress_cb(0, total)`` before, ``(done, total)`` as the method's passes
            finish (a method that takes ``progress``; ``done`` in client samples, the job's share
            of ``total``), and ``(total, total)`` after.
        options: the model's ``FileOptions`` (:func:`file_options`); None: its defaults.
    Returns:
        ``(len(stems), channels, samples)`` float32 at ``sample_rate``, as long as ``audio``.
    """
    d = loaded.description
    method = offline_method(loaded.model, d)
    if method is None:
        raise ValueError(f"model {loaded.name} has no whole-signal file method")
    total = audio.shape[1]
    if progress_cb is not None:
        progress_cb(0, total)
    clean = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)
    x = channel_rules.to_model(clean, d.audio_channels)  # (C_model, T)
    if sample_rate != d.sample_rate:
        x = soxr.resample(x.T, sample_rate, d.sample_rate, quality=FILE_RESAMPLE_QUALITY).T  # (C_model, T')
    with torch.inference_mode():
        mix = torch.from_numpy(np.ascontiguousarray(x)).to(device=loaded.device, dtype=loaded.dtype)
        try:
            kwargs: dict[str, Any] = {}
            if progress_cb is not None and "progress" in inspect.signature(method).parameters:
                kwargs["progress"] = lambda fraction: progress_cb(min(total, int(fraction * total)), total)
            out = method(mix, **kwargs) if options is None else method(mix, options, **kwargs)  # (S [+ extra], C, T')
        except ValueError as err:  # options that do not fit this model or file (e.g. niter with one source)
            if options is None:
                raise
            raise InvalidParameterError(f"model {loaded.name}: {err}") from err
        picked = out[list(stems)].to(device="cpu", dtype=torch.float32).numpy()  # (stems, C_model, T')
    if sample_rate != d.sample_rate:
        frames = [soxr.resample(s.T, d.sample_rate, sample_rate, quality=FILE_RESAMPLE_QUALITY).T for s in picked]
        picked = np.stack(frames)  # (stems, C_model, ~T)
        if picked.shape[-1] < total:  # soxr's length is round(T' * ratio); one sample short at most
            picked = np.pad(picked, ((0, 0), (0, 0), (0, total - picked.shape[-1])))
        picked = picked[..., :total]
    result = np.ascontiguousarray(channel_rules.to_client(picked, audio.shape[0]), dtype=np.float32)
    if progress_cb is not None:
        progress_cb(total, total)
    return result
