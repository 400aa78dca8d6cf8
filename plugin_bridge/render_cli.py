"""``stemserve bridge-render IN OUT``: render a file through the bridge exactly as a host would.

The file goes through the full real-time path (rings, sequence numbers, the
server's ``Stream`` session, the fixed latency) in host-sized blocks whose sizes
vary as ``--block-sizes`` says: a comma list cycled, where an item ``A-B`` is a
random size in ``[A, B]`` each time (``--seed`` for repeatability). By default
the output is latency-compensated (as a DAW's delay compensation would do): the
first ``latency`` frames are dropped and the tail is drained with silence, so
OUT is aligned with IN and as long. ``--no-compensate`` writes what a host
without compensation hears.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator


def configure(parser: argparse.ArgumentParser) -> None:
    from stemserve.plugin_bridge.cli import add_session_arguments

    parser.add_argument("input", help="audio file to render")
    parser.add_argument("output", help="file to write (format from the extension; float subtype for WAV)")
    add_session_arguments(parser)
    parser.add_argument(
        "--block-sizes",
        default="512",
        help="host block sizes, cycled: e.g. 64,1000,13 or 32-4096 (random in range) (default: 512)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for random block sizes")
    parser.add_argument("--no-compensate", action="store_true", help="keep the latency (no shift, no tail)")
    parser.set_defaults(margin_ms=0.0)


def parse_block_sizes(spec: str, seed: int = 0) -> Iterator[int]:
    """``"64,1000,13"`` / ``"32-4096"`` -> an endless sequence of block sizes."""
    import random

    rng = random.Random(seed)
    items: list[tuple[int, int]] = []
    for token in spec.split(","):
        token = token.strip()
        low, sep, high = token.partition("-")
        try:
            lo, hi = (int(low), int(high)) if sep else (int(token), int(token))
        except ValueError:
            raise ValueError(f"bad block size {token!r}: expected N or A-B") from None
        if not 1 <= lo <= hi:
            raise ValueError(f"bad block size {token!r}: sizes must be >= 1 and A <= B")
        items.append((lo, hi))
    if not items:
        raise ValueError("no block sizes given")
    for lo, hi in itertools.cycle(items):
        yield lo if lo == hi else rng.randint(lo, hi)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf

    from stemserve.plugin_bridge.bridge import Bridge
    from stemserve.plugin_bridge.cli import resolve_model, settings_from_args

    try:
        sizes = parse_block_sizes(args.block_sizes, args.seed)
        info = sf.info(args.input)
    except (ValueError, RuntimeError) as err:
        print(f"stemserve bridge-render: {err}")
        return 2
    args.model = resolve_model(args, "stemserve bridge-render")
    if args.model is None:
        return 2
    audio = sf.read(args.input, dtype="float32", always_2d=True)[0].T  # (channels, frames)
    settings = settings_from_args(args, sample_rate=info.samplerate, channels=info.channels, block_frames=0)
    with Bridge(settings) as bridge:
        report = bridge.start(wait_s=args.connect_timeout)
        if report is None:
            why = bridge.status()["status_message"]
            print(
                f"stemserve bridge-render: could not open a session on {args.server} within {args.connect_timeout} s"
                + (f" ({why})" if why else "")
            )
            return 1
        print(report.describe(), flush=True)
        total = report.total
        frames = audio.shape[1]
        tail = 0 if args.no_compensate else total
        source = np.concatenate([audio, np.zeros((audio.shape[0], tail), np.float32)], axis=1)
        pieces, start = [], 0
        while start < source.shape[1]:
            n = min(next(sizes), source.shape[1] - start)
            pieces.append(bridge.process(source[:, start : start + n]))
            start += n
        out = np.concatenate(pieces, axis=1)
        if not args.no_compensate:
            out = out[:, total : total + frames]
        stats = bridge.stats()
    subtype = "FLOAT" if args.output.lower().endswith(".wav") else None
    sf.write(args.output, out.T, info.samplerate, subtype=subtype)
    print(
        f"wrote {args.output}: {out.shape[1]} frames; underrun frames {stats['underrun_frames']}, "
        f"late blocks {stats['late_blocks']}, reconnects {stats['reconnects']}",
        flush=True,
    )
    return 0 if stats["underrun_frames"] == 0 else 1
