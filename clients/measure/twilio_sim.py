"""A simulated Twilio side of a bidirectional Media Stream, for tests and `duplex loadtest
--protocol twilio`.

It behaves as Twilio does towards a `<Connect><Stream>` endpoint: `connected`, `start`, then
one `media` message of 20 ms mu-law every 20 ms at real-time pace (frame n leaves once its last
sample was "spoken"), `stop` at the end. It plays the outbound `media` on a playback timeline,
echoes each `mark` when playback reaches it, and on `clear` drops the audio it had queued but
not yet played (echoing the pending marks at once, as Twilio does).

The playback timeline: sample 0 is when `start` was sent (the caller's sample 0). A media
message starts playing when it arrives, or when the one before it ends if that is later
(a jitter-free player that never skips), so `output` is what the caller heard, time-aligned
with the input and exactly as long.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from clients.call import FINISH_TIMEOUT_S, InputError, fit_length, load_input, send_schedule
from clients.client import CONNECT_FAILED, CONNECTION_CLOSED, TIMEOUT, DuplexError
from streaming.encodings import decode_audio, encode_audio
from streaming.resample import resample_whole

__all__ = [
    "ReceivedMedia",
    "TwilioCallResult",
    "main",
    "media_message",
    "run_twilio_call",
    "start_message",
]

RATE = 8000
FRAME_SAMPLES = 160  # 20 ms of mu-law at 8 kHz
FRAME_S = FRAME_SAMPLES / RATE
DEFAULT_URL = "ws://127.0.0.1:8000/v1/telephony/twilio"
MARK_POLL_S = 0.005


def start_message(
    stream_sid: str,
    call_sid: str,
    *,
    sequence: int = 1,
    encoding: str = "audio/x-mulaw",
    sample_rate: int = RATE,
    custom_parameters: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Twilio's `start` (numbers as strings, as Twilio sends them)."""
    return {
        "event": "start",
        "sequenceNumber": str(sequence),
        "start": {
            "accountSid": "AC" + "0" * 32,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": encoding, "sampleRate": sample_rate, "channels": 1},
            "customParameters": dict(custom_parameters or {}),
        },
        "streamSid": stream_sid,
    }


def media_message(
    stream_sid: str, sequence: int, chunk: int, timestamp_ms: int, payload: bytes
) -> dict[str, Any]:
    """Twilio's inbound `media`: `chunk` counts from 1, `timestamp` is ms since the start."""
    return {
        "event": "media",
        "sequenceNumber": str(sequence),
        "media": {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(payload).decode(),
        },
        "streamSid": stream_sid,
    }


@dataclass(frozen=True, slots=True)
class ReceivedMedia:
    pcm: np.ndarray  # float32 at 8 kHz, decoded from the payload
    arrival: float  # time.monotonic() when it was read off the socket
    tick: int  # how many marks arrived before it: the server's tick in arrival order


@dataclass
class TwilioCallResult:
    """Everything the simulated Twilio side saw of one call."""

    stream_sid: str
    call_sid: str
    t_start: float  # monotonic time `start` was sent: sample 0 of input and output
    frames_sent: int
    messages: list[dict[str, Any]]  # every outbound message, in arrival order
    media: list[ReceivedMedia]
    marks: list[tuple[str, float]]  # (name, arrival time)
    marks_echoed: list[str]  # in the order they were played (or flushed by `clear`)
    clears: list[float]  # arrival times
    media_discarded: int  # queued media dropped by `clear`
    output: np.ndarray  # what the caller heard at 8 kHz, as long as the input
    close_code: int | None
    close_reason: str
    duration_s: float

    @property
    def by_event(self) -> dict[str, int]:
        return dict(Counter(str(m.get("event")) for m in self.messages))

    @property
    def media_arrivals(self) -> list[float]:
        return [m.arrival for m in self.media]


@dataclass
class _Player:
    """Playback of the outbound media on the caller's timeline (samples from t_start)."""

    t_start: float
    segments: list[tuple[int, np.ndarray]] = field(default_factory=list)
    end: int = 0  # where the queued audio runs out
    pending: list[tuple[int, str]] = field(default_factory=list)  # marks: (play position, name)
    discarded: int = 0

    def now(self) -> int:
        return round((time.monotonic() - self.t_start) * RATE)

    def play(self, pcm: np.ndarray) -> None:
        pos = max(self.now(), self.end)
        self.segments.append((pos, pcm))
        self.end = pos + len(pcm)

    def mark(self, name: str) -> None:
        self.pending.append((self.end, name))

    def clear(self) -> None:
        """Drop what is queued but not played; every pending mark is now due."""
        cut = self.now()
        kept: list[tuple[int, np.ndarray]] = []
        for pos, pcm in self.segments:
            if pos >= cut:
                self.discarded += 1
            else:
                kept.append((pos, pcm[: cut - pos]))
        self.segments = kept
        self.end = min(self.end, max(cut, 0))
        self.pending = [(0, name) for _, name in self.pending]

    def due_marks(self) -> list[str]:
        now = self.now()
        due = [name for pos, name in self.pending if pos <= now]
        self.pending = self.pending[len(due) :]
        return due

    def output(self, length: int) -> np.ndarray:
        out = np.zeros(length, dtype=np.float32)
        for pos, pcm in self.segments:
            if pos < length:
                part = pcm[: length - pos]
                out[pos : pos + len(part)] = part
        return out


