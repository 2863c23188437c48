"""A call's sampling: what its `start` asks for, its eagerness, and the server's defaults.

`sampling.eagerness` says how readily the agent takes the turn (docs/configuration.md). Its
values were chosen from `duplex eval` runs over the same 120 cases (docs/benchmarks.md,
"Eagerness"): `low` is a cooler flat draw (answers later, holds through pauses, yields to
barge-ins), `medium` the server's own defaults, `high` draws speak-or-not almost by the
model's own argmax (answers ~0.3 s sooner, takes over a quarter to a third of the user's
pauses). The speak-up silences follow OpenAI's semantic VAD, whose low, medium and high
eagerness "have max timeouts of 8s, 4s, and 2s". They are set against the server's defaults:
`low` never makes the agent quicker than `medium` would (a cooler server keeps its
temperature, a longer or no speak-up stays), `high` never slower (a shorter speak-up stays).
A value the call names itself wins over all of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from server.protocol import SamplingParams
from server.settings import Settings

LOW_TEMPERATURE = 0.5
LOW_SPEAK_UP_MS = 8000.0
HIGH_TURN_TEMPERATURE = 0.1
HIGH_SPEAK_UP_MS = 2000.0


@dataclass(frozen=True, slots=True)
class CallSampling:
    """The sampling values a call gets (`seed` None: the server draws one)."""

    temperature: float
    turn_temperature: float | None
    top_k: int
    seed: int | None
    speak_up_chunks: int


def resolve(asked: SamplingParams, server: Settings, tick_s: float) -> CallSampling:
    """What the call asked for, else what its eagerness makes of the server's default."""
    temperature, turn, speak_up = server.temperature, server.turn_temperature, server.speak_up_ms
    if asked.eagerness == "low":
        temperature, turn = min(LOW_TEMPERATURE, temperature), None  # one flat draw
        speak_up = max(LOW_SPEAK_UP_MS, speak_up) if speak_up > 0 else 0.0
    elif asked.eagerness == "high":
        turn = HIGH_TURN_TEMPERATURE
        speak_up = min(HIGH_SPEAK_UP_MS, speak_up) if speak_up > 0 else HIGH_SPEAK_UP_MS
    return CallSampling(
        temperature=temperature if asked.temperature is None else asked.temperature,
        turn_temperature=turn if asked.turn_temperature is None else asked.turn_temperature,
        top_k=server.top_k if asked.top_k is None else asked.top_k,
        seed=server.seed if asked.seed is None else asked.seed,
        speak_up_chunks=chunks(
            speak_up if asked.speak_up_ms is None else asked.speak_up_ms, tick_s
        ),
    )


def chunks(ms: float, tick_s: float) -> int:
    """Whole chunks covering `ms`, at least one unless it is 0 (320 ms at 160 ms a tick is 2,
    not 3 after float error)."""
    return max(1, math.ceil(round(ms / 1000 / tick_s, 6))) if ms > 0 else 0
