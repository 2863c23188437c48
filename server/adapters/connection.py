"""What every WebSocket call shares, whatever its protocol: access checks, admission, one
reader and one sender task, errors turned into closes in one place, cleanup in `finally`.

A protocol adapter (`server/adapters/native.py`, and bridges to other protocols) implements
`CallTransport`: how the call opens, how client messages become `on_audio` / `on_end`, and
how each outgoing item is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from fastapi import WebSocket
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect, WebSocketState

from server.runtime import Runtime
from server.session import CallSession, Outgoing
from server.settings import Settings
from streaming.wire import ErrorCode, ErrorMessage, ProtocolError

log = logging.getLogger("duplex.calls")

CLOSE_TIMEOUT_S = 2.0


class Disconnected(Exception):
    """The client went away; `code`: its close code (`LOST`: no close frame came)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# The connection ended without the client's close frame (a network drop: uvicorn says 1005
# once the handshake is done, 1006 before): such a call may resume. A client that hangs up
# sends a close frame with its code.
LOST = (1005, 1006)


class CallTransport(Protocol):
    async def open(self, ws: WebSocket, runtime: Runtime) -> CallSession:
        """Read the client's opening and admit the call (raise ProtocolError to refuse)."""
        ...

    async def read_loop(self, ws: WebSocket, session: CallSession) -> None:
        """Turn client messages into the session's input until the client is done."""
        ...

    async def send(self, ws: WebSocket, session: CallSession, item: Outgoing) -> None:
        """Write one outgoing item (anything but the close) in this protocol."""
        ...

    async def send_error(self, ws: WebSocket, error: ErrorMessage) -> None:
        """Tell the client why it is being closed, if the protocol has a way to."""
        ...


async def serve_call(ws: WebSocket, runtime: Runtime, transport: CallTransport) -> None:
    await ws.accept()
    session: CallSession | None = None
    sender: asyncio.Task[None] | None = None
    parked = False  # the connection dropped and the call waits for a resume
    try:
        ws.state.api_key = check_access(ws, runtime.settings)
        session = await _unless_draining(transport.open(ws, runtime), runtime.ticker.drain_started)
        sender = asyncio.create_task(_send_loop(ws, session, runtime, transport))
        await _converse(ws, session, transport)
        await asyncio.wait_for(asyncio.shield(sender), CLOSE_TIMEOUT_S)
    except ProtocolError as exc:
        runtime.metrics.errors.labels(exc.code.value).inc()
        if session is not None and sender is not None:
            session.fail(exc.code, exc.message, int(exc.close_code))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(sender), CLOSE_TIMEOUT_S)
        else:
            await close_with_error(ws, transport, exc)
    except (Disconnected, WebSocketDisconnect) as exc:
        # a client that hangs up sends a close frame; a lost connection may be resumed
        if exc.code in LOST and session is not None:
            parked = runtime.park(session)
            runtime.metrics.calls_lost.labels("waiting" if parked else "ended").inc()
    except TimeoutError:
        pass
    except Exception:
        log.exception("call %s failed", session.id if session else "-")
        runtime.metrics.errors.labels(ErrorCode.INTERNAL_ERROR.value).inc()
        await close_with_error(
            ws, transport, ProtocolError(ErrorCode.INTERNAL_ERROR, "internal server error")
        )
    finally:
        if session is not None and not parked:
            runtime.ticker.discard(session)
        if sender is not None:
            sender.cancel()


def check_access(ws: HTTPConnection, settings: Settings) -> str | None:
    """API key and Origin checks (both off unless configured); the key the client gave."""
    origin = ws.headers.get("origin")
    if settings.allowed_origins and origin is not None and origin not in settings.allowed_origins:
        raise ProtocolError(ErrorCode.FORBIDDEN_ORIGIN, f"origin {origin!r} is not allowed")
    if not settings.api_keys:
        return None
    auth = ws.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ws.query_params.get("token")
    if not key:
        raise ProtocolError(
            ErrorCode.UNAUTHORIZED,
            "an API key is required: `Authorization: Bearer KEY` header or `?token=KEY`",
        )
    if not any(hmac.compare_digest(key, k) for k in settings.api_keys):
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "the API key is not valid")
    return key