async def run_twilio_call(
    url: str,
    pcm: np.ndarray,
    rate: int,
    *,
    headers: Mapping[str, str] | None = None,
    stream_sid: str | None = None,
    custom_parameters: Mapping[str, str] | None = None,
) -> TwilioCallResult:
    """Play mono `pcm` (at `rate`) as Twilio would and collect what the bridge sends.

    Raises DuplexError when the connection fails or the server closes with a code other than
    1000 (the close reason is the server's error code), ValueError for empty audio.
    """
    wire = resample_whole(np.asarray(pcm, dtype=np.float32), rate, RATE)
    if len(wire) == 0:
        raise ValueError("a call needs at least one sample of audio")
    n_frames = -(-len(wire) // FRAME_SAMPLES)
    payloads = encode_audio(fit_length(wire, n_frames * FRAME_SAMPLES), "mulaw")
    sid = stream_sid or "MZ" + uuid.uuid4().hex
    call_sid = "CA" + uuid.uuid4().hex
    try:
        ws = await ws_connect(url, additional_headers=headers, open_timeout=10)
    except (OSError, InvalidURI, InvalidStatus, WebSocketException, TimeoutError) as exc:
        raise DuplexError(CONNECT_FAILED, f"cannot connect to {url}: {exc}") from exc
    async with ws:
        seq = 0
        lock = asyncio.Lock()  # sequence numbers go out in order from two tasks

        async def send(message: dict[str, Any]) -> None:
            nonlocal seq
            async with lock:
                seq += 1
                if "sequenceNumber" in message:
                    message["sequenceNumber"] = str(seq)
                await ws.send(json.dumps(message))

        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        t0 = time.monotonic()
        await send(start_message(sid, call_sid, custom_parameters=custom_parameters))
        player = _Player(t0)
        result = TwilioCallResult(
            sid, call_sid, t0, 0, [], [], [], [], [], 0, np.zeros(0, np.float32), None, "", 0.0
        )
        due = send_schedule(n_frames, FRAME_S, t0)
        stopped = asyncio.Event()

        async def speak() -> None:
            for n in range(n_frames):
                await asyncio.sleep(max(0.0, due[n] - time.monotonic()))
                body = payloads[n * FRAME_SAMPLES : (n + 1) * FRAME_SAMPLES]
                await send(media_message(sid, 0, n + 1, round(n * FRAME_S * 1000), body))
                result.frames_sent += 1
            await send(
                {
                    "event": "stop",
                    "sequenceNumber": "0",
                    "stop": {"accountSid": "AC" + "0" * 32, "callSid": call_sid},
                    "streamSid": sid,
                }
            )
            stopped.set()

        async def echo_marks() -> None:
            while not stopped.is_set():
                for name in player.due_marks():
                    await send(
                        {
                            "event": "mark",
                            "sequenceNumber": "0",
                            "streamSid": sid,
                            "mark": {"name": name},
                        }
                    )
                    result.marks_echoed.append(name)
                await asyncio.sleep(MARK_POLL_S)

        async def listen() -> None:
            async for raw in _messages(ws):
                now = time.monotonic()
                message = json.loads(raw)
                result.messages.append(message)
                event = message.get("event")
                if event == "media":
                    pcm = decode_audio(base64.b64decode(message["media"]["payload"]), "mulaw")
                    result.media.append(ReceivedMedia(pcm, now, len(result.marks)))
                    player.play(pcm)
                elif event == "mark":
                    result.marks.append((message["mark"]["name"], now))
                    player.mark(message["mark"]["name"])
                elif event == "clear":
                    result.clears.append(now)
                    player.clear()

        tasks = [asyncio.ensure_future(c) for c in (speak(), echo_marks(), listen())]
        try:
            async with asyncio.timeout(due[-1] - t0 + FINISH_TIMEOUT_S):
                await tasks[2]  # until the server closes
        except TimeoutError as exc:
            raise DuplexError(TIMEOUT, "the call did not finish in time") from exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    result.close_code, result.close_reason = ws.close_code, ws.close_reason or ""
    result.duration_s = time.monotonic() - t0
    result.media_discarded = player.discarded
    result.output = player.output(len(wire))
    if result.close_code != 1000:
        raise DuplexError(
            result.close_reason or CONNECTION_CLOSED,
            f"the bridge closed the stream ({result.close_reason or 'no reason'})",
            result.close_code,
        )
    return result


async def _messages(ws: ClientConnection) -> AsyncIterator[str]:
    """Text messages until the server closes (how it closed is on `ws` afterwards)."""
    try:
        async for raw in ws:
            if isinstance(raw, str):
                yield raw
    except ConnectionClosed:
        return


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m clients.measure.twilio_sim --input a.wav`: one simulated Twilio call and its
    summary."""
    parser = argparse.ArgumentParser(
        prog="python -m clients.measure.twilio_sim", description=__doc__
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="bridge endpoint (%(default)s)")
    parser.add_argument("--input", required=True, metavar="PATH", help="audio the caller says")
    parser.add_argument("--output", metavar="PATH", help="write what the caller heard (8 kHz)")
    parser.add_argument("--token", help="API key, sent as ?token= (Twilio cannot set headers)")
    args = parser.parse_args(argv)
    url = (
        f"{args.url}{'&' if '?' in args.url else '?'}token={args.token}" if args.token else args.url
    )
    try:
        r = asyncio.run(run_twilio_call(url, *load_input(args.input)))
    except (InputError, DuplexError) as exc:
        print(f"twilio_sim: error: {exc}", file=sys.stderr)
        return 1
    if args.output:
        sf.write(args.output, r.output, RATE)
    print(
        json.dumps(
            {
                "stream_sid": r.stream_sid,
                "frames_sent": r.frames_sent,
                "received": r.by_event,
                "marks_echoed": len(r.marks_echoed),
                "clears": len(r.clears),
                "media_discarded": r.media_discarded,
                "duration_s": round(r.duration_s, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
