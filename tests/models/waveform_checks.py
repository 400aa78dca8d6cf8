"""Checks shared by the waveform-model tests: timing claims, streaming, training, checkpoints.

Timing checks run in float64 so that "unchanged" means bit-for-bit up to a tiny
tolerance, and "changed" is not lost in float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from stemserve.models.base import Separator
from stemserve.models.checkpoint import load_checkpoint, save_checkpoint

CHANGED = 1e-11  # an output difference above this counts as a dependency (float64)


def run(model: Separator, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.separate(x)


def changed_outputs(model: Separator, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Indices of output samples that differ between inputs ``x`` and ``x2``."""
    diff = (run(model, x) - run(model, x2)).abs().flatten(0, 2).amax(0)  # (samples,)
    return torch.nonzero(diff > CHANGED).flatten()


def influence_span(model: Separator, x: torch.Tensor, t0: int) -> tuple[int, int] | None:
    """First and last output index that a unit impulse added at ``t0`` (channel 0) changes."""
    x2 = x.clone()
    x2[:, 0, t0] += 1.0
    idx = changed_outputs(model, x, x2)
    if idx.numel() == 0:
        return None
    return int(idx.min()), int(idx.max())


def assert_causal(model: Separator, x: torch.Tensor, t: int, lookahead: int) -> None:
    """Changing every input sample from ``t`` on leaves outputs ``<= t - lookahead - 1`` untouched."""
    x2 = x.clone()
    x2[..., t:] = torch.randn_like(x2[..., t:])
    idx = changed_outputs(model, x, x2)
    assert idx.numel() > 0, "perturbing the input changed nothing"
    assert int(idx.min()) >= t - lookahead, f"output {int(idx.min())} depends on input >= {t} (lookahead {lookahead})"


def check_impulses(
    model: Separator,
    x: torch.Tensor,
    t0s: range,
    receptive_field: int | None,
    lookahead: int,
    exact: bool = True,
) -> tuple[int, int]:
    """Impulses at ``t0s`` affect outputs only within ``[t0 - lookahead, t0 + receptive_field - 1]``.

    With ``exact``, both bounds are reached by some ``t0`` (the claims are tight).
    Returns the largest observed ``(lookahead, past reach + 1)``.
    """
    seen_ahead, seen_field = 0, 0
    for t0 in t0s:
        span = influence_span(model, x, t0)
        assert span is not None, f"an impulse at {t0} changed nothing"
        first, last = span
        assert first >= t0 - lookahead, f"impulse at {t0} changed output {first}: lookahead > {lookahead}"
        if receptive_field is not None:
            assert last <= t0 + receptive_field - 1, f"impulse at {t0} changed output {last}: field > {receptive_field}"
        seen_ahead = max(seen_ahead, t0 - first)
        seen_field = max(seen_field, last - t0 + 1)
    if exact:
        assert seen_ahead == lookahead, f"lookahead claimed {lookahead}, observed {seen_ahead}"
        if receptive_field is not None:
            assert seen_field == receptive_field, f"receptive field claimed {receptive_field}, observed {seen_field}"
    return seen_ahead, seen_field


def assert_stride_aligned_tail(model: Separator, x: torch.Tensor, start: int) -> None:
    """A segment starting at ``start`` (a multiple of the stride) reproduces the offline output
    wherever it has at least ``receptive_field`` samples of left context."""
    desc = model.describe()
    assert desc.receptive_field is not None and start % desc.stride == 0
    offline = run(model, x)
    segment = run(model, x[..., start:])
    keep = desc.receptive_field - 1
    assert keep < segment.shape[-1], "segment too short to test"
    torch.testing.assert_close(segment[..., keep:], offline[..., start + keep :], rtol=0, atol=1e-10)


def train_steps(
    model: Separator,
    mixture: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    steps: int = 8,
    lr: float = 3e-3,
) -> tuple[float, float]:
    """Adam on a fixed batch; returns (first loss, last loss)."""
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = loss_fn(model.separate(mixture))
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]


def assert_checkpoint_round_trip(model: Separator, x: torch.Tensor, folder: Path) -> None:
    """``.pt`` and ``.safetensors`` checkpoints rebuild a model with identical outputs."""
    model.eval()
    expected = run(model, x)
    for suffix in (".pt", ".safetensors"):
        path = save_checkpoint(model, folder / f"model{suffix}")
        loaded = load_checkpoint(path)
        assert type(loaded) is type(model)
        assert loaded.config == model.config
        assert loaded.describe() == model.describe()
        torch.testing.assert_close(run(loaded, x), expected, rtol=0, atol=0)
