"""A small async client for `/v1/realtime`, the OpenAI Realtime protocol the server speaks
(docs/realtime.md), for `duplex loadtest --protocol realtime` and tests.

It speaks the JSON events only, as any OpenAI Realtime app does: the caller's audio goes out as
base64 `input_audio_buffer.append`, the agent's comes back as `response.output_audio.delta`
(the beta dialect's `response.audio.delta`). Deltas carry no position on the call's clock, and
the server sends only the agent's speech, so what a caller hears is what its player makes of
the deltas: `Playback` plays each one as it arrives, or after the one before it, and
`conversation.item.truncate` tells the server how much of an item was played when the caller
cut the agent off.

    async with RealtimeClient.connect(url, rate=24000) as c:
        ...  # c.session is the server's session (after our `session.update`)
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from clients.client import (
    CONNECT_FAILED,
    CONNECTION_CLOSED,
    PROTOCOL_VIOLATION,
    TIMEOUT,
    DuplexError,
)
from streaming.encodings import decode_audio, encode_audio

__all__ = [
    "AUDIO_DELTAS",
    "REFUSALS",
    "Playback",
    "RealtimeClient",
    "RealtimeEncoding",
    "ServerEvent",
]

RealtimeEncoding = Literal["pcm16", "mulaw"]
# The GA name and the beta one: the server sends one of them, by the connection's dialect.
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")
# Server errors after which the server closes the connection: the call did not get a slot.
REFUSALS = ("server_full", "server_shutdown")


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One server event as it arrived; `pcm` is an audio delta's audio (float32 at the wire
    rate), else None."""

    type: str
    data: dict[str, Any]
    arrival: float  # time.monotonic() when it was read off the socket
    pcm: np.ndarray | None = None

    @property
    def error(self) -> tuple[str, str] | None:
        """An `error` event's code and message (None for any other event)."""
        return _error(self.data) if self.type == "error" else None


def audio_format(encoding: RealtimeEncoding, rate: int) -> dict[str, Any]:
    """The GA `format` object of a wire encoding and rate."""
    if encoding == "mulaw":
        return {"type": "audio/pcmu"}
    return {"type": "audio/pcm", "rate": rate}


class RealtimeClient:
    """One Realtime session on an open WebSocket. Build it with `RealtimeClient.connect`."""

    def __init__(
        self, ws: ClientConnection, encoding: RealtimeEncoding, session: dict[str, Any]
    ) -> None:
        self._ws = ws
        self.encoding = encoding
        self.session = session  # the server's, as `session.updated` showed it
        self._last_error: ServerEvent | None = None

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        encoding: RealtimeEncoding = "pcm16",
        rate: int = 24000,
        headers: Mapping[str, str] | None = None,
        open_timeout: float = 10.0,
    ) -> AsyncIterator[RealtimeClient]:
        """Open the socket, read `session.created`, set the audio format (`session.update`)
        and wait for `session.updated`; close on exit (the call ends with the socket)."""
        try:
            ws = await ws_connect(
                url,
                additional_headers=dict(headers) if headers else None,
                open_timeout=open_timeout,
                compression=None,
                proxy=None,
            )
        except InvalidStatus as exc:
            raise DuplexError(
                CONNECT_FAILED,
                f"{url} refused the WebSocket upgrade: HTTP {exc.response.status_code}",
            ) from exc
        except (OSError, TimeoutError, InvalidURI, WebSocketException) as exc:
            raise DuplexError(CONNECT_FAILED, f"cannot connect to {url}: {exc}") from exc
        try:
            await _expect(ws, "session.created", open_timeout)
            fmt = audio_format(encoding, rate)
            update = {
                "type": "realtime",
                "audio": {"input": {"format": fmt}, "output": {"format": fmt}},
            }
            await ws.send(json.dumps({"type": "session.update", "session": update}))
            updated = await _expect(ws, "session.updated", open_timeout)
            yield cls(ws, encoding, updated["session"])
        finally:
            await ws.close()

    async def append(self, pcm: np.ndarray) -> None:
        """Send float32 mono audio at the wire rate (`input_audio_buffer.append`)."""
        audio = base64.b64encode(encode_audio(pcm, self.encoding)).decode("ascii")
        await self._send({"type": "input_audio_buffer.append", "audio": audio})

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """Say the agent's item was played up to `audio_end_ms` and the rest dropped."""
        await self._send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )

    async def close(self) -> None:
        """End the call: a Realtime call ends when the client closes its socket."""
        await self._ws.close()

    async def events(self) -> AsyncIterator[ServerEvent]:
        """Yield server events until the connection closes. A close the client made, or a
        normal one, ends the iteration; any other raises DuplexError with the code of the
        `error` event that preceded it (the server's reason), else `connection_closed`."""
        while True:
            try:
                data = await self._ws.recv()
            except ConnectionClosed as exc:
                # ended by us (we closed first, or the close never completed), or normally
                if exc.rcvd is None or exc.rcvd.code == 1000 or exc.rcvd_then_sent is False:
                    return
                raise self._closed(exc.rcvd.code) from exc
            arrival = time.monotonic()
            if isinstance(data, bytes):
                raise DuplexError(PROTOCOL_VIOLATION, "a binary message on a Realtime socket")
            event = _parse(data)
            kind = str(event["type"])
            pcm = None
            if kind in AUDIO_DELTAS:
                pcm = decode_audio(base64.b64decode(event.get("delta", "")), self.encoding)
            ev = ServerEvent(kind, event, arrival, pcm)
            if kind == "error":
                self._last_error = ev
            yield ev

    def _closed(self, code: int) -> DuplexError:
        if self._last_error is None or self._last_error.error is None:
            return DuplexError(CONNECTION_CLOSED, "the server closed the connection", code)
        return DuplexError(*self._last_error.error, code)

    async def _send(self, event: dict[str, Any]) -> None:
        try:
            await self._ws.send(json.dumps(event))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            raise DuplexError(
                CONNECTION_CLOSED, "the connection closed while sending", code
            ) from exc


