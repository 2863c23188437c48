"""The tick loop's plan, driven by hand: what a tick does with a call in an order the live
server reaches only under an overrun, and which steps a response asked for prompts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from model.barge_in import Windows
from model.engines.api import StepRequest, StepResult
from model.engines.torch.engine import TorchEngine
from server.runtime import Runtime
from server.session import RESPONSE_CHUNKS, State
from server.settings import Settings
from streaming.wire import SamplingParams as SamplingRequest
from streaming.wire import StartMessage


def _spy_on_steps(engine: TorchEngine) -> list[StepRequest]:
    """The requests every later `engine.step` gets, in order (the step still runs)."""
    seen: list[StepRequest] = []
    step = engine.step

    def spy(requests: list[StepRequest]) -> dict[str, StepResult]:
        seen.extend(requests)
        return step(requests)

    engine.step = spy  # type: ignore[method-assign]
    return seen


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
        assert not ticker._plan(1, True).prompts  # a skipped tick makes no sound: kept
        prompted = [s.id in ticker._plan(k, False).prompts for k in range(2, 7)]
        assert prompted == [True] * RESPONSE_CHUNKS + [False] * (5 - RESPONSE_CHUNKS)
    finally:
        runtime.ticker.shutdown()


def test_the_step_gets_the_prompt(checkpoint: Path) -> None:
    """The worker hands a prompted call's request to the engine as `prompt`."""
    runtime = Runtime(Settings(model=checkpoint, max_sessions=2))
    try:
        ticker, engine = runtime.ticker, runtime.ticker.engine
        calls = [runtime.open_session(StartMessage(type="start")) for _ in range(2)]
        calls[1].request_response()
        seen = _spy_on_steps(engine)
        ticker._work(ticker._plan(0, False))
        assert {r.session_id: r.prompt for r in seen} == {calls[0].id: False, calls[1].id: True}
    finally:
        runtime.ticker.shutdown()


def test_a_change_mid_call_reaches_the_engine_once(checkpoint: Path) -> None:
    """`Runtime.retune` (a native `update`, a Realtime `session.update`): the engine samples
    the call with the new values from the next step on, handed over once; a call changed
    before it joins joins with them; the seed stays unless one is named. The answer (`updated`)
    goes out with the plan that hands the values on, and not before `ready`."""
    runtime = Runtime(Settings(model=checkpoint, max_sessions=2, turn_temperature=None))
    try:
        ticker, engine = runtime.ticker, runtime.ticker.engine
        early, late = (runtime.open_session(StartMessage(type="start")) for _ in range(2))
        runtime.retune(early, SamplingRequest(eagerness="high"), 3.0)
        early.owe_update()
        ticker._work(ticker._plan(0, False))
        assert early.outbox.empty()  # before `ready` no answer goes out: ready tells it all
        early.opened = True
        ticker._plan(1, False)
        owed = early.outbox.get_nowait().updated  # after `ready`, the next plan answers
        assert owed is not None and owed.turn_temperature == 0.1 and early.outbox.empty()
        assert engine.sessions[early.id].params.turn_temperature == 0.1
        assert engine.sessions[late.id].params.turn_temperature is None
        seed = late.sampling.seed
        runtime.retune(late, SamplingRequest(temperature=0.9), None)
        late.owe_update()  # as the native `update` does: answered by the plan that hands it on
        assert late.user_in.gate.margin_db == Settings().noise_gate_db
        late.opened = True  # `ready` is out: an answer may go
        assert late.outbox.empty()
        plan = ticker._plan(2, False)
        answer = late.outbox.get_nowait().updated
        assert answer is not None and (answer.temperature, answer.seed) == (0.9, seed)
        assert list(plan.retunes) == [late.id] and not ticker._plan(3, False).retunes
        assert late.outbox.empty()
        ticker._work(plan)
        params = engine.sessions[late.id].params
        assert (params.temperature, params.seed) == (0.9, seed)
        assert early.user_in.gate.margin_db == 3.0
    finally:
        runtime.ticker.shutdown()


