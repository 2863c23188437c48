"""What a Realtime `session.update` asks of a duplex call: the mapping onto `start`, and the
errors that name the offending field."""

from __future__ import annotations

from typing import Any

import pytest

from server.protocol import SamplingParams
from server.realtime_options import (
    EAGERNESS,
    ClientError,
    RealtimeFormat,
    RealtimeOptions,
    TurnDetection,
)

GATE_DB = 10.0  # the server's default margin in these tests


def _ga(**inp: Any) -> dict[str, Any]:
    return {"type": "realtime", "audio": {"input": inp}}


def test_defaults_are_the_servers() -> None:
    start = RealtimeOptions().start()
    assert start.sampling == SamplingParams()
    assert start.noise_gate_db is None
    assert (start.audio.encoding, start.audio.sample_rate) == ("pcm16", 24000)


@pytest.mark.parametrize("eagerness", ["low", "medium", "high", "auto"])
def test_semantic_eagerness_sets_how_readily_the_agent_takes_the_turn(eagerness: str) -> None:
    o = RealtimeOptions().updated(
        _ga(turn_detection={"type": "semantic_vad", "eagerness": eagerness}), GATE_DB
    )
    assert o.turn == TurnDetection("semantic_vad", eagerness)  # type: ignore[arg-type]
    eager = EAGERNESS[eagerness]  # type: ignore[index]
    assert o.start().sampling == SamplingParams(
        temperature=eager.temperature,
        turn_temperature=eager.turn_temperature,
        speak_up_ms=eager.speak_up_ms,
    )
    rendered = o.turn.render() if o.turn else {}
    assert rendered["type"] == "semantic_vad" and rendered["eagerness"] == eagerness


def test_eagerness_is_ordered() -> None:
    """`low` draws cooler than the default flat 0.6 and waits longer to speak up; `high` splits
    off speak-or-not and speaks up sooner; `auto` is `medium`, the server's defaults."""
    low, high = EAGERNESS["low"], EAGERNESS["high"]
    assert low.temperature is not None and low.temperature < 0.6 and low.turn_temperature is None
    assert high.turn_temperature is not None
    assert low.speak_up_ms is not None and high.speak_up_ms is not None
    assert high.speak_up_ms < 3000 < low.speak_up_ms
    assert EAGERNESS["auto"] == EAGERNESS["medium"] == type(low)()


def test_a_named_temperature_wins_over_the_eagerness() -> None:
    update = {"temperature": 0.7, "turn_detection": {"type": "semantic_vad", "eagerness": "low"}}
    assert RealtimeOptions().updated(update, GATE_DB).start().sampling.temperature == 0.7


def test_server_vad_idle_timeout_is_the_speak_up_time_and_silence_ends_vad_speech() -> None:
    o = RealtimeOptions().updated(
        _ga(turn_detection={"type": "server_vad", "idle_timeout_ms": 6000,
                            "silence_duration_ms": 300, "threshold": 0.7}),
        GATE_DB,
    )  # fmt: skip
    assert o.start().sampling == SamplingParams(speak_up_ms=6000.0)
    assert o.turn is not None and o.turn.vad_params().stop_frames == 15  # 300 ms of 20 ms frames
    assert o.turn.render()["silence_duration_ms"] == 300


def test_null_turn_detection_turns_the_vad_events_off() -> None:
    o = RealtimeOptions().updated({"turn_detection": None}, GATE_DB)  # beta shape
    assert o.turn is None
    assert o.start().sampling == SamplingParams()


@pytest.mark.parametrize(
    ("value", "gate", "echo"),
    [
        (None, 0.0, None),
        ({"type": "near_field"}, 10.0, {"type": "near_field", "strength": 1.0}),
        ({"type": "far_field", "strength": 2}, 20.0, {"type": "far_field", "strength": 2.0}),
        ({"type": "far_field", "strength": 9}, 40.0, {"type": "far_field", "strength": 4.0}),
        ({"type": "near_field", "strength": 0}, 0.0, None),
    ],
)
def test_noise_reduction_is_the_noise_gate(
    value: dict[str, Any] | None, gate: float, echo: dict[str, Any] | None
) -> None:
    for update in (_ga(noise_reduction=value), {"input_audio_noise_reduction": value}):
        o = RealtimeOptions().updated(update, GATE_DB)
        assert o.start().noise_gate_db == gate
        assert o.noise_reduction_echo(GATE_DB) == echo


def test_an_unset_noise_reduction_echoes_the_servers_gate() -> None:
    assert RealtimeOptions().noise_reduction_echo(GATE_DB) == {
        "type": "near_field",
        "strength": 1.0,
    }
    assert RealtimeOptions().noise_reduction_echo(0.0) is None  # a server without a gate


def test_temperature_and_format_together() -> None:
    o = RealtimeOptions().updated(
        {"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw",
         "temperature": 0.8},
        GATE_DB,
    )  # fmt: skip
    assert o.format == RealtimeFormat("pcmu", 8000)
    start = o.start()
    assert start.sampling.temperature == 0.8 and start.audio.encoding == "mulaw"


def test_an_update_that_repeats_the_session_changes_nothing() -> None:
    """A client may resend its whole session: equal options are not a change (no lock error)."""
    update = _ga(format={"type": "audio/pcm", "rate": 16000},
                 turn_detection={"type": "semantic_vad", "eagerness": "low"},
                 noise_reduction={"type": "far_field"})  # fmt: skip
    once = RealtimeOptions().updated(update, GATE_DB)
    assert once.updated(update, GATE_DB) == once
    assert once.updated({"instructions": "be brief"}, GATE_DB) == once


@pytest.mark.parametrize(
    ("update", "param"),
    [
        (_ga(turn_detection={"type": "push_to_talk"}), "session.audio.input.turn_detection.type"),
        (_ga(turn_detection="semantic_vad"), "session.audio.input.turn_detection.type"),
        (
            _ga(turn_detection={"type": "semantic_vad", "eagerness": "very"}),
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            {"turn_detection": {"type": "server_vad", "idle_timeout_ms": -5}},
            "session.turn_detection.idle_timeout_ms",
        ),
        (
            {"turn_detection": {"type": "server_vad", "silence_duration_ms": 2.5}},
            "session.turn_detection.silence_duration_ms",
        ),
        (_ga(noise_reduction={"type": "studio"}), "session.audio.input.noise_reduction.type"),
        (_ga(noise_reduction="near_field"), "session.audio.input.noise_reduction.type"),
        (
            {"input_audio_noise_reduction": {"type": "near_field", "strength": "max"}},
            "session.input_audio_noise_reduction.strength",
        ),
        (
            _ga(noise_reduction={"type": "near_field", "strength": float("nan")}),
            "session.audio.input.noise_reduction.strength",
        ),
        ({"temperature": "hot"}, "session.temperature"),
        ({"temperature": 9}, "session.temperature"),
        ({"temperature": True}, "session.temperature"),
    ],
)
def test_bad_values_name_their_field(update: dict[str, Any], param: str) -> None:
    with pytest.raises(ClientError) as info:
        RealtimeOptions().updated(update, GATE_DB)
    assert info.value.code == "invalid_value"
    assert info.value.param == param
