"""The global tick loop: one clock for every call, one batched engine step per tick.

Tick g's agent chunk is due at deadline(g). Each tick reads pace -> plan -> execute -> deliver.
Pace (server/pacing/): every call's audio is kept on the clock, and the step waits until every
call's user audio up to the awaited frame is encoded, and at the latest its budget before the
deadline. Plan (event loop): who joins, leaves, changes settings, is prompted or is done.
Execute (a worker thread): tokenize what arrived, engine step, vocode. Deliver (event loop):
each call's figures, the metrics, the recording, its agent frame, and the rules that cut a call
off. The frames of the newest user chunk that are in go to the engine as they are; the rest of
that chunk is estimated. A step that ends late is sent late and counted; a tick whose deadline
passed before its step could start is skipped (the engine writes agent silence, so every
timeline stays on the clock). The engine is only touched from the worker thread; sessions join
and leave between steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from model.engines.api import Engine, StepRequest, StepResult
from model.format import Frame
from model.sampling import SamplingParams
from server.metrics import Metrics
from server.pacing.clock import TickClock
from server.pacing.step import StepPacer, StepWait
from server.recording import CallRecorder
from server.session import AgentChunk, CallSession, State
from streaming.agent_output import AgentAudio, render_all
from streaming.user_input import tokenize_all
from streaming.wire import CloseCode, ErrorCode, ProtocolError, ReadyMessage

log = logging.getLogger("duplex.ticker")

TOKENIZE_EVERY_S = 0.04  # between waits, audio is encoded within a codec frame (40 ms) of arriving


@dataclass
class TickPlan:
    """What one step does; built on the event loop, executed on the worker."""

    tick: int
    silent: bool
    joins: list[CallSession] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)
    sessions: list[CallSession] = field(default_factory=list)
    prompts: set[str] = field(default_factory=set)  # calls whose caller asked for a response
    retunes: dict[str, SamplingParams] = field(default_factory=dict)  # changed mid-call


@dataclass
class TickOutput:
    results: dict[str, StepResult]
    audio: dict[str, AgentAudio]
    newest_arrival: dict[str, float | None]  # the newest real frame a step used: its arrival
    real: dict[str, dict[int, list[Frame]]]  # user chunks each session's step received
    compute_s: float


@dataclass
class TickerConfig:
    tick_s: float
    latency_budget_s: float
    max_sessions: int
    idle_timeout_s: float
    max_call_s: float
    max_backlog_frames: int
    resume_window_s: float = 0.0  # a call whose connection dropped waits this long


class Ticker:
    def __init__(
        self, engine: Engine, metrics: Metrics, config: TickerConfig, pacer: StepPacer
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.config = config
        self.clock = TickClock(config.tick_s)
        self.pacer = pacer
        self.sessions: dict[str, CallSession] = {}
        self._in_engine: set[str] = set()
        self._joined: dict[str, CallSession] = {}  # in the engine (the worker's own view)
        self._leaving: list[str] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duplex-tick")
        self._stop = threading.Event()
        self._wake = threading.Event()  # audio arrived: tokenize now
        self._audio = asyncio.Event()  # audio was encoded: the tick may start
        self._waiting = False  # the tick loop waits on `_audio`
        self._stepping = False  # a step runs on the worker
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokenizer = threading.Thread(
            target=self._tokenize_loop, name="duplex-tokenize", daemon=True
        )
        self._tokenizer.start()
        self.drain_started = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self.drain_started.is_set()

    # -- admission (event loop) ---------------------------------------------------------------

    def admit(self, session: CallSession) -> None:
        if self.draining:
            raise ProtocolError(ErrorCode.SERVER_SHUTDOWN, "the server is shutting down")
        if len(self.sessions) >= self.config.max_sessions:
            self.metrics.sessions_rejected.labels("server_full").inc()
            raise ProtocolError(
                ErrorCode.SERVER_FULL,
                f"all {self.config.max_sessions} call slots are busy; try again later",
            )
        self.sessions[session.id] = session
        self.metrics.sessions_total.inc()
        self.metrics.sessions_active.set(len(self.sessions))

    def discard(self, session: CallSession) -> None:
        """Forget a call (any state); its engine slot is freed at the next step."""
        if self.sessions.pop(session.id, None) is None:
            return
        session.state = State.CLOSED
        session.done.set()
        if session.opened and session.user_in.gate.frames_tracked:  # how noisy its line was
            gated, floor_db = session.user_in.gate.figures
            self.metrics.frames_gated.inc(gated)
            self.metrics.noise_floor.observe(floor_db)
        if session.id in self._in_engine:
            self._in_engine.discard(session.id)
            self._leaving.append(session.id)
        self.metrics.sessions_active.set(len(self.sessions))
        if session.recorder is not None:
            session.recorder.close()

    @property
    def free_slots(self) -> int:
        return max(0, self.config.max_sessions - len(self.sessions))

    # -- the tokenizer thread -------------------------------------------------------------------

    def wake_tokenizer(self) -> None:
        """Audio was pushed (event loop). Tokenize at once only while a tick waits for audio:
        every wake-up of the tokenizer thread contends with the step for the GIL."""
        if self._waiting:
            self._wake.set()

    def _tokenize_loop(self) -> None:
        """Encode user audio as it arrives, off the tick's critical path, and tell a waiting
        tick."""
        while not self._stop.is_set():
            self._wake.wait(TOKENIZE_EVERY_S)
            self._wake.clear()
            new = tokenize_all([s.user_in for s in list(self.sessions.values())])
            if new and self._waiting and self._loop is not None:
                self._loop.call_soon_threadsafe(self._audio.set)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        tick = self.clock.next_tick() + 1
        while True:
            self._keep_on_clock(tick)
            await self._await_audio(self._awaited(tick))
            started = time.monotonic()
            plan = self._plan(tick, silent=started >= self.clock.deadline(tick))
            if plan.sessions or plan.leaves:
                out = await self._execute(plan)
                if out is not None:
                    self._deliver(plan, out)
                    self.pacer.record(time.monotonic() - started, len(plan.sessions))
            tick += 1

    # -- pace (event loop) ------------------------------------------------------------------

    def _keep_on_clock(self, tick: int) -> None:
        """Each call's audio against the clock (server/pacing/anchor.py): the silence a late
        call's re-anchor inserts goes in here, a call that sent `end` ends no later than its
        audio may run ahead of the clock, every re-anchor is counted, and a call whose clock
        runs off by more than re-anchoring follows is cut off (`clock_drift`)."""
        now = time.monotonic()
        for s in self.sessions.values():
            if s.join_tick is None or tick <= s.join_tick:
                continue
            elapsed = now - self.clock.deadline(s.join_tick)
            if s.state is State.ENDING and not s.pacing.ended:
                cut = s.pacing.bound_end(elapsed, s.user_in.samples_in)
                if cut:
                    s.end_at(s.user_in.samples_in - cut)
                    self.metrics.re_anchors.labels("early").inc()
            if s.state is not State.LIVE:
                continue
            if s.detached_at is not None:  # its connection dropped: silence on the clock
                self.fill_gap(s)
                continue
            if (why := s.pacing.refusal(elapsed, s.expected_sample)) is not None:
                self._cut(s, ErrorCode.CLOCK_DRIFT, why)
                continue
            move = s.pacing.check(elapsed, s.user_in.samples_in)
            if move is None:
                continue
            if move.samples > 0:
                s.insert_silence(move.samples)
            self.metrics.re_anchors.labels(move.direction).inc()

    def fill_gap(self, s: CallSession) -> None:
        """A call whose connection dropped: silence for the caller up to now (a call moved
        here and not yet joined: up to where its clock will stand when it joins)."""
        now = time.monotonic()
        joined = (
            s.join_tick if s.join_tick is not None else self.clock.next_tick(now) - s.start_chunk
        )
        if s.join_tick is not None or s.adopted is not None:
            elapsed = now - self.clock.deadline(joined)
            s.fill_gap(round(s.pacing.lag_s(elapsed, s.user_in.samples_in) * s.audio.sample_rate))

    def _awaited(self, tick: int) -> StepWait:
        """What the step of `tick` waits for (server/pacing/step.py): the live calls that have
        user audio by then."""
        joined = {
            s.id: s.join_tick
            for s in self.sessions.values()
            if s.state is State.LIVE and s.join_tick is not None and tick > s.join_tick
        }
        return self.pacer.wait(tick, self.clock.deadline(tick), joined, len(self.sessions))

    async def _await_audio(self, wait: StepWait) -> None:
        """Wait until every waited-for call's audio up to the awaited frame is encoded (and
        not before that frame's last sample is due), or until the step's latest start; with no
        call to wait for, the step starts at its latest. Then note whose audio was on time."""
        self._waiting = True  # before reading frames_encoded: no wake-up is lost
        try:
            while True:
                self._audio.clear()
                now = time.monotonic()
                if now >= wait.latest:
                    break
                waited = [
                    s.user_in.frames_encoded >= wait.need[s.id]
                    for s in self.sessions.values()
                    if s.state is State.LIVE and wait.waits_for(s.id, s.pacing.audio_on_time)
                ]
                missing = not all(waited)
                if waited and not missing and now >= wait.earliest:
                    break
                if missing:
                    self._wake.set()  # encode what is queued now, not at the next poll
                # with no call to wait for (all late, or none), start as late as the step
                # allows: late audio that came in by then is used
                until = wait.earliest if waited and not missing else wait.latest
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._audio.wait(), until - now)
        finally:
            self._waiting = False
        for s in self.sessions.values():
            if s.id in wait.need:
                s.pacing.audio_on_time = s.user_in.frames_encoded >= wait.need[s.id]

    # -- plan (event loop) ------------------------------------------------------------------

    def _plan(self, tick: int, silent: bool) -> TickPlan:
        plan = TickPlan(tick, silent, leaves=self._leaving)
        self._leaving = []
        if silent:
            self.metrics.skipped.inc()
        for s in self.sessions.values():
            if s.state is State.CLOSED:
                continue
            if s.join_tick is None:  # a call moved here joins where it stood
                s.join_tick = tick - s.start_chunk
                plan.joins.append(s)
                self._in_engine.add(s.id)
            elif s.retuned:
                plan.retunes[s.id] = s.sampling
            if s.recorder is not None and (s.retuned or s in plan.joins):
                s.recorder.settings(tick, dict(s.settings()))  # at the join: the drawn seed
            s.retuned = False  # a joining call joins with its settings as they are
            if s.opened:  # this plan's step and all after it use them
                s.send_updates_owed()
            if s.last_chunk is not None and tick - s.join_tick > s.last_chunk:
                if s.opened:  # else `ready` and chunk 0 are still to go out (an overrun)
                    s.send_end_marker(s.stats.ticks)  # `end` came after the last chunk
                    s.finish()
                continue
            plan.sessions.append(s)
            if s.prompt_chunks > 0 and not silent:  # a skipped tick makes no sound to prompt
                s.prompt_chunks -= 1
                plan.prompts.add(s.id)
        return plan

    # -- execute (worker thread) ------------------------------------------------------------

    async def _execute(self, plan: TickPlan) -> TickOutput | None:
        """The plan's step on the worker thread; a step that fails ends its calls (None)."""
        self._stepping = True
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._work, plan
            )
        except Exception:
            log.exception("tick %d failed; ending its calls", plan.tick)
            self._fail_all(plan)
            return None
        finally:
            self._stepping = False

    async def between_steps(self) -> None:
        """Return when no step runs: until the caller's next await, the engine is idle and
        may be read (server/moving.py)."""
        while self._stepping:
            await asyncio.sleep(0.002)

    def _work(self, plan: TickPlan) -> TickOutput:
        """Worker thread: the only place the engine runs."""
        for sid in plan.leaves:
            self.engine.remove_session(sid)
            if (gone := self._joined.pop(sid, None)) is not None:
                gone.leave_rows()
        for s in plan.joins:
            if s.adopted is not None:
                self.engine.adopt(s.id, s.adopted)
                s.adopted = None
            else:
                self.engine.add_session(s.id, s.sampling, s.opening)
            s.join_rows()
            self._joined[s.id] = s
        for sid, params in plan.retunes.items():
            self.engine.retune(sid, params)
        t0 = time.perf_counter()
        requests = []
        arrivals: dict[str, tuple[list[float], list[float]]] = {}  # whole chunks, partial frames
        real: dict[str, dict[int, list[Frame]]] = {}
        tokenize_all([s.user_in for s in plan.sessions])  # all calls at once, where batched
        for s in plan.sessions:
            chunks, part = s.user_in.drain()
            real[s.id] = {c.index: [tuple(f) for f in c.units.tolist()] for c in chunks}
            arrivals[s.id] = ([c.arrival for c in chunks], part.arrivals)
            partial = (part.index, [tuple(f) for f in part.units.tolist()])
            prompt = s.id in plan.prompts
            if prompt or s.prompt_chunks:  # a response asked for: does the caller talk again?
                s.hear(real[s.id], partial, self.engine.info.fmt.silence)
            requests.append(
                StepRequest(
                    s.id,
                    real[s.id],
                    silent=plan.silent,
                    partial_user=partial,
                    prompt=prompt and not s.barged_in,
                    unheard=s.take_unheard(),
                )
            )
        results = self.engine.step(requests)
        newest: dict[str, float | None] = {}
        for sid, (whole, frames) in arrivals.items():
            used = whole + frames[: results[sid].partial_frames]
            newest[sid] = max(used, default=None)
        rendered = render_all(
            {s.agent_out: np.asarray(results[s.id].frames, dtype=np.int64) for s in plan.sessions}
        )
        audio = {s.id: rendered[s.agent_out] for s in plan.sessions}
        return TickOutput(results, audio, newest, real, time.perf_counter() - t0)

    # -- deliver (event loop) ---------------------------------------------------------------

    def _deliver(self, plan: TickPlan, out: TickOutput) -> None:
        """Each call's agent chunk into its outbox (chunk 0 with `ready`, at the tick
        boundary), with its figures, the metrics and its recording; then the rules that cut a
        call off."""
        deadline = self.clock.deadline(plan.tick)
        now = time.monotonic()
        overrun = now > deadline
        count_tick_metrics(self.metrics, out.compute_s, overrun)
        for s in plan.sessions:
            if s.state is State.CLOSED or s.id not in self.sessions:
                continue
            r, a = out.results[s.id], out.audio[s.id]
            s.stats.count_step(r, overrun)
            count_call_metrics(self.metrics, r, overrun)
            if s.recorder is not None:
                record_step(s.recorder, plan.tick, r, a, out.real[s.id])
            frame = agent_chunk(r, a, s.last_chunk)
            if r.chunk == 0:
                asyncio.get_running_loop().create_task(self._open(s, frame, deadline))
                continue
            if r.barged_in and s.barge_in_notices:  # before the chunk that is its silence
                s.send_barge_in(frame.first_sample)
            s.send_audio(frame, out.newest_arrival[s.id])
            if frame.last:
                s.finish()
            elif (cut := cut_off(s, plan.tick, now, self.config)) is not None:
                self._cut(s, *cut)
            if s.detached_at is not None and s.state is State.CLOSED:
                self.discard(s)  # no connection left to close it

    async def _open(self, s: CallSession, frame: AgentChunk, deadline: float) -> None:
        """At the first tick boundary: `ready` (sample 0 of the call), then chunk 0."""
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        if s.state is State.CLOSED:
            return
        s.send_ready(self.ready_message(s))
        s.opened = True
        s.send_audio(frame, None)
        if frame.last:
            s.finish()
        elif s.state is State.JOINING:
            s.state = State.LIVE

    def ready_message(self, s: CallSession) -> ReadyMessage:
        codec_rate = self.engine.info.config.codec_sample_rate
        return ReadyMessage(
            session_id=s.id,
            tick_ms=self.config.tick_s * 1000,
            chunk_samples=s.chunk_samples,
            frame_samples=s.frame_samples,
            sample_rate=s.audio.sample_rate,
            encoding=s.audio.encoding,
            codec_sample_rate=codec_rate,
            lead_ms=round(self.pacer.max_budget_s * 1000, 3),
            latency_budget_ms=self.config.latency_budget_s * 1000,
            resume_token=s.resume_token,
            resume_window_s=self.config.resume_window_s if s.resume_token else 0.0,
            **s.settings(),
        )

    # -- ending calls -------------------------------------------------------------------------

    def _cut(self, s: CallSession, code: ErrorCode, message: str) -> None:
        self.metrics.errors.labels(code.value).inc()
        s.fail(code, message, int(ProtocolError(code, message).close_code))

    def _fail_all(self, plan: TickPlan) -> None:
        for s in plan.sessions:
            self._cut(s, ErrorCode.INTERNAL_ERROR, "internal error in the model step")
            self.discard(s)

    async def drain(self, grace_s: float, cut_short: Callable[[], bool] = bool) -> None:
        """Refuse new calls, let open ones finish for `grace_s` (or until `cut_short()`), then
        close them with 1012."""
        self.drain_started.set()
        end = time.monotonic() + grace_s
        while self.sessions and time.monotonic() < end and not cut_short():
            await asyncio.sleep(0.05)
        for s in list(self.sessions.values()):
            self.metrics.errors.labels(ErrorCode.SERVER_SHUTDOWN.value).inc()
            s.fail(
                ErrorCode.SERVER_SHUTDOWN,
                "the server is shutting down",
                int(CloseCode.SERVICE_RESTART),
            )

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


