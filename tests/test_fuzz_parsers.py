"""Property-based fuzzing of what a client's messages meet first, on every endpoint: the
native binary header, and the text parsers of `/v1/duplex`, `/v1/realtime` and
`/v1/telephony/twilio`. Whatever comes in is a parsed message or the protocol's own error,
never another exception (that would end the call with 1011 `internal_error` and a traceback
in the log, as a fuzzing client found: issue 24). No server: the parsers are driven directly.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from server.adapters.realtime import SUPPORTED_EVENTS, UNSUPPORTED_EVENTS, RealtimeTransport
from server.adapters.realtime import parse_event as parse_realtime_event
from server.adapters.realtime_options import ClientError
from server.adapters.twilio import StartEvent, call_start
from server.adapters.twilio import parse_event as parse_twilio_event
from server.settings import Settings
from streaming.wire import (
    CLIENT_TYPES,
    FRAME_HEADER,
    AudioFrame,
    ErrorCode,
    ProtocolError,
    SamplingParams,
    parse_client_message,
)
from tests.conftest import TextSocket

# What a bad text message may be, on the protocols that answer it with an error and a close.
TEXT_ERRORS = {ErrorCode.INVALID_JSON, ErrorCode.INVALID_MESSAGE, ErrorCode.UNKNOWN_TYPE}

LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value (NaN and infinities included: Python's parser takes them)."""
    return st.recursive(
        LEAVES,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )


# Depths around the server's limit (64) and around Python's recursion limit (about 1000,
# where the parser itself fails, or anything that walks what it returned).
DEPTHS = st.integers(0, 80) | st.integers(900, 1100) | st.just(5000)


@st.composite
def nested(draw: st.DrawFn, prefix: str) -> str:
    """`prefix` then arrays or objects inside each other, closed or not."""
    depth = draw(DEPTHS)
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a": ', "}"), ('[{"b": ', "}]")]))
    leaf = json.dumps(draw(LEAVES))
    closing = closer * depth + "}" if draw(st.booleans()) else ""
    return prefix + opener * depth + leaf + closing


@st.composite
def mutated(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> str:
    """A text cut short, or with one character dropped or put in."""
    text = draw(texts)
    at = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["cut", "drop", "insert"]))
    if how == "cut":
        return text[:at]
    if how == "drop":
        return text[:at] + text[at + 1 :]
    return text[:at] + draw(st.characters()) + text[at:]


def texts(shaped: st.SearchStrategy[dict[str, Any]], nesting_prefix: str) -> Any:
    """Text messages: anything, any JSON, the protocol's own shapes with any values (as they
    are and mutated), and deep nesting where a message holds a value."""
    dumped = shaped.map(json.dumps)
    return st.one_of(
        st.text(),
        json_values().map(json.dumps),
        dumped,
        mutated(dumped),
        nested(nesting_prefix),
    )


# -- the native protocol -------------------------------------------------------------------------

FIELDS = st.sampled_from([*SamplingParams.model_fields, "noise_gate_db", "x"])
NATIVE = st.fixed_dictionaries(
    {"type": st.sampled_from([*CLIENT_TYPES, "stop"]) | json_values()},
    optional={
        "version": st.just(1) | json_values(),
        "audio": st.fixed_dictionaries(
            {},
            optional={
                "encoding": st.sampled_from(["pcm16", "mulaw", "opus", "aac"]) | json_values(),
                "sample_rate": st.sampled_from([8000, 16000, 44100]) | json_values(),
                "frame_ms": st.sampled_from([10, 20, 7]) | json_values(),
            },
        )
        | json_values(),
        "sampling": st.dictionaries(FIELDS, json_values(), max_size=4) | json_values(),
        "noise_gate_db": json_values(),
        "total_samples": st.integers() | json_values(),
    },
)


@settings(max_examples=400, deadline=None)
@given(texts(NATIVE, '{"type": "start", "sampling": '))
def test_native_text_is_a_message_or_its_error(text: str) -> None:
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        assert exc.code in TEXT_ERRORS and exc.message
    else:
        assert message.type in CLIENT_TYPES


HEADER_BYTE = st.integers(0, 3) | st.integers(0, 255)


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=40)
    | st.builds(
        lambda fields, payload: FRAME_HEADER.pack(*fields) + payload,
        st.tuples(
            HEADER_BYTE,
            HEADER_BYTE,
            HEADER_BYTE,
            HEADER_BYTE,
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**64 - 1),
        ),
        st.binary(max_size=8),
    )
)
def test_binary_message_is_a_frame_or_bad_frame(data: bytes) -> None:
    """Only a header with version 1, kind 1, no flag but `last` and the reserved byte 0 is a
    frame, and then it is exactly the frame that packs back to the same bytes."""
    try:
        frame = AudioFrame.unpack(data)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_FRAME and exc.message
    else:
        assert frame.pack() == data


