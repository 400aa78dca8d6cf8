"""``stemserve models``: what the registry can build, as a table or JSON, and which presets
have bundled trained weights (the others serve random weights until trained)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")  # as the server's pool reads them


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print every description as JSON")


def run(args: argparse.Namespace) -> int:
    from stemserve.models.registry import describe_all

    entries = describe_all()
    trained = bundled_weights()
    for e in entries:
        e["trained_weights"] = trained.get(e["name"])
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    print(f"{'name':<22} {'trained':<8} {'domain':<12} {'causal':<7} {'rate':>6} {'ch':>3}  {'params':>10}  sources")
    for e in entries:
        d = e["description"]
        sources = ",".join(d["sources"]) + (" (conditioned)" if d["conditioned"] else "")
        print(
            f"{e['name']:<22} {'yes' if e['trained_weights'] else '-':<8} {d['domain']:<12} "
            f"{d['causal']!s:<7} {d['sample_rate']:>6} "
            f"{d['audio_channels']:>3}  {e['parameters']:>10,}  {sources}"
        )
    return 0


def bundled_weights() -> dict[str, str]:
    """``{preset name: weights file}`` for the trained weights shipped in ``models/weights/``."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.stem: str(p) for p in sorted(WEIGHTS_DIR.iterdir()) if p.suffix in WEIGHT_SUFFIXES and p.is_file()}
