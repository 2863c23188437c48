"""The FastAPI app: routes only move bytes between sockets and sessions.

Errors become closes in one place (`_close_with_error`); every call's cleanup is in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Response, WebSocket
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.websockets import WebSocketDisconnect, WebSocketState

from server.protocol import (
    EndMessage,
    ErrorCode,
    ErrorMessage,
    ProtocolError,
    StartMessage,
    parse_client_message,
)
from server.runtime import Runtime
from server.session import CallSession
from server.settings import Settings

log = logging.getLogger("duplex.app")

_CLOSE_TIMEOUT_S = 2.0


class _Disconnected(Exception):
    """The client went away."""


def create_app(runtime: Runtime) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(runtime.ticker.run(), name="duplex-ticker")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            runtime.ticker.shutdown()

    app = FastAPI(title="duplex", lifespan=lifespan)
    app.state.runtime = runtime

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ticker = runtime.ticker
        status = "draining" if ticker.draining else "ok"
        return JSONResponse(
            {
                "status": status,
                "sessions": len(ticker.sessions),
                "free_slots": ticker.free_slots,
                "tick_ms": runtime.tick_s * 1000,
                "lead_ms": round(runtime.lead_s * 1000, 3),
            },
            status_code=503 if ticker.draining else 200,
        )

    @app.get("/v1/capacity")
    async def capacity() -> JSONResponse:
        """For load balancers: route new calls where `free` > 0."""
        ticker = runtime.ticker
        return JSONResponse(
            {
                "max_sessions": ticker.config.max_sessions,
                "live": len(ticker.sessions),
                "free": 0 if ticker.draining else ticker.free_slots,
                "draining": ticker.draining,
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/v1/duplex")
    async def duplex(ws: WebSocket) -> None:
        await ws.accept()
        session: CallSession | None = None
        sender: asyncio.Task[None] | None = None
        try:
            _check_access(ws, runtime.settings)
            start = await _receive_start(ws, runtime.settings.start_timeout_s)
            session = runtime.open_session(start)
            sender = asyncio.create_task(_send_loop(ws, session, runtime))
            await _converse(ws, session, runtime)
            await asyncio.wait_for(asyncio.shield(sender), _CLOSE_TIMEOUT_S)
        except ProtocolError as exc:
            runtime.metrics.errors.labels(exc.code.value).inc()
            if session is not None and sender is not None:
                session.fail(exc.code, exc.message, int(exc.close_code))
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(sender), _CLOSE_TIMEOUT_S)
            else:
                await _close_with_error(ws, exc)
        except (_Disconnected, WebSocketDisconnect, TimeoutError):
            pass
        except Exception:
            log.exception("call %s failed", session.id if session else "-")
            runtime.metrics.errors.labels(ErrorCode.INTERNAL_ERROR.value).inc()
            await _close_with_error(
                ws, ProtocolError(ErrorCode.INTERNAL_ERROR, "internal server error")
            )
        finally:
            if session is not None:
                runtime.ticker.discard(session)
                if session.recorder is not None:
                    session.recorder.close()
            if sender is not None:
                sender.cancel()

    return app


def _check_access(ws: WebSocket, settings: Settings) -> None:
    """API key and Origin checks (both off unless configured)."""
    origin = ws.headers.get("origin")
    if settings.allowed_origins and origin is not None and origin not in settings.allowed_origins:
        raise ProtocolError(ErrorCode.FORBIDDEN_ORIGIN, f"origin {origin!r} is not allowed")
    if not settings.api_keys:
        return
    auth = ws.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ws.query_params.get("token")
    if not key:
        raise ProtocolError(
            ErrorCode.UNAUTHORIZED,
            "an API key is required: `Authorization: Bearer KEY` header or `?token=KEY`",
        )
    if not any(hmac.compare_digest(key, k) for k in settings.api_keys):
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "the API key is not valid")


async def _receive(ws: WebSocket) -> str | bytes:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise _Disconnected
    if message.get("text") is not None:
        return str(message["text"])
    return bytes(message.get("bytes") or b"")


async def _receive_start(ws: WebSocket, timeout_s: float) -> StartMessage:
    try:
        first = await asyncio.wait_for(_receive(ws), timeout_s)
    except TimeoutError as exc:
        raise ProtocolError(
            ErrorCode.START_TIMEOUT, f"no `start` message within {timeout_s:g} s"
        ) from exc
    if isinstance(first, bytes):
        raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "audio before the `start` message")
    message = parse_client_message(first)
    if not isinstance(message, StartMessage):
        raise ProtocolError(
            ErrorCode.UNEXPECTED_MESSAGE, f"expected `start` first, got `{message.type}`"
        )
    return message


async def _converse(ws: WebSocket, session: CallSession, runtime: Runtime) -> None:
    """Read the client until the call is done (normally, by error, or by the ticker)."""
    reader = asyncio.create_task(_read_loop(ws, session, runtime))
    done = asyncio.create_task(session.done.wait())
    try:
        finished, _ = await asyncio.wait({reader, done}, return_when=asyncio.FIRST_COMPLETED)
        if reader in finished:
            reader.result()  # re-raises a ProtocolError or a disconnect
    finally:
        reader.cancel()
        done.cancel()


async def _read_loop(ws: WebSocket, session: CallSession, runtime: Runtime) -> None:
    while True:
        data = await _receive(ws)
        if isinstance(data, bytes):
            session.on_frame(data)
            runtime.metrics.frames_in.inc()
            continue
        message = parse_client_message(data)
        if isinstance(message, EndMessage):
            session.on_end(message.total_samples)
        else:
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "`start` sent twice")


async def _send_loop(ws: WebSocket, session: CallSession, runtime: Runtime) -> None:
    """The only writer of this socket after `start`."""
    metrics = runtime.metrics
    while True:
        item = await session.outbox.get()
        if item.close_code is not None:
            if ws.client_state is WebSocketState.CONNECTED:
                await ws.close(item.close_code, item.close_reason)
            return
        if item.stats:
            await ws.send_text(session.stats_message().model_dump_json())
            continue
        if item.text is not None:
            await ws.send_text(item.text)
            continue
        assert item.frame is not None
        await ws.send_bytes(item.frame)
        session.queued_audio -= 1
        session.stats.frames_out += 1
        metrics.frames_out.inc()
        if item.newest_arrival is not None:
            latency = time.monotonic() - item.newest_arrival
            session.stats.latencies_ms.append(latency * 1000)
            metrics.latency.observe(latency)


async def _close_with_error(ws: WebSocket, exc: ProtocolError) -> None:
    """The one place an error becomes an `error` message and a close code."""
    if ws.client_state is not WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):
        message = ErrorMessage(code=exc.code, message=exc.message)
        await asyncio.wait_for(ws.send_text(message.model_dump_json()), _CLOSE_TIMEOUT_S)
        await asyncio.wait_for(ws.close(int(exc.close_code), exc.code.value), _CLOSE_TIMEOUT_S)
