"""``python -m tests.deploy.fleet_server --port P [--max-sessions N] [--warm-up-delay S]``: a tiny-model server (the
``ident`` passthrough of tests/plugin_bridge/servers.py) with a real-time session limit, so a
fleet test can fill one server and watch its refusals go elsewhere. SIGTERM drains it."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Mapping

from stemserve.server.engine import Engine, EngineConfig
from tests.plugin_bridge.servers import CHANNELS, RATE
from tests.server.engine.tiny_models import TinyCausalConfig, TinyCausalNet


def main() -> None:
    import torch

    from stemserve.server.app import App, ServerConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-sessions", type=int, default=None, help="real-time sessions, at most")
    parser.add_argument("--warm-up-delay", type=float, default=0.0, help="seconds of extra warm-up (NOT_SERVING)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    # Admission by measured device time is off (this shared machine's speed varies): only the count limits.
    config = EngineConfig(device="cpu", max_batch=8, realtime_capacity=float("inf"), max_sessions=args.max_sessions)
    engine = Engine(config)
    engine.load_model(
        "ident", model=TinyCausalNet(TinyCausalConfig(sample_rate=RATE, channels=CHANNELS, identity=True))
    )

    class SlowApp(App):
        """Warms up ``--warm-up-delay`` seconds longer, as a big model on a cold GPU would."""

        async def warm_up(self, models: Mapping[str, str | None] | None = None) -> None:
            await asyncio.sleep(args.warm_up_delay)
            await super().warm_up(models)

    asyncio.run(SlowApp(ServerConfig(host="127.0.0.1", port=args.port, grace_seconds=0.5), engine).run_until_signal())


if __name__ == "__main__":
    main()
