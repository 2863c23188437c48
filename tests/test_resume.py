"""Session resume: a native call whose connection drops is taken up again with its token.

The shared server (tests/conftest.py) keeps a dropped call 2 s. The call goes on meanwhile:
the caller's side of the gap is silence on the clock, the agent's chunks are kept and sent
again from the chunk the client names.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from clients.client import DuplexClient, DuplexError, ReceivedFrame
from streaming.wire import AudioFormat, ResumeRequest, StatsMessage
from tests.conftest import ServerProcess
from tests.test_e2e_bad_input import metrics

RATE = 16000
CHUNK = 2560  # 160 ms at 16 kHz
AUDIO = AudioFormat(sample_rate=RATE)


def tone(seconds: float) -> np.ndarray:
    return (0.1 * np.sin(np.arange(int(seconds * RATE)) * 0.05)).astype(np.float32)


async def stream(
    c: DuplexClient, pcm: np.ndarray, until: int, got: dict[int, ReceivedFrame]
) -> asyncio.Task[None]:
    """Send `pcm` from the client's `samples_sent` up to sample `until`, on its clock, while
    a reader task keeps the agent's frames by chunk (returned, still reading)."""

    async def read() -> None:
        async for ev in c.events():
            if isinstance(ev, ReceivedFrame) and not ev.is_end_marker:
                got[ev.seq] = ev

    reader = asyncio.create_task(read())
    fs = c.frame_samples
    while c.samples_sent < until:
        due = c.t_ready + c.samples_sent / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        part = pcm[c.samples_sent : c.samples_sent + fs]
        await c.send_frame(part, last=len(part) < fs)
    return reader


async def drop(c: DuplexClient, reader: asyncio.Task[None]) -> None:
    """Lose the connection: a TCP reset, no close frame."""
    c._ws.transport.abort()  # noqa: SLF001 (what a network drop does)
    with contextlib.suppress(ConnectionClosed):
        await c._ws.wait_closed()  # noqa: SLF001
    with contextlib.suppress(DuplexError):
        await reader


