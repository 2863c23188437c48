"""The Twilio Media Streams bridge of `WS /v1/telephony/twilio` (docs/telephony.md).

A bidirectional stream (`<Connect><Stream>`) speaks JSON text messages both ways: in
`connected`, `start`, `media` (20 ms of base64 mu-law at 8 kHz), `mark`, `dtmf`, `stop`; out
`media`, `mark` and `clear`. Twilio's protocol has no error message and no session clock, so
errors are logged and become the close code of `streaming.wire`, and Twilio's stream sample 0
is the session's sample 0. The TwiML's `<Parameter>`s may set the call's settings
(`call_start`).

Inbound audio is placed by the media `timestamp` (Twilio's clock), so lost packets become
silence instead of shifting everything after them. `clear` is sent when the caller barges in:
a simple energy VAD on the inbound frames starts (see `BargeInDetector`) while the agent's
audio sent in the last `AGENT_RECENT_S` had speech energy. A `mark` follows each agent
chunk and Twilio echoes it once that audio has played: at a `clear`, what was sent after the
last echoed mark was never heard, and becomes silence in the model's context
(`CallSession.agent_unplayed`).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any, Literal

import numpy as np
from fastapi import WebSocket
from pydantic import BaseModel, ConfigDict, ValidationError

from server.adapters.connection import receive, receive_opening
from server.runtime import Runtime
from server.session import CallSession, Outgoing
from streaming.encodings import decode_audio
from streaming.vad import EnergyVad, VadParams, dbfs
from streaming.wire import (
    AudioFormat,
    ErrorCode,
    ErrorMessage,
    ProtocolError,
    SamplingParams,
    StartMessage,
    describe_validation,
    load_json,
)

log = logging.getLogger("duplex.twilio")

RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000  # 160 mu-law bytes per media message
AUDIO = AudioFormat(encoding="mulaw", sample_rate=RATE, frame_ms=FRAME_MS)
MULAW_SILENCE = b"\xff"
# A media timestamp within half a frame of where the stream stands is that position (jitter
# of Twilio's millisecond clock); a larger step forward is lost audio, filled with silence.
SNAP_SAMPLES = FRAME_SAMPLES // 2
MAX_GAP_S = 2.0  # a longer hole in the timestamps is a broken stream, not packet loss
# Barge-in: caller VAD thresholds (dBFS of a 20 ms frame) with hysteresis.
CALLER_VAD = VadParams(on_dbfs=-35.0, off_dbfs=-45.0, start_frames=2, stop_frames=10)
AGENT_SPEECH_DBFS = -40.0  # an outbound 20 ms frame this loud is agent speech
AGENT_RECENT_S = 0.5  # agent speech sent this recently is still queued or playing at Twilio


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Twilio adds fields over time


class MediaFormat(_Model):
    encoding: str
    sampleRate: int
    channels: int = 1


class StartInfo(_Model):
    streamSid: str
    callSid: str = ""
    accountSid: str = ""
    tracks: list[str] = ["inbound"]
    customParameters: dict[str, Any] = {}
    mediaFormat: MediaFormat


class _Event(_Model):
    """What every message after `connected` carries."""

    event: str
    sequenceNumber: int
    streamSid: str


class StartEvent(_Event):
    event: Literal["start"]
    start: StartInfo


class MediaInfo(_Model):
    track: str = "inbound"
    chunk: int
    timestamp: int  # ms since the stream started, on Twilio's clock
    payload: str


class MediaEvent(_Event):
    event: Literal["media"]
    media: MediaInfo


class MarkInfo(_Model):
    name: str


class MarkEvent(_Event):
    event: Literal["mark"]
    mark: MarkInfo


class StopEvent(_Event):
    event: Literal["stop"]


class DtmfEvent(_Event):
    event: Literal["dtmf"]


_EVENTS: dict[str, type[_Event]] = {
    "start": StartEvent,
    "media": MediaEvent,
    "mark": MarkEvent,
    "stop": StopEvent,
    "dtmf": DtmfEvent,
}


def parse_event(data: str | bytes) -> _Event | None:
    """One Twilio message; None for `connected` (it carries nothing the bridge needs)."""
    if isinstance(data, bytes):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Twilio messages are JSON text, not binary")
    raw = load_json(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message must be a JSON object with 'event'")
    event = raw["event"]
    if event == "connected":
        return None
    model = _EVENTS.get(event)
    if model is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown Twilio event {event!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"invalid {event!r} message: {describe_validation(exc)}"
        ) from exc


def call_start(custom: dict[str, Any]) -> StartMessage:
    """The call's `start`: mu-law 8 kHz, and the settings the TwiML's `<Parameter>`s name
    (`customParameters`, all strings): the `sampling` fields of the native protocol
    (`eagerness`, `temperature`, ...), `noise_gate_db`, and `prompt`: the name of one of the
    server's voice prompts (docs/prompts.md). Other names (they are case-sensitive) are the
    application's own and are left alone, as is an empty value."""
    given = {k: str(v) for k, v in custom.items() if str(v) != ""}  # "": a template left empty
    sampling = {k: v for k, v in given.items() if k in SamplingParams.model_fields}
    gate = {k: v for k, v in given.items() if k == "noise_gate_db"}
    prompt = {"prompt": {"name": given["prompt"]}} if "prompt" in given else {}
    try:
        return StartMessage.model_validate_strings(
            {"type": "start", "sampling": sampling, **gate, **prompt}
        ).model_copy(update={"audio": AUDIO})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "prompt" if first["loc"][0] == "prompt" else str(first["loc"][-1])
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f'<Parameter name="{name}" value={custom.get(name)!r}>: {first["msg"]}',
        ) from exc


