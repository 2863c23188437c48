"""Everything a running server holds: the model, the engine, the codec, the ticker.

Built before the web app so that a bad checkpoint or setting fails at start with one line,
and warmed up (one step of each shape) before `/healthz` says ready.
"""

from __future__ import annotations

import gc
import logging
import math
import uuid

import numpy as np

from model.checkpoint import DuplexConfig, read_config
from model.engines import build_engine
from model.engines.api import CallState, Engine, EngineOptions
from model.sampling import SamplingParams
from server.call_sampling import periods, resolve
from server.metrics import Metrics
from server.moving import CallPackage, unpack_stats
from server.pacing.lead import lead_s, rollback_chunks
from server.pacing.step import StepPacer
from server.prompts import PromptLibrary
from server.recording import CallRecorder
from server.resume import ResumeBook
from server.session import AgentChunk, CallSession, State
from server.settings import Settings
from server.ticker import Ticker, TickerConfig
from streaming.agent_output import DecoderRows
from streaming.codecs import SpeechCodec, decoder_batch, encoder_batch, load_codec
from streaming.opus import opus_available
from streaming.user_input import EncoderRows
from streaming.wire import (
    OPUS_FRAME_MS,
    PROTOCOL_VERSION,
    SUPPORTED_RATES,
    AudioFormat,
    ErrorCode,
    ProtocolError,
    StartMessage,
)
from streaming.wire import SamplingParams as SamplingRequest

log = logging.getLogger("duplex.runtime")


