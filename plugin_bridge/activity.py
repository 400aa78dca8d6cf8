"""Which stems are playing: the latest heads a model with heads sent (``StemBlock.activity`` and lead pitch).

The network thread is the only writer: for each received block that carries
heads it builds a new :class:`Activity` and swaps it in (one reference
assignment), then calls the listeners (the OSC sender queues a datagram and
returns). The audio callback never touches any of it. Readers (stats, OSC
``/stats``) take :attr:`ActivityBoard.latest` as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Activity:
    """One block's heads.

    Attributes:
        sources: the model's sources, in the order of ``activity``.
        activity: probability (0..1) that each source plays in the block.
        voicing: the lead's voicing probability (0..1), or None when the model has no pitch head.
        f0_hz: the lead's fundamental in Hz (0 when unvoiced), or None when the model has no pitch head.
        frame: host output frame at which the block plays.
    """

    sources: tuple[str, ...]
    activity: tuple[float, ...]
    voicing: float | None
    f0_hz: float | None
    frame: int

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the stats JSON."""
        return {
            "activity": dict(zip(self.sources, self.activity, strict=True)),
            "lead_voicing": self.voicing,
            "lead_f0_hz": self.f0_hz,
            "activity_frame": self.frame,
        }


class ActivityBoard:
    """The latest :class:`Activity` and who wants each new one (written by the network thread only)."""

    def __init__(self) -> None:
        self.latest: Activity | None = None
        self.updates = 0
        self._listeners: list[Callable[[Activity], None]] = []

    def add_listener(self, listener: Callable[[Activity], None]) -> None:
        """``listener(activity)`` runs on the network thread for every new one: it must not block."""
        self._listeners.append(listener)

    def publish(
        self,
        sources: Sequence[str],
        activity: Sequence[float],
        voicing: float | None,
        f0_hz: float | None,
        frame: int,
    ) -> None:
        if len(activity) != len(sources):
            if self.updates == 0:
                log.warning("a block's activity has %d values for %d sources; ignored", len(activity), len(sources))
            return
        latest = Activity(tuple(sources), tuple(activity), voicing, f0_hz, frame)
        self.latest = latest
        self.updates += 1
        for listener in self._listeners:
            listener(latest)