# -- Twilio Media Streams ----------------------------------------------------------------------

SID = st.just("MZ1") | json_values()
START_INFO = st.fixed_dictionaries(
    {},
    optional={
        "streamSid": SID,
        "callSid": st.text(max_size=4) | json_values(),
        "tracks": st.just(["inbound"]) | json_values(),
        "mediaFormat": st.fixed_dictionaries(
            {},
            optional={
                "encoding": st.just("audio/x-mulaw") | json_values(),
                "sampleRate": st.just(8000) | json_values(),
                "channels": st.just(1) | json_values(),
            },
        )
        | json_values(),
        "customParameters": st.dictionaries(FIELDS, json_values(), max_size=4) | json_values(),
    },
)
TWILIO = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["connected", "start", "media", "mark", "stop", "dtmf", "x"])
        | json_values()
    },
    optional={
        "sequenceNumber": st.integers().map(str) | json_values(),
        "streamSid": SID,
        "start": START_INFO | json_values(),
        "media": st.fixed_dictionaries(
            {},
            optional={
                "chunk": st.integers().map(str) | json_values(),
                "timestamp": st.integers().map(str) | json_values(),
                "payload": st.text(max_size=12) | json_values(),
            },
        )
        | json_values(),
        "mark": st.fixed_dictionaries({}, optional={"name": json_values()}) | json_values(),
    },
)


@settings(max_examples=400, deadline=None)
@given(texts(TWILIO, '{"event": "start", "start": ') | st.binary(max_size=8))
def test_twilio_text_is_an_event_or_its_error(data: str | bytes) -> None:
    """A `start`'s `customParameters` (the call's settings) included."""
    try:
        event = parse_twilio_event(data)
        if isinstance(event, StartEvent):
            assert call_start(event.start.customParameters).audio.encoding == "mulaw"
    except ProtocolError as exc:
        assert exc.code in TEXT_ERRORS and exc.message


# -- OpenAI Realtime ---------------------------------------------------------------------------

SESSION_KEYS = st.sampled_from(
    [
        "type", "audio", "input", "output", "format", "rate", "turn_detection",
        "noise_reduction", "temperature", "input_audio_format", "output_audio_format",
        "input_audio_noise_reduction", "eagerness", "threshold", "idle_timeout_ms",
        "silence_duration_ms", "prefix_padding_ms", "interrupt_response", "strength",
        "modalities",
    ]
)  # fmt: skip
SESSION_WORDS = st.sampled_from(
    [
        "realtime", "audio/pcm", "audio/pcmu", "audio/pcma", "pcm16", "g711_ulaw", "g711_alaw",
        "server_vad", "semantic_vad", "near_field", "far_field", "high", "auto", 24000, 8000,
        0.5, 2,
    ]
)  # fmt: skip
SESSIONS = st.recursive(
    LEAVES | SESSION_WORDS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SESSION_KEYS, inner, max_size=5),
    max_leaves=25,
)
AUDIO = st.binary(max_size=9).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=12)
REALTIME = st.fixed_dictionaries(
    {"type": st.sampled_from([*SUPPORTED_EVENTS, *UNSUPPORTED_EVENTS, "x"]) | json_values()},
    optional={
        "event_id": st.text(max_size=5) | json_values(),
        "session": SESSIONS,
        "audio": AUDIO | json_values(),
    },
)
SERVER = Settings()
ANSWERS = {
    "error",
    "session.updated",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
}


@settings(max_examples=400, deadline=None)
@given(texts(REALTIME, '{"type": "session.update", "session": ') | st.binary(max_size=8))
def test_realtime_event_is_handled_or_an_error_event(data: str | bytes) -> None:
    """Before the call is admitted (its first audio) every event is handled by the adapter
    itself: the parser, `session.update`'s options, an append's audio. Nothing escapes it: a
    bad event is an `error` event, and the connection stays open."""
    try:
        parse_realtime_event(data)
    except ClientError as exc:
        assert exc.code in {"invalid_json", "invalid_type"} and exc.message
    transport = RealtimeTransport()
    transport._server = SERVER  # as `open` sets it
    ws = TextSocket()
    audio = asyncio.run(transport._on_message(ws, None, data))  # type: ignore[arg-type]
    assert audio is None or (isinstance(audio, np.ndarray) and audio.dtype == np.float32)
    for event in ws.sent:
        assert event["type"] in ANSWERS, event
        if event["type"] == "error":
            assert event["error"]["type"] == "invalid_request_error", event