async def receive(ws: WebSocket) -> str | bytes:
    """The next client message, text or binary. A text message that is not UTF-8 arrives
    with its bad bytes as lone surrogates (server/uvicorn_server.py): it is `invalid_json`,
    and 1007 is what RFC 6455 (section 8.1) closes such a connection with."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise Disconnected(int(message.get("code", 1006)))
    if message.get("text") is not None:
        text = str(message["text"])
        if not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                raise ProtocolError(
                    ErrorCode.INVALID_JSON, "text message is not valid UTF-8"
                ) from None
        return text
    return bytes(message.get("bytes") or b"")


async def receive_opening(
    ws: WebSocket, deadline: float, timeout_s: float, what: str
) -> str | bytes:
    """The next client message before the call's opening deadline, else `start_timeout`."""
    try:
        return await asyncio.wait_for(receive(ws), max(0.0, deadline - time.monotonic()))
    except TimeoutError as exc:
        raise ProtocolError(ErrorCode.START_TIMEOUT, f"no {what} within {timeout_s:g} s") from exc


async def _unless_draining(
    opening: Coroutine[Any, Any, CallSession], draining: asyncio.Event
) -> CallSession:
    """The call's opening, unless the server starts draining first: a client that has not
    started its call yet is told `server_shutdown` then, not cut off bare when the grace
    period ends. (An adapter admits without awaiting anything after it, so a cancelled
    opening holds no slot.)"""
    opened = asyncio.ensure_future(opening)
    drain = asyncio.ensure_future(draining.wait())
    try:
        await asyncio.wait({opened, drain}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        drain.cancel()
        if not opened.done():
            opened.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opened
    if opened.cancelled():
        raise ProtocolError(ErrorCode.SERVER_SHUTDOWN, "the server is shutting down")
    return opened.result()


async def _converse(ws: WebSocket, session: CallSession, transport: CallTransport) -> None:
    """Read the client until the call is done (normally, by error, or by the ticker)."""
    reader = asyncio.create_task(transport.read_loop(ws, session))
    done = asyncio.create_task(session.done.wait())
    try:
        finished, _ = await asyncio.wait({reader, done}, return_when=asyncio.FIRST_COMPLETED)
        if reader in finished:
            reader.result()  # re-raises a ProtocolError or a disconnect
            await done  # the client said it is done: the ticker finishes the call
    finally:
        reader.cancel()
        done.cancel()


async def _send_loop(
    ws: WebSocket, session: CallSession, runtime: Runtime, transport: CallTransport
) -> None:
    """The only writer of this socket once the call is admitted."""
    metrics = runtime.metrics
    while True:
        item = await session.outbox.get()
        if item.close_code is not None:
            if ws.client_state is WebSocketState.CONNECTED:
                await ws.close(item.close_code, item.close_reason)
            return
        await transport.send(ws, session, item)
        if item.audio is None:
            continue
        session.queued_audio -= 1
        if item.end_marker:
            continue
        session.stats.frames_out += 1
        metrics.frames_out.inc()
        if item.newest_arrival is not None:
            latency = time.monotonic() - item.newest_arrival
            session.stats.latencies_ms.append(latency * 1000)
            metrics.latency.observe(latency)


async def close_with_error(ws: WebSocket, transport: CallTransport, exc: ProtocolError) -> None:
    """The one place an error before admission becomes a message and a close code."""
    if ws.client_state is not WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):
        error = ErrorMessage(code=exc.code, message=exc.message)
        await asyncio.wait_for(transport.send_error(ws, error), CLOSE_TIMEOUT_S)
        await asyncio.wait_for(ws.close(int(exc.close_code), exc.code.value), CLOSE_TIMEOUT_S)
