"""What a Realtime `session.update` asks of a duplex call (docs/realtime.md).

The OpenAI session settings that have a duplex counterpart are read and honoured; the rest are
accepted and ignored. The audio format is fixed once the call is admitted (its first audio);
the others change the running call from its next step:

- the audio format: one format both ways (duplex has one wire format per call);
- `turn_detection`: `semantic_vad`'s `eagerness` is the call's (server/call_sampling.py: how
  readily the agent takes the turn, and its longest wait);
  `server_vad`'s `idle_timeout_ms` is the speak-up time, and `silence_duration_ms`,
  `threshold` and `prefix_padding_ms` shape the VAD events; `interrupt_response` (either type)
  is whether a caller who talks over the agent silences it (`barge_in_ms`); `null` turns the
  events and that off;
- `noise_reduction`: the server's noise gate (`null` turns it off, `strength` scales it);
- `temperature` (beta sessions);
- `voice` (beta) / `audio.output.voice` (GA): the voice prompt the call opens with, when this
  server has one of that name (server/prompts.py); any other name (OpenAI's "alloy", which
  clients send by default) is the model's own voice. It is read once, when the call opens.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from server.call_sampling import resolve
from server.prompts import PromptLibrary
from server.settings import Settings
from streaming.vad import FRAME_MS, VadParams
from streaming.wire import (
    MAX_NOISE_GATE_DB,
    MAX_SPEAK_UP_MS,
    MAX_TEMPERATURE,
    AudioFormat,
    Eagerness,
    SamplingParams,
    StartMessage,
)

_PCM_RATES = (8000, 16000, 24000, 48000)
OpenAIEagerness = Literal["low", "medium", "high", "auto"]
_EAGERNESS: dict[OpenAIEagerness, Eagerness] = {  # OpenAI: "`auto` is ... equivalent to `medium`"
    "low": "low",
    "medium": "medium",
    "auto": "medium",
    "high": "high",
}
NoiseReduction = Literal["near_field", "far_field"]
THRESHOLD_DB_PER_TENTH = 3.0  # server_vad `threshold`: 0.1 more needs speech 3 dB louder
MAX_STRENGTH = 10.0  # a noise-reduction strength above this asks for more than the gate's cap


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
    eagerness: OpenAIEagerness = "auto"
    idle_timeout_ms: int | None = None  # server_vad: speak up after this much silence
    silence_duration_ms: int = VadParams().stop_frames * FRAME_MS  # ends the events' speech
    threshold: float = 0.5  # server_vad: how loud speech must be to start (OpenAI's default)
    prefix_padding_ms: int = 0  # server_vad: `audio_start_ms` is this much before the onset
    interrupt_response: bool = True  # a barge-in silences the agent (the server's barge_in_ms)

    def render(self, server: Settings) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "semantic_vad":
            out["eagerness"] = self.eagerness
        else:
            out |= {
                "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
                "idle_timeout_ms": self.idle_timeout_ms,
            }
        # The agent speaks on its own clock: a turn's end never starts it. Nothing interrupts
        # on a server without a barge-in rule.
        interrupt = self.interrupt_response and server.barge_in_ms > 0
        return out | {"create_response": False, "interrupt_response": interrupt}

    def vad_params(self) -> VadParams:
        """The energy VAD's: `threshold` 0.5 is its default level, each 0.1 moves both of its
        levels by THRESHOLD_DB_PER_TENTH (0: -51.5 dBFS starts speech, 1: -21.5 dBFS)."""
        stop = max(1, math.ceil(self.silence_duration_ms / FRAME_MS))
        shift = (self.threshold - 0.5) * 10 * THRESHOLD_DB_PER_TENTH
        default = VadParams()
        return dataclasses.replace(
            default,
            on_dbfs=default.on_dbfs + shift,
            off_dbfs=default.off_dbfs + shift,
            stop_frames=stop,
        )


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
    kind = value.get("type") if isinstance(value, dict) else "?"
    if kind is None:  # left out, or null as beta clients may send it
        kind = "server_vad"
    if kind not in ("server_vad", "semantic_vad"):
        raise ClientError(
            "invalid_value",
            f"unsupported turn detection {value!r}: use {{'type': 'server_vad'}}, "
            "{'type': 'semantic_vad', 'eagerness': 'low' | 'medium' | 'high' | 'auto'} or null",
            f"{param}.type",
        )
    assert isinstance(value, dict)
    if kind == "semantic_vad":
        eagerness = value.get("eagerness")
        if eagerness is None:  # left out, or null
            eagerness = "auto"
        if eagerness not in get_args(OpenAIEagerness):
            raise ClientError(
                "invalid_value",
                f"eagerness {eagerness!r}: use one of {list(get_args(OpenAIEagerness))}",
                f"{param}.eagerness",
            )
        return TurnDetection(
            "semantic_vad",
            eagerness=cast(OpenAIEagerness, eagerness),
            interrupt_response=_interrupt(value, param),
        )
    out = TurnDetection(interrupt_response=_interrupt(value, param))
    if value.get("idle_timeout_ms") is not None:
        idle = _int_field(
            value["idle_timeout_ms"], 0, int(MAX_SPEAK_UP_MS), f"{param}.idle_timeout_ms"
        )
        out = dataclasses.replace(out, idle_timeout_ms=idle)
    if value.get("silence_duration_ms") is not None:
        silence = _int_field(
            value["silence_duration_ms"], 0, 10_000, f"{param}.silence_duration_ms"
        )
        out = dataclasses.replace(out, silence_duration_ms=silence)
    if value.get("prefix_padding_ms") is not None:
        prefix = _int_field(value["prefix_padding_ms"], 0, 10_000, f"{param}.prefix_padding_ms")
        out = dataclasses.replace(out, prefix_padding_ms=prefix)
    threshold = value.get("threshold")
    if threshold is not None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0 <= threshold <= 1
        ):
            raise ClientError(
                "invalid_value",
                f"threshold {threshold!r}: use a number in [0, 1]",
                f"{param}.threshold",
            )
        out = dataclasses.replace(out, threshold=float(threshold))
    return out


def parse_voice(value: Any, param: str) -> str | None:
    """A voice's name: a string, a custom voice `{"id": ...}`, or null (the model's own)."""
    if isinstance(value, dict) and set(value) == {"id"}:
        value = value["id"]
    if value is not None and not (isinstance(value, str) and value):
        raise ClientError("invalid_value", f"voice {value!r}: use a name or {{'id': name}}", param)
    return value


def _interrupt(value: dict[str, Any], param: str) -> bool:
    """`interrupt_response`: true when left out or null, as OpenAI's default."""
    interrupt = value.get("interrupt_response")
    if interrupt is None:
        return True
    if not isinstance(interrupt, bool):
        raise ClientError(
            "invalid_value",
            f"interrupt_response {interrupt!r}: use true or false",
            f"{param}.interrupt_response",
        )
    return interrupt


