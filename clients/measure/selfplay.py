"""`duplex selfplay`: two agents talk to each other through the real server.

Two sessions A and B on one server are joined by a relay: what A says is what B hears and the
other way round, over a simulated network with a one-way delay. Each delay gets one
conversation; its stereo recording and its turn-taking statistics (IPU, pause, gap, overlap,
floor-transfer offset, from silero-vad on each channel through `clients.measure.turns`) are compared
with the same statistics of the training data, measured the same way (codec audio -> VAD ->
`turn_stats`). The figure of merit: at 240 ms the mean gap, pause and IPU stay within 20 % of
the 0 ms run's.

The relay keeps the content acoustically synchronous: B's input sample j is A's output at the
same wall-clock instant. The delay only moves when each frame is sent, which is what a network
does to a client on the session clock, and what the server's latency buffer absorbs (its
estimate stands in until the late real audio replaces it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from clients.call import (
    DEFAULT_RATES,
    FINISH_TIMEOUT_S,
    InputError,
    WireEncoding,
    add_sampling_arguments,
    check_url,
    run_both,
    sampling_overrides,
    send_schedule,
)
from clients.client import DuplexClient, DuplexError, ReceivedFrame
from clients.measure.speech_activity import speech_segments, vad_name
from clients.measure.turns import TurnStats, turn_stats
from model.training.synth import load_split
from streaming.codecs import load_codec
from streaming.espeak import synthesize
from streaming.resample import resample_whole
from streaming.wire import AudioFormat, ReadyMessage, SamplingParams, StatsMessage

__all__ = [
    "Conversation",
    "add_arguments",
    "converse",
    "main",
    "mean_ratios",
    "ratio_ci95",
    "opening_track",
    "parse_delays",
    "reference_stats",
    "relay_slice",
    "run",
    "summary_table",
    "target_check",
    "tick_offset",
    "write_plots",
]

PROG = "duplex selfplay"
DEFAULT_URL = "ws://127.0.0.1:8000/v1/duplex"
DEFAULT_DELAYS = "0,80,160,240"
DEFAULT_OPENING = "Hi there, how are you doing today?"
DEFAULT_VOICE = "en-029+f2"  # the voice synth keeps out of all training data
ENCODING: WireEncoding = "pcm16"
RATE = DEFAULT_RATES[ENCODING]
FRAME_MS = 20
EXIT_USAGE = 2
EXIT_FAILURE = 1

TARGET_DELAY_MS = 240.0
TARGET_TOLERANCE = 0.2
TARGET_MEASURES = ("gap", "pause", "ipu")
TABLE_MEASURES = ("ipu", "pause", "gap", "overlap", "fto")
_LABELS = {"ipu": "IPU", "pause": "pause", "gap": "gap", "overlap": "overlap", "fto": "FTO"}
REFERENCE_BATCH = 16  # dialogues per silero-vad batch: bounds memory, keeps the batch cheap


# ---------------------------------------------------------------------------------------------
# The relay (pure functions: the unit tests feed them known arrays)


def tick_offset(t_a: float, t_b: float, tick_s: float, chunk_samples: int) -> int:
    """Where B's sample 0 lies on A's timeline (samples; negative when B started first).

    Both sessions start at a tick boundary of the server's one clock, so the true offset is a
    whole number of ticks; rounding to it removes the jitter of when `ready` arrived.
    """
    return round((t_b - t_a) / tick_s) * chunk_samples


def relay_slice(
    out: np.ndarray, have: np.ndarray, extra: np.ndarray, start: int, n: int
) -> tuple[np.ndarray, int]:
    """Samples [start, start + n) of one session's channel (`out` + `extra`), for the other.

    Positions before 0 are before that session existed: silence. Positions whose audio has not
    arrived (`have` false) go out as silence too and are counted: the listener cannot wait.
    Returns the samples, clipped to [-1, 1], and how many were missing.
    """
    pcm = np.zeros(n, dtype=np.float32)
    lo, hi = max(start, 0), min(start + n, len(out))
    if hi <= lo:
        return pcm, 0
    pcm[lo - start : hi - start] = out[lo:hi] + extra[lo:hi]
    return np.clip(pcm, -1.0, 1.0), int(np.count_nonzero(~have[lo:hi]))


def opening_track(opening: np.ndarray, at: int, length: int) -> np.ndarray:
    """`opening` placed at sample `at` of a silent track of `length` samples (cut at its end)."""
    track = np.zeros(length, dtype=np.float32)
    part = opening[: max(0, length - at)]
    track[at : at + len(part)] = part
    return track


# ---------------------------------------------------------------------------------------------
# One conversation


@dataclass(slots=True)
class _Agent:
    """One session's side of the relay, on that session's own timeline."""

    client: DuplexClient
    first: int  # conversation sample 0 on this timeline (later when the other joined later)
    out: np.ndarray  # its speech as received, placed by first_sample
    have: np.ndarray  # which samples of `out` arrived
    extra: np.ndarray  # what is mixed into its channel: the opening
    heard: np.ndarray  # what it was sent
    frames_received: int = 0
    missing: int = 0  # samples of the other side not there yet when a frame was due

    @classmethod
    def new(cls, client: DuplexClient, first: int, n: int) -> _Agent:
        length = first + n
        return cls(
            client,
            first,
            np.zeros(length, np.float32),
            np.zeros(length, bool),
            np.zeros(length, np.float32),
            np.zeros(length, np.float32),
        )

    @property
    def channel(self) -> np.ndarray:
        """What this agent said during the conversation (conversation timeline)."""
        return (self.out + self.extra)[self.first :]


@dataclass(frozen=True, slots=True)
class Conversation:
    """One finished conversation; every array is on the conversation's timeline at `rate`."""

    delay_ms: float
    rate: int
    offset_samples: int  # B's sample 0 on A's timeline
    stereo: np.ndarray  # [n, 2]: A (with the opening) left, B right
    heard: tuple[np.ndarray, np.ndarray]  # what A and B were sent
    missing_samples: tuple[int, int]  # relay_missing_samples into A and into B
    frames_received: tuple[int, int]
    stats: tuple[StatsMessage, StatsMessage]
    wall_s: float
    sampling: tuple[dict[str, Any], dict[str, Any]]  # as each `ready` echoed it

    @property
    def seconds(self) -> float:
        return len(self.stereo) / self.rate

    def summary(self) -> dict[str, Any]:
        """Relay counters and both sessions' server figures, for the report."""
        return {
            "delay_ms": self.delay_ms,
            "seconds": round(self.seconds, 3),
            "offset_samples": self.offset_samples,
            "relay": {
                "relay_missing_samples": sum(self.missing_samples),
                "missing_samples_to_a": self.missing_samples[0],
                "missing_samples_to_b": self.missing_samples[1],
                "frames_received_a": self.frames_received[0],
                "frames_received_b": self.frames_received[1],
            },
            "sampling": dict(zip("AB", self.sampling, strict=True)),
            "sessions": {
                name: s.model_dump(exclude={"type"})
                for name, s in zip("AB", self.stats, strict=True)
            },
            "wall_s": round(self.wall_s, 2),
        }


