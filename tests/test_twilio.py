"""The Twilio Media Streams bridge against the real server: message shapes, timing, inbound
sequence/timestamp handling, barge-in `clear`, refusals, and the load test over Twilio."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from clients.measure import loadtest
from clients.measure.twilio_sim import (
    TwilioCallResult,
    media_message,
    run_twilio_call,
    start_message,
)
from tests.conftest import ServerProcess, assert_no_traceback, read_wav, speak

SID = "MZ" + "1" * 32
SILENCE_20MS = b"\xff" * 160


def _url(server: ServerProcess) -> str:
    return server.url.replace("/v1/duplex", "/v1/telephony/twilio")


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def barge_in_call(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """1 s of silence, then speech: the random model talks all the time, so the caller's
    onset at 1 s is a barge-in. Returns the call and where the speech starts (s)."""
    wav = speak("Hello there, how are you?", tmp_path_factory.mktemp("tw") / "hello.wav")
    speech, rate = read_wav(wav)
    onset_s = 1.0 + int(np.argmax(np.abs(speech) > 0.01)) / rate
    pcm = np.concatenate([np.zeros(rate, np.float32), speech])
    # The timing tests read arrival times in this process, which by now holds torch and
    # models from other tests: a full collector pass here (~0.3 s) would read as a stall.
    gc.collect()
    gc.disable()
    try:
        result: TwilioCallResult = _run(run_twilio_call(_url(server), pcm, rate, stream_sid=SID))
    finally:
        gc.enable()
    return result, len(pcm) / rate, onset_s


def test_outbound_message_shapes(barge_in_call: Any) -> None:
    r, _, _ = barge_in_call
    assert r.close_code == 1000
    assert r.by_event.keys() <= {"media", "mark", "clear"}
    for m in r.messages:
        assert m["streamSid"] == SID
    for m in r.messages:
        if m["event"] == "media":
            assert set(m) == {"event", "streamSid", "media"}
            assert len(base64.b64decode(m["media"]["payload"], validate=True)) == 160
    names = [name for name, _ in r.marks]
    assert names == [f"chunk-{k}" for k in range(len(names))]
    per_tick = np.bincount([m.tick for m in r.media])
    assert set(per_tick[1:-1]) == {8}, per_tick  # 8 x 20 ms per 160 ms tick
    assert r.marks_echoed == names[: len(r.marks_echoed)] and len(r.marks_echoed) >= len(names) - 3


def test_outbound_timing_is_real_time_in_tick_bursts(barge_in_call: Any) -> None:
    r, _, _ = barge_in_call
    # One tick per 8 frames (160 ms) sent; a tick whose step began before `stop` arrived is
    # sent too (the server cannot know the call is over), so one more is allowed.
    ticks = -(-r.frames_sent // 8)
    assert len(r.marks) in (ticks, ticks + 1), (len(r.marks), ticks)
    assert len(r.media) == 8 * len(r.marks)
    spreads = [
        max(m.arrival for m in r.media if m.tick == k)
        - min(m.arrival for m in r.media if m.tick == k)
        for k in range(len(r.marks))
    ]
    assert max(spreads) < 0.02  # each tick's 8 media arrive back to back
    mark_times = [t for _, t in r.marks]
    pace = (mark_times[-1] - mark_times[0]) / (len(mark_times) - 1)
    assert pace == pytest.approx(0.16, abs=0.015)


def test_barge_in_sends_one_clear_per_onset(barge_in_call: Any) -> None:
    r, _, onset_s = barge_in_call
    clears = [t - r.t_start for t in r.clears]
    assert clears, "the caller talked over the agent but no `clear` came"
    assert onset_s < clears[0] < onset_s + 0.3  # 40 ms of VAD, then the sender's next turn
    assert all(b - a > 0.2 for a, b in zip(clears, clears[1:], strict=False))


def test_a_clear_makes_what_twilio_had_not_played_silence(
    barge_in_call: Any, server: ServerProcess
) -> None:
    """Twilio echoes a mark once it played up to it; at a `clear` the audio sent after the
    last echoed mark was never heard: the call's figures count it, made silence in the
    model's context (the marks Twilio echoes for the clear are not taken as played)."""
    r, _, _ = barge_in_call
    assert r.clears and r.media_discarded > 0
    line = re.search(rf"twilio stream {SID}: played up to .*", server.log_text())
    assert line is not None
    figures = {k: int(v) for k, v in re.findall(r"'(un\w+_samples)': (\d+)", line.group(0))}
    # at least what the simulated Twilio dropped from its queue at each clear
    assert figures["unplayed_samples"] >= r.media_discarded * 160, figures
    assert figures["unheard_silenced_samples"] > 0, figures
    assert figures["unheard_beyond_reach_samples"] == 0, figures


Message = dict[str, Any] | str | bytes  # bytes: a text message as they are, UTF-8 or not


