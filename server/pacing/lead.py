"""The lead and the rollback depth, fixed at start (decisions.md §2).

The lead is the most time a step is given before its deadline; the latency budget and the lead
together say how many user chunks may be estimated at once, which the engine reserves room to
roll back.
"""

from __future__ import annotations

import math

# The auto lead starts each step this long after a user chunk's last sample is due: a chunk is
# complete once the frame after it arrives (the wire-to-codec resampler looks 3 ms ahead; 20 ms
# frames are the common size), plus 15 ms to arrive and be tokenized. The step then uses that
# chunk at once and has the rest of the tick to finish (docs/architecture.md, "The step and
# the estimate").
STEP_MARGIN_S = 0.035
ROLLBACK_SLACK_S = 0.04


def lead_s(tick_s: float, lead_ms: float | None) -> float:
    """The lead: `lead_ms` when one is set, else the tick less STEP_MARGIN_S. A lead of a
    whole tick or more is refused (ValueError): the step would start before its audio could."""
    lead = tick_s - STEP_MARGIN_S if lead_ms is None else lead_ms / 1000
    if lead >= tick_s:
        raise ValueError(f"lead_ms {lead * 1000:g} must be below the tick ({tick_s * 1000:g} ms)")
    return lead


def rollback_chunks(latency_budget_s: float, lead_s: float, tick_s: float) -> int:
    """How many user chunks may be estimated at once: ceil((budget + lead + slack) / tick).

    The slack keeps audio that is exactly `budget` late (plus scheduling noise) usable.
    """
    return max(1, math.ceil((latency_budget_s + lead_s + ROLLBACK_SLACK_S) / tick_s))
