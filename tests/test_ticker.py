"""The tick loop's plan, driven by hand: what a tick does with a call in an order the live
server reaches only under an overrun, and which steps a response asked for prompts."""

from __future__ import annotations

from pathlib import Path

from server.protocol import StartMessage
from server.runtime import Runtime
from server.session import RESPONSE_CHUNKS, State
from server.settings import Settings


def test_an_end_after_the_last_chunk_waits_for_the_opening(checkpoint: Path) -> None:
    """Chunk 0 was made, but the task that sends `ready` and chunk 0 at the tick boundary has
    not run yet (the step overran) when `end` comes: the next plan must not end the call, or
    the client gets `stats` and a close without ever getting `ready`. Once the opening is out,
    it ends with the end marker, numbered by the chunks made."""
    runtime = Runtime(Settings(model=checkpoint, max_sessions=1))
    try:
        ticker = runtime.ticker
        s = runtime.open_session(StartMessage(type="start"))
        assert ticker._plan(0, False).sessions == [s]  # joins; chunk 0 is made in this tick
        s.stats.ticks = 1  # as `_deliver` counts it, before `_open` has sent anything
        s.on_end(0)  # `end` with no audio at all: chunk 0 is the last
        assert s.last_chunk == 0
        plan = ticker._plan(1, False)
        assert plan.sessions == [] and s.state is State.ENDING and s.outbox.empty()
        s.opened = True  # what `_open` sets once `ready` is queued
        ticker._plan(2, False)
        assert s.state is State.CLOSED
        marker = s.outbox.get_nowait()
        assert marker.end_marker and marker.audio is not None and marker.audio.chunk == 1
        assert marker.audio.last
    finally:
        runtime.ticker.shutdown()


def test_a_response_asked_for_prompts_the_next_chunks(checkpoint: Path) -> None:
    """`request_response` (a Realtime `response.create`) marks the call's next
    RESPONSE_CHUNKS steps as prompted, and no more."""
    runtime = Runtime(Settings(model=checkpoint, max_sessions=1))
    try:
        ticker = runtime.ticker
        s = runtime.open_session(StartMessage(type="start"))
        assert not ticker._plan(0, False).prompts
        s.request_response()
        prompted = [s.id in ticker._plan(k, False).prompts for k in range(1, 6)]
        assert prompted == [True] * RESPONSE_CHUNKS + [False] * (5 - RESPONSE_CHUNKS)
    finally:
        runtime.ticker.shutdown()
