"""`duplex loadtest`: many simulated callers against one server, with an SLO gate.

Every caller streams real speech at real-time pace (never faster: a voice server's load is set
by the clock, not by throughput) through its own session, optionally behind simulated network
delay and jitter. Afterwards the run is measured three ways:

- the server's own view, from each session's `stats` message (server-added latency, overruns,
  late and missing audio) and from `/metrics` scraped every second (tick compute time);
- the network's view: when agent frames arrived against when they were due;
- the caller's view: turn latency, from voice activity detection (silero-vad) on both streams.

`run_loadtest(config)` is the coroutine API (tests use it); `run(args)` is the CLI.
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
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
    ReceivedFrame,
)
from clients.speech_activity import Segment, speech_segments, vad_name
from clients.twilio_sim import run_twilio_call
from server.protocol import (
    SUPPORTED_RATES,
    AudioFormat,
    ReadyMessage,
    SamplingParams,
    StatsMessage,
)
from streaming.resample import resample_whole

__all__ = [
    "CallerReport",
    "LoadtestConfig",
    "LoadtestReport",
    "ReceiveFigures",
    "add_arguments",
    "heard_time",
    "main",
    "receive_figures",
    "run",
    "run_loadtest",
    "simulate_downlink",
    "summary_table",
    "turn_latencies",
    "write_plots",
]

PROG = "duplex loadtest"
DEFAULT_URL = "ws://127.0.0.1:8000/v1/duplex"
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
# A user turn ends where a speech segment is followed by at least this much non-speech.
MIN_PAUSE_S = 0.3
# An agent onset later than this after the user's turn end is not an answer to it.
RESPONSE_WINDOW_S = 3.0
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
    protocol: Literal["native", "twilio"] = "native"  # twilio: clients/twilio_sim.py, mu-law 8k

    @property
    def wire_rate(self) -> int:
        return self.rate or DEFAULT_RATES[self.encoding]


@dataclass(slots=True)
class CallerReport:
    """One caller's figures; `status` is "ok" or the error code that ended it.

    Figures a failed caller could not measure stay None (shown as "-"), never a false 0.
    """

    caller: int
    status: str = "ok"
    message: str | None = None
    connected: bool = False
    session_id: str | None = None
    start_s: float = 0.0  # when it connected, from the start of the test
    frames_sent: int = 0
    frames_received: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    overruns: int | None = None
    estimates_made: int | None = None
    estimates_replaced: int | None = None
    late_samples_dropped: int | None = None
    missing_chunks: int | None = None
    re_anchors: int | None = None
    recv_jitter_ms: float | None = None
    recv_late_ms_p99: float | None = None
    recv_gaps: int | None = None
    turns: int | None = None
    turns_answered: int | None = None
    turn_latency_ms_p50: float | None = None
    turn_latency_ms_p95: float | None = None
    turn_latencies_ms: list[float] = field(default_factory=list)


@dataclass(slots=True)
class LoadtestReport:
    """The whole run: per caller, overall, and the server's metrics over time."""

    config: dict[str, Any]
    wall_s: float
    vad: str
    callers: list[CallerReport]
    overall: dict[str, Any]
    server_metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Analysis (pure functions: the unit tests feed them synthetic streams)


def simulate_downlink(
    arrivals: Sequence[float], delay_s: float, jitter_s: float, rng: random.Random
) -> list[float]:
    """Arrival times as if the downlink added `delay_s + U[0, jitter_s]` per frame, in order.

    The server's frames cannot be held back on a real socket from here, so the downlink is
    simulated on the receive side; as on TCP, a frame never overtakes the one before it.
    """
    out: list[float] = []
    for a in arrivals:
        t = a + delay_s + (rng.uniform(0.0, jitter_s) if jitter_s else 0.0)
        out.append(max(t, out[-1]) if out else t)
    return out


@dataclass(frozen=True, slots=True)
class ReceiveFigures:
    """How the agent stream arrived, as a listener without a jitter buffer would hear it."""

    jitter_ms: float | None  # standard deviation of (arrival - due)
    late_ms_p99: float | None  # p99 of (arrival - due)
    late_frames: int  # arrived more than one tick after due
    missing_frames: int  # never arrived

    @property
    def gaps(self) -> int:
        return self.late_frames + self.missing_frames


