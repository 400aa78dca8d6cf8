"""``stemserve`` command line: one subcommand per job, each in the module that owns it.

Subcommand modules expose ``configure(parser)`` and ``run(args) -> int`` and keep
heavy imports (torch, grpc) inside ``run`` so that ``stemserve bridge`` starts
without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

# name -> (module, one-line help). Modules are imported only when listed here
# and, for their heavy parts, only when run.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("stemserve.models.cli", "list the registered architectures and their descriptions"),
    "data": ("stemserve.models.data.cli", "render training / evaluation data (music stems, speech mixtures)"),
    "train": ("stemserve.models.train_cli", "train an architecture on rendered data"),
    "eval": ("stemserve.models.eval_cli", "evaluate a checkpoint: SDR / SI-SDR vs oracle IRM and mixture"),
    "checkpoint": ("stemserve.models.checkpoint_cli", "show a checkpoint, or copy it with inference settings changed"),
    "serve": ("stemserve.server.serve_cli", "run the gRPC + OSC separation server"),
    "separate": ("stemserve.server.separate_cli", "separate a file into stems (via a server, or an embedded one)"),
    "bridge": ("stemserve.plugin_bridge.cli", "real-time audio bridge (JACK / PortAudio) for a DAW track"),
    "bridge-render": ("stemserve.plugin_bridge.render_cli", "render a file through the bridge as a DAW would"),
    "plugin": ("stemserve.plugin_bridge.plugin_cli", "build the native LV2 plugin and install it (~/.lv2)"),
    "batch": ("stemserve.server.batch_cli", "separate a folder of audio files (a catalogue) with Ray; resumable"),
    "bench": ("stemserve.bench.cli", "run the benchmarks"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (module, text) in COMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            out[name] = (module, text)
    return out


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The parser; only ``command``'s module is imported (the others are listed by name).

    Importing one subcommand at a time keeps ``stemserve bridge`` free of torch and keeps
    every command working when another one's optional dependencies are missing.
    """
    parser = argparse.ArgumentParser(prog="stemserve", description="Neural source separation for DAWs and scripts.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, str] = {}
    for name, (module, text) in _available().items():
        parser_of_command = sub.add_parser(name, help=text, description=text)
        if name == command:
            importlib.import_module(module).configure(parser_of_command)
        modules[name] = module
    return parser, modules


def command_in(argv: Sequence[str]) -> str | None:
    """The subcommand of ``argv``: its first argument that is not an option (``-v`` comes before it)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, modules = build_parser(command_in(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    code: int = importlib.import_module(modules[args.command]).run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
