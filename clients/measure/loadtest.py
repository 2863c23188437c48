"""`duplex loadtest`: many simulated callers against one server, with an SLO gate.

Every caller streams real speech at real-time pace (never faster: a voice server's load is set
by the clock, not by throughput) through its own session, optionally behind simulated network
delay and jitter. Afterwards the run is measured three ways:

- the server's own view, from each session's `stats` message (server-added latency, overruns,
  late and missing audio) and from `/metrics` scraped every second (tick compute time);
- the network's view: when agent frames arrived against when they were due;
- the caller's view: turn latency, from voice activity detection (silero-vad) on both streams.

Callers speak the native protocol (`/v1/duplex`), or as a Twilio Media Stream
(clients/measure/twilio_sim.py), or as an OpenAI Realtime app (clients/realtime_client.py: it
plays the agent's deltas as they come and, when the caller talks over them, truncates the
agent's item at what it played). Pacing, counting and the analysis are the same for all three;
only how a call is placed and where its agent audio lies on the caller's timeline differ.

The measures are pure functions in clients/measure/reception.py; the report, its table and plots are
in clients/measure/loadtest_report.py. `run_loadtest(config)` is the coroutine API (tests use it);
`run(args)` is the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.error import URLError
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from clients.call import (
    DEFAULT_RATES,
    FINISH_TIMEOUT_S,
    InputError,
    WireEncoding,
    check_url,
    load_input,
    place_frames,
    run_both,
    send_schedule,
)
from clients.client import (
    CONNECT_FAILED,
    PROTOCOL_VIOLATION,
    DuplexClient,
    DuplexError,
    PlaybackAcks,
    ReceivedFrame,
)
from clients.measure.loadtest_report import (
    CallerReport,
    LoadtestReport,
    codes,
    fmt,
    metrics_summary,
    overall,
    percentile,
    rounded,
    summary_table,
    write_plots,
)
from clients.measure.reception import heard_time, receive_figures, simulate_downlink, turn_latencies
from clients.measure.speech_activity import speech_segments, vad_name
from clients.measure.twilio_sim import run_twilio_call
from clients.realtime_client import REFUSALS, Playback, RealtimeClient, RealtimeEncoding
from streaming.dependencies import require_tools
from streaming.resample import resample_whole
from streaming.wire import (
    SUPPORTED_RATES,
    AudioFormat,
    ReadyMessage,
    SamplingParams,
    StatsMessage,
)

__all__ = [
    "CallerRun",
    "LoadtestConfig",
    "Live",
    "add_arguments",
    "main",
    "metrics_url",
    "place_call",
    "run",
    "run_loadtest",
    "scrape_metrics",
    "tick_slots",
]

PROG = "duplex loadtest"
DEFAULT_URL = "ws://127.0.0.1:8000/v1/duplex"
Protocol = Literal["native", "twilio", "realtime"]
ENDPOINTS: dict[str, str] = {  # the default --url's path per protocol
    "native": "/v1/duplex",
    "twilio": "/v1/telephony/twilio",
    "realtime": "/v1/realtime",
}
# A Realtime call ends when the client closes: after its last append it waits this long for
# the agent's last chunks (the session clock starts up to a tick after the first append).
REALTIME_DRAIN_S = 0.5
EXIT_USAGE = 2
EXIT_FAILURE = 1

# Silence between the clips a caller plays: long enough that every clip's end is a turn the
# agent may answer before the caller talks again.
PAUSE_S = 2.0
DEFAULT_SENTENCES = (
    "Hello, I would like to book a table for two tonight.",
    "What time does the restaurant open on Sundays?",
    "Can you tell me what the weather will be like in Paris tomorrow?",
    "Thanks, that is all I needed.",
)
METRICS_PERIOD_S = 1.0


@dataclass(frozen=True, slots=True)
class LoadtestConfig:
    """One load test. `inputs` empty: speak DEFAULT_SENTENCES with espeak-ng."""

    url: str = DEFAULT_URL
    callers: int = 4
    duration_s: float = 30.0
    ramp_up_s: float = 0.0
    inputs: tuple[str, ...] = ()
    encoding: WireEncoding = "pcm16"
    rate: int | None = None
    frame_ms: int = 20
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    seed: int | None = None
    api_key: str | None = None
    progress: bool = False
    # twilio: clients/measure/twilio_sim.py, mu-law 8k; realtime: clients/realtime_client.py
    protocol: Protocol = "native"

    @property
    def wire_rate(self) -> int:
        if self.rate:
            return self.rate
        return 24000 if self.protocol == "realtime" else DEFAULT_RATES[self.encoding]


# ---------------------------------------------------------------------------------------------
# Inputs


def default_inputs(directory: Path) -> list[Path]:
    """DEFAULT_SENTENCES spoken by espeak-ng, one wav each."""
    if shutil.which("espeak-ng") is None:
        raise InputError("espeak-ng is not installed: install it or pass --input PATH")
    paths = []
    for i, text in enumerate(DEFAULT_SENTENCES):
        path = directory / f"sentence{i}.wav"
        try:
            subprocess.run(
                ["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True
            )
        except subprocess.CalledProcessError as exc:
            raise InputError(f"espeak-ng failed: {exc.stderr.decode().strip()}") from exc
        paths.append(path)
    return paths


def caller_audio(
    clips: Sequence[np.ndarray], rate: int, duration_s: float, first: int
) -> np.ndarray:
    """`duration_s` of the clips in turn from clip `first`, PAUSE_S of silence after each."""
    n = max(1, round(duration_s * rate))
    pause = np.zeros(round(PAUSE_S * rate), dtype=np.float32)
    parts: list[np.ndarray] = []
    k = first
    while sum(len(p) for p in parts) < n:
        parts += [clips[k % len(clips)], pause]
        k += 1
    return np.concatenate(parts)[:n]


# ---------------------------------------------------------------------------------------------
# Running callers


@dataclass(slots=True)
class Live:
    """Counters the progress line shows while callers run."""

    connected: int = 0
    finished: int = 0
    sent: int = 0
    received: int = 0
    errors: int = 0


@dataclass(slots=True)
class CallerRun:
    """One call of one caller: its audio, what came back, and its report (`duplex soak`
    places many of them back to back)."""

    report: CallerReport
    audio: np.ndarray
    frames: list[ReceivedFrame] = field(default_factory=list)
    ready: ReadyMessage | None = None
    t_ready: float = 0.0
    stats: StatsMessage | None = None  # never over Twilio or Realtime: they carry no stats
    chunk_samples: int = 0
    tick_s: float = 0.0
    finished: bool = False
    # Realtime deltas carry no position, and only the agent's speech: `frames` are then placed
    # on their estimated ticks, due from `t_due` (for the receive figures), and `heard` where
    # the caller's player played them, from `t_ready` (the caller's sample 0); a hole between
    # frames is silence, not a loss.
    heard: list[ReceivedFrame] | None = None
    t_due: float | None = None


def _rng(seed: int | None, caller: int, stream: str) -> random.Random:
    return random.Random(None if seed is None else f"{seed}:{caller}:{stream}")


async def place_call(
    run: CallerRun, cfg: LoadtestConfig, t0: float, start_at: float, live: Live
) -> None:
    """One caller: connect at `start_at`, stream its audio, collect the agent's frames.

    Every failure is recorded in the caller's report; none escapes to stop the others.
    """
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    rep, rate, wire = run.report, cfg.wire_rate, run.audio
    audio = AudioFormat(encoding=cfg.encoding, sample_rate=rate, frame_ms=cfg.frame_ms)
    seed = None if cfg.seed is None else cfg.seed + rep.caller
    headers = _headers(cfg)
    try:
        if cfg.protocol == "twilio":
            await _twilio_call(run, cfg, t0, live)
            return
        if cfg.protocol == "realtime":
            await _realtime_call(run, cfg, t0, live)
            return
        async with DuplexClient.connect(
            cfg.url, audio=audio, sampling=SamplingParams(seed=seed), headers=headers
        ) as c:
            rep.connected, rep.session_id = True, c.ready.session_id
            rep.start_s = round(c.t_ready - t0, 3)
            run.ready, run.t_ready = c.ready, c.t_ready
            run.chunk_samples, run.tick_s = c.ready.chunk_samples, c.ready.tick_ms / 1e3
            live.connected += 1
            fs = c.frame_samples
            due = _schedule(cfg, rep.caller, len(wire), fs, c.t_ready)

            async def send() -> None:
                last = len(due) - 1
                await _paced(
                    due,
                    lambda n: c.send_frame(wire[n * fs : (n + 1) * fs], last=n == last),
                    rep,
                    live,
                )
                await c.end(len(wire))

            async def receive() -> None:
                acks = PlaybackAcks(c)  # a caller hears each frame as it comes
                async for event in c.events():
                    if isinstance(event, ReceivedFrame):
                        run.frames.append(event)
                        live.received += 1
                        await acks.received(event)

            try:
                await run_both(send(), receive(), due[-1] - c.t_ready + FINISH_TIMEOUT_S)
            finally:
                live.connected -= 1
            if c.stats is None:
                raise DuplexError(PROTOCOL_VIOLATION, "the server closed without sending 'stats'")
            run.stats, run.finished = c.stats, True
    except DuplexError as exc:
        rep.status, rep.message = exc.code, str(exc)
    except Exception as exc:  # a client bug must still not stop the other callers
        rep.status, rep.message = "client_exception", f"{type(exc).__name__}: {exc}"
    finally:
        rep.frames_received = sum(not f.is_end_marker for f in run.frames)
        live.finished += 1
        live.errors += rep.status != "ok"


def _headers(cfg: LoadtestConfig) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else None


def _schedule(
    cfg: LoadtestConfig, caller: int, samples: int, frame_samples: int, t_start: float
) -> list[float]:
    """When each of the caller's frames leaves: real time from `t_start`, behind the
    simulated uplink delay and jitter."""
    return send_schedule(
        -(-samples // frame_samples),
        frame_samples / cfg.wire_rate,
        t_start,
        cfg.delay_ms / 1e3,
        cfg.jitter_ms / 1e3,
        _rng(cfg.seed, caller, "up"),
    )


async def _paced(
    due: Sequence[float], send: Callable[[int], Awaitable[None]], rep: CallerReport, live: Live
) -> None:
    """Send frame n (`send(n)`) at `due[n]`, counting it."""
    for n, t in enumerate(due):
        await asyncio.sleep(max(0.0, t - time.monotonic()))
        await send(n)
        rep.frames_sent += 1
        live.sent += 1


async def _twilio_call(run: CallerRun, cfg: LoadtestConfig, t0: float, live: Live) -> None:
    """One caller as a simulated Twilio stream; its agent media become one frame per tick.

    Twilio's messages carry no sample positions and no session clock: ticks (the media between
    two marks) are placed by arrival order, and the timeline is anchored where the earliest
    tick is least late, so receive figures measure jitter, not the unknown start offset.
    """
    rep = run.report
    live.connected += 1
    try:
        r = await run_twilio_call(cfg.url, run.audio, cfg.wire_rate, headers=_headers(cfg))
    except DuplexError as exc:
        rep.connected = exc.code != CONNECT_FAILED
        raise
    finally:
        live.connected -= 1
    rep.connected, rep.session_id = True, r.stream_sid
    rep.start_s, rep.frames_sent = round(r.t_start - t0, 3), r.frames_sent
    live.sent += r.frames_sent
    ticks: dict[int, list[np.ndarray]] = {}
    arrivals: dict[int, float] = {}
    for m in r.media:
        ticks.setdefault(m.tick, []).append(m.pcm)
        arrivals.setdefault(m.tick, m.arrival)
    first = 0
    for k, parts in ticks.items():
        pcm = np.concatenate(parts)
        run.frames.append(ReceivedFrame(k, first, pcm, False, arrivals[k]))
        first += len(pcm)
    live.received += len(run.frames)
    _set_tick(run, cfg.wire_rate)
    rate = cfg.wire_rate
    run.t_ready = min((f.arrival - f.first_sample / rate for f in run.frames), default=r.t_start)
    run.finished = True


def _set_tick(run: CallerRun, rate: int) -> None:
    """A protocol that does not say its tick: the commonest frame is one tick's audio."""
    sizes = Counter(len(f.pcm) for f in run.frames)
    run.chunk_samples = sizes.most_common(1)[0][0] if sizes else 1
    run.tick_s = run.chunk_samples / rate


