"""Bad clients against a real `duplex serve`: each gets the exact error code and close code.

Raw `websockets` connections control every byte. Every test ends with a cheap /healthz check;
the last test checks that a normal call still completes after all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clients.call import run_call
from server.adapters.connection import CLOSE_TIMEOUT_S
from server.uvicorn_server import UNFLUSHED_ABORT_S
from streaming.wire import FRAME_HEADER, AudioFrame
from tests.conftest import ServerProcess, assert_no_traceback, start_server, stop_server

RATE = 16000
FRAME = 320  # samples per 20 ms client frame at 16 kHz
FRAME_BYTES = 2 * FRAME
TICK_S = 0.16


def start_msg(**audio: Any) -> str:
    fmt = {"encoding": "pcm16", "sample_rate": RATE, "frame_ms": 20, **audio}
    return json.dumps({"type": "start", "audio": fmt})


def frame(seq: int, first: int, n_bytes: int = FRAME_BYTES, last: bool = False) -> bytes:
    return AudioFrame(seq, first, bytes(n_bytes), last).pack()


class TextBytes(bytes):
    """Bytes sent as a text message as they are, UTF-8 or not."""


# What a fuzzing client found ending the call with 1011 and a traceback (issue 24).
NOT_UTF8 = TextBytes(b'{"type": "start", "x": "\xff"}')
NESTED = '{"type": "start", "sampling": ' + "[" * 5000  # past Python's recursion limit
HUGE_INTEGER = '{"type": "end", "total_samples": ' + "9" * 5000 + "}"  # past int("...")'s limit


def nested(depth: int) -> str:
    """A `start` whose `sampling` is JSON that nests `depth` deep in all."""
    return '{"type": "start", "sampling": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


async def send(ws: ClientConnection, message: str | bytes) -> None:
    await ws.send(message, text=True if isinstance(message, TextBytes) else None)


def healthz(srv: ServerProcess) -> dict[str, Any]:
    r = httpx.get(f"{srv.http}/healthz", timeout=5)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "ok"
    return body


def metrics(srv: ServerProcess) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{srv.http}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_sessions(srv: ServerProcess, n: int, within_s: float) -> float:
    """Poll /healthz until `sessions` == n; return how long it took."""
    t0 = time.monotonic()
    while True:
        got = healthz(srv)["sessions"]
        if got == n:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < within_s, f"{got} sessions after {within_s} s, expected {n}"
        time.sleep(0.02)


async def open_ws(srv: ServerProcess, **kwargs: Any) -> ClientConnection:
    return await connect(srv.url, compression=None, proxy=None, open_timeout=5, **kwargs)


async def until_ready(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            msg = await ws.recv()
            if isinstance(msg, str):
                ready: dict[str, Any] = json.loads(msg)
                assert ready["type"] == "ready", ready
                return ready


async def expect_error(
    ws: ClientConnection, code: str | set[str], close: int, within_s: float = 5.0
) -> dict[str, Any]:
    """Read (skipping `ready` and agent audio) until the `error`; then the close must follow."""
    async with asyncio.timeout(within_s):
        while True:
            try:
                msg = await ws.recv()
            except ConnectionClosed as exc:
                raise AssertionError(f"closed without an error message: {exc}") from exc
            if isinstance(msg, bytes):
                continue
            err: dict[str, Any] = json.loads(msg)
            if err["type"] == "ready":
                continue
            assert err["type"] == "error", err
            break
    assert err["code"] in ({code} if isinstance(code, str) else code), err
    assert err["message"]
    async with asyncio.timeout(3):
        await ws.wait_closed()
    assert ws.close_code == close, (ws.close_code, ws.close_reason)
    return err


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def _still_healthy(server: ServerProcess) -> Iterator[None]:
    mark = server.log_mark()
    yield
    healthz(server)
    assert_no_traceback(server.log_since(mark))


# -- before `start` -----------------------------------------------------------------------------

BEFORE_START: list[tuple[str, str | bytes, str, int]] = [
    ("malformed_json", '{"type": "start", ', "invalid_json", 1007),
    ("garbage_text", "\u00ff\u00fe", "invalid_json", 1007),
    ("not_utf8", NOT_UTF8, "invalid_json", 1007),
    ("nested_5000_deep", NESTED, "invalid_json", 1007),
    ("nested_65_deep", nested(65), "invalid_json", 1007),
    ("nested_64_deep", nested(64), "invalid_message", 1007),  # JSON; not a `sampling` object
    ("integer_of_5000_digits", HUGE_INTEGER, "invalid_json", 1007),
    ("json_array", '[{"type": "start"}]', "invalid_message", 1007),
    ("json_null", "null", "invalid_message", 1007),
    ("missing_type", '{"audio": {"sample_rate": 16000}}', "invalid_message", 1007),
    ("unknown_type", '{"type": "hello"}', "unknown_type", 1003),
    ("end_before_start", '{"type": "end", "total_samples": 0}', "unexpected_message", 1008),
    ("respond_before_start", '{"type": "respond"}', "unexpected_message", 1008),
    ("update_before_start", '{"type": "update"}', "unexpected_message", 1008),
    ("audio_before_start", frame(0, 0), "unexpected_message", 1008),
    ("encoding_aac", start_msg(encoding="aac"), "invalid_message", 1007),
    ("opus_8000", start_msg(encoding="opus", sample_rate=8000), "unsupported_audio", 1003),
    ("extra_field", '{"type": "start", "codec": "x"}', "invalid_message", 1007),
    ("rate_not_int", start_msg(sample_rate="fast"), "invalid_message", 1007),
    ("pcm16_44100", start_msg(sample_rate=44100), "unsupported_audio", 1003),
    ("mulaw_16000", start_msg(encoding="mulaw", sample_rate=16000), "unsupported_audio", 1003),
    ("frame_ms_7", start_msg(frame_ms=7), "unsupported_audio", 1003),
    ("frame_ms_30", start_msg(frame_ms=30), "unsupported_audio", 1003),
    ("frame_ms_320", start_msg(frame_ms=320), "unsupported_audio", 1003),
    ("version_2", json.dumps({"type": "start", "version": 2}), "unsupported_version", 1003),
    ("version_string", json.dumps({"type": "start", "version": "1"}), "invalid_message", 1007),
    ("rate_as_string", start_msg(sample_rate="16000"), "invalid_message", 1007),
    (
        "speak_up_negative",
        json.dumps({"type": "start", "sampling": {"speak_up_ms": -1}}),
        "invalid_message",
        1007,
    ),
    (
        "barge_in_too_long",
        json.dumps({"type": "start", "sampling": {"barge_in_ms": 2001}}),
        "invalid_message",
        1007,
    ),
    ("noise_gate_41", json.dumps({"type": "start", "noise_gate_db": 41}), "invalid_message", 1007),
    (
        "eagerness_auto",  # OpenAI's word; the native protocol says medium
        json.dumps({"type": "start", "sampling": {"eagerness": "auto"}}),
        "invalid_message",
        1007,
    ),
]


@pytest.mark.parametrize(
    ("first", "code", "close"),
    [case[1:] for case in BEFORE_START],
    ids=[case[0] for case in BEFORE_START],
)
def test_bad_first_message(
    server: ServerProcess, first: str | bytes, code: str, close: int
) -> None:
    async def main() -> None:
        async with await open_ws(server) as ws:
            await send(ws, first)
            await expect_error(ws, code, close)

    run(main())


# -- after `ready` ------------------------------------------------------------------------------

AFTER_READY: list[tuple[str, list[str | bytes], str, int]] = [
    ("start_twice", [start_msg()], "unexpected_message", 1008),
    ("invalid_json", ["{oops"], "invalid_json", 1007),
    ("unknown_type", ['{"type": "pause"}'], "unknown_type", 1003),
    ("bad_frame_size", [frame(0, 0, 100)], "bad_frame_size", 1007),
    ("frame_too_long", [frame(0, 0, FRAME_BYTES + 2)], "bad_frame_size", 1007),
    ("empty_last_frame", [frame(0, 0, 0, last=True)], "bad_frame_size", 1007),
    ("shorter_than_header", [b"\x01\x01\x00"], "bad_frame", 1007),
    ("empty_binary", [b""], "bad_frame", 1007),
    ("header_version_2", [FRAME_HEADER.pack(2, 1, 0, 0, 0, 0) + bytes(FRAME_BYTES)], "bad_frame",
     1007),
    ("header_kind_9", [FRAME_HEADER.pack(1, 9, 0, 0, 0, 0) + bytes(FRAME_BYTES)], "bad_frame",
     1007),
    ("not_utf8", [frame(0, 0), NOT_UTF8], "invalid_json", 1007),
    ("nested_5000_deep", [NESTED.replace("start", "update")], "invalid_json", 1007),
    ("sequence_repeated", [frame(0, 0), frame(0, FRAME)], "sample_order", 1007),
    ("sequence_decreasing", [frame(5, 0), frame(4, FRAME)], "sample_order", 1007),
    ("samples_overlap", [frame(0, 0), frame(1, FRAME - 100)], "sample_order", 1007),
    ("end_below_sent", [frame(0, 0), frame(1, FRAME), '{"type": "end", "total_samples": 100}'],
     "invalid_message", 1007),
    ("end_negative", ['{"type": "end", "total_samples": -1}'], "invalid_message", 1007),
    ("end_twice", ['{"type": "end", "total_samples": 0}', '{"type": "end", "total_samples": 0}'],
     "unexpected_message", 1008),
    ("audio_after_end", [frame(0, 0), '{"type": "end", "total_samples": 320}', frame(1, FRAME)],
     "unexpected_message", 1008),
    ("audio_after_last_frame", [frame(0, 0, last=True), frame(1, FRAME)], "unexpected_message",
     1008),
    ("respond_with_a_field", ['{"type": "respond", "now": true}'], "invalid_message", 1007),
    ("update_temperature_negative", ['{"type": "update", "sampling": {"temperature": -1}}'],
     "invalid_message", 1007),
    ("update_gate_too_high", ['{"type": "update", "noise_gate_db": 41}'], "invalid_message", 1007),
    ("update_audio", ['{"type": "update", "audio": {"encoding": "mulaw"}}'], "invalid_message",
     1007),
    ("played_beyond_sent", ['{"type": "played", "sample": 1000000}'], "invalid_message", 1007),
    ("played_going_back", ['{"type": "played", "sample": 100}', '{"type": "played", "sample": 99}'],
     "invalid_message", 1007),
    ("played_negative", ['{"type": "played", "sample": -1}'], "invalid_message", 1007),
    ("played_flushed_not_bool", ['{"type": "played", "sample": 0, "flushed": 1}'],
     "invalid_message", 1007),
]  # fmt: skip


@pytest.mark.parametrize(
    ("messages", "code", "close"),
    [case[1:] for case in AFTER_READY],
    ids=[case[0] for case in AFTER_READY],
)
def test_bad_message_during_call(
    server: ServerProcess, messages: list[str | bytes], code: str, close: int
) -> None:
    async def main() -> None:
        async with await open_ws(server) as ws:
            await ws.send(start_msg())
            await until_ready(ws)
            for m in messages:
                await send(ws, m)
            await expect_error(ws, code, close)

    run(main())
    wait_sessions(server, 0, within_s=1.0)


@pytest.mark.parametrize(
    ("flags", "reserved", "says"),
    [(0x02, 0, "frame flags 0x02"), (0x81, 0, "frame flags 0x81"), (0x01, 7, "byte 3 is 7")],
)
def test_reserved_header_fields_must_be_zero(
    server: ServerProcess, flags: int, reserved: int, says: str
) -> None:
    """docs/protocol.md: flag bits but bit 0, and the reserved byte, are 0."""

    async def main() -> dict[str, Any]:
        async with await open_ws(server) as ws:
            await ws.send(start_msg())
            await until_ready(ws)
            await ws.send(FRAME_HEADER.pack(1, 1, flags, reserved, 0, 0) + bytes(FRAME_BYTES))
            return await expect_error(ws, "bad_frame", 1007)

    assert says in run(main())["message"]
    wait_sessions(server, 0, within_s=1.0)


def test_unknown_websocket_path_is_404_naming_the_endpoints(server: ServerProcess) -> None:
    async def main() -> InvalidStatus:
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.url.replace("/v1/duplex", "/v1/duplx"), open_timeout=5)
        return refused.value

    response = run(main()).response
    assert response.status_code == 404
    body = json.loads(response.body)
    assert body["error"] == "no WebSocket endpoint /v1/duplx"
    assert "/v1/duplex" in body["endpoints"] and "/v1/realtime" in body["endpoints"]


@pytest.mark.parametrize("path", ["/v1/duplex", "/v1/realtime", "/v1/telephony/twilio"])
def test_plain_http_to_a_call_endpoint_is_426_naming_the_ws_url(
    server: ServerProcess, path: str
) -> None:
    response = httpx.get(f"{server.http}{path}?x=1", timeout=5)
    assert response.status_code == 426 and response.headers["upgrade"] == "websocket"
    ws_url = f"{server.http.replace('http://', 'ws://')}{path}?x=1"
    assert response.json()["error"] == f"{path} is a WebSocket endpoint: connect to {ws_url}"
    assert httpx.head(f"{server.http}{path}", timeout=5).status_code == 426


def test_odd_length_last_frame(server: ServerProcess) -> None:
    async def main() -> None:
        async with await open_ws(server) as ws:
            await ws.send(start_msg())
            await until_ready(ws)
            await ws.send(frame(0, 0, 101, last=True))
            await expect_error(ws, "bad_frame_size", 1007)

    run(main())


def test_frame_far_ahead_of_the_timeline_is_refused(server: ServerProcess) -> None:
    """A gap (frames the client dropped) far beyond the latency budget is not a real call."""

    async def main() -> None:
        async with await open_ws(server) as ws:
            await ws.send(start_msg())
            await until_ready(ws)
            await ws.send(frame(0, 60 * RATE))  # one frame, 60 s ahead of sample 0
            await expect_error(ws, {"sample_order", "bad_frame"}, 1007, within_s=1.5)

    run(main())
    wait_sessions(server, 0, within_s=2.0)


def test_end_far_beyond_the_samples_sent_is_refused(server: ServerProcess) -> None:
    async def main() -> None:
        async with await open_ws(server) as ws:
            await ws.send(start_msg())
            await until_ready(ws)
            await ws.send(frame(0, 0))
            await ws.send(json.dumps({"type": "end", "total_samples": 60 * RATE}))
            await expect_error(ws, "invalid_message", 1007, within_s=1.5)

    run(main())
    wait_sessions(server, 0, within_s=2.0)


def test_oversized_message_closes_1009(server: ServerProcess) -> None:
    """uvicorn enforces --max-message-bytes (64 KiB) before the app sees the message."""

    async def main() -> None:
        async with await open_ws(server) as ws:
            await ws.send(start_msg())
            await until_ready(ws)
            await ws.send(frame(0, 0, 70_000))
            async with asyncio.timeout(5):
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        msg = await ws.recv()
                        if isinstance(msg, str):
                            assert json.loads(msg)["type"] != "stats"
            assert ws.close_code == 1009

    run(main())
    wait_sessions(server, 0, within_s=1.0)


def test_errors_are_counted(server: ServerProcess) -> None:
    before = metrics(server)

    async def main() -> None:
        async with await open_ws(server) as ws:
            await ws.send("{")
            await expect_error(ws, "invalid_json", 1007)

    run(main())
    key = 'duplex_errors_total{code="invalid_json"}'
    assert metrics(server)[key] == before.get(key, 0.0) + 1


# -- clients that go away or fall silent ----------------------------------------------------------


@pytest.mark.parametrize("how", ["close_frame", "lost"])
def test_a_disconnect_frees_the_slot(server: ServerProcess, how: str) -> None:
    """A client that hangs up (a close frame, no `end`) frees its slot at once; a connection
    lost (a TCP reset, no close frame) keeps the call and its slot for the resume window
    (2 s on this server: tests/test_resume.py), then frees it."""

    async def main() -> None:
        ws = await open_ws(server)
        await ws.send(start_msg())
        await until_ready(ws)
        for n in range(10):
            await ws.send(frame(n, n * FRAME))
        assert healthz(server)["sessions"] == 1
        if how == "lost":
            ws.transport.abort()  # no close frame, TCP reset
        else:
            await ws.close()
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    run(main())
    took = wait_sessions(server, 0, within_s=4.0)
    if how == "lost":
        assert 2.0 <= took < 2.0 + 2 * TICK_S + 0.3, f"slot freed after {took:.2f} s"
    else:
        assert took < 2 * TICK_S + 0.3, f"slot freed only after {took:.2f} s"


@pytest.fixture(scope="module")
def strict_server(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Short timeouts and a small send queue."""
    log = tmp_path_factory.mktemp("strict") / "server.log"
    srv = start_server(
        checkpoint, log, "--start-timeout-s", "1", "--idle-timeout-s", "1", "--send-queue-s", "0.5"
    )
    yield srv
    stop_server(srv)


