"""An embeddable async client for `/v1/duplex` (the `duplex call` command and the load test use it).

It speaks only the public wire protocol (`streaming.wire`), so it works against any server that
implements it. Sending and receiving are independent: a caller typically runs `events()` in one
task while it paces `send_frame()` calls in another, as a live microphone would.

    async with DuplexClient.connect(url, audio=AudioFormat(sample_rate=16000)) as c:
        ...  # c.ready is the server's ReadyMessage; c.t_ready is session sample 0
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from types import EllipsisType
from typing import Any
from urllib.parse import urlencode

import numpy as np
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from streaming.encodings import decode_audio, encode_audio
from streaming.opus import OpusDecoderStream, OpusEncoderStream, unpack_packets
from streaming.resample import resample_whole
from streaming.wire import (
    CLOSE_CODES,
    SERVER_TYPES,
    SUPPORTED_RATES,
    AudioFormat,
    AudioFrame,
    BargeInMessage,
    EndMessage,
    ErrorCode,
    ErrorMessage,
    MovedMessage,
    PlayedMessage,
    PromptRequest,
    ProtocolError,
    ReadyMessage,
    RespondMessage,
    ResumeRequest,
    SamplingParams,
    StartMessage,
    StatsMessage,
    UpdatedMessage,
    UpdateMessage,
    parse_server_message,
)

__all__ = ["DuplexClient", "DuplexError", "PlaybackAcks", "ReceivedFrame", "upload_prompt"]

# Client-side error codes, next to the server's ErrorCode values a DuplexError may carry.
CONNECT_FAILED = "connect_failed"
CONNECTION_CLOSED = "connection_closed"
PROTOCOL_VIOLATION = "protocol_violation"
TIMEOUT = "timeout"
WRONG_ENDPOINT = "is the URL a duplex /v1/duplex endpoint?"

# How long to wait for the close that follows a server `error`, to report its real close code.
_CLOSE_WAIT_S = 2.0
# An uploaded voice prompt rides in `start`, which must fit one WebSocket message.
MAX_MESSAGE_BYTES = 65536  # the server's default --max-message-bytes
_START_ROOM_BYTES = 1024  # for the rest of `start` (its audio format, sampling, ...)
PROMPT_RATES = SUPPORTED_RATES["pcm16"]  # an upload's rates (`GET /v1/prompts`: "upload")


class DuplexError(Exception):
    """A failed session: the server's `error` (code from ErrorCode) or a client-side failure.

    `close_code` is the WebSocket close code when the connection closed, else None.
    """

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (close {close_code})" if close_code else ""))
        self.code = code
        self.message = message
        self.close_code = close_code


@dataclass(frozen=True, slots=True)
class ReceivedFrame:
    """One agent audio frame as it arrived; `first_sample` places it on the session timeline."""

    seq: int
    first_sample: int
    pcm: np.ndarray  # float32 mono at the wire rate
    last: bool
    arrival: float  # time.monotonic() when the message was read off the socket

    @property
    def is_end_marker(self) -> bool:
        """The empty frame that only flags where the agent's audio ends (no tick, no audio)."""
        return len(self.pcm) == 0


