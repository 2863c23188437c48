"""Clock drift against the real server (decisions.md §2): a client whose audio clock runs
slow (its audio falls ever later) or fast (ever earlier) is re-anchored once its audio stays
beyond the latency buffer's reach, so the call goes on hearing the caller; one on time is not.
A clock off by more than re-anchoring can follow is refused. Audio sent ahead of the clock buys
no time after `end`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable

import httpx
import numpy as np
import pytest

from clients.client import DuplexClient, DuplexError
from streaming.wire import StatsMessage
from tests.conftest import ServerProcess

RATE = 16000
RE_ANCHORS = "duplex_re_anchors_total"


async def call_stats(url: str, send: Callable[[DuplexClient], Awaitable[None]]) -> StatsMessage:
    """One call whose audio `send` streams (`end` follows it); its `stats`."""
    async with DuplexClient.connect(url) as client:
        stats: list[StatsMessage] = []

        async def read() -> None:
            async for event in client.events():
                if isinstance(event, StatsMessage):
                    stats.append(event)

        reader = asyncio.create_task(read())
        await send(client)
        await client.end()
        await asyncio.wait_for(reader, 30)
        return stats[0]


def tone(seconds: float) -> np.ndarray:
    return (0.2 * np.sin(np.arange(int(seconds * RATE)) * 2 * np.pi * 200 / RATE)).astype(
        np.float32
    )


async def paced_send(client: DuplexClient, seconds: float, speed: float) -> None:
    """Send `seconds` of a tone at `speed` x real time (a client clock off by that much)."""
    n = client.frame_samples
    pcm = tone(seconds)
    t0 = time.monotonic()
    for i in range(len(pcm) // n):
        await asyncio.sleep(max(0.0, t0 + i * n / RATE / speed - time.monotonic()))
        await client.send_frame(pcm[i * n : (i + 1) * n])


async def paced_call(url: str, seconds: float, speed: float) -> StatsMessage:
    """A call of `seconds` of a tone sent at `speed` x real time; its `stats`."""
    return await call_stats(url, lambda client: paced_send(client, seconds, speed))


def counts(server: ServerProcess, metric: str) -> dict[str, float]:
    """The server's counter `metric`, by its one label's value."""
    out = {}
    for line in httpx.get(f"{server.http}/metrics", timeout=5).text.splitlines():
        if line.startswith(f"{metric}{{"):
            name, value = line.rsplit(" ", 1)
            out[name.split('"')[1]] = float(value)
    return out


@pytest.mark.parametrize(("speed", "direction"), [(0.7, "late"), (1.5, "early")])
def test_a_client_clock_off_by_far_is_re_anchored(
    server: ServerProcess, speed: float, direction: str
) -> None:
    """At 0.7x the audio trails by 0.48 s (3 ticks: beyond the buffer's reach) after 1.6 s;
    2 s later the server inserts silence. At 1.5x it leads by as much after 1 s, and the
    server drops that much of what comes next."""
    before = counts(server, RE_ANCHORS)
    wall_s = 5.0
    stats = asyncio.run(paced_call(server.url, wall_s * speed, speed))
    assert stats.re_anchors >= 1
    reach_s = 3 * 0.16
    if direction == "late":
        assert stats.re_anchored_samples >= reach_s * RATE  # silence inserted
    else:
        assert stats.re_anchored_samples <= -reach_s * RATE  # audio dropped
    after = counts(server, RE_ANCHORS)
    assert after[direction] - before[direction] == stats.re_anchors


@pytest.mark.parametrize(("speed", "word"), [(0.7, "slow"), (1.3, "fast")])
def test_a_client_clock_off_by_30_percent_is_refused(
    server: ServerProcess, speed: float, word: str
) -> None:
    """Issue 24: 2 s re-anchors cannot follow a clock 30 % off (a broken or hostile client: a
    phone line or browser drifts by well under 0.1 %); at 0.7x the call went on, keeping 6 %
    of its audio (as the issue found). The server ends it with `clock_drift` (1008) once the
    drift has held for about 8 s (server/pacing/anchor.py, DriftMeter), saying by how much and
    which way, and counts it in `duplex_errors_total`."""
    before = counts(server, "duplex_errors_total").get("clock_drift", 0)
    t0 = time.monotonic()

    async def main() -> None:
        async with DuplexClient.connect(server.url) as client:

            async def send() -> None:
                await paced_send(client, 20.0 * speed, speed)
                await client.end()  # before the fix: the call ends normally

            sender = asyncio.create_task(send())
            try:
                async for _ in client.events():
                    pass
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, DuplexError):
                    await sender

    with pytest.raises(DuplexError) as info:
        asyncio.run(main())
    took = time.monotonic() - t0
    assert (info.value.code, info.value.close_code) == ("clock_drift", 1008), info.value
    found = re.search(r"runs (\d+(?:\.\d+)?) % (slow|fast)", info.value.message)
    assert found is not None, info.value.message
    assert abs(float(found[1]) - 30) < 3 and found[2] == word, info.value.message
    assert took < 13, took  # 4 windows of 12 ticks after the first: ~9.6 s
    assert counts(server, "duplex_errors_total")["clock_drift"] - before == 1


def test_a_client_on_time_is_never_re_anchored(server: ServerProcess) -> None:
    stats = asyncio.run(paced_call(server.url, 3.0, 1.0))
    assert stats.re_anchors == 0 and stats.re_anchored_samples == 0


def test_a_stalled_client_is_logged_once_a_stall(server: ServerProcess) -> None:
    """A client that stops sending without hanging up is re-anchored every ~2.4 s until it
    sends on time again: one info line when the stall starts, one when it is over (its audio
    within reach for REANCHOR_TICKS ticks)."""
    before = server.log_text()

    async def stall(client: DuplexClient) -> None:
        n = client.frame_samples
        frame = np.zeros(n, np.float32)
        for _ in range(round(0.3 * RATE / n)):
            await client.send_frame(frame)
            await asyncio.sleep(n / RATE)
        await asyncio.sleep(2.6)
        await client.send_frame(frame)  # within the idle timeout: the call stays open
        await asyncio.sleep(2.6)
        t0 = time.monotonic()
        for i in range(round(5.0 * RATE / n)):  # on time again
            await asyncio.sleep(max(0.0, t0 + i * n / RATE - time.monotonic()))
            await client.send_frame(frame)

    stats = asyncio.run(call_stats(server.url, stall))
    assert stats.re_anchors >= 2
    new = server.log_text()[len(before) :]
    assert new.count("re-anchored: its audio was") == 1, new
    assert new.count(f"back on the clock after {stats.re_anchors} re-anchors") == 1, new


def test_a_burst_then_a_pause_is_not_cut(server: ServerProcess) -> None:
    """3 s of audio at once, nothing until the clock has caught up, then real time: the early
    re-anchor's drop of 'future' audio is revoked once the call trails the clock again, so no
    silence is inserted and none of the caller's later speech is dropped."""

    async def burst(client: DuplexClient) -> None:
        n = client.frame_samples
        pcm = tone(6.0)
        t0 = time.monotonic()
        for i in range(len(pcm) // n):
            if i * n >= 3 * RATE:  # after the burst, each frame when it is due
                await asyncio.sleep(max(0.0, t0 + i * n / RATE - time.monotonic()))
            await client.send_frame(pcm[i * n : (i + 1) * n])

    stats = asyncio.run(call_stats(server.url, burst))
    assert stats.re_anchors == 1  # early, once: no silence inserted after it
    assert abs(stats.re_anchored_samples) <= 0.1 * RATE  # the drop was revoked, not made


def test_audio_sent_ahead_buys_no_time_after_end(server: ServerProcess) -> None:
    """Issue 24 (a): 8 s of audio at 50x real time, 2.2 s more at real time (by then the early
    re-anchor has planned its drop of audio still to come), then `end`. The call ends within
    about the buffer's reach (480 ms) of the clock, not when the 7 s still owed would have
    played out; what was beyond that reach is dropped and counted as an early re-anchor."""
    before = counts(server, RE_ANCHORS)

    async def main() -> tuple[StatsMessage, float]:
        async with DuplexClient.connect(server.url) as client:
            got: list[tuple[StatsMessage, float]] = []

            async def read() -> None:
                async for event in client.events():
                    if isinstance(event, StatsMessage):
                        got.append((event, time.monotonic()))

            reader = asyncio.create_task(read())
            n = client.frame_samples
            pcm = tone(10.2)
            t0 = time.monotonic()
            for i in range(len(pcm) // n):
                due = i * n / RATE / 50 if i * n < 8 * RATE else i * n / RATE - 7.84
                await asyncio.sleep(max(0.0, t0 + due - time.monotonic()))
                await client.send_frame(pcm[i * n : (i + 1) * n])
            await client.end()
            t_end = time.monotonic()
            await asyncio.wait_for(reader, 30)
            stats, t_stats = got[0]
            return stats, t_stats - t_end

    stats, after_end = asyncio.run(main())
    assert after_end < 1.5, after_end  # before: ~7 s more of agent frames
    assert stats.re_anchors == 2, stats  # the early re-anchor, and the audio `end` left owed
    assert stats.re_anchored_samples <= -6.5 * RATE, stats
    after = counts(server, RE_ANCHORS)
    assert after["early"] - before["early"] == stats.re_anchors