def _error(event: dict[str, Any]) -> tuple[str, str]:
    detail = event.get("error")
    if not isinstance(detail, dict):
        return "unknown", ""
    return str(detail.get("code", "unknown")), str(detail.get("message", ""))


def _parse(text: str) -> dict[str, Any]:
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DuplexError(PROTOCOL_VIOLATION, f"malformed event: {text[:200]}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise DuplexError(PROTOCOL_VIOLATION, f"an event without a type: {text[:200]}")
    return event


async def _expect(ws: ClientConnection, kind: str, timeout_s: float) -> dict[str, Any]:
    """The next event, which must be `kind`; an `error` is raised with its code (and the
    close code, when the server closed after it)."""
    try:
        data = await asyncio.wait_for(ws.recv(), timeout_s)
    except TimeoutError as exc:
        raise DuplexError(TIMEOUT, f"no {kind!r} within {timeout_s:g} s") from exc
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        raise DuplexError(CONNECTION_CLOSED, f"closed before {kind!r}", code) from exc
    if isinstance(data, bytes):
        raise DuplexError(PROTOCOL_VIOLATION, f"a binary message instead of {kind!r}")
    event = _parse(data)
    if event["type"] == "error":
        raise DuplexError(*_error(event))
    if event["type"] != kind:
        hint = " (is the URL a /v1/realtime endpoint?)" if kind == "session.created" else ""
        raise DuplexError(PROTOCOL_VIOLATION, f"expected {kind!r}, got {event['type']!r}{hint}")
    return event


# -- what the caller hears ---------------------------------------------------------------------


@dataclass(slots=True)
class Played:
    """One delta on the caller's playback timeline (samples from the caller's sample 0)."""

    item_id: str
    position: int
    pcm: np.ndarray
    arrival: float


@dataclass(slots=True)
class Playback:
    """A jitter-free player of the agent's deltas: each starts when it arrives, or when the one
    before it ends if that is later. Sample 0 is `t_start`, the caller's own sample 0, so what
    it played is time-aligned with what the caller said. `flush` drops what is queued but not
    yet played (a caller who talks over the agent stops hearing it)."""

    t_start: float
    rate: int
    played: list[Played] = field(default_factory=list)
    end: int = 0  # where the queued audio runs out
    dropped: int = 0  # samples flushed before they were played

    def position(self, t: float) -> int:
        return round((t - self.t_start) * self.rate)

    def play(self, item_id: str, pcm: np.ndarray, arrival: float) -> None:
        pos = max(self.position(arrival), self.end)
        self.played.append(Played(item_id, pos, pcm, arrival))
        self.end = pos + len(pcm)

    def playing(self, t: float) -> bool:
        """Whether agent audio is audible or queued at time `t`."""
        return self.end > self.position(t)

    def played_ms(self, item_id: str, t: float) -> int:
        """How much of the item's audio was played by time `t`, in ms."""
        now = self.position(t)
        n = sum(
            min(len(p.pcm), max(0, now - p.position)) for p in self.played if p.item_id == item_id
        )
        return n * 1000 // self.rate

    def flush(self, t: float) -> int:
        """Drop what is queued after time `t`; return how many samples that was."""
        now = self.position(t)
        cut = 0
        for p in self.played:
            keep = min(len(p.pcm), max(0, now - p.position))
            cut += len(p.pcm) - keep
            p.pcm = p.pcm[:keep]  # (kept even when emptied: one entry per delta)
        self.end = min(self.end, max(now, 0))
        self.dropped += cut
        return cut