def test_no_start_within_timeout(strict_server: ServerProcess) -> None:
    async def main() -> float:
        async with await open_ws(strict_server) as ws:
            t0 = time.monotonic()
            await expect_error(ws, "start_timeout", 1008)
            return time.monotonic() - t0

    took = run(main())
    assert 0.9 <= took <= 2.5
    healthz(strict_server)


def test_idle_client_after_start(strict_server: ServerProcess) -> None:
    async def main() -> float:
        async with await open_ws(strict_server) as ws:
            await ws.send(start_msg())
            await until_ready(ws)
            t0 = time.monotonic()
            await ws.send(frame(0, 0))
            await expect_error(ws, "idle_timeout", 1008)  # agent audio keeps coming meanwhile
            return time.monotonic() - t0

    took = run(main())
    assert 0.9 <= took <= 1.0 + 3 * TICK_S + 0.5
    wait_sessions(strict_server, 0, within_s=1.0)


def test_slow_consumer_is_cut_off_and_others_are_unaffected(strict_server: ServerProcess) -> None:
    """A client that sends but never reads: its call ends (slow_consumer), a normal one goes
    on, and the connection is dropped soon after (uvicorn alone would wait for ever to flush
    what the client does not read, holding the socket)."""
    srv = strict_server
    before = metrics(srv).get('duplex_errors_total{code="slow_consumer"}', 0.0)

    async def stalled_client(stop: asyncio.Event) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        sock.connect(("127.0.0.1", int(srv.http.rsplit(":", 1)[1])))
        sock.setblocking(False)
        ws = await open_ws(srv, sock=sock, max_queue=1)
        try:
            await ws.send(start_msg(sample_rate=48000))  # 15 KB of agent audio per tick
            t0 = time.monotonic()
            n = 0
            with contextlib.suppress(ConnectionClosed):
                while not stop.is_set():  # keep sending (not idle), never read again
                    await ws.send(frame(n, n * 960, 1920))
                    n += 1
                    await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))
        finally:
            ws.transport.abort()

    async def main() -> None:
        stop = asyncio.Event()
        stalled = asyncio.create_task(stalled_client(stop))
        pcm = (0.1 * np.sin(np.arange(int(1.5 * RATE)) * 0.03)).astype(np.float32)
        try:
            result = await asyncio.wait_for(run_call(srv.url, pcm, RATE), 10)
            assert len(result.output) == len(pcm)
            assert result.frames_received == result.stats.ticks
            async with httpx.AsyncClient() as http:
                # send queue 0.5 s: a correct server cuts the call within a few seconds
                async with asyncio.timeout(10):
                    while True:
                        text = (await http.get(f"{srv.http}/metrics")).text
                        if f'duplex_errors_total{{code="slow_consumer"}} {before + 1}' in text:
                            break
                        await asyncio.sleep(0.1)
            # the server drops the connection (the stalled client's sends then fail)
            await asyncio.wait_for(asyncio.shield(stalled), CLOSE_TIMEOUT_S + UNFLUSHED_ABORT_S + 3)
        finally:
            stop.set()
            await stalled

    run(main())
    healthz(srv)
    wait_sessions(srv, 0, within_s=3.0)


# -- after all of the above ------------------------------------------------------------------------


def test_zz_normal_call_still_completes(server: ServerProcess) -> None:
    pcm = (0.1 * np.sin(np.arange(RATE) * 0.05)).astype(np.float32)
    result = run(asyncio.wait_for(run_call(server.url, pcm, RATE), 8))
    assert len(result.output) == len(pcm)
    assert result.stats.frames_in == result.frames_sent
    assert result.frames_received == result.stats.ticks
    assert float(np.abs(result.output).max()) > 1e-3
    wait_sessions(server, 0, within_s=1.0)
