"""What a network is: architectures, STFT front end, losses, checkpoints, registry.

Imports nothing from ``server/`` or ``plugin_bridge/``.
"""
