"""The synchronous tick step every engine shares: what a step decides, not how it computes.

A step, per session with agent chunk k to produce:
1. real user chunks that arrived replace their estimates (the timeline truncates, the engine
   forgets what it held past the first replaced chunk) or are appended; agent frames the
   caller never heard (`StepRequest.unheard`) become silence the same way;
2. user chunk k-1, if its audio is not complete yet, is estimated: when none of it arrived,
   the model samples it (at most `estimate_units` frames; with 0, the user's last frame is
   held); when its first frames did, they are
   written as they are and the last of them is held for the rest (sampling that little
   would cost a forward per unit, the step's latency, for a guess little better than chance);
3. agent chunk k is generated: a forced `[S0]`, then at most frames_per_chunk frames, ending
   at the next speaker tag. After `speak_up_chunks` chunks of silence on both sides (user
   chunk k-1 as estimated), the chunk's first draw makes sound with probability at least
   `SPEAK_UP_P`. A caller who barged in on the agent and has talked `barge_in_frames` frames
   (model/barge_in.py) gets a silent agent chunk instead, until they pause, unless the
   chunk is a response they asked for (`prompt`).
A call's opening (a voice prompt, `add_session`) is the timeline's first chunks; requests and
results number the call's own chunks and frames from after it, so the server never sees it.
A frame is `units_per_frame` units, drawn one per forward, codebook 0 first; a tag may only
come where a frame starts, and the rules for a chunk's start (speak up, start bias, prompt)
act at its first draw: codebook 0 of its first frame.

An engine is this class plus a runner: `_logits` feeds every session's pending tokens (the
timeline past `Timeline.cached`) and returns the next-token logits of the sessions still
drawing, all in one batched forward; `_roll_back` forgets what the engine held past
`cached`. Masks, the rules and the draws (with each call's own generator) are here, so every
engine makes the same choices from the same logits. It knows nothing of sockets or clocks;
the server decides what is late.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from model.barge_in import Windows, barged_in
from model.checkpoint import DuplexConfig
from model.engines.api import CallState, EngineInfo, StepRequest, StepResult
from model.format import Frame, dedup, interpolate
from model.sampling import SamplingParams, TokenMasks, sample
from model.timeline import Timeline, opening_tokens

# A dead conversation's agent starts a chunk with at least this chance: ~0.5 s to speak up on
# average, and two such agents (self-play) both start in a given chunk with chance 1/16.
SPEAK_UP_P = 0.25
WARMUP_STEPS = 6  # after the fill: plain steps, then steps that replace an estimate


class _Phase(enum.Enum):
    USER_TAG = enum.auto()
    USER_UNITS = enum.auto()
    AGENT_UNITS = enum.auto()
    DONE = enum.auto()


@dataclass(kw_only=True)
class Call:
    """One call's conversation and sampling state; an engine adds what its runner keeps."""

    timeline: Timeline
    params: SamplingParams
    gen: torch.Generator
    pending: dict[int, list[Frame]] = field(default_factory=dict)
    barged_in: bool = False  # the last answer of model/barge_in.py that was not None


C = TypeVar("C", bound=Call)


@dataclass
class _Job(Generic[C]):
    """The decode state of one session within one step."""

    session: C
    result: StepResult
    phase: _Phase
    units: list[int] = field(default_factory=list)  # drawn in this phase, frame by frame
    partial: list[Frame] = field(default_factory=list)  # real first frames of the estimate
    prompt: bool = False  # the agent chunk starts with sound (StepRequest.prompt)
    hush: bool = False  # the caller barged in: the agent chunk is silence


