"""The native wire protocol of `/v1/duplex` (version 1): typed messages and the binary frame.

Clients may import this module (it depends only on pydantic and the standard library); it
must never import the rest of the server. Documented for humans in docs/protocol.md.

Text messages are JSON objects with a `type`. Binary messages are audio frames: a fixed
16-byte little-endian header, then the payload in the session's wire encoding.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

PROTOCOL_VERSION = 1

# version u8, kind u8, flags u8, reserved u8, sequence u32, first sample index u64 (wire rate)
FRAME_HEADER = struct.Struct("<BBBBIQ")
FLAG_LAST = 0x01  # the only flag: the other bits, like the reserved byte, must be 0
# Objects and arrays inside each other in a text message, on every endpoint. The messages
# the three protocols define nest 5 deep at most; this leaves room for what clients add (a
# Realtime session's tool schemas, ignored). Far deeper reaches Python's recursion limit
# (about 1000) in the JSON parser, or in anything that later walks or prints the value.
MAX_JSON_DEPTH = 64

SUPPORTED_RATES: dict[str, tuple[int, ...]] = {
    "pcm16": (8000, 16000, 24000, 48000),
    "mulaw": (8000,),
    "opus": (16000, 48000),
}
OPUS_FRAME_MS = (10, 20, 40, 60)  # Opus packet lengths; frame_ms must also divide the tick
OPUS_MAX_PACKET_BYTES = 1275  # RFC 6716 section 3.4
MAX_NOISE_GATE_DB = 40.0  # the noise gate's largest margin (server setting and per call)
MAX_TEMPERATURE = 5.0  # sampling and turn temperatures (server settings and per call)
MAX_SPEAK_UP_MS = 60_000.0  # the longest silence before the agent speaks up
MAX_START_BIAS = 5.0  # log-odds: starting at a chance of 1/150 at most, either way
MAX_BARGE_IN_MS = 2_000.0  # the longest a caller talks over the agent before it falls silent


class FrameKind(IntEnum):
    """Binary message kinds; only audio exists in version 1."""

    AUDIO = 1


class ErrorCode(StrEnum):
    """Stable error codes sent in `error` messages (the close code is fixed per code)."""

    INVALID_JSON = "invalid_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_MESSAGE = "invalid_message"
    UNEXPECTED_MESSAGE = "unexpected_message"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_AUDIO = "unsupported_audio"
    BAD_FRAME = "bad_frame"
    BAD_FRAME_SIZE = "bad_frame_size"
    SAMPLE_ORDER = "sample_order"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    START_TIMEOUT = "start_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    CALL_TOO_LONG = "call_too_long"
    CLOCK_DRIFT = "clock_drift"
    SLOW_CONSUMER = "slow_consumer"
    SERVER_FULL = "server_full"
    SERVER_SHUTDOWN = "server_shutdown"
    RESUME_FAILED = "resume_failed"
    INTERNAL_ERROR = "internal_error"


class CloseCode(IntEnum):
    """WebSocket close codes used by the server (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


CLOSE_CODES: dict[ErrorCode, CloseCode] = {
    ErrorCode.INVALID_JSON: CloseCode.INVALID_PAYLOAD,
    ErrorCode.UNKNOWN_TYPE: CloseCode.UNSUPPORTED_DATA,
    ErrorCode.INVALID_MESSAGE: CloseCode.INVALID_PAYLOAD,
    ErrorCode.UNEXPECTED_MESSAGE: CloseCode.POLICY_VIOLATION,
    ErrorCode.UNSUPPORTED_VERSION: CloseCode.UNSUPPORTED_DATA,
    ErrorCode.UNSUPPORTED_AUDIO: CloseCode.UNSUPPORTED_DATA,
    ErrorCode.BAD_FRAME: CloseCode.INVALID_PAYLOAD,
    ErrorCode.BAD_FRAME_SIZE: CloseCode.INVALID_PAYLOAD,
    ErrorCode.SAMPLE_ORDER: CloseCode.INVALID_PAYLOAD,
    ErrorCode.UNAUTHORIZED: CloseCode.POLICY_VIOLATION,
    ErrorCode.FORBIDDEN_ORIGIN: CloseCode.POLICY_VIOLATION,
    ErrorCode.START_TIMEOUT: CloseCode.POLICY_VIOLATION,
    ErrorCode.IDLE_TIMEOUT: CloseCode.POLICY_VIOLATION,
    ErrorCode.CALL_TOO_LONG: CloseCode.POLICY_VIOLATION,
    ErrorCode.CLOCK_DRIFT: CloseCode.POLICY_VIOLATION,
    ErrorCode.SLOW_CONSUMER: CloseCode.POLICY_VIOLATION,
    ErrorCode.SERVER_FULL: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.SERVER_SHUTDOWN: CloseCode.SERVICE_RESTART,
    ErrorCode.RESUME_FAILED: CloseCode.POLICY_VIOLATION,
    ErrorCode.INTERNAL_ERROR: CloseCode.INTERNAL_ERROR,
}


class ProtocolError(Exception):
    """A violation by the peer; the server turns it into an `error` message and a close."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> CloseCode:
        return CLOSE_CODES[self.code]


class _Message(BaseModel):
    """Client messages: unknown fields and mistyped values (`"version": "1"`) are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


class AudioFormat(_Message):
    """How audio travels on the wire in both directions."""

    encoding: Literal["pcm16", "mulaw", "opus"] = "pcm16"
    sample_rate: int = 16000
    frame_ms: int = Field(default=20, description="client frame length; 10..160 ms, divides 160")


Eagerness = Literal["low", "medium", "high"]


class SamplingParams(_Message):
    """Per-session overrides of the server's sampling defaults."""

    eagerness: Eagerness | None = Field(
        default=None, description="how readily the agent takes the turn (server/call_sampling.py)"
    )
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    turn_temperature: float | None = Field(
        default=None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False
    )
    top_k: int | None = Field(default=None, ge=0, le=100_000)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    speak_up_ms: float | None = Field(default=None, ge=0.0, le=MAX_SPEAK_UP_MS, allow_inf_nan=False)
    start_bias: float | None = Field(
        default=None, ge=-MAX_START_BIAS, le=MAX_START_BIAS, allow_inf_nan=False
    )
    barge_in_ms: float | None = Field(default=None, ge=0.0, le=MAX_BARGE_IN_MS, allow_inf_nan=False)


NoiseGateDb = Annotated[
    float | None,
    Field(
        ge=0.0,
        le=MAX_NOISE_GATE_DB,
        allow_inf_nan=False,
        description="the noise gate's margin for this call (0: none; null: the server's)",
    ),
]


class ResumeRequest(_Message):
    """Take up a call whose connection dropped (its `ready`'s `resume_token`)."""

    token: str = Field(min_length=1, max_length=256)
    from_chunk: int | None = Field(
        default=None,
        ge=0,
        description="replay the agent's chunks from this index (those still held); "
        "null: none, the call goes on from now",
    )


class PromptRequest(_Message):
    """A voice prompt the call opens with (docs/prompts.md): one of the server's, by `name`
    (`GET /v1/prompts`), or the caller's own: base64 PCM16 mono `audio` at `sample_rate`."""

    name: str | None = Field(default=None, min_length=1, max_length=128)
    audio: str | None = Field(default=None, min_length=1, description="base64 PCM16 mono")
    sample_rate: int | None = Field(default=None, description="of `audio`")

    @model_validator(mode="after")
    def _one_source(self) -> PromptRequest:
        if (self.name is None) == (self.audio is None):
            raise ValueError("a prompt is either a `name` or `audio` (with its `sample_rate`)")
        if (self.audio is None) != (self.sample_rate is None):
            raise ValueError("`audio` and `sample_rate` go together")
        return self


class StartMessage(_Message):
    type: Literal["start"]
    version: int = PROTOCOL_VERSION
    audio: AudioFormat = AudioFormat()
    sampling: SamplingParams = SamplingParams()
    noise_gate_db: NoiseGateDb = None
    resume: ResumeRequest | None = Field(
        default=None, description="resume a dropped call (its audio format and settings stay)"
    )
    prompt: PromptRequest | None = Field(
        default=None, description="open the call with a voice prompt (docs/prompts.md)"
    )
    barge_in_notices: bool = Field(
        default=False,
        description="send `barge_in` when the caller talks over the agent (docs/protocol.md)",
    )


class UpdateMessage(_Message):
    """A change of the call's settings while it runs: each field it names replaces the call's
    own (null: back to the server's default); the others stay as they were."""

    type: Literal["update"]
    sampling: SamplingParams = SamplingParams()
    noise_gate_db: NoiseGateDb = None

    def applied(
        self, sampling: SamplingParams, noise_gate_db: float | None
    ) -> tuple[SamplingParams, float | None]:
        """The call's request (`start`'s, as changed so far) with this change made."""
        changed = self.sampling.model_dump(include=self.sampling.model_fields_set)
        gate = self.noise_gate_db if "noise_gate_db" in self.model_fields_set else noise_gate_db
        return sampling.model_copy(update=changed), gate


class EndMessage(_Message):
    """The client has sent everything: `total_samples` at the wire rate."""

    type: Literal["end"]
    total_samples: int = Field(ge=0)


class RespondMessage(_Message):
    """The caller asks the agent to speak now (push to talk: the user let go of the button)."""

    type: Literal["respond"]


class PlayedMessage(_Message):
    """A playback acknowledgement: the client has played the agent's audio up to wire sample
    `sample` (numbered as the agent frames' first_sample). `flushed`: it dropped what it held
    after that (the caller interrupted) and will never play it; the server makes that audio
    silence in the model's context, so the model's history is what the caller heard."""

    type: Literal["played"]
    sample: int = Field(ge=0)
    flushed: bool = False


AnyClientMessage = StartMessage | EndMessage | RespondMessage | UpdateMessage | PlayedMessage
ClientMessage = Annotated[AnyClientMessage, Field(discriminator="type")]
_CLIENT_MESSAGE: TypeAdapter[AnyClientMessage] = TypeAdapter(ClientMessage)


def _type_names(union: Any) -> tuple[str, ...]:
    """The `type` of each message of a union, in its order."""
    return tuple(get_args(m.model_fields["type"].annotation)[0] for m in get_args(union))


CLIENT_TYPES = _type_names(AnyClientMessage)


class _ServerMessage(BaseModel):
    """Server messages: clients ignore fields they do not know (forward compatible)."""

    model_config = ConfigDict(extra="ignore")


class _CallSettings(_ServerMessage):
    """What a call samples and gates with, as `ready` and `updated` tell it."""

    type: str
    temperature: float
    turn_temperature: float | None = None
    top_k: int
    seed: int
    speak_up_ms: float = Field(default=0.0, description="the silence after which it speaks up")
    start_bias: float = Field(
        default=0.0, description="added to the log-odds of the agent starting to speak"
    )
    barge_in_ms: float = Field(
        default=0.0,
        description="how long a caller talks over the agent before it falls silent (0: never)",
    )
    noise_gate_db: float = Field(
        default=0.0, description="the noise gate's margin over the line's noise floor (0: none)"
    )


class ReadyMessage(_CallSettings):
    """Sent at a tick boundary: that instant is sample 0 of the session in both directions."""

    type: Literal["ready"] = "ready"
    version: int = PROTOCOL_VERSION
    session_id: str
    tick_ms: float
    chunk_samples: int = Field(description="samples per agent frame at the wire rate")
    frame_samples: int = Field(description="samples per client frame at the wire rate")
    sample_rate: int
    encoding: str
    codec_sample_rate: int
    lead_ms: float
    latency_budget_ms: float
    resume_token: str | None = Field(
        default=None,
        description="reconnect with this (`start.resume`) to take the call up again if the "
        "connection drops; single-use; null when the server does not resume calls",
    )
    resume_window_s: float = Field(default=0.0, description="how long a dropped call waits")
    resumed: bool = Field(default=False, description="this `ready` takes up a dropped call")
    resume_sample: int = Field(
        default=0, description="resumed: the client's audio goes on from this sample"
    )
    replay_from: int | None = Field(
        default=None, description="resumed: the first agent chunk sent again (null: none)"
    )


class UpdatedMessage(_CallSettings):
    """The answer to `update`: the call's settings from its next step on."""

    type: Literal["updated"] = "updated"


class ErrorMessage(_ServerMessage):
    type: Literal["error"] = "error"
    code: ErrorCode | str  # a client may meet codes newer than it knows
    message: str


class StatsMessage(_ServerMessage):
    """Per-session figures sent before a normal close."""

    type: Literal["stats"] = "stats"
    session_id: str
    ticks: int
    frames_in: int
    frames_out: int
    samples_in: int
    estimates_made: int
    estimates_replaced: int
    late_samples_dropped: int
    missing_chunks: int
    overruns: int
    context_tokens: int = Field(default=0, description="conversation length in model tokens")
    max_rollback_tokens: int = Field(default=0, description="deepest KV rollback of the call")
    re_anchors: int = Field(
        default=0, description="times the call's audio was re-anchored to the server's clock"
    )
    re_anchored_samples: int = Field(
        default=0, description="net wire samples of silence inserted (+) or audio dropped (-)"
    )
    frames_gated: int = Field(
        default=0, description="codec frames of the caller's sound the noise gate made silence"
    )
    noise_floor_db: float = Field(
        default=-120.0, description="the line's noise floor at the end, dBFS (-120: digital zero)"
    )
    resumes: int = Field(default=0, description="times the call was taken up after a drop")
    resume_silence_samples: int = Field(
        default=0,
        description="the caller's audio while its connection was down or the call moved: "
        "silence on the clock",
    )
    played_samples: int = Field(
        default=0, description="agent audio the client last said it played (`played`)"
    )
    unplayed_samples: int = Field(
        default=0, description="agent audio that never reached the caller (flushed, truncated)"
    )
    unheard_silenced_samples: int = Field(
        default=0, description="of it, made silence in the model's context (whole codec frames)"
    )
    unheard_beyond_reach_samples: int = Field(
        default=0, description="of it, too old to change (beyond the rollback reach)"
    )
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None


class MovedMessage(_ServerMessage):
    """The server is draining and the call goes on at another replica: reconnect (through
    the load balancer, with `?replica=` when named) and resume with this token. The server
    then closes with 1012."""

    type: Literal["moved"] = "moved"
    resume_token: str
    replica: str | None = None
    session_id: str


class BargeInMessage(_ServerMessage):
    """The caller talks over the agent (sent when `start` asked for `barge_in_notices`): the
    agent is silent from wire sample `sample` on, the first sample of the frame that follows.
    Drop the agent audio held and not played yet, and say how far it played with `played`
    and `flushed`: that audio then becomes silence in the model's context too."""

    type: Literal["barge_in"] = "barge_in"
    sample: int


AnyServerMessage = (
    ReadyMessage | UpdatedMessage | ErrorMessage | StatsMessage | MovedMessage | BargeInMessage
)
ServerMessage = Annotated[AnyServerMessage, Field(discriminator="type")]
_SERVER_MESSAGE: TypeAdapter[AnyServerMessage] = TypeAdapter(ServerMessage)
SERVER_TYPES = _type_names(AnyServerMessage)


def describe_validation(exc: ValidationError) -> str:
    """The first problem of a validation error as `field.path: message`, for one-line errors."""
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def load_json(text: str) -> Any:
    """The JSON value of a text message; `invalid_json` for one that is not JSON or nests
    deeper than MAX_JSON_DEPTH. (Every protocol's text messages are read through here.)"""
    try:
        value = json.loads(text)
        if not _nests_deeper(value, text, MAX_JSON_DEPTH):
            return value
    except RecursionError:  # nested far past the limit: refused below
        pass
    except ValueError as exc:  # not JSON, or an integer of more than 4300 digits
        raise ProtocolError(ErrorCode.INVALID_JSON, f"message is not valid JSON: {exc}") from exc
    raise ProtocolError(
        ErrorCode.INVALID_JSON,
        f"message nests objects and arrays more than {MAX_JSON_DEPTH} deep",
    )


def _nests_deeper(value: Any, text: str, limit: int) -> bool:
    """Whether `value` (parsed from `text`) holds objects and arrays more than `limit` deep,
    walked level by level (no recursion); `text` with few brackets cannot."""
    if text.count("[") + text.count("{") <= limit:
        return False
    level = [value]
    for _ in range(limit + 1):
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            return False
        level = [x for c in containers for x in (c.values() if isinstance(c, dict) else c)]
    return True


def parse_client_message(text: str) -> AnyClientMessage:
    """Parse one client text message, raising ProtocolError with a specific code."""
    raw = load_json(text)
    if not isinstance(raw, dict) or "type" not in raw:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message must be a JSON object with 'type'")
    if raw["type"] not in CLIENT_TYPES:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {raw['type']!r}; expected one of {', '.join(CLIENT_TYPES)}",
        )
    try:
        return _CLIENT_MESSAGE.validate_python(raw)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"invalid {raw['type']!r} message: {describe_validation(exc)}",
        ) from exc


