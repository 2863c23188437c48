"""`duplex eval`: the served model's full-duplex behaviour, in the style of Full-Duplex-Bench v1.

Cases come from the held-out split (scripts no training dialogue shares, spoken by the voice
no training data has) and each streams through the real server as one call at real-time pace:

- turn_taking: the user says one turn and stops. Does the agent take the turn, how fast?
- pause: the user pauses inside a turn. Does the agent wrongly take over?
- interruption: once the agent talks, the user barges in. Does the agent stop within 500 ms?
- backchannel: the user says a long turn with pauses. Does the agent backchannel (briefly)
  without taking over?

The user's speech is laid out by the case, so its boundaries are exact; the agent's speech is
found by silero-vad on the audio the server sent (clients/measure/speech_activity.py), as in
the load test and self-play. Agent speech shorter than `BACKCHANNEL_MAX_S` counts as a
backchannel, not a turn (Full-Duplex-Bench tells them apart by transcript; there is no ASR here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import soundfile as sf
from scipy.stats import binomtest, quantile_test
from tqdm import tqdm

from clients.call import (
    FINISH_TIMEOUT_S,
    InputError,
    add_sampling_arguments,
    check_url,
    place_frame,
    run_both,
    sampling_overrides,
)
from clients.client import DuplexClient, DuplexError, ReceivedFrame
from clients.measure.plots import plot_ecdf, pyplot
from clients.measure.speech_activity import Segment, speech_segments, vad_name
from model.training.dialogues import Dialogue, Turn, dialogues, split
from model.training.synth import (
    HELDOUT_VOICE,
    RATE,
    Timing,
    ends_sentence,
    segments,
    trim_silence,
)
from streaming.dependencies import require_tools
from streaming.espeak import PITCH_RANGE, WPM_RANGE, synthesize
from streaming.resample import resample_whole
from streaming.vad import EnergyVad
from streaming.wire import AudioFormat, SamplingParams

PROG = "duplex eval"
DEFAULT_URL = "ws://127.0.0.1:8000/v1/duplex"
EXIT_USAGE = 2
EXIT_FAILURE = 1

Category = Literal["turn_taking", "pause", "interruption", "backchannel"]
PauseKind = Literal["comma", "sentence"]  # what ends the piece before a mid-turn pause
CATEGORIES: tuple[Category, ...] = ("turn_taking", "pause", "interruption", "backchannel")

WIRE_RATE = 16000
LEAD_IN_S = 0.3  # silence before the user speaks
LISTEN_S = 2.5  # silence after the user's last word: time for the agent to answer
TAKEOVER_WINDOW_S = 2.0  # an agent onset later than this after the user's end is no answer
OVERLAP_MAX_S = 0.6  # the training data's earliest floor transfer: onsets up to this early count
# A mid-turn pause: the long end of the training data's own (0.25-0.6 s after a sentence,
# 0.15-0.35 s after a comma, so after a comma mostly longer than any the model heard).
PAUSE_S = (0.3, 0.6)
REACTION_S = 0.3  # agent speech this soon after a pause ends is still a reaction to the pause
BACKCHANNEL_MAX_S = 0.6  # agent speech shorter than this is a backchannel, not a turn
BARGE_AFTER_S = 0.4  # the user barges in once the agent has talked this long...
BARGE_WAIT_S = 3.0  # ...if it starts within this long of the user's end
BARGE_MAX_S = 2.5  # the barge-in is at most this long
STOP_WITHIN_S = 0.5  # the interruption target

TARGETS = {
    "turn_taking.takeover_rate": (">=", 0.9),
    "turn_taking.latency_median_s": ("<=", 0.4),
    "pause.takeover_rate": ("<=", 0.3),
    "interruption.stop_rate": (">=", 0.8),
}


@dataclass(slots=True)
class Case:
    """One scripted call. Times are seconds of the session; audio is at the codec's 8 kHz."""

    category: Category
    id: str
    text: str
    user: np.ndarray  # what the user says, from sample 0 (the barge-in is added live)
    speech: list[Segment]  # where the user speaks (pieces of the turn)
    pause: Segment | None = None  # the mid-turn pause (pause cases)
    pause_after: PauseKind | None = None  # what the piece before the pause ends with
    barge_in: np.ndarray | None = None  # interruption cases: said once the agent talks
    barge_text: str = ""
    seed: int = 0

    @property
    def user_end(self) -> float:
        return self.speech[-1][1]