async def _session(url: str, *messages: Message) -> tuple[int | None, str]:
    """Send `connected` then `messages` as fast as possible; the close code and reason."""
    async with connect(url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        for m in messages:
            await ws.send(json.dumps(m) if isinstance(m, dict) else m, text=True)
        return await _closed(ws)


async def _closed(ws: ClientConnection) -> tuple[int | None, str]:
    async with asyncio.timeout(5):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            return ws.close_code, ws.close_reason or ""


def test_timestamp_gaps_become_silence(server: ServerProcess) -> None:
    """Lost packets (40 ms, then 1 s: beyond the native 240 ms limit) are silence, not errors;
    sequence numbers may skip; dtmf and marks are accepted; `stop` ends the call with 1000."""
    sid = "MZ" + "2" * 32
    stamps = [0, 20, 40, 100, 120, 1120, 1140]
    msgs: list[dict[str, Any] | str] = [start_message(sid, "CA1")]
    msgs += [media_message(sid, 2 + 2 * i, i + 1, t, SILENCE_20MS) for i, t in enumerate(stamps)]
    msgs.insert(2, {"event": "dtmf", "sequenceNumber": "3", "streamSid": sid, "dtmf": {}})
    msgs.insert(
        4, {"event": "mark", "sequenceNumber": "5", "streamSid": sid, "mark": {"name": "x"}}
    )
    msgs.append({"event": "stop", "sequenceNumber": "99", "streamSid": sid, "stop": {}})
    assert _run(_session(_url(server), *msgs))[0] == 1000
    stats = re.search(rf"twilio stream {sid}: (.*)", server.log_text())
    assert stats is not None and "'samples_in': 9280" in stats.group(1)  # (1140 + 20) ms * 8


def test_parameters_set_the_call(server: ServerProcess) -> None:
    """`<Parameter>`s of the TwiML naming the native protocol's settings reach the call (the
    server log says which); the application's own names (case counts) and empty values are
    left alone."""
    sid = "MZ" + "3" * 32
    custom = {
        "eagerness": "high",
        "noise_gate_db": "0",
        "temperature": "0.7",
        "barge_in_ms": "0",
        "caller": "+1555",
        "top_k": "",
        "Seed": "7",
    }
    msgs: list[dict[str, Any] | str] = [start_message(sid, "CA1", custom_parameters=custom)]
    msgs += [media_message(sid, 2 + i, i + 1, 20 * i, SILENCE_20MS) for i in range(10)]
    msgs.append({"event": "stop", "sequenceNumber": "99", "streamSid": sid, "stop": {}})
    assert _run(_session(_url(server), *msgs))[0] == 1000
    opened = re.search(rf"twilio stream {sid} \(call CA1\) is session \w+ with (.*)",
                       server.log_text())  # fmt: skip
    assert opened is not None, server.log_text()[-2000:]
    assert opened.group(1) == (
        "{'sampling': {'eagerness': 'high', 'temperature': 0.7, 'barge_in_ms': 0.0}, "
        "'noise_gate_db': 0.0}"
    )


def _bad(kind: str) -> list[Message]:
    start = start_message(SID, "CA1")
    media = media_message(SID, 2, 1, 0, SILENCE_20MS)
    if kind == "json":
        return [start, "{not json"]
    if kind == "nested":  # RecursionError in json, unguarded
        return ['{"event": "start", "start": ' + "[" * 5000]
    if kind == "not_utf8":
        return [start, b'{"event": "\xff"}']
    if kind == "timestamp":  # far past a float's range (seconds in the refusal were one)
        return [start, {**media, "media": {**media["media"], "timestamp": "9" * 400}}]
    if kind == "base64_not_ascii":
        return [start, {**media, "media": {**media["media"], "payload": "AAé="}}]
    if kind == "event":
        return [start, {"event": "hangup", "sequenceNumber": "2", "streamSid": SID}]
    if kind == "before_start":
        return [media]
    if kind == "stream_sid":
        return [start, {**media, "streamSid": "MZ" + "9" * 32}]
    if kind == "base64":
        return [start, {**media, "media": {**media["media"], "payload": "!!not base64!!"}}]
    if kind == "format":
        return [start_message(SID, "CA1", encoding="audio/x-l16", sample_rate=16000)]
    if kind == "parameter":
        return [start_message(SID, "CA1", custom_parameters={"eagerness": "eager"})]
    assert kind == "sequence"
    return [start, media, media_message(SID, 2, 2, 20, SILENCE_20MS)]


@pytest.mark.parametrize(
    ("kind", "close_code", "reason"),
    [
        ("json", 1007, "invalid_json"),
        ("nested", 1007, "invalid_json"),
        ("not_utf8", 1007, "invalid_json"),
        ("timestamp", 1007, "sample_order"),
        ("base64_not_ascii", 1007, "bad_frame"),
        ("event", 1003, "unknown_type"),
        ("before_start", 1008, "unexpected_message"),
        ("stream_sid", 1007, "invalid_message"),
        ("base64", 1007, "bad_frame"),
        ("format", 1003, "unsupported_audio"),
        ("parameter", 1007, "invalid_message"),
        ("sequence", 1007, "sample_order"),
    ],
)
def test_bad_input_closes_with_its_code(
    server: ServerProcess, kind: str, close_code: int, reason: str
) -> None:
    mark = server.log_mark()
    assert _run(_session(_url(server), *_bad(kind))) == (close_code, reason)
    health = httpx.get(f"{server.http}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert_no_traceback(server.log_since(mark))


def test_loadtest_over_twilio(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    argv = ["--url", _url(server), "--protocol", "twilio", "--callers", "2", "--duration", "3"]
    assert loadtest.main([*argv, "--quiet", "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["protocol"] == "twilio" and report["config"]["wire_rate"] == 8000
    for c in report["callers"]:
        assert c["status"] == "ok", c
        assert c["frames_sent"] == 150 and c["frames_received"] >= 17  # 20 ms up, 160 ms down
        assert c["latency_ms_p99"] is None and c["recv_gaps"] is not None
    assert report["overall"]["overruns"] is None  # server-side stats do not travel over Twilio