def test_a_caller_who_talks_again_drops_the_responses_prompts(checkpoint: Path) -> None:
    """`hear`: the tail of the words being finished when the response was asked for, gaps
    between them included, is no barge-in; speech after a pause (160 ms: 4 quiet frames) is,
    and drops the remaining prompts. A chunk's frames heard as partial are not heard again
    when it comes whole."""
    runtime = Runtime(Settings(model=checkpoint, max_sessions=2))
    try:
        ticker, engine = runtime.ticker, runtime.ticker.engine
        quiet, said = engine.fmt.silence, (7,)
        s = runtime.open_session(StartMessage(type="start"))
        s.request_response()
        s.hear({}, (4, [said, quiet, quiet, said]), quiet)  # a gap within the last words
        s.hear({}, (5, [said, quiet]), quiet)
        s.hear({5: [said, quiet, quiet, quiet]}, (6, [quiet]), quiet)  # chunk 5 again: no news
        assert not s.barged_in and s.prompt_chunks == RESPONSE_CHUNKS
        assert Windows.of(0.04).pause_frames == 4  # the quiet frames above: 1 + 2 + 1
        s.hear({6: [quiet, quiet, said, said]}, (7, []), quiet)
        assert s.barged_in and s.prompt_chunks == 0
        s.request_response()  # a new request: prompts again
        assert not s.barged_in and s.prompt_chunks == RESPONSE_CHUNKS
        s.user_in.frames_encoded = 4 * 9 + 2  # chunk 9's first 2 frames came before the ask
        s.request_response()
        s.hear({9: [quiet] * 4}, (10, [quiet, said]), quiet)  # 3 quiet frames since: no
        assert not s.barged_in
        s.hear({10: [quiet, said, quiet, quiet]}, (11, [quiet, quiet, said]), quiet)
        assert s.barged_in

        # In the step: a barging caller's chunk is not prompted, a quiet one's is.
        runtime.ticker.discard(s)
        barging, waiting = (runtime.open_session(StartMessage(type="start")) for _ in range(2))
        barging.request_response()
        waiting.request_response()

        def drain(then: list[int]):  # type: ignore[no-untyped-def]
            """A quiet chunk 0, and chunk 1's first frames `then`."""
            quiet_chunk = np.full((4, 1), quiet[0], dtype=np.int64)
            whole = SimpleNamespace(index=0, units=quiet_chunk, arrival=0.0)
            part = SimpleNamespace(index=1, units=np.array([[u] for u in then]), arrivals=[0.0])
            return lambda: ([whole], part)

        barging.user_in.drain = drain([7, 7])  # type: ignore[method-assign]
        waiting.user_in.drain = drain([quiet[0]])  # type: ignore[method-assign]
        seen = _spy_on_steps(engine)
        plan = ticker._plan(0, False)
        assert plan.prompts == {barging.id, waiting.id}
        ticker._work(plan)
        assert {r.session_id: r.prompt for r in seen} == {barging.id: False, waiting.id: True}
    finally:
        runtime.ticker.shutdown()


def test_overruns_are_counted_per_tick_and_per_call_tick(checkpoint: Path) -> None:
    """Issue 24 (b): a tick that ends late with two calls in it is one overrun tick
    (`duplex_overrun_ticks_total`, and `duplex_tick_overruns_total` under its old name) and
    two chunks sent late (`duplex_overrun_call_ticks_total`): what the calls' `stats.overruns`
    add up to. A tick on time counts in neither."""
    runtime = Runtime(Settings(model=checkpoint, max_sessions=2))
    try:
        ticker, registry = runtime.ticker, runtime.metrics.registry
        calls = [runtime.open_session(StartMessage(type="start")) for _ in range(2)]

        async def two_ticks() -> None:
            for tick, t0 in ((0, time.monotonic() - 10), (1, time.monotonic() + 10)):
                ticker.clock.t0 = t0  # tick 0 due long ago, tick 1 not for seconds
                plan = ticker._plan(tick, False)
                ticker._deliver(plan, ticker._work(plan))
                await asyncio.sleep(0)  # chunk 0 and `ready` go out

        asyncio.run(two_ticks())
        assert registry.get_sample_value("duplex_ticks_total") == 2
        assert registry.get_sample_value("duplex_overrun_ticks_total") == 1
        assert registry.get_sample_value("duplex_tick_overruns_total") == 1
        assert registry.get_sample_value("duplex_overrun_call_ticks_total") == 2
        assert [s.stats.overruns for s in calls] == [1, 1]
    finally:
        runtime.ticker.shutdown()
