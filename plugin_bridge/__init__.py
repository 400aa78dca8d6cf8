"""The thin DAW-side client. Never imports torch, ``models`` or ``server``."""
