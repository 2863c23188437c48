"""The native protocol of `WS /v1/duplex` (docs/protocol.md): JSON control messages and
binary audio frames with a 16-byte header, both ways."""

from __future__ import annotations

import time

import numpy as np
from fastapi import WebSocket
from prometheus_client import Counter

from server.adapters.connection import receive, receive_opening
from server.runtime import Runtime
from server.session import CallSession, Outgoing
from streaming.encodings import bytes_per_sample, decode_audio
from streaming.opus import OpusDecoderStream
from streaming.wire import (
    OPUS_MAX_PACKET_BYTES,
    AudioFrame,
    BargeInMessage,
    EndMessage,
    ErrorCode,
    ErrorMessage,
    PlayedMessage,
    ProtocolError,
    RespondMessage,
    StartMessage,
    UpdateMessage,
    parse_client_message,
)


class NativeTransport:
    """One call's adapter: frame checks (sequence, size) and message rendering."""

    def __init__(self) -> None:
        self._last_seq = -1
        self._last_flagged = False  # a frame flagged last ends the audio
        self._frames_in: Counter | None = None
        self._opus: OpusDecoderStream | None = None  # the call's decoder, for encoding opus
        self._runtime: Runtime | None = None  # set at open: mid-call changes go through it

    async def open(self, ws: WebSocket, runtime: Runtime) -> CallSession:
        timeout_s = runtime.settings.start_timeout_s
        deadline = time.monotonic() + timeout_s
        first = await receive_opening(ws, deadline, timeout_s, "`start` message")
        if isinstance(first, bytes):
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "audio before the `start` message")
        message = parse_client_message(first)
        if not isinstance(message, StartMessage):
            raise ProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"expected `start` first, got `{message.type}`"
            )
        self._frames_in = runtime.metrics.frames_in
        self._runtime = runtime
        key = ws.state.api_key
        if message.resume is not None:
            session = runtime.resume_session(message, key)
        else:
            session = runtime.open_session(message)
            runtime.resume.issue(session, key)
        if session.audio.encoding == "opus":
            self._opus = OpusDecoderStream(session.audio.sample_rate)
        return session

    async def read_loop(self, ws: WebSocket, session: CallSession) -> None:
        while True:
            data = await receive(ws)
            if isinstance(data, bytes):
                self._on_frame(session, data)
                continue
            message = parse_client_message(data)
            if isinstance(message, EndMessage):
                session.on_end(message.total_samples)
            elif isinstance(message, RespondMessage):
                session.request_response()
            elif isinstance(message, PlayedMessage):
                session.on_played(message.sample, message.flushed)
            elif isinstance(message, UpdateMessage):
                assert self._runtime is not None  # set by `open`, which gave us the session
                self._runtime.retune(session, *message.applied(*session.asked))
                session.owe_update()
            else:
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "`start` sent twice")

    def _on_frame(self, session: CallSession, data: bytes) -> None:
        frame = AudioFrame.unpack(data)
        if self._last_flagged:
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "audio after the frame flagged last")
        if frame.seq <= self._last_seq:
            raise ProtocolError(
                ErrorCode.SAMPLE_ORDER,
                f"frame sequence {frame.seq} after {self._last_seq}: sequence numbers must grow",
            )
        if self._opus is not None:
            pcm = _decode_opus(self._opus, session, frame.payload)
        else:
            pcm = self._decode_samples(session, frame)
        session.on_audio(frame.first_sample, pcm)
        self._last_seq = frame.seq
        self._last_flagged = frame.last
        if self._frames_in is not None:
            self._frames_in.inc()

    def _decode_samples(self, session: CallSession, frame: AudioFrame) -> np.ndarray:
        """PCM16 or mu-law: exactly one frame of samples, only the last may be shorter."""
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
        return decode_audio(frame.payload, encoding)

    async def send(self, ws: WebSocket, session: CallSession, item: Outgoing) -> None:
        if item.audio is not None:
            a = item.audio
            await ws.send_bytes(AudioFrame(a.chunk, a.first_sample, a.payload, a.last).pack())
        elif item.ready is not None:
            await ws.send_text(item.ready.model_dump_json())
        elif item.updated is not None:
            await ws.send_text(item.updated.model_dump_json())
        elif item.stats:
            await ws.send_text(session.stats_message().model_dump_json())
        elif item.error is not None:
            await ws.send_text(item.error.model_dump_json())
        elif item.moved is not None:
            await ws.send_text(item.moved.model_dump_json())
        elif item.barge_in:
            await ws.send_text(BargeInMessage(sample=item.barge_in_sample).model_dump_json())

    async def send_error(self, ws: WebSocket, error: ErrorMessage) -> None:
        await ws.send_text(error.model_dump_json())


def _decode_opus(decoder: OpusDecoderStream, session: CallSession, packet: bytes) -> np.ndarray:
    """One Opus packet of exactly `frame_ms` (packets are whole: the last is padded too)."""
    size = len(packet)
    if not 0 < size <= OPUS_MAX_PACKET_BYTES:
        raise ProtocolError(
            ErrorCode.BAD_FRAME_SIZE,
            f"Opus payload of {size} bytes; a frame holds one packet of 1 to "
            f"{OPUS_MAX_PACKET_BYTES} bytes",
        )
    try:
        pcm = decoder.decode(packet)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"undecodable Opus packet: {exc}") from exc
    if len(pcm) != session.frame_samples:
        raise ProtocolError(
            ErrorCode.BAD_FRAME_SIZE,
            f"Opus packet of {len(pcm)} samples; frames are {session.frame_samples} samples "
            f"({session.audio.frame_ms} ms)",
        )
    return pcm
