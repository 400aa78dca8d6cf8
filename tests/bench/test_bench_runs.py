"""Every benchmark runs on its tiny setting and writes sane JSON and a PNG (no timing assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from stemserve.bench.cli import ITEMS
from stemserve.server.cli import main

# Each item's rows must carry these fields, with finite non-negative numbers where numeric.
FIELDS: dict[str, tuple[str, ...]] = {
    "peers": ("model", "ours_s_per_audio_s", "peer_s_per_audio_s", "time_ratio", "ours_mib_per_audio_s"),
    "serving": ("model", "direct_s", "served_s", "ratio", "goal_ratio"),
    "roundtrip": ("rate", "block", "p50_ms", "p99_ms", "max_ms"),
    "capacity": ("model", "block", "sessions", "admitted", "trials"),
    "batching": ("model", "batch", "windows_per_s", "gain"),
    "latency_budget": ("model", "algorithmic_ms", "compute_ms", "transport_ms", "total_ms"),
    "growth": ("length_s", "time_s", "s_per_audio_s", "peak_mib"),
    "files": ("model", "side", "audio_s", "seconds", "s_per_audio_s", "ratio"),
    "soak": ("track", "blocks", "frames", "wet", "gap", "lost", "duplicated", "misaligned"),
}


def numbers(row: dict[str, Any], fields: tuple[str, ...]) -> list[float]:
    return [row[f] for f in fields if isinstance(row[f], int | float) and not isinstance(row[f], bool)]


def test_every_item_is_listed() -> None:
    assert set(FIELDS) == set(ITEMS)


@pytest.mark.slow
@pytest.mark.parametrize("item", list(ITEMS))
def test_item_runs_tiny_and_writes_json_and_png(item: str, tmp_path: Path) -> None:
    assert main(["bench", item, "--tiny", "--out", str(tmp_path)]) == 0

    document = json.loads((tmp_path / f"{item}.json").read_text())
    assert document["item"] == item
    assert document["machine"]["cores"] >= 1 and document["machine"]["torch"]
    assert document["settings"]["tiny"] is True
    rows = document["rows"]
    assert rows, "no rows measured"
    for row in rows:
        missing = [f for f in FIELDS[item] if f not in row]
        assert not missing, f"{item} row lacks {missing}: {row}"
        for value in numbers(row, FIELDS[item]):
            assert math.isfinite(value) and value >= 0, f"{item}: {row}"
    if item == "growth":  # per model, lengths in increasing order
        for model in {r["model"] for r in rows}:
            lengths = [r["length_s"] for r in rows if r["model"] == model]
            assert lengths == sorted(lengths) and len(lengths) >= 2
    png = tmp_path / f"{item}.png"
    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_item_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["bench", "nonsense"])