@dataclass(slots=True)
class CaseResult:
    id: str
    category: Category
    text: str
    agent_segments: list[Segment] = field(default_factory=list)
    barge_at: float | None = None  # when the barge-in started (interruption)
    outcome: dict[str, Any] = field(default_factory=dict)
    latency_ms_p50: float | None = None  # server-added latency of the call
    overruns: int = 0
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# Cases


def _speak(
    pieces: Sequence[str], rng: np.random.Generator, pause_at: int | None = None
) -> tuple[np.ndarray, list[Segment], Segment | None]:
    """The pieces of a turn in the held-out voice, with the training data's pauses between
    them, from LEAD_IN_S; the pause after piece `pause_at` is drawn from PAUSE_S instead."""
    wpm = int(rng.integers(WPM_RANGE[0], WPM_RANGE[1] + 1))
    pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    timing = Timing()
    pos = round(LEAD_IN_S * RATE)
    parts: list[tuple[int, np.ndarray]] = []
    spans: list[Segment] = []
    pause: Segment | None = None
    for j, piece in enumerate(pieces):
        pcm = trim_silence(synthesize(piece, HELDOUT_VOICE, wpm, pitch))
        parts.append((pos, pcm))
        spans.append((pos / RATE, (pos + len(pcm)) / RATE))
        pos += len(pcm)
        if j < len(pieces) - 1:
            bounds = (
                PAUSE_S
                if j == pause_at
                else (timing.sentence_pause if ends_sentence(piece) else timing.comma_pause)
            )
            gap = round(rng.uniform(*bounds) * RATE)
            if j == pause_at:
                pause = (pos / RATE, (pos + gap) / RATE)
            pos += gap
    audio = np.zeros(pos + round(LISTEN_S * RATE), dtype=np.float32)
    for at, pcm in parts:
        audio[at : at + len(pcm)] = pcm
    return audio, spans, pause


def _pool(held: Sequence[Dialogue], category: Category) -> list[tuple[Dialogue, int]]:
    """The held-out turns a category can use: (dialogue, turn index)."""
    out: list[tuple[Dialogue, int]] = []
    for d in held:
        for i, t in enumerate(d.turns):
            n = len(segments(t.text))
            if category == "pause" and n < 2:
                continue
            if category == "backchannel" and not (t.backchannel or n >= 3):
                continue
            out.append((d, i))
    return out


def build_cases(per_category: int, seed: int, categories: Sequence[Category]) -> list[Case]:
    """`per_category` cases of each category from the held-out split (seeded, reproducible)."""
    held = split(dialogues(0))[1]  # the corpus of `duplex data synth` (corpus seed 0)
    all_turns: list[Turn] = [t for d in held for t in d.turns]
    cases: list[Case] = []
    for category in categories:
        pool = _pool(held, category)
        rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
        picks = rng.choice(len(pool), size=min(per_category, len(pool)), replace=False)
        for k in sorted(int(p) for p in picks):
            d, i = pool[k]
            case_seed = int(rng.integers(2**31))
            crng = np.random.default_rng(case_seed)
            pieces = segments(d.turns[i].text)
            pause_at = int(crng.integers(len(pieces) - 1)) if category == "pause" else None
            user, spans, pause = _speak(pieces, crng, pause_at)
            case = Case(category, f"{category}/{d.id}.{i}", d.turns[i].text, user, spans, pause,
                        seed=case_seed)  # fmt: skip
            if pause_at is not None:
                case.pause_after = "sentence" if ends_sentence(pieces[pause_at]) else "comma"
            if category == "interruption":
                other = all_turns[int(crng.integers(len(all_turns)))]
                barge = trim_silence(synthesize(other.text, HELDOUT_VOICE, 170, 50))
                case.barge_in = barge[: round(BARGE_MAX_S * RATE)]
                fade = min(80, len(case.barge_in))
                case.barge_in[len(case.barge_in) - fade :] *= np.linspace(1, 0, fade)
                case.barge_text = other.text
                # Room to wait for the agent, then for the barge-in (LISTEN_S follows already).
                room = round((BARGE_WAIT_S + BARGE_MAX_S) * RATE)
                case.user = np.concatenate([user, np.zeros(room, np.float32)])
            cases.append(case)
    return cases