def parse_server_message(text: str) -> AnyServerMessage:
    """Parse one server text message (used by clients)."""
    return _SERVER_MESSAGE.validate_json(text)


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One binary audio message."""

    seq: int
    first_sample: int
    payload: bytes
    last: bool = False

    def pack(self) -> bytes:
        flags = FLAG_LAST if self.last else 0
        header = FRAME_HEADER.pack(
            PROTOCOL_VERSION, FrameKind.AUDIO, flags, 0, self.seq, self.first_sample
        )
        return header + self.payload

    @classmethod
    def unpack(cls, data: bytes) -> AudioFrame:
        if len(data) < FRAME_HEADER.size:
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"binary message of {len(data)} bytes is shorter than the "
                f"{FRAME_HEADER.size}-byte frame header",
            )
        version, kind, flags, reserved, seq, first = FRAME_HEADER.unpack_from(data)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"frame version {version}, expected {PROTOCOL_VERSION}"
            )
        if kind != FrameKind.AUDIO:
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"frame kind {kind}, expected {int(FrameKind.AUDIO)} (audio)"
            )
        if flags & ~FLAG_LAST:
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"frame flags 0x{flags:02x}: only bit 0 (last) is defined, the others must be 0",
            )
        if reserved:
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"frame header byte 3 is {reserved}: it is reserved, must be 0"
            )
        return cls(seq, first, bytes(data[FRAME_HEADER.size :]), bool(flags & FLAG_LAST))
