"""How readily the agent takes the turn: a call's `sampling.eagerness` (docs/configuration.md).

Each eagerness is a set of sampling values chosen from `duplex eval` runs over the same 120
cases (docs/benchmarks.md, "Eagerness"): `low` is a cooler flat draw (answers later, holds
through pauses, yields to barge-ins); `medium` is the server's own defaults; `high` draws
speak-or-not almost by the model's own argmax (answers ~0.3 s sooner, takes over a third of
the user's pauses). The speak-up silences follow OpenAI's semantic VAD, whose low, medium and
high eagerness "have max timeouts of 8s, 4s, and 2s" (medium: the server's, 3 s by default).
A sampling value the call names itself wins over its eagerness's; what neither sets, the
server's defaults fill.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.protocol import Eagerness, SamplingParams


@dataclass(frozen=True, slots=True)
class EagerSampling:
    """The sampling an eagerness asks for (None: the server's default)."""

    temperature: float | None = None
    turn_temperature: float | None = None
    flat: bool = False  # one flat draw even where the server splits off speak-or-not
    speak_up_ms: float | None = None


EAGERNESS: dict[Eagerness, EagerSampling] = {
    "low": EagerSampling(temperature=0.5, flat=True, speak_up_ms=8000.0),
    "medium": EagerSampling(),
    "high": EagerSampling(turn_temperature=0.1, speak_up_ms=2000.0),
}


@dataclass(frozen=True, slots=True)
class CallSampling:
    """A call's sampling values once its request, its eagerness and the server's defaults
    are combined (`top_k` and `seed` have no eagerness and are resolved with the rest)."""

    temperature: float
    turn_temperature: float | None
    speak_up_ms: float


def resolve(
    asked: SamplingParams, temperature: float, turn_temperature: float | None, speak_up_ms: float
) -> CallSampling:
    """What the call asked for, else what its eagerness does, else the server's default."""
    eager = EAGERNESS[asked.eagerness or "medium"]
    if asked.turn_temperature is not None:
        turn = asked.turn_temperature
    elif eager.flat:
        turn = None
    else:
        turn = turn_temperature if eager.turn_temperature is None else eager.turn_temperature
    return CallSampling(
        temperature=_first(asked.temperature, eager.temperature, temperature),
        turn_temperature=turn,
        speak_up_ms=_first(asked.speak_up_ms, eager.speak_up_ms, speak_up_ms),
    )


def _first(asked: float | None, eager: float | None, default: float) -> float:
    return asked if asked is not None else eager if eager is not None else default
