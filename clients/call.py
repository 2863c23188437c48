"""`duplex call`: play an audio file to the server in real time and record the agent's answer.

The output file is time-aligned with the input (sample i of the output is what the agent said
while sample i of the input was spoken) and exactly as long, so the two can be mixed or compared
directly. On a terminal one line on stderr shows how far the call is (`ProgressLine`).
`run_call` is the reusable core for tests and the load test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, get_args

import numpy as np
import soundfile as sf
from pydantic import ValidationError
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from clients.client import DuplexClient, DuplexError, PlaybackAcks, ReceivedFrame, upload_prompt
from streaming.opus import opus_available
from streaming.resample import resample_whole
from streaming.wire import (
    MAX_NOISE_GATE_DB,
    OPUS_FRAME_MS,
    SUPPORTED_RATES,
    AudioFormat,
    Eagerness,
    PromptRequest,
    ReadyMessage,
    SamplingParams,
    StatsMessage,
)

__all__ = [
    "CallResult",
    "ProgressLine",
    "add_arguments",
    "fit_length",
    "check_url",
    "load_input",
    "load_prompt",
    "main",
    "place_frames",
    "run",
    "run_call",
    "send_schedule",
]

PROG = "duplex call"
DEFAULT_URL = "ws://127.0.0.1:8000/v1/duplex"
WireEncoding = Literal["pcm16", "mulaw", "opus"]
DEFAULT_RATES: dict[str, int] = {"pcm16": 16000, "mulaw": 8000, "opus": 16000}
EXIT_USAGE = 2
EXIT_FAILURE = 1
# After `end` the server only finishes the few remaining ticks; this bounds one that never does.
FINISH_TIMEOUT_S = 10.0
DEFAULT_TAIL_S = 3.0  # the default agent answers ~0.8 s after a turn ends and speaks ~1 s
MAX_TAIL_S = 600.0
MIN_FRAME_MS, MAX_FRAME_MS = 10, 160
PROGRESS_PERIOD_S = 0.25  # the progress line is redrawn at most this often


class InputError(Exception):
    """A usage or input problem (exit code 2), as opposed to a connection or server failure."""


def check_url(url: str) -> None:
    """Refuse a --url no WebSocket client could open (scheme, host, port), before any I/O."""
    try:
        parse_uri(url)
    except (InvalidURI, ValueError) as exc:
        reason = str(exc).removeprefix(f"{url} isn't a valid URI: ")
        raise InputError(f"--url {url!r} is not a usable ws:// or wss:// URL: {reason}") from exc


@dataclass(frozen=True, slots=True)
class CallResult:
    """Everything a finished call produced, for the CLI summary, e2e tests and the load test."""

    ready: ReadyMessage
    stats: StatsMessage
    output: np.ndarray  # agent audio at the wire rate, time-aligned, as long as the sent audio
    frames: list[ReceivedFrame]  # in arrival order, each with its monotonic arrival time
    frames_sent: int
    samples_sent: int
    send_times: list[float]  # monotonic time each client frame was handed to the socket
    t_start: float  # monotonic time `ready` arrived: session sample 0
    duration_s: float  # from `ready` to the server's close

    @property
    def frames_received(self) -> int:
        """Audio frames, as the server's `frames_out` counts them (not the empty end marker)."""
        return sum(not f.is_end_marker for f in self.frames)

    def summary(self) -> dict[str, Any]:
        """The figures `--json` prints (one flat object)."""
        s = self.stats
        return {
            "session_id": s.session_id,
            "frames_sent": self.frames_sent,
            "frames_received": self.frames_received,
            "ticks": s.ticks,
            "latency_ms_p50": s.latency_ms_p50,
            "latency_ms_p95": s.latency_ms_p95,
            "latency_ms_p99": s.latency_ms_p99,
            "estimates_made": s.estimates_made,
            "estimates_replaced": s.estimates_replaced,
            "late_samples_dropped": s.late_samples_dropped,
            "missing_chunks": s.missing_chunks,
            "overruns": s.overruns,
            "re_anchors": s.re_anchors,
            "frames_gated": s.frames_gated,
            "noise_floor_db": s.noise_floor_db,
            "output_samples": int(len(self.output)),
            "duration_s": round(self.duration_s, 3),
        }


