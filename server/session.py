"""One call, whatever its transport: lifecycle, sample-order checks, outgoing queue, figures.

A transport adapter (the native protocol, a telephony bridge, ...) decodes its client's
messages into `on_audio` / `on_end`; the ticker feeds agent audio. Everything bound for the
socket goes through `outbox`, drained by the adapter's one sender task, so a slow socket only
ever delays (and finally cuts off) its own call.
"""

from __future__ import annotations

import asyncio
import enum
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from model.barge_in import Windows
from model.engines.api import CallState, StepResult
from model.format import Frame
from model.sampling import SamplingParams
from server.pacing.anchor import CallPacing
from server.recording import CallRecorder
from streaming.agent_output import AgentAudioOutput, DecoderRows
from streaming.codecs import SpeechCodec
from streaming.user_input import EncoderRows, UserAudioInput
from streaming.wire import (
    AudioFormat,
    CloseCode,
    ErrorCode,
    ErrorMessage,
    MovedMessage,
    ProtocolError,
    ReadyMessage,
    StatsMessage,
    UpdatedMessage,
)
from streaming.wire import SamplingParams as SamplingRequest

# A response asked for starts the agent's next chunks with sound: three chunks (480 ms) get it
# talking; then it goes on as the model does (its turns last ~0.6 s on average in self-play).
RESPONSE_CHUNKS = 3


class CallSettings(TypedDict):
    """The fields `ready` and `updated` share (streaming/wire.py)."""

    temperature: float
    turn_temperature: float | None
    top_k: int
    seed: int
    speak_up_ms: float
    start_bias: float
    barge_in_ms: float
    noise_gate_db: float


class State(enum.Enum):
    JOINING = "joining"  # admitted, waiting for its first tick
    LIVE = "live"
    ENDING = "ending"  # the client sent `end`; remaining ticks run
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class AgentChunk:
    """One tick's agent audio, encoded for the call's wire format."""

    chunk: int  # tick index k of the call
    first_sample: int  # at the wire rate
    payload: bytes
    last: bool
    samples: int = 0  # its length at the wire rate


@dataclass
class Outgoing:
    """An item for the call's sender task, which renders it in its transport's protocol.

    Exactly one of: `ready`, `audio`, `barge_in`, `stats`, `error`, `close_code`.
    """

    ready: ReadyMessage | None = None  # sample 0 of the call
    updated: UpdatedMessage | None = None  # the answer to a mid-call change
    audio: AgentChunk | None = None
    end_marker: bool = False  # `audio` is the empty frame that only flags the end: no tick
    newest_arrival: float | None = None  # for server-added latency
    barge_in: bool = False  # the caller talks over the agent: drop agent audio queued so far
    barge_in_sample: int = 0  # ... where the agent's silence starts (native `barge_in`)
    stats: bool = False  # the call's `stats`, built when its turn comes
    error: ErrorMessage | None = None
    moved: MovedMessage | None = None  # the call goes on at another replica
    close_code: int | None = None
    close_reason: str = ""


@dataclass
class CallStats:
    """The call's figures for its `stats` (those of its place on the clock: CallPacing)."""

    ticks: int = 0
    frames_in: int = 0
    frames_out: int = 0
    estimates_made: int = 0
    estimates_replaced: int = 0
    unreplaced: set[int] = field(default_factory=set)  # user chunks still only estimated
    late_chunks_dropped: int = 0
    overruns: int = 0
    context_tokens: int = 0
    max_rollback_tokens: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    unplayed_samples: int = 0  # agent audio that never reached the caller (`agent_unplayed`)
    unheard_silenced: int = 0  # agent frames of it made silence in the model's context
    unheard_beyond_reach: int = 0  # ... and those too old to change
    resume_silence_samples: int = 0  # the caller's side while it was away (`fill_gap`)

    def count_step(self, r: StepResult, overrun: bool) -> None:
        """One step's result for the call; `overrun`: its chunk went out late."""
        self.ticks += 1
        self.estimates_made += r.estimated
        self.estimates_replaced += len(r.replaced)
        if r.estimated:
            self.unreplaced.add(r.chunk - 1)
        self.unreplaced.difference_update(r.replaced)
        self.late_chunks_dropped += len(r.dropped)
        self.overruns += overrun
        self.context_tokens = r.tokens
        self.max_rollback_tokens = max(self.max_rollback_tokens, r.rollback_tokens)
        self.unheard_silenced += r.unheard_silenced
        self.unheard_beyond_reach += r.unheard_beyond_reach


