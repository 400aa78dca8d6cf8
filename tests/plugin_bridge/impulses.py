"""An impulse player and a recorder on a JACK server, for latency tests of the bridge's fronts."""

from __future__ import annotations

import jack
import numpy as np


class ImpulseRig:
    """``player`` plays a unit impulse every ``interval`` frames (the first ``interval`` frames after
    its first cycle, ``count`` in all) on its port ``out``; ``recorder`` records its port ``in``.

    Register before activating the clients; connect :attr:`play_port` and :attr:`rec_port` after.
    With ``steady`` set, the player also plays that constant on :attr:`steady_port` and the recorder
    records :attr:`rec_steady_port` (:attr:`recorded_steady`): a signal present at every frame, to
    time a change to the frame.
    """

    def __init__(
        self, player: jack.Client, recorder: jack.Client, interval: int, count: int, steady: float | None = None
    ) -> None:
        self.player, self.recorder = player, recorder
        self.interval, self.count, self.steady = interval, count, steady
        self.rate = recorder.samplerate  # read now: the clients are closed before the recording is judged
        self.play_port = player.outports.register("out")
        self.rec_port = recorder.inports.register("in")
        self.steady_port = player.outports.register("steady") if steady is not None else None
        self.rec_steady_port = recorder.inports.register("steady") if steady is not None else None
        self.impulses: list[int] = []  # JACK frame time of each impulse played
        self.recorded: list[tuple[int, np.ndarray]] = []  # (frame time, samples) per recorder cycle
        self.recorded_steady: list[np.ndarray] = []  # per recorder cycle, with ``recorded``
        self.xruns: list[int] = []  # estimated JACK frame time at each xrun JACK notified to the recorder
        self._first: int | None = None
        player.set_process_callback(self._play)
        recorder.set_process_callback(self._record)
        recorder.set_xrun_callback(lambda _delayed_usecs: self.xruns.append(self.recorder.frame_time))

    def _play(self, frames: int) -> None:
        t0 = self.player.last_frame_time
        if self._first is None:
            self._first = t0 + self.interval
        if self.steady_port is not None:
            self.steady_port.get_array()[:] = self.steady
        buf = self.play_port.get_array()
        buf[:] = 0.0
        k = (self._first - t0) % self.interval  # frames from this cycle's start to the next impulse time
        if k < frames and t0 + k >= self._first and len(self.impulses) < self.count:
            buf[k] = 1.0
            self.impulses.append(t0 + k)

    def _record(self, frames: int) -> None:
        self.recorded.append((self.recorder.last_frame_time, self.rec_port.get_array().copy()))
        if self.rec_steady_port is not None:
            self.recorded_steady.append(self.rec_steady_port.get_array().copy())

    def steady_output(self) -> tuple[np.ndarray, np.ndarray]:
        """``(JACK frame times, samples)`` of the recorded steady channel, every recorded frame."""
        times = np.concatenate([t + np.arange(len(b)) for t, b in self.recorded])
        return times, np.concatenate(self.recorded_steady)

    @property
    def recorded_until(self) -> int:
        """JACK frame time just after the last recorded frame."""
        t, block = self.recorded[-1]
        return t + len(block)

    def peaks(self, window: int, impulses: list[int] | None = None) -> list[tuple[int, float]]:
        """``(delay in frames, value)`` of the recording's largest sample within ``window`` frames after
        each impulse (of ``impulses``, default all played)."""
        times = np.concatenate([t + np.arange(len(b)) for t, b in self.recorded])
        out = np.concatenate([b for _, b in self.recorded])
        peaks = []
        for t in self.impulses if impulses is None else impulses:
            inside = (times >= t) & (times < t + window)
            assert inside.any(), f"nothing recorded after the impulse at {t}"
            peak = int(np.argmax(np.abs(out[inside])))
            peaks.append((int(times[inside][peak] - t), float(out[inside][peak])))
        return peaks

    def gaps(self) -> list[int]:
        """JACK frame times where the recording skips frames (a recorder cycle JACK did not run)."""
        return [t for (t0, b), (t, _) in zip(self.recorded[:-1], self.recorded[1:], strict=True) if t != t0 + len(b)]

    def assert_delays(self, expected: int, period: int, window: int, other_xruns: int = 0) -> list[tuple[int, float]]:
        """Assert every impulse came out as a unit sample ``expected`` frames late; return :meth:`peaks`.

        With no xrun anywhere (none notified to the recorder, no gap in its recording, and
        ``other_xruns``, what the front under test counted, zero) every impulse must be exact. An xrun
        disturbs the measurement itself: the recorder reads a late client's port before that client
        wrote it (the impulse one or more cycles late) or JACK skips the recorder's cycle (the impulse
        lost). So with xruns, at least half must be exact, and each other one must be lost or off by
        whole ``period`` cycles, with an xrun notified or a recording gap during its flight. A front
        that lost alignment would be off on every impulse after the fault, xrun or not.
        """
        peaks = self.peaks(window)
        exact = [delay == expected and abs(value - 1.0) < 1e-5 for delay, value in peaks]
        gaps = self.gaps()
        if other_xruns == 0 and not self.xruns and not gaps:
            assert all(exact), (peaks, expected)
            return peaks
        assert sum(exact) >= len(peaks) // 2, (peaks, expected, self.xruns, gaps)
        # An xrun is notified on a normal-priority thread that takes the test process's GIL: allow it
        # a quarter second past the flight.
        flight = expected + 2 * period + self.rate // 4
        for t, (delay, value), ok in zip(self.impulses, peaks, exact, strict=True):
            if ok:
                continue
            if abs(value - 1.0) < 1e-5:
                assert (delay - expected) % period == 0, f"impulse at {t} off by {delay - expected} frames: {peaks}"
            disturbed = any(t - period <= x <= t + flight for x in self.xruns + gaps)
            assert disturbed, f"impulse at {t} came out {(delay, value)}, no xrun near: {peaks}, {self.xruns}, {gaps}"
        return peaks