def test_a_dropped_call_resumes_with_its_token(server: ServerProcess) -> None:
    """Drop at 1 s, resume 0.4 s later naming the first chunk not received: the same session
    (one `stats`, `resumes` 1), a new token, the agent's chunks of the gap sent again, the
    caller's audio going on from `resume_sample` (silence in the gap), and the output time-
    aligned and exactly as long as the input."""
    pcm = tone(3.0)
    got: dict[int, ReceivedFrame] = {}
    lost = 'duplex_calls_lost_total{outcome="%s"}'
    before = metrics(server)

    async def main() -> tuple[DuplexClient, DuplexClient]:
        async with DuplexClient.connect(server.url, audio=AUDIO) as first:
            reader = await stream(first, pcm, RATE, got)
            await asyncio.sleep(0.1)
            await drop(first, reader)
        await asyncio.sleep(0.4)
        resume = ResumeRequest(token=first.ready.resume_token or "", from_chunk=max(got) + 1)
        async with DuplexClient.connect(server.url, audio=AUDIO, resume=resume) as second:
            reader = await stream(second, pcm, len(pcm), got)
            await second.end(len(pcm))
            await reader
        return first, second

    first, second = asyncio.run(main())
    r1, r2, stats = first.ready, second.ready, second.stats
    assert r1.resume_token and r1.resume_window_s == 2.0 and not r1.resumed
    assert r2.resumed and r2.session_id == r1.session_id
    assert r2.resume_token and r2.resume_token != r1.resume_token
    # the gap (from 1.1 s, for 0.4 s and the reconnection) was filled on the clock: the
    # caller goes on after it (the client's clock starts a few ms after the server's)
    assert r2.resume_sample >= 1.45 * RATE, r2
    assert r2.replay_from is not None and r2.replay_from <= r2.resume_sample // CHUNK
    n = -(-len(pcm) // CHUNK)
    # every chunk once (one more when `end` comes after the next step started, as in any
    # call on a busy machine: tests/test_e2e_call.py)
    assert set(range(n)) <= set(got) <= set(range(n + 1)), sorted(set(range(n)) - set(got))
    # contiguous, each chunk where it was the first time (chunk 0 starts at 0, the next
    # ones a resampler's delay early: tests/test_e2e_call.py)
    assert got[0].first_sample == 0
    assert all(got[k].first_sample == got[k - 1].first_sample + CHUNK for k in range(2, len(got)))
    covered = np.zeros(len(pcm) + 2 * CHUNK, dtype=bool)
    for f in got.values():
        covered[f.first_sample : f.first_sample + len(f.pcm)] = True
    assert covered[: len(pcm)].all()  # `duplex call` writes the input's length of it
    assert isinstance(stats, StatsMessage) and stats.session_id == r1.session_id
    assert stats.resumes == 1 and stats.ticks == len(got) and stats.samples_in == len(pcm)
    after = metrics(server)
    for outcome, by in [("waiting", 1), ("resumed", 1), ("ended", 0)]:
        assert after[lost % outcome] - before[lost % outcome] == by, outcome


def test_a_token_resumes_once_and_only_a_dropped_call(server: ServerProcess) -> None:
    """A token of a call still connected, a used token, a made-up one, and one whose call
    waited past the window are each refused with `resume_failed` (1008) naming why."""

    async def refused(token: str) -> DuplexError:
        with pytest.raises(DuplexError) as info:
            async with DuplexClient.connect(
                server.url, audio=AUDIO, resume=ResumeRequest(token=token)
            ):
                pass
        assert info.value.code == "resume_failed" and info.value.close_code == 1008
        return info.value

    async def main() -> list[str]:
        why = []
        got: dict[int, ReceivedFrame] = {}
        async with DuplexClient.connect(server.url, audio=AUDIO) as c:
            reader = await stream(c, tone(1.0), RATE // 2, got)
            why.append((await refused(c.ready.resume_token or "")).message)  # still connected
            await drop(c, reader)
        await asyncio.sleep(0.2)
        async with DuplexClient.connect(
            server.url, audio=AUDIO, resume=ResumeRequest(token=c.ready.resume_token or "")
        ) as again:
            token = again.ready.resume_token or ""
            reader = await stream(again, tone(2.0), again.samples_sent + RATE // 4, got)
            await drop(again, reader)
        why.append((await refused(c.ready.resume_token or "")).message)  # used
        why.append((await refused("x" * 32)).message)
        await asyncio.sleep(2.6)  # past the 2 s window: the call ended, its slot is free
        why.append((await refused(token)).message)
        return why

    why = asyncio.run(main())
    assert "still connected" in why[0]
    assert "unknown resume token" in why[1] and "unknown resume token" in why[2]
    assert "unknown resume token" in why[3] or "within 2 s" in why[3], why[3]


def test_a_dropped_realtime_session_resumes(server: ServerProcess) -> None:
    """The Realtime endpoint: `session.created` carries a resume token (an extension field);
    after a drop, `?resume_token=` takes the session up as it was (the same session id, a new
    token, audio appended where the clock is), and the used token is refused."""
    url = server.url.replace("/v1/duplex", "/v1/realtime")
    rate, piece = 24000, 2400  # the Realtime default: pcm16 at 24 kHz, appended 100 ms at a time
    audio = (0.1 * np.sin(np.arange(piece) * 0.05) * 32767).astype("<i2").tobytes()
    append = json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}
    )

    async def talk(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    events.append(json.loads(message))

        reader = asyncio.create_task(read())
        t0 = time.monotonic()
        for n in range(round(seconds * rate / piece)):
            await asyncio.sleep(max(0.0, t0 + n * piece / rate - time.monotonic()))
            await ws.send(append)
        await asyncio.sleep(0.3)
        reader.cancel()
        return events

    async def main() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], Any]:
        async with connect(url, compression=None, proxy=None) as ws:
            created = json.loads(await ws.recv())
            await talk(ws, 1.0)
            ws.transport.abort()
        await asyncio.sleep(0.3)
        async with connect(f"{url}?resume_token={created['resume_token']}", proxy=None) as ws:
            again = json.loads(await ws.recv())
            events = await talk(ws, 1.0)
        async with connect(f"{url}?resume_token={created['resume_token']}", proxy=None) as ws:
            refused = json.loads(await ws.recv())
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()
            return created, again, events, (refused, ws.close_code)

    before = metrics(server)
    created, again, events, (refused, code) = asyncio.run(main())
    assert created["type"] == again["type"] == "session.created"
    assert created["resume_token"] and not created["resumed"] and again["resumed"]
    assert again["session"]["id"] == created["session"]["id"]
    assert again["resume_token"] not in (None, created["resume_token"])
    assert not [e for e in events if e["type"] == "error"], events
    assert refused["type"] == "error" and refused["error"]["code"] == "resume_failed"
    assert code == 1008
    lost = 'duplex_calls_lost_total{outcome="resumed"}'
    assert metrics(server)[lost] - before[lost] == 1
