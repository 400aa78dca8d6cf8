"""Markdown tables of measured results for docs/benchmarks.md: ``python -m bench.markdown bench-results``."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from stemserve.bench.cli import ITEMS
from stemserve.bench.report import table


def section(folder: Path, item: str) -> str:
    path = folder / f"{item}.json"
    if not path.exists():
        return f"<!-- {item}: no results in {folder} -->\n"
    document = json.loads(path.read_text())
    columns = getattr(importlib.import_module(f"stemserve.bench.{item}"), "COLUMNS", None)
    m = document["machine"]
    settings = document["settings"]
    lines = [
        f"<!-- {item}: measured {m['time_utc']}, load {m['load_average']}, torch {m['torch']}, "
        f"threads {settings['threads']}, device {settings['device']}, wall {document.get('wall_s', 0):.0f} s -->",
        table(document["rows"], columns),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "bench-results")
    for item in ITEMS:
        print(f"### {item}\n")
        print(section(folder, item))
    return 0


if __name__ == "__main__":
    sys.exit(main())