class Stepper(ABC, Generic[C]):
    """Every session's timeline and the step's planning and sampling; the forward is the
    subclass's (`_logits`, `_roll_back`, `_new_call`, `_drop_call`)."""

    def __init__(
        self,
        name: str,
        config: DuplexConfig,
        vocab_size: int,
        *,
        max_sessions: int,
        max_rollback_chunks: int,
        estimate_units: int | None = None,
        opening_frames: int | None = None,
    ) -> None:
        """`estimate_units`: the most frames sampled for an estimated user chunk (None, or
        more than a chunk holds: a whole chunk's worth). It counts frames, not units, at any
        `units_per_frame`: an estimate is whole frames, and the setting stands for the same
        stretch of audio whatever the codec. Each of a frame's units is one sequential
        forward of the whole batch. `opening_frames`: as `EngineOptions`'."""
        if estimate_units is not None and estimate_units < 0:
            raise ValueError(f"estimate_units must be >= 0, got {estimate_units}")
        self.config = config
        self.fmt = config.chunk_format()
        self.masks = TokenMasks(self.fmt, vocab_size)
        self.max_rollback_chunks = max_rollback_chunks
        n = self.fmt.frames_per_chunk
        self.estimate_frames = n if estimate_units is None else min(estimate_units, n)
        self.chunk_tokens = 2 * (n * self.fmt.units_per_frame + 1)  # a step's most, both sides
        # the positions a rollback may reach back: never attended, so never forgotten early
        self.reserve = (max_rollback_chunks + 2) * self.chunk_tokens
        self.barge_in_windows = Windows.of(config.frame_ms / 1000)
        self.sink_tokens, self.max_opening_frames = self._sink(opening_frames)
        ring = config.context_tokens - self.sink_tokens
        if self.reserve * 2 > ring:
            raise ValueError(
                f"context_tokens {config.context_tokens} (sink {self.sink_tokens}) is too "
                f"small for a rollback of {max_rollback_chunks} chunks"
            )
        self.sessions: dict[str, C] = {}
        self.info = EngineInfo(
            name, config, self.fmt, max_sessions, max_rollback_chunks,
            self.sink_tokens, self.max_opening_frames,
        )  # fmt: skip

    def _sink(self, opening_frames: int | None) -> tuple[int, int]:
        """The attention sink's size and the longest opening it holds, in frames: the
        checkpoint's sink and the whole chunks that fit it, or a sink grown (never shrunk)
        to hold `opening_frames` at its most tokens. The context stays the checkpoint's, so a
        larger sink leaves a shorter window and no attention distance the model was not
        trained on."""
        n, sink = self.frames_per_chunk, self.config.sink_tokens
        if opening_frames is None:
            fits = 0
            while opening_tokens(self.fmt, fits + 1) <= sink:
                fits += 1
            return sink, fits * n
        if opening_frames < 0:
            raise ValueError(f"opening_frames must be >= 0, got {opening_frames}")
        chunks = -(-opening_frames // n)
        return max(sink, opening_tokens(self.fmt, chunks) if chunks else 0), opening_frames

    @property
    def frames_per_chunk(self) -> int:
        return self.fmt.frames_per_chunk

    # -- what the runner does ------------------------------------------------------------

    @abstractmethod
    def _new_call(self, timeline: Timeline, params: SamplingParams, gen: torch.Generator) -> C:
        """A joining call's state, with whatever room the runner keeps for it; raises when
        there is none."""

    @abstractmethod
    def _drop_call(self, call: C) -> None:
        """A call left: free its room."""

    @abstractmethod
    def _roll_back(self, call: C) -> int:
        """Forget what the runner holds of the call past `timeline.cached`; how many tokens."""

    @abstractmethod
    def _logits(self, calls: list[C]) -> torch.Tensor:
        """Feed the pending tokens (past `cached`; the runner moves `cached` on); the
        next-token logits of each of `calls` ([len(calls), vocab] float on the CPU, up to
        a constant per row: the draws ignore it)."""

    # -- the seam (model/engines/api.py) --------------------------------------------------

    def add_session(
        self, session_id: str, params: SamplingParams, opening: Sequence[Frame] = ()
    ) -> None:
        if session_id in self.sessions:
            raise ValueError(f"session {session_id!r} already exists")
        if len(opening) > self.max_opening_frames:
            raise ValueError(
                f"an opening of {len(opening)} frames does not fit the attention sink "
                f"({self.sink_tokens} tokens: {self.max_opening_frames} frames at most)"
            )
        timeline = Timeline(self.fmt)
        timeline.open(opening)
        gen = torch.Generator().manual_seed(params.seed)
        self.sessions[session_id] = self._new_call(timeline, params, gen)

    def export(self, session_id: str) -> CallState:
        s = self.sessions[session_id]
        tl = s.timeline
        return CallState(
            agent=[list(c) for c in tl.agent],
            user=[list(c) for c in tl.user],
            user_real=list(tl.user_real),
            opening=tl.opening,
            pending={j: list(f) for j, f in s.pending.items()},
            params=s.params,
            generator=bytes(s.gen.get_state().numpy().tobytes()),
            barged_in=s.barged_in,
        )

    def adopt(self, session_id: str, state: CallState) -> None:
        if session_id in self.sessions:
            raise ValueError(f"session {session_id!r} already exists")
        if len(state.agent) != len(state.user) + 1:
            raise ValueError("a call moves between steps: one more agent chunk than user chunks")
        timeline = Timeline(self.fmt)
        for k, agent in enumerate(state.agent):
            if k:
                timeline.append_user(state.user[k - 1], real=state.user_real[k - 1])
            timeline.append_agent(dedup(agent, timeline.prev_agent()))
        timeline.opening = state.opening
        gen = torch.Generator()
        gen.set_state(torch.frombuffer(bytearray(state.generator), dtype=torch.uint8))
        call = self._new_call(timeline, state.params, gen)
        call.pending, call.barged_in = dict(state.pending), state.barged_in
        self.sessions[session_id] = call

    def retune(self, session_id: str, params: SamplingParams) -> None:
        """Sample a session's next steps with `params` (a caller's mid-call change); its
        random stream is reseeded only when the seed changes."""
        session = self.sessions[session_id]
        if params.seed != session.params.seed:
            session.gen.manual_seed(params.seed)
        session.params = params

    def remove_session(self, session_id: str) -> None:
        self._drop_call(self.sessions.pop(session_id))

    def timeline(self, session_id: str) -> Timeline:
        return self.sessions[session_id].timeline

    @torch.inference_mode()
    def step(self, requests: list[StepRequest]) -> dict[str, StepResult]:
        """Advance each requested session by one agent chunk."""
        jobs = [self._prepare(req) for req in requests]
        active = [job for job in jobs if job.phase is not _Phase.DONE]
        while active:
            logits = self._logits([job.session for job in active])
            allowed = torch.stack([self._allowed(job) for job in active])
            tokens = sample(  # on the CPU, as the per-session generators are
                logits, allowed, [job.session.params for job in active],
                [job.session.gen for job in active], self.masks.units,
                [self._speak_floor(job) for job in active],
                [self._start_bias(job) for job in active],
            )  # fmt: skip
            for job, tok in zip(active, tokens, strict=True):
                self._advance(job, tok)
            active = [job for job in active if job.phase is not _Phase.DONE]
        for job in jobs:
            job.result.tokens = len(job.session.timeline.tokens)
        return {req.session_id: job.result for req, job in zip(requests, jobs, strict=True)}

    def warm_up(self) -> float:
        """Run steps of every shape at full load and full context; return the slowest step.

        Every warm-up call is first filled to the attention window with silent ticks (real
        user units, agent silence: no decoding), because a step's cost grows with the window
        it attends over and the server's pacing must hold for long calls, not just fresh ones.
        """
        fmt = self.fmt
        ids = [f"warmup-{i}" for i in range(self.info.max_sessions - len(self.sessions))]
        for i, sid in enumerate(ids):
            self.add_session(sid, SamplingParams(seed=i))
        rng = np.random.default_rng(0)

        def user_chunk() -> list[Frame]:
            units = rng.integers(1, fmt.n_units, (fmt.frames_per_chunk, fmt.units_per_frame))
            return [tuple(int(u) for u in frame) for frame in units]

        k = 0
        while ids and len(self.timeline(ids[0]).tokens) < self.config.context_tokens:
            self.step([StepRequest(sid, {k - 1: user_chunk()} if k else {}, True) for sid in ids])
            k += 1
        slowest = 0.0
        for step in range(WARMUP_STEPS if ids else 0):
            reqs = []
            for sid in ids:
                real: dict[int, list[Frame]] = {}
                if step >= WARMUP_STEPS // 2:  # replace an estimate made 3 steps ago: rollback
                    real[k - WARMUP_STEPS // 2] = user_chunk()
                reqs.append(StepRequest(sid, real))
            t0 = time.perf_counter()
            self.step(reqs)
            if step >= 1:
                slowest = max(slowest, time.perf_counter() - t0)
            k += 1
        for sid in ids:
            self.remove_session(sid)
        return slowest

    # -- planning --------------------------------------------------------------------------

    def _prepare(self, req: StepRequest) -> _Job[C]:
        s = self.sessions[req.session_id]
        tl = s.timeline
        k = len(tl.agent)  # the timeline's chunk; the call's is k - o, after its opening
        o, n = tl.opening, self.frames_per_chunk
        result = StepResult(k - o, [], [], [], 0, 0)
        s.pending.update({j + o: frames for j, frames in req.real_user.items()})
        for j in sorted(s.pending):
            if j >= len(tl.user):
                continue
            frames = s.pending.pop(j)
            if tl.user_real[j]:
                continue  # a duplicate of audio already in place
            if j < len(tl.user) - self.max_rollback_chunks:
                result.dropped.append(j - o)
                continue
            tl.replace_user(j, frames)
            result.replaced.append(j - o)
        for first, end in req.unheard:
            self._unheard(tl, result, first + o * n, end + o * n)
        result.rollback_tokens = self._roll_back(s)
        if k > 0 and (k - 1) in s.pending:
            tl.append_user(s.pending.pop(k - 1), real=True)
        job: _Job[C] = _Job(s, result, _Phase.USER_TAG if len(tl.user) < k else _Phase.AGENT_UNITS)
        job.prompt = req.prompt
        if job.phase is _Phase.USER_TAG and req.partial_user and req.partial_user[0] + o == k - 1:
            job.partial = req.partial_user[1][: n - 1]
            result.partial_frames = len(job.partial)
        heard = barged_in(tl, job.partial, s.params.barge_in_frames, self.barge_in_windows)
        before = s.barged_in
        s.barged_in = s.barged_in if heard is None else heard
        job.hush = s.barged_in and not req.prompt  # a response asked for after it wins
        result.barged_in = job.hush and not before
        if job.phase is _Phase.USER_TAG and (req.silent or job.partial or not self.estimate_frames):
            # nothing sampled: a missed tick, or the frames that arrived with the last held
            result.estimate = self._fill(job, [])
            tl.append_user(result.estimate, real=False)
            job.phase = _Phase.AGENT_UNITS
        if req.silent:
            result.frames = tl.append_agent([])
            job.phase = _Phase.DONE
        elif job.phase is _Phase.AGENT_UNITS:
            tl.tokens.append(self.fmt.s0)
        if job.phase is not _Phase.DONE and tl.cached == len(tl.tokens):
            # Nothing new to feed (the last chunk ended at a tag, which is not written, and no
            # audio changed the timeline): the next token's logits come from feeding the
            # last token again, one position back.
            tl.cached -= 1
            self._roll_back(s)
        result.prefill_tokens = len(tl.tokens) - tl.cached
        return job

    def _unheard(self, tl: Timeline, result: StepResult, first: int, end: int) -> None:
        """Agent frames [first, end) the caller never heard become silence, as far back as a
        rollback reaches (the agent chunks beside the user chunks a replacement may reach);
        older ones stay as they are and are counted."""
        n = self.frames_per_chunk
        end = min(end, len(tl.agent) * n)
        reach = max(0, len(tl.user) - self.max_rollback_chunks) * n
        start = max(first, reach)
        result.unheard_beyond_reach += max(0, min(end, reach) - first)
        result.unheard_silenced += max(0, end - start)
        if end > start:
            tl.silence_agent(start, end)

    def _fill(self, job: _Job[C], sampled: list[Frame]) -> list[Frame]:
        """The estimated chunk's frames: those that arrived, then the sampled ones spread over
        the rest of the chunk."""
        tl = job.session.timeline
        last = job.partial[-1] if job.partial else tl.prev_user()
        rest = self.frames_per_chunk - len(job.partial)
        return job.partial + interpolate(sampled, last, rest)

    @staticmethod
    def _opens(job: _Job[Any]) -> bool:
        """Whether the next draw is the first of an agent chunk the agent may speak in."""
        return job.phase is _Phase.AGENT_UNITS and not job.units and not job.hush

    def _speak_floor(self, job: _Job[C]) -> float:
        """For the first draw of an agent chunk: 1 when the caller asked for a response,
        SPEAK_UP_P after a long silence on both sides."""
        if not self._opens(job):
            return 0.0
        if job.prompt:
            return 1.0
        quiet = job.session.params.speak_up_chunks
        if not quiet:
            return 0.0
        return SPEAK_UP_P if job.session.timeline.silent_chunks(quiet) == quiet else 0.0

    def _start_bias(self, job: _Job[C]) -> float:
        """For the first draw of an agent chunk after its silence: the session's start bias."""
        if not self._opens(job):
            return 0.0
        silent = job.session.timeline.prev_agent() == self.fmt.silence
        return job.session.params.start_bias if silent else 0.0

    def _frame_so_far(self, job: _Job[C], held: Frame) -> tuple[list[int], Frame]:
        """The units drawn of the frame under way, and the frame before it: the last whole
        frame drawn in this phase, else `held` (the speaker's last frame)."""
        k = self.fmt.units_per_frame
        start = len(job.units) - len(job.units) % k
        prev = tuple(job.units[start - k : start]) if start else held
        return job.units[start:], prev

    def _allowed(self, job: _Job[C]) -> torch.Tensor:
        """What the chunk format allows next for this job ([vocab] booleans)."""
        fmt, tl, masks = self.fmt, job.session.timeline, self.masks
        if job.phase is _Phase.USER_TAG:
            return masks.user_open
        if job.phase is _Phase.USER_UNITS:  # [S1] is followed by a frame at least
            frame, prev = self._frame_so_far(job, tl.prev_user())
            return masks.next_unit(frame, prev, *((fmt.s0,) if job.units else ()))
        if job.hush:  # the silence frame, unit by unit, then the chunk ends
            silent = len(job.units) == fmt.units_per_frame or (
                not job.units and tl.prev_agent() == fmt.silence
            )
            return masks.tags if silent else masks.silence[len(job.units)]
        frame, prev = self._frame_so_far(job, tl.prev_agent())
        allowed = masks.next_unit(frame, prev, fmt.s0, fmt.s1)
        if job.prompt and not job.units:  # a response asked for starts with sound, not silence
            allowed &= ~masks.silence[0]
        return allowed

    def _advance(self, job: _Job[C], tok: int) -> None:
        """Take the sampled token: extend the chunk, or close it and move on."""
        fmt, tl = self.fmt, job.session.timeline
        units = self.frames_per_chunk * fmt.units_per_frame  # a whole chunk's
        if job.phase is _Phase.USER_TAG:
            if tok == fmt.s1:
                tl.tokens.append(tok)
                job.phase = _Phase.USER_UNITS
            else:  # the user adds nothing new; this [S0] opens the agent's chunk
                job.result.estimate = self._fill(job, [])
                tl.append_user(job.result.estimate, real=False)
                tl.tokens.append(fmt.s0)
                job.phase = _Phase.AGENT_UNITS
            return
        if job.phase is _Phase.USER_UNITS:
            if tok != fmt.s0:
                tl.tokens.append(tok)
                job.units.append(fmt.token_unit(tok))
            if tok == fmt.s0 or len(job.units) == self.estimate_frames * fmt.units_per_frame:
                job.result.estimate = self._fill(job, fmt.frames(job.units))
                tl.append_user(job.result.estimate, real=False, tokens_written=1 + len(job.units))
                tl.tokens.append(fmt.s0)
                job.units = []
                job.phase = _Phase.AGENT_UNITS
            return
        if tok not in (fmt.s0, fmt.s1):
            tl.tokens.append(tok)
            job.units.append(fmt.token_unit(tok))
        if tok in (fmt.s0, fmt.s1) or len(job.units) == units:
            job.result.frames = tl.append_agent(fmt.frames(job.units), tokens_written=True)
            job.phase = _Phase.DONE
