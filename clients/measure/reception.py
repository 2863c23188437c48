"""How a caller heard the agent: arrival jitter and gaps of its stream, when each sample was
heard, and turn latency (end of the caller's speech to the agent's onset).

Pure functions over recorded streams, so the unit tests feed them synthetic ones with known
answers; `duplex loadtest` applies them to each caller.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clients.measure.speech_activity import Segment

# A user turn ends where a speech segment is followed by at least this much non-speech.
MIN_PAUSE_S = 0.3
# An agent onset later than this after the user's turn end is not an answer to it.
RESPONSE_WINDOW_S = 3.0


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
    audio = np.asarray(lengths) > 0  # not the empty end marker: it carries no audio to time
    firsts = np.asarray(first_samples, dtype=np.float64)[audio]
    late = np.asarray(arrivals, dtype=np.float64)[audio] - (t_ready + base_delay_s + firsts / rate)
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
