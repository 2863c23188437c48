"""A call's sampling from its request, its eagerness and the server's defaults."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.call_sampling import (
    HIGH_SPEAK_UP_MS,
    HIGH_START_BIAS,
    HIGH_TURN_TEMPERATURE,
    LOW_SPEAK_UP_MS,
    LOW_TEMPERATURE,
    CallSampling,
    periods,
    resolve,
)
from server.settings import Settings
from streaming.wire import SamplingParams, UpdateMessage

TICK_S = 0.16


def _got(server: Settings, **asked: object) -> CallSampling:
    return resolve(SamplingParams(**asked), server, TICK_S)  # type: ignore[arg-type]


def test_medium_and_none_are_the_servers_defaults() -> None:
    server = Settings(temperature=0.7, turn_temperature=0.3, top_k=50, seed=9, speak_up_ms=1000)
    expected = CallSampling(
        0.7, 0.3, 50, 9, periods(1000, TICK_S), server.barge_in_ms, server.start_bias
    )
    assert _got(server) == _got(server, eagerness="medium") == expected


def test_low_and_high_on_a_default_server() -> None:
    server = Settings()
    low, high = _got(server, eagerness="low"), _got(server, eagerness="high")
    assert (low.temperature, low.turn_temperature) == (LOW_TEMPERATURE, None)
    assert low.speak_up_chunks == periods(LOW_SPEAK_UP_MS, TICK_S) == 50
    assert (high.temperature, high.turn_temperature) == (server.temperature, HIGH_TURN_TEMPERATURE)
    assert high.speak_up_chunks == periods(HIGH_SPEAK_UP_MS, TICK_S) == 13  # 2080 ms


@pytest.mark.parametrize(
    ("server", "low", "high"),
    [
        # a cooler server stays cool at low; low stays one flat draw where the server splits
        (Settings(temperature=0.4, turn_temperature=0.3),
         (0.4, None, 50, 0.0), (0.4, 0.1, 13, HIGH_START_BIAS)),
        # a longer speak-up stays at low, a shorter one at high
        (Settings(speak_up_ms=20_000), (0.5, None, 125, 0.0), (0.6, 0.1, 13, HIGH_START_BIAS)),
        (Settings(speak_up_ms=1000), (0.5, None, 50, 0.0), (0.6, 0.1, 7, HIGH_START_BIAS)),
        # a server that never speaks up: low never does either, high does after 2 s
        (Settings(speak_up_ms=0), (0.5, None, 0, 0.0), (0.6, 0.1, 13, HIGH_START_BIAS)),
        # a more hesitant server stays so at low, a bolder one at high
        (Settings(start_bias=-1.0), (0.5, None, 50, -1.0), (0.6, 0.1, 13, HIGH_START_BIAS)),
        (Settings(start_bias=3.0), (0.5, None, 50, 0.0), (0.6, 0.1, 13, 3.0)),
    ],
)  # fmt: skip
def test_low_is_never_quicker_and_high_never_slower_than_medium(
    server: Settings,
    low: tuple[float, float | None, int, float],
    high: tuple[float, float | None, int, float],
) -> None:
    for eagerness, want in (("low", low), ("high", high)):
        got = _got(server, eagerness=eagerness)
        have = (got.temperature, got.turn_temperature, got.speak_up_chunks, got.start_bias)
        assert have == want, eagerness


def test_what_the_call_names_wins() -> None:
    got = _got(Settings(), eagerness="low", temperature=0.9, turn_temperature=0.2, speak_up_ms=0,
               top_k=5, seed=3, barge_in_ms=0)  # fmt: skip
    assert got == CallSampling(0.9, 0.2, 5, 3, 0, 0.0, 0.0)
    assert _got(Settings(), eagerness="high", turn_temperature=1.0).turn_temperature == 1.0


def test_periods_round_up_to_whole_ticks() -> None:
    assert [periods(ms, TICK_S) for ms in (0, 1, 160, 320, 321, 3000)] == [0, 1, 1, 2, 3, 19]


def test_an_update_changes_what_it_names() -> None:
    """docs/protocol.md's example: `low` keeps the temperature the call named; then a null
    temperature gives `low`'s own; a gate left out stays, a null one is the server's."""
    server = Settings()
    asked = SamplingParams(eagerness="high", temperature=0.8)
    low = UpdateMessage.model_validate({"type": "update", "sampling": {"eagerness": "low"}})
    asked, gate = low.applied(asked, 20.0)
    assert (asked, gate) == (SamplingParams(eagerness="low", temperature=0.8), 20.0)
    assert resolve(asked, server, TICK_S).temperature == 0.8
    reset = {"type": "update", "sampling": {"temperature": None}, "noise_gate_db": None}
    asked, gate = UpdateMessage.model_validate(reset).applied(asked, gate)
    assert (asked, gate) == (SamplingParams(eagerness="low"), None)
    assert resolve(asked, server, TICK_S).temperature == LOW_TEMPERATURE


_FIELD_VALUES = {
    "eagerness": st.sampled_from(["low", "medium", "high", None]),
    "temperature": st.sampled_from([0.0, 0.5, 1.3, None]),
    "turn_temperature": st.sampled_from([0.1, 1.0, None]),
    "top_k": st.sampled_from([0, 50, None]),
    "seed": st.sampled_from([0, 7, None]),
    "speak_up_ms": st.sampled_from([0.0, 2500.0, None]),
}
_SAMPLING = st.fixed_dictionaries({}, optional=_FIELD_VALUES)


@given(before=_SAMPLING, change=_SAMPLING, gate=st.sampled_from([None, 0.0, 15.0]),
       new_gate=st.sampled_from(["left out", None, 5.0]))  # fmt: skip
def test_an_update_is_a_merge(
    before: dict[str, Any], change: dict[str, Any], gate: float | None, new_gate: Any
) -> None:
    """Whatever the call asked before: each field the update names (null included) replaces
    it, the others stay."""
    update: dict[str, Any] = {"type": "update", "sampling": change}
    if new_gate != "left out":
        update["noise_gate_db"] = new_gate
    asked, got_gate = UpdateMessage.model_validate(update).applied(SamplingParams(**before), gate)
    assert asked == SamplingParams(**{**before, **change})
    assert got_gate == (gate if new_gate == "left out" else new_gate)
