"""Turn-taking statistics of a two-party conversation, from each party's speech segments.

The definitions follow Heldner & Edlund (2010, "Pauses, gaps and overlaps in conversations"),
computed on a 10 ms grid:

- IPU (inter-pausal unit): one party's speech with no silence of `IPU_SILENCE_S` or more inside;
- pause: silence of both parties between two IPUs of the same party;
- gap: silence of both at a change of speaker;
- overlap: speech of both at a change of speaker (between-speaker overlap);
- within-speaker overlap: speech of both without a change (backchannels, false starts);
- floor-transfer offset (FTO): gaps as positive and overlaps as negative durations.

Self-play, the evaluation and the training-data reference all go through `turn_stats`, so
their figures compare like with like.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from clients.measure.speech_activity import Segment

GRID_S = 0.01
IPU_SILENCE_S = 0.2

MEASURES = ("ipu", "pause", "gap", "overlap", "within_overlap", "fto")


@dataclass(slots=True)
class TurnStats:
    """Durations in seconds, pooled over both parties (and over conversations by `extend`)."""

    ipu: list[float] = field(default_factory=list)
    pause: list[float] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    overlap: list[float] = field(default_factory=list)
    within_overlap: list[float] = field(default_factory=list)
    fto: list[float] = field(default_factory=list)
    seconds: float = 0.0  # conversation time the figures come from

    def extend(self, other: TurnStats) -> None:
        for f in MEASURES:
            getattr(self, f).extend(getattr(other, f))
        self.seconds += other.seconds

    def summary(self) -> dict[str, Any]:
        """Per measure: count, rate per minute, mean, median, 10th and 90th percentiles."""
        out: dict[str, Any] = {"seconds": round(self.seconds, 2)}
        for f in fields(self):
            if f.name not in MEASURES:
                continue
            x = np.asarray(getattr(self, f.name), dtype=np.float64)
            per_min = x.size / self.seconds * 60 if self.seconds else None
            out[f.name] = {
                "count": int(x.size),
                "per_minute": _r(per_min),
                "mean_s": _r(float(x.mean())) if x.size else None,
                "median_s": _r(float(np.median(x))) if x.size else None,
                "p10_s": _r(float(np.percentile(x, 10))) if x.size else None,
                "p90_s": _r(float(np.percentile(x, 90))) if x.size else None,
            }
        return out


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def ipus(segments: Iterable[Segment], min_silence_s: float = IPU_SILENCE_S) -> list[Segment]:
    """Merge speech segments separated by less than `min_silence_s` of silence."""
    out: list[Segment] = []
    for start, end in sorted(segments):
        if out and start - out[-1][1] < min_silence_s:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _activity(segments: Sequence[Segment], n: int) -> np.ndarray:
    active = np.zeros(n, dtype=bool)
    for start, end in segments:
        active[round(start / GRID_S) : round(end / GRID_S)] = True
    return active


def turn_stats(a: Sequence[Segment], b: Sequence[Segment], duration_s: float) -> TurnStats:
    """The statistics of one conversation: party a's and b's speech segments (seconds)."""
    ua, ub = ipus(a), ipus(b)
    n = round(duration_s / GRID_S)
    state = _activity(ua, n).astype(np.int8) + 2 * _activity(ub, n).astype(np.int8)
    # Runs of one state: 0 silence, 1 a alone, 2 b alone, 3 both.
    cuts = np.flatnonzero(np.diff(state)) + 1
    starts = np.concatenate([[0], cuts]).astype(int)
    ends = np.concatenate([cuts, [n]]).astype(int)
    states = state[starts] if n else np.zeros(0, np.int8)
    solo = [i for i, s in enumerate(states) if s in (1, 2)]
    stats = TurnStats(ipu=[e - s for s, e in ua + ub], seconds=duration_s)
    for i, s in enumerate(states):
        if s not in (0, 3):
            continue
        k = bisect.bisect(solo, i)  # solo runs before i: solo[:k]
        if k == 0 or k == len(solo):
            continue  # the conversation's edges are no one's turn
        length = (ends[i] - starts[i]) * GRID_S
        change = states[solo[k - 1]] != states[solo[k]]
        if s == 0:
            (stats.gap if change else stats.pause).append(length)
            if change:
                stats.fto.append(length)
        elif change:
            stats.overlap.append(length)
            stats.fto.append(-length)
        else:
            stats.within_overlap.append(length)
    return stats