class CallSession:
    def __init__(
        self,
        session_id: str,
        audio: AudioFormat,
        sampling: SamplingParams,
        codec: SpeechCodec,
        frames_per_chunk: int,
        tick_s: float,
        max_gap_s: float,
        rollback_chunks: int,
        wake: Callable[[], None],
        noise_gate_db: float = 0.0,
        rows: tuple[EncoderRows, DecoderRows] | None = None,
        replay_chunks: int = 0,
    ) -> None:
        """`wake`: called (on the event loop) after each push of audio, to have it encoded.
        `rows`: the batches the call's encoder and decoder are rows of, when the codec has a
        batched path (from `join_rows` on)."""
        self.id = session_id
        self.audio = audio
        self.sampling = sampling
        self.retuned = False  # `sampling` changed since the engine last took it
        self.updates_owed = 0  # answers to `update` still to send (by the ticker)
        # what the caller asked for (its `start`, as changed since): what an `update` changes
        self.asked: tuple[SamplingRequest, float | None] = (SamplingRequest(), None)
        self.opening: list[Frame] = []  # a voice prompt's frames, before chunk 0 (prompts.py)
        self.barge_in_notices = False  # the client asked to be told of barge-ins (native)
        self.tick_s = tick_s
        self.codec_frame_s = tick_s / frames_per_chunk
        self._pause_frames = Windows.of(self.codec_frame_s).pause_frames  # ends a speech
        self.state = State.JOINING
        self.frame_samples = audio.sample_rate * audio.frame_ms // 1000
        self.chunk_samples = round(audio.sample_rate * tick_s)
        self.max_gap_samples = round(audio.sample_rate * max_gap_s)
        self.rollback_chunks = rollback_chunks
        enc_rows, dec_rows = (None, None) if rows is None else rows
        self.user_in = UserAudioInput(
            codec, audio.sample_rate, frames_per_chunk, noise_gate_db, enc_rows
        )
        self._wake = wake
        self.agent_out = AgentAudioOutput(codec, audio.sample_rate, audio.encoding, dec_rows)
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.stats = CallStats()
        self.join_tick: int | None = None
        self.opened = False  # `ready` has been queued: nothing may end the call before it
        self.pacing = CallPacing(  # its audio against the clock: re-anchoring
            session_id, audio.sample_rate, self.frame_samples, rollback_chunks * tick_s
        )
        self.last_chunk: int | None = None  # final agent chunk once `end` arrived
        self.prompt_chunks = 0  # agent chunks still to start with sound (a response asked for)
        self.barged_in = False  # the caller talked again since it asked: no more prompts
        self._quiet_frames = 0  # the caller's quiet frames in a row since a response was asked
        self._heard = (-1, 0)  # the caller's chunk and frames `hear` has taken, to not repeat
        self._response_lock = threading.Lock()  # `request_response` (loop) vs `hear` (worker)
        self.played_sample = 0  # the client's last playback acknowledgement (`played`)
        self.samples_sent = 0  # agent audio queued for the client, at the wire rate
        self._unheard: list[tuple[int, int]] = []  # agent frames, for the next step
        self._unheard_lock = threading.Lock()  # `agent_unplayed` (loop) vs the tick worker
        self.expected_sample = 0  # in the client's sample numbering
        self.last_activity = time.monotonic()
        self.done = asyncio.Event()
        self.queued_audio = 0  # audio frames in outbox, to detect a client not reading
        self.recorder: CallRecorder | None = None
        # resume (server/resume.py): the agent's recent chunks, to send again after a drop
        self.resume_token: str | None = None
        self.adapter: object | None = None  # a Realtime call's transport: its state goes on
        self.adopted: CallState | None = None  # moved here: the engine adopts it at its join
        self.start_chunk = 0  # its first chunk here (moved here: where it stood)
        self.detached_at: float | None = None  # monotonic time its connection dropped
        self.resumes = 0
        self.recent: deque[AgentChunk] = deque(maxlen=replay_chunks)

    # -- its codec state (the tick worker) ----------------------------------------------------

    def join_rows(self) -> None:
        """At the call's first tick, its encoder and decoder take their rows in the codec's
        batches (no-op for a codec without a batched path); its audio is encoded from then."""
        self.user_in.join()
        self.agent_out.join()

    def leave_rows(self) -> None:
        """When the call leaves the engine, its rows are freed."""
        self.user_in.leave()
        self.agent_out.leave()

    # -- from the client --------------------------------------------------------------------

    def on_audio(self, first_sample: int, pcm: np.ndarray, *, filler: bool = False) -> None:
        """User audio from the transport, placed by its first sample index (wire rate).
        `filler`: silence the transport put in for audio that never came."""
        if self.state not in (State.JOINING, State.LIVE):
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "audio after `end`")
        if first_sample < self.expected_sample:
            raise ProtocolError(
                ErrorCode.SAMPLE_ORDER,
                f"frame starts at sample {first_sample} but samples up to "
                f"{self.expected_sample} were already received",
            )
        gap = first_sample - self.expected_sample
        if gap > self.max_gap_samples:
            raise ProtocolError(
                ErrorCode.SAMPLE_ORDER,
                f"frame starts at sample {first_sample}, {gap} samples after the previous "
                f"one ended; gaps (dropped frames) may be at most {self.max_gap_samples} samples",
            )
        self.expected_sample = first_sample + len(pcm)
        now = time.monotonic()
        if gap:  # frames the client dropped: their samples are silence
            self._push(self.pacing.after_drop(np.zeros(gap, dtype=np.float32)), now, filler=True)
        self._push(self.pacing.after_drop(pcm), now, filler=filler)
        self.last_activity = now
        self.stats.frames_in += 1

    def _push(self, pcm: np.ndarray, now: float, *, filler: bool = False) -> None:
        """Append to the audio stream the model hears (and the recording); `filler`: silence
        the server inserted."""
        if len(pcm):
            if self.recorder is not None:
                self.recorder.user_audio(self.user_in.samples_in, pcm)
            self.user_in.push(pcm, now, filler=filler)
            self._wake()

    def insert_silence(self, samples: int) -> None:
        """Silence the server puts into the caller's audio stream now (a short last frame's
        padding, a late call re-anchored)."""
        self._push(np.zeros(samples, dtype=np.float32), time.monotonic(), filler=True)

    def request_response(self) -> None:
        """The caller asks the agent to speak now: its next RESPONSE_CHUNKS chunks start with
        sound (`respond`, a Realtime `response.create`), unless the caller talks again first.
        What the caller said before asking (the frames encoded by now) is not heard for it."""
        encoded, per_chunk = self.user_in.frames_encoded, self.user_in.frames_per_chunk
        with self._response_lock:
            self.prompt_chunks = RESPONSE_CHUNKS
            self._quiet_frames = 0
            self.barged_in = False
            self._heard = max(self._heard, divmod(encoded, per_chunk))

    def hear(
        self, chunks: dict[int, list[Frame]], partial: tuple[int, list[Frame]], silence: Frame
    ) -> None:
        """The caller's frames a step takes (whole chunks by index, then the newest chunk's
        frames that arrived), while a response is asked for: speech after a pause (160 ms,
        model/barge_in.py's `PAUSE_S`) of the silence frame is the caller taking the floor
        back (a barge-in, as on the agent's speech: model/barge_in.py), and the response's
        remaining prompts are dropped; the agent then yields as the barge-in rule and the
        model have it. (Gaps
        within the words the caller was finishing are shorter: with one quiet frame, a client
        sending `respond` at the last word lost 2 % of its answers to its own syllables.)
        Frames heard once (as a partial chunk, or before the request) are not heard again.
        Runs on the tick worker while a request may come on the event loop: the lock keeps a
        new request's reset from being overwritten by an old barge-in."""
        with self._response_lock:
            for index, frames in [*sorted(chunks.items()), partial]:
                seen_index, seen = self._heard
                if index < seen_index:
                    continue
                for frame in frames[seen if index == seen_index else 0 :]:
                    if frame == silence:
                        self._quiet_frames += 1
                    elif self._quiet_frames >= self._pause_frames:
                        self.barged_in, self.prompt_chunks = True, 0
                    else:
                        self._quiet_frames = 0
                self._heard = (index, max(len(frames), seen if index == seen_index else 0))

    def on_played(self, sample: int, flushed: bool) -> None:
        """A playback acknowledgement (the native `played`): the client has played the
        agent's audio up to wire sample `sample`; `flushed`: and dropped what it held after
        it (the caller interrupted), which it will never play."""
        sent = self.samples_sent
        if sample > sent:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"`played` says sample {sample} but only {sent} agent samples were sent",
            )
        if sample < self.played_sample:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"`played` says sample {sample} after {self.played_sample}: it may not go back",
            )
        self.played_sample = sample
        if flushed:
            self.agent_unplayed(sample, sent)

    def agent_unplayed(self, start: int, end: int) -> None:
        """The agent's audio in wire samples [start, end) never reached the caller (a
        playback acknowledgement at an interruption, or audio the transport withheld): the
        next step makes its frames silence in the model's context, so that the model's
        history is what the caller heard. A frame partly played stays as it was."""
        if end <= start:
            return
        frame = self.chunk_samples / self.user_in.frames_per_chunk  # an agent frame, wire rate
        first, last = math.ceil(start / frame), math.ceil(end / frame)
        with self._unheard_lock:
            if self._unheard and first <= self._unheard[-1][1]:  # joins the one before
                a, b = self._unheard[-1]
                self._unheard[-1] = (min(a, first), max(b, last))
            else:
                self._unheard.append((first, last))
        self.stats.unplayed_samples += end - start

    def take_unheard(self) -> list[tuple[int, int]]:
        """The agent frames found unheard since the last step (the tick worker)."""
        with self._unheard_lock:
            taken, self._unheard = self._unheard, []
        return taken

    def on_end(self, total_samples: int) -> None:
        if self.state not in (State.JOINING, State.LIVE):
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "`end` sent twice")
        if total_samples < self.expected_sample:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"`end` says {total_samples} samples but {self.expected_sample} were sent",
            )
        if total_samples > self.expected_sample + self.frame_samples:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"`end` says {total_samples} samples but only {self.expected_sample} were sent "
                "(at most one frame of padding is allowed)",
            )
        if total_samples > self.expected_sample:
            self.insert_silence(total_samples - self.expected_sample)
            self.expected_sample = total_samples
        self.user_in.end()
        # the stream's length: the client's samples, moved by any re-anchoring
        self.end_at(self.user_in.samples_in)
        self.state = State.ENDING
        self.last_activity = time.monotonic()

    def end_at(self, samples: int) -> None:
        """The caller's audio stream ends at wire sample `samples`: the agent's last chunk is
        the one that holds it."""
        self.last_chunk = max(0, math.ceil(samples / self.chunk_samples) - 1)

    def retune(self, sampling: SamplingParams, noise_gate_db: float) -> None:
        """New settings mid-call: the ticker hands `sampling` to the engine before its next
        step, and the noise gate judges the next frame with the new margin."""
        self.sampling = sampling
        self.retuned = True
        self.user_in.gate.margin_db = noise_gate_db

    def settings(self) -> CallSettings:
        """The call's sampling and noise gate, as `ready` and `updated` tell them."""
        p = self.sampling
        return CallSettings(
            temperature=p.temperature,
            turn_temperature=p.turn_temperature,
            top_k=p.top_k,
            seed=p.seed,
            speak_up_ms=round(p.speak_up_chunks * self.tick_s * 1000, 3),
            start_bias=p.start_bias,
            barge_in_ms=round(p.barge_in_frames * self.codec_frame_s * 1000, 3),
            noise_gate_db=self.user_in.gate.margin_db,
        )

    def owe_update(self) -> None:
        """Answer an `update` once the ticker has handed its values to the engine (and
        after `ready`): every agent frame after the answer was made with the values it
        shows (two updates within a tick both show the second's)."""
        self.updates_owed += 1

    # -- to the client ----------------------------------------------------------------------

    def send_ready(self, ready: ReadyMessage) -> None:
        self.outbox.put_nowait(Outgoing(ready=ready))

    def send_updates_owed(self) -> None:
        for _ in range(self.updates_owed):
            self.outbox.put_nowait(Outgoing(updated=UpdatedMessage(**self.settings())))
        self.updates_owed = 0

    def send_audio(self, audio: AgentChunk, newest_arrival: float | None) -> None:
        self.samples_sent = audio.first_sample + audio.samples
        self.recent.append(audio)
        if self.detached_at is not None:  # kept in `recent` for a resume, if one comes
            return
        self.queued_audio += 1
        self.outbox.put_nowait(Outgoing(audio=audio, newest_arrival=newest_arrival))

    def send_end_marker(self, chunk: int) -> None:
        """`end` came after the final chunk went out unflagged: an empty frame where the
        agent's audio ends, numbered `chunk` (the next index), carries the `last` flag (a
        client may wait for it)."""
        self.queued_audio += 1
        marker = AgentChunk(chunk, self.agent_out.samples_out, b"", last=True)
        self.outbox.put_nowait(Outgoing(audio=marker, end_marker=True))

    # -- a dropped connection (server/resume.py) ------------------------------------------

    def detach(self) -> None:
        """The connection dropped: the call goes on without it (the caller's side silence,
        `fill_gap`), its agent audio kept in `recent` only, until a resume or the window's
        end."""
        self.detached_at = time.monotonic()
        self.outbox = asyncio.Queue()  # what the old connection never sent is not sent
        self.queued_audio = 0

    def fill_gap(self, samples: int) -> None:
        """While detached: `samples` of silence for the caller, on the clock, in the client's
        own numbering (a resumed client goes on from `expected_sample`)."""
        if samples > 0:
            self.expected_sample += samples
            self.stats.resume_silence_samples += samples
            self._push(np.zeros(samples, dtype=np.float32), time.monotonic(), filler=True)

    def attach(self, from_chunk: int | None) -> list[AgentChunk]:
        """A resumed connection takes the call up; returns the agent chunks still held from
        `from_chunk` on (all held, if it is older than the oldest), for `resend` after
        `ready` (none for None)."""
        self.detached_at = None
        self.resumes += 1
        self.last_activity = time.monotonic()
        if from_chunk is None:
            return []
        return [c for c in self.recent if c.chunk >= from_chunk]

    def resend(self, chunks: list[AgentChunk]) -> None:
        """Agent chunks sent again after a resume, before the live ones."""
        for chunk in chunks:
            self.queued_audio += 1
            self.outbox.put_nowait(Outgoing(audio=chunk))

    def send_barge_in(self, sample: int = 0) -> None:
        """Queued behind the audio already on its way, so the client drops that too;
        `sample`: the agent's first silent sample, where the engine's rule found it."""
        self.outbox.put_nowait(Outgoing(barge_in=True, barge_in_sample=sample))

    def fail(self, code: ErrorCode, message: str, close_code: int) -> None:
        """Queue an error and the close; later audio is not sent."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.outbox.put_nowait(Outgoing(error=ErrorMessage(code=code, message=message)))
        self.outbox.put_nowait(Outgoing(close_code=close_code, close_reason=code.value))
        self.done.set()

    def send_moved(self, moved: MovedMessage) -> None:
        """The call went to another replica (server/moving.py): tell the client where to
        resume, close with 1012; nothing more of it is sent from here."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.outbox.put_nowait(Outgoing(moved=moved))
        self.outbox.put_nowait(
            Outgoing(close_code=int(CloseCode.SERVICE_RESTART), close_reason="moved")
        )
        self.done.set()

    def finish(self) -> None:
        """Normal end: stats, then close 1000."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.outbox.put_nowait(Outgoing(stats=True))  # after every frame queued before it
        self.outbox.put_nowait(Outgoing(close_code=1000, close_reason="call complete"))
        self.done.set()

    def stats_message(self) -> StatsMessage:
        lat = np.array(self.stats.latencies_ms)
        pct = (lambda q: round(float(np.percentile(lat, q)), 3)) if len(lat) else (lambda q: None)
        s = self.stats
        # estimates whose budget ran out during the call with no real audio replacing them
        # (chunk j can be replaced up to step j + 1 + rollback_chunks; the last step is ticks-1)
        missing = sum(1 for j in s.unreplaced if j + 1 + self.rollback_chunks <= s.ticks - 1)
        gated, floor_db = self.user_in.gate.figures
        frame = self.chunk_samples / self.user_in.frames_per_chunk
        return StatsMessage(
            session_id=self.id,
            ticks=s.ticks,
            frames_in=s.frames_in,
            frames_out=s.frames_out,
            samples_in=self.expected_sample,
            estimates_made=s.estimates_made,
            estimates_replaced=s.estimates_replaced,
            late_samples_dropped=s.late_chunks_dropped * self.chunk_samples,
            missing_chunks=missing,
            overruns=s.overruns,
            context_tokens=s.context_tokens,
            max_rollback_tokens=s.max_rollback_tokens,
            re_anchors=self.pacing.re_anchors,
            re_anchored_samples=self.pacing.re_anchored_samples,
            frames_gated=gated,
            noise_floor_db=round(floor_db, 1),
            resumes=self.resumes,
            resume_silence_samples=s.resume_silence_samples,
            played_samples=self.played_sample,
            unplayed_samples=s.unplayed_samples,
            unheard_silenced_samples=round(s.unheard_silenced * frame),
            unheard_beyond_reach_samples=round(s.unheard_beyond_reach * frame),
            latency_ms_p50=pct(50),
            latency_ms_p95=pct(95),
            latency_ms_p99=pct(99),
        )