async def _first_failure(*coros: Coroutine[Any, Any, None]) -> None:
    """Run coroutines together; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and t.exception() is not None:
                t.result()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _relay(listener: _Agent, source: _Agent, shift: int, delay_s: float) -> None:
    """Run `listener`'s session: send it `source`'s channel, collect its speech.

    Listener sample j is source sample j + shift. Frame n leaves at sample-0 + (n+1) frames +
    the delay, so it never carries audio from the future.
    """
    c = listener.client
    fs, length = c.frame_samples, len(listener.out)
    n_frames = -(-length // fs)
    due = send_schedule(n_frames, fs / c.ready.sample_rate, c.t_ready, delay_s)

    async def send() -> None:
        for k in range(n_frames):
            await asyncio.sleep(max(0.0, due[k] - time.monotonic()))
            lo = k * fs
            pcm, missing = relay_slice(
                source.out, source.have, source.extra, lo + shift, min(fs, length - lo)
            )
            listener.heard[lo : lo + len(pcm)] = pcm
            listener.missing += missing
            await c.send_frame(pcm, last=k == n_frames - 1)
        await c.end(length)

    async def receive() -> None:
        async for event in c.events():
            if isinstance(event, ReceivedFrame):
                listener.frames_received += not event.is_end_marker
                lo = event.first_sample
                hi = min(lo + len(event.pcm), length)
                if hi > lo:
                    listener.out[lo:hi] = event.pcm[: hi - lo]
                    listener.have[lo:hi] = True

    await run_both(send(), receive(), due[-1] - c.t_ready + FINISH_TIMEOUT_S)


async def _show_progress(bar: tqdm[Any], t0: float, seconds: float) -> None:
    """Advance `bar` (in conversation seconds) until cancelled."""
    try:
        while True:
            bar.n = round(min(seconds, max(0.0, time.monotonic() - t0)), 1)
            bar.refresh()
            await asyncio.sleep(0.5)
    finally:
        bar.n = round(min(seconds, max(0.0, time.monotonic() - t0)), 1)
        bar.refresh()


async def converse(
    url: str,
    seconds: float,
    delay_ms: float,
    *,
    opening: np.ndarray | None = None,
    sampling: tuple[SamplingParams, SamplingParams] = (SamplingParams(), SamplingParams()),
    headers: Mapping[str, str] | None = None,
    progress: bool = False,
) -> Conversation:
    """One conversation of `seconds` between two sessions, `delay_ms` one way.

    `opening` (mono at RATE) is spoken on A's channel from the conversation's start. Raises
    DuplexError when either session fails (the other is closed with it).
    """
    n = max(1, round(seconds * RATE))
    audio = AudioFormat(encoding=ENCODING, sample_rate=RATE, frame_ms=FRAME_MS)
    t_wall = time.monotonic()
    async with (
        DuplexClient.connect(url, audio=audio, sampling=sampling[0], headers=headers) as ca,
        DuplexClient.connect(url, audio=audio, sampling=sampling[1], headers=headers) as cb,
    ):
        off = tick_offset(ca.t_ready, cb.t_ready, ca.ready.tick_ms / 1e3, ca.ready.chunk_samples)
        a, b = _Agent.new(ca, max(off, 0), n), _Agent.new(cb, max(-off, 0), n)
        if opening is not None:
            a.extra = opening_track(opening, a.first, len(a.out))
        t0 = max(ca.t_ready, cb.t_ready)  # the conversation's sample 0
        bar = tqdm(
            total=round(seconds, 1),
            desc=f"{PROG} {delay_ms:g} ms",
            unit="s",
            file=sys.stderr,
            disable=not progress,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s",
        )
        with bar:
            ticker = asyncio.ensure_future(_show_progress(bar, t0, seconds))
            try:
                await _first_failure(
                    _relay(a, b, -off, delay_ms / 1e3), _relay(b, a, off, delay_ms / 1e3)
                )
            finally:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
        if ca.stats is None or cb.stats is None:
            raise DuplexError("protocol_violation", "the server closed without sending 'stats'")
        return Conversation(
            delay_ms=delay_ms,
            rate=RATE,
            offset_samples=off,
            stereo=np.stack([a.channel, b.channel], axis=1),
            heard=(a.heard[a.first :], b.heard[b.first :]),
            missing_samples=(a.missing, b.missing),
            frames_received=(a.frames_received, b.frames_received),
            stats=(ca.stats, cb.stats),
            wall_s=time.monotonic() - t_wall,
            sampling=(_sampling(ca.ready), _sampling(cb.ready)),
        )


def _sampling(ready: ReadyMessage) -> dict[str, Any]:
    """The sampling a session ran with (the server's defaults filled in)."""
    return ready.model_dump(
        include={
            "temperature",
            "turn_temperature",
            "top_k",
            "seed",
            "speak_up_ms",
            "start_bias",
            "barge_in_ms",
        }
    )


# ---------------------------------------------------------------------------------------------
# Statistics


def conversation_stats(conversations: Sequence[Conversation]) -> list[TurnStats]:
    """Turn statistics of each conversation, A as party a (both channels in one VAD batch)."""
    streams = [c.stereo[:, ch] for c in conversations for ch in (0, 1)]
    segments = speech_segments(streams, RATE)
    return [
        turn_stats(segments[2 * i], segments[2 * i + 1], c.seconds)
        for i, c in enumerate(conversations)
    ]


def reference_stats(
    data_dir: Path, checkpoint: Path, dialogues: int, progress: bool = False
) -> tuple[TurnStats, int]:
    """Pooled statistics of up to `dialogues` training dialogues (spread over the split) and
    how many were measured.

    Each channel's units are vocoded with the checkpoint's codec and go through the same VAD
    and `turn_stats` as self-play (agent as party a), so the two compare like with like.
    Raises InputError for missing or unreadable data or checkpoint.
    """
    path = data_dir / "train.npz"
    if not path.is_file():
        raise InputError(
            f"no training data at {path}: run `duplex data synth --out {data_dir}` first "
            "(or pass --no-reference)"
        )
    try:
        _, _, frames = load_split(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if not frames:
        raise InputError(f"{path} holds no dialogues")
    from model.checkpoint import CheckpointError, read_config  # loads torch: only when needed

    try:
        codec = load_codec(read_config(checkpoint).codec, checkpoint)
    except (CheckpointError, ValueError) as exc:
        raise InputError(f"--checkpoint: {exc}") from exc
    if frames[0].ndim != 3 or frames[0].shape[1:] != (2, codec.units_per_frame):
        raise InputError(
            f"{path}: frames of shape {frames[0].shape[1:]} do not fit codec {codec.name} "
            f"(2 channels x {codec.units_per_frame} units)"
        )
    pick = np.unique(np.linspace(0, len(frames) - 1, min(dialogues, len(frames))).round())
    chosen = [frames[int(i)] for i in pick]
    total = TurnStats()
    with tqdm(total=len(chosen), desc=f"{PROG} reference", unit="dlg", disable=not progress) as bar:
        for k in range(0, len(chosen), REFERENCE_BATCH):
            batch = chosen[k : k + REFERENCE_BATCH]
            try:
                streams = [
                    codec.new_decoder().decode(f[:, ch, :].astype(np.int64))
                    for f in batch
                    for ch in (0, 1)
                ]
            except ValueError as exc:
                raise InputError(f"{path}: {exc}") from exc
            segments = speech_segments(streams, codec.sample_rate)
            for i, f in enumerate(batch):
                seconds = len(f) * codec.frame_samples / codec.sample_rate
                total.extend(turn_stats(segments[2 * i], segments[2 * i + 1], seconds))
            bar.update(len(batch))
    return total, len(chosen)


def mean_ratios(
    base: Mapping[str, Any], other: Mapping[str, Any], measures: Sequence[str] = TARGET_MEASURES
) -> dict[str, float | None]:
    """Mean of each measure in `other` over its mean in `base` (`TurnStats.summary()` dicts);
    None where either has none."""
    out: dict[str, float | None] = {}
    for m in measures:
        b, o = base[m]["mean_s"], other[m]["mean_s"]
        out[m] = o / b if b and o is not None else None
    return out


def ratio_ci95(
    base: TurnStats,
    other: TurnStats,
    measures: Sequence[str] = TARGET_MEASURES,
    resamples: int = 2000,
) -> dict[str, list[float] | None]:
    """A 95 % interval of each mean ratio (percentile bootstrap over each run's events,
    seeded). Pauses and gaps are long-tailed and a run has a few dozen, so a ratio 20 % off
    can be noise; None where either run has fewer than two events."""
    rng = np.random.default_rng(0)
    out: dict[str, list[float] | None] = {}
    for m in measures:
        a, b = np.asarray(getattr(base, m)), np.asarray(getattr(other, m))
        if a.size < 2 or b.size < 2:
            out[m] = None
            continue
        means_a = a[rng.integers(a.size, size=(resamples, a.size))].mean(axis=1)
        means_b = b[rng.integers(b.size, size=(resamples, b.size))].mean(axis=1)
        lo, hi = np.percentile(means_b / means_a, [2.5, 97.5])
        out[m] = [round(float(lo), 3), round(float(hi), 3)]
    return out


def target_check(stats: Mapping[float, TurnStats]) -> dict[str, Any] | None:
    """The figure of merit: mean gap, pause and IPU at TARGET_DELAY_MS (or the largest delay
    run) within TARGET_TOLERANCE of the 0 ms run's. None without a 0 ms run and another."""
    if 0.0 not in stats or len(stats) < 2:
        return None
    delay = TARGET_DELAY_MS if TARGET_DELAY_MS in stats else max(stats)
    ratios = mean_ratios(stats[0.0].summary(), stats[delay].summary())
    known = [r for r in ratios.values() if r is not None]
    holds = (
        all(abs(r - 1.0) <= TARGET_TOLERANCE for r in known) if len(known) == len(ratios) else None
    )
    return {
        "delay_ms": delay,
        "baseline_ms": 0.0,
        "tolerance": TARGET_TOLERANCE,
        "ratios": {m: _round(r) for m, r in ratios.items()},
        "ratios_ci95": ratio_ci95(stats[0.0], stats[delay]),
        "holds": holds,
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


# ---------------------------------------------------------------------------------------------
# Output


def write_plots(
    stats: Mapping[str, TurnStats], delays: Sequence[float], directory: Path
) -> list[Path]:
    """turn_stats.png: each measure's distribution per run (box: quartiles, triangle: mean);
    means_vs_delay.png: the target measures' means against delay, with the 0 ms +-20 % band
    and the training data's mean. `stats` maps labels ("0 ms", ..., "training data") in order.
    """
    from streaming.dependencies import require_tools

    require_tools("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(stats)
    fig, axes = plt.subplots(1, len(TABLE_MEASURES), figsize=(4 * len(TABLE_MEASURES), 4.2))
    for ax, m in zip(axes, TABLE_MEASURES, strict=True):
        ax.boxplot(
            [getattr(stats[k], m) for k in labels], showmeans=True, showfliers=False, widths=0.6
        )
        ax.set_xticks(range(1, len(labels) + 1), [k.replace(" data", "") for k in labels])
        ax.tick_params(axis="x", labelrotation=45)
        ax.set(title=f"{_LABELS[m]} (s)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("turn-taking statistics: self-play per one-way delay vs training data")
    fig.tight_layout()
    written = [directory / "turn_stats.png"]
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(TARGET_MEASURES), figsize=(4 * len(TARGET_MEASURES), 3.8))
    runs = [stats[f"{d:g} ms"] for d in delays]
    reference = stats.get("training data")
    for ax, m in zip(axes, TARGET_MEASURES, strict=True):
        means = [float(np.mean(getattr(s, m))) if getattr(s, m) else np.nan for s in runs]
        ax.plot(delays, means, "o-", label="self-play")
        if 0.0 in delays and not np.isnan(means[list(delays).index(0.0)]):
            base = means[list(delays).index(0.0)]
            band = (base * (1 - TARGET_TOLERANCE), base * (1 + TARGET_TOLERANCE))
            ax.axhspan(*band, color="green", alpha=0.12, label="0 ms +-20 %")
        if reference is not None and getattr(reference, m):
            ax.axhline(
                float(np.mean(getattr(reference, m))), color="black", ls="--", label="training"
            )
        ax.set_xticks(list(delays))
        ax.set(title=f"mean {_LABELS[m]}", xlabel="one-way delay (ms)", ylabel="s", ylim=(0, None))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(directory / "means_vs_delay.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def summary_table(report: Mapping[str, Any]) -> str:
    """Rows per delay and the training data: mean durations (s) and counts per minute; then
    the relay and server figures per delay and the target check."""
    rows: list[tuple[str, Mapping[str, Any]]] = [
        (f"{r['delay_ms']:g} ms", r["turns"]) for r in report["runs"]
    ]
    if report["reference"] is not None:
        rows.append(("training data", report["reference"]["turns"]))
    header = ["run"]
    for m in TABLE_MEASURES:
        header += [f"{_LABELS[m]} s", "/min"]
    cells = [
        [label]
        + [v for m in TABLE_MEASURES for v in (_fmt(t[m]["mean_s"]), _fmt(t[m]["per_minute"], 1))]
        for label, t in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)) for c in cells]
    for r in report["runs"]:
        relay = r["relay"]
        parts = [f"{r['delay_ms']:g} ms: relay missing {relay['relay_missing_samples']} samples"]
        for name, s in r["sessions"].items():
            parts.append(
                f"{name}: latency p50 {_fmt(s['latency_ms_p50'], 1)} / p99 "
                f"{_fmt(s['latency_ms_p99'], 1)} ms, estimates {s['estimates_made']} made "
                f"{s['estimates_replaced']} replaced, {s['late_samples_dropped']} late samples "
                f"dropped, rollback <= {s['max_rollback_tokens']} tokens"
            )
        lines.append("; ".join(parts))
    target = report["target"]
    if target is None:
        lines.append("target: needs a 0 ms run and another delay")
    else:
        ratios = ", ".join(
            f"{_LABELS[m]} x{_fmt(r, 2)}" + (f" ({_fmt(ci[0], 2)}-{_fmt(ci[1], 2)})" if ci else "")
            for m, r in target["ratios"].items()
            for ci in [target["ratios_ci95"][m]]
        )
        verdict = {True: "yes", False: "NO", None: "cannot tell (a measure has no events)"}
        lines.append(
            f"target: mean gap/pause/IPU at {target['delay_ms']:g} ms vs 0 ms: {ratios}; "
            f"within {target['tolerance'] * 100:g} %: {verdict[target['holds']]} "
            "(95 % intervals of the ratios in brackets)"
        )
    lines.append(f"({report['vad']}; wrote {report['out']})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `duplex selfplay` (the `duplex` CLI mounts them on its subcommand)."""
    parser.description = (
        "Two agents converse through the server (two sessions) over a simulated network, one "
        "conversation per one-way delay; writes the stereo wavs, turn-taking statistics vs the "
        "training data's, and plots."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="server endpoint (%(default)s)")
    parser.add_argument(
        "--out", default="selfplay", metavar="DIR", help="output directory (%(default)s)"
    )
    parser.add_argument(
        "--delays",
        default=DEFAULT_DELAYS,
        metavar="MS,MS,...",
        help="one-way network delays in ms, one conversation each, in order (%(default)s)",
    )
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="length of each conversation (%(default)s)"
    )
    parser.add_argument(
        "--opening",
        default=DEFAULT_OPENING,
        help="what agent A says first, spoken by espeak-ng, so the conversation starts "
        "(%(default)r; '' for none)",
    )
    parser.add_argument(
        "--voice", default=DEFAULT_VOICE, help="espeak-ng voice of the opening (%(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seeds: agent A gets SEED, agent B SEED + 1, in every conversation "
        "(%(default)s)",
    )
    add_sampling_arguments(parser)
    parser.add_argument(
        "--data",
        default="data/synth",
        metavar="DIR",
        help="training data for the reference statistics (%(default)s; its train.npz)",
    )
    parser.add_argument(
        "--checkpoint",
        default="models/default",
        metavar="DIR",
        help="checkpoint whose codec vocodes the training data (%(default)s)",
    )
    parser.add_argument(
        "--reference-dialogues",
        type=int,
        default=200,
        help="training dialogues measured for the reference (%(default)s)",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the training-data reference"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")


def parse_delays(text: str) -> list[float]:
    """'0,80,160' -> [0.0, 80.0, 160.0]; raises InputError for anything else."""
    delays: list[float] = []
    for part in text.split(","):
        try:
            d = float(part)
        except ValueError as exc:
            raise InputError(f"--delays: {part.strip()!r} is not a number of ms") from exc
        if not np.isfinite(d) or d < 0:
            raise InputError(f"--delays must be non-negative, got {part.strip()}")
        if d in delays:
            raise InputError(f"--delays: {d:g} is given twice")
        delays.append(d)
    return delays


def _check_args(args: argparse.Namespace) -> tuple[list[float], tuple[SamplingParams, ...]]:
    """Validate flags before any I/O; the delays and both agents' sampling."""
    check_url(args.url)
    delays = parse_delays(args.delays)
    if not args.seconds > 0 or not np.isfinite(args.seconds):
        raise InputError(f"--seconds must be positive, got {args.seconds:g}")
    if args.reference_dialogues < 1:
        raise InputError(f"--reference-dialogues must be positive, got {args.reference_dialogues}")
    return delays, tuple(sampling_overrides(args, args.seed + k) for k in (0, 1))


def _opening(text: str, voice: str) -> np.ndarray | None:
    """The opening at the wire rate, or None for ''."""
    if not text.strip():
        return None
    if shutil.which("espeak-ng") is None:
        raise InputError("espeak-ng is not installed: install it or pass --opening ''")
    try:
        pcm = synthesize(text, voice)
    except subprocess.CalledProcessError as exc:
        raise InputError(
            f"espeak-ng failed for voice {voice!r}: {exc.stderr.decode().strip()}"
        ) from exc
    if not np.any(pcm):
        raise InputError(f"espeak-ng said nothing for {text!r} with voice {voice!r}")
    return resample_whole(pcm, 8000, RATE)


async def _conversations(
    args: argparse.Namespace,
    delays: Sequence[float],
    opening: np.ndarray | None,
    sampling: tuple[SamplingParams, ...],
    progress: bool,
) -> list[Conversation]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    out = []
    for d in delays:
        try:
            out.append(
                await converse(
                    args.url,
                    args.seconds,
                    d,
                    opening=opening,
                    sampling=(sampling[0], sampling[1]),
                    headers=headers,
                    progress=progress,
                )
            )
        except DuplexError as exc:
            raise DuplexError(exc.code, f"the {d:g} ms conversation failed: {exc}") from exc
    return out


def _report(
    args: argparse.Namespace,
    out: Path,
    conversations: Sequence[Conversation],
    reference: tuple[TurnStats, int] | None,
) -> dict[str, Any]:
    """Measure, write the wavs, plots and selfplay.json; return the report."""
    stats = conversation_stats(conversations)
    summaries = {c.delay_ms: s.summary() for c, s in zip(conversations, stats, strict=True)}
    runs = []
    for c in conversations:
        wav = out / f"delay_{c.delay_ms:g}ms.wav"
        sf.write(wav, np.clip(c.stereo, -1.0, 1.0), c.rate)
        ratios = mean_ratios(summaries[0.0], summaries[c.delay_ms]) if 0.0 in summaries else {}
        runs.append(
            {
                **c.summary(),
                "wav": wav.name,
                "turns": summaries[c.delay_ms],
                "mean_ratios_vs_0ms": {m: _round(r) for m, r in ratios.items()},
            }
        )
    labelled = {f"{c.delay_ms:g} ms": s for c, s in zip(conversations, stats, strict=True)}
    if reference is not None:
        labelled["training data"] = reference[0]
    plots = write_plots(labelled, [c.delay_ms for c in conversations], out)
    report = {
        "config": {
            "url": args.url,
            "seconds": args.seconds,
            "delays_ms": [c.delay_ms for c in conversations],
            "opening": args.opening,
            "voice": args.voice,
            "seed_a": args.seed,
            "seed_b": args.seed + 1,
            "temperature": args.temperature,
            "turn_temperature": args.turn_temperature,
            "top_k": args.top_k,
            "speak_up_ms": args.speak_up_ms,
            "start_bias": args.start_bias,
            "barge_in_ms": args.barge_in_ms,
            "encoding": ENCODING,
            "rate": RATE,
            "frame_ms": FRAME_MS,
        },
        "vad": vad_name(),
        "out": str(out),
        "runs": runs,
        "reference": None
        if reference is None
        else {
            "data": str(Path(args.data) / "train.npz"),
            "checkpoint": args.checkpoint,
            "dialogues": reference[1],
            "turns": reference[0].summary(),
        },
        "target": target_check({c.delay_ms: s for c, s in zip(conversations, stats, strict=True)}),
        "plots": [p.name for p in plots],
    }
    (out / "selfplay.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def run(args: argparse.Namespace) -> int:
    """Run `duplex selfplay`: the table (or JSON) on stdout; problems are one line on stderr."""
    progress = not args.quiet and sys.stderr.isatty()
    try:
        delays, sampling = _check_args(args)
        opening = _opening(args.opening, args.voice)
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create --out {args.out!r}: {exc}") from exc
        reference = (
            None
            if args.no_reference
            else reference_stats(
                Path(args.data), Path(args.checkpoint), args.reference_dialogues, progress
            )
        )
        conversations = asyncio.run(_conversations(args, delays, opening, sampling, progress))
        report = _report(args, out, conversations, reference)
    except InputError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except DuplexError as exc:
        return _fail(exc.message, EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    print(json.dumps(report) if args.json else summary_table(report))
    return 0


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (`python -m clients.measure.selfplay`), also used by the tests."""
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
