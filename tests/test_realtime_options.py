"""What a Realtime `session.update` asks of a duplex call: the mapping onto `start`, which
spellings are the same call (a client may send back the session it was shown), and the errors
that name the offending field."""

from __future__ import annotations

from typing import Any

import pytest

from server.adapters.realtime_options import (
    ClientError,
    RealtimeFormat,
    RealtimeOptions,
    TurnDetection,
)
from server.call_sampling import resolve
from server.settings import Settings
from streaming.vad import VadParams
from streaming.wire import SamplingParams

SERVER = Settings(noise_gate_db=10.0, temperature=0.6, speak_up_ms=3000.0)
TICK_S = 0.16


def _ga(**inp: Any) -> dict[str, Any]:
    return {"type": "realtime", "audio": {"input": inp}}


def _call(o: RealtimeOptions) -> dict[str, Any]:
    """What reaches the call, by setting: what the adapter admits or retunes it with."""
    got = resolve(o.start(SERVER).sampling, SERVER, TICK_S)
    return {
        "format": o.format,
        "turn_detection": (
            got.turn_temperature,
            got.speak_up_chunks,
            None if o.turn is None else o.vad_params(),
        ),
        "noise_reduction": o.noise_gate_db(SERVER.noise_gate_db),
        "temperature": got.temperature,
    }


def _same_call(a: RealtimeOptions, b: RealtimeOptions) -> bool:
    """Two spellings (`auto` and `medium`, an echoed strength sent back, 490 or 500 ms of
    silence, a speak-up time within the same tick) that give the call the same settings."""
    return _call(a) == _call(b)


def test_defaults_are_the_servers() -> None:
    start = RealtimeOptions().start(SERVER)
    assert start.sampling == SamplingParams()
    assert start.noise_gate_db is None
    assert (start.audio.encoding, start.audio.sample_rate) == ("pcm16", 24000)


@pytest.mark.parametrize(
    ("eagerness", "native"),
    [("low", "low"), ("medium", "medium"), ("high", "high"), ("auto", "medium")],
)
def test_semantic_eagerness_is_the_calls(eagerness: str, native: str) -> None:
    turn = {"type": "semantic_vad", "eagerness": eagerness}
    o = RealtimeOptions().updated(_ga(turn_detection=turn), SERVER)
    assert o.turn == TurnDetection("semantic_vad", eagerness)  # type: ignore[arg-type]
    assert o.start(SERVER).sampling == SamplingParams(eagerness=native)  # type: ignore[arg-type]
    rendered = o.turn.render(SERVER) if o.turn else {}
    assert rendered["type"] == "semantic_vad" and rendered["eagerness"] == eagerness


def test_a_named_temperature_goes_along_with_the_eagerness() -> None:
    low = {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}
    o = RealtimeOptions().updated({**low, "temperature": 0.7}, SERVER)
    assert o.start(SERVER).sampling == SamplingParams(eagerness="low", temperature=0.7)
    assert o.temperature_echo(SERVER) == 0.7
    assert RealtimeOptions().updated(low, SERVER).temperature_echo(SERVER) == 0.5  # low's own
    assert RealtimeOptions().temperature_echo(SERVER) == SERVER.temperature


def test_server_vad_idle_timeout_is_the_speak_up_time_and_silence_ends_vad_speech() -> None:
    turn = {"type": "server_vad", "idle_timeout_ms": 6000, "silence_duration_ms": 300,
            "threshold": 0.7}  # fmt: skip
    o = RealtimeOptions().updated(_ga(turn_detection=turn), SERVER)
    assert o.start(SERVER).sampling == SamplingParams(speak_up_ms=6000.0)
    assert o.turn is not None and o.turn.vad_params().stop_frames == 15  # 300 ms of 20 ms frames
    assert o.turn.render(SERVER)["silence_duration_ms"] == 300
    assert o.turn.vad_params().on_dbfs == VadParams().on_dbfs + 6  # 0.7: 6 dB louder
    assert o.turn.vad_params().off_dbfs == VadParams().off_dbfs + 6
    assert (
        o.turn.render(SERVER)["threshold"] == 0.7
        and o.turn.render(SERVER)["prefix_padding_ms"] == 0
    )
    untyped = RealtimeOptions().updated({"turn_detection": {"type": None}}, SERVER)  # beta
    assert untyped.turn == TurnDetection()


def test_null_turn_detection_turns_the_vad_events_off() -> None:
    o = RealtimeOptions().updated({"turn_detection": None}, SERVER)  # beta shape
    assert o.turn is None
    assert o.start(SERVER).sampling == SamplingParams(barge_in_ms=0.0)  # nothing interrupts


