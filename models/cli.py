"""``stemserve models``: what the registry can build, as a table or JSON."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print every description as JSON")


def run(args: argparse.Namespace) -> int:
    from stemserve.models.registry import describe_all

    entries = describe_all()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    print(f"{'name':<22} {'domain':<12} {'causal':<7} {'rate':>6} {'ch':>3}  {'params':>10}  sources")
    for e in entries:
        d = e["description"]
        sources = ",".join(d["sources"]) + (" (conditioned)" if d["conditioned"] else "")
        print(
            f"{e['name']:<22} {d['domain']:<12} {d['causal']!s:<7} {d['sample_rate']:>6} "
            f"{d['audio_channels']:>3}  {e['parameters']:>10,}  {sources}"
        )
    return 0