def check_codec_fits(config: DuplexConfig, codec: SpeechCodec) -> None:
    """Refuse, with the mismatch named, a checkpoint whose codec does not speak its format:
    another rate or frame length, another number of units per frame, more units per codebook
    than its vocabulary holds, or another silence frame (what digital silence encodes to)."""
    file = "duplex.json"
    if codec.sample_rate != config.codec_sample_rate:
        raise ValueError(
            f"the codec runs at {codec.sample_rate} Hz but {file} says codec_sample_rate "
            f"{config.codec_sample_rate}"
        )
    if abs(codec.frame_ms - config.frame_ms) > 1e-9:
        raise ValueError(f"the codec's frames are {codec.frame_ms:g} ms but {file} says "
                         f"frame_ms {config.frame_ms:g}")  # fmt: skip
    if codec.units_per_frame != config.units_per_frame:
        raise ValueError(
            f"the codec writes {codec.units_per_frame} units per frame but {file} says "
            f"units_per_frame {config.units_per_frame}"
        )
    if codec.vocab_size > config.n_units:
        raise ValueError(
            f"the codec has {codec.vocab_size} units per codebook but {file} says n_units "
            f"{config.n_units}"
        )
    if tuple(codec.silence_frame) != config.silence:
        raise ValueError(
            f"the codec encodes silence as {list(codec.silence_frame)} but {file} says "
            f"silence_frame {list(config.silence)}"
        )


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config: DuplexConfig = read_config(settings.model)
        self.codec: SpeechCodec = load_codec(self.config.codec, settings.model, settings.device)
        check_codec_fits(self.config, self.codec)
        self.rows = _codec_rows(self.codec, self.config.frames_per_chunk)
        self.tick_s = self.config.chunk_ms / 1000
        self.metrics = Metrics()
        self.resume = ResumeBook(settings.resume_window_s)
        self.lead_s = lead_s(self.tick_s, settings.lead_ms)
        self.engine: Engine = build_engine(
            settings.engine,
            settings.model,
            EngineOptions(
                max_sessions=settings.max_sessions,
                max_rollback_chunks=rollback_chunks(
                    settings.latency_budget_ms / 1000, self.lead_s, self.tick_s
                ),
                estimate_units=settings.estimate_units,
                device=settings.device,
                dtype=settings.dtype,
                threads=settings.threads,
                tensor_parallel_size=settings.tensor_parallel_size,
                opening_frames=_frames(settings.prompt_max_s, self.codec),
            ),
        )
        self.prompts = PromptLibrary(
            self.codec, self.engine.info.max_opening_frames, settings.prompts_dir
        )
        self.warmup_step_s = self.engine.warm_up()
        if settings.lead_ms is None and 1.5 * self.warmup_step_s > self.lead_s:
            log.warning(
                "a step at %d calls took %.0f ms in warm-up, close to the %.0f ms it has: "
                "expect overruns at full load (lower --max-sessions)",
                settings.max_sessions,
                self.warmup_step_s * 1000,
                self.lead_s * 1000,
            )
        # Everything loaded so far (torch, transformers, the model) lives as long as the
        # server: keep it out of the collector's full passes, which otherwise stall a tick
        # now and then (measured: 2 overruns in a 16-call minute without this).
        gc.collect()
        gc.freeze()
        self.ticker = Ticker(
            self.engine,
            self.metrics,
            TickerConfig(
                tick_s=self.tick_s,
                latency_budget_s=settings.latency_budget_ms / 1000,
                max_sessions=settings.max_sessions,
                idle_timeout_s=settings.idle_timeout_s,
                max_call_s=settings.max_call_s,
                max_backlog_frames=max(2, math.ceil(settings.send_queue_s / self.tick_s)),
                resume_window_s=settings.resume_window_s,
            ),
            StepPacer(
                tick_s=self.tick_s,
                frame_s=self.config.frame_ms / 1000,
                frames_per_chunk=self.config.frames_per_chunk,
                max_budget_s=self.lead_s,
                adaptive=settings.lead_ms is None,
            ),
        )
        if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
            log.warning(
                "listening on %s with no API keys: anyone who can reach it can call", settings.host
            )
        log.info(
            "model %s: tick %.0f ms, lead %s%.1f ms (warm-up step %.1f ms at %d sessions), "
            "latency budget %.0f ms",
            settings.model,
            self.tick_s * 1000,
            "as recent steps need, at most " if settings.lead_ms is None else "",
            self.lead_s * 1000,
            self.warmup_step_s * 1000,
            settings.max_sessions,
            settings.latency_budget_ms,
        )

    def open_session(self, start: StartMessage) -> CallSession:
        """Validate a `start` and admit the call (raises ProtocolError with the reason)."""
        if start.version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {start.version} is not supported; this server speaks "
                f"{PROTOCOL_VERSION}",
            )
        audio = start.audio
        rates = SUPPORTED_RATES[audio.encoding]
        if audio.sample_rate not in rates:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_AUDIO,
                f"{audio.encoding} at {audio.sample_rate} Hz is not supported; use one of "
                f"{list(rates)} Hz",
            )
        chunk_ms = self.config.chunk_ms
        if not (10 <= audio.frame_ms <= chunk_ms and chunk_ms % audio.frame_ms == 0):
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_AUDIO,
                f"frame_ms {audio.frame_ms} must be at least 10 and divide the "
                f"{chunk_ms:g} ms tick",
            )
        if audio.encoding == "opus" and not opus_available():
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_AUDIO,
                "this server has no Opus (the libopus system library is missing); use pcm16",
            )
        if audio.encoding == "opus" and audio.frame_ms not in OPUS_FRAME_MS:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_AUDIO,
                f"frame_ms {audio.frame_ms} is not an Opus packet length; use one of "
                f"{list(OPUS_FRAME_MS)} that divides the tick",
            )
        opening = [] if start.prompt is None else self.prompts.frames(start.prompt)
        s = self.settings
        session = self._session(
            uuid.uuid4().hex,
            audio,
            self._params(start.sampling, seed=None),
            self._gate(start.noise_gate_db),
        )
        session.asked = (start.sampling, start.noise_gate_db)
        session.opening = opening
        session.barge_in_notices = start.barge_in_notices
        if start.prompt is not None:
            name = start.prompt.name or "uploaded"
            log.info(
                "call %s opens with voice prompt %s (%d frames)", session.id, name, len(opening)
            )
        self.ticker.admit(session)
        if s.record_dir is not None:  # a debugging aid: a call it cannot record goes on
            try:
                session.recorder = CallRecorder(
                    s.record_dir / session.id, audio.sample_rate, start.model_dump()
                )
            except (OSError, RuntimeError) as exc:  # soundfile's errors are RuntimeErrors
                log.error("call %s is not recorded: %s", session.id, exc)
        return session

    def _session(
        self, session_id: str, audio: AudioFormat, params: SamplingParams, gate_db: float
    ) -> CallSession:
        s = self.settings
        return CallSession(
            session_id,
            audio,
            params,
            self.codec,
            self.config.frames_per_chunk,
            self.tick_s,
            max_gap_s=max(self.tick_s, s.latency_budget_ms / 1000),
            rollback_chunks=self.engine.info.max_rollback_chunks,
            wake=self.ticker.wake_tokenizer,
            noise_gate_db=gate_db,
            rows=self.rows,
            replay_chunks=math.ceil(s.resume_replay_s / self.tick_s),
        )

    def adopt_session(self, package: CallPackage, state: CallState) -> CallSession:
        """A call a draining peer moved here (server/moving.py): admitted (or ProtocolError
        `server_full` / `server_shutdown`), to join the engine with its conversation where
        it stood, and to wait for its client as a dropped call waits."""
        session = self._session(package.session_id, package.audio, state.params,
                                package.noise_gate_db)  # fmt: skip
        session.asked = (package.asked, package.asked_gate_db)
        session.adopted, session.start_chunk = state, package.next_chunk
        frames = np.asarray(package.user_frames, dtype=np.int64)
        start = package.user_chunk * session.chunk_samples  # + the frames, at the wire rate
        start += len(frames) * session.chunk_samples // self.config.frames_per_chunk
        session.user_in.start_at(package.user_chunk, frames, start)
        session.expected_sample = start - package.client_offset
        session.agent_out.samples_out = session.samples_sent = package.samples_out
        session.stats, session.resumes = unpack_stats(package.stats), package.resumes
        session.barge_in_notices = package.barge_in_notices
        session.opened, session.state = True, State.LIVE
        self.ticker.admit(session)
        session.detach()
        log.info("call %s moved here at chunk %d", session.id, package.next_chunk)
        return session

    def resume_session(self, start: StartMessage, key: str | None) -> CallSession:
        """Take up the dropped call `start.resume` names (raises ProtocolError saying why
        not): `ready` again, with a new token and where the client's audio goes on, then
        the agent chunks it asked to have again."""
        assert start.resume is not None
        session = self.resume.claim(start.resume.token, key)
        if session.adapter is not None:
            self.resume.issue(session, key, start.resume.token)  # it still waits
            raise ProtocolError(
                ErrorCode.RESUME_FAILED,
                "the token is of a Realtime session: resume it on /v1/realtime",
            )
        if "audio" in start.model_fields_set and start.audio != session.audio:
            self.resume.issue(session, key)  # the call still waits: the client may retry
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "a resumed call keeps its audio format: leave `audio` out or repeat it",
            )
        again = self.take_up(session, start.resume.from_chunk, key)
        ready = self.ticker.ready_message(session).model_copy(
            update={
                "resumed": True,
                "resume_sample": session.expected_sample,
                "replay_from": again[0].chunk if again else None,
            }
        )
        session.send_ready(ready)
        session.resend(again)
        log.info(
            "call %s resumed (%d), %d chunks sent again", session.id, session.resumes, len(again)
        )
        return session

    def take_up(
        self, session: CallSession, from_chunk: int | None, key: str | None
    ) -> list[AgentChunk]:
        """A claimed call's new connection: its caller's silence filled up to now, attached,
        given a new token; the agent chunks from `from_chunk` it still holds."""
        self.ticker.fill_gap(session)  # the client's audio goes on from now
        again = session.attach(from_chunk)
        self.resume.issue(session, key)
        self.metrics.calls_lost.labels("resumed").inc()
        return again

    def park(self, session: CallSession) -> bool:
        """The call's connection dropped: keep it for a resume if it can have one (it has a
        token, it is live, the server is not draining); whether it was kept."""
        if (
            session.resume_token is None
            or session.state is not State.LIVE
            or not session.opened
            or self.ticker.draining
        ):
            return False
        session.detach()
        log.info(
            "call %s lost its connection; it waits %g s for a resume",
            session.id,
            self.settings.resume_window_s,
        )
        return True

    def retune(
        self, session: CallSession, asked: SamplingRequest, noise_gate_db: float | None
    ) -> None:
        """Give a running call the settings a whole `start` with `asked` would have; its
        random stream goes on unless a seed is named."""
        session.retune(self._params(asked, seed=session.sampling.seed), self._gate(noise_gate_db))
        session.asked = (asked, noise_gate_db)

    def _params(self, asked: SamplingRequest, seed: int | None) -> SamplingParams:
        """A call's sampling: what it asks for over the server's defaults; without a seed from
        either, `seed` (None: a fresh one)."""
        got = resolve(asked, self.settings, self.tick_s)
        return SamplingParams(
            temperature=got.temperature,
            top_k=got.top_k,
            seed=_seed(seed if got.seed is None else got.seed),
            turn_temperature=got.turn_temperature,
            speak_up_chunks=got.speak_up_chunks,
            barge_in_frames=periods(got.barge_in_ms, self.config.frame_ms / 1000),
            start_bias=got.start_bias,
        )

    def _gate(self, noise_gate_db: float | None) -> float:
        return self.settings.noise_gate_db if noise_gate_db is None else noise_gate_db


