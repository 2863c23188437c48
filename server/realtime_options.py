"""What a Realtime `session.update` asks of a duplex call (docs/realtime.md).

The OpenAI session settings that have a duplex counterpart are read and honoured; the rest are
accepted and ignored. A call's options are fixed once it is admitted (its first audio):

- the audio format: one format both ways (duplex has one wire format per call);
- `turn_detection`: `semantic_vad`'s `eagerness` sets how readily the agent takes the turn
  (its sampling, measured in docs/realtime.md) and its longest wait (speak-up);
  `server_vad`'s `idle_timeout_ms` is the speak-up time and `silence_duration_ms` ends the VAD
  events' speech; `null` turns the VAD events off;
- `noise_reduction`: the server's noise gate (`null` turns it off, `strength` scales it);
- `temperature` (beta sessions).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from server.protocol import MAX_NOISE_GATE_DB, AudioFormat, SamplingParams, StartMessage
from streaming.vad import FRAME_MS, VadParams

_PCM_RATES = (8000, 16000, 24000, 48000)
Eagerness = Literal["low", "medium", "high", "auto"]
NoiseReduction = Literal["near_field", "far_field"]


@dataclass(frozen=True, slots=True)
class EagerSampling:
    """The sampling an `eagerness` asks for (None: the server's default)."""

    temperature: float | None = None
    turn_temperature: float | None = None
    speak_up_ms: float | None = None


# How readily the agent takes the turn (docs/realtime.md, "Eagerness", measured with
# `duplex eval`): `low` is a cooler flat draw (answers later, holds through pauses, yields to
# barge-ins); `high` draws speak-or-not almost by the model's own argmax (answers ~0.3 s
# sooner, takes over a third of the pauses). The speak-up times are OpenAI's "max timeouts of
# 8s, 4s, and 2s" for low, medium and high (medium and auto: the server's, 3 s by default).
EAGERNESS: dict[Eagerness, EagerSampling] = {
    "low": EagerSampling(temperature=0.5, speak_up_ms=8000.0),
    "medium": EagerSampling(),
    "auto": EagerSampling(),
    "high": EagerSampling(turn_temperature=0.1, speak_up_ms=2000.0),
}
MAX_SPEAK_UP_MS = 60_000


class ClientError(Exception):
    """A bad client event: answered with an `error` event, the connection stays open."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass(frozen=True, slots=True)
class RealtimeFormat:
    """One audio format for both directions (duplex has one wire format per call)."""

    kind: Literal["pcm", "pcmu", "pcma"] = "pcm"
    rate: int = 24000

    def wire(self) -> AudioFormat:
        """What the call is admitted with: A-law travels as pcm16 8 kHz inside duplex."""
        if self.kind == "pcmu":
            return AudioFormat(encoding="mulaw", sample_rate=8000, frame_ms=FRAME_MS)
        return AudioFormat(encoding="pcm16", sample_rate=self.rate, frame_ms=FRAME_MS)

    def ga(self) -> dict[str, Any]:
        if self.kind == "pcm":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": f"audio/{self.kind}"}

    def beta(self) -> str:
        return {"pcm": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}[self.kind]


_NAMED_FORMATS = {
    "pcm16": RealtimeFormat("pcm", 24000),
    "g711_ulaw": RealtimeFormat("pcmu", 8000),
    "g711_alaw": RealtimeFormat("pcma", 8000),
    "audio/pcmu": RealtimeFormat("pcmu", 8000),
    "audio/pcma": RealtimeFormat("pcma", 8000),
}


def parse_format(value: Any, param: str) -> RealtimeFormat:
    """A GA format object ({type, rate}) or a beta format name."""
    if isinstance(value, str) and value in ("pcm16", "g711_ulaw", "g711_alaw"):
        return _NAMED_FORMATS[value]
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("audio/pcmu", "audio/pcma"):
        return _NAMED_FORMATS[kind]
    if kind == "audio/pcm":
        rate = value.get("rate", 24000)
        if isinstance(rate, bool) or not isinstance(rate, int) or rate not in _PCM_RATES:
            raise ClientError(
                "invalid_value", f"audio/pcm at {rate} Hz: use one of {_PCM_RATES}", f"{param}.rate"
            )
        return RealtimeFormat("pcm", rate)
    raise ClientError(
        "invalid_value",
        f"unsupported audio format {value!r}: use {{'type': 'audio/pcm', 'rate': 24000}}, "
        "'audio/pcmu', 'audio/pcma' or the beta names 'pcm16', 'g711_ulaw', 'g711_alaw'",
        param,
    )


def requested_format(session: dict[str, Any]) -> RealtimeFormat | None:
    """The one format a `session.update` asks for (GA or beta shape), None if it names none."""
    found: list[RealtimeFormat] = []
    for key in ("input_audio_format", "output_audio_format"):
        if key in session:
            found.append(parse_format(session[key], f"session.{key}"))
    audio = session.get("audio")
    if isinstance(audio, dict):
        for side in ("input", "output"):
            sub = audio.get(side)
            if isinstance(sub, dict) and "format" in sub:
                found.append(parse_format(sub["format"], f"session.audio.{side}.format"))
    if len(set(found)) > 1:
        raise ClientError(
            "invalid_value",
            "input and output audio formats must match: duplex speaks one format both ways",
            "session.audio",
        )
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """A session's `turn_detection`: the agent's readiness to take the turn, and the VAD events."""

    kind: Literal["server_vad", "semantic_vad"] = "server_vad"
    eagerness: Eagerness = "auto"
    idle_timeout_ms: int | None = None  # server_vad: speak up after this much silence
    silence_duration_ms: int = VadParams().stop_frames * FRAME_MS  # ends the events' speech

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "semantic_vad":
            out["eagerness"] = self.eagerness
        else:
            out |= {
                "prefix_padding_ms": 0,
                "silence_duration_ms": self.silence_duration_ms,
                "idle_timeout_ms": self.idle_timeout_ms,
            }
        # The agent speaks on its own clock: turns never start or stop it.
        return out | {"create_response": False, "interrupt_response": False}

    def vad_params(self) -> VadParams:
        stop = max(1, math.ceil(self.silence_duration_ms / FRAME_MS))
        return dataclasses.replace(VadParams(), stop_frames=stop)


def _int_field(value: Any, lo: int, hi: int, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ClientError(
            "invalid_value", f"expected an integer in [{lo}, {hi}], got {value!r}", param
        )
    return value


def parse_turn_detection(value: Any, param: str) -> TurnDetection | None:
    """A GA or beta `turn_detection` object, or None (`null`: no VAD events)."""
    if value is None:
        return None
    kind = value.get("type", "server_vad") if isinstance(value, dict) else None
    if kind not in ("server_vad", "semantic_vad"):
        raise ClientError(
            "invalid_value",
            f"unsupported turn detection {value!r}: use {{'type': 'server_vad'}}, "
            "{'type': 'semantic_vad', 'eagerness': 'low' | 'medium' | 'high' | 'auto'} or null",
            f"{param}.type",
        )
    assert isinstance(value, dict)
    if kind == "semantic_vad":
        eagerness = value.get("eagerness") or "auto"
        if eagerness not in get_args(Eagerness):
            raise ClientError(
                "invalid_value",
                f"eagerness {eagerness!r}: use one of {list(get_args(Eagerness))}",
                f"{param}.eagerness",
            )
        return TurnDetection("semantic_vad", eagerness=cast(Eagerness, eagerness))
    out = TurnDetection()
    if value.get("idle_timeout_ms") is not None:
        idle = _int_field(value["idle_timeout_ms"], 0, MAX_SPEAK_UP_MS, f"{param}.idle_timeout_ms")
        out = dataclasses.replace(out, idle_timeout_ms=idle)
    if value.get("silence_duration_ms") is not None:
        silence = _int_field(
            value["silence_duration_ms"], 0, 10_000, f"{param}.silence_duration_ms"
        )
        out = dataclasses.replace(out, silence_duration_ms=silence)
    return out


def parse_noise_reduction(value: Any, param: str, default_db: float) -> float:
    """The noise gate's margin a `noise_reduction` object asks for: `null` is 0 (off), either
    type the server's margin, scaled by `strength` (OpenAI's default 1)."""
    if value is None:
        return 0.0
    kind = value.get("type") if isinstance(value, dict) else "?"
    if kind is not None and kind not in get_args(NoiseReduction):
        raise ClientError(
            "invalid_value",
            f"noise reduction {value!r}: use {{'type': 'near_field' | 'far_field'}} or null",
            f"{param}.type",
        )
    assert isinstance(value, dict)
    strength = value.get("strength", 1.0)
    if strength is None:
        strength = 1.0
    if (
        isinstance(strength, bool)
        or not isinstance(strength, int | float)
        or not (0 <= strength <= 10 and math.isfinite(strength))
    ):
        raise ClientError(
            "invalid_value", f"strength {strength!r}: use a number in [0, 10]", f"{param}.strength"
        )
    return min(MAX_NOISE_GATE_DB, default_db * float(strength))


@dataclass(frozen=True, slots=True)
class RealtimeOptions:
    """The duplex side of a Realtime session: fixed once the call is admitted."""

    format: RealtimeFormat = RealtimeFormat()
    turn: TurnDetection | None = TurnDetection()  # None: no VAD events
    noise_gate_db: float | None = None  # None: the server's default
    noise_reduction: NoiseReduction = "near_field"  # what the client named, echoed
    temperature: float | None = None  # None: the server's default

    def updated(self, session: dict[str, Any], default_gate_db: float) -> RealtimeOptions:
        """These options with a `session.update`'s fields applied (GA or beta shape)."""
        out = self
        wanted = requested_format(session)
        if wanted is not None:
            out = dataclasses.replace(out, format=wanted)
        audio = session.get("audio")
        given = audio.get("input") if isinstance(audio, dict) else None
        inp: dict[str, Any] = given if isinstance(given, dict) else {}
        for where, key, param in (
            (inp, "turn_detection", "session.audio.input.turn_detection"),
            (session, "turn_detection", "session.turn_detection"),
        ):
            if key in where:
                out = dataclasses.replace(out, turn=parse_turn_detection(where[key], param))
        for where, key, param in (
            (inp, "noise_reduction", "session.audio.input.noise_reduction"),
            (session, "input_audio_noise_reduction", "session.input_audio_noise_reduction"),
        ):
            if key in where:
                value = where[key]
                gate = parse_noise_reduction(value, param, default_gate_db)
                named = value.get("type") if isinstance(value, dict) else None
                out = dataclasses.replace(
                    out, noise_gate_db=gate, noise_reduction=named or out.noise_reduction
                )
        if session.get("temperature") is not None:
            t = session["temperature"]
            if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 5:
                raise ClientError(
                    "invalid_value",
                    f"temperature {t!r}: use a number in [0, 5]",
                    "session.temperature",
                )
            out = dataclasses.replace(out, temperature=float(t))
        return out

    def start(self) -> StartMessage:
        """The `start` a native client would send for this session."""
        turn = self.turn
        sampling = SamplingParams(temperature=self.temperature)
        if turn is not None and turn.kind == "semantic_vad":
            eager = EAGERNESS[turn.eagerness]
            sampling = SamplingParams(
                # a temperature the session names wins over the eagerness's
                temperature=eager.temperature if self.temperature is None else self.temperature,
                turn_temperature=eager.turn_temperature,
                speak_up_ms=eager.speak_up_ms,
            )
        elif turn is not None and turn.idle_timeout_ms is not None:
            sampling = SamplingParams(
                temperature=self.temperature, speak_up_ms=float(turn.idle_timeout_ms)
            )
        return StartMessage(
            type="start",
            audio=self.format.wire(),
            sampling=sampling,
            noise_gate_db=self.noise_gate_db,
        )

    def noise_reduction_echo(self, default_gate_db: float) -> dict[str, Any] | None:
        """`noise_reduction` as the session object shows it: null when no gate runs."""
        gate = default_gate_db if self.noise_gate_db is None else self.noise_gate_db
        if gate <= 0:
            return None
        return {"type": self.noise_reduction, "strength": round(gate / default_gate_db, 3)}
