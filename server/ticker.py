"""The global tick loop: one clock for every call, one batched engine step per tick.

Tick g's agent chunk is due at deadline(g). Its step starts as soon as every call's user audio
up to the frame the pacer waits for is encoded, and at the latest its budget before the
deadline (server/pacing.py); it runs on a worker thread (tokenize what arrived, engine step,
vocode). The frames of the newest user chunk that are in go to the engine as they are; the
rest of that chunk is estimated. A step that ends late is sent late and counted; a tick whose
deadline passed before its step could start is skipped (the engine writes agent silence, so
every timeline stays on the clock). The engine is only touched from the worker thread;
sessions join and leave between steps.
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
from server.pacing import StepPacer
from server.session import AgentChunk, CallSession, State
from streaming.agent_output import AgentAudio
from streaming.clock import TickClock
from streaming.wire import CloseCode, ErrorCode, ProtocolError, ReadyMessage

log = logging.getLogger("duplex.ticker")

RETRY_LATE_TICKS = 8  # a call that was late is waited for again this often (~1.3 s)
TOKENIZE_EVERY_S = 0.04  # between waits, audio is encoded within a codec frame (40 ms) of arriving
REANCHOR_TICKS = 12  # ~2 s off the clock: drift or a lasting delay, not a network stall


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
        self._leaving: list[str] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duplex-tick")
        self._stop = threading.Event()
        self._wake = threading.Event()  # audio arrived: tokenize now
        self._audio = asyncio.Event()  # audio was encoded: the tick may start
        self._waiting = False  # the tick loop waits on `_audio`
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
        session.user_in.on_push = self._on_audio
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

    @property
    def free_slots(self) -> int:
        return max(0, self.config.max_sessions - len(self.sessions))

    # -- the loop -----------------------------------------------------------------------------

    def _on_audio(self) -> None:
        """A frame arrived (event loop). Tokenize at once only while a tick waits for audio:
        every wake-up of the tokenizer thread contends with the step for the GIL."""
        if self._waiting:
            self._wake.set()

    def _tokenize_loop(self) -> None:
        """Encode user audio as it arrives, off the tick's critical path, and tell a waiting
        tick."""
        while not self._stop.is_set():
            self._wake.wait(TOKENIZE_EVERY_S)
            self._wake.clear()
            new = sum(s.user_in.tokenize() for s in list(self.sessions.values()))
            if new and self._waiting and self._loop is not None:
                self._loop.call_soon_threadsafe(self._audio.set)

    async def run(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        tick = self.clock.next_tick() + 1
        while True:
            self._keep_on_clock(tick)
            await self._await_audio(tick)
            started = time.monotonic()
            silent = started >= self.clock.deadline(tick)
            plan = self._plan(tick, silent)
            if plan.sessions or plan.leaves:
                try:
                    out = await loop.run_in_executor(self._executor, self._work, plan)
                except Exception:
                    log.exception("tick %d failed; ending its calls", tick)
                    self._fail_all(plan)
                else:
                    self._deliver(plan, out)
                    self.pacer.record(time.monotonic() - started, len(plan.sessions))
            tick += 1

    def _keep_on_clock(self, tick: int) -> None:
        """Clock drift is absorbed within the latency buffer; a call whose
        audio stays beyond the buffer's reach (rollback_chunks ticks), late or early, for
        REANCHOR_TICKS ticks is re-anchored: silence is inserted (late) or incoming audio
        dropped (early) so its audio is on time again, and that is counted. Late audio would
        otherwise be dropped for the rest of the call (the agent deaf), early audio heard
        that much later (the agent slow). A stall shorter than that is left alone: its audio
        arrives in a burst, and only what is beyond the budget is dropped. A drop not made
        yet is revoked as far as the call trails the clock again (a burst, then a pause)."""
        now = time.monotonic()
        for s in self.sessions.values():
            if s.state is not State.LIVE or s.join_tick is None or tick <= s.join_tick:
                continue
            elapsed = now - self.clock.deadline(s.join_tick)
            lag = s.lag_s(elapsed)
            frame_s = s.frame_samples / s.audio.sample_rate
            if lag > frame_s and s.drop_pending:  # more than a client on time trails by
                s.revoke_drop(round((lag - frame_s) * s.audio.sample_rate))
                lag = s.lag_s(elapsed)
            reach = s.rollback_chunks * self.config.tick_s
            if abs(lag) <= reach:
                s.off_clock_ticks = 0
                s.on_clock_ticks += 1
                # A stall is over once its audio stays within reach as long as it took to
                # call it one (right after a re-anchor it is within reach for a few ticks).
                if s.on_clock_ticks == REANCHOR_TICKS:
                    if s.stall_re_anchors > 1:
                        log.info("call %s back on the clock after %d re-anchors", s.id,
                                 s.stall_re_anchors)  # fmt: skip
                    s.stall_re_anchors = 0
                continue
            s.on_clock_ticks = 0
            s.off_clock_ticks += 1
            if s.off_clock_ticks < REANCHOR_TICKS:
                continue
            s.off_clock_ticks = 0
            shift = lag - frame_s if lag > 0 else lag  # a client on time trails by ~a frame
            s.re_anchor(round(shift * s.audio.sample_rate))
            direction = "late" if lag > 0 else "early"
            self.metrics.re_anchors.labels(direction).inc()
            s.stall_re_anchors += 1
            # A client that stops sending without hanging up is re-anchored every
            # REANCHOR_TICKS until idle_timeout: one info line per stall, the rest at debug.
            log.log(
                logging.INFO if s.stall_re_anchors == 1 else logging.DEBUG,
                "call %s re-anchored: its audio was %.0f ms %s", s.id, abs(lag) * 1000, direction,
            )  # fmt: skip

    async def _await_audio(self, tick: int) -> None:
        """Wait until every waited-for call's audio up to the awaited frame is encoded (and
        not before that frame's last sample is due), or until the step's latest start. A call
        whose audio was not in when the previous step started (network delay) is waited for
        again only every RETRY_LATE_TICKS ticks, so it cannot hold the others up each tick,
        and one that is on time again is noticed. With no call to wait for, the step starts
        at its latest."""
        deadline = self.clock.deadline(tick)
        p = self.pacer
        budget = p.budget(len(self.sessions))
        m = p.frames_to_wait(budget)
        latest = deadline - budget
        earliest = deadline - p.tick_s + m * p.frame_s
        need: dict[str, int] = {}
        for s in self.sessions.values():
            if s.state is State.LIVE and s.join_tick is not None and tick > s.join_tick:
                need[s.id] = (tick - s.join_tick - 1) * p.frames_per_chunk + m
        retry = tick % RETRY_LATE_TICKS == 0
        self._waiting = True  # before reading frames_encoded: no wake-up is lost
        try:
            while True:
                self._audio.clear()
                now = time.monotonic()
                if now >= latest:
                    break
                waited = [
                    s.user_in.frames_encoded >= need[sid]
                    for sid, s in self.sessions.items()
                    if sid in need and s.state is State.LIVE and (s.audio_on_time or retry)
                ]
                missing = not all(waited)
                if waited and not missing and now >= earliest:
                    break
                if missing:
                    self._wake.set()  # encode what is queued now, not at the next poll
                # with no call to wait for (all late, or none), start as late as the step
                # allows: late audio that came in by then is used
                until = earliest if waited and not missing else latest
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._audio.wait(), until - now)
        finally:
            self._waiting = False
        for sid, s in self.sessions.items():
            if sid in need:
                s.audio_on_time = s.user_in.frames_encoded >= need[sid]

    def _plan(self, tick: int, silent: bool) -> TickPlan:
        plan = TickPlan(tick, silent, leaves=self._leaving)
        self._leaving = []
        if silent:
            self.metrics.skipped.inc()
        for s in self.sessions.values():
            if s.state is State.CLOSED:
                continue
            if s.join_tick is None:
                s.join_tick = tick
                plan.joins.append(s)
                self._in_engine.add(s.id)
            elif s.retuned:
                plan.retunes[s.id] = s.sampling
            if s.recorder is not None and (s.retuned or s.join_tick == tick):
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

    def _work(self, plan: TickPlan) -> TickOutput:
        """Worker thread: the only place the engine runs."""
        for sid in plan.leaves:
            self.engine.remove_session(sid)
        for s in plan.joins:
            self.engine.add_session(s.id, s.sampling)
        for sid, params in plan.retunes.items():
            self.engine.retune(sid, params)
        t0 = time.perf_counter()
        requests = []
        arrivals: dict[str, tuple[list[float], list[float]]] = {}  # whole chunks, partial frames
        real: dict[str, dict[int, list[Frame]]] = {}
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
                )
            )
        results = self.engine.step(requests)
        newest: dict[str, float | None] = {}
        for sid, (whole, frames) in arrivals.items():
            used = whole + frames[: results[sid].partial_frames]
            newest[sid] = max(used, default=None)
        audio = {
            s.id: s.agent_out.render(np.asarray(results[s.id].frames, dtype=np.int64))
            for s in plan.sessions
        }
        return TickOutput(results, audio, newest, real, time.perf_counter() - t0)

    def _deliver(self, plan: TickPlan, out: TickOutput) -> None:
        m, cfg = self.metrics, self.config
        deadline = self.clock.deadline(plan.tick)
        now = time.monotonic()
        overrun = now > deadline
        m.ticks.inc()
        m.tick_seconds.observe(out.compute_s)
        if overrun:
            m.overruns.inc()
        for s in plan.sessions:
            if s.state is State.CLOSED or s.id not in self.sessions:
                continue
            r, a = out.results[s.id], out.audio[s.id]
            st = s.stats
            st.ticks += 1
            st.estimates_made += r.estimated
            st.estimates_replaced += len(r.replaced)
            if r.estimated:
                st.unreplaced.add(r.chunk - 1)
            st.unreplaced.difference_update(r.replaced)
            st.late_chunks_dropped += len(r.dropped)
            st.overruns += overrun
            st.context_tokens = r.tokens
            st.max_rollback_tokens = max(st.max_rollback_tokens, r.rollback_tokens)
            m.estimates.inc(r.estimated)
            m.replaced.inc(len(r.replaced))
            m.late_dropped.inc(len(r.dropped))
            if r.replaced:
                m.rollback_tokens.observe(r.rollback_tokens)
            if s.recorder is not None:
                s.recorder.agent_audio(a.pcm)
                s.recorder.tick(plan.tick, r, out.real[s.id])
            last = s.last_chunk is not None and r.chunk >= s.last_chunk
            frame = AgentChunk(r.chunk, a.first_sample, a.payload, last)
            if r.chunk == 0:
                asyncio.get_running_loop().create_task(self._open(s, frame, deadline, last))
                continue
            s.send_audio(frame, out.newest_arrival[s.id])
            if last:
                s.finish()
            elif s.queued_audio > cfg.max_backlog_frames:
                self._cut(s, ErrorCode.SLOW_CONSUMER, "the client is not reading its audio")
            elif s.state is State.LIVE and now - s.last_activity > cfg.idle_timeout_s:
                self._cut(s, ErrorCode.IDLE_TIMEOUT, f"no audio for {cfg.idle_timeout_s:g} s")
            elif (plan.tick - (s.join_tick or 0)) * cfg.tick_s > cfg.max_call_s:
                self._cut(s, ErrorCode.CALL_TOO_LONG, f"calls last at most {cfg.max_call_s:g} s")

    async def _open(self, s: CallSession, frame: AgentChunk, deadline: float, last: bool) -> None:
        """At the first tick boundary: `ready` (sample 0 of the call), then chunk 0."""
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        if s.state is State.CLOSED:
            return
        s.send_ready(self.ready_message(s))
        s.opened = True
        s.send_audio(frame, None)
        if last:
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
            **s.settings(),
        )

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
