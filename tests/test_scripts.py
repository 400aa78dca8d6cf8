"""The reproduction scripts' stemserve commands are valid: every option exists, every --config key too.

``scripts/train-bundled`` and ``scripts/eval-bundled`` take hours, so CI never runs them;
this parses each command as ``stemserve`` would and builds each trained model from its
settings, so a renamed option or setting breaks a test rather than the next reproduction.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from stemserve.models import registry
from stemserve.models.train import parse_overrides
from stemserve.server.cli import build_parser, command_in

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train-bundled", "eval-bundled"]


def stemserve_commands(script: str) -> list[list[str]]:
    """The argument lists of every ``stemserve`` command in ``scripts/<script>`` (variables as names)."""
    text = (ROOT / "scripts" / script).read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.split(" || ", 1)[-1].strip()  # `[ -d X ] || stemserve ...`
        if line.startswith("stemserve "):
            line = re.sub(r"\$\{?(\w+)\}?", r"\1", line)
            commands.append(shlex.split(line)[1:])
    return commands


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_command_parses(script: str) -> None:
    commands = stemserve_commands(script)
    assert len(commands) >= 5
    for argv in commands:
        parser, _ = build_parser(command_in(argv))
        try:
            parser.parse_args(argv)
        except SystemExit as err:  # argparse's way of refusing
            raise AssertionError(f"{script}: `stemserve {shlex.join(argv)}` does not parse") from err


def test_every_trained_model_builds_from_its_settings() -> None:
    trained = [argv for argv in stemserve_commands("train-bundled") if command_in(argv) == "train"]
    models = {argv[argv.index("--model") + 1] for argv in trained}
    assert models == {"conditioned_unet", "chimera", "conv_tasnet_causal", "demucs_causal_music"}
    for argv in trained:
        settings = [argv[i + 1] for i, a in enumerate(argv) if a == "--config"]
        registry.build(argv[argv.index("--model") + 1], parse_overrides(settings))


def test_the_bundled_unets_inference_settings_are_its_config_fields() -> None:
    changes = [argv for argv in stemserve_commands("train-bundled") if command_in(argv) == "checkpoint"]
    assert changes
    for argv in changes:
        settings = [argv[i + 1] for i, a in enumerate(argv) if a == "--config"]
        registry.build("conditioned_unet", {"channels": (8, 16), **parse_overrides(settings)})