# ---------------------------------------------------------------------------------------------
# Calls


@dataclass(slots=True)
class _Heard:
    user: np.ndarray  # what was sent, at the wire rate
    agent: np.ndarray  # what came back, placed by first_sample
    barge_at: float | None
    stats: dict[str, Any]


async def run_case(
    url: str,
    case: Case,
    sampling: SamplingParams | None = None,
    headers: dict[str, str] | None = None,
    noise_dbfs: float | None = None,
    respond_after_s: float | None = None,
) -> _Heard:
    """Stream one case at real-time pace; an interruption case barges in live, once the agent
    has talked for BARGE_AFTER_S (energy on the agent audio received so far). With
    `noise_dbfs`, white noise at that RMS level (at the codec's rate) is under all the user's
    audio, as on a line that is never quiet. With `respond_after_s`, the client sends
    `respond` that long after the user's last word, as one that knows when the turn is over
    (its own speech recognition; here the script) would."""
    audio = AudioFormat(encoding="pcm16", sample_rate=WIRE_RATE, frame_ms=20)
    rng = np.random.default_rng(case.seed)
    user = resample_whole(_line(case.user, noise_dbfs, rng), RATE, WIRE_RATE)
    barge = (
        resample_whole(_line(case.barge_in, noise_dbfs, rng), RATE, WIRE_RATE)
        if case.barge_in is not None
        else None
    )
    agent = np.zeros(len(user), dtype=np.float32)  # placed as it arrives: the barge-in reads it
    barge_at: int | None = None
    sampling = (sampling or SamplingParams()).model_copy(update={"seed": case.seed})
    async with DuplexClient.connect(url, audio=audio, sampling=sampling, headers=headers) as c:
        fs = c.frame_samples
        n_frames = len(user) // fs
        vad = EnergyVad(WIRE_RATE)
        wait_from = round(case.user_end * WIRE_RATE)
        wait_until = wait_from + round(BARGE_WAIT_S * WIRE_RATE)
        total = n_frames * fs
        respond_at = (
            None if respond_after_s is None else wait_from + round(respond_after_s * WIRE_RATE)
        )

        async def send() -> None:
            nonlocal barge_at, total, respond_at
            heard = 0  # agent samples fed to the energy detector
            started: int | None = None  # where the agent's current speech began
            for n in range(n_frames):
                due = c.t_ready + (n + 1) * fs / WIRE_RATE
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                at = n * fs
                if barge is not None and barge_at is None and at >= wait_from:
                    for what, ms in vad.push(agent[heard:at]):
                        started = round(ms * WIRE_RATE / 1000) if what == "started" else None
                    heard = at
                    if started is not None and at - max(started, wait_from) >= round(
                        BARGE_AFTER_S * WIRE_RATE
                    ):
                        barge_at = at
                        user[at : at + len(barge)] = barge[: len(user) - at]
                        end = at + len(barge) + round(LISTEN_S * WIRE_RATE)
                        total = min(len(user), -(-end // fs) * fs)
                    elif at >= wait_until:
                        total = at  # the agent never took the turn: nothing to interrupt
                if at >= total:
                    break
                if respond_at is not None and barge_at is not None:
                    respond_at = None  # the agent took the turn by itself and is barged in on
                if respond_at is not None and at >= respond_at:
                    await c.respond()
                    respond_at = None
                await c.send_frame(user[at : at + fs], last=at + fs >= total)
            await c.end(total)

        async def receive() -> None:
            async for event in c.events():
                if isinstance(event, ReceivedFrame):
                    place_frame(agent, event)

        await run_both(send(), receive(), n_frames * fs / WIRE_RATE + FINISH_TIMEOUT_S)
        stats = c.stats.model_dump() if c.stats is not None else {}
    barge_s = None if barge_at is None else barge_at / WIRE_RATE
    return _Heard(user[:total], agent[:total], barge_s, stats)


def _line(audio: np.ndarray, noise_dbfs: float | None, rng: np.random.Generator) -> np.ndarray:
    if noise_dbfs is None:
        return audio
    noise = rng.normal(0.0, 10 ** (noise_dbfs / 20), len(audio))
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Scoring (pure functions of segments and the case's marks)


def score_turn_taking(agent: Sequence[Segment], user_end: float) -> dict[str, Any]:
    """Takeover: an agent onset from OVERLAP_MAX_S before the user's end (an early start, as
    the training data's overlaps) to TAKEOVER_WINDOW_S after it. Speech that began earlier is
    talking over the user, not taking the turn. Latency: from the user's end (0 if earlier)."""
    for start, end in agent:
        if end > user_end and user_end - OVERLAP_MAX_S <= start < user_end + TAKEOVER_WINDOW_S:
            return {"takeover": True, "latency_s": max(0.0, start - user_end),
                    "overlap": start < user_end}  # fmt: skip
    return {"takeover": False, "latency_s": None, "overlap": False}


def _long(agent: Sequence[Segment]) -> list[Segment]:
    return [(s, e) for s, e in agent if e - s >= BACKCHANNEL_MAX_S]


def _meets(seg: Segment, start: float, end: float) -> bool:
    return seg[0] < end and seg[1] > start


def score_pause(agent: Sequence[Segment], pause: Segment) -> dict[str, Any]:
    """Takeover: agent speech longer than a backchannel during the pause or as a reaction to
    it (up to REACTION_S after the user resumes), including speech that began earlier: an
    agent talking through the user's pause holds the floor as much as one that starts in it."""
    window = (pause[0], pause[1] + REACTION_S)
    short = [x for x in agent if x[1] - x[0] < BACKCHANNEL_MAX_S and window[0] <= x[0] < window[1]]
    return {"takeover": any(_meets(x, *window) for x in _long(agent)), "backchannel": bool(short)}


def score_interruption(agent: Sequence[Segment], barge_at: float | None) -> dict[str, Any]:
    """Stop latency: from the barge-in to the end of the agent speech it interrupted."""
    if barge_at is None:
        return {"barged_in": False, "talking": False, "stop_s": None, "stopped": False}
    talking = [(s, e) for s, e in agent if s <= barge_at < e]
    if not talking:
        return {"barged_in": True, "talking": False, "stop_s": None, "stopped": False}
    stop = talking[0][1] - barge_at
    return {"barged_in": True, "talking": True, "stop_s": stop,
            "stopped": round(stop, 3) <= STOP_WITHIN_S}  # fmt: skip


def score_backchannel(agent: Sequence[Segment], speech: Sequence[Segment]) -> dict[str, Any]:
    """While the user holds the turn: short agent speech starting in it is a backchannel;
    longer agent speech within it is a takeover (talking over the user)."""
    start, end = speech[0][0], speech[-1][1]
    short = sum(1 for s, e in agent if e - s < BACKCHANNEL_MAX_S and start <= s < end)
    takeover = any(_meets(x, start, end - REACTION_S) for x in _long(agent))
    return {"backchannels": short, "takeover": takeover, "user_s": end - start}


def score(case: Case, agent: Sequence[Segment], barge_at: float | None) -> dict[str, Any]:
    if case.category == "turn_taking":
        return score_turn_taking(agent, case.user_end)
    if case.category == "pause":
        assert case.pause is not None
        return score_pause(agent, case.pause) | {"after": case.pause_after}
    if case.category == "interruption":
        return score_interruption(agent, barge_at)
    return score_backchannel(agent, case.speech)


def _rate(xs: Sequence[bool]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def rate_ci95(xs: Sequence[bool]) -> list[float] | None:
    """Wilson 95 % interval of a rate: how far another draw of as many cases could move it
    (at 30-40 cases, about +-0.15; a target met or missed inside it is not settled)."""
    if not xs:
        return None
    ci = binomtest(sum(xs), len(xs)).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(float(ci.low), 3), round(float(ci.high), 3)]


def _rate_with_ci(name: str, xs: Sequence[bool]) -> dict[str, Any]:
    """A target rate and its interval, as `name` and `name_ci95`."""
    return {name: _rate(xs), f"{name}_ci95": rate_ci95(xs)}


def _median(xs: Sequence[float]) -> float | None:
    return round(float(np.median(xs)), 3) if xs else None


def median_ci95(xs: Sequence[float]) -> list[float] | None:
    """95 % interval of a median from the order statistics (distribution-free: a binomial
    count of the values below it), so a latency median near its target can be read as
    settled or not, as the rates' intervals are."""
    if len(xs) < 2:
        return None
    ci = quantile_test(np.asarray(xs), q=float(np.median(xs)), p=0.5).confidence_interval(0.95)
    low, high = (float(v) for v in (ci.low, ci.high))
    return None if not (np.isfinite(low) and np.isfinite(high)) else [round(low, 3), round(high, 3)]


def summarize(results: Sequence[CaseResult]) -> dict[str, dict[str, Any]]:
    """Per category: the Full-Duplex-Bench-style rates and latencies."""
    out: dict[str, dict[str, Any]] = {}
    for cat in CATEGORIES:
        rs = [r.outcome for r in results if r.category == cat and r.error is None]
        errors = sum(1 for r in results if r.category == cat and r.error is not None)
        if not rs and not errors:
            continue
        row: dict[str, Any] = {"cases": len(rs), "errors": errors}
        if cat == "turn_taking":
            lat = [o["latency_s"] for o in rs if o["takeover"]]
            row |= {**_rate_with_ci("takeover_rate", [o["takeover"] for o in rs]),
                    "latency_median_s": _median(lat),
                    "latency_median_s_ci95": median_ci95(lat),
                    "latency_p90_s": round(float(np.percentile(lat, 90)), 3) if lat else None,
                    "overlap_rate": _rate([o["overlap"] for o in rs])}  # fmt: skip
        elif cat == "pause":
            row |= {**_rate_with_ci("takeover_rate", [o["takeover"] for o in rs]),
                    "backchannel_rate": _rate([o["backchannel"] for o in rs])}  # fmt: skip
            # Split by what precedes the pause: espeak-ng ends a clause before a comma with a
            # continuation contour, a sentence with a fall, so a model that hears intonation
            # can tell a comma's pause from a turn's end; a sentence's only by the words.
            for kind in get_args(PauseKind):
                row[f"takeover_rate_after_{kind}"] = _rate(
                    [o["takeover"] for o in rs if o["after"] == kind]
                )
        elif cat == "interruption":
            valid = [o for o in rs if o["talking"]]
            row |= {"agent_talking": len(valid),
                    **_rate_with_ci("stop_rate", [o["stopped"] for o in valid]),
                    "stop_median_s": _median([o["stop_s"] for o in valid])}  # fmt: skip
        else:
            minutes = sum(o["user_s"] for o in rs) / 60
            row |= {"backchannel_rate": _rate([o["backchannels"] > 0 for o in rs]),
                    "backchannels_per_min": round(sum(o["backchannels"] for o in rs) / minutes, 2)
                    if minutes else None,
                    "takeover_rate": _rate([o["takeover"] for o in rs])}  # fmt: skip
        out[cat] = row
    return out


def check_targets(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each issue target: the figure reached and whether it is met (None: not measured)."""
    out: dict[str, dict[str, Any]] = {}
    for key, (op, bound) in TARGETS.items():
        cat, name = key.split(".")
        value = summary.get(cat, {}).get(name)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[key] = {"value": value, "target": f"{op} {bound:g}", "met": met,
                    "ci95": summary.get(cat, {}).get(f"{name}_ci95")}  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# The run


@dataclass(slots=True)
class EvalReport:
    url: str
    seed: int
    noise_dbfs: float | None
    respond_after_ms: float | None  # the client said `respond` this long after the turn's end
    vad: str
    cases: list[CaseResult]
    summary: dict[str, dict[str, Any]]
    targets: dict[str, dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_eval(
    url: str,
    cases: Sequence[Case],
    concurrency: int = 4,
    out_dir: Path | None = None,
    progress: bool = True,
    seed: int = 0,
    sampling: SamplingParams | None = None,
    headers: dict[str, str] | None = None,
    noise_dbfs: float | None = None,
    respond_after_ms: float | None = None,
) -> EvalReport:
    """Run every case (`concurrency` calls at a time), then measure and score them."""
    t0 = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(cases), desc="eval", unit="case", disable=not progress)

    async def one(case: Case) -> _Heard | DuplexError:
        async with gate:
            try:
                respond_s = None if respond_after_ms is None else respond_after_ms / 1000
                return await run_case(url, case, sampling, headers, noise_dbfs, respond_s)
            except DuplexError as exc:
                return exc
            finally:
                bar.update()

    with bar:
        heard = await asyncio.gather(*(one(c) for c in cases))
    ok = [(c, h) for c, h in zip(cases, heard, strict=True) if isinstance(h, _Heard)]
    segs = speech_segments([h.agent for _, h in ok], WIRE_RATE)
    by_id = {c.id: (h, s) for (c, h), s in zip(ok, segs, strict=True)}
    results: list[CaseResult] = []
    for case, h in zip(cases, heard, strict=True):
        r = CaseResult(case.id, case.category, case.text)
        if isinstance(h, DuplexError):
            r.error = str(h)
        else:
            agent = by_id[case.id][1]
            r.agent_segments = [(round(s, 3), round(e, 3)) for s, e in agent]
            r.barge_at = h.barge_at
            r.outcome = score(case, agent, h.barge_at)
            r.latency_ms_p50 = h.stats.get("latency_ms_p50")
            r.overruns = int(h.stats.get("overruns", 0))
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                stereo = np.stack([h.user, h.agent], axis=1)
                sf.write(out_dir / f"{case.id.replace('/', '_')}.wav", stereo, WIRE_RATE)
        results.append(r)
    summary = summarize(results)
    return EvalReport(url, seed, noise_dbfs, respond_after_ms, vad_name(), results, summary,
                      check_targets(summary), round(time.perf_counter() - t0, 1))  # fmt: skip


def summary_table(report: EvalReport) -> str:
    lines = [] if report.noise_dbfs is None else [f"line noise: {report.noise_dbfs:g} dBFS white"]
    if report.respond_after_ms is not None:
        lines.append(f"the client sent `respond` {report.respond_after_ms:g} ms after each turn")
    lines.append(f"{'category':<13} {'cases':>5}  figures")
    for cat, row in report.summary.items():
        figures = "  ".join(f"{k}={v}" for k, v in row.items() if k != "cases" and "ci95" not in k)
        lines.append(f"{cat:<13} {row['cases']:>5}  {figures}")
    lines.append("")
    for key, t in report.targets.items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        ci = f"  (95 % CI {t['ci95'][0]:.2f}-{t['ci95'][1]:.2f})" if t["ci95"] else ""
        lines.append(f"{key:<32} {t['value']!s:>8}  target {t['target']:<8} {verdict:<6}{ci}")
    return "\n".join(lines)


def write_plots(report: EvalReport, directory: Path) -> list[Path]:
    """targets.png: each target's figure with its 95 % interval against the target (green
    where it is met); latency.png: the CDFs of turn-taking latency and of the time the agent
    took to stop at a barge-in, with their targets, and every rate of the summary by category.
    """
    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(report.targets), figsize=(3.2 * len(report.targets), 3.6))
    for ax, (key, t) in zip(axes, report.targets.items(), strict=True):
        op, bound = TARGETS[key]
        top = 1.0 if key.endswith("rate") else max(1.0, 2 * bound, t["value"] or 0.0)
        ok = (bound, top) if op == ">=" else (0.0, bound)
        ax.axhspan(*ok, color="green", alpha=0.12, label=f"target {op} {bound:g}")
        if t["value"] is not None:
            low, high = t["ci95"] or (t["value"], t["value"])
            err = [[t["value"] - low], [high - t["value"]]]
            color = "green" if t["met"] else "red"
            ax.errorbar([0], [t["value"]], yerr=err, fmt="o", color=color, capsize=6)
        ax.set(title=key.replace(".", "\n"), xticks=[], ylim=(0, top * 1.02))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(loc="lower right" if op == ">=" else "upper right", fontsize=8)
    fig.suptitle(f"duplex eval: {len(report.cases)} cases, seed {report.seed} (95 % intervals)")
    fig.tight_layout()
    written = [directory / "targets.png"]
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    fig, (lat, stop, rates) = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, cat, key, target, title in (
        (
            lat,
            "turn_taking",
            "latency_s",
            TARGETS["turn_taking.latency_median_s"][1],
            "turn-taking latency (takeovers)",
        ),
        (stop, "interruption", "stop_s", STOP_WITHIN_S, "stop after a barge-in (agent talking)"),
    ):
        xs = [
            r.outcome[key]
            for r in report.cases
            if r.category == cat and r.outcome.get(key) is not None
        ]
        plot_ecdf(ax, xs)
        ax.axvline(target, color="black", ls="--", lw=0.8, label=f"{target:g} s")
        ax.set(title=f"{title}, {len(xs)} cases", xlabel="s", ylabel="fraction <= x")
        ax.set(ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    bars = [
        (f"{cat}\n{name.removesuffix('_rate')}", value)
        for cat, row in report.summary.items()
        for name, value in row.items()
        if name.endswith("_rate") and value is not None
    ]
    if bars:
        rates.barh([b[0] for b in bars], [b[1] for b in bars])
    rates.set(title="rates by category", xlim=(0, 1))
    rates.tick_params(axis="y", labelsize=7)
    rates.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    written.append(directory / "latency.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server endpoint ({DEFAULT_URL})")
    parser.add_argument("--cases", type=int, default=20, help="cases per category (default 20)")
    parser.add_argument(
        "--categories",
        default=",".join(CATEGORIES),
        help=f"comma-separated subset of {','.join(CATEGORIES)}",
    )
    parser.add_argument("--seed", type=int, default=0, help="case choice, voices and timing")
    parser.add_argument(
        "--noise-dbfs",
        type=float,
        help="white noise at this RMS level (e.g. -60) under all the user's audio (default none)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="calls at once (at most the server's slots)"
    )
    parser.add_argument(
        "--respond-after-ms",
        type=float,
        help="send `respond` this long after the user's last word, as a client that knows "
        "when the turn is over would (default: never; the model alone decides)",
    )
    add_sampling_arguments(parser)
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--out", help="write each case's stereo wav (user, agent) here")
    parser.add_argument("--json-out", help="write the full report (every case) as JSON here")
    parser.add_argument("--plots-dir", help="write targets.png and latency.png here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    """Run `duplex eval`: table (or JSON) on stdout; problems are one line on stderr."""
    names = [c.strip() for c in args.categories.split(",") if c.strip()]
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown or not names:
        return _fail(f"unknown --categories {unknown or names}: choose from {CATEGORIES}", 2)
    if args.cases < 1 or args.concurrency < 1:
        return _fail("--cases and --concurrency must be at least 1", EXIT_USAGE)
    if args.noise_dbfs is not None and not -120 <= args.noise_dbfs <= 0:
        return _fail(f"--noise-dbfs must be from -120 to 0, got {args.noise_dbfs}", EXIT_USAGE)
    most = LISTEN_S * 1000  # the case ends that long after the user's last word
    if args.respond_after_ms is not None and not 0 <= args.respond_after_ms < most:
        return _fail(
            f"--respond-after-ms must be from 0 to below {most:g}, got {args.respond_after_ms}",
            EXIT_USAGE,
        )
    cats = [c for c in CATEGORIES if c in names]
    try:
        sampling = sampling_overrides(args, None)
        check_url(args.url)
    except InputError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if args.json_out and not Path(args.json_out).parent.is_dir():  # before the cases run
        return _fail(f"cannot write {args.json_out}: no such directory", EXIT_USAGE)
    if args.json_out and Path(args.json_out).is_dir():
        return _fail(f"cannot write {args.json_out}: it is a directory", EXIT_USAGE)
    for flag, directory in (("the case wavs", args.out), ("the plots", args.plots_dir)):
        if directory:
            try:
                Path(directory).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                return _fail(f"cannot write {flag} into {directory}: {exc}", EXIT_USAGE)
    if args.plots_dir:
        require_tools("matplotlib")  # say so now, not after the run
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    try:
        cases = build_cases(args.cases, args.seed, cats)
        report = asyncio.run(
            run_eval(
                args.url,
                cases,
                args.concurrency,
                Path(args.out) if args.out else None,
                seed=args.seed,
                sampling=sampling,
                headers=headers,
                noise_dbfs=args.noise_dbfs,
                respond_after_ms=args.respond_after_ms,
            )
        )
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        if args.plots_dir:
            write_plots(report, Path(args.plots_dir))
    except OSError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    failed = [r for r in report.cases if r.error]
    if len(failed) == len(report.cases):
        return _fail(f"every case failed, e.g. {failed[0].error}")
    print(json.dumps(report.to_dict()) if args.json else summary_table(report))
    return 0


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"{PROG}: {'error: ' if code == EXIT_USAGE else ''}{message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (`python -m clients.measure.evaluation`), also used by the tests."""
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
