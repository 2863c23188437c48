"""The FastAPI app: HTTP routes, and each WebSocket route bound to its protocol adapter."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.staticfiles import StaticFiles

from server.adapters.connection import check_access, serve_call
from server.adapters.native import NativeTransport
from server.adapters.realtime import RealtimeTransport
from server.adapters.twilio import TwilioTransport
from server.moving import INTERNAL_PATH, CallPackage, adopt
from server.runtime import Runtime
from streaming.wire import ErrorCode, ProtocolError

# Where calls connect, per protocol (docs/protocol.md, realtime.md, telephony.md).
CALL_PATHS = {"native": "/v1/duplex", "realtime": "/v1/realtime", "twilio": "/v1/telephony/twilio"}


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
                "free_slots": 0 if ticker.draining else ticker.free_slots,
                "tick_ms": runtime.tick_s * 1000,
                "lead_ms": round(runtime.lead_s * 1000, 3),
            },
            status_code=503 if ticker.draining else 200,
        )

    @app.get("/v1/capacity")
    async def capacity() -> JSONResponse:
        """For load balancers: route new calls where `free` > 0. The status says it too (503
        when full or draining), for checks that read only a status: HAProxy's `http-check`,
        a Kubernetes readiness probe (docs/deploy.md)."""
        ticker = runtime.ticker
        free = 0 if ticker.draining else ticker.free_slots
        return JSONResponse(
            {
                "max_sessions": ticker.config.max_sessions,
                "live": len(ticker.sessions),
                "free": free,
                "draining": ticker.draining,
            },
            status_code=200 if free else 503,
        )

    @app.get("/v1/prompts")
    async def prompts() -> JSONResponse:
        """The voice prompts a call may open with, and what an uploaded one may be
        (docs/prompts.md)."""
        return JSONResponse(runtime.prompts.listing())

    @app.post(INTERNAL_PATH)
    async def adopt_call(package: CallPackage, request: Request) -> JSONResponse:
        """A draining peer hands this replica a live call (server/moving.py); the answer is
        the token its client resumes with. 503 when there is no room or this one drains."""
        try:
            check_access(request, runtime.settings)
            return JSONResponse(adopt(runtime, package))
        except ProtocolError as exc:
            status = 401 if exc.code is ErrorCode.UNAUTHORIZED else 503
            return JSONResponse({"code": exc.code.value, "message": exc.message}, status)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.websocket(CALL_PATHS["native"])
    async def duplex(ws: WebSocket) -> None:
        await serve_call(ws, runtime, NativeTransport())

    @app.websocket(CALL_PATHS["realtime"])
    async def realtime(ws: WebSocket) -> None:
        """OpenAI Realtime-compatible events (docs/realtime.md)."""
        await serve_call(ws, runtime, RealtimeTransport())

    @app.websocket(CALL_PATHS["twilio"])
    async def twilio(ws: WebSocket) -> None:
        await serve_call(ws, runtime, TwilioTransport())

    @app.api_route(CALL_PATHS["native"], methods=["GET", "HEAD"])
    @app.api_route(CALL_PATHS["realtime"], methods=["GET", "HEAD"])
    @app.api_route(CALL_PATHS["twilio"], methods=["GET", "HEAD"])
    async def not_websocket(request: Request) -> JSONResponse:
        """A plain HTTP request to a call endpoint (a browser tab, curl) is told what it is."""
        url = request.url.replace(scheme="wss" if request.url.scheme == "https" else "ws")
        body = {"error": f"{request.url.path} is a WebSocket endpoint: connect to {url}"}
        return JSONResponse(body, status_code=426, headers={"Upgrade": "websocket"})

    @app.websocket("/{path:path}")
    async def unknown(ws: WebSocket, path: str) -> None:
        """A mistyped path gets 404 and where the calls are, not a bare 403."""
        error = f"no WebSocket endpoint /{path}"
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            body = {"error": error, "endpoints": list(CALL_PATHS.values())}
            await ws.send_denial_response(JSONResponse(body, status_code=404))
        else:
            await ws.close(1008, error)

    # The browser client (docs/browser.md), found through the installed `clients` package.
    # Mounted last: a mount at "/" matches every path, so the routes above must come first.
    web = Path(str(importlib.resources.files("clients") / "web"))
    app.mount("/", StaticFiles(directory=web, html=True), name="web")

    return app