def receive_figures(
    first_samples: Sequence[int],
    lengths: Sequence[int],
    arrivals: Sequence[float],
    *,
    t_ready: float,
    rate: int,
    total_samples: int,
    chunk_samples: int,
    tick_s: float,
    base_delay_s: float = 0.0,
) -> ReceiveFigures:
    """Jitter and gaps of the agent stream: a frame is due at t_ready + first_sample/rate.

    Frames are placed by first_sample and length, not by index (the server may shift them by
    a codec delay), so missing audio is found as holes in the coverage of [0, total_samples),
    each counted in frames, rounded (a shift of a few samples at the end is no lost frame).
    `base_delay_s` (the injected downlink delay) moves every due time: a fixed delay is latency,
    not jitter, and a playout buffer would absorb it; what is left is what a listener hears as
    holes.
    """
    missing, covered = 0, 0
    for first, n in sorted(zip(first_samples, lengths, strict=True)):
        if first > covered:
            missing += round((min(first, total_samples) - covered) / chunk_samples)
        covered = max(covered, first + n)
        if covered >= total_samples:
            break
    if covered < total_samples:
        missing += round((total_samples - covered) / chunk_samples)
    firsts = np.asarray(first_samples, dtype=np.float64)
    late = np.asarray(arrivals, dtype=np.float64) - (t_ready + base_delay_s + firsts / rate)
    if len(late) == 0:
        return ReceiveFigures(None, None, 0, missing)
    return ReceiveFigures(
        jitter_ms=float(np.std(late) * 1e3),
        late_ms_p99=float(np.percentile(late, 99) * 1e3),
        late_frames=int(np.sum(late > tick_s)),
        missing_frames=missing,
    )


def heard_time(
    sample: int, first_samples: Sequence[int], arrivals_rel: Sequence[float], rate: int
) -> float:
    """When the caller hears agent sample `sample` (seconds after sample 0).

    At its place in the timeline, or, when its frame arrived late, as soon as it arrived (a
    player without a jitter buffer). `arrivals_rel` are arrival times minus t_ready.
    """
    firsts = np.asarray(first_samples)
    i = int(np.searchsorted(firsts, sample, side="right")) - 1
    on_time = sample / rate
    if i < 0:
        return on_time
    return max(on_time, arrivals_rel[i] + (sample - int(firsts[i])) / rate)


@dataclass(frozen=True, slots=True)
class Turns:
    """Answered turns' latencies (s) and the count of turns the agent did not answer."""

    latencies_s: list[float]
    unanswered: int

    @property
    def count(self) -> int:
        return len(self.latencies_s) + self.unanswered


def turn_latencies(
    user: Sequence[Segment],
    agent_onsets: Sequence[float],
    end_s: float,
    *,
    min_pause_s: float = MIN_PAUSE_S,
    window_s: float = RESPONSE_WINDOW_S,
) -> Turns:
    """Match each end of user speech to the first agent onset after it.

    A user turn ends where a speech segment is followed by >= `min_pause_s` of non-speech. Its
    answer is the first agent onset at or after that end, within `window_s` and before the user
    speaks again; none is "unanswered", unless the call ended before the window closed (then
    the turn is not counted). An agent already talking when the user stops is not an answer.
    """
    onsets = sorted(agent_onsets)
    latencies: list[float] = []
    unanswered = 0
    for k, (_, end) in enumerate(user):
        next_start = user[k + 1][0] if k + 1 < len(user) else None
        if (end_s if next_start is None else next_start) - end < min_pause_s:
            continue
        limit = end + window_s if next_start is None else min(end + window_s, next_start)
        onset = next((a for a in onsets if end <= a < limit), None)
        if onset is not None:
            latencies.append(onset - end)
        elif next_start is not None or end + window_s <= end_s:
            unanswered += 1
    return Turns(latencies, unanswered)


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
class _Live:
    """Counters the progress line shows while callers run."""

    connected: int = 0
    finished: int = 0
    sent: int = 0
    received: int = 0
    errors: int = 0


@dataclass(slots=True)
class _CallerRun:
    report: CallerReport
    audio: np.ndarray
    frames: list[ReceivedFrame] = field(default_factory=list)
    ready: ReadyMessage | None = None
    t_ready: float = 0.0
    stats: StatsMessage | None = None  # never over Twilio: its protocol carries no stats
    chunk_samples: int = 0
    tick_s: float = 0.0
    finished: bool = False


def _rng(seed: int | None, caller: int, stream: str) -> random.Random:
    return random.Random(None if seed is None else f"{seed}:{caller}:{stream}")


