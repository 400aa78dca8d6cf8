"""The rule the real-time latency tests judge a recording by (``ImpulseRig.assert_delays``), on made-up
recordings: exact without xruns; with xruns, only impulses in flight during one may be lost or whole
cycles late, and a front that lost alignment fails either way."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pytest

from tests.plugin_bridge.impulses import ImpulseRig

RATE, PERIOD, LATENCY, INTERVAL = 48000, 256, 1000, 24000


def fake_client() -> SimpleNamespace:
    ports = SimpleNamespace(register=lambda name: name)
    return SimpleNamespace(
        outports=ports, inports=ports, samplerate=RATE, set_process_callback=lambda f: None,
        set_xrun_callback=lambda f: None,
    )  # fmt: skip


def recording(delays: Sequence[int | None], skip_cycle_at: int | None = None) -> ImpulseRig:
    """A rig whose recorder heard impulse k ``delays[k]`` frames after it was played (None: not at all),
    in contiguous 256-frame cycles, less the cycle starting at ``skip_cycle_at``."""
    rig = ImpulseRig(fake_client(), fake_client(), INTERVAL, len(delays))  # type: ignore[arg-type]
    rig.impulses = [INTERVAL * (k + 1) for k in range(len(delays))]
    out = np.zeros(INTERVAL * (len(delays) + 2), dtype=np.float32)
    for t, delay in zip(rig.impulses, delays, strict=True):
        if delay is not None:
            out[t + delay] = 1.0
    rig.recorded = [(t, out[t : t + PERIOD]) for t in range(0, len(out), PERIOD) if t != skip_cycle_at]
    return rig


def test_without_xruns_every_impulse_must_be_exact() -> None:
    recording([LATENCY] * 6).assert_delays(LATENCY, PERIOD, RATE // 4)
    with pytest.raises(AssertionError):
        recording([LATENCY] * 5 + [LATENCY + PERIOD]).assert_delays(LATENCY, PERIOD, RATE // 4)
    with pytest.raises(AssertionError):  # an xrun the front counted, none the recorder saw: still judged
        recording([LATENCY] * 5 + [LATENCY + 1]).assert_delays(LATENCY, PERIOD, RATE // 4, other_xruns=1)


def test_an_xrun_in_flight_excuses_a_lost_or_whole_cycles_late_impulse_only() -> None:
    rig = recording([LATENCY] * 4 + [None, LATENCY + 3 * PERIOD])
    rig.xruns = [rig.impulses[4] + LATENCY, rig.impulses[5] + 200]
    rig.assert_delays(LATENCY, PERIOD, RATE // 4)

    rig.xruns = [rig.impulses[4] + LATENCY]  # nothing near the late one
    with pytest.raises(AssertionError, match="no xrun near"):
        rig.assert_delays(LATENCY, PERIOD, RATE // 4)

    rig = recording([LATENCY] * 5 + [LATENCY + 100])  # off by part of a cycle: misaligned, xrun or not
    rig.xruns = [rig.impulses[5] + LATENCY]
    with pytest.raises(AssertionError, match="off by 100 frames"):
        rig.assert_delays(LATENCY, PERIOD, RATE // 4)


def test_a_skipped_recorder_cycle_counts_as_an_xrun_for_the_impulse_it_held() -> None:
    lost_at = INTERVAL * 3 + LATENCY
    rig = recording([LATENCY] * 6, skip_cycle_at=lost_at - lost_at % PERIOD)
    assert rig.gaps() == [lost_at - lost_at % PERIOD + PERIOD]
    rig.assert_delays(LATENCY, PERIOD, RATE // 4)


def test_a_front_that_lost_alignment_fails_even_with_xruns_everywhere() -> None:
    rig = recording([LATENCY] * 2 + [LATENCY + PERIOD] * 4)
    rig.xruns = [t + LATENCY for t in rig.impulses]
    with pytest.raises(AssertionError):
        rig.assert_delays(LATENCY, PERIOD, RATE // 4)
