"""Run the app under uvicorn with a drain before uvicorn's own shutdown.

On SIGTERM/SIGINT open calls get `shutdown_grace_s` to finish, then an `error` message
`server_shutdown` and close 1012; new calls are refused the same way meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import tempfile
from collections.abc import Generator

import uvicorn
from uvicorn._types import ASGISendEvent
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.app import CALL_PATHS, create_app
from server.moving import move_calls
from server.runtime import Runtime
from server.settings import Settings
from streaming.dependencies import untested_version

log = logging.getLogger("duplex.server")

# The uvicorn this module is written against and tested with (pinned in pyproject.toml):
# AbortingWebSocketProtocol overrides methods of its sans-I/O WebSocket protocol, one of them a
# modified copy of this version's, and so reads its private attributes.
UVICORN_TESTED = "0.55.0"


def check_uvicorn_version(installed: str | None = None) -> str | None:
    """One warning line when another uvicorn is installed (streaming/dependencies.py says
    why a warning); `installed` defaults to the installed version."""
    return untested_version(
        "uvicorn",
        UVICORN_TESTED,
        "server/uvicorn_server.py overrides its WebSocket protocol's internals",
        installed,
    )


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """A drained shutdown is a clean exit (0), not death by the signal uvicorn re-raises."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:  # the app is up: say where (the real port for --port 0)
            host, port = sockets[0].getsockname()[:2]
            scheme = "https" if self.config.ssl else "http"
            log.info("listening on %s://%s:%d (calls: %s)", scheme,
                     f"[{host}]" if ":" in host else host, port,
                     ", ".join(CALL_PATHS.values()))  # fmt: skip

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain, then uvicorn's shutdown. A second Ctrl-C (uvicorn's forced exit) cuts the
        drain short; uvicorn then skips the app's shutdown, which here only stops the tick
        loop, so it is run anyway: skipped, the lifespan task is cancelled with a traceback."""
        ticker = self.runtime.ticker
        ticker.drain_started.set()  # no new calls from here on
        if self.runtime.settings.peers:  # live calls go on at a peer
            await move_calls(self.runtime)
        await ticker.drain(
            self.runtime.settings.shutdown_grace_s, cut_short=lambda: self.force_exit
        )
        await asyncio.sleep(0.2)  # let the close frames leave
        await super().shutdown(sockets)
        lifespan = self.lifespan
        if isinstance(lifespan, LifespanOn) and not lifespan.shutdown_event.is_set():
            await lifespan.shutdown()  # skipped by uvicorn on a forced exit


# How long what a finished call still had to send may wait for a client that reads nothing.
UNFLUSHED_ABORT_S = 2.0


class AbortingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, except that a connection is dropped, not left open, when
    the client has stopped reading, and that what a hostile client sends ends its call as
    bad input does, without a traceback in the log (see the methods below).

    uvicorn closes a socket by flushing what it still has to send first, which never ends
    for a client that reads nothing (a `slow_consumer`, or any call closed while its audio
    was backed up): its socket and buffers would stay for as long as the client keeps the
    connection, and a drain would wait for it. Once the app is done with a call, whatever
    has not flushed UNFLUSHED_ABORT_S later (after the close handshake's own timeout, when a
    close frame was sent) goes with the connection.
    """

    async def run_asgi(self) -> None:
        await super().run_asgi()
        wait = UNFLUSHED_ABORT_S + (self.close_timeout if self.close_timer is not None else 0.0)
        self.loop.call_later(wait, self._abort_if_stuck)

    def send_receive_event_to_app(self) -> None:
        """As uvicorn 0.55.0's (UVICORN_TESTED), except that a text message that is not UTF-8
        goes to the app too, its bad bytes as lone surrogates, to be refused in the call's own
        protocol (server/adapters/connection.py `receive`); uvicorn logs a traceback at ERROR
        for each and closes 1007 with no word of why."""
        data = b"".join(self.frames)
        self.frames = []
        if self.close_sent:  # the app is past `websocket.close`: keep reading for the reply
            return
        if self.curr_msg_data_type == "text":
            text = data.decode(errors="surrogateescape")  # valid UTF-8 decodes as strictly
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    async def send(self, message: ASGISendEvent) -> None:
        """Once this layer has closed the connection on its own (a frame it refuses: over
        `max_message_bytes`, or not valid WebSocket), the app's next send is the client gone,
        an OSError as ASGI asks: uvicorn raises RuntimeError there, which the call would log
        as a failure (a Realtime call sends `session.created` before it reads anything)."""
        if self.close_sent and self.handshake_complete and self.initial_response is None:
            raise ClientDisconnected
        await super().send(message)

    def _abort_if_stuck(self) -> None:
        if self.transport.get_write_buffer_size():
            self.transport.abort()


def check_startup(s: Settings) -> socket.socket:
    """What `duplex serve` can refuse before it loads the model (ValueError, one line): the
    TLS pair, the recording folder, and the listening socket, bound here so that a taken
    port or an unknown host fails in a second instead of after the warm-up. An untested
    uvicorn is named here too, first thing in the log."""
    check_uvicorn_version()
    if (s.ssl_certfile is None) != (s.ssl_keyfile is None):
        raise ValueError("--ssl-certfile and --ssl-keyfile go together: give both or neither")
    if s.ssl_certfile is not None:
        try:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(s.ssl_certfile, s.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot use certificate {s.ssl_certfile} with key {s.ssl_keyfile}: {exc}"
            ) from exc
    if s.record_dir is not None:
        try:
            s.record_dir.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=s.record_dir).close()
        except OSError as exc:
            raise ValueError(f"cannot record calls into {s.record_dir}: {exc}") from exc
    try:
        return _listen(s.host, s.port)
    except OSError as exc:  # socket.gaierror included
        raise ValueError(f"cannot listen on {s.host}:{s.port}: {exc}") from exc


def serve(runtime: Runtime, sock: socket.socket) -> int:
    """Serve on `sock` (from `check_startup`) until SIGTERM/SIGINT."""
    s = runtime.settings
    config = uvicorn.Config(
        create_app(runtime),
        host=s.host,
        port=s.port,
        ws=AbortingWebSocketProtocol,
        ws_max_size=s.max_message_bytes,
        ws_ping_interval=s.ping_interval_s,
        ws_ping_timeout=s.ping_interval_s,
        log_level=s.log_level,
        lifespan="on",
        timeout_graceful_shutdown=5,
        ssl_certfile=s.ssl_certfile,
        ssl_keyfile=s.ssl_keyfile,
    )
    DrainingServer(config, runtime).run(sockets=[sock])
    return 0


# A small send buffer, inherited by accepted sockets, so a client that stops reading fills it
# quickly and is cut off (`slow_consumer`) after `send_queue_s` instead of after megabytes.
SEND_BUFFER_BYTES = 64 * 1024
BACKLOG = 2048  # uvicorn's default


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)  # now: with SO_REUSEADDR a bound socket alone holds no port
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
