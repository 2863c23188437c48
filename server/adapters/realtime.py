"""An OpenAI Realtime-compatible adapter for `WS /v1/realtime` (docs/realtime.md).

OpenAI clients talk in turns (`response.*`); the duplex model speaks on its own clock. So the
adapter admits the call at the first `input_audio_buffer.append` (the session clock starts
with the audio: the running sample count is each chunk's first sample), opens a response when
the agent's chunk carries speech and closes it at the first silent chunk, and derives
`speech_started` / `speech_stopped` from an energy VAD on the user's audio. Both the GA event
names and the beta ones (`OpenAI-Beta: realtime=v1` header, or beta-shaped `session.update`)
are spoken. What a `session.update` asks of the call (format, turn detection, noise
reduction, temperature) is server/adapters/realtime_options.py's job.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import WebSocket

from server.adapters.connection import receive, receive_opening
from server.adapters.realtime_options import BETA_KEYS, ClientError, RealtimeOptions
from server.runtime import Runtime
from server.session import CallSession, Outgoing
from server.settings import Settings
from streaming.encodings import alaw_decode, alaw_encode, decode_audio
from streaming.vad import EnergyVad
from streaming.wire import ErrorCode, ErrorMessage, ProtocolError, load_json

DEFAULT_MODEL = "duplex"
AGENT_SPEECH_RMS = 0.01  # an agent chunk quieter than this (-40 dBFS) ends the response
CATCH_UP_S = 1.0  # a client this far behind the clock paused: its gap becomes silence
SUPPORTED_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "response.create",
    "response.cancel",
)
UNSUPPORTED_EVENTS = (
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "output_audio_buffer.clear",
    "transcription_session.update",
)
_SERVER_SIDE = {ErrorCode.INTERNAL_ERROR, ErrorCode.SERVER_FULL, ErrorCode.SERVER_SHUTDOWN}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def parse_event(data: str | bytes) -> dict[str, Any]:
    """One client event: a JSON object, else ClientError (the connection stays open)."""
    if isinstance(data, bytes):
        raise ClientError("invalid_type", "binary messages are not supported; send JSON")
    try:
        event = load_json(data)
    except ProtocolError as exc:  # invalid_json
        raise ClientError(exc.code.value, exc.message) from exc
    if not isinstance(event, dict):
        raise ClientError("invalid_type", "an event must be a JSON object")
    return event


# -- the transport -----------------------------------------------------------------------------


@dataclass
class QueuedEvent(Outgoing):
    """A realtime event queued by the reader, so the sender stays the socket's only writer
    and response state changes in the order the client sees them."""

    event: dict[str, Any] = field(default_factory=dict)
    cancel_event_id: str | None = None  # a `response.cancel`, resolved by the sender
    respond: bool = False  # a `response.create`: the agent may be heard again


class RealtimeTransport:
    """One call's adapter between OpenAI Realtime events and a duplex CallSession."""

    def __init__(self) -> None:
        self._id = _id("sess")
        self._model = DEFAULT_MODEL
        self._beta = False
        self._options = RealtimeOptions()
        self._server: Settings  # the server's defaults, set at open
        self._runtime: Runtime | None = None  # set at open: a change mid-call goes through it
        self._admitted = False
        self._samples = 0  # user samples received: the next append's first sample
        # Made at admission and run whatever the turn detection, so that one turned on
        # mid-call tells times on the call's clock; events only while it is on.
        self._vad: EnergyVad | None = None
        self._speech_item: str | None = None
        self._speaking = False  # a `speech_started` was sent and its `speech_stopped` not yet
        self._speech_end_ms = 0  # the last `speech_stopped`'s `audio_end_ms`
        self._t0: float | None = None  # monotonic time of session sample 0
        # sender-side response state
        self._response: str | None = None
        self._item: str | None = None
        self._suppressed = False

    # -- CallTransport -----------------------------------------------------------------------

    async def open(self, ws: WebSocket, runtime: Runtime) -> CallSession:
        """Answer `session.created`, then handle events until the first audio admits the call."""
        self._model = ws.query_params.get("model") or DEFAULT_MODEL
        self._beta = "realtime=v1" in ws.headers.get("openai-beta", "")
        self._server, self._runtime = runtime.settings, runtime
        await self._send(ws, self._event("session.created", session=self._session()))
        timeout_s = runtime.settings.start_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            data = await receive_opening(ws, deadline, timeout_s, "input_audio_buffer.append")
            audio = await self._on_message(ws, None, data)
            if audio is None:
                continue
            session = runtime.open_session(self._options.start(self._server))
            self._admitted = True
            self._vad = EnergyVad(self._rate, self._options.vad_params())
            self._push(session, audio)
            return session

    async def read_loop(self, ws: WebSocket, session: CallSession) -> None:
        while True:
            audio = await self._on_message(ws, session, await receive(ws))
            if audio is not None:
                self._push(session, audio)

    async def send(self, ws: WebSocket, session: CallSession, item: Outgoing) -> None:
        if isinstance(item, QueuedEvent):
            await self._send_event(ws, item)
        elif item.audio is not None:
            await self._send_audio(ws, session, item.audio.payload)
        elif item.ready is not None:
            self._t0 = time.monotonic()  # sample 0: nothing to tell an OpenAI client
        elif item.error is not None:
            await self.send_error(ws, item.error)
        # `stats` has no Realtime counterpart: a realtime call ends by the client closing

    async def send_error(self, ws: WebSocket, error: ErrorMessage) -> None:
        kind = "server_error" if error.code in _SERVER_SIDE else "invalid_request_error"
        await self._send(ws, self._error(kind, str(error.code), error.message))

    # -- client events -----------------------------------------------------------------------

    async def _on_message(
        self, ws: WebSocket, session: CallSession | None, data: str | bytes
    ) -> np.ndarray | None:
        """Handle one client message; return the audio of an append (None otherwise)."""
        event_id: str | None = None
        try:
            event = parse_event(data)
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            return await self._dispatch(ws, session, event)
        except ClientError as exc:
            err = self._error("invalid_request_error", exc.code, exc.message, exc.param, event_id)
            await self._emit(ws, session, err)
            return None

    async def _dispatch(
        self, ws: WebSocket, session: CallSession | None, event: dict[str, Any]
    ) -> np.ndarray | None:
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            return self._decode(event.get("audio"))
        if kind == "session.update":
            await self._update(ws, session, event.get("session"))
        elif kind == "input_audio_buffer.commit":
            item = self._speech_item or _id("item")
            committed = self._event("input_audio_buffer.committed", item_id=item)
            await self._emit(ws, session, {**committed, "previous_item_id": None})
        elif kind == "input_audio_buffer.clear":
            await self._emit(ws, session, self._event("input_audio_buffer.cleared"))
        elif kind == "response.cancel":
            if session is None:
                raise ClientError("response_cancel_not_active", "there is no active response")
            session.outbox.put_nowait(QueuedEvent(cancel_event_id=event.get("event_id")))
        elif kind in UNSUPPORTED_EVENTS:
            raise ClientError(
                "unsupported_event", f"{kind!r} is not supported by duplex (audio only)", "type"
            )
        elif kind == "response.create":
            if session is not None:  # before the first audio there is no call to answer
                session.request_response()
                session.outbox.put_nowait(QueuedEvent(respond=True))
        else:
            raise ClientError(
                "invalid_value",
                f"Invalid value: {kind!r}. Supported values are: {', '.join(SUPPORTED_EVENTS)}.",
                "type",
            )
        return None

    async def _update(self, ws: WebSocket, session: CallSession | None, update: Any) -> None:
        if not isinstance(update, dict):
            raise ClientError("invalid_type", "`session` must be an object", "session")
        beta = self._beta or ("type" not in update and bool(BETA_KEYS & update.keys()))
        options = self._options.updated(update, self._server)
        if self._admitted and options.format != self._options.format:
            raise ClientError(
                "session_format_locked",
                f"the audio format is fixed once audio flows ({self._options.format.beta()}); "
                "open a new connection to change it",
                "session.input_audio_format" if beta else "session.audio.input.format",
            )
        if session is not None:
            self._retune(session, options)
        self._options, self._beta = options, beta
        await self._emit(ws, session, self._event("session.updated", session=self._session()))

    def _retune(self, session: CallSession, options: RealtimeOptions) -> None:
        """The running call takes the new settings from its next step; turn detection turned
        off mid-speech ends that speech now."""
        assert self._runtime is not None and self._vad is not None  # set by `open`
        start = options.start(self._server)
        self._runtime.retune(session, start.sampling, start.noise_gate_db)
        self._vad.params = options.vad_params()
        if options.turn is None and self._speaking:
            self._stop_speech(session, round(self._samples * 1000 / self._rate))

    def _decode(self, audio: Any) -> np.ndarray:
        if not isinstance(audio, str):
            raise ClientError("invalid_type", "`audio` must be a base64 string", "audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except ValueError as exc:  # binascii.Error, or a character that is not ASCII
            raise ClientError(
                "invalid_value", f"`audio` is not valid base64: {exc}", "audio"
            ) from exc
        kind = self._options.format.kind
        if kind == "pcma":
            return alaw_decode(raw)
        if kind == "pcm" and len(raw) % 2:
            raise ClientError("invalid_value", "pcm16 audio must have an even byte count", "audio")
        return decode_audio(raw, "mulaw" if kind == "pcmu" else "pcm16")

    def _push(self, session: CallSession, pcm: np.ndarray) -> None:
        """Place audio at the running sample count (after silence for a pause), then run VAD."""
        rate = self._rate
        if self._t0 is not None:
            behind = round((time.monotonic() - self._t0) * rate) - self._samples
            if behind > CATCH_UP_S * rate:  # late audio would be dropped: restart on the clock
                pcm = np.concatenate([np.zeros(behind, dtype=np.float32), pcm])
        if not len(pcm):
            return
        # The pause is the client's own silence (it sends audio only while it talks, or
        # paused): the noise gate's floor may learn from it (not `filler`).
        session.on_audio(self._samples, pcm)
        self._samples += len(pcm)
        assert self._vad is not None  # made at admission, before the first push
        for kind, ms in self._vad.push(pcm):
            turn = self._options.turn
            if turn is None:  # turn_detection: null
                continue
            if kind == "started":
                self._speech_item, self._speaking = _id("item"), True
                # as OpenAI's includes it, but never into the speech before
                start_ms = max(self._speech_end_ms, ms - turn.prefix_padding_ms)
                self._tell_speech(session, "started", audio_start_ms=start_ms)
            elif self._speaking:  # (not when turned on mid-speech: its start was never told)
                self._stop_speech(session, ms)

    def _stop_speech(self, session: CallSession, end_ms: int) -> None:
        self._speaking, self._speech_end_ms = False, end_ms
        self._tell_speech(session, "stopped", audio_end_ms=end_ms)

    def _tell_speech(self, session: CallSession, what: str, **times: int) -> None:
        """`input_audio_buffer.speech_started` / `_stopped` of the current speech item."""
        ev = self._event(f"input_audio_buffer.speech_{what}", **times)
        session.outbox.put_nowait(QueuedEvent(event={**ev, "item_id": self._speech_item}))

    async def _emit(
        self, ws: WebSocket, session: CallSession | None, event: dict[str, Any]
    ) -> None:
        """Before admission the reader writes itself; after, the sender task does."""
        if session is None:
            await self._send(ws, event)
        else:
            session.outbox.put_nowait(QueuedEvent(event=event))

    # -- the sender's side: responses ----------------------------------------------------------

    async def _send_event(self, ws: WebSocket, item: QueuedEvent) -> None:
        if item.event.get("type") == "input_audio_buffer.speech_started":
            self._suppressed = False  # the user spoke again: the agent may be heard
        if item.event:
            await self._send(ws, item.event)
        elif item.respond:
            self._suppressed = False
        elif self._response is not None:
            await self._close_response(ws, "cancelled")
            self._suppressed = True
        else:
            msg = "there is no active response to cancel"
            err = self._error(
                "invalid_request_error",
                "response_cancel_not_active",
                msg,
                None,
                item.cancel_event_id,
            )
            await self._send(ws, err)

    async def _send_audio(self, ws: WebSocket, session: CallSession, payload: bytes) -> None:
        pcm = decode_audio(payload, session.audio.encoding)
        speaking = bool(len(pcm)) and float(np.sqrt(np.mean(np.square(pcm)))) >= AGENT_SPEECH_RMS
        if not speaking:
            if self._response is not None:
                await self._close_response(ws, "completed")
            return
        if self._suppressed:
            return
        if self._response is None:
            self._response, self._item = _id("resp"), _id("item")
            await self._send(
                ws, self._event("response.created", response=self._resp("in_progress"))
            )
        delta = alaw_encode(payload) if self._options.format.kind == "pcma" else payload
        ev = self._event(self._audio_name("delta"), **self._where())
        await self._send(ws, {**ev, "delta": base64.b64encode(delta).decode("ascii")})

    async def _close_response(
        self, ws: WebSocket, status: Literal["completed", "cancelled"]
    ) -> None:
        await self._send(ws, self._event(self._audio_name("done"), **self._where()))
        response = self._resp(status)
        if status == "cancelled":
            response["status_details"] = {"type": "cancelled", "reason": "client_cancelled"}
        await self._send(ws, self._event("response.done", response=response))
        self._response = self._item = None

    # -- rendering -----------------------------------------------------------------------------

    def _audio_name(self, suffix: str) -> str:
        return f"response.audio.{suffix}" if self._beta else f"response.output_audio.{suffix}"

    def _where(self) -> dict[str, Any]:
        return {
            "response_id": self._response,
            "item_id": self._item,
            "output_index": 0,
            "content_index": 0,
        }

    def _resp(self, status: str) -> dict[str, Any]:
        done = status != "in_progress"
        output = [
            {
                "id": self._item,
                "object": "realtime.item",
                "type": "message",
                "role": "assistant",
                "status": "completed" if done else "in_progress",
                "content": [{"type": "audio" if self._beta else "output_audio"}] if done else [],
            }
        ]
        modalities = "modalities" if self._beta else "output_modalities"
        return {
            "id": self._response,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": output,
            modalities: ["audio"],
            "usage": None,
        }

    @property
    def _rate(self) -> int:
        return self._options.format.rate

    def _session(self) -> dict[str, Any]:
        o = self._options
        turn = None if o.turn is None else o.turn.render(self._server)
        noise = o.noise_reduction_echo(self._server)
        common = {"id": self._id, "object": "realtime.session", "model": self._model}
        if self._beta:
            temperature = o.temperature_echo(self._server)
            return {
                **common,
                "modalities": ["audio"],
                "instructions": "",
                "voice": DEFAULT_MODEL,
                "input_audio_format": o.format.beta(),
                "output_audio_format": o.format.beta(),
                "input_audio_transcription": None,
                "input_audio_noise_reduction": noise,
                "turn_detection": turn,
                "temperature": temperature,
                "tools": [],
                "tool_choice": "none",
            }
        fmt = o.format.ga()
        return {
            **common,
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "none",
            "audio": {
                "input": {
                    "format": fmt,
                    "transcription": None,
                    "noise_reduction": noise,
                    "turn_detection": turn,
                },
                "output": {"format": fmt, "voice": DEFAULT_MODEL},
            },
        }

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": _id("event"), **fields}

    def _error(
        self,
        kind: str,
        code: str,
        message: str,
        param: str | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        detail = {"type": kind, "code": code, "message": message, "param": param}
        return self._event("error", error={**detail, "event_id": event_id})

    async def _send(self, ws: WebSocket, event: dict[str, Any]) -> None:
        await ws.send_text(json.dumps(event))