@pytest.mark.parametrize("kind", ["server_vad", "semantic_vad"])
def test_interrupt_response_is_the_barge_in_rule(kind: str) -> None:
    """OpenAI's default (true) is the server's barge-in; false leaves yielding to the model."""
    default = RealtimeOptions().updated(_ga(turn_detection={"type": kind}), SERVER)
    assert default.start(SERVER).sampling.barge_in_ms is None  # the server's
    assert default.turn is not None and default.turn.render(SERVER)["interrupt_response"] is True
    off = {"type": kind, "interrupt_response": False}
    o = RealtimeOptions().updated(_ga(turn_detection=off), SERVER)
    assert o.start(SERVER).sampling.barge_in_ms == 0.0
    assert o.turn is not None and o.turn.render(SERVER)["interrupt_response"] is False
    with pytest.raises(ClientError) as err:
        RealtimeOptions().updated({"turn_detection": {"type": kind, "interrupt_response": 1}},
                                  SERVER)  # fmt: skip
    assert err.value.param == "session.turn_detection.interrupt_response"
    quiet_server = Settings(barge_in_ms=0)  # nothing interrupts there: shown so
    assert default.turn.render(quiet_server)["interrupt_response"] is False


@pytest.mark.parametrize(
    ("value", "gate", "echo"),
    [
        (None, 0.0, None),
        ({"type": "near_field"}, 10.0, {"type": "near_field", "strength": 1.0}),
        ({"type": "far_field", "strength": 2}, 20.0, {"type": "far_field", "strength": 2.0}),
        ({"type": "far_field", "strength": 9}, 40.0, {"type": "far_field", "strength": 9.0}),
        ({"type": "near_field", "strength": 0}, 0.0, None),
    ],
)
def test_noise_reduction_is_the_noise_gate(
    value: dict[str, Any] | None, gate: float, echo: dict[str, Any] | None
) -> None:
    for update in (_ga(noise_reduction=value), {"input_audio_noise_reduction": value}):
        o = RealtimeOptions().updated(update, SERVER)
        assert o.start(SERVER).noise_gate_db == gate
        assert o.noise_reduction_echo(SERVER) == echo


def test_an_omitted_strength_keeps_the_current_one() -> None:
    """OpenAI: "Omitting strength from a session update preserves the current strength"; after
    `null` the next one starts again at 1."""
    half = RealtimeOptions().updated(
        _ga(noise_reduction={"type": "far_field", "strength": 0.5}), SERVER
    )
    again = half.updated(_ga(noise_reduction={"type": "far_field"}), SERVER)
    assert again.start(SERVER).noise_gate_db == 5.0
    off = again.updated(_ga(noise_reduction=None), SERVER)
    assert off.updated(_ga(noise_reduction={"type": "near_field"}), SERVER).noise_strength == 1.0


def test_an_unset_noise_reduction_echoes_the_servers_gate() -> None:
    assert RealtimeOptions().noise_reduction_echo(SERVER) == {
        "type": "near_field",
        "strength": 1.0,
    }
    no_gate = Settings(noise_gate_db=0.0)
    assert RealtimeOptions().noise_reduction_echo(no_gate) is None  # a server without a gate


def test_temperature_and_format_together() -> None:
    fmt = {"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"}
    o = RealtimeOptions().updated({**fmt, "temperature": 0.8}, SERVER)
    assert o.format == RealtimeFormat("pcmu", 8000)
    start = o.start(SERVER)
    assert start.sampling.temperature == 0.8 and start.audio.encoding == "mulaw"


