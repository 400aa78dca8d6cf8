"""The soak (``stemserve bench soak --tiny``): concurrent bridges with random blocks of 1..4096
frames, killed clients and a server killed and restarted under them lose, duplicate and
misalign no sample; every malformed input gets its status while a clean session's output
stays bit-identical to a clean run. The accounting itself is checked first: it must see
each kind of fault."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from stemserve.bench.soak import GAIN, Ledger, code_signal, decode_wet
from stemserve.server.cli import main

LATENCY = 10


def clean_output(track: int = 5, frames: int = 100) -> np.ndarray:
    """What a track's host output must be: ``LATENCY`` frames of silence, then its code times the gain."""
    silence = np.zeros((2, LATENCY), np.float32)
    return np.concatenate([silence, GAIN * code_signal(track, 0, frames)], axis=1)


def ledger_of(out: np.ndarray, counted_gaps: int = LATENCY, track: int = 5) -> dict[str, int]:
    ledger = Ledger(track, LATENCY)
    for part in np.array_split(out, [7, 57], axis=1):  # uneven blocks, as a host gives them
        ledger.add(part)
    return ledger.result(counted_gaps)


def test_the_code_names_every_frame_and_its_track() -> None:
    audio = code_signal(3, 70_000, 5000)
    valid, track, frame = decode_wet(GAIN * audio)
    assert valid.all() and (track == 3).all()
    assert np.array_equal(frame, np.arange(70_000, 75_000))
    assert not decode_wet(audio)[0].any(), "the dry input is not mistaken for a stem frame"
    assert not decode_wet(np.zeros((2, 4), np.float32))[0].any()


def duplicate(out: np.ndarray) -> None:
    out[:, 50] = out[:, 49]


def drop_one(out: np.ndarray) -> None:
    out[:, 20:-1] = out[:, 21:].copy()
    out[:, -1] = 0.0


def swap(out: np.ndarray) -> None:
    out[:, [30, 31]] = out[:, [31, 30]]


def silence_one(out: np.ndarray) -> None:
    out[:, 40] = 0.0


def foreign(out: np.ndarray) -> None:
    out[:, 60] = GAIN * code_signal(6, 50, 1)[:, 0]


def garbage(out: np.ndarray) -> None:
    out[:, 70] = 0.3


FAULTS: dict[str, tuple[Callable[[np.ndarray], None], dict[str, int]]] = {
    "a frame repeated": (duplicate, {"duplicated": 1, "lost": 1, "misaligned": 1}),
    "a frame dropped (the rest shifted)": (drop_one, {"lost": 2, "misaligned": 89}),
    "two frames swapped": (swap, {"misaligned": 2}),
    "a frame silenced but not counted": (silence_one, {"lost": 1}),
    "another track's frame": (foreign, {"lost": 1, "misaligned": 1, "foreign": 1}),
    "a sample that is no frame at all": (garbage, {"lost": 1, "misaligned": 1}),
}


def test_a_clean_output_counts_nothing_wrong() -> None:
    counts = ledger_of(clean_output())
    assert counts == {
        "frames": 110,
        "wet": 100,
        "gap": LATENCY,
        "counted_gap": LATENCY,
        "lost": 0,
        "duplicated": 0,
        "misaligned": 0,
        "foreign": 0,
    }


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_ledger_sees_each_fault(fault: str) -> None:
    damage, expected = FAULTS[fault]
    out = clean_output()
    damage(out)
    counts = ledger_of(out)
    wrong = {k: counts[k] for k in ("lost", "duplicated", "misaligned", "foreign") if counts[k]}
    assert wrong == expected


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("soak")
    assert main(["bench", "soak", "--tiny", "--out", str(out)]) == 0
    document: dict[str, Any] = json.loads((out / "soak.json").read_text())
    return document


@pytest.mark.slow
def test_no_sample_is_lost_duplicated_or_misaligned(soak: dict[str, Any]) -> None:
    rows = soak["rows"]
    assert len(rows) == soak["tracks"] >= 3
    for row in rows:
        assert (row["lost"], row["duplicated"], row["misaligned"], row["foreign"]) == (0, 0, 0, 0), row
        assert row["gap"] == row["counted_gap"], "every silent frame was counted by the bridge"
        assert row["wet"] + row["gap"] == row["frames"]
        assert row["wet"] > 10 * 44100, "each track streamed more than 10 s of stems"
        assert row["smallest_block"] <= 64 and row["largest_block"] >= 4000, "block sizes spread over 1..4096"


@pytest.mark.slow
def test_tracks_reconnect_after_the_server_is_killed_and_after_it_is_stopped(soak: dict[str, Any]) -> None:
    faults = soak["faults"]
    assert faults["server_starts"] == 3
    assert set(faults["reconnect_s"]) == {"SIGKILL", "SIGTERM"}
    for row in soak["rows"]:
        assert row["reconnects"] >= 2, row


@pytest.mark.slow
def test_killed_clients_sessions_are_freed(soak: dict[str, Any]) -> None:
    faults = soak["faults"]
    assert faults["clients_killed"] >= 2
    assert faults["sessions_with_clients"] == [soak["tracks"] + 2] * faults["cycles"]
    assert len(faults["freed_s"]) == faults["cycles"]


@pytest.mark.slow
def test_every_malformed_input_gets_its_status_and_the_clean_session_is_bit_identical(
    soak: dict[str, Any],
) -> None:
    cases = soak["cases"]
    assert len(cases) >= 15
    assert {c["transport"].split()[0] for c in cases} >= {"gRPC", "OSC"}
    wrong = [(c["input"], c["expected"], c["returned"]) for c in cases if not c["ok"]]
    assert wrong == []
    assert all(c["tries"] >= 2 for c in cases), "every case was sent more than once while the clean session ran"
    clean = soak["clean_session"]
    assert clean["offline_max_abs_difference"] <= 1e-4, "the clean run is the model's offline separation, delayed"
    assert clean["bit_identical"]
    assert clean["blocks_during_bad_input"] >= clean["blocks"] // 2
