"""Plugin-style parameters: target source, dry/wet mix, per-stem gains, model.

Values arrive from Python, from OSC (:mod:`plugin_bridge.osc`) or as normalised
plugin parameters (0..1, as a DAW automates them). Valid changes are stored
and forwarded in-band to the server (``StreamRequest.parameters``), which
applies them at the next block boundary with a ramp over that block (so no
zipper noise); the bridge sends them just before the next audio block it
sends. Invalid values are logged with the reason and ignored.

Normalised parameter numbers (also Ardour's ``/strip/plugin/parameter ssid
piid param value``)::

    1       target   index = floor(v * n) clamped to n - 1, over the model's n sources
    2       mix      0 = dry (input delayed by the latency) .. 1 = stems only
    3 ..    gain     linear gain 0..1 of source (param - 3) in the model's source order
                     (3 = first source, 4 = second, ...)

The model is not a normalised parameter: changing it opens a new session and
is allowed only if the new model's latency fits the bridge's fixed latency.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence

from stemserve.protos import stemserve_pb2 as pb

log = logging.getLogger(__name__)

PARAM_TARGET = 1
PARAM_MIX = 2
PARAM_FIRST_GAIN = 3

Listener = Callable[[pb.Parameters], None]
ModelHook = Callable[[str], bool]


class Parameters:
    """Thread-safe parameter state (control threads and the network thread; never the audio thread)."""

    def __init__(
        self,
        model: str,
        target: str | None = None,
        mix: float = 1.0,
        gains: Mapping[str, float] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._model = model
        self._target = target
        self._mix = float(mix)
        self._gains: dict[str, float] = dict(gains or {})
        self._sources: tuple[str, ...] = ()
        self._listeners: list[Listener] = []
        self._model_hook: ModelHook | None = None
        if _unit_error(mix, "mix") is not None:
            raise ValueError(_unit_error(mix, "mix"))
        for stem, gain in self._gains.items():
            if _unit_error(gain, f"gain of {stem}") is not None:
                raise ValueError(_unit_error(gain, f"gain of {stem}"))

    # -- observers -------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """``listener(change)`` gets every accepted change as a partial ``pb.Parameters``."""
        self._listeners.append(listener)

    def set_model_hook(self, hook: ModelHook) -> None:
        """``hook(name) -> accepted``: the bridge checks the latency and switches sessions."""
        self._model_hook = hook

    # -- reads -----------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self._model

    @property
    def target(self) -> str | None:
        return self._target

    @property
    def mix(self) -> float:
        return self._mix

    @property
    def gains(self) -> dict[str, float]:
        with self._lock:
            return dict(self._gains)

    @property
    def sources(self) -> tuple[str, ...]:
        return self._sources

    def to_proto(self) -> pb.Parameters:
        """The full state, for OpenSession."""
        with self._lock:
            message = pb.Parameters(mix=self._mix, gains=dict(self._gains))
            if self._target is not None:
                message.target = self._target
            return message

    # -- session feedback (network thread) ----------------------------------------------
    def set_sources(self, sources: Sequence[str]) -> None:
        """The live session's source list (from SessionOpened); validates names from now on."""
        with self._lock:
            self._sources = tuple(sources)
            if self._target is not None and self._sources and self._target not in self._sources:
                log.warning("target %r is not a source of this model %s", self._target, list(self._sources))

    def commit_model(self, model: str, target: str | None) -> None:
        """Record a model switch the bridge has made (and the target it kept or chose)."""
        with self._lock:
            self._model = model
            self._target = target

    # -- writes ----------------------------------------------------------------------
    def set_target(self, value: str | float) -> bool:
        """A source name, or a normalised choice 0..1 over the model's sources."""
        with self._lock:
            sources = self._sources
        if isinstance(value, str):
            if sources and value not in sources:
                return _refuse(f"target {value!r} ignored: not a source of model {self._model!r} {list(sources)}")
            name = value
        else:
            error = _unit_error(value, "target")
            if error is not None:
                return _refuse(f"{error}; ignored")
            if not sources:
                return _refuse("normalised target ignored: the model's source list is not known yet (not connected)")
            name = sources[min(int(float(value) * len(sources)), len(sources) - 1)]
        with self._lock:
            self._target = name
        self._emit(pb.Parameters(target=name))
        return True

    def set_mix(self, value: float) -> bool:
        error = _unit_error(value, "mix")
        if error is not None:
            return _refuse(f"{error}; ignored")
        with self._lock:
            self._mix = float(value)
        self._emit(pb.Parameters(mix=float(value)))
        return True

    def set_gain(self, stem: str, value: float) -> bool:
        with self._lock:
            sources = self._sources
        if sources and stem not in sources:
            return _refuse(f"gain for {stem!r} ignored: not a source of model {self._model!r} {list(sources)}")
        error = _unit_error(value, f"gain of {stem}")
        if error is not None:
            return _refuse(f"{error}; ignored")
        with self._lock:
            self._gains[stem] = float(value)
        self._emit(pb.Parameters(gains={stem: float(value)}))
        return True

    def set_model(self, name: str) -> bool:
        if not isinstance(name, str) or not name:
            return _refuse(f"model must be a non-empty name, got {name!r}; ignored")
        if name == self._model:
            return True
        if self._model_hook is None:
            return _refuse(f"model change to {name!r} ignored: no bridge attached")
        return self._model_hook(name)

    def set_normalized(self, index: int, value: float) -> bool:
        """Plugin parameter ``index`` (see the module docstring) to ``value`` in 0..1."""
        if isinstance(index, bool) or not isinstance(index, int):
            return _refuse(f"parameter number must be an integer, got {index!r}; ignored")
        if index == PARAM_TARGET:
            if isinstance(value, str):
                return _refuse(f"parameter 1 (target) takes a number 0..1, got {value!r}; ignored")
            return self.set_target(value)
        if index == PARAM_MIX:
            return self.set_mix(value)
        sources = self._sources
        if index >= PARAM_FIRST_GAIN:
            if not sources:
                return _refuse(f"parameter {index} (gain) ignored: the model's source list is not known yet")
            if index - PARAM_FIRST_GAIN < len(sources):
                return self.set_gain(sources[index - PARAM_FIRST_GAIN], value)
        return _refuse(
            f"parameter {index} ignored: valid numbers are 1 (target), 2 (mix), "
            f"{PARAM_FIRST_GAIN}..{PARAM_FIRST_GAIN + max(len(sources), 1) - 1} (gains of {list(sources)})"
        )

    def _emit(self, change: pb.Parameters) -> None:
        for listener in self._listeners:
            listener(change)


def _unit_error(value: object, name: str) -> str | None:
    """Why ``value`` is not a number in [0, 1], or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} must be a number in [0, 1], got {value!r}"
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return f"{name} must be in [0, 1], got {value!r}"
    return None


def _refuse(reason: str) -> bool:
    log.warning("parameter refused: %s", reason)
    return False