def place_frame(out: np.ndarray, frame: ReceivedFrame) -> None:
    """Write one frame into `out` at its first_sample; what lies past the end is cut."""
    if frame.first_sample < len(out):
        chunk = frame.pcm[: len(out) - frame.first_sample]
        out[frame.first_sample : frame.first_sample + len(chunk)] = chunk


def place_frames(frames: Iterable[ReceivedFrame], length: int) -> np.ndarray:
    """Write each frame at its first_sample (whatever order it came in); gaps stay silent."""
    out = np.zeros(length, dtype=np.float32)
    for f in frames:
        place_frame(out, f)
    return out


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Pad with zeros or truncate to exactly n samples."""
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])


def send_schedule(
    n_frames: int,
    frame_s: float,
    t_start: float,
    delay_s: float = 0.0,
    jitter_s: float = 0.0,
    rng: random.Random | None = None,
) -> list[float]:
    """Absolute send deadlines: frame n at t_start + (n+1)*frame + delay + U[0, jitter].

    Frame n can leave only once its last sample was spoken, as from a live microphone.

    Deadlines are absolute so sleep errors never accumulate; a jittered frame that would
    overtake its predecessor waits for it instead (TCP would never reorder it either).
    """
    rng = rng or random.Random()
    due: list[float] = []
    for n in range(n_frames):
        t = (
            t_start
            + (n + 1) * frame_s
            + delay_s
            + (rng.uniform(0.0, jitter_s) if jitter_s else 0.0)
        )
        due.append(max(t, due[-1]) if due else t)
    return due


def load_input(path: str) -> tuple[np.ndarray, int]:
    """Read any file soundfile can, downmixed to mono float32 by the channel mean."""
    if not Path(path).exists():
        raise InputError(f"cannot read {path!r}: no such file")
    if Path(path).is_dir():
        raise InputError(f"cannot read {path!r}: it is a directory")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, OSError, RuntimeError, TypeError) as exc:
        why = getattr(exc, "error_string", None) or exc  # libsndfile's, without the path again
        raise InputError(f"cannot read {path!r}: {why}") from exc
    if len(data) == 0:
        raise InputError(f"cannot read {path!r}: the file holds no audio")
    return data.mean(axis=1, dtype=np.float32), int(rate)


# Told what a call has done so far: user samples sent, agent samples received (wire rate).
Progress = Callable[[int, int], None]


class ProgressLine:
    """One line on `stream` (stderr), rewritten in place: seconds of the input sent of the
    total, and seconds of agent audio received; `finish` leaves it as the final line. It is
    redrawn at most every `period_s`, with a carriage return and spaces over the longer line
    before (no terminal escapes), so stdout stays the output's alone."""

    def __init__(
        self, stream: TextIO, total_s: float, rate: int, period_s: float = PROGRESS_PERIOD_S
    ) -> None:
        self._stream, self._total_s, self._rate, self._period_s = stream, total_s, rate, period_s
        self._sent = self._received = 0
        self._drawn_at = -math.inf
        self._width = 0

    def __call__(self, sent: int, received: int) -> None:
        self._sent, self._received = sent, received
        if time.monotonic() - self._drawn_at >= self._period_s:
            self._draw()

    def finish(self, outcome: str) -> None:
        """The final line: the figures reached and how the call ended."""
        self._draw(outcome)

    def _draw(self, outcome: str | None = None) -> None:
        text = (
            f"{PROG}: {self._sent / self._rate:.1f} / {self._total_s:.1f} s sent, "
            f"{self._received / self._rate:.1f} s of agent audio received"
        )
        if outcome is not None:
            text += f": {outcome}"
        pad = " " * max(0, self._width - len(text))  # over what is left of the line before
        self._stream.write(f"\r{text}{pad}" + ("" if outcome is None else "\n"))
        self._stream.flush()
        self._width, self._drawn_at = len(text), time.monotonic()