def _codec_rows(codec: SpeechCodec, frames: int) -> tuple[EncoderRows, DecoderRows] | None:
    """Batches every call's encoder and decoder are rows of, when the codec has a batched
    path: a tick's audio of all calls is then encoded, and its frames decoded, in one pass
    each. Each is warmed up with a chunk of `frames` frames, so that the first tick does not
    pay for what the codec sets up on its first pass."""
    enc, dec = encoder_batch(codec), decoder_batch(codec)
    if enc is None or dec is None:
        return None
    enc.add("warm-up")
    enc.encode({"warm-up": np.zeros(frames * codec.frame_samples, dtype=np.float32)})
    enc.remove("warm-up")
    dec.add("warm-up")
    dec.decode({"warm-up": np.tile(np.asarray(codec.silence_frame), (frames, 1))})
    dec.remove("warm-up")
    return EncoderRows(enc), DecoderRows(dec)


def _frames(seconds: float | None, codec: SpeechCodec) -> int | None:
    """The codec frames `seconds` of audio make (None stays None)."""
    if seconds is None:
        return None
    return math.ceil(round(seconds * codec.sample_rate) / codec.frame_samples)


def _seed(seed: int | None) -> int:
    return int(np.random.default_rng().integers(0, 2**31)) if seed is None else seed