def parse_noise_strength(value: Any, param: str, current: float | None) -> float:
    """The noise-reduction strength a `noise_reduction` object asks for: `null` is 0 (off);
    either type keeps the current strength when it names none (OpenAI: "Omitting strength
    from a session update preserves the current strength"), else 1."""
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
    strength = value.get("strength")
    if strength is None:
        return current if current else 1.0
    if (
        isinstance(strength, bool)
        or not isinstance(strength, int | float)
        or not (0 <= strength <= MAX_STRENGTH and math.isfinite(strength))
    ):
        raise ClientError(
            "invalid_value",
            f"strength {strength!r}: use a number in [0, {MAX_STRENGTH:g}]",
            f"{param}.strength",
        )
    return float(strength)


# The call's settings a session names, by where they live: the GA path under `session`, and
# the beta key (`temperature` is a beta key, read in either shape).
_FIELDS: dict[str, tuple[tuple[str, ...], str]] = {
    "turn_detection": (("audio", "input", "turn_detection"), "turn_detection"),
    "noise_reduction": (("audio", "input", "noise_reduction"), "input_audio_noise_reduction"),
    "temperature": (("temperature",), "temperature"),
    "voice": (("audio", "output", "voice"), "voice"),
}
# Keys only a beta session has: a `session.update` with one of them (and no GA `type`) is beta.
BETA_KEYS = frozenset(
    {"input_audio_format", "output_audio_format", "modalities"}
    | {beta for ga, beta in _FIELDS.values() if ga != (beta,)}
)


def _param(setting: str, beta: bool) -> str:
    """Where `setting` lives in a GA or beta session, as an error's `param` names it."""
    ga, key = _FIELDS[setting]
    return f"session.{key}" if beta else "session." + ".".join(ga)