class DuplexClient:
    """One session on an open WebSocket, after `ready`. Build it with `DuplexClient.connect`."""

    def __init__(
        self, ws: ClientConnection, audio: AudioFormat, ready: ReadyMessage, t_ready: float
    ) -> None:
        self._ws = ws
        self.audio = audio
        self.ready = ready
        self.t_ready = t_ready  # when `ready` arrived (time.monotonic()): session sample 0
        self.frames_sent = 0
        self.samples_sent = 0
        self.stats: StatsMessage | None = None
        self.updates: list[UpdatedMessage] = []  # the server's answers to `update`, in order
        self.barge_ins: list[BargeInMessage] = []  # the caller talked over the agent here
        # A draining server moves the call to a peer (`moved`): the client follows it there
        # (`events`) and goes on, sending nothing meanwhile; audio that falls in the gap is
        # not sent (the call heard silence).
        self.moves = 0
        self._opening: Opening | None = None  # how `connect` opened the call
        self._moving: asyncio.Event | None = None  # set once a move is over
        self._resume_at = 0  # frames before this sample fell in a move's gap
        self._next_chunk = 0  # the first agent chunk not received
        # Opus is stateful: one encoder for the user's packets, one decoder for the agent's.
        self._opus_out: OpusEncoderStream | None = None
        self._opus_in: OpusDecoderStream | None = None
        if audio.encoding == "opus":
            self._opus_out = OpusEncoderStream(audio.sample_rate, audio.frame_ms, align=False)
            self._opus_in = OpusDecoderStream(audio.sample_rate)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        audio: AudioFormat | None = None,
        sampling: SamplingParams | None = None,
        noise_gate_db: float | None = None,
        headers: Mapping[str, str] | None = None,
        open_timeout: float = 10.0,
        ready_timeout: float = 30.0,
        resume: ResumeRequest | None = None,
        prompt: PromptRequest | None = None,
        barge_in_notices: bool = False,
    ) -> AsyncIterator[DuplexClient]:
        """Open the socket, send `start`, wait for `ready`; close with 1000 on exit.

        `prompt`: open the call with a voice prompt (docs/prompts.md), one of the server's
        (`PromptRequest(name=...)`) or the caller's own audio (`upload_prompt`); one the
        server refuses is a DuplexError, as any refused `start`.

        `barge_in_notices`: the server says when the caller talks over the agent (`barge_in`,
        gathered in `barge_ins`): a client that plays the agent drops what it holds then.

        `resume`: take up a call whose connection dropped (the token of its last `ready`;
        `audio` must be the call's). The client then goes on from the server's
        `resume_sample`: `samples_sent`, the frame count and `t_ready` (sample 0, moved back
        by that much) continue the call's own numbering and clock."""
        audio = audio or AudioFormat()
        start = StartMessage(
            type="start",
            audio=audio,
            sampling=sampling or SamplingParams(),
            noise_gate_db=noise_gate_db,
            resume=resume,
            prompt=prompt,
            barge_in_notices=barge_in_notices,
        )
        opening = (url, headers, open_timeout, ready_timeout)
        ws, ready, t_ready = await _open(opening, start)
        client = cls(ws, audio, ready, t_ready)
        client._opening = opening
        try:
            if ready.resumed:
                client.samples_sent = ready.resume_sample
                client.frames_sent = -(-ready.resume_sample // ready.frame_samples)
                client.t_ready = t_ready - ready.resume_sample / audio.sample_rate
            yield client
        finally:
            await client._ws.close()

    @property
    def frame_samples(self) -> int:
        """Samples per client frame at the wire rate, as the server set them in `ready`."""
        return self.ready.frame_samples

    async def send_frame(self, pcm: np.ndarray, last: bool = False) -> None:
        """Send exactly one client frame of float32 mono audio (the last one may be shorter).

        With Opus every packet is a whole frame: a short last frame is padded with silence, and
        `samples_sent` counts the padding (the server hears it).
        """
        n = len(pcm)
        if n != self.frame_samples and not (last and 0 < n < self.frame_samples):
            raise ValueError(
                f"a frame holds {self.frame_samples} samples (the last may hold fewer), got {n}"
            )
        await self._settled()
        if self._opus_out is not None:
            n = self.frame_samples
            payload = self._encode_opus(self._opus_out, np.pad(pcm, (0, n - len(pcm))))
        else:
            payload = encode_audio(pcm, self.audio.encoding)
        if self.samples_sent >= self._resume_at:  # a frame begun in a move's gap is left out
            frame = AudioFrame(self.frames_sent, self.samples_sent, payload, last)
            await self._send(frame.pack())
        self.frames_sent += 1
        self.samples_sent += n

    @staticmethod
    def _encode_opus(encoder: OpusEncoderStream, pcm: np.ndarray) -> bytes:
        """One frame, one packet, sent at once: the user's audio decodes the encoder's
        lookahead (6.5 ms) late, as if the network were that much slower."""
        _, packets = encoder.encode(pcm)
        return packets[0]

    async def respond(self) -> None:
        """Ask the agent to speak now: its next chunks start with sound (`respond`)."""
        await self._send(RespondMessage(type="respond").model_dump_json())

    async def played(self, sample: int, *, flushed: bool = False) -> None:
        """Say the agent's audio up to wire `sample` (its frames' first_sample numbering) has
        been played (`played`); `flushed`: and what was held after it was dropped (the caller
        interrupted), so the server makes that audio silence in the model's context."""
        message = PlayedMessage(type="played", sample=sample, flushed=flushed)
        await self._send(message.model_dump_json(exclude_defaults=True))

    async def update(
        self,
        sampling: SamplingParams | Mapping[str, Any] | None = None,
        *,
        noise_gate_db: float | None | EllipsisType = ...,
    ) -> None:
        """Change the call's settings from its next step on (`update`): the `sampling` fields
        named (a field set to None: back to the server's default; an unset field of a
        SamplingParams is left alone), and `noise_gate_db` if given (None: the server's).
        The answer, `updated`, lands in `updates` while `events` runs. Raises ValueError
        (pydantic's ValidationError) for a value out of range, before sending anything."""
        fields: dict[str, Any] = {"type": "update"}
        if isinstance(sampling, SamplingParams):
            fields["sampling"] = sampling.model_dump(exclude_unset=True)
        elif sampling is not None:
            fields["sampling"] = dict(sampling)
        if not isinstance(noise_gate_db, EllipsisType):
            fields["noise_gate_db"] = noise_gate_db
        message = UpdateMessage.model_validate(fields)
        await self._send(message.model_dump_json(exclude_unset=True))

    async def end(self, total_samples: int | None = None) -> None:
        """Tell the server the user audio is complete (defaults to the samples sent so far)."""
        total = self.samples_sent if total_samples is None else total_samples
        if self._opus_out is not None:  # the last packet was padded to a whole frame
            total = max(total, self.samples_sent)
        await self._send(EndMessage(type="end", total_samples=total).model_dump_json())

    async def events(self) -> AsyncIterator[ReceivedFrame | StatsMessage]:
        """Yield agent frames and the final `stats` until the server closes normally.

        Raises DuplexError on a server `error`, an abnormal close or a malformed message.
        """
        while True:
            try:
                data = await self._ws.recv()
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == 1000:
                    return
                raise _closed_error(self._ws, "during the call") from exc
            arrival = time.monotonic()
            if isinstance(data, bytes):
                frame = self._decode_frame(data, arrival)
                if not frame.is_end_marker:
                    self._next_chunk = max(self._next_chunk, frame.seq + 1)
                yield frame
                continue
            msg = await _parse_text(self._ws, data)
            if isinstance(msg, MovedMessage):
                await self._follow(msg)
                continue
            if isinstance(msg, UpdatedMessage):
                self.updates.append(msg)
                continue
            if isinstance(msg, BargeInMessage):
                self.barge_ins.append(msg)
                continue
            if not isinstance(msg, StatsMessage):
                raise DuplexError(PROTOCOL_VIOLATION, f"unexpected {msg.type!r} during the call")
            self.stats = msg
            yield msg

    def _decode_frame(self, data: bytes, arrival: float) -> ReceivedFrame:
        try:
            frame = AudioFrame.unpack(data)
            if self._opus_in is not None:  # the tick's 20 ms packets, decoded in order
                decoded = [self._opus_in.decode(p) for p in unpack_packets(frame.payload)]
                pcm = np.concatenate(decoded) if decoded else np.zeros(0, np.float32)
            else:
                pcm = decode_audio(frame.payload, self.audio.encoding)
        except (ProtocolError, ValueError) as exc:
            raise DuplexError(PROTOCOL_VIOLATION, f"bad agent frame: {exc}") from exc
        return ReceivedFrame(frame.seq, frame.first_sample, pcm, frame.last, arrival)

    async def _settled(self) -> None:
        """Wait while the call moves to another replica."""
        if self._moving is not None:
            await self._moving.wait()

    async def _follow(self, moved: MovedMessage) -> None:
        """The server moved the call (it drains): reconnect (`?replica=` for the load
        balancer) and resume there, asking for the agent chunks not received yet."""
        assert self._opening is not None  # set by `connect`
        self._moving = asyncio.Event()
        try:
            url, headers, open_timeout, ready_timeout = self._opening
            if moved.replica:
                url += ("&" if "?" in url else "?") + urlencode({"replica": moved.replica})
            resume = ResumeRequest(token=moved.resume_token, from_chunk=self._next_chunk)
            start = StartMessage(type="start", audio=self.audio, resume=resume)
            ws, ready, _ = await _open((url, headers, open_timeout, ready_timeout), start)
            old, self._ws, self.ready = self._ws, ws, ready
            with suppress(ConnectionClosed, OSError):
                await old.close()
            self._resume_at = max(ready.resume_sample, self.samples_sent)
            self.moves += 1
        finally:
            self._moving.set()

    async def _send(self, data: str | bytes) -> None:
        await self._settled()
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise _closed_error(self._ws, "while sending") from exc


def upload_prompt(
    pcm: np.ndarray, sample_rate: int, *, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> PromptRequest:
    """The caller's own voice prompt (float32 mono at `sample_rate`) for `connect(prompt=)`.

    Sent as PCM16 at the highest upload rate not above the audio's own (8 kHz at least) at
    which the whole `start` still fits the server's `max_message_bytes`: 1.92 s (the default
    model's longest prompt) fits at 8 kHz, its codec's own rate, not at 16 kHz. Raises
    ValueError for empty audio or audio too long for one message even at 8 kHz; the server
    checks the length it takes (`max_seconds` of `GET /v1/prompts`).
    """
    pcm = np.asarray(pcm, dtype=np.float32)
    if pcm.ndim != 1 or len(pcm) == 0:
        raise ValueError("a voice prompt is mono audio of at least one sample")
    budget = max_message_bytes - _START_ROOM_BYTES
    lowest = min(PROMPT_RATES)
    for rate in sorted(PROMPT_RATES, reverse=True):
        samples = -(-len(pcm) * rate // sample_rate)  # resample_whole's output length
        if (rate <= sample_rate or rate == lowest) and 4 * -(-2 * samples // 3) <= budget:
            audio = encode_audio(resample_whole(pcm, sample_rate, rate), "pcm16")
            return PromptRequest(audio=base64.b64encode(audio).decode(), sample_rate=rate)
    raise ValueError(
        f"a voice prompt of {len(pcm) / sample_rate:.2f} s does not fit in a `start` of "
        f"{max_message_bytes} bytes, even at {lowest} Hz: shorten it"
    )


class PlaybackAcks:
    """`played` acknowledgements for a client that keeps the agent's audio rather than
    playing it (`duplex call` writes it to a file, the load test measures it): a frame counts
    as played once received, acknowledged at most every `every_s`. An acknowledgement is
    advisory: one the closing connection no longer takes is dropped."""

    def __init__(self, client: DuplexClient, every_s: float = 0.2) -> None:
        self.client = client
        self.every_s = every_s
        self.acked = 0
        self._last = float("-inf")

    async def received(self, frame: ReceivedFrame) -> None:
        end = frame.first_sample + len(frame.pcm)
        if end <= self.acked or frame.arrival - self._last < self.every_s:
            return
        self.acked, self._last = end, frame.arrival
        with suppress(DuplexError):
            await self.client.played(end)


Opening = tuple[str, Mapping[str, str] | None, float, float]  # url, headers, timeouts


async def _open(
    opening: Opening, start: StartMessage
) -> tuple[ClientConnection, ReadyMessage, float]:
    """Connect, send `start`, wait for `ready`: the socket, `ready` and when it came."""
    url, headers, open_timeout, ready_timeout = opening
    try:
        ws = await ws_connect(
            url,
            additional_headers=dict(headers) if headers else None,
            open_timeout=open_timeout,
            compression=None,  # audio does not compress; deflate only adds latency
            proxy=None,
        )
    except InvalidStatus as exc:
        body = (exc.response.body or b"").decode(errors="replace").strip()
        raise DuplexError(
            CONNECT_FAILED,
            f"{url} refused the WebSocket upgrade: HTTP {exc.response.status_code} {body}".rstrip(),
        ) from exc
    except (OSError, TimeoutError, InvalidURI, WebSocketException) as exc:
        raise DuplexError(CONNECT_FAILED, f"cannot connect to {url}: {exc}") from exc
    try:
        # Only what is set: a server older than a field still takes the call.
        with suppress(ConnectionClosed):  # a refusing server may close first: its
            await ws.send(start.model_dump_json(exclude_none=True))  # reason is queued
        ready, t_ready = await asyncio.wait_for(_await_ready(ws, start.audio), ready_timeout)
    except TimeoutError as exc:
        await ws.close()
        raise DuplexError(TIMEOUT, f"no 'ready' within {ready_timeout:g} s") from exc
    except ConnectionClosed as exc:
        error = _closed_error(ws, "before 'ready'")
        if error.close_code in (1003, 1007):  # closed with no `error`: not our protocol
            message = f"{error.message}; {WRONG_ENDPOINT}"
            error = DuplexError(error.code, message, error.close_code)
        await ws.close()
        raise error from exc
    except BaseException:
        await ws.close()
        raise
    return ws, ready, t_ready


async def _await_ready(ws: ClientConnection, audio: AudioFormat) -> tuple[ReadyMessage, float]:
    """Read the answer to `start`: `ready` and its arrival time, or an `error` (DuplexError)."""
    data = await ws.recv()
    t_ready = time.monotonic()
    if isinstance(data, bytes):
        raise DuplexError(PROTOCOL_VIOLATION, "audio before 'ready'")
    msg = await _parse_text(ws, data, opening=True)
    if not isinstance(msg, ReadyMessage):
        raise DuplexError(PROTOCOL_VIOLATION, f"expected 'ready', got {msg.type!r}")
    if (msg.encoding, msg.sample_rate) != (audio.encoding, audio.sample_rate):
        raise DuplexError(
            PROTOCOL_VIOLATION,
            f"asked for {audio.encoding} at {audio.sample_rate} Hz, "
            f"the server answered {msg.encoding} at {msg.sample_rate} Hz",
        )
    return msg, t_ready


async def _parse_text(
    ws: ClientConnection, text: str, *, opening: bool = False
) -> ReadyMessage | UpdatedMessage | StatsMessage | MovedMessage | BargeInMessage:
    """Parse a server text message; an `error` is raised with the close code that follows it.
    `opening`: the answer to `start`, where another protocol's message means a wrong URL."""
    try:
        msg = parse_server_message(text)
    except ValidationError as exc:
        # A newer server may send an error code this client does not know: still report it.
        loose = _loose_error(text)
        if loose is None:
            raise DuplexError(PROTOCOL_VIOLATION, _not_duplex(text, opening)) from exc
        code, message = loose
        raise DuplexError(code, message, await _close_code_after_error(ws, None)) from exc
    if isinstance(msg, ErrorMessage):
        raise DuplexError(str(msg.code), msg.message, await _close_code_after_error(ws, msg.code))
    return msg


def _not_duplex(text: str, opening: bool) -> str:
    """What to say of a text message this client cannot read: as the answer to `start`,
    another protocol's (a Realtime endpoint's `session.created`); else a malformed one."""
    with suppress(json.JSONDecodeError):
        raw = json.loads(text)
        kind = raw.get("type") if isinstance(raw, dict) else None
        if opening and isinstance(kind, str) and kind not in SERVER_TYPES:
            return f"the server sent {kind!r}, not a duplex message: {WRONG_ENDPOINT}"
    return f"malformed message: {text[:200]}"


def _loose_error(text: str) -> tuple[str, str] | None:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(raw, dict) and raw.get("type") == "error":
        return str(raw.get("code", "unknown")), str(raw.get("message", ""))
    return None


async def _close_code_after_error(ws: ClientConnection, code: ErrorCode | str | None) -> int | None:
    """The server closes right after an `error`; wait briefly for the real close code."""
    with suppress(TimeoutError):
        await asyncio.wait_for(ws.wait_closed(), _CLOSE_WAIT_S)
    if ws.close_code is not None:
        return ws.close_code
    known = CLOSE_CODES.get(ErrorCode(str(code))) if code in ErrorCode._value2member_map_ else None
    return int(known) if known is not None else None


def _closed_error(ws: ClientConnection, when: str) -> DuplexError:
    code = ws.close_code
    reason = ws.close_reason or "no reason given"
    return DuplexError(CONNECTION_CLOSED, f"server closed the connection {when}: {reason}", code)
