"""One call's audio against the server's clock: re-anchoring, and what `end` may leave owed.

Clock drift is absorbed within the latency buffer; a call whose audio stays beyond the
buffer's reach (rollback chunks x tick), late or early, for REANCHOR_TICKS ticks is re-anchored:
silence is inserted (late) or incoming audio dropped (early) so its audio is on time again, and
that is counted. Late audio would otherwise be dropped for the rest of the call (the agent
deaf), early audio heard that much later (the agent slow). A stall shorter than that is left
alone: its audio arrives in a burst, and only what is beyond the budget is dropped. A drop not
made yet is revoked as far as the call trails the clock again (a burst, then a pause).

A clock off by more than re-anchoring can follow is refused: re-anchoring in ~2 s steps keeps
up with a real line's drift (well under 0.1 %: one re-anchor in many minutes), but a client
whose clock runs 30 % slow spends most of each step beyond the buffer's reach and kept 6 % of
its audio. `DriftMeter` measures the drift from the client's own sample numbering; one beyond
MAX_DRIFT over DRIFT_WINDOWS windows of REANCHOR_TICKS ticks in a row (~8 s) ends the call with
`clock_drift`, which names the drift, so a broken client is found, not silently deafened.

Audio sent ahead of the clock buys no server time: when `end` comes, audio more than the
buffer's reach ahead of the clock is dropped and counted as an early re-anchor, so the call
ends within about that reach of the clock (docs/protocol.md, `end`).

The tick loop drives `CallPacing` once a tick with the call's time since its sample 0 and the
samples it has streamed; it holds no reference to the call, so it runs without a server.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("duplex.pacing")

REANCHOR_TICKS = 12  # ~2 s off the clock: drift or a lasting delay, not a network stall
MAX_DRIFT = 0.01  # the most a client clock may run off (slow or fast): 10x a real line's
DRIFT_WINDOWS = 4  # windows of REANCHOR_TICKS in a row drifting the same way that may refuse it
MIN_FLOW = 0.25  # a window with less audio than this share of its time is a stall, not drift


@dataclass(frozen=True, slots=True)
class ReAnchor:
    """A call's audio moved back onto the clock."""

    samples: int  # wire samples: > 0 silence to insert now, < 0 incoming audio to drop
    lag_s: float  # how far its audio trailed (> 0) or led (< 0) the clock

    @property
    def direction(self) -> str:
        return "late" if self.lag_s > 0 else "early"


@dataclass
class DriftMeter:
    """How fast a call's audio clock runs against the server's, window by window of
    REANCHOR_TICKS ticks, from the client's own sample numbering (which re-anchoring does not
    move). A window's lag is the lowest it saw: network delay only ever adds to it, so jitter
    does not read as drift. A window with less than MIN_FLOW of its time in audio is a stall
    (a client that paused, or started late: re-anchored, and the idle timeout's business), not
    a clock: it breaks a run and the next window starts afresh."""

    rate: int  # wire samples per second
    _ticks: int = 0  # looks in the window so far
    _mark: tuple[float, int] | None = None  # where the window started: elapsed, samples
    _low: float = math.inf  # the window's lowest lag
    _last: tuple[float, float] | None = None  # the previous flowing window's end and lag
    _run: tuple[float, float] | None = None  # where the run of drifting windows started
    _run_slow: bool = False  # the run's way: its audio falls behind (slow) or runs ahead
    _run_windows: int = 0  # windows in the run, each beyond half MAX_DRIFT the same way

    def update(self, elapsed_s: float, client_samples: int) -> float | None:
        """One tick's look (`client_samples` in the client's numbering). Returns the drift
        (seconds of lag gained a second: > 0 slow, < 0 fast) once DRIFT_WINDOWS windows in a
        row have each drifted the same way by more than half MAX_DRIFT (so one stall that
        is never made up is not a run) and the run as a whole by more than MAX_DRIFT (where
        the jitter of its ends weighs DRIFT_WINDOWS times less), else None."""
        if self._mark is None:
            self._mark = (elapsed_s, client_samples)
        self._low = min(self._low, elapsed_s - client_samples / self.rate)
        self._ticks += 1
        if self._ticks < REANCHOR_TICKS:
            return None
        (t0, n0), low, last = self._mark, self._low, self._last
        flowing = client_samples - n0 >= MIN_FLOW * (elapsed_s - t0) * self.rate
        self._ticks, self._mark, self._low = 0, (elapsed_s, client_samples), math.inf
        self._last = (elapsed_s, low) if flowing else None
        if (
            not flowing
            or last is None
            or abs(step := (low - last[1]) / (elapsed_s - last[0])) <= MAX_DRIFT / 2
        ):
            self._run, self._run_windows = None, 0
            return None
        if self._run is None or self._run_slow != (step > 0):
            self._run, self._run_slow, self._run_windows = last, step > 0, 0
        self._run_windows += 1
        if self._run_windows < DRIFT_WINDOWS:
            return None
        drift = (low - self._run[1]) / (elapsed_s - self._run[0])
        return drift if abs(drift) > MAX_DRIFT else None


