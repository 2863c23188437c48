"""The global tick clock: tick g starts at t0 + g * period on the monotonic clock.

Deadlines are absolute, so sleeping late for one tick never shifts the next (no drift).
"""

from __future__ import annotations

import math
import time


class TickClock:
    def __init__(self, period_s: float, t0: float | None = None) -> None:
        if period_s <= 0:
            raise ValueError(f"tick period must be > 0, got {period_s}")
        self.period = period_s
        self.t0 = time.monotonic() if t0 is None else t0

    def deadline(self, tick: int) -> float:
        """When tick `tick` starts (monotonic seconds)."""
        return self.t0 + tick * self.period

    def next_tick(self, now: float | None = None) -> int:
        """The first tick that starts at or after `now`."""
        now = time.monotonic() if now is None else now
        return max(0, math.ceil((now - self.t0) / self.period - 1e-9))
