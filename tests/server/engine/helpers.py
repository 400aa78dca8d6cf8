"""Driving the engine the way a DAW does, for the engine tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from stemserve.server.engine import BlockResult, Engine, EngineConfig

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
    ),
]

TIMEOUT = 20.0


def block_sizes(total: int, rng: np.random.Generator, largest: int = 4096) -> list[int]:
    """Sizes summing to ``total``: a run of tiny blocks (1..40), then anything in 1..largest."""
    sizes = []
    done = 0
    while done < total:
        tiny = done < 600 or rng.random() < 0.2
        n = int(rng.integers(1, 41)) if tiny else int(rng.integers(1, largest + 1))
        n = min(n, total - done)
        sizes.append(n)
        done += n
    return sizes


def stream(
    engine: Engine,
    sessions: Sequence[str],
    signals: Sequence[np.ndarray],
    sizes: Sequence[Sequence[int]],
) -> list[list[BlockResult]]:
    """Submit every session's blocks round-robin without waiting (so their windows
    meet in batches), then collect. Returns each session's results in order."""
    futures: list[list] = [[] for _ in sessions]
    cursors = [0] * len(sessions)
    index = [0] * len(sessions)
    while any(i < len(s) for i, s in zip(index, sizes, strict=True)):
        for k, session in enumerate(sessions):
            if index[k] >= len(sizes[k]):
                continue
            n = sizes[k][index[k]]
            block = signals[k][:, cursors[k] : cursors[k] + n]
            futures[k].append(engine.submit(session, index[k], block))
            cursors[k] += n
            index[k] += 1
    return [[f.result(timeout=TIMEOUT) for f in fs] for fs in futures]


def joined(results: Sequence[BlockResult], field: str = "stems") -> np.ndarray:
    return np.concatenate([getattr(r, field) for r in results], axis=-1)


def make_engine(**overrides: object) -> Engine:
    # Admission is measured against this machine's speed, which other work on it
    # skews: tests that are not about admission disable it.
    config = {"device": "cpu", "max_wait_ms": 5.0, "max_batch": 8, "realtime_capacity": float("inf")}
    config.update(overrides)
    return Engine(EngineConfig(**config))  # type: ignore[arg-type]