async def _call(
    run: _CallerRun, cfg: LoadtestConfig, t0: float, start_at: float, live: _Live
) -> None:
    """One caller: connect at `start_at`, stream its audio, collect the agent's frames.

    Every failure is recorded in the caller's report; none escapes to stop the others.
    """
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    rep, rate, wire = run.report, cfg.wire_rate, run.audio
    audio = AudioFormat(encoding=cfg.encoding, sample_rate=rate, frame_ms=cfg.frame_ms)
    seed = None if cfg.seed is None else cfg.seed + rep.caller
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else None
    try:
        if cfg.protocol == "twilio":
            await _twilio_call(run, cfg, t0, live)
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
            n_frames = -(-len(wire) // fs)
            due = send_schedule(
                n_frames,
                fs / rate,
                c.t_ready,
                cfg.delay_ms / 1e3,
                cfg.jitter_ms / 1e3,
                _rng(cfg.seed, rep.caller, "up"),
            )

            async def send() -> None:
                for n in range(n_frames):
                    await asyncio.sleep(max(0.0, due[n] - time.monotonic()))
                    await c.send_frame(wire[n * fs : (n + 1) * fs], last=n == n_frames - 1)
                    rep.frames_sent += 1
                    live.sent += 1
                await c.end(len(wire))

            async def receive() -> None:
                async for event in c.events():
                    if isinstance(event, ReceivedFrame):
                        run.frames.append(event)
                        live.received += 1

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
        rep.frames_received = len(run.frames)
        live.finished += 1
        live.errors += rep.status != "ok"


async def _twilio_call(run: _CallerRun, cfg: LoadtestConfig, t0: float, live: _Live) -> None:
    """One caller as a simulated Twilio stream; its agent media become one frame per tick.

    Twilio's messages carry no sample positions and no session clock: ticks (the media between
    two marks) are placed by arrival order, and the timeline is anchored where the earliest
    tick is least late, so receive figures measure jitter, not the unknown start offset.
    """
    rep = run.report
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else None
    live.connected += 1
    try:
        r = await run_twilio_call(cfg.url, run.audio, cfg.wire_rate, headers=headers)
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
    sizes = Counter(len(f.pcm) for f in run.frames)
    run.chunk_samples = sizes.most_common(1)[0][0] if sizes else 1
    run.tick_s = run.chunk_samples / cfg.wire_rate
    rate = cfg.wire_rate
    run.t_ready = min((f.arrival - f.first_sample / rate for f in run.frames), default=r.t_start)
    run.finished = True


def _metrics_url(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "/metrics", "", ""))


def _scrape(url: str, headers: dict[str, str]) -> dict[str, Any]:
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
        "overruns": values.get("duplex_tick_overruns_total", 0.0),
        "sessions_active": values.get("duplex_sessions_active", 0.0),
        "latency_buckets": buckets,
    }


async def _watch_metrics(
    url: str, headers: dict[str, str], t0: float, samples: list[dict[str, Any]], errors: list[str]
) -> None:
    """Scrape /metrics every second until cancelled; the first failure stops it (noted)."""
    while True:
        try:
            page = await asyncio.to_thread(_scrape, url, headers)
        except (URLError, OSError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
            return
        samples.append({"t": time.monotonic() - t0, **page})
        await asyncio.sleep(METRICS_PERIOD_S)


async def _progress(live: _Live, total: int) -> None:
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
        _CallerRun(CallerReport(caller=i), caller_audio(clips, rate, config.duration_s, i))
        for i in range(config.callers)
    ]
    live = _Live()
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    samples: list[dict[str, Any]] = []
    metric_errors: list[str] = []
    t0 = time.monotonic()
    spread = config.ramp_up_s / max(1, config.callers - 1)
    helpers = [
        asyncio.create_task(
            _watch_metrics(_metrics_url(config.url), headers, t0, samples, metric_errors)
        )
    ]
    if config.progress:
        helpers.append(asyncio.create_task(_progress(live, config.callers)))
    try:
        await asyncio.gather(
            *(_call(r, config, t0, t0 + i * spread, live) for i, r in enumerate(runs))
        )
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    if not metric_errors:  # one last page, so the run's final ticks are counted
        try:
            page = await asyncio.to_thread(_scrape, _metrics_url(config.url), headers)
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
    metrics = _metrics_summary(samples, metric_errors)
    metrics["tick_ms"] = ready.tick_ms if ready else None
    metrics["lead_ms"] = ready.lead_ms if ready else None
    return LoadtestReport(
        config=cfg,
        wall_s=round(wall, 3),
        vad=vad_name(),
        callers=[r.report for r in runs],
        overall=_overall([r.report for r in runs]),
        server_metrics=metrics,
    )


