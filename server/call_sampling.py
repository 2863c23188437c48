"""A call's sampling: what its `start` asks for, its eagerness, and the server's defaults.

`sampling.eagerness` says how readily the agent takes the turn (docs/configuration.md). Its
values were chosen from `duplex eval` runs over the same 120 cases (docs/benchmarks.md,
"Eagerness" and "Starting sooner"): `low` is a cooler flat draw with no start bias (answers
later, all but never cuts into a pause), `medium` the server's own defaults (speak-or-not
almost by the model's argmax, starting once speaking is likelier than about 1 in 4), `high`
at least as quick to start as the default and quicker to speak up. The
speak-up silences follow OpenAI's semantic VAD, whose low, medium and high eagerness "have
max timeouts of 8s, 4s, and 2s". They are set against the server's defaults: `low` never
makes the agent quicker than `medium` would (a cooler server keeps its temperature, a
smaller bias and a longer or no speak-up stay), `high` never slower (a larger bias and a
shorter speak-up stay). A value the call names itself wins over all of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from server.settings import Settings
from streaming.wire import SamplingParams

LOW_TEMPERATURE = 0.5
LOW_SPEAK_UP_MS = 8000.0
HIGH_TURN_TEMPERATURE = 0.1
# The default's: a larger bias answers no sooner (1.6 and 2.0: the agent starts in nearly every
# pause, is cut when the caller goes on, and is still silenced at the turn's end).
HIGH_START_BIAS = 1.2
HIGH_SPEAK_UP_MS = 2000.0


@dataclass(frozen=True, slots=True)
class CallSampling:
    """The sampling values a call gets (`seed` None: the server draws one)."""

    temperature: float
    turn_temperature: float | None
    top_k: int
    seed: int | None
    speak_up_chunks: int
    barge_in_ms: float
    start_bias: float


def resolve(asked: SamplingParams, server: Settings, tick_s: float) -> CallSampling:
    """What the call asked for, else what its eagerness makes of the server's default."""
    temperature, turn, speak_up = server.temperature, server.turn_temperature, server.speak_up_ms
    bias = server.start_bias
    if asked.eagerness == "low":
        temperature, turn = min(LOW_TEMPERATURE, temperature), None  # one flat draw
        bias = min(bias, 0.0)
        speak_up = max(LOW_SPEAK_UP_MS, speak_up) if speak_up > 0 else 0.0
    elif asked.eagerness == "high":
        turn, bias = HIGH_TURN_TEMPERATURE, max(bias, HIGH_START_BIAS)
        speak_up = min(HIGH_SPEAK_UP_MS, speak_up) if speak_up > 0 else HIGH_SPEAK_UP_MS
    return CallSampling(
        temperature=temperature if asked.temperature is None else asked.temperature,
        turn_temperature=turn if asked.turn_temperature is None else asked.turn_temperature,
        top_k=server.top_k if asked.top_k is None else asked.top_k,
        seed=server.seed if asked.seed is None else asked.seed,
        speak_up_chunks=periods(
            speak_up if asked.speak_up_ms is None else asked.speak_up_ms, tick_s
        ),
        barge_in_ms=server.barge_in_ms if asked.barge_in_ms is None else asked.barge_in_ms,
        start_bias=bias if asked.start_bias is None else asked.start_bias,
    )


def periods(ms: float, period_s: float) -> int:
    """Whole periods (ticks, codec frames) covering `ms`, at least one unless it is 0 (320 ms
    at 160 ms a tick is 2, not 3 after float error)."""
    return max(1, math.ceil(round(ms / 1000 / period_s, 6))) if ms > 0 else 0
