"""Plugin parameters: normalised mapping, validation (bad values logged and ignored), forwarding."""

from __future__ import annotations

import logging

import pytest

from stemserve.plugin_bridge.parameters import Parameters
from stemserve.protos import stemserve_pb2 as pb


@pytest.fixture
def params() -> Parameters:
    p = Parameters("spec", target="vocals")
    p.set_sources(["vocals", "drums", "bass"])
    return p


def changes(params: Parameters) -> list[pb.Parameters]:
    seen: list[pb.Parameters] = []
    params.add_listener(seen.append)
    return seen


@pytest.mark.parametrize(
    ("value", "name"), [(0.0, "vocals"), (0.33, "vocals"), (0.34, "drums"), (0.99, "bass"), (1.0, "bass")]
)
def test_normalised_target_is_a_choice_over_the_sources(params: Parameters, value: float, name: str) -> None:
    assert params.set_normalized(1, value)
    assert params.target == name


def test_mix_and_gains_map_linearly_and_are_forwarded(params: Parameters) -> None:
    seen = changes(params)
    assert params.set_normalized(2, 0.25)
    assert params.set_normalized(4, 0.5)  # 3 = vocals, 4 = drums, 5 = bass
    assert params.mix == 0.25
    assert params.gains == {"drums": 0.5}
    assert seen == [pb.Parameters(mix=0.25), pb.Parameters(gains={"drums": 0.5})]
    full = params.to_proto()
    assert full.target == "vocals" and full.mix == 0.25 and dict(full.gains) == {"drums": 0.5}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.set_mix(1.5), "mix must be in"),
        (lambda p: p.set_mix(float("nan")), "mix must be in"),
        (lambda p: p.set_mix("loud"), "mix must be a number"),
        (lambda p: p.set_target("piano"), "not a source"),
        (lambda p: p.set_target(-0.1), "target must be in"),
        (lambda p: p.set_gain("piano", 0.5), "not a source"),
        (lambda p: p.set_gain("bass", 2.0), "gain of bass must be in"),
        (lambda p: p.set_normalized(9, 0.5), "parameter 9 ignored"),
        (lambda p: p.set_normalized(1.5, 0.5), "must be an integer"),
        (lambda p: p.set_model(""), "non-empty"),
    ],
)
def test_bad_values_are_logged_and_ignored(params: Parameters, caplog: pytest.LogCaptureFixture, call, message) -> None:
    seen = changes(params)
    before = (params.target, params.mix, params.gains)
    with caplog.at_level(logging.WARNING, logger="stemserve.plugin_bridge.parameters"):
        assert call(params) is False
    assert message in caplog.text
    assert (params.target, params.mix, params.gains) == before
    assert seen == []


def test_normalised_target_needs_the_source_list() -> None:
    p = Parameters("spec")
    assert not p.set_target(0.5)
    assert p.set_target("anything")  # names are checked once the session tells the sources


def test_constructor_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="mix"):
        Parameters("m", mix=2.0)
    with pytest.raises(ValueError, match="gain of a"):
        Parameters("m", gains={"a": -1.0})
