"""A stemserve server in its own process, for benchmarks: ``python -m bench.server_proc``.

Like ``stemserve serve --port 0`` (the same :class:`~server.embedded.EmbeddedServer`
and gRPC path) but it can also serve the bench's passthrough model and tiny
configs. Prints ``PORT <n>`` once warm; stops when its stdin closes. Running the
server in another process keeps the client's Python off the server's GIL, as
for a real plugin bridge or script.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_proc")
    parser.add_argument("--model", action="append", default=[], help="NAME, NAME=PATH or NAME:JSON (repeatable)")
    parser.add_argument("--passthrough", action="store_true", help="also serve the passthrough model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engine", default="{}", help="EngineConfig overrides as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from stemserve.bench.passthrough import Passthrough
    from stemserve.bench.subjects import parse_spec
    from stemserve.server.embedded import EmbeddedServer
    from stemserve.server.engine.engine import Engine, EngineConfig

    torch.set_num_threads(args.threads)
    engine = Engine(EngineConfig(device=args.device, **json.loads(args.engine)))
    if args.passthrough:
        engine.load_model("passthrough", model=Passthrough(), warm_up=False)
    for spec in args.model:
        s = parse_spec(spec)
        engine.load_model(s.name, s.path, config=s.config, warm_up=False)
    server = EmbeddedServer(engine)
    address = server.start()
    print(f"PORT {address.rsplit(':', 1)[1]}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or exits)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
