"""When a tick's step starts: as soon as the user audio it waits for is in, and no later than
the time the step needs before its deadline.

A step needs about as long as recent steps took (scaled up when more calls share it), so with
few calls it can start late in the tick and use most of the newest user chunk as real frames;
with many it starts right after the previous chunk completed. The wait is per frame: the step
of tick g waits for the first `m` codec frames of the chunk that ends at g's deadline, where
`m` is the most whose nominal arrival still leaves the step its time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

HISTORY_TICKS = 64  # recent steps the prediction looks at (about 10 s of 160 ms ticks)
MIN_HISTORY = 8  # until then, the step gets the most time (no figures yet)
SAFETY = 1.25  # the predicted step time is the slowest recent one times this
SEND_MARGIN_S = 0.005  # from the step's end to the frames being on the socket
# The least time a step is given. Its start is at the latest only when the audio it waits for
# is late (network, a relay), and then a host hiccup of a few tens of ms should not make it
# overrun; at one call (~10 ms steps) it still waits for two of the newest chunk's frames.
MIN_BUDGET_S = 0.04
# A codec frame is encoded once the wire frame after its last sample arrived (the resampler
# looks ahead): about one 20 ms wire frame plus delivery.
FRAME_ARRIVAL_S = 0.025
RETRY_LATE_TICKS = 8  # a call that was late is waited for again this often (~1.3 s)


@dataclass(frozen=True, slots=True)
class StepWait:
    """What the step of one tick waits for: each call in `need` to have encoded that many codec
    frames, but not before `earliest` (the awaited frame's last sample is due) and no later
    than `latest` (the step's latest start). A call whose audio was late at the previous step
    is waited for only when `retry` is set, so it cannot hold the others up each tick, and
    one that is on time again is noticed."""

    earliest: float
    latest: float
    need: dict[str, int]
    retry: bool

    def waits_for(self, call_id: str, on_time: bool) -> bool:
        return call_id in self.need and (on_time or self.retry)


@dataclass
class StepPacer:
    tick_s: float
    frame_s: float  # one codec frame
    frames_per_chunk: int
    max_budget_s: float  # the most time a step is given: the configured lead
    arrival_s: float = FRAME_ARRIVAL_S  # a frame's usual arrival after its last sample is due
    adaptive: bool = True  # False: every step gets max_budget_s
    _history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=HISTORY_TICKS))

    def budget(self, sessions: int) -> float:
        """How long before its deadline the coming step must start at the latest."""
        if not self.adaptive or len(self._history) < MIN_HISTORY:
            return self.max_budget_s
        slowest = max(t * max(1.0, sessions / max(n, 1)) for t, n in self._history)
        return min(self.max_budget_s, max(MIN_BUDGET_S, SAFETY * slowest + SEND_MARGIN_S))

    def frames_to_wait(self, budget_s: float) -> int:
        """How many frames of the newest user chunk the step waits for (0: only whole chunks
        up to the one before)."""
        room = self.tick_s - self.arrival_s - budget_s
        return max(0, min(self.frames_per_chunk - 1, math.floor(room / self.frame_s + 1e-9)))

    def wait(self, tick: int, deadline: float, joined: dict[str, int], sessions: int) -> StepWait:
        """What the step of `tick` (due at `deadline`) waits for, with `sessions` calls in it;
        `joined`: the join tick of each live call that has audio to wait for (tick > its
        join tick). Call j's awaited frame is the m-th of its chunk tick - join - 1."""
        budget = self.budget(sessions)
        m = self.frames_to_wait(budget)
        return StepWait(
            earliest=deadline - self.tick_s + m * self.frame_s,
            latest=deadline - budget,
            need={c: (tick - join - 1) * self.frames_per_chunk + m for c, join in joined.items()},
            retry=tick % RETRY_LATE_TICKS == 0,
        )

    def record(self, step_s: float, sessions: int) -> None:
        """A finished step: from its start to its frames handed to the senders."""
        self._history.append((step_s, sessions))