# -- delivery's jobs --------------------------------------------------------------------------


def count_tick_metrics(m: Metrics, compute_s: float, overrun: bool) -> None:
    """The tick in the metrics: its step's compute time, and whether it ended late."""
    m.ticks.inc()
    m.tick_seconds.observe(compute_s)
    if overrun:
        m.overrun_ticks.inc()
        m.tick_overruns_deprecated.inc()


def count_call_metrics(m: Metrics, r: StepResult, overrun: bool) -> None:
    """One call's step result in the metrics (no per-call labels: the call's own figures are
    its CallStats); `overrun`: its chunk went out late."""
    if overrun:
        m.overrun_call_ticks.inc()
    m.estimates.inc(r.estimated)
    m.replaced.inc(len(r.replaced))
    m.late_dropped.inc(len(r.dropped))
    if r.replaced:
        m.rollback_tokens.observe(r.rollback_tokens)
    m.agent_unheard.labels("silenced").inc(r.unheard_silenced)
    m.agent_unheard.labels("beyond_reach").inc(r.unheard_beyond_reach)


def record_step(
    recorder: CallRecorder, tick: int, r: StepResult, a: AgentAudio, real: dict[int, list[Frame]]
) -> None:
    """The step in the call's recording: the agent's audio, its units and the user chunks the
    step received."""
    recorder.agent_audio(a.pcm)
    recorder.tick(tick, r, real)


