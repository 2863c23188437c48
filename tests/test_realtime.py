"""`WS /v1/realtime` driven by the official `openai` SDK's realtime client (GA and beta).

Each call streams espeak-ng speech framed by silence at real-time pace while receiving, the
way a microphone client does, and checks the events and the audio format of the deltas.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import openai
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.adapters.realtime import QueuedEvent, RealtimeTransport
from server.adapters.realtime_options import ClientError, parse_format
from server.runtime import Runtime
from server.session import AgentChunk, Outgoing
from server.settings import Settings
from streaming.encodings import alaw_decode, alaw_encode, decode_audio, encode_audio
from streaming.resample import resample_whole
from streaming.vad import EnergyVad
from streaming.wire import AudioFormat
from tests.conftest import (
    ServerProcess,
    TextSocket,
    assert_no_traceback,
    read_wav,
    speak,
    start_server,
    stop_server,
)

SEND_MS = 100  # append size, as a microphone client would send
LEAD_S, TAIL_S = 0.5, 1.0  # silence around the speech
TICK_S = 0.16

Encoder = Callable[[np.ndarray], bytes]
Decoder = Callable[[bytes], np.ndarray]
FORMATS: dict[str, tuple[int, Encoder, Decoder]] = {
    "pcm16": (
        24000,
        lambda x: encode_audio(x, "pcm16"),
        lambda b: decode_audio(b, "pcm16"),
    ),
    "g711_ulaw": (8000, lambda x: encode_audio(x, "mulaw"), lambda b: decode_audio(b, "mulaw")),
    "g711_alaw": (8000, lambda x: alaw_encode(encode_audio(x, "pcm16")), alaw_decode),
}
GA_FORMATS = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int]:
    path = speak("Hello there, what time is it in Paris?", tmp_path_factory.mktemp("rt") / "v.wav")
    return read_wav(path)


def _signal(voice: tuple[np.ndarray, int], rate: int) -> tuple[np.ndarray, float, float]:
    """Silence, speech, silence at `rate`; and where the speech is (seconds)."""
    pcm = resample_whole(voice[0], voice[1], rate)
    loud = np.flatnonzero(np.abs(pcm) > 0.02)
    x = np.concatenate([np.zeros(int(LEAD_S * rate)), pcm, np.zeros(int(TAIL_S * rate))])
    return x.astype(np.float32), LEAD_S + loud[0] / rate, LEAD_S + loud[-1] / rate


def _client(server: ServerProcess, beta: bool = False) -> openai.AsyncOpenAI:
    """GA: the base URL is enough (http -> ws). The beta client always uses wss:// unless
    `websocket_base_url` is set."""
    ws = server.http.replace("http://", "ws://") + "/v1" if beta else None
    return openai.AsyncOpenAI(
        base_url=f"{server.http}/v1", websocket_base_url=ws, api_key="unused-on-loopback"
    )


async def _collect(conn: Any, events: list[Any]) -> None:
    with contextlib.suppress(Exception):  # the connection closing ends the collection
        while True:
            events.append(await conn.recv())


async def _stream(conn: Any, x: np.ndarray, rate: int, encode: Encoder) -> None:
    """Append `x` in SEND_MS pieces at real-time pace."""
    loop = asyncio.get_running_loop()
    step = rate * SEND_MS // 1000
    t0 = loop.time()
    for i, start in enumerate(range(0, len(x), step)):
        audio = base64.b64encode(encode(x[start : start + step])).decode("ascii")
        await conn.input_audio_buffer.append(audio=audio)
        await asyncio.sleep(max(0.0, t0 + (i + 1) * SEND_MS / 1000 - loop.time()))


async def _call(
    server: ServerProcess, voice: tuple[np.ndarray, int], fmt: str, beta: bool
) -> tuple[list[Any], float, float]:
    rate, encode, _ = FORMATS[fmt]
    x, speech_start, speech_end = _signal(voice, rate)
    client = _client(server, beta)
    realtime: Any = client.beta.realtime if beta else client.realtime
    update: Any = (
        {"input_audio_format": fmt, "output_audio_format": fmt}
        if beta
        else {"type": "realtime", "audio": {"input": {"format": GA_FORMATS[fmt]}}}
    )
    async with realtime.connect(model="duplex-test") as conn:
        events: list[Any] = []
        collector = asyncio.create_task(_collect(conn, events))
        await conn.session.update(session=update)
        await _stream(conn, x, rate, encode)
        await conn.input_audio_buffer.commit()
        await conn.response.cancel()  # ends the open response (or answers that none is open)
        await asyncio.sleep(2 * TICK_S)
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
    return events, speech_start, speech_end


def _check_call(events: list[Any], fmt: str, beta: bool, speech: tuple[float, float]) -> None:
    types = [e.type for e in events]
    assert types[0] == "session.created", types[:5]
    assert events[0].session.model == (None if beta else "duplex-test")
    assert "session.updated" in types
    assert "error" not in types or all(
        e.error.code == "response_cancel_not_active" for e in events if e.type == "error"
    ), [e.error for e in events if e.type == "error"]
    delta_name = "response.audio.delta" if beta else "response.output_audio.delta"
    other = "response.output_audio.delta" if beta else "response.audio.delta"
    assert other not in types
    deltas = [e for e in events if e.type == delta_name]
    assert len(deltas) >= 5, types
    rate, _, decode = FORMATS[fmt]
    width = 2 if fmt == "pcm16" else 1
    chunk = round(rate * TICK_S)
    created = {e.response.id for e in events if e.type == "response.created"}
    done = {e.response.id: e.response.status for e in events if e.type == "response.done"}
    # The cancel ends the open response; when none was open, the agent may open one after it
    # (not suppressed), which the call's end leaves open: every response before it is done.
    answers = [
        i for i, e in enumerate(events)
        if (e.type == "response.done" and e.response.status == "cancelled")
        or (e.type == "error" and e.error.code == "response_cancel_not_active")
    ]  # fmt: skip
    assert answers, types
    before = {e.response.id for e in events[: answers[-1]] if e.type == "response.created"}
    assert created and before <= set(done) <= created, (created, done)
    for d in deltas:
        raw = base64.b64decode(d.delta)
        assert 0 < len(raw) <= chunk * width and len(raw) % width == 0
        pcm = decode(raw)
        assert float(np.sqrt(np.mean(np.square(pcm)))) >= 0.01  # speech, decoded as the format
        assert d.response_id in created and d.output_index == 0 and d.content_index == 0
    # each response: created, its deltas, then done, in order
    for rid in done:
        mine = [i for i, e in enumerate(events) if getattr(e, "response_id", None) == rid]
        first = next(
            i for i, e in enumerate(events) if e.type == "response.created" and e.response.id == rid
        )
        last = next(
            i for i, e in enumerate(events) if e.type == "response.done" and e.response.id == rid
        )
        assert first < min(mine) and max(mine) < last
    started = [e for e in events if e.type == "input_audio_buffer.speech_started"]
    stopped = [e for e in events if e.type == "input_audio_buffer.speech_stopped"]
    assert started and stopped, types
    start_s, end_s = speech
    assert abs(started[0].audio_start_ms / 1000 - start_s) < 0.15, (started[0], speech)
    assert abs(stopped[-1].audio_end_ms / 1000 - end_s) < 0.15, (stopped[-1], speech)
    assert stopped[-1].item_id == started[-1].item_id
    assert "input_audio_buffer.committed" in types


@pytest.mark.parametrize(
    ("fmt", "beta"), [("pcm16", False), ("g711_ulaw", False), ("g711_alaw", True)]
)
def test_call(server: ServerProcess, voice: tuple[np.ndarray, int], fmt: str, beta: bool) -> None:
    events, start, end = asyncio.run(_call(server, voice, fmt, beta))
    _check_call(events, fmt, beta, (start, end))
    created = events[0].session
    if beta:
        assert created.input_audio_format == "pcm16"  # the default until session.update
        updated = next(e for e in events if e.type == "session.updated").session
        assert updated.input_audio_format == updated.output_audio_format == fmt
    else:
        assert created.audio.input.format.type == "audio/pcm"
        assert created.object == "realtime.session"


async def _next_of(conn: Any, kind: str) -> dict[str, Any]:
    """The next event of type `kind` (the ones before it are dropped)."""
    while True:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(conn.recv_bytes(), 5))
        if event["type"] == kind:
            return event


async def _errors(server: ServerProcess) -> list[dict[str, Any]]:
    async with _client(server).realtime.connect(model="duplex-test") as conn:
        got = [await _next_of(conn, "session.created")]
        await conn.send_raw("{not json")
        got.append(await _next_of(conn, "error"))
        await conn.send_raw(json.dumps({"type": "no.such.event", "event_id": "evt_1"}))
        got.append(await _next_of(conn, "error"))
        await conn.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": "%%"}))
        got.append(await _next_of(conn, "error"))
        await conn.response.cancel(event_id="evt_3")  # nothing is playing yet
        got.append(await _next_of(conn, "error"))
        silence = base64.b64encode(bytes(4800)).decode("ascii")
        await conn.input_audio_buffer.append(audio=silence)  # admits the call as pcm16 24 kHz
        await conn.send(
            {
                "type": "session.update",
                "event_id": "evt_2",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcmu"}}},
                },
            }
        )
        got.append(await _next_of(conn, "error"))
        await conn.input_audio_buffer.clear()  # still usable
        got.append(await _next_of(conn, "input_audio_buffer.cleared"))
    return got


def test_errors_keep_the_connection(server: ServerProcess) -> None:
    created, bad_json, unknown, bad_audio, cancel, locked, cleared = asyncio.run(_errors(server))
    assert created["session"]["model"] == "duplex-test"
    for err in (bad_json, unknown, bad_audio, locked, cancel):
        assert set(err["error"]) >= {"type", "code", "message", "param", "event_id"}
        assert err["error"]["type"] == "invalid_request_error"
    assert bad_json["error"]["code"] == "invalid_json"
    assert unknown["error"]["code"] == "invalid_value"
    assert unknown["error"]["param"] == "type" and unknown["error"]["event_id"] == "evt_1"
    assert bad_audio["error"]["param"] == "audio"
    assert locked["error"]["code"] == "session_format_locked"
    assert locked["error"]["event_id"] == "evt_2"
    assert cancel["error"]["code"] == "response_cancel_not_active"
    assert cancel["error"]["event_id"] == "evt_3"
    assert cleared["type"] == "input_audio_buffer.cleared"


NESTED = '{"type": "session.update", "session": ' + "[" * 5000  # json's RecursionError
NOT_ASCII_AUDIO = json.dumps({"type": "input_audio_buffer.append", "audio": "AAé="})


async def _hostile(server: ServerProcess) -> list[dict[str, Any]]:
    """What a fuzzing client found ending the call with 1011, before the first audio and
    after it; then a `clear`, answered."""
    async with _client(server).realtime.connect(model="duplex-test") as conn:
        await _next_of(conn, "session.created")
        got: list[dict[str, Any]] = []
        for admitted in (False, True):
            if admitted:
                await conn.input_audio_buffer.append(audio=base64.b64encode(bytes(4800)).decode())
            for event in (NESTED, NOT_ASCII_AUDIO):
                await conn.send_raw(event)
                got.append(await _next_of(conn, "error"))
        await conn.input_audio_buffer.clear()
        got.append(await _next_of(conn, "input_audio_buffer.cleared"))
    return got


def test_hostile_events_are_errors_that_keep_the_connection(server: ServerProcess) -> None:
    mark = server.log_mark()
    *errors, cleared = asyncio.run(_hostile(server))
    assert [(e["error"]["type"], e["error"]["code"], e["error"]["param"]) for e in errors] == [
        ("invalid_request_error", "invalid_json", None),
        ("invalid_request_error", "invalid_value", "audio"),
    ] * 2
    assert "more than 64 deep" in errors[0]["error"]["message"]
    assert cleared["type"] == "input_audio_buffer.cleared"
    assert_no_traceback(server.log_since(mark))


async def _at_once(url: str, message: bytes) -> tuple[list[dict[str, Any]], int | None]:
    """Send `message` (a text message, UTF-8 or not) as soon as the connection is open: the
    events that came back, and the close code."""
    async with connect(url, compression=None, proxy=None, open_timeout=5) as ws:
        await ws.send(message, text=True)
        events: list[dict[str, Any]] = []
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    events.append(json.loads(await ws.recv()))
        return events, ws.close_code


def test_refused_at_once_without_a_traceback(server: ServerProcess) -> None:
    """A message the WebSocket layer refuses (over 64 KiB: 1009), or one that is not UTF-8 (the
    call's `invalid_json`, closed 1007 as RFC 6455 asks), sent at once: often it is there
    before `session.created` goes out, and that send found the connection closed by the
    layer, which used to log a failed call (and a text message not UTF-8, a traceback of
    uvicorn's) each time."""
    url = server.url.replace("/v1/duplex", "/v1/realtime")
    too_big, not_utf8 = b"a" * 70_000, b'{"type": "\xff"}'
    mark = server.log_mark()

    async def main() -> list[tuple[list[dict[str, Any]], int | None]]:
        return await asyncio.gather(*(_at_once(url, m) for m in [too_big] * 10 + [not_utf8] * 10))

    results = asyncio.run(main())
    assert [code for _, code in results] == [1009] * 10 + [1007] * 10
    for events, _ in results[10:]:
        assert [e["type"] for e in events] == ["session.created", "error"], events
        assert events[1]["error"]["code"] == "invalid_json"
    assert_no_traceback(server.log_since(mark))


def test_alaw_matches_g711() -> None:
    """A-law round trip: every code decodes to a value that encodes back to the same code."""
    codes = np.arange(256, dtype=np.uint8).tobytes()
    pcm16 = encode_audio(alaw_decode(codes), "pcm16")
    assert alaw_encode(pcm16) == codes
    assert alaw_decode(bytes([0xD5]))[0] == pytest.approx(8 / 32768)  # smallest positive step


def test_responses_follow_agent_speech_and_cancel() -> None:
    """Speech opens a response, a silent chunk completes it; cancel ends it and mutes the agent
    until the user starts speaking again (the events of a response's item in between:
    tests/test_realtime_contract.py)."""
    rng = np.random.default_rng(0)
    speech = encode_audio(0.2 * rng.standard_normal(3840).astype(np.float32), "pcm16")
    silence = bytes(7680)
    t = RealtimeTransport()
    t._server = Settings()
    ws = TextSocket()
    session = SimpleNamespace(
        audio=AudioFormat(sample_rate=24000), stats=SimpleNamespace(context_tokens=0)
    )
    opened, closed = "response.created", "response.done"

    async def play(*items: bytes | Outgoing) -> list[str]:
        ws.sent.clear()
        for i, item in enumerate(items):
            out = item if isinstance(item, Outgoing) else Outgoing(audio=_chunk(i, item))
            await t.send(ws, session, out)  # type: ignore[arg-type]
        kinds = [e["type"] for e in ws.sent]
        return [k for k in kinds if k in (opened, closed, "error") or "audio" in k]

    cancel = QueuedEvent(run=t._cancel, event_id="evt_c")

    async def scenario() -> None:
        assert await play(speech, speech, silence) == [
            opened,
            "response.output_audio.delta",
            "response.output_audio.delta",
            "response.output_audio.done",
            closed,
        ]
        assert ws.sent[-1]["response"]["status"] == "completed"
        assert await play(cancel) == ["error"]  # nothing is playing
        assert ws.sent[-1]["error"]["event_id"] == "evt_c"
        assert await play(speech, cancel, speech) == [
            opened,
            "response.output_audio.delta",
            "response.output_audio.done",
            closed,
        ]
        assert ws.sent[-1]["response"]["status"] == "cancelled"
        started = {"type": "input_audio_buffer.speech_started"}
        assert await play(QueuedEvent(run=partial(t._speech_started, started)), speech) == [
            "input_audio_buffer.speech_started",
            opened,
            "response.output_audio.delta",
        ]

    asyncio.run(scenario())


def test_response_create_asks_the_call_for_a_response() -> None:
    """`response.create` prompts the call (its next chunks start with sound) and lets the
    agent be heard again after a `response.cancel`."""
    t = RealtimeTransport()
    asked: list[bool] = []
    outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
    session = SimpleNamespace(request_response=lambda: asked.append(True), outbox=outbox)
    ws = TextSocket()

    async def scenario() -> None:
        await t._dispatch(ws, session, {"type": "response.create"}, None)  # type: ignore[arg-type]
        assert asked == [True]
        item = outbox.get_nowait()
        assert isinstance(item, QueuedEvent)
        t._suppressed = True  # as after a cancel
        await t._send_event(ws, item)  # type: ignore[arg-type]
        assert not t._suppressed and ws.sent == []
        await t._dispatch(ws, None, {"type": "response.create"}, None)  # type: ignore[arg-type]
        assert asked == [True]  # no call yet: nothing to answer

    asyncio.run(scenario())


def _chunk(k: int, payload: bytes) -> AgentChunk:
    return AgentChunk(k, k * 3840, payload, False)


@pytest.mark.parametrize("rate", [24000.0, "24000", True, 44100])
def test_a_pcm_rate_must_be_a_supported_integer(rate: object) -> None:
    """24000.0 would pass a `rate in (...)` check and fail later as an internal error."""
    with pytest.raises(ClientError, match="audio/pcm at"):
        parse_format({"type": "audio/pcm", "rate": rate}, "session.audio.input.format")


async def _configured_call(
    server: ServerProcess,
    voice: tuple[np.ndarray, int],
    first: dict[str, Any],
    later: list[tuple[float, dict[str, Any]]] = [],  # noqa: B006 (never changed)
) -> list[dict[str, Any]]:
    """Send `first`, stream the voice, and each later update once the stream is that many
    seconds in (after it, when past its end); every event back."""
    x, _, _ = _signal(voice, 24000)
    encode = FORMATS["pcm16"][1]
    events: list[dict[str, Any]] = []
    async with _client(server).realtime.connect(model="duplex-test") as conn:

        async def collect() -> None:
            with contextlib.suppress(Exception):
                while True:
                    events.append(json.loads(await conn.recv_bytes()))

        collector = asyncio.create_task(collect())
        await conn.send({"type": "session.update", "session": first})
        done = 0
        for at_s, update in sorted(later, key=lambda u: u[0]) + [(math.inf, {})]:
            end = min(len(x), round(at_s * 24000)) if at_s < math.inf else len(x)
            await _stream(conn, x[done:end], 24000, encode)
            done = end
            if update:
                await conn.send({"type": "session.update", "session": update})
        await asyncio.sleep(2 * TICK_S)
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
    return events


def test_session_settings_reach_the_call(
    checkpoint: Path, voice: tuple[np.ndarray, int], tmp_path: Path
) -> None:
    """Eagerness, noise reduction and turn detection off are honoured: the `start` the adapter
    admits the call with (as `--record-dir` keeps it) carries them, `session.updated` echoes
    them, and VAD events stop with `turn_detection: null`, also when it comes mid-speech (that
    speech ends there) (what a change does to the running call: test_a_change_reaches_the_call)."""
    record = tmp_path / "rec"
    srv = start_server(checkpoint, tmp_path / "log", "--record-dir", str(record))
    eager = {
        "type": "realtime",
        "audio": {
            "input": {
                "turn_detection": {"type": "semantic_vad", "eagerness": "high"},
                "noise_reduction": None,
            }
        },
    }
    quiet = {"turn_detection": None, "input_audio_noise_reduction": {"type": "far_field",
             "strength": 2}, "temperature": 0.9, "input_audio_format": "pcm16"}  # fmt: skip
    off = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    auto = {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}
    _, speech_start, _ = _signal(voice, 24000)
    mid_s = speech_start + 0.8
    try:
        first = asyncio.run(_configured_call(srv, voice, eager, [(mid_s, off), (math.inf, auto)]))
        second = asyncio.run(_configured_call(srv, voice, quiet))
    finally:
        stop_server(srv)
    types = [e["type"] for e in first]
    updated = [e["session"] for e in first if e["type"] == "session.updated"]
    assert len(updated) == 3 and "error" not in types, first
    inp = updated[0]["audio"]["input"]
    assert inp["turn_detection"]["eagerness"] == "high" and inp["noise_reduction"] is None
    assert updated[1]["audio"]["input"]["turn_detection"] is None
    assert updated[2]["audio"]["input"]["turn_detection"]["eagerness"] == "auto"
    speech = [e for e in first if e["type"].startswith("input_audio_buffer.speech_")]
    assert [e["type"] for e in speech] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
    ], speech
    assert abs(speech[1]["audio_end_ms"] - mid_s * 1000) <= SEND_MS, speech  # where it went off
    beta = next(e["session"] for e in second if e["type"] == "session.updated")
    assert beta["turn_detection"] is None and beta["temperature"] == 0.9
    assert beta["input_audio_noise_reduction"] == {"type": "far_field", "strength": 2.0}
    assert not [e for e in second if e["type"].startswith("input_audio_buffer.speech_")]
    assert any(e["type"] == "response.audio.delta" for e in second)  # the agent still talks
    starts = [json.loads((d / "start.json").read_text()) for d in record.iterdir()]
    by_gate = {s["noise_gate_db"]: s for s in starts}
    assert set(by_gate) == {0.0, 20.0}, starts
    assert by_gate[0.0]["sampling"]["eagerness"] == "high"
    assert by_gate[20.0]["sampling"]["temperature"] == 0.9
    assert by_gate[20.0]["sampling"]["eagerness"] is None


def test_a_change_reaches_the_call(checkpoint: Path) -> None:
    """Once the call runs, `session.update` changes it: eagerness, speak-up, noise reduction,
    temperature and the VAD's silence reach the call (the engine takes the sampling at its
    next step: tests/test_ticker.py). A format change is still refused, with the beta path of
    the setting for a beta-shaped update, and leaves the options and the session's shape (GA)
    as they were."""
    runtime = Runtime(Settings(model=checkpoint, max_sessions=1))
    try:
        t = RealtimeTransport()
        t._server, t._runtime, t._admitted = runtime.settings, runtime, True
        session = runtime.open_session(t._options.start(runtime.settings))
        t._vad = EnergyVad(24000, t._options.vad_params())
        seed = session.sampling.seed

        def update(change: dict[str, Any]) -> dict[str, Any]:
            asyncio.run(t._update(None, session, change))  # type: ignore[arg-type]
            item = session.outbox.get_nowait()
            assert isinstance(item, QueuedEvent) and item.event["type"] == "session.updated"
            return item.event["session"]

        def vad(**turn: Any) -> dict[str, Any]:
            return {"type": "realtime", "audio": {"input": {"turn_detection": turn}}}

        update(vad(type="semantic_vad", eagerness="high"))
        p = session.sampling
        assert (p.turn_temperature, p.speak_up_chunks, p.seed) == (0.1, 13, seed)
        assert session.retuned
        update(vad(type="server_vad", idle_timeout_ms=5000, silence_duration_ms=1000))
        p = session.sampling
        assert (p.turn_temperature, p.speak_up_chunks, t._vad.params.stop_frames) == (0.1, 32, 50)
        shown = update({"type": "realtime", "audio": {"input": {"noise_reduction": None}}})
        assert session.user_in.gate.margin_db == 0.0 and "audio" in shown
        before = t._options
        with pytest.raises(ClientError) as info:
            update({"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"})
        assert (info.value.code, info.value.param) == (
            "session_format_locked",
            "session.input_audio_format",
        )
        assert t._options == before and not t._beta and session.outbox.empty()
        update({"temperature": 0.9})  # a key of both shapes: GA stays GA
        assert session.sampling.temperature == 0.9 and not t._beta
        update({"temperature": None})
        assert session.sampling.temperature == runtime.settings.temperature

        # Turn detection off mid-speech ends that speech; turned on mid-speech, that speech's
        # start was not told, so neither is its end; the next speech is told whole.
        sent: list[dict[str, Any]] = []

        def events(*pieces: tuple[float, float]) -> list[str]:
            for seconds, level in pieces:
                n = round(seconds * 24000)
                t._push(session, level * np.sin(np.arange(n) * 0.2).astype(np.float32))
            ws = TextSocket()

            async def drain() -> None:
                while not session.outbox.empty():
                    await t.send(ws, session, session.outbox.get_nowait())  # type: ignore[arg-type]

            asyncio.run(drain())
            # (the user items a speech makes: tests/test_realtime_contract.py)
            sent[:] = [e for e in ws.sent if "speech" in e["type"] or "session" in e["type"]]
            return [e["type"] for e in sent]

        def turn(detect: bool) -> None:
            change = vad(type="server_vad") if detect else {"type": "realtime", "audio": {
                "input": {"turn_detection": None}}}  # fmt: skip
            asyncio.run(t._update(None, session, change))  # type: ignore[arg-type]

        turn(True)
        assert events((0.5, 0.3)) == ["session.updated", "input_audio_buffer.speech_started"]
        turn(False)
        assert events((0.5, 0.3), (1.0, 0.0)) == [
            "input_audio_buffer.speech_stopped",
            "session.updated",
        ]
        assert events((0.5, 0.3)) == []
        turn(True)
        assert events((0.5, 0.3), (1.0, 0.0)) == ["session.updated"]
        assert events((0.5, 0.3), (1.0, 0.0)) == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
        ]
        # `threshold` 0.9 needs speech 12 dB louder: a -29 dBFS tone no longer starts speech;
        # `prefix_padding_ms` moves `audio_start_ms` back by that much.
        update(vad(type="server_vad", threshold=0.9, prefix_padding_ms=300))
        assert events((0.5, 0.05), (1.0, 0.0)) == []
        onset_ms = round(t._samples / 24)
        assert events((0.5, 0.3), (1.0, 0.0))[0] == "input_audio_buffer.speech_started"
        assert sent[0]["audio_start_ms"] == onset_ms - 300, sent
        # ... but never into the speech before: 200 ms after a stop, it starts at that stop
        update(vad(type="server_vad", prefix_padding_ms=300, silence_duration_ms=100))
        events((0.5, 0.3), (0.2, 0.0), (0.5, 0.3), (1.0, 0.0))
        assert [e["type"].rsplit("_", 1)[1] for e in sent] == ["started", "stopped"] * 2, sent
        assert sent[2]["audio_start_ms"] == sent[1]["audio_end_ms"], sent
    finally:
        runtime.ticker.shutdown()


def test_a_ga_update_with_a_beta_key_stays_ga() -> None:
    """`modalities` is a beta key, but an update that says `type: realtime` is GA's."""
    t = RealtimeTransport()
    t._server = Settings()
    ws = TextSocket()
    asyncio.run(t._update(ws, None, {"type": "realtime", "modalities": ["audio"]}))  # type: ignore[arg-type]
    assert not t._beta and "audio" in ws.sent[-1]["session"]
    asyncio.run(t._update(ws, None, {"modalities": ["audio"]}))  # type: ignore[arg-type]
    assert t._beta and "input_audio_format" in ws.sent[-1]["session"]
