"""``stemserve separate FILE``: stems of a file via a server, or an embedded one.

Without ``--server`` an embedded server starts in-process on an ephemeral
loopback port and the file goes through the very same gRPC path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    from stemserve.server.serve_cli import add_engine_arguments

    parser.add_argument("file", type=Path, nargs="?", help="audio file to separate (default: the bundled demo clip)")
    parser.add_argument("--server", default=None, help="host:port of a running server (default: embedded)")
    parser.add_argument("--token", default=os.environ.get("STEMSERVE_TOKEN"), help="bearer token for --server")
    parser.add_argument("--stems", default="", help="comma-separated stems to write (default: all)")
    parser.add_argument("--out", type=Path, default=Path("stems"), help="output folder (default: ./stems)")
    parser.add_argument(
        "--wait", type=float, default=300.0,
        help="seconds to wait for a server that answers but is still warming up (health NOT_SERVING); "
        "nothing listening at --server fails within 3 s",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=int, default=5,
        help="times to start the file again after UNAVAILABLE (a server draining or warming up: behind a "
        "proxy another server takes it), with backoff (default 5)",
    )  # fmt: skip
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import soundfile as sf
    from stemserve.plugin_bridge.client import StemClient, StemServeError
    from tqdm import tqdm

    path: Path = args.file or demo_clip()
    if not path.is_file():
        print(f"stemserve separate: {path}: no such file", file=sys.stderr)
        return 2
    stems = [s.strip() for s in args.stems.split(",") if s.strip()]
    embedded = None
    address = args.server
    if address is None:
        from stemserve.server.embedded import EmbeddedServer
        from stemserve.server.serve_cli import build_engine, default_models, load_untrained, parse_models

        engine = build_engine(args)
        # Without --model only the default (first bundled) model is loaded: the others
        # would cost warm-up time and never be used by this one file.
        models = load_untrained(engine, parse_models(args.model) or dict(list(default_models().items())[:1]))
        embedded = EmbeddedServer(engine, models)
        from stemserve.models.checkpoint import CheckpointError

        try:
            address = embedded.start()
        except CheckpointError as err:  # one line naming the file, what it holds, what is supported
            print(f"stemserve separate: {err}", file=sys.stderr)
            return 2
    written: dict[str, Path] = {}
    try:
        with StemClient(address, token=args.token if args.server else None) as client:
            client.wait_serving(timeout=args.wait)
            names = [m.name for m in client.list_models()]
            if not names and not args.model:
                raise StemServeError("NOT_FOUND", f"the server at {address} holds no models")
            model = args.model[0].partition("=")[0] if args.model else names[0]
            bar = tqdm(total=0, unit="frames", unit_scale=True, desc=f"{path.name} [{model}]")

            def progress(done: int, total: int) -> None:
                bar.total = total or None
                bar.n = done
                bar.refresh()

            for attempt in range(args.retries + 1):
                try:
                    written = client.separate_file(path, args.out, model, stems, progress)
                    break
                except StemServeError as err:  # UNAVAILABLE: nothing was kept, the file starts over
                    if err.code != "UNAVAILABLE" or attempt == args.retries:
                        raise
                    delay = min(8.0, 0.5 * 2**attempt)
                    print(f"stemserve separate: {err}; retrying in {delay:g} s", file=sys.stderr, flush=True)
                    time.sleep(delay)
            bar.close()
    except StemServeError as err:
        print(f"stemserve separate: {err}", file=sys.stderr)
        # The request itself was refused (unknown model or stem, bad audio): a usage error.
        return 2 if err.code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION") else 1
    except (OSError, sf.SoundFileError) as err:  # unreadable input, unwritable output
        print(f"stemserve separate: {err}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
    for name, out in written.items():
        print(f"{name}: {out}")
    return 0


def demo_clip() -> Path:
    return Path(__file__).resolve().parent.parent / "models" / "demo" / "demo.wav"