def _analyse(runs: Sequence[_CallerRun], cfg: LoadtestConfig) -> None:
    """Fill in each completed caller's stats, receive figures and turn latencies."""
    done = [r for r in runs if r.finished]
    rate = cfg.wire_rate
    streams: list[np.ndarray] = []
    for r in done:
        streams += [r.audio, place_frames(r.frames, len(r.audio))]
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
        firsts = [r.frames[i].first_sample for i in order]
        arrivals = [arrived[i] for i in order]
        recv = receive_figures(
            firsts,
            [len(r.frames[i].pcm) for i in order],
            arrivals,
            t_ready=r.t_ready,
            rate=rate,
            total_samples=len(r.audio),
            chunk_samples=chunk,
            tick_s=r.tick_s,
            base_delay_s=cfg.delay_ms / 1e3,
        )
        rep.recv_jitter_ms, rep.recv_late_ms_p99, rep.recv_gaps = (
            _round(recv.jitter_ms),
            _round(recv.late_ms_p99),
            recv.gaps,
        )
        rel = [a - r.t_ready for a in arrivals]
        onsets = [
            heard_time(round(start * rate), firsts, rel, rate) for start, _ in segments[2 * k + 1]
        ]
        turns = turn_latencies(segments[2 * k], onsets, len(r.audio) / rate)
        rep.turns, rep.turns_answered = turns.count, len(turns.latencies_s)
        rep.turn_latencies_ms = [round(x * 1e3, 1) for x in turns.latencies_s]
        rep.turn_latency_ms_p50 = _pct(rep.turn_latencies_ms, 50)
        rep.turn_latency_ms_p95 = _pct(rep.turn_latencies_ms, 95)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def _overall(callers: Sequence[CallerReport]) -> dict[str, Any]:
    """Totals over callers; turn latency pooled over all turns; the other percentiles and the
    jitter are the worst caller's.

    Sessions report percentiles, not samples, so a pooled p99 cannot be computed; the largest
    per-caller p99 is an upper bound of it (the pooled CDF at that value is >= 0.99).
    """
    done = [c for c in callers if c.status == "ok"]
    turns = [x for c in done for x in c.turn_latencies_ms]
    n_turns = sum(c.turns or 0 for c in done)

    def worst(key: str) -> float | None:
        vals = [getattr(c, key) for c in done if getattr(c, key) is not None]
        return max(vals) if vals else None

    def total(key: str) -> int | None:
        vals = [getattr(c, key) for c in done if getattr(c, key) is not None]
        return sum(vals) if vals else None

    return {
        "callers": len(callers),
        "completed": len(done),
        "connect_failures": dict(Counter(c.status for c in callers if not c.connected)),
        "errors": dict(Counter(c.status for c in callers if c.connected and c.status != "ok")),
        "frames_sent": sum(c.frames_sent for c in callers),
        "frames_received": sum(c.frames_received for c in callers),
        "latency_ms_p50": worst("latency_ms_p50"),
        "latency_ms_p95": worst("latency_ms_p95"),
        "latency_ms_p99": worst("latency_ms_p99"),
        "overruns": total("overruns"),
        "estimates_made": total("estimates_made"),
        "estimates_replaced": total("estimates_replaced"),
        "late_samples_dropped": total("late_samples_dropped"),
        "missing_chunks": total("missing_chunks"),
        "re_anchors": total("re_anchors"),
        "recv_jitter_ms": worst("recv_jitter_ms"),
        "recv_late_ms_p99": worst("recv_late_ms_p99"),
        "recv_gaps": total("recv_gaps"),
        "turns": n_turns,
        "turns_answered": len(turns),
        "response_rate": round(len(turns) / n_turns, 3) if n_turns else None,
        "turn_latency_ms_p50": _pct(turns, 50),
        "turn_latency_ms_p95": _pct(turns, 95),
        "turn_latency_ms_p99": _pct(turns, 99),
    }