@dataclass
class CallPacing:
    """A call's place against the clock, and its figures for `stats`."""

    call_id: str  # for the log
    rate: int  # wire samples per second
    frame_samples: int  # one client frame: how far a client on time trails the clock
    reach_s: float  # the latency buffer's reach: rollback chunks x tick
    audio_on_time: bool = True  # its audio was in before the last step started
    drop_pending: int = 0  # wire samples of incoming audio still to drop (re-anchored early)
    off_clock_ticks: int = 0  # consecutive ticks its audio was beyond the buffer's reach
    on_clock_ticks: int = 0  # consecutive ticks its audio was within reach
    stall_re_anchors: int = 0  # re-anchors since its audio last stayed within reach
    ended: bool = False  # `end` came and what it left owed is bounded
    re_anchors: int = 0
    re_anchored_samples: int = 0  # net: silence inserted (+), audio dropped (-)
    drift: DriftMeter = field(init=False)

    def __post_init__(self) -> None:
        self.drift = DriftMeter(self.rate)

    def refusal(self, elapsed_s: float, client_samples: int) -> str | None:
        """One tick's look at the call's clock (`client_samples`: the samples it has sent, in
        its own numbering): why the call is refused, if its clock runs off by more than
        re-anchoring can follow (`clock_drift`)."""
        drift = self.drift.update(elapsed_s, client_samples)
        if drift is None:
            return None
        log.warning("call %s refused: its audio clock runs %.1f %% %s", self.call_id,
                    abs(drift) * 100, "slow" if drift > 0 else "fast")  # fmt: skip
        return (
            f"the client's audio clock runs {abs(drift) * 100:.1f} % "
            f"{'slow' if drift > 0 else 'fast'} against the server's (its audio "
            f"{'falls behind' if drift > 0 else 'runs ahead'} {abs(drift) * 1000:.0f} ms a "
            f"second); at most {MAX_DRIFT * 100:g} % is followed: send {self.rate} samples a "
            "second, in real time"
        )

    def after_drop(self, pcm: np.ndarray) -> np.ndarray:
        """What is left of incoming samples once the audio still to drop (re-anchoring
        early) is taken from their start."""
        cut = min(self.drop_pending, len(pcm))
        self.drop_pending -= cut
        return pcm[cut:]

    def lag_s(self, elapsed_s: float, samples_in: int) -> float:
        """How far the call's audio trails the clock, `elapsed_s` after its sample 0 with
        `samples_in` wire samples in its stream: up to a frame for a client on time, more with
        network delay, less than 0 when the client's clock runs fast (or it sends faster than
        real time)."""
        streamed = samples_in - self.drop_pending
        return elapsed_s - streamed / self.rate

    def check(self, elapsed_s: float, samples_in: int) -> ReAnchor | None:
        """One tick's look at a live call: the re-anchor due now, if one is (a late one's
        silence is the caller's to insert; an early one's drop is planned here)."""
        frame_s = self.frame_samples / self.rate
        lag = self.lag_s(elapsed_s, samples_in)
        if lag > frame_s and self.drop_pending:  # more than a client on time trails by
            self._revoke(round((lag - frame_s) * self.rate))
            lag = self.lag_s(elapsed_s, samples_in)
        if abs(lag) <= self.reach_s:
            self.off_clock_ticks = 0
            self.on_clock_ticks += 1
            # A stall is over once its audio stays within reach as long as it took to call it
            # one (right after a re-anchor it is within reach for a few ticks).
            if self.on_clock_ticks == REANCHOR_TICKS:
                if self.stall_re_anchors > 1:
                    log.info("call %s back on the clock after %d re-anchors", self.call_id,
                             self.stall_re_anchors)  # fmt: skip
                self.stall_re_anchors = 0
            return None
        self.on_clock_ticks = 0
        self.off_clock_ticks += 1
        if self.off_clock_ticks < REANCHOR_TICKS:
            return None
        self.off_clock_ticks = 0
        shift = lag - frame_s if lag > 0 else lag  # a client on time trails by ~a frame
        move = ReAnchor(round(shift * self.rate), lag)
        if move.samples < 0:
            self.drop_pending -= move.samples
        self._count(move.samples)
        self.stall_re_anchors += 1
        # A client that stops sending without hanging up is re-anchored every REANCHOR_TICKS
        # until idle_timeout: one info line per stall, the rest at debug.
        log.log(
            logging.INFO if self.stall_re_anchors == 1 else logging.DEBUG,
            "call %s re-anchored: its audio was %.0f ms %s",
            self.call_id, abs(lag) * 1000, move.direction,
        )  # fmt: skip
        return move

    def bound_end(self, elapsed_s: float, samples_in: int) -> int:
        """`end` came (`elapsed_s` after sample 0, `samples_in` wire samples in the stream):
        no more audio, so a drop still planned is never made and is revoked; audio more than
        the buffer's reach ahead of the clock is dropped. Returns how many samples that drops
        from the end of the stream (0, the usual case: a client on time trails the clock)."""
        self.ended = True
        self._revoke(self.drop_pending)
        cut = samples_in - round((elapsed_s + self.reach_s) * self.rate)
        if cut <= 0:
            return 0
        self._count(-cut)
        log.info(
            "call %s ended with its audio %.0f ms ahead of the clock: the last %.0f ms dropped",
            self.call_id, (cut / self.rate + self.reach_s) * 1000, cut / self.rate * 1000,
        )  # fmt: skip
        return cut

    def _count(self, samples: int) -> None:
        self.re_anchors += 1
        self.re_anchored_samples += samples

    def _revoke(self, samples: int) -> None:
        """Drop up to `samples` less of the incoming audio than an early re-anchor planned:
        the call trails the clock again before that audio came (a burst, then a pause), and
        dropping it once it comes would cut the caller's speech."""
        n = min(samples, self.drop_pending)
        self.drop_pending -= n
        self.re_anchored_samples += n
