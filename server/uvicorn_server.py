"""Run the app under uvicorn with a drain before uvicorn's own shutdown.

On SIGTERM/SIGINT open calls get `shutdown_grace_s` to finish, then an `error` message
`server_shutdown` and close 1012; new calls are refused the same way meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn

from server.app import create_app
from server.runtime import Runtime


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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.runtime.ticker.drain(self.runtime.settings.shutdown_grace_s)
        await asyncio.sleep(0.2)  # let the close frames leave
        await super().shutdown(sockets)


def serve(runtime: Runtime) -> int:
    s = runtime.settings
    config = uvicorn.Config(
        create_app(runtime),
        host=s.host,
        port=s.port,
        ws_max_size=s.max_message_bytes,
        ws_ping_interval=s.ping_interval_s,
        ws_ping_timeout=s.ping_interval_s,
        log_level=s.log_level,
        lifespan="on",
        timeout_graceful_shutdown=5,
        ssl_certfile=s.ssl_certfile,
        ssl_keyfile=s.ssl_keyfile,
    )
    server = DrainingServer(config, runtime)
    server.run(sockets=[_listen(s.host, s.port)])
    return 0


# A small send buffer, inherited by accepted sockets, so a client that stops reading fills it
# quickly and is cut off (`slow_consumer`) after `send_queue_s` instead of after megabytes.
SEND_BUFFER_BYTES = 64 * 1024


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
