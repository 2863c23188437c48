"""An OpenAI Realtime-compatible adapter for `WS /v1/realtime` (docs/realtime.md).

OpenAI clients talk in turns (`response.*`) about conversation items; the duplex model speaks
on its own clock. So the adapter admits the call at the first audio (an
`input_audio_buffer.append`, or a `conversation.item.create` that carries audio: the session
clock starts with it, the running sample count is each piece's first sample), opens a
response when the agent's chunk carries speech and closes it at the first silent chunk, and
derives `speech_started` / `speech_stopped` from an energy VAD on the user's audio. The items
it keeps are one user item per speech segment (or commit, or created item) and one assistant
item per response, with where their audio lies on the call's clock, so a client's
`conversation.item.truncate` says which agent samples it never played. Both the GA event
names and the beta ones (`OpenAI-Beta: realtime=v1` header, or beta-shaped `session.update`)
are spoken. What a `session.update` asks of the call (format, turn detection, noise
reduction, temperature) is server/adapters/realtime_options.py's job.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import WebSocket

from server.adapters.connection import receive, receive_opening
from server.adapters.realtime_options import BETA_KEYS, ClientError, RealtimeOptions
from server.runtime import Runtime
from server.session import AgentChunk, CallSession, Outgoing, State
from server.settings import Settings
from streaming.encodings import alaw_decode, alaw_encode, decode_audio
from streaming.vad import EnergyVad
from streaming.wire import ErrorCode, ErrorMessage, ProtocolError, load_json

DEFAULT_MODEL = "duplex"
AGENT_SPEECH_RMS = 0.01  # an agent chunk quieter than this (-40 dBFS) ends the response
CATCH_UP_S = 1.0  # a client this far behind the clock paused: its gap becomes silence
MAX_ITEMS = 1000  # conversation items kept (the oldest are forgotten first)
SUPPORTED_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "response.create",
    "response.cancel",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
)
UNSUPPORTED_EVENTS = ("output_audio_buffer.clear", "transcription_session.update")
# A text item is refused with this code: pipecat ends its session on any error event but this
# one and `response_cancel_not_active` (both "not acted on"); the openai-agents SDK and
# LiveKit's plugin report any error and go on. docs/realtime.md, "Conversation items".
TEXT_ITEM_CODE = "conversation_already_has_active_response"
# OpenAI's words, which LiveKit's plugin knows to be harmless (it reports any other error)
NO_RESPONSE = "Cancellation failed: no active response found"
_SERVER_SIDE = {ErrorCode.INTERNAL_ERROR, ErrorCode.SERVER_FULL, ErrorCode.SERVER_SHUTDOWN}
Status = Literal["in_progress", "completed", "incomplete"]


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


# -- the conversation --------------------------------------------------------------------------


@dataclass
class Item:
    """A conversation item the server keeps: whose audio it is and where it lies on the call's
    clock (wire samples). The audio itself is not kept: the model heard it, or said it."""

    id: str
    role: Literal["user", "assistant"]
    first_sample: int
    samples: int = 0
    status: Status = "completed"
    previous_id: str | None = None  # the item before it when it was added
    audio_end_ms: int | None = None  # a truncation: the client played the audio up to here

    def render(self, beta: bool, *, content: bool = True) -> dict[str, Any]:
        """The item as OpenAI shows it: audio content with no transcript (duplex has no text);
        an assistant item in progress has no content yet."""
        part = "input_audio" if self.role == "user" else "audio" if beta else "output_audio"
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "role": self.role,
            "status": self.status,
            "content": [{"type": part, "transcript": None}] if content else [],
        }


class Conversation:
    """The items of a call, oldest first; at most MAX_ITEMS (then the oldest are forgotten)."""

    def __init__(self) -> None:
        self._items: dict[str, Item] = {}

    def add(self, item: Item) -> None:
        """Keep `item` after the others."""
        item.previous_id = next(reversed(self._items), None)
        self._items[item.id] = item
        while len(self._items) > MAX_ITEMS:
            del self._items[next(iter(self._items))]

    def find(self, item_id: Any, verb: str) -> Item:
        """The item `item_id` names, else `item_<verb>_invalid_item_id`."""
        item = self._items.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise ClientError(
                f"item_{verb}_invalid_item_id",
                f"there is no conversation item with id {item_id!r}",
                "item_id",
            )
        return item

    def delete(self, item_id: str) -> None:
        del self._items[item_id]

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._items


@dataclass
class Response:
    """The response open on the sender's side: its one assistant item, and what its usage
    counts."""

    id: str
    item: Item
    context_tokens: int  # the model's context when it began: the response's input
    chunks: int = 0  # agent chunks sent as its audio
    interrupted: bool = False  # the caller started speaking into it (`interrupt_response`)


# -- the transport -----------------------------------------------------------------------------


Action = Callable[[WebSocket], Awaitable[None]]


@dataclass
class QueuedEvent(Outgoing):
    """A realtime event (`event`), or a client event's answer (`run`), queued by the reader so
    the sender stays the socket's only writer and the conversation changes in the order the
    client sees it."""

    event: dict[str, Any] = field(default_factory=dict)
    run: Action | None = None
    event_id: str | None = None  # the client event `run` answers: its errors name it


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
        self._paused = False  # the client stopped sending: its line is silence on the clock
        # Made at admission and run whatever the turn detection, so that one turned on
        # mid-call tells times on the call's clock; events only while it is on.
        self._vad: EnergyVad | None = None
        self._speech_item: str | None = None
        self._speech_start = 0  # the current speech's first sample (prefix padding included)
        self._speaking = False  # a `speech_started` was sent and its `speech_stopped` not yet
        self._speech_end_ms = 0  # the last `speech_stopped`'s `audio_end_ms`
        self._user_mark = 0  # user audio up to this sample is in an item
        self._claimed: set[str] = set()  # item ids the client gave (created, not deleted)
        self._created: str | None = None  # the audio to hear is this created item's
        self._t0: float | None = None  # monotonic time of session sample 0
        self._units_per_chunk = 0  # the model's audio tokens per chunk, set at admission
        # sender-side state
        self._conversation = Conversation()
        self._last_user_item: str | None = None
        self._response: Response | None = None
        self._suppressed = False  # after `response.cancel`: until the caller speaks again
        self._cut = False  # after the open item's truncation: until the agent's next pause
        self._resume_token: str | None = None  # told in `session.created` (server/resume.py)

    # -- CallTransport -----------------------------------------------------------------------

    async def open(self, ws: WebSocket, runtime: Runtime) -> CallSession:
        """Answer `session.created`, then handle events until the first audio admits the call."""
        self._model = ws.query_params.get("model") or DEFAULT_MODEL
        self._beta = "realtime=v1" in ws.headers.get("openai-beta", "")
        self._server, self._runtime = runtime.settings, runtime
        if token := ws.query_params.get("resume_token"):
            return await self._resume(ws, runtime, token)
        self._resume_token = runtime.resume.new_token()
        await self._send(ws, self._session_created())
        timeout_s = runtime.settings.start_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            data = await receive_opening(ws, deadline, timeout_s, "input_audio_buffer.append")
            audio = await self._on_message(ws, None, data)
            if audio is None:
                continue
            session = runtime.open_session(self._options.start(self._server, runtime.prompts))
            runtime.resume.issue(session, ws.state.api_key, self._resume_token)
            session.adapter = self
            self._admitted = True
            self._vad = EnergyVad(self._rate, self._options.vad_params())
            self._units_per_chunk = session.user_in.frames_per_chunk * (
                session.user_in.codec.units_per_frame
            )
            self._hear(session, audio)
            return session

    async def _resume(self, ws: WebSocket, runtime: Runtime, token: str) -> CallSession:
        """`?resume_token=`: take up the session whose connection dropped, as it was (its
        conversation, open response, options and clock); the caller's side of the gap was
        silence, and the agent's audio of the gap is not sent again (deltas have no place
        on the clock). `session.created` again, for the same session, with a new token."""
        key = ws.state.api_key
        session = runtime.resume.claim(token, key)
        old = session.adapter
        if not isinstance(old, RealtimeTransport):
            runtime.resume.issue(session, key, token)  # it still waits
            raise ProtocolError(
                ErrorCode.RESUME_FAILED,
                "the token is of a native call: resume it on /v1/duplex with `start.resume`",
            )
        runtime.take_up(session, None, key)
        vars(self).update(vars(old))
        self._samples = session.expected_sample  # the gap, filled on the call's clock
        self._resume_token = session.resume_token
        session.adapter = self
        await self._send(ws, self._session_created(resumed=True))
        return session

    def _session_created(self, *, resumed: bool = False) -> dict[str, Any]:
        """`session.created`, with the resume token (an extension: null when the server does
        not resume calls; it works once the first audio has admitted the call)."""
        event = self._event("session.created", session=self._session())
        return {**event, "resume_token": self._resume_token, "resumed": resumed}

    async def read_loop(self, ws: WebSocket, session: CallSession) -> None:
        keeper = asyncio.create_task(self._keep_clock(session))
        try:
            while True:
                audio = await self._on_message(ws, session, await receive(ws))
                if audio is not None:
                    self._hear(session, audio)
        finally:
            keeper.cancel()

    async def send(self, ws: WebSocket, session: CallSession, item: Outgoing) -> None:
        if isinstance(item, QueuedEvent):
            await self._send_event(ws, item)
        elif item.audio is not None:
            await self._send_audio(ws, session, item.audio)
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
        """Handle one client message; return the audio it carries (None if none): an
        append's, or a created item's (then `_created` names the item)."""
        event_id: str | None = None
        try:
            event = parse_event(data)
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            return await self._dispatch(ws, session, event, event_id)
        except ClientError as exc:
            await self._emit(ws, session, self._client_error(exc, event_id))
            return None

    async def _dispatch(
        self, ws: WebSocket, session: CallSession | None, event: dict[str, Any], eid: str | None
    ) -> np.ndarray | None:
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            return self._decode(event.get("audio"), "audio")
        if kind == "conversation.item.create":
            return self._item_audio(event.get("item"))
        if kind == "session.update":
            await self._update(ws, session, event.get("session"))
        elif kind == "input_audio_buffer.commit":
            item = None
            if self._samples > self._user_mark:  # audio since the last user item
                item = Item(_id("item"), "user", self._user_mark, self._samples - self._user_mark)
                self._user_mark = self._samples
            await self._later(ws, session, eid, functools.partial(self._commit, item))
        elif kind == "input_audio_buffer.clear":
            await self._emit(ws, session, self._event("input_audio_buffer.cleared"))
        elif kind == "conversation.item.truncate":
            index = _int(event.get("content_index"), "content_index")
            end_ms = _int(event.get("audio_end_ms"), "audio_end_ms")
            truncate = functools.partial(
                self._truncate, session, event.get("item_id"), index, end_ms
            )
            await self._later(ws, session, eid, truncate)
        elif kind == "conversation.item.delete":
            await self._later(ws, session, eid, functools.partial(self._delete, event))
        elif kind == "conversation.item.retrieve":
            await self._later(ws, session, eid, functools.partial(self._retrieve, event))
        elif kind == "response.cancel":
            if session is None:
                raise ClientError("response_cancel_not_active", NO_RESPONSE)
            await self._later(ws, session, eid, self._cancel)
        elif kind in UNSUPPORTED_EVENTS:
            raise ClientError(
                "unsupported_event", f"{kind!r} is not supported by duplex (audio only)", "type"
            )
        elif kind == "response.create":
            if session is not None:  # before the first audio there is no call to answer
                session.request_response()
                await self._later(ws, session, eid, self._respond)
        else:
            raise ClientError(
                "invalid_value",
                f"Invalid value: {kind!r}. Supported values are: {', '.join(SUPPORTED_EVENTS)}.",
                "type",
            )
        return None

    def _item_audio(self, item: Any) -> np.ndarray:
        """A `conversation.item.create`'s audio: only a user message of `input_audio` parts
        can be heard (duplex has no text input)."""
        if not isinstance(item, dict):
            raise ClientError("invalid_type", "`item` must be an object", "item")
        content = item.get("content")
        parts = content if isinstance(content, list) else []
        kinds = [p.get("type") if isinstance(p, dict) else None for p in parts]
        what, param = "", "item"
        if item.get("type", "message") != "message":
            what, param = f"a {item.get('type')!r} item", "item.type"
        elif item.get("role") != "user":
            what, param = f"a message of role {item.get('role')!r}", "item.role"
        elif not kinds:
            what, param = "a message with no content", "item.content"
        elif set(kinds) != {"input_audio"}:
            i = next(i for i, k in enumerate(kinds) if k != "input_audio")
            what, param = f"{kinds[i]!r} content", f"item.content[{i}].type"
        if what:
            raise ClientError(
                TEXT_ITEM_CODE,
                f"duplex is audio in, audio out: {what} cannot be heard (no text, tools or "
                "instructions); a conversation item may only carry the caller's audio, a user "
                "message of `input_audio` parts",
                param,
            )
        item_id = item.get("id")
        if item_id is None:
            item_id = _id("item")
        elif not isinstance(item_id, str):
            raise ClientError("invalid_type", "`item.id` must be a string", "item.id")
        elif item_id in self._claimed or item_id in self._conversation:
            raise ClientError(
                "item_create_duplicate_item_id", f"item id {item_id!r} is already in use", "item.id"
            )
        pcm = [
            self._decode(p.get("audio"), f"item.content[{i}].audio") for i, p in enumerate(parts)
        ]
        self._claimed.add(item_id)
        self._created = item_id
        return np.concatenate(pcm)

    async def _update(self, ws: WebSocket, session: CallSession | None, update: Any) -> None:
        if not isinstance(update, dict):
            raise ClientError("invalid_type", "`session` must be an object", "session")
        beta = self._beta or ("type" not in update and bool(BETA_KEYS & update.keys()))
        options = self._options.updated(update, self._server, opened=self._admitted)
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

    def _decode(self, audio: Any, param: str) -> np.ndarray:
        if not isinstance(audio, str):
            raise ClientError("invalid_type", f"`{param}` must be a base64 string", param)
        try:
            raw = base64.b64decode(audio, validate=True)
        except ValueError as exc:  # binascii.Error, or a character that is not ASCII
            raise ClientError(
                "invalid_value", f"`{param}` is not valid base64: {exc}", param
            ) from exc
        kind = self._options.format.kind
        if kind == "pcma":
            return alaw_decode(raw)
        if kind == "pcm" and len(raw) % 2:
            raise ClientError("invalid_value", "pcm16 audio must have an even byte count", param)
        return decode_audio(raw, "mulaw" if kind == "pcmu" else "pcm16")

    # -- the caller's audio on the clock -------------------------------------------------------

    def _hear(self, session: CallSession, pcm: np.ndarray) -> None:
        """Appended audio goes to the call and the VAD; a created item's audio to the call
        (its speech is the item: not told), and the item into the conversation."""
        created, self._created, self._paused = self._created, None, False
        self._push(session, pcm, tell=created is None)
        if created is not None:
            item = Item(created, "user", self._samples - len(pcm), len(pcm))
            self._user_mark = self._samples
            self._queue(session, None, functools.partial(self._add_user_item, item))

    async def _keep_clock(self, session: CallSession) -> None:
        """While the client sends no audio (push-to-talk, or a client that only listens for a
        while), its line is silence on the clock, as OpenAI's session stays open: once it is
        CATCH_UP_S behind, each tick fills it up to now, until it sends again. (Left unfilled,
        those chunks would be the model's estimates, then dropped as late.)"""
        while True:
            await asyncio.sleep(session.tick_s)
            behind = self._behind()
            if (
                session.state is State.LIVE
                and behind > 0
                and (self._paused or behind > CATCH_UP_S * self._rate)
            ):
                self._paused = True
                self._push(session, np.zeros(0, dtype=np.float32))

    def _behind(self) -> int:
        """How many samples the client's audio trails the clock (0 before sample 0 is known)."""
        if self._t0 is None:
            return 0
        return round((time.monotonic() - self._t0) * self._rate) - self._samples

    def _push(self, session: CallSession, pcm: np.ndarray, *, tell: bool = True) -> None:
        """Place audio at the running sample count (after silence for a pause), then run VAD;
        `tell`: its speech is told (`speech_started` / `_stopped`, and an item)."""
        behind = self._behind()
        if self._paused or behind > CATCH_UP_S * self._rate:
            pcm = np.concatenate([np.zeros(max(0, behind), dtype=np.float32), pcm])
        if not len(pcm):
            return
        # The pause is the client's own silence (it sends audio only while it talks, or
        # paused): the noise gate's floor may learn from it (not `filler`).
        session.on_audio(self._samples, pcm)
        self._samples += len(pcm)
        assert self._vad is not None  # made at admission, before the first push
        for kind, ms in self._vad.push(pcm):
            turn = self._options.turn
            if turn is None or not tell:  # turn_detection: null, or an item's audio
                continue
            if kind == "started":
                self._speech_item, self._speaking = _id("item"), True
                # as OpenAI's includes it, but never into the speech before
                start_ms = max(self._speech_end_ms, ms - turn.prefix_padding_ms)
                self._speech_start = start_ms * self._rate // 1000
                started = self._event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=start_ms,
                    item_id=self._speech_item,
                )
                self._queue(session, None, functools.partial(self._speech_started, started))
            elif self._speaking:  # (not when turned on mid-speech: its start was never told)
                self._stop_speech(session, ms)

    def _stop_speech(self, session: CallSession, end_ms: int) -> None:
        """`speech_stopped`, then the speech is committed as a user item (as OpenAI's server
        VAD does)."""
        assert self._speech_item is not None  # told with its start
        self._speaking, self._speech_end_ms = False, end_ms
        start = max(self._user_mark, self._speech_start)
        end = max(start, end_ms * self._rate // 1000)
        self._user_mark = max(self._user_mark, end)
        stopped = self._event(
            "input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=self._speech_item
        )
        item = Item(self._speech_item, "user", start, end - start)
        self._queue(session, None, functools.partial(self._speech_stopped, stopped, item))

    # -- the reader's hand-over to the sender ------------------------------------------------

    async def _later(
        self, ws: WebSocket, session: CallSession | None, event_id: str | None, run: Action
    ) -> None:
        """Answer a client event in order: before admission the reader does it, after it the
        sender task."""
        if session is None:
            await self._run(ws, run, event_id)
        else:
            self._queue(session, event_id, run)

    def _queue(self, session: CallSession, event_id: str | None, run: Action) -> None:
        session.outbox.put_nowait(QueuedEvent(run=run, event_id=event_id))

    async def _emit(
        self, ws: WebSocket, session: CallSession | None, event: dict[str, Any]
    ) -> None:
        """Before admission the reader writes itself; after, the sender task does."""
        if session is None:
            await self._send(ws, event)
        else:
            session.outbox.put_nowait(QueuedEvent(event=event))

    async def _run(self, ws: WebSocket, run: Action, event_id: str | None) -> None:
        try:
            await run(ws)
        except ClientError as exc:
            await self._send(ws, self._client_error(exc, event_id))

    # -- the sender's side: the conversation ----------------------------------------------------

    async def _send_event(self, ws: WebSocket, item: QueuedEvent) -> None:
        if item.run is not None:
            await self._run(ws, item.run, item.event_id)
        else:
            await self._send(ws, item.event)

    async def _speech_started(self, started: dict[str, Any], ws: WebSocket) -> None:
        self._suppressed = False  # the user spoke again: the agent may be heard
        turn = self._options.turn
        if self._response is not None and turn is not None and turn.interrupt_response:
            self._response.interrupted = True
        await self._send(ws, started)

    async def _speech_stopped(self, stopped: dict[str, Any], item: Item, ws: WebSocket) -> None:
        await self._send(ws, stopped)
        await self._add_user_item(item, ws, committed=True)

    async def _commit(self, item: Item | None, ws: WebSocket) -> None:
        """`input_audio_buffer.committed`, then the user item it made; with no audio since
        the last user item, none (OpenAI refuses such a commit, which some frameworks take as
        fatal): it names the last user item, if any."""
        if item is not None:
            await self._add_user_item(item, ws, committed=True)
            return
        committed = self._event(
            "input_audio_buffer.committed", item_id=self._last_user_item or _id("item")
        )
        await self._send(ws, {**committed, "previous_item_id": None})

    async def _add_user_item(self, item: Item, ws: WebSocket, *, committed: bool = False) -> None:
        """Keep a user item and tell it (`committed`: after `input_audio_buffer.committed`)."""
        self._conversation.add(item)
        self._last_user_item = item.id
        if committed:
            ev = self._event("input_audio_buffer.committed", item_id=item.id)
            await self._send(ws, {**ev, "previous_item_id": item.previous_id})
        await self._item_added(ws, item)
        await self._item_done(ws, item)

    async def _item_added(self, ws: WebSocket, item: Item) -> None:
        """`conversation.item.added` (the beta's `conversation.item.created`): an assistant
        item in progress has no content yet."""
        kind = "conversation.item.created" if self._beta else "conversation.item.added"
        rendered = item.render(self._beta, content=item.status != "in_progress")
        await self._send(ws, self._event(kind, previous_item_id=item.previous_id, item=rendered))

    async def _item_done(self, ws: WebSocket, item: Item) -> None:
        """`conversation.item.done` (GA only: the beta has no such event)."""
        if not self._beta:
            done = self._event(
                "conversation.item.done", previous_item_id=item.previous_id, item=item.render(False)
            )
            await self._send(ws, done)

    async def _truncate(
        self, session: CallSession | None, item_id: Any, index: int, end_ms: int, ws: WebSocket
    ) -> None:
        """The client played the agent's item up to `end_ms` and no further (an interruption):
        recorded, counted, and told to the call (`CallSession.agent_unplayed`); the open
        response it cuts is cancelled, and the rest of that utterance is not sent."""
        item = self._conversation.find(item_id, "truncate")
        if item.role != "assistant":
            raise ClientError(
                "invalid_value",
                "only the agent's (assistant) audio items can be truncated",
                "item_id",
            )
        if index != 0:
            raise ClientError(
                "invalid_value",
                f"content_index {index}: an item has one audio part, 0",
                "content_index",
            )
        # At most what was sent (a client that counts playback by the wall clock may name
        # more), or what an earlier truncation left: only what this one drops is new.
        rate, left = self._rate, item.samples
        if item.audio_end_ms is not None:
            left = min(left, item.audio_end_ms * rate // 1000)
        end_ms = min(end_ms, left * 1000 // rate)
        item.audio_end_ms = end_ms
        if session is not None:
            session.agent_unplayed(
                item.first_sample + end_ms * rate // 1000, item.first_sample + left
            )
        truncated = self._event(
            "conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=end_ms
        )
        await self._send(ws, truncated)
        if self._response is not None and self._response.item is item:
            self._cut = True
            await self._close_response(ws, "cancelled")

    async def _delete(self, event: dict[str, Any], ws: WebSocket) -> None:
        """Forget an item (what the model heard or said stays in its context). The open
        response's item is cut as a truncation cuts it (LiveKit deletes, rather than
        truncates, an item it never played)."""
        item = self._conversation.find(event.get("item_id"), "delete")
        self._conversation.delete(item.id)
        self._claimed.discard(item.id)
        await self._send(ws, self._event("conversation.item.deleted", item_id=item.id))
        if self._response is not None and self._response.item is item:
            self._cut = True
            await self._close_response(ws, "cancelled")

    async def _retrieve(self, event: dict[str, Any], ws: WebSocket) -> None:
        item = self._conversation.find(event.get("item_id"), "retrieve")
        await self._send(
            ws, self._event("conversation.item.retrieved", item=item.render(self._beta))
        )

    async def _cancel(self, ws: WebSocket) -> None:
        if self._response is None:
            raise ClientError("response_cancel_not_active", NO_RESPONSE)
        await self._close_response(ws, "cancelled")
        self._suppressed = True

    async def _respond(self, ws: WebSocket) -> None:
        """`response.create`: audio suppressed by a cancel may be heard again."""
        self._suppressed = False

    # -- the sender's side: responses ----------------------------------------------------------

    async def _send_audio(self, ws: WebSocket, session: CallSession, chunk: AgentChunk) -> None:
        pcm = decode_audio(chunk.payload, session.audio.encoding)
        speaking = bool(len(pcm)) and float(np.sqrt(np.mean(np.square(pcm)))) >= AGENT_SPEECH_RMS
        if not speaking:
            self._cut = False  # the truncated utterance is over
            if self._response is not None:
                await self._close_response(ws, "completed")
            return
        # Withheld, and left in the model's context: made silence there, the agent would only
        # ever be starting an utterance again, every chunk withheld in turn (never a pause).
        if self._suppressed or self._cut:
            return
        if self._response is None:
            await self._open_response(ws, session, chunk.first_sample)
        assert self._response is not None
        self._response.chunks += 1
        self._response.item.samples += len(pcm)
        delta = alaw_encode(chunk.payload) if self._options.format.kind == "pcma" else chunk.payload
        ev = self._event(self._audio_name("delta"), **self._where())
        await self._send(ws, {**ev, "delta": base64.b64encode(delta).decode("ascii")})

    async def _open_response(self, ws: WebSocket, session: CallSession, first_sample: int) -> None:
        """`response.created`, its output item (added to the conversation) and audio part, in
        OpenAI's order."""
        item = Item(_id("item"), "assistant", first_sample, status="in_progress")
        self._response = Response(_id("resp"), item, session.stats.context_tokens)
        await self._send(ws, self._event("response.created", response=self._resp()))
        self._conversation.add(item)
        added = self._event(
            "response.output_item.added",
            response_id=self._response.id,
            output_index=0,
            item=item.render(self._beta, content=False),
        )
        await self._send(ws, added)
        await self._item_added(ws, item)
        await self._send(ws, self._event("response.content_part.added", **self._part()))

    async def _close_response(
        self, ws: WebSocket, status: Literal["completed", "cancelled"]
    ) -> None:
        """The audio part, the output item and the response done, in OpenAI's order. A
        response the caller talked into is cancelled (`turn_detected`), as OpenAI's is."""
        assert self._response is not None
        response, item = self._response, self._response.item
        reason = "turn_detected" if response.interrupted else "client_cancelled"
        if response.interrupted:
            status = "cancelled"
        await self._send(ws, self._event(self._audio_name("done"), **self._where()))
        await self._send(ws, self._event("response.content_part.done", **self._part()))
        item.status = "completed" if status == "completed" else "incomplete"
        done = self._event(
            "response.output_item.done",
            response_id=response.id,
            output_index=0,
            item=item.render(self._beta),
        )
        await self._send(ws, done)
        if item.id in self._conversation:  # (unless the client deleted it meanwhile)
            await self._item_done(ws, item)
        details = {"type": "cancelled", "reason": reason} if status == "cancelled" else None
        await self._send(
            ws, self._event("response.done", response=self._resp(status, details, usage=True))
        )
        self._response = None

    # -- rendering -----------------------------------------------------------------------------

    def _audio_name(self, suffix: str) -> str:
        return f"response.audio.{suffix}" if self._beta else f"response.output_audio.{suffix}"

    def _where(self) -> dict[str, Any]:
        assert self._response is not None
        return {
            "response_id": self._response.id,
            "item_id": self._response.item.id,
            "output_index": 0,
            "content_index": 0,
        }

    def _part(self) -> dict[str, Any]:
        return {**self._where(), "part": {"type": "audio", "transcript": None}}

    def _resp(
        self, status: str = "in_progress", details: Any = None, *, usage: bool = False
    ) -> dict[str, Any]:
        """The response object: its output item once it is done, and then its usage: the
        model's context when it began as input, the audio tokens of its chunks as output
        (all of duplex's tokens are audio)."""
        assert self._response is not None
        r = self._response
        modalities = "modalities" if self._beta else "output_modalities"
        out: dict[str, Any] = {
            "id": r.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": [r.item.render(self._beta)] if usage else [],
            modalities: ["audio"],
            "usage": None,
        }
        if usage:
            tokens_in, tokens_out = r.context_tokens, r.chunks * self._units_per_chunk
            out["usage"] = {
                "total_tokens": tokens_in + tokens_out,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "input_token_details": {"audio_tokens": tokens_in, "text_tokens": 0},
                "output_token_details": {"audio_tokens": tokens_out, "text_tokens": 0},
            }
        return out

    @property
    def _rate(self) -> int:
        return self._options.format.rate

    def _session(self) -> dict[str, Any]:
        o = self._options
        turn = None if o.turn is None else o.turn.render(self._server)
        noise = o.noise_reduction_echo(self._server)
        common = {"id": self._id, "object": "realtime.session"}
        if self._beta:
            temperature = o.temperature_echo(self._server)
            return {
                **common,
                "model": None,  # the beta session's `model` may only name one of OpenAI's
                "modalities": ["audio"],
                "instructions": "",
                "voice": o.voice or DEFAULT_MODEL,
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
            "model": self._model,
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
                "output": {"format": fmt, "voice": o.voice or DEFAULT_MODEL},
            },
        }

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": _id("event"), **fields}

    def _client_error(self, exc: ClientError, event_id: str | None) -> dict[str, Any]:
        return self._error("invalid_request_error", exc.code, exc.message, exc.param, event_id)

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


def _int(value: Any, param: str) -> int:
    """A non-negative integer field of a client event."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ClientError("invalid_value", f"`{param}` must be a non-negative integer", param)
    return value
