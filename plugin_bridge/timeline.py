"""State shared by the audio callback and the network thread: the fixed latency and counters.

Positions are host frame indices (frame 0 is the first frame the host gave the
bridge). Every field has a single writer, named in its comment, so no lock is
needed on the audio path.

Latency composition (samples at the host sample rate)::

    total = server L (SessionOpened.latency.total: model + buffering + resampler)
            + margin (the bridge's network slack: one host block + round trip + jitter)

``total`` is fixed when the first session opens (or up front with
``latency_samples``) and never changes for the life of the bridge: host output
frame ``n`` is always the estimate for host input frame ``n - total``. A later
session (reconnect, model change) with server latency ``L'`` is placed
``total - L'`` frames after its input; one with ``L' > total`` cannot be
aligned and is refused.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

# session_first_out when no session is delivering: every missing frame is a gap, not an underrun.
NEVER = 1 << 62


@dataclass
class Counters:
    """Monotonic counters; each field is incremented by one thread only (named)."""

    # audio callback
    callbacks: int = 0
    frames: int = 0
    underrun_blocks: int = 0  # callbacks where a stem frame of a live session had not arrived in time
    underrun_frames: int = 0
    gap_frames: int = 0  # frames with no session to deliver them (not connected yet, reconnecting)
    muted_frames: int = 0  # frames silenced after a reset (their estimates belong to pre-reset audio)
    callback_errors: int = 0
    # audio front (its notification thread; transport resets: the JACK process callback)
    xruns: int = 0
    transport_resets: int = 0  # JACK transport stops and relocations that reset the session
    # network thread
    blocks_sent: int = 0
    blocks_received: int = 0
    late_blocks: int = 0  # stem blocks (or parts) that arrived after their frames were played
    late_frames: int = 0
    server_late_blocks: int = 0  # StemBlock.late: the server missed its own deadline
    input_lost_frames: int = 0  # input overwritten before the network thread could send it
    sessions_opened: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    latency_mismatches: int = 0  # a session whose L does not fit the bridge's fixed latency
    model_refused: int = 0
    params_sent: int = 0
    resets_sent: int = 0
    overloaded: int = 0
    invalid_samples: int = 0
    refusals: int = 0  # opens the server answered with a refusal (RESOURCE_EXHAUSTED, NOT_FOUND, ...)
    behind_windows: int = 0  # check windows where the server was behind (most frames dry, or OVERLOADED)

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class LatencyReport:
    """The bridge's latency by part, in samples at ``sample_rate``; ``total`` is their sum."""

    model: int
    buffering: int
    resampler: int
    server: int  # the server's total L for the first session
    margin: int
    total: int
    sample_rate: int

    @property
    def total_ms(self) -> float:
        return 1000.0 * self.total / self.sample_rate

    def describe(self) -> str:
        return (
            f"latency {self.total} samples ({self.total_ms:.2f} ms at {self.sample_rate} Hz) = "
            f"server {self.server} (model {self.model} + buffering {self.buffering} + resampler {self.resampler}) "
            f"+ bridge margin {self.margin}"
        )


class Timeline:
    """The fixed latency, the current session's placement and the reset handshake."""

    def __init__(self, sample_rate: int, margin: int, capacity_limit: int, latency_samples: int | None = None) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0 samples, got {margin}")
        self.sample_rate = sample_rate
        self.margin = margin
        # Largest total the preallocated rings can delay by.
        self.capacity_limit = capacity_limit
        if latency_samples is not None and not 0 <= latency_samples <= capacity_limit:
            raise ValueError(f"latency_samples must be in [0, {capacity_limit}], got {latency_samples}")
        self._preset = latency_samples
        # network thread: set once by admit(); the audio callback reads it.
        self.total: int | None = None
        self.report: LatencyReport | None = None
        # network thread: host output position of the live session's first stem frame.
        self.session_first_out = NEVER
        # reset handshake: the control thread bumps `requested`; the audio callback
        # records the host position and bumps `taken`; the network thread sends RESET.
        self.reset_requested = 0
        self.reset_taken = 0
        self.reset_pos = 0

    def misfit(self, server_total: int) -> str | None:
        """Why a session with server latency ``server_total`` could not be placed (None: it fits). Changes nothing."""
        total = self.total if self.total is not None else self._preset
        if server_total > self.capacity_limit:
            return f"its latency {server_total} exceeds the bridge's buffer limit {self.capacity_limit}"
        if total is not None and server_total > total:
            return f"its latency {server_total} exceeds the bridge's fixed latency {total}"
        return None

    def admit(self, model: int, buffering: int, resampler: int, server_total: int, counters: Counters) -> int | None:
        """Place a new session with server latency ``server_total``: returns ``total - L`` or None if it cannot fit.

        Called by the network thread when a session opens. The first call fixes ``total``.
        """
        if self.total is None:
            total = self._preset if self._preset is not None else server_total + self.margin
            if server_total > total or total > self.capacity_limit:
                counters.latency_mismatches += 1
                log.error(
                    "LATENCY: the server's latency %d does not fit the bridge (fixed latency %d, buffer limit %d); "
                    "raise --latency-samples / max_latency",
                    server_total,
                    total,
                    self.capacity_limit,
                )
                return None
            self.report = LatencyReport(
                model=model,
                buffering=buffering,
                resampler=resampler,
                server=server_total,
                margin=total - server_total,
                total=total,
                sample_rate=self.sample_rate,
            )
            self.total = total
            log.info("bridge %s", self.report.describe())
            return total - server_total
        if server_total > self.total:
            counters.latency_mismatches += 1
            log.error(
                "LATENCY MISMATCH: the new session's latency %d exceeds the bridge's fixed latency %d; "
                "its output cannot be aligned and is refused (the bridge outputs dry meanwhile)",
                server_total,
                self.total,
            )
            return None
        if self.report is not None and server_total != self.report.server:
            log.warning(
                "the new session's latency %d differs from the first one's (%d); keeping the bridge's latency %d",
                server_total,
                self.report.server,
                self.total,
            )
        return self.total - server_total
