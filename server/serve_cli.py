"""``stemserve serve``: load models onto the device and serve gRPC (+ OSC, + metrics).

With no ``--model`` the bundled default weights are served (see models/weights/).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stemserve.server.engine.resample import DEFAULT_QUALITY, QUALITIES

if TYPE_CHECKING:
    from stemserve.server.engine.engine import Engine

log = logging.getLogger(__name__)

# Served when models/weights/ holds no trained weights yet; the name says what it is.
UNTRAINED_PRESET = "multi_unet"
UNTRAINED_NAME = "untrained-multi_unet"


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--model",
        action="append",
        default=[],
        metavar="NAME[=PATH]",
        help="serve a model: a registry preset or bundled name, or NAME=PATH to a checkpoint / official "
        "Open-Unmix folder / Demucs file (repeatable; default: the bundled models)",
    )
    parser.add_argument(
        "--allow-untrained",
        action="store_true",
        help="serve a registry preset that has no trained weights (random output) without the warning",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--half", action="store_true", help="half precision on GPU")
    parser.add_argument("--max-batch", type=int, default=16, help="windows per forward pass, at most")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits to fill")
    parser.add_argument("--idle-timeout", type=float, default=30.0, help="seconds before an idle session expires")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per forward pass (torch intra-op; default: one per core but one, left to the "
        "transport and per-session DSP). On small machines 1 can be much faster: see docs/server.md",
    )
    parser.add_argument(
        "--causal-hop",
        type=int,
        default=None,
        metavar="SAMPLES",
        help="step of causal waveform models, in samples at the model's rate (default: 4 ms on GPU, 16 ms on CPU "
        "with per-layer caches; 512 otherwise)",
    )
    parser.add_argument(
        "--resample",
        choices=QUALITIES,
        default=DEFAULT_QUALITY,
        help="resampler of real-time sessions at another rate than the model's: sinc (default; a few ms of lag) "
        "or a soxr quality (less CPU, 20-135 ms more lag). File jobs always use soxr HQ",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port (0 = any free port)")
    parser.add_argument("--osc-port", type=int, default=None, help="UDP port for OSC control (off by default)")
    parser.add_argument(
        "--osc-allow", default="127.0.0.1", help="comma-separated source addresses OSC accepts (default: loopback)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("STEMSERVE_TOKEN"),
        help="bearer token clients must send (required off loopback; default: $STEMSERVE_TOKEN)",
    )
    parser.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain for TLS")
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key for TLS")
    parser.add_argument("--max-message-mb", type=float, default=16.0, help="largest gRPC message accepted")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus endpoint port (off by default)")
    add_engine_arguments(parser)


def parse_models(specs: list[str]) -> dict[str, str | None]:
    """``["unet", "mine=/path/x.pt"]`` -> ``{"unet": None, "mine": "/path/x.pt"}``."""
    out: dict[str, str | None] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if not name:
            raise SystemExit(f"--model {spec!r}: expected NAME or NAME=PATH")
        out[name] = path or None
    return out


def check_models(models: dict[str, str | None], allow_untrained: bool = False) -> dict[str, str | None]:
    """Resolve bare names to the bundled weights; ValueError for a name that is neither bundled nor a
    preset. A preset without trained weights logs a WARNING (its output is noise) unless allowed."""
    from stemserve.models import registry
    from stemserve.server.engine.pool import bundled_models

    bundled = bundled_models()
    presets = registry.presets()
    for name, path in models.items():
        if path is not None or name in bundled:
            continue
        if name not in presets:
            raise ValueError(
                f"unknown model {name!r}: bundled are {', '.join(bundled) or 'none'}; "
                "presets are listed by `stemserve models`; or pass NAME=PATH"
            )
        if not allow_untrained:
            log.warning(
                "model %r has no trained weights: serving RANDOM weights, its output is not a separation "
                "(trained: %s; pass NAME=PATH for your checkpoint, --allow-untrained to silence this)",
                name,
                ", ".join(bundled) or "none",
            )
    return models


def default_models() -> dict[str, str | None]:
    """The bundled weights; without any, one clearly labelled untrained preset (see README)."""
    from stemserve.server.engine.pool import bundled_models

    bundled = bundled_models()
    if bundled:
        return bundled
    log.warning(
        "no bundled weights in models/weights/: serving the UNTRAINED preset %r as %r "
        "(its output is not a separation; pass --model NAME=PATH for real weights)",
        UNTRAINED_PRESET,
        UNTRAINED_NAME,
    )
    return {UNTRAINED_NAME: None}


def build_engine(args: argparse.Namespace) -> Engine:
    """An engine with the CLI's settings; models are loaded by :meth:`App.warm_up`
    (so the server answers health NOT_SERVING while they load)."""
    import torch

    from stemserve.server.engine.engine import Engine, EngineConfig

    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1")
    # Measured on 2 cores: the U-Net window took 6.8 ms with one intra-op thread and 12.0 ms with
    # two, while gRPC, asyncio and the sessions' STFTs and resamplers wanted the other core.
    torch.set_num_threads(args.threads or max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1)))
    return Engine(
        EngineConfig(
            device=args.device,
            half=args.half,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            idle_timeout_s=args.idle_timeout,
            causal_hop=args.causal_hop,
            resample_quality=args.resample,
        )
    )


def load_untrained(engine: Engine, models: dict[str, str | None]) -> dict[str, str | None]:
    """Load the untrained placeholder (it is not a registry name) into ``engine``; return the rest."""
    if UNTRAINED_NAME not in models:
        return models
    from stemserve.models import registry

    engine.load_model(UNTRAINED_NAME, model=registry.build(UNTRAINED_PRESET), warm_up=False)
    return {k: v for k, v in models.items() if k != UNTRAINED_NAME}


def run(args: argparse.Namespace) -> int:
    import asyncio

    from stemserve.server.app import App, ServerConfig, check_exposure

    config = ServerConfig(
        host=args.host,
        port=args.port,
        osc_port=args.osc_port,
        osc_allow=tuple(a.strip() for a in args.osc_allow.split(",") if a.strip()),
        token=args.token or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        metrics_port=args.metrics_port,
    )
    try:
        check_exposure(config)
        models = check_models(parse_models(args.model), args.allow_untrained) or default_models()
        engine = build_engine(args)
    except ValueError as err:
        print(f"stemserve serve: {err}", file=sys.stderr)
        return 2
    config.models = load_untrained(engine, models)
    from stemserve.models.checkpoint import CheckpointError

    try:
        asyncio.run(App(config, engine).run_until_signal())
    except CheckpointError as err:  # one line naming the file, what it holds, what is supported
        print(f"stemserve serve: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"stemserve serve: {err}", file=sys.stderr)
        return 1
    return 0
