"""Stateful streaming of causal waveform models: per-layer caches instead of recomputed context.

A causal model whose description states ``stream_delay`` implements two more
methods besides ``separate``:

* ``stream_init(batch) -> state``: the state of ``batch`` fresh streams, each
  preceded by silence (the zero padding of the offline forward pass);
* ``stream_step(x, state) -> (y, state)``: ``x`` is ``(batch, channels, n)`` new
  samples, ``n`` a multiple of the model's ``stride``; ``y`` is ``(batch,
  sources, channels, n)``, and ``y[..., i]`` is the estimate of input sample
  ``p - stream_delay + i`` where ``p`` is the stream index of ``x[..., 0]``.
  Estimates of samples before 0 (the first ``stream_delay`` of a stream) are
  to be dropped.

The state is a flat dict of tensors whose first axis is the batch, so the
engine can stack the states of many sessions into one step and split them
again (:func:`stack_states`, :func:`split_state`). Nothing is recomputed: a
step costs its new samples only, which is what lets a step be a few
milliseconds long. The concatenation of a stream's step outputs equals the
offline forward pass on the whole signal (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stemserve.models.base import Separator

StreamState = dict[str, torch.Tensor]


def supports_streaming(model: Separator) -> bool:
    """True when ``model`` has per-layer caches (its description states ``stream_delay``)."""
    return model.describe().stream_delay is not None


def stack_states(states: Sequence[StreamState]) -> StreamState:
    """Per-stream states (each with batch 1) -> one state for a batched step."""
    keys = states[0].keys()
    return {k: torch.cat([s[k] for s in states], dim=0) for k in keys}


def split_state(state: StreamState, count: int) -> list[StreamState]:
    """A batched state -> ``count`` per-stream states (batch 1 each; copies, not views)."""
    return [{k: v[i : i + 1].clone() for k, v in state.items()} for i in range(count)]


def stream_signal(model: Separator, wav: torch.Tensor, step: int) -> torch.Tensor:
    """Run ``(batch, channels, samples)`` through ``stream_step`` in steps of ``step`` samples.

    Returns ``(batch, sources, channels, samples)``, aligned like ``model.separate(wav)``:
    the stream is padded with zeros at the end so the last ``stream_delay`` samples come out.
    """
    d = model.describe()
    if d.stream_delay is None:
        raise ValueError(f"{d.architecture} has no per-layer caches (no stream_delay)")
    if step < 1 or step % d.stride:
        raise ValueError(f"step {step} must be a positive multiple of the stride {d.stride}")
    batch, _, samples = wav.shape
    total = samples + d.stream_delay
    padded = torch.nn.functional.pad(wav, (0, (-total) % step + d.stream_delay))
    state = model.stream_init(batch)
    outputs = []
    for start in range(0, padded.shape[-1], step):
        y, state = model.stream_step(padded[..., start : start + step], state)
        outputs.append(y)
    y = torch.cat(outputs, dim=-1)
    return y[..., d.stream_delay : d.stream_delay + samples]