def agent_chunk(r: StepResult, a: AgentAudio, last_chunk: int | None) -> AgentChunk:
    """The step's agent audio as the call's frame: stamped with its chunk and first sample,
    flagged last when it is the final chunk `end` set."""
    last = last_chunk is not None and r.chunk >= last_chunk
    return AgentChunk(r.chunk, a.first_sample, a.payload, last, len(a.pcm))


def cut_off(
    s: CallSession, tick: int, now: float, cfg: TickerConfig
) -> tuple[ErrorCode, str] | None:
    """Why a call that goes on is cut off at this tick, if it is: a client not reading its
    audio, no audio for the idle timeout, a dropped connection not resumed in time, the
    longest call reached."""
    if s.queued_audio > cfg.max_backlog_frames:
        return ErrorCode.SLOW_CONSUMER, "the client is not reading its audio"
    if s.detached_at is not None:
        if now - s.detached_at > cfg.resume_window_s:
            return ErrorCode.RESUME_FAILED, f"not resumed within {cfg.resume_window_s:g} s"
    elif s.state is State.LIVE and now - s.last_activity > cfg.idle_timeout_s:
        return ErrorCode.IDLE_TIMEOUT, f"no audio for {cfg.idle_timeout_s:g} s"
    if (tick - (s.join_tick or 0)) * cfg.tick_s > cfg.max_call_s:
        return ErrorCode.CALL_TOO_LONG, f"calls last at most {cfg.max_call_s:g} s"
    return None