async def run_call(
    url: str,
    pcm: np.ndarray,
    sample_rate: int,
    *,
    encoding: WireEncoding = "pcm16",
    wire_rate: int | None = None,
    frame_ms: int = 20,
    sampling: SamplingParams | None = None,
    noise_gate_db: float | None = None,
    delay_ms: float = 0.0,
    jitter_ms: float = 0.0,
    realtime: bool = True,
    headers: Mapping[str, str] | None = None,
    jitter_seed: int | None = None,
    progress: Progress | None = None,
    prompt: PromptRequest | None = None,
) -> CallResult:
    """Play mono `pcm` (at `sample_rate`) as one call and collect the agent's answer.

    `wire_rate` defaults to the encoding's natural rate (16 kHz pcm16 and opus, 8 kHz mulaw). With
    `realtime=False` frames go out as fast as the socket takes them (delay/jitter ignored).
    `progress` is told the samples sent and received after every frame either way.
    `prompt`: the voice prompt the call opens with (`DuplexClient.connect`).
    Raises DuplexError for connection and server failures, ValueError for empty audio.
    """
    rate = wire_rate or DEFAULT_RATES[encoding]
    wire = resample_whole(np.asarray(pcm, dtype=np.float32), sample_rate, rate)
    if len(wire) == 0:
        raise ValueError("a call needs at least one sample of audio")
    audio = AudioFormat(encoding=encoding, sample_rate=rate, frame_ms=frame_ms)
    frames: list[ReceivedFrame] = []
    send_times: list[float] = []
    received = 0  # agent samples

    async with DuplexClient.connect(
        url,
        audio=audio,
        sampling=sampling,
        noise_gate_db=noise_gate_db,
        headers=headers,
        prompt=prompt,
    ) as c:
        t_start = c.t_ready
        fs = c.frame_samples
        n_frames = -(-len(wire) // fs)
        due = send_schedule(
            n_frames,
            fs / rate,
            t_start,
            delay_ms / 1e3,
            jitter_ms / 1e3,
            random.Random(jitter_seed),
        )

        async def send() -> None:
            for n in range(n_frames):
                if realtime:
                    await asyncio.sleep(max(0.0, due[n] - time.monotonic()))
                await c.send_frame(wire[n * fs : (n + 1) * fs], last=n == n_frames - 1)
                send_times.append(time.monotonic())
                if progress is not None:
                    progress(min(c.samples_sent, len(wire)), received)
            await c.end(len(wire))

        async def receive() -> None:
            nonlocal received
            acks = PlaybackAcks(c)  # what is written counts as played
            async for event in c.events():
                if isinstance(event, ReceivedFrame):
                    frames.append(event)
                    received += len(event.pcm)
                    await acks.received(event)
                    if progress is not None:
                        progress(min(c.samples_sent, len(wire)), received)

        await run_both(send(), receive(), due[-1] - t_start + FINISH_TIMEOUT_S)
        duration = time.monotonic() - t_start
        if c.stats is None:
            raise DuplexError("protocol_violation", "the server closed without sending 'stats'")
        return CallResult(
            ready=c.ready,
            stats=c.stats,
            output=place_frames(frames, len(wire)),
            frames=frames,
            frames_sent=c.frames_sent,
            samples_sent=c.samples_sent,
            send_times=send_times,
            t_start=t_start,
            duration_s=duration,
        )


async def run_both(
    send: Coroutine[Any, Any, None], receive: Coroutine[Any, Any, None], timeout_s: float
) -> None:
    """Run sender and receiver together until the server closes.

    A send fails only when the socket is gone, and then the server's reason (an `error`
    message or close code) arrives on the receive side, so the receiver's error wins.
    """
    send_task = asyncio.ensure_future(send)
    recv_task = asyncio.ensure_future(receive)
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.wait({send_task, recv_task}, return_when=asyncio.FIRST_EXCEPTION)
            if send_task.done() and send_task.exception() is not None:
                await asyncio.wait({recv_task})
                if recv_task.exception() is None:
                    send_task.result()
            recv_task.result()
    except TimeoutError as exc:
        raise DuplexError("timeout", f"the call did not finish within {timeout_s:g} s") from exc
    finally:
        for task in (send_task, recv_task):
            task.cancel()
        await asyncio.gather(send_task, recv_task, return_exceptions=True)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The per-call overrides of the server's sampling defaults (`start.sampling`)."""
    parser.add_argument(
        "--eagerness",
        choices=get_args(Eagerness),
        help="how readily the agent takes the turn (the flags below win over it)",
    )
    parser.add_argument("--temperature", type=float, help="sampling temperature override")
    parser.add_argument("--turn-temperature", type=float, help="speak-or-not temperature override")
    parser.add_argument("--top-k", type=int, help="sampling top-k override")
    parser.add_argument(
        "--speak-up-ms", type=float, help="override: silence after which the agent speaks up"
    )
    parser.add_argument(
        "--start-bias",
        type=float,
        help="override: added to the log-odds of the agent starting to speak",
    )
    parser.add_argument(
        "--barge-in-ms",
        type=float,
        help="override: how long the caller talks over the agent before it falls silent (0: never)",
    )


def sampling_overrides(args: argparse.Namespace, seed: int | None) -> SamplingParams:
    """`start.sampling` from the flags of `add_sampling_arguments`; raises InputError naming
    the flag whose value the protocol refuses."""
    try:
        return SamplingParams(
            eagerness=args.eagerness,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=seed,
            turn_temperature=args.turn_temperature,
            speak_up_ms=args.speak_up_ms,
            start_bias=args.start_bias,
            barge_in_ms=args.barge_in_ms,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `duplex call` (the `duplex` CLI mounts them on its subcommand)."""
    parser.add_argument("--url", default=DEFAULT_URL, help="server endpoint (%(default)s)")
    parser.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help="audio file to play (any rate/channels; downmixed to mono)",
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="write the agent's audio here, time-aligned with the input (and its tail) and at "
        "its sample rate",
    )
    parser.add_argument(
        "--tail-s",
        type=float,
        default=DEFAULT_TAIL_S,
        help="seconds of silence streamed after the input, so the agent can answer its last "
        "words (%(default)s; 0: the call ends with the input)",
    )
    parser.add_argument(
        "--encoding",
        choices=sorted(SUPPORTED_RATES),
        default="pcm16",
        help="wire encoding (mulaw implies 8000 Hz; opus is 16000 or 48000 Hz)",
    )
    parser.add_argument("--rate", type=int, help="wire sample rate (16000 for pcm16)")
    parser.add_argument("--frame-ms", type=int, default=20, help="client frame length (20)")
    add_sampling_arguments(parser)
    parser.add_argument("--seed", type=int, help="sampling seed override")
    voice = parser.add_mutually_exclusive_group()
    voice.add_argument(
        "--prompt",
        metavar="NAME",
        help="open the call with the server's voice prompt NAME (GET /v1/prompts)",
    )
    voice.add_argument(
        "--prompt-file",
        metavar="PATH",
        help="open the call with this speech as the agent's voice prompt (uploaded; at most "
        "the server's max_seconds, 1.92 s for the default model)",
    )
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="simulated one-way uplink delay"
    )
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=0.0,
        help="extra uniform uplink delay in [0, JITTER] per frame, in order",
    )
    parser.add_argument(
        "--noise-gate-db",
        type=float,
        help="override: the noise gate's margin over the line's noise floor (0 = off)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="one line on stderr that shows how far the call is (default: when stderr is a "
        "terminal)",
    )
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")


def _check_args(args: argparse.Namespace) -> tuple[int, SamplingParams]:
    """Validate flags before any I/O; returns the wire rate and the sampling overrides."""
    check_url(args.url)
    if args.encoding == "opus" and not opus_available():
        raise InputError("--encoding opus needs the libopus system library (Debian: libopus0)")
    rates = SUPPORTED_RATES[args.encoding]
    rate = DEFAULT_RATES[args.encoding] if args.rate is None else args.rate
    if rate not in rates:
        use = f"use {rates[0]}" if len(rates) == 1 else f"use one of {', '.join(map(str, rates))}"
        raise InputError(f"--rate {rate} is not supported with {args.encoding}; {use}")
    if not MIN_FRAME_MS <= args.frame_ms <= MAX_FRAME_MS:  # the server checks it divides its tick
        raise InputError(
            f"--frame-ms must be in [{MIN_FRAME_MS}, {MAX_FRAME_MS}], got {args.frame_ms}"
        )
    if args.encoding == "opus" and args.frame_ms not in OPUS_FRAME_MS:
        raise InputError(
            f"--frame-ms {args.frame_ms} is not an Opus packet length; "
            f"use one of {', '.join(map(str, OPUS_FRAME_MS))}"
        )
    if not 0 <= args.tail_s <= MAX_TAIL_S:
        raise InputError(f"--tail-s must be in [0, {MAX_TAIL_S:g}], got {args.tail_s}")
    if args.delay_ms < 0 or args.jitter_ms < 0:
        raise InputError("--delay-ms and --jitter-ms must not be negative")
    if args.noise_gate_db is not None and not 0 <= args.noise_gate_db <= MAX_NOISE_GATE_DB:
        raise InputError(f"--noise-gate-db must be in [0, {MAX_NOISE_GATE_DB:g}]")
    sampling = sampling_overrides(args, args.seed)
    if args.output:
        out = Path(args.output)
        if not out.parent.is_dir():
            raise InputError(f"cannot write {args.output!r}: no directory {str(out.parent)!r}")
        if out.is_dir():
            raise InputError(f"cannot write {args.output!r}: it is a directory")
        if out.suffix[1:].upper() not in sf.available_formats():
            raise InputError(f"cannot write {args.output!r}: unknown audio file extension")
    return rate, sampling


def load_prompt(args: argparse.Namespace) -> PromptRequest | None:
    """`start.prompt` from --prompt or --prompt-file; InputError says why not."""
    if args.prompt_file is not None:
        try:
            pcm, rate = load_input(args.prompt_file)
            return upload_prompt(pcm, rate)
        except (InputError, ValueError) as exc:
            raise InputError(f"--prompt-file: {exc}") from exc
    if args.prompt is None:
        return None
    try:
        return PromptRequest(name=args.prompt)
    except ValidationError as exc:
        raise InputError(f"--prompt {args.prompt!r}: {exc.errors()[0]['msg']}") from exc


def run(args: argparse.Namespace) -> int:
    """Run `duplex call`; errors become one line on stderr and an exit code, never a traceback."""
    progress: ProgressLine | None = None
    try:
        rate, sampling = _check_args(args)
        pcm, in_rate = load_input(args.input)
        prompt = load_prompt(args)
        pcm = np.concatenate([pcm, np.zeros(round(args.tail_s * in_rate), dtype=np.float32)])
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
        if sys.stderr.isatty() if args.progress is None else args.progress:
            progress = ProgressLine(sys.stderr, len(pcm) / in_rate, rate)
        try:
            result = asyncio.run(
                run_call(
                    args.url,
                    pcm,
                    in_rate,
                    encoding=args.encoding,
                    wire_rate=rate,
                    frame_ms=args.frame_ms,
                    sampling=sampling,
                    noise_gate_db=args.noise_gate_db,
                    delay_ms=args.delay_ms,
                    jitter_ms=args.jitter_ms,
                    headers=headers,
                    progress=progress,
                    prompt=prompt,
                )
            )
        except BaseException:
            if progress is not None:
                progress.finish("failed")  # the error's line comes below it
            raise
        if progress is not None:
            progress.finish("done")
        if args.output:
            out = fit_length(resample_whole(result.output, rate, in_rate), len(pcm))
            try:
                sf.write(args.output, np.clip(out, -1.0, 1.0), in_rate)
            except (sf.LibsndfileError, OSError, RuntimeError, TypeError) as exc:
                raise InputError(f"cannot write {args.output!r}: {exc}") from exc
    except InputError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except DuplexError as exc:
        return _fail(_describe(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(_human(summary, args.output), file=sys.stderr)
    return 0


def _describe(exc: DuplexError) -> str:
    close = f" (close {exc.close_code})" if exc.close_code else ""
    if exc.code in ("connect_failed", "connection_closed", "timeout", "protocol_violation"):
        return f"{exc.message}{close}"
    return f"server error {exc.code}: {exc.message}{close}"


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _human(s: dict[str, Any], output: str | None) -> str:
    lines = [
        f"{PROG}: session {s['session_id']}: {s['duration_s']:.2f} s, {s['ticks']} ticks, "
        f"{s['frames_sent']} frames sent, {s['frames_received']} received",
        f"  server-added latency ms: p50 {_ms(s['latency_ms_p50'])}, "
        f"p95 {_ms(s['latency_ms_p95'])}, p99 {_ms(s['latency_ms_p99'])}",
        f"  estimates {s['estimates_made']} made, {s['estimates_replaced']} replaced; "
        f"{s['late_samples_dropped']} late samples dropped, {s['missing_chunks']} missing "
        f"chunks, {s['overruns']} overruns, {s['re_anchors']} re-anchors",
        f"  noise floor {s['noise_floor_db']:.1f} dBFS, {s['frames_gated']} frames gated",
    ]
    if output:
        lines.append(f"  wrote {output}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (`python -m clients.call`), also used by the unit tests."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
