"""Loading official published checkpoints (Open-Unmix, Demucs v2, HTDemucs) into our classes.

No format is trusted: nothing here executes pickled code. The
format-specific readers live beside their architectures
(:mod:`models.open_unmix`, :mod:`models.demucs`, :mod:`models.htdemucs`); this
module only picks one. A ``.yaml`` file is a Demucs bag of models.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from stemserve.models.base import Separator
from stemserve.models.checkpoint import CheckpointError

BAG_SUFFIXES = (".yaml", ".yml")


def load_official(path: str | Path) -> Separator:
    """Load an official Open-Unmix folder / state dict, a Demucs v2 or HTDemucs file, or a bag
    of HTDemucs models (``.yaml``), in eval mode."""
    path = Path(path)
    if path.suffix.lower() in BAG_SUFFIXES:
        from stemserve.models import htdemucs

        return htdemucs.load_bag(path).eval()
    errors = []
    from stemserve.models import open_unmix

    try:
        return open_unmix.load_official(path).eval()
    except CheckpointError as err:
        errors.append(f"Open-Unmix: {err}")
    if path.is_file():
        from stemserve.models import htdemucs

        try:
            return htdemucs.load_official(path).eval()
        except htdemucs.NotHTDemucsFileError:
            pass  # another family's file
        except CheckpointError as err:  # an HTDemucs file we cannot compute: that is the reason to give
            raise CheckpointError(f"{path}: " + "; ".join([*errors, f"Demucs: {err}"])) from err
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
