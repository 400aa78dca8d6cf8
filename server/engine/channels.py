"""Channel rules between a client (a DAW track) and a model.

=================  ==================  ==========================================
client channels    model channels      in (to the model) / out (to the client)
=================  ==================  ==========================================
n                  n                   unchanged both ways
1 (mono)           2 (stereo)          duplicated / the two channels averaged
2 (stereo)         1 (mono)            averaged / duplicated
anything else                          refused with :class:`InvalidAudioError`
=================  ==================  ==========================================

Both directions are linear and exact, so a mono signal through a stereo model
(or a dual-mono signal through a mono model) comes back as the model's output.
"""

from __future__ import annotations

import numpy as np

from stemserve.server.engine.errors import InvalidAudioError

MAX_CLIENT_CHANNELS = 2


def check(client: int, model: int) -> None:
    """Raise :class:`InvalidAudioError` unless ``client`` channels can feed a ``model``-channel model."""
    if client <= 0:
        raise InvalidAudioError(f"channels must be positive, got {client}")
    if client == model:
        return
    if client > MAX_CLIENT_CHANNELS or model > MAX_CLIENT_CHANNELS:
        raise InvalidAudioError(
            f"{client}-channel audio cannot feed a {model}-channel model (only mono <-> stereo is converted)"
        )


def to_model(x: np.ndarray, model: int) -> np.ndarray:
    """``(client_channels, n)`` -> ``(model, n)``."""
    client = x.shape[0]
    if client == model:
        return x
    if client == 1:
        return np.repeat(x, model, axis=0)
    return x.mean(axis=0, keepdims=True).astype(x.dtype, copy=False)


def to_client(y: np.ndarray, client: int) -> np.ndarray:
    """``(..., model_channels, n)`` -> ``(..., client, n)``."""
    model = y.shape[-2]
    if client == model:
        return y
    if model == 1:
        return np.repeat(y, client, axis=-2)
    return y.mean(axis=-2, keepdims=True).astype(y.dtype, copy=False)