@pytest.mark.parametrize(
    "first",
    [
        _ga(format={"type": "audio/pcm", "rate": 16000}),
        _ga(
            turn_detection={"type": "semantic_vad", "eagerness": "low"},
            noise_reduction={"type": "far_field", "strength": 1 / 3},
        ),  # fmt: skip
        {"turn_detection": {"type": "server_vad", "silence_duration_ms": 310}, "temperature": 0.9},
        {"turn_detection": None, "input_audio_noise_reduction": None},
    ],
)
def test_the_echoed_session_sent_back_is_no_change(first: dict[str, Any]) -> None:
    """A client may send back the session the server showed it: what it spells differently
    (the echoed strength, the server's temperature, `idle_timeout_ms: null`) gives the call the
    same settings."""
    o = RealtimeOptions().updated(first, SERVER)
    turn = None if o.turn is None else o.turn.render(SERVER)
    ga = _ga(format=o.format.ga(), turn_detection=turn,
             noise_reduction=o.noise_reduction_echo(SERVER))  # fmt: skip
    beta = {"input_audio_format": o.format.beta(), "turn_detection": turn,
            "input_audio_noise_reduction": o.noise_reduction_echo(SERVER),
            "temperature": o.temperature_echo(SERVER)}  # fmt: skip
    beta_named = o.format.kind != "pcm" or o.format.rate == 24000  # beta pcm16 is 24 kHz
    for echoed in (ga, beta) if beta_named else (ga,):
        assert _same_call(o, o.updated(echoed, SERVER)), echoed
    assert _same_call(o, o.updated({"instructions": "be brief"}, SERVER))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"type": "semantic_vad", "eagerness": "auto"}, {"type": "semantic_vad"}),
        ({"type": "semantic_vad", "eagerness": "medium"}, {"type": "server_vad"}),
        (
            {"type": "server_vad", "silence_duration_ms": 500},
            {"type": "server_vad", "silence_duration_ms": 490},
        ),  # fmt: skip
    ],
)
def test_spellings_of_the_same_turn_detection_are_the_same_call(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    one = RealtimeOptions().updated({"turn_detection": a}, SERVER)
    assert _same_call(one, one.updated({"turn_detection": b}, SERVER))


@pytest.mark.parametrize(
    ("update", "setting"),
    [
        ({"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}, "turn_detection"),
        ({"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}, "turn_detection"),
        ({"turn_detection": None}, "turn_detection"),
        ({"input_audio_noise_reduction": None}, "noise_reduction"),
        ({"temperature": 0.8}, "temperature"),
    ],
)
def test_a_real_change_is_one(update: dict[str, Any], setting: str) -> None:
    o = RealtimeOptions()
    was, now = (_call(x) for x in (o, o.updated(update, SERVER)))
    assert [k for k in was if was[k] != now[k]] == [setting]


def test_the_shown_temperature_sent_back_is_no_request() -> None:
    """The beta session shows `low`'s 0.5; sent back, it must not outlive `low`: a later
    `high` samples at the server's temperature again. A temperature the client chose does."""
    low = RealtimeOptions().updated({"turn_detection": {"type": "semantic_vad",
                                                        "eagerness": "low"}}, SERVER)  # fmt: skip
    echoed = low.updated({"temperature": low.temperature_echo(SERVER)}, SERVER)
    assert echoed.temperature is None
    high = echoed.updated({"turn_detection": {"type": "semantic_vad", "eagerness": "high"}},
                          SERVER)  # fmt: skip
    assert high.temperature_echo(SERVER) == SERVER.temperature
    assert low.updated({"temperature": 0.55}, SERVER).temperature == 0.55


def test_a_speak_up_time_counts_in_whole_ticks() -> None:
    """3000 ms, the server's own and 3010 ms all give the call 19 ticks: no change."""

    def idle(ms: int) -> dict[str, Any]:
        return {"turn_detection": {"type": "server_vad", "idle_timeout_ms": ms}}

    at_3000 = RealtimeOptions().updated(idle(3000), SERVER)
    assert _same_call(RealtimeOptions(), at_3000)
    assert _same_call(at_3000, at_3000.updated(idle(3010), SERVER))
    assert not _same_call(at_3000, at_3000.updated(idle(3500), SERVER))


@pytest.mark.parametrize(
    ("update", "param"),
    [
        (_ga(turn_detection={"type": "push_to_talk"}), "session.audio.input.turn_detection.type"),
        (_ga(turn_detection="semantic_vad"), "session.audio.input.turn_detection.type"),
        (_ga(turn_detection={"type": 0}), "session.audio.input.turn_detection.type"),
        (_ga(turn_detection={"type": ""}), "session.audio.input.turn_detection.type"),
        (
            _ga(turn_detection={"type": "semantic_vad", "eagerness": "very"}),
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            _ga(turn_detection={"type": "semantic_vad", "eagerness": ""}),
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            {"turn_detection": {"type": "server_vad", "idle_timeout_ms": -5}},
            "session.turn_detection.idle_timeout_ms",
        ),
        (
            {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 60_001}},
            "session.turn_detection.idle_timeout_ms",
        ),
        (
            {"turn_detection": {"type": "server_vad", "silence_duration_ms": 2.5}},
            "session.turn_detection.silence_duration_ms",
        ),
        (
            {"turn_detection": {"type": "server_vad", "threshold": 1.5}},
            "session.turn_detection.threshold",
        ),
        (
            _ga(turn_detection={"type": "server_vad", "threshold": "high"}),
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {"turn_detection": {"type": "server_vad", "prefix_padding_ms": -1}},
            "session.turn_detection.prefix_padding_ms",
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
        (
            _ga(noise_reduction={"type": "near_field", "strength": 11}),
            "session.audio.input.noise_reduction.strength",
        ),
        ({"temperature": "hot"}, "session.temperature"),
        ({"temperature": 9}, "session.temperature"),
        ({"temperature": True}, "session.temperature"),
    ],
)
def test_bad_values_name_their_field(update: dict[str, Any], param: str) -> None:
    with pytest.raises(ClientError) as info:
        RealtimeOptions().updated(update, SERVER)
    assert info.value.code == "invalid_value"
    assert info.value.param == param
