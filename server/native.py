"""The native protocol of `WS /v1/duplex` (docs/protocol.md): JSON control messages and
binary audio frames with a 16-byte header, both ways."""

from __future__ import annotations

import asyncio

from fastapi import WebSocket
from prometheus_client import Counter

from server.calls import receive
from server.protocol import (
    AudioFrame,
    EndMessage,
    ErrorCode,
    ErrorMessage,
    ProtocolError,
    StartMessage,
    parse_client_message,
)
from server.runtime import Runtime
from server.session import CallSession, Outgoing
from streaming.transport import bytes_per_sample, decode_audio


class NativeTransport:
    """One call's adapter: frame checks (sequence, size) and message rendering."""

    def __init__(self) -> None:
        self._last_seq = -1
        self._frames_in: Counter | None = None

    async def open(self, ws: WebSocket, runtime: Runtime) -> CallSession:
        timeout_s = runtime.settings.start_timeout_s
        try:
            first = await asyncio.wait_for(receive(ws), timeout_s)
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
        self._frames_in = runtime.metrics.frames_in
        return runtime.open_session(message)

    async def read_loop(self, ws: WebSocket, session: CallSession) -> None:
        while True:
            data = await receive(ws)
            if isinstance(data, bytes):
                self._on_frame(session, data)
                continue
            message = parse_client_message(data)
            if isinstance(message, EndMessage):
                session.on_end(message.total_samples)
            else:
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "`start` sent twice")

    def _on_frame(self, session: CallSession, data: bytes) -> None:
        frame = AudioFrame.unpack(data)
        if frame.seq <= self._last_seq:
            raise ProtocolError(
                ErrorCode.SAMPLE_ORDER,
                f"frame sequence {frame.seq} after {self._last_seq}: sequence numbers must grow",
            )
        encoding = session.audio.encoding
        width = bytes_per_sample(encoding)
        full = session.frame_samples * width
        size = len(frame.payload)
        if size % width or (size != full and not (frame.last and 0 < size < full)):
            raise ProtocolError(
                ErrorCode.BAD_FRAME_SIZE,
                f"audio payload of {size} bytes; frames are {full} bytes "
                f"({session.frame_samples} samples of {encoding}; only the last may be shorter)",
            )
        session.on_audio(frame.first_sample, decode_audio(frame.payload, encoding))
        self._last_seq = frame.seq
        if self._frames_in is not None:
            self._frames_in.inc()

    async def send(self, ws: WebSocket, session: CallSession, item: Outgoing) -> None:
        if item.audio is not None:
            a = item.audio
            await ws.send_bytes(AudioFrame(a.chunk, a.first_sample, a.payload, a.last).pack())
        elif item.ready is not None:
            await ws.send_text(item.ready.model_dump_json())
        elif item.stats:
            await ws.send_text(session.stats_message().model_dump_json())
        elif item.error is not None:
            await ws.send_text(item.error.model_dump_json())

    async def send_error(self, ws: WebSocket, error: ErrorMessage) -> None:
        await ws.send_text(error.model_dump_json())