def _metrics_summary(samples: Sequence[dict[str, Any]], errors: Sequence[str]) -> dict[str, Any]:
    """Per-second tick compute time and overruns from consecutive /metrics pages."""
    series = []
    for a, b in zip(samples, samples[1:], strict=False):
        ticks = b["tick_count"] - a["tick_count"]
        series.append(
            {
                "t": round(b["t"], 2),
                "ticks": int(ticks),
                "tick_mean_ms": round((b["tick_sum"] - a["tick_sum"]) / ticks * 1e3, 3)
                if ticks
                else None,
                "overruns": int(b["overruns"] - a["overruns"]),
                "sessions_active": int(b["sessions_active"]),
            }
        )
    first, last = (samples[0], samples[-1]) if samples else ({}, {})
    means = [p["tick_mean_ms"] for p in series if p["tick_mean_ms"] is not None]
    return {
        "available": len(samples) >= 2,
        "error": errors[0] if errors else None,
        "series": series,
        "tick_mean_ms": round(
            (last["tick_sum"] - first["tick_sum"])
            / (last["tick_count"] - first["tick_count"])
            * 1e3,
            3,
        )
        if samples and last["tick_count"] > first["tick_count"]
        else None,
        "tick_mean_ms_worst_second": max(means) if means else None,
        "overruns": int(last["overruns"] - first["overruns"]) if samples else None,
        # cumulative counts per bucket upper bound (s), for the latency CDF over all sessions
        "latency_buckets": {
            le: last["latency_buckets"][le] - first["latency_buckets"].get(le, 0.0)
            for le in last["latency_buckets"]
        }
        if samples
        else {},
    }


# ---------------------------------------------------------------------------------------------
# Output


