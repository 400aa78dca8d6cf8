"""Loading official published checkpoints (Open-Unmix, Demucs v2) into our classes.

Neither format is trusted: nothing here executes pickled code. The
format-specific readers live beside their architectures
(:mod:`models.open_unmix`, :mod:`models.demucs`); this module only picks one.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from stemserve.models.base import Separator
from stemserve.models.checkpoint import CheckpointError


def load_official(path: str | Path) -> Separator:
    """Load an official Open-Unmix folder / state dict or a Demucs v2 file, in eval mode."""
    path = Path(path)
    errors = []
    from stemserve.models import open_unmix

    try:
        return open_unmix.load_official(path).eval()
    except CheckpointError as err:
        errors.append(f"Open-Unmix: {err}")
    try:
        # import_module, not "from stemserve.models import demucs": the latter raises a plain
        # ImportError (not ModuleNotFoundError) when models/demucs.py is absent.
        demucs = importlib.import_module("stemserve.models.demucs")
    except ModuleNotFoundError as err:
        if err.name != "stemserve.models.demucs":  # a dependency missing inside it is a real error
            raise
        errors.append(f"Demucs: {err}")
    else:
        try:
            return demucs.load_official(path).eval()
        except CheckpointError as err:
            errors.append(f"Demucs: {err}")
    raise CheckpointError(f"{path}: " + "; ".join(errors))