async def _realtime_call(run: CallerRun, cfg: LoadtestConfig, t0: float, live: Live) -> None:
    """One caller as an OpenAI Realtime app: it streams its audio in real time as appends,
    plays the agent's deltas as they come (`Playback`), and when the server says the caller
    started speaking (`input_audio_buffer.speech_started`) while agent audio is playing or its
    response is open, it stops playing and truncates the agent's item at what it played, as
    the openai-agents SDK, pipecat and LiveKit do. The call ends when it closes the socket.

    A refusal at admission (the first append: `server_full`, `server_shutdown`) is a connect
    failure; any other `error` event is the caller's error, and its call goes on.
    """
    rep, rate, wire = run.report, cfg.wire_rate, run.audio
    encoding: RealtimeEncoding = "mulaw" if cfg.encoding == "mulaw" else "pcm16"
    deltas: list[tuple[str, np.ndarray, float]] = []  # item, audio, arrival
    seen: Counter[str] = Counter()  # the report's Realtime counts
    async with RealtimeClient.connect(
        cfg.url, encoding=encoding, rate=rate, headers=_headers(cfg)
    ) as c:
        rep.connected, rep.session_id = True, str(c.session.get("id"))
        run.t_ready = time.monotonic()  # the caller's sample 0
        rep.start_s = round(run.t_ready - t0, 3)
        player = Playback(run.t_ready, rate)
        live.connected += 1
        fs = round(rate * cfg.frame_ms / 1000)
        due = _schedule(cfg, rep.caller, len(wire), fs, run.t_ready)
        open_item: str | None = None  # the open response's item

        async def send() -> None:
            await _paced(due, lambda n: c.append(wire[n * fs : (n + 1) * fs]), rep, live)
            await asyncio.sleep(REALTIME_DRAIN_S)
            await c.close()

        async def barge_in(t: float) -> None:
            """The caller talks over the agent: stop playing, truncate at what was played."""
            item = open_item or (deltas[-1][0] if player.playing(t) else None)
            if item is None:
                return
            played = player.played_ms(item, t)
            seen["unplayed_samples"] += player.flush(t)
            seen["barge_ins"] += 1
            await c.truncate(item, played)

        async def receive() -> None:
            nonlocal open_item
            async for ev in c.events():
                if ev.pcm is not None:
                    item = str(ev.data.get("item_id"))
                    deltas.append((item, ev.pcm, ev.arrival))
                    player.play(item, ev.pcm, ev.arrival)
                    live.received += 1
                elif ev.type == "response.output_item.added":
                    open_item = str(ev.data["item"]["id"])
                elif ev.type == "response.done":
                    open_item = None
                    seen["responses"] += 1
                elif ev.type == "input_audio_buffer.speech_started":
                    await barge_in(ev.arrival)
                elif ev.type == "conversation.item.truncated":
                    seen["truncated"] += 1
                elif ev.error is not None:
                    seen["error_events"] += 1
                    if rep.status == "ok":  # the call goes on; the caller has an error
                        rep.status, rep.message = ev.error

        try:
            await run_both(send(), receive(), due[-1] - run.t_ready + FINISH_TIMEOUT_S)
        except DuplexError as exc:
            if exc.code in REFUSALS and not deltas:
                rep.connected = False
            raise
        finally:
            live.connected -= 1
            rep.responses, rep.barge_ins = seen["responses"], seen["barge_ins"]
            rep.truncated, rep.error_events = seen["truncated"], seen["error_events"]
            rep.unplayed_ms = round(seen["unplayed_samples"] / rate * 1e3, 1)
    run.heard = [
        ReceivedFrame(i, p.position, p.pcm, False, p.arrival) for i, p in enumerate(player.played)
    ]
    run.frames = [ReceivedFrame(i, 0, pcm, False, t) for i, (_, pcm, t) in enumerate(deltas)]
    _set_tick(run, rate)
    slots = tick_slots([d[0] for d in deltas], [d[2] for d in deltas], run.tick_s)
    run.frames = [
        replace(f, first_sample=k * run.chunk_samples)
        for f, k in zip(run.frames, slots, strict=True)
    ]
    run.t_due = min(
        (f.arrival - k * run.tick_s for f, k in zip(run.frames, slots, strict=True)), default=None
    )
    run.finished = True