def _named(session: dict[str, Any], setting: str) -> list[tuple[Any, str]]:
    """The values `session` gives `setting`, GA path first, each with its param."""
    ga, key = _FIELDS[setting]
    found: list[tuple[Any, str]] = []
    node: Any = session
    for part in ga[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and ga[-1] in node:
        found.append((node[ga[-1]], _param(setting, False)))
    if ga != (key,) and key in session:
        found.append((session[key], _param(setting, True)))
    return found


@dataclass(frozen=True, slots=True)
class RealtimeOptions:
    """The duplex side of a Realtime session, as the client spelled it (`start`: what reaches
    the call)."""

    format: RealtimeFormat = RealtimeFormat()
    turn: TurnDetection | None = TurnDetection()  # None: no VAD events
    noise_strength: float | None = None  # None: the server's gate as it is; 0: none
    noise_reduction: NoiseReduction = "near_field"  # the type the client named, echoed
    temperature: float | None = None  # None: the eagerness's or the server's
    voice: str | None = None  # as the client named it; a prompt of that name opens the call

    def updated(
        self, session: dict[str, Any], server: Settings, opened: bool = False
    ) -> RealtimeOptions:
        """These options with a `session.update`'s fields applied (GA or beta shape); once
        the call has `opened`, its voice stays (as OpenAI's, once the model has spoken)."""
        out = self
        wanted = requested_format(session)
        if wanted is not None:
            out = dataclasses.replace(out, format=wanted)
        for value, where in _named(session, "turn_detection"):
            out = dataclasses.replace(out, turn=parse_turn_detection(value, where))
        for value, where in _named(session, "noise_reduction"):
            strength = parse_noise_strength(value, where, out.noise_strength)
            named = value.get("type") if isinstance(value, dict) else None
            out = dataclasses.replace(
                out, noise_strength=strength, noise_reduction=named or out.noise_reduction
            )
        for value, where in _named(session, "voice"):
            voice = parse_voice(value, where)
            out = out if opened else dataclasses.replace(out, voice=voice)
        for t, where in _named(session, "temperature"):
            if t is None:  # back to the eagerness's or the server's
                out = dataclasses.replace(out, temperature=None)
                continue
            if (
                isinstance(t, bool)
                or not isinstance(t, int | float)
                or not 0 <= t <= MAX_TEMPERATURE
            ):
                raise ClientError(
                    "invalid_value",
                    f"temperature {t!r}: use a number in [0, {MAX_TEMPERATURE:g}]",
                    where,
                )
            # The temperature the session showed, sent back, is no request of the client's
            # own: it would outlive the eagerness it came from.
            if self.temperature is not None or t != self.temperature_echo(server):
                out = dataclasses.replace(out, temperature=float(t))
        return out

    def noise_gate_db(self, default_db: float) -> float:
        """The gate's margin: the server's, scaled by the strength, at most 40 dB."""
        if self.noise_strength is None:
            return default_db
        return min(MAX_NOISE_GATE_DB, default_db * self.noise_strength)

    def start(self, server: Settings, prompts: PromptLibrary | None = None) -> StartMessage:
        """The `start` a native client would send for this session; with `prompts`, the
        opening's too (the voice prompt its `voice` names, if the server has one)."""
        turn = self.turn
        semantic = turn is not None and turn.kind == "semantic_vad"
        idle = None if turn is None else turn.idle_timeout_ms  # server_vad only
        sampling = SamplingParams(
            eagerness=_EAGERNESS[turn.eagerness] if turn is not None and semantic else None,
            temperature=self.temperature,
            speak_up_ms=None if idle is None else float(idle),
            barge_in_ms=None if turn is not None and turn.interrupt_response else 0.0,
        )
        gate = None if self.noise_strength is None else self.noise_gate_db(server.noise_gate_db)
        prompt = None if prompts is None else prompts.voice(self.voice)
        return StartMessage(
            type="start",
            audio=self.format.wire(),
            sampling=sampling,
            noise_gate_db=gate,
            prompt=prompt,
        )

    def temperature_echo(self, server: Settings) -> float:
        """The temperature the call samples at: the session's, its eagerness's or the server's."""
        return resolve(self.start(server).sampling, server, 1.0).temperature

    def vad_params(self) -> VadParams:
        """The speech events' VAD: turn detection's, else the defaults (it runs, untold)."""
        return VadParams() if self.turn is None else self.turn.vad_params()

    def noise_reduction_echo(self, server: Settings) -> dict[str, Any] | None:
        """`noise_reduction` as the session object shows it: null when no gate runs."""
        if self.noise_gate_db(server.noise_gate_db) <= 0:
            return None
        strength = 1.0 if self.noise_strength is None else self.noise_strength
        return {"type": self.noise_reduction, "strength": strength}