def write_plots(report: LoadtestReport, directory: Path) -> list[Path]:
    """latency_cdf.png (server-added and turn latency) and, with metrics, tick_time.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    buckets = {float(k): v for k, v in report.server_metrics["latency_buckets"].items()}
    total = buckets.get(math.inf, 0.0)
    if total > 0:
        les = sorted(b for b in buckets if b != math.inf)
        ax1.plot(  # linear inside buckets, as Prometheus' histogram_quantile assumes
            [0.0, *(le * 1e3 for le in les)],
            [0.0, *(buckets[le] / total for le in les)],
            ".-",
            label="all sessions (/metrics histogram)",
        )
    marked = False
    for c in report.callers:
        pts = [(c.latency_ms_p50, 0.5), (c.latency_ms_p95, 0.95), (c.latency_ms_p99, 0.99)]
        known = [(x, q) for x, q in pts if x is not None]
        if known:
            label = None if marked else "each caller's p50/p95/p99 (stats)"
            ax1.plot(*zip(*known, strict=True), "o", ms=3, alpha=0.6, label=label)
            marked = True
    ax1.set(title="server-added latency", xlabel="ms", ylabel="fraction <= x", ylim=(0, 1.02))
    if total > 0 or marked:
        ax1.legend(loc="lower right", fontsize=8)
    ax1.grid(alpha=0.3)
    turns = sorted(x for c in report.callers for x in c.turn_latencies_ms)
    if turns:
        ax2.step(
            [turns[0], *turns], [0.0, *(np.arange(1, len(turns) + 1) / len(turns))], where="post"
        )
    ax2.set(
        title=f"turn latency ({len(turns)} answered turns)",
        xlabel="ms (end of user speech -> agent onset)",
        ylim=(0, 1.02),
    )
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    written.append(directory / "latency_cdf.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    series = report.server_metrics["series"]
    if series:
        fig, ax = plt.subplots(figsize=(11, 4.2))
        t = [p["t"] for p in series]
        ax.plot(
            t,
            [math.nan if p["tick_mean_ms"] is None else p["tick_mean_ms"] for p in series],
            label="mean tick compute time",
        )
        for key, style in (("lead_ms", ":"), ("tick_ms", "--")):
            if report.server_metrics[key] is not None:  # the step's deadline, and the tick
                ax.axhline(report.server_metrics[key], color="black", ls=style, lw=0.8, label=key)
        ax.set(xlabel="s since start", ylabel="ms", ylim=(0, None))
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.bar(t, [p["overruns"] for p in series], width=0.6, alpha=0.3, color="red")
        ax2.plot(t, [p["sessions_active"] for p in series], color="gray", ls="--")
        ax2.set_ylabel("overruns per second (bars), sessions (dashed)")
        ax.set_title("tick compute time over the run")
        fig.tight_layout()
        written.append(directory / "tick_time.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


_COLUMNS = (
    ("caller", "caller"),
    ("status", "status"),
    ("sent", "frames_sent"),
    ("recv", "frames_received"),
    ("lat p50", "latency_ms_p50"),
    ("p95", "latency_ms_p95"),
    ("p99", "latency_ms_p99"),
    ("overrun", "overruns"),
    ("late smp", "late_samples_dropped"),
    ("missing", "missing_chunks"),
    ("jitter", "recv_jitter_ms"),
    ("gaps", "recv_gaps"),
    ("turns", "turns"),
    ("answered", "turns_answered"),
    ("turn p50", "turn_latency_ms_p50"),
    ("turn p95", "turn_latency_ms_p95"),
)


def summary_table(report: LoadtestReport) -> str:
    """Per-caller rows and an overall row (times in ms), then the run's other figures."""
    rows = [[_fmt(getattr(c, key)) for _, key in _COLUMNS] for c in report.callers]
    o = report.overall
    rows.append(
        ["all", f"{o['completed']}/{o['callers']} ok"] + [_fmt(o.get(k)) for _, k in _COLUMNS[2:]]
    )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _) in enumerate(_COLUMNS)]
    line = "  ".join(h.rjust(w) for (h, _), w in zip(_COLUMNS, widths, strict=True))
    out = [line]
    for i, r in enumerate(rows):
        if i == len(rows) - 1:
            out.append("-" * len(line))
        out.append("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
    m = report.server_metrics
    out += [
        f"server-added latency ms (worst caller): p50 {_fmt(o['latency_ms_p50'])}, "
        f"p95 {_fmt(o['latency_ms_p95'])}, p99 {_fmt(o['latency_ms_p99'])}",
        f"turn latency ms: p50 {_fmt(o['turn_latency_ms_p50'])}, "
        f"p95 {_fmt(o['turn_latency_ms_p95'])}; response rate "
        f"{_fmt(None if o['response_rate'] is None else o['response_rate'] * 100)} % "
        f"({report.vad})",
        "connect failures: "
        + (_codes(o["connect_failures"]) or "none")
        + "; errors: "
        + (_codes(o["errors"]) or "none"),
        f"server ticks: mean {_fmt(m['tick_mean_ms'])} ms, worst second "
        f"{_fmt(m['tick_mean_ms_worst_second'])} ms, {_fmt(m['overruns'])} overruns"
        if m["available"]
        else f"server metrics unavailable: {m['error']}",
        f"wall time {report.wall_s:.1f} s",
    ]
    return "\n".join(out)


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


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
        choices=("native", "twilio"),
        default="native",
        help="native: /v1/duplex; twilio: each caller is a simulated Twilio Media Stream "
        "(mu-law 8 kHz; the default --url becomes /v1/telephony/twilio; no server-side stats "
        "per caller, and --delay-ms/--jitter-ms apply to the downlink analysis only)",
    )


def _config(args: argparse.Namespace) -> LoadtestConfig:
    """Validate flags before any I/O."""
    check_url(args.url)
    if args.slo_p99_ms is not None and not args.slo_p99_ms > 0:
        raise InputError(f"--slo-p99-ms must be > 0, got {args.slo_p99_ms:g}")
    url, encoding = args.url, args.encoding or "pcm16"
    rate = DEFAULT_RATES[encoding] if args.rate is None else args.rate
    if args.protocol == "twilio":
        if args.encoding not in (None, "mulaw") or args.rate not in (None, 8000):
            raise InputError(
                "--protocol twilio always streams mu-law at 8000 Hz; "
                "leave out --encoding and --rate"
            )
        encoding, rate = "mulaw", 8000
        if url == DEFAULT_URL:
            url = DEFAULT_URL.replace("/v1/duplex", "/v1/telephony/twilio")
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
        return _fail(f"no caller completed at {args.url}: " + _codes(dict(failures)))
    p99 = o["latency_ms_p99"]
    if args.slo_p99_ms is not None and (p99 is None or p99 > args.slo_p99_ms):
        return _fail(
            f"SLO missed: server-added latency p99 {_fmt(p99)} ms > {args.slo_p99_ms:g} ms"
        )
    return 0


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"{PROG}: {'error: ' if code == EXIT_USAGE else ''}{message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (`python -m clients.loadtest`), also used by the tests."""
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