def tick_slots(items: Sequence[str], arrivals: Sequence[float], tick_s: float) -> list[int]:
    """The tick of each Realtime delta (given its item and arrival), counted from the first
    one's. A response's deltas are consecutive chunks (its first silent chunk ends it); a new
    response's first delta is placed by its arrival, against the least late delta before it."""
    slots: list[int] = []
    anchor = math.inf  # tick 0's time, from the least late delta so far
    for i, (item, t) in enumerate(zip(items, arrivals, strict=True)):
        if not slots:
            k = 0
        elif item == items[i - 1]:
            k = slots[-1] + 1
        else:
            k = max(slots[-1] + 1, round((t - anchor) / tick_s))
        slots.append(k)
        anchor = min(anchor, t - k * tick_s)
    return slots


def metrics_url(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "/metrics", "", ""))


def scrape_metrics(url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The few figures the report needs from one /metrics page."""
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=2.0) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    buckets: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "duplex_server_latency_seconds_bucket":
                buckets[s.labels["le"]] = s.value
            elif not s.labels:
                values[s.name] = s.value
    return {
        "tick_sum": values.get("duplex_tick_compute_seconds_sum", 0.0),
        "tick_count": values.get("duplex_tick_compute_seconds_count", 0.0),
        "overruns": values.get("duplex_overrun_ticks_total", 0.0),  # late ticks, not calls
        "sessions_active": values.get("duplex_sessions_active", 0.0),
        "latency_buckets": buckets,
        # prometheus_client's process collector, where the server registers it (Linux)
        "rss_bytes": values.get("process_resident_memory_bytes"),
        "open_fds": values.get("process_open_fds"),
        "cpu_s": values.get("process_cpu_seconds_total"),
    }


async def _watch_metrics(
    url: str, headers: dict[str, str], t0: float, samples: list[dict[str, Any]], errors: list[str]
) -> None:
    """Scrape /metrics every second until cancelled; the first failure stops it (noted)."""
    while True:
        try:
            page = await asyncio.to_thread(scrape_metrics, url, headers)
        except (URLError, OSError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
            return
        samples.append({"t": time.monotonic() - t0, **page})
        await asyncio.sleep(METRICS_PERIOD_S)


async def _progress(live: Live, total: int) -> None:
    """One updating line on stderr until cancelled."""
    from tqdm import tqdm

    with tqdm(total=total, unit="call", desc=PROG, file=sys.stderr) as bar:

        def show() -> None:
            bar.n = live.finished
            bar.set_postfix_str(
                f"connected {live.connected}, sent {live.sent}, "
                f"received {live.received}, errors {live.errors}"
            )

        try:
            while True:
                show()
                await asyncio.sleep(0.5)
        finally:
            show()


async def run_loadtest(config: LoadtestConfig) -> LoadtestReport:
    """Run the whole load test and measure it. Raises InputError for unusable inputs."""
    rate = config.wire_rate
    with tempfile.TemporaryDirectory(prefix="duplex-loadtest-") as tmp:
        paths = list(config.inputs) or [str(p) for p in default_inputs(Path(tmp))]
        clips = [resample_whole(*load_input(p), rate) for p in paths]
    runs = [
        CallerRun(CallerReport(caller=i), caller_audio(clips, rate, config.duration_s, i))
        for i in range(config.callers)
    ]
    live = Live()
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    samples: list[dict[str, Any]] = []
    metric_errors: list[str] = []
    t0 = time.monotonic()
    spread = config.ramp_up_s / max(1, config.callers - 1)
    helpers = [
        asyncio.create_task(
            _watch_metrics(metrics_url(config.url), headers, t0, samples, metric_errors)
        )
    ]
    if config.progress:
        helpers.append(asyncio.create_task(_progress(live, config.callers)))
    try:
        await asyncio.gather(
            *(place_call(r, config, t0, t0 + i * spread, live) for i, r in enumerate(runs))
        )
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    if not metric_errors:  # one last page, so the run's final ticks are counted
        try:
            page = await asyncio.to_thread(scrape_metrics, metrics_url(config.url), headers)
            samples.append({"t": time.monotonic() - t0, **page})
        except (URLError, OSError, ValueError) as exc:
            metric_errors.append(str(exc))
    wall = time.monotonic() - t0
    await asyncio.to_thread(_analyse, runs, config)  # VAD takes seconds: keep the loop free
    cfg = asdict(config)
    cfg.pop("api_key")
    cfg["wire_rate"] = rate
    cfg["inputs"] = paths if config.inputs else ["(espeak-ng) " + s for s in DEFAULT_SENTENCES]
    ready = next((r.ready for r in runs if r.ready is not None), None)
    metrics = metrics_summary(samples, metric_errors)
    metrics["tick_ms"] = ready.tick_ms if ready else None
    metrics["lead_ms"] = ready.lead_ms if ready else None
    return LoadtestReport(
        config=cfg,
        wall_s=round(wall, 3),
        vad=vad_name(),
        callers=[r.report for r in runs],
        overall=overall([r.report for r in runs]),
        server_metrics=metrics,
    )


def _analyse(runs: Sequence[CallerRun], cfg: LoadtestConfig) -> None:
    """Fill in each completed caller's stats, receive figures and turn latencies."""
    done = [r for r in runs if r.finished]
    rate = cfg.wire_rate
    streams: list[np.ndarray] = []
    for r in done:
        streams += [r.audio, place_frames(_heard(r), len(r.audio))]
    segments = speech_segments(streams, rate)
    for k, r in enumerate(done):
        rep, s, chunk = r.report, r.stats, r.chunk_samples
        if s is not None:
            rep.latency_ms_p50, rep.latency_ms_p95 = s.latency_ms_p50, s.latency_ms_p95
            rep.latency_ms_p99, rep.overruns = s.latency_ms_p99, s.overruns
            rep.estimates_made, rep.estimates_replaced = s.estimates_made, s.estimates_replaced
            rep.late_samples_dropped = s.late_samples_dropped
            rep.missing_chunks, rep.re_anchors = s.missing_chunks, s.re_anchors
        arrived = simulate_downlink(  # in arrival order, as the network would deliver them
            [f.arrival for f in r.frames],
            cfg.delay_ms / 1e3,
            cfg.jitter_ms / 1e3,
            _rng(cfg.seed, rep.caller, "down"),
        )
        order = sorted(range(len(r.frames)), key=lambda i: r.frames[i].first_sample)
        recv = receive_figures(
            [r.frames[i].first_sample for i in order],
            [len(r.frames[i].pcm) for i in order],
            [arrived[i] for i in order],
            t_ready=r.t_ready if r.t_due is None else r.t_due,
            rate=rate,
            total_samples=len(r.audio),
            chunk_samples=chunk,
            tick_s=r.tick_s,
            base_delay_s=cfg.delay_ms / 1e3,
        )
        rep.recv_jitter_ms, rep.recv_late_ms_p99 = (
            rounded(recv.jitter_ms),
            rounded(recv.late_ms_p99),
        )
        # where only speech is sent (Realtime), a hole is silence: only late frames are gaps
        rep.recv_gaps = recv.gaps if r.heard is None else recv.late_frames
        heard = _heard(r)
        order = sorted(range(len(heard)), key=lambda i: heard[i].first_sample)
        firsts = [heard[i].first_sample for i in order]
        rel = [arrived[i] - r.t_ready for i in order]
        onsets = [
            heard_time(round(start * rate), firsts, rel, rate) for start, _ in segments[2 * k + 1]
        ]
        turns = turn_latencies(segments[2 * k], onsets, len(r.audio) / rate)
        rep.turns, rep.turns_answered = turns.count, len(turns.latencies_s)
        rep.turn_latencies_ms = [round(x * 1e3, 1) for x in turns.latencies_s]
        rep.turn_latency_ms_p50 = percentile(rep.turn_latencies_ms, 50)
        rep.turn_latency_ms_p95 = percentile(rep.turn_latencies_ms, 95)


def _heard(run: CallerRun) -> list[ReceivedFrame]:
    """The agent's frames where the caller heard them (in arrival order, as `frames`)."""
    return run.frames if run.heard is None else run.heard


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `duplex loadtest` (the `duplex` CLI mounts them on its subcommand)."""
    parser.description = (
        "Run N simulated callers against a duplex server at real-time pace and report latency, "
        "overruns, jitter, turn latency and errors; exit 1 when --slo-p99-ms is missed."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="server endpoint (%(default)s)")
    parser.add_argument("--callers", type=int, default=4, help="simulated callers (4)")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="length of each call in seconds (30)"
    )
    parser.add_argument(
        "--ramp-up",
        type=float,
        default=0.0,
        help="start the callers evenly spread over this many seconds (0); "
        "the run takes about ramp-up + duration",
    )
    parser.add_argument(
        "--input",
        action="append",
        metavar="PATH",
        help="speech file a caller plays (repeatable; callers take them in turn, each starting "
        f"at a different one, with {PAUSE_S:g} s of silence after each, looped to --duration). "
        "Default: a few sentences synthesized once with espeak-ng into a temp dir",
    )
    parser.add_argument("--encoding", choices=sorted(SUPPORTED_RATES), help="wire encoding (pcm16)")
    parser.add_argument("--rate", type=int, help="wire sample rate (16000 for pcm16)")
    parser.add_argument("--frame-ms", type=int, default=20, help="client frame length (20)")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="simulated one-way network delay per caller, both directions: real on the uplink "
        "(frames are sent later); on the downlink it is simulated on the receive side, by "
        "moving the recorded arrival times before jitter, gaps and turn latency are computed",
    )
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=0.0,
        help="extra uniform delay in [0, JITTER] per frame, both directions, never reordering",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="seeds the network simulation and the callers' sampling (caller i: seed + i)",
    )
    parser.add_argument("--json-out", metavar="PATH", help="write the JSON report here")
    parser.add_argument(
        "--plots-dir", metavar="DIR", help="write latency_cdf.png and tick_time.png here"
    )
    parser.add_argument(
        "--slo-p99-ms",
        type=float,
        help="exit 1 when the server-added latency p99 (worst caller) exceeds this",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument(
        "--protocol",
        choices=get_args(Protocol),
        default="native",
        help="native: /v1/duplex; twilio: each caller is a simulated Twilio Media Stream "
        "(mu-law 8 kHz; the default --url becomes /v1/telephony/twilio; no server-side stats "
        "per caller, and --delay-ms/--jitter-ms apply to the downlink analysis only); "
        "realtime: each caller is an OpenAI Realtime app on /v1/realtime (pcm16 at 24 kHz "
        "unless --encoding/--rate say otherwise) that truncates the agent's item when it "
        "talks over it; no server-side stats per caller",
    )


def _config(args: argparse.Namespace) -> LoadtestConfig:
    """Validate flags before any I/O."""
    check_url(args.url)
    if args.slo_p99_ms is not None and not args.slo_p99_ms > 0:
        raise InputError(f"--slo-p99-ms must be > 0, got {args.slo_p99_ms:g}")
    url = args.url
    if url == DEFAULT_URL:
        url = DEFAULT_URL.replace(ENDPOINTS["native"], ENDPOINTS[args.protocol])
    encoding: WireEncoding = args.encoding or "pcm16"
    rate = DEFAULT_RATES[encoding] if args.rate is None else args.rate
    if args.protocol == "realtime":
        if encoding == "opus":
            raise InputError("--protocol realtime streams pcm16 or mulaw (no Opus in Realtime)")
        if args.rate is None and encoding == "pcm16":
            rate = 24000  # the Realtime API's own rate
    if args.protocol == "twilio":
        if args.encoding not in (None, "mulaw") or args.rate not in (None, 8000):
            raise InputError(
                "--protocol twilio always streams mu-law at 8000 Hz; "
                "leave out --encoding and --rate"
            )
        encoding, rate = "mulaw", 8000
    if rate not in SUPPORTED_RATES[encoding]:
        raise InputError(
            f"--rate {rate} is not supported with {encoding}; use one of "
            + ", ".join(map(str, SUPPORTED_RATES[encoding]))
        )
    for flag, value, low in (
        ("--callers", args.callers, 1),
        ("--duration", args.duration, 1e-9),
        ("--frame-ms", args.frame_ms, 1),
        ("--ramp-up", args.ramp_up, 0),
        ("--delay-ms", args.delay_ms, 0),
        ("--jitter-ms", args.jitter_ms, 0),
    ):
        if value < low:
            raise InputError(f"{flag} must be {'positive' if low else 'non-negative'}, got {value}")
    if args.json_out and not Path(args.json_out).parent.is_dir():
        raise InputError(f"cannot write {args.json_out!r}: no such directory")
    return LoadtestConfig(
        url=url,
        callers=args.callers,
        duration_s=args.duration,
        ramp_up_s=args.ramp_up,
        inputs=tuple(args.input or ()),
        encoding=encoding,
        rate=rate,
        frame_ms=args.frame_ms,
        delay_ms=args.delay_ms,
        jitter_ms=args.jitter_ms,
        seed=args.seed,
        api_key=args.api_key,
        progress=not args.quiet and sys.stderr.isatty(),
        protocol=args.protocol,
    )


def run(args: argparse.Namespace) -> int:
    """Run `duplex loadtest`: report on stdout; problems are one line on stderr."""
    require_tools("silero_vad")  # the analysis needs them: say so now, not after the run
    if args.plots_dir:
        require_tools("matplotlib")
    try:
        report = asyncio.run(run_loadtest(_config(args)))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=1))
        if args.plots_dir:
            write_plots(report, Path(args.plots_dir))
    except InputError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    print(json.dumps(report.to_dict()) if args.json else summary_table(report))
    o = report.overall
    if not o["completed"]:
        failures = Counter(o["connect_failures"]) + Counter(o["errors"])
        return _fail(f"no caller completed at {args.url}: " + codes(dict(failures)))
    p99 = o["latency_ms_p99"]
    if args.slo_p99_ms is not None and (p99 is None or p99 > args.slo_p99_ms):
        return _fail(f"SLO missed: server-added latency p99 {fmt(p99)} ms > {args.slo_p99_ms:g} ms")
    return 0


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"{PROG}: {'error: ' if code == EXIT_USAGE else ''}{message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (`python -m clients.measure.loadtest`), also used by the tests."""
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