class TwilioTransport:
    """One Twilio stream: checks its messages, places its audio, renders the agent's."""

    def __init__(self) -> None:
        self.stream_sid = ""
        self.call_sid = ""
        self._last_seq = 0
        self._out = b""  # agent mu-law not yet sent: media messages are whole 20 ms frames
        self._vad = EnergyVad(RATE, CALLER_VAD)
        self._agent_speech_at = float("-inf")  # monotonic send time of the last loud frame
        self.last_mark_played: str | None = None  # Twilio echoes a mark once it played up to it
        self.clears = 0
        self._sent = 0  # agent samples sent in media messages
        self._played = 0  # ... and played, as the last mark echoed says
        self._marks: dict[str, int] = {}  # marks sent and not echoed: where each one is

    async def open(self, ws: WebSocket, runtime: Runtime) -> CallSession:
        timeout_s = runtime.settings.start_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            data = await receive_opening(ws, deadline, timeout_s, "`start` message")
            event = parse_event(data)
            if event is None:
                continue
            if not isinstance(event, StartEvent):
                raise ProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"expected `start` first, got `{event.event}`",
                )
            break
        fmt = event.start.mediaFormat
        if (fmt.encoding, fmt.sampleRate, fmt.channels) != ("audio/x-mulaw", RATE, 1):
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_AUDIO,
                f"media format {fmt.encoding} {fmt.sampleRate} Hz x{fmt.channels} is not "
                f"supported; the bridge speaks audio/x-mulaw 8000 Hz mono",
            )
        if event.start.streamSid != event.streamSid:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "`start` names two different streamSids")
        self.stream_sid, self.call_sid = event.streamSid, event.start.callSid
        self._last_seq = event.sequenceNumber
        start = call_start(event.start.customParameters)
        session = runtime.open_session(start)
        asked = start.model_dump(include={"sampling", "noise_gate_db", "prompt"}, exclude_none=True)
        log.info(
            "twilio stream %s (call %s) is session %s%s",
            self.stream_sid,
            self.call_sid,
            session.id,
            f" with {asked}" if asked.get("sampling") or asked.keys() - {"sampling"} else "",
        )
        return session

    async def read_loop(self, ws: WebSocket, session: CallSession) -> None:
        while True:
            event = parse_event(await receive(ws))
            if event is None:
                continue
            self._check(event)
            if isinstance(event, MediaEvent):
                self._on_media(session, event.media)
            elif isinstance(event, MarkEvent):
                self._on_mark(event.mark.name)
            elif isinstance(event, DtmfEvent):
                log.debug("stream %s: dtmf (digit not logged)", self.stream_sid)
            elif isinstance(event, StopEvent):
                session.on_end(session.expected_sample)
                return
            else:
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "`start` sent twice")

    def _on_mark(self, name: str) -> None:
        """Twilio played the agent's audio up to this mark. (The marks it echoes for a
        `clear` were forgotten when it was sent: that audio was never played.)"""
        if (at := self._marks.pop(name, None)) is not None:
            self.last_mark_played, self._played = name, at

    def _check(self, event: _Event) -> None:
        """Every message names this stream; sequence numbers grow (gaps are lost messages)."""
        if event.streamSid != self.stream_sid:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"streamSid {event.streamSid!r} is not this stream's {self.stream_sid!r}",
            )
        if event.sequenceNumber <= self._last_seq:
            raise ProtocolError(
                ErrorCode.SAMPLE_ORDER,
                f"sequenceNumber {event.sequenceNumber} after {self._last_seq}: they must grow",
            )
        self._last_seq = event.sequenceNumber

    def _on_media(self, session: CallSession, media: MediaInfo) -> None:
        try:
            payload = base64.b64decode(media.payload, validate=True)
        except ValueError as exc:  # binascii.Error, or a character that is not ASCII
            raise ProtocolError(ErrorCode.BAD_FRAME, f"media payload is not base64: {exc}") from exc
        if not 0 < len(payload) <= session.chunk_samples:
            raise ProtocolError(
                ErrorCode.BAD_FRAME_SIZE,
                f"media payload of {len(payload)} bytes; expected 1..{session.chunk_samples} "
                f"bytes of mu-law ({FRAME_SAMPLES} per 20 ms)",
            )
        pcm = decode_audio(payload, "mulaw")
        first = media.timestamp * RATE // 1000
        expected = session.expected_sample
        if abs(first - expected) <= SNAP_SAMPLES:
            first = expected
        gap = first - expected
        if gap > MAX_GAP_S * RATE:  # (said in integers: a float cannot hold every timestamp)
            raise ProtocolError(
                ErrorCode.SAMPLE_ORDER,
                f"media timestamp {media.timestamp} ms is {gap * 1000 // RATE} ms after the "
                f"audio so far; holes may be at most {MAX_GAP_S * 1000:g} ms",
            )
        if gap > session.max_gap_samples:  # the session refuses such holes from clients
            session.on_audio(expected, np.zeros(gap, dtype=np.float32), filler=True)
        session.on_audio(first, pcm)
        started = any(kind == "started" for kind, _ in self._vad.push(pcm))
        if started and time.monotonic() - self._agent_speech_at < AGENT_RECENT_S:
            session.send_barge_in()

    async def send(self, ws: WebSocket, session: CallSession, item: Outgoing) -> None:
        """Render one item in Twilio's protocol."""
        if item.barge_in:
            self.clears += 1
            await self._send(ws, "clear")
            session.agent_unplayed(self._played, self._sent)  # Twilio drops what it holds
            self._marks.clear()
        elif item.audio is not None:
            a = item.audio
            self._out += a.payload
            if a.last and len(self._out) % FRAME_SAMPLES:
                self._out += MULAW_SILENCE * (FRAME_SAMPLES - len(self._out) % FRAME_SAMPLES)
            sent = False
            while len(self._out) >= FRAME_SAMPLES:
                frame, self._out = self._out[:FRAME_SAMPLES], self._out[FRAME_SAMPLES:]
                if dbfs(decode_audio(frame, "mulaw")) >= AGENT_SPEECH_DBFS:
                    self._agent_speech_at = time.monotonic()
                await self._send(ws, "media", media={"payload": base64.b64encode(frame).decode()})
                self._sent += FRAME_SAMPLES
                sent = True
            if sent or a.payload:  # not for an end marker that had nothing left to flush
                self._marks[name := f"chunk-{a.chunk}"] = self._sent
                await self._send(ws, "mark", mark={"name": name})
        elif item.stats:
            log.info(
                "twilio stream %s: played up to %s, %d clears, %s",
                self.stream_sid,
                self.last_mark_played,
                self.clears,
                session.stats_message().model_dump(),
            )
        elif item.error is not None:
            log.warning(
                "twilio stream %s: %s: %s", self.stream_sid, item.error.code, item.error.message
            )

    async def _send(self, ws: WebSocket, event: str, **body: Any) -> None:
        await ws.send_text(json.dumps({"event": event, "streamSid": self.stream_sid, **body}))

    async def send_error(self, ws: WebSocket, error: ErrorMessage) -> None:
        """Twilio's protocol has no error message: log it; the close code carries it."""
        log.warning(
            "twilio stream %s refused: %s: %s", self.stream_sid or "-", error.code, error.message
        )
