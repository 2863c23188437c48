"""`duplex fuzz`: hostile clients against a running server's three WebSocket endpoints.

Each connection plays a script drawn from its own seeded generator (seed and connection index:
the same seed gives the same scripts whatever the concurrency). A script sends what it takes to
reach a state (`start`, audio), then hostile messages: malformed and deeply nested JSON, wrong
types, huge and negative numbers, text frames that are not UTF-8, binary frames with bad
headers, reserved bits or sizes, samples out of order, messages in the wrong state, frames past
the size limit; other connections vanish mid-call (TCP reset) or stop reading.

Every hostile message must be answered: by an `error` (native), an `error` event (Realtime,
whose connection mostly stays open) or a close code (Twilio has no error message). None may end
with 1011 or `internal_error`. Afterwards the server must be healthy (/healthz ok, no call left
open), a normal call must still complete, and the server's log (when given, from where it stood
at the start) must hold no traceback and no ERROR line. docs/fuzzing.md has the details.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import socket
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from clients.call import InputError, check_url, run_call
from clients.client import DuplexError
from clients.measure.twilio_sim import media_message, start_message
from streaming.wire import FRAME_HEADER, MAX_JSON_DEPTH, AudioFrame

__all__ = ["FuzzConfig", "FuzzReport", "add_arguments", "main", "plan", "run", "run_fuzz"]

PROG = "duplex fuzz"
DEFAULT_URL = "ws://127.0.0.1:8000"
EXIT_USAGE = 2
EXIT_FAILURE = 1

OVERSIZED_BYTES = 70_000  # past the server's default --max-message-bytes (64 KiB)
ANSWER_TIMEOUT_S = 5.0  # how long a hostile message may wait for its answer
CONNECTION_TIMEOUT_S = 30.0
REFUSED_TRIES = 20  # a call refused as `server_full` before anything hostile is tried again
REFUSED_PAUSE_S = 0.1
SETTLE_S = 10.0  # after the run: how long the server may take to close its last calls
NOT_ANSWERS = {1000, 1005, 1006}  # closes that tell a client nothing about what it sent
INTERNAL = 1011

Endpoint = Literal["native", "realtime", "twilio"]
PATHS: dict[Endpoint, str] = {
    "native": "/v1/duplex",
    "realtime": "/v1/realtime",
    "twilio": "/v1/telephony/twilio",
}
ENDPOINTS: tuple[Endpoint, ...] = tuple(PATHS)
Expect = Literal["good", "answer", "fatal"]
Ending = Literal["wait", "abort", "stall"]


# ---------------------------------------------------------------------------------------------
# Scripts


@dataclass(frozen=True, slots=True)
class Msg:
    """One message to send. `answer`: an error must come back and the connection may stay
    open; `fatal`: an error and/or a close code must come back and the call ends."""

    data: str | bytes
    expect: Expect = "good"
    wait_ready: bool = False  # wait until the call is open (or refused) before going on


@dataclass(frozen=True, slots=True)
class Script:
    """One connection: `kind` names what it tries; `session`: it holds a call slot."""

    endpoint: Endpoint
    kind: str
    messages: tuple[Msg, ...]
    session: bool
    ending: Ending = "wait"  # wait for the answers; abort (TCP reset); stall (a slow reader)


class RawText(bytes):
    """Bytes sent as a text frame as they are: not UTF-8 (a raw client can send that)."""


def _j(value: Any) -> str:
    return json.dumps(value)  # NaN and infinities as Python writes them: JSON they are not


def _truncated(rng: random.Random, text: str) -> str:
    """A strict prefix of a JSON object: never JSON."""
    return text[: rng.randrange(1, len(text))]


def _nested(rng: random.Random, prefix: str) -> str:
    """`prefix` then arrays or objects nested deeper than the server's limit, closed or not."""
    depth = rng.choice(  # at most 6000 * 9 bytes: under the size limit, which closes with 1009
        [rng.randint(MAX_JSON_DEPTH + 1, 200), rng.randint(900, 1100), rng.randint(3000, 6000)]
    )
    opener, closer = rng.choice([("[", "]"), ('{"a": ', "}"), ('[{"b": ', "}]")])
    closing = closer * depth + "}" if rng.random() < 0.5 else ""
    return prefix + opener * depth + "0" + closing


def _huge_integer(rng: random.Random, prefix: str) -> str:
    """An integer longer than Python's parser takes (4300 digits)."""
    return prefix + str(rng.randint(1, 9)) + "9" * rng.randint(4300, 20000) + "}"


def _not_utf8(rng: random.Random, prefix: bytes) -> RawText:
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    return RawText(prefix + bad + b'"}')


def _oversized_text(rng: random.Random, prefix: str) -> str:
    return prefix + '"pad": "' + "a" * rng.randint(OVERSIZED_BYTES, 2 * OVERSIZED_BYTES) + '"}'


def _not_an_object(rng: random.Random) -> str:
    return rng.choice(["null", "[]", "[1, 2]", "0", "-1e999", '"start"', "true", "NaN", "{}"])


def _garbage(rng: random.Random) -> str:
    """Random printable text that cannot be a JSON object with the right fields."""
    chars = '{}[]":,.0123456789abcdeftruenl \\éß\u2028\U0001f600'
    return "".join(rng.choice(chars) for _ in range(rng.randint(1, 64))) + "\x00"


# --- native ------------------------------------------------------------------------------------

NATIVE_FORMATS = ((16000, 20), (8000, 20), (48000, 20), (16000, 40), (24000, 10))
START = {"type": "start", "audio": {"encoding": "pcm16", "sample_rate": 16000, "frame_ms": 20}}
WRONG_VALUES: dict[str, tuple[Any, ...]] = {
    # (path in `start`, values that are never right there)
    "audio.encoding": (1, "aac", None, ["pcm16"], True),
    "audio.sample_rate": ("16000", 16000.5, None, [16000], True, -16000, 0, 1, 44100, 2**63),
    "audio.frame_ms": ("20", 20.5, None, True, 0, -20, 7, 30, 2**31),
    "audio": ([], "pcm16", 1, None),
    "version": ("1", 1.5, None, True, 2, -1),
    "sampling": ([], "low", 1, None),
    "sampling.temperature": ("hot", [], {}, -1, 1e308, float("nan"), float("inf")),
    "sampling.seed": (1.5, "1", -1, 2**64),
    "sampling.top_k": (-1, 10**9, "5"),
    "sampling.eagerness": ("auto", 1, ""),
    "sampling.speak_up_ms": (-1, 1e9, float("-inf")),
    "sampling.barge_in_ms": (-5, 2001, "x"),
    "sampling.start_bias": (6, -6, float("nan")),
    "noise_gate_db": ("10", -1, 41, [], float("nan")),
    "codec": ("x", 1),  # not a field of `start`
}


def _with(message: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `message` with the field at dotted `path` set to `value`."""
    out: dict[str, Any] = json.loads(json.dumps(message))
    node = out
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return out


def _native_text_attack(rng: random.Random, kind: str, mtype: str) -> str | bytes:
    """A text message that is not a valid `mtype` message, whatever the state."""
    prefix = f'{{"type": "{mtype}", '
    if kind == "malformed_json":
        return _truncated(rng, _j({**START, "type": mtype}))
    if kind == "garbage_text":
        return _garbage(rng)
    if kind == "deep_json":
        return _nested(rng, prefix + '"sampling": ')
    if kind == "huge_integer":
        return _huge_integer(rng, '{"type": "end", "total_samples": ')
    if kind == "not_an_object":
        return _not_an_object(rng)
    if kind == "not_utf8":
        return _not_utf8(rng, prefix.encode() + b'"x": "')
    if kind == "unknown_type":
        return _j({"type": rng.choice(["hello", "START", "stop", "", "pause", "end "])})
    if kind == "missing_type":
        return _j({"audio": START["audio"]})
    if kind == "oversized":
        return _oversized_text(rng, prefix)
    raise ValueError(kind)


NATIVE_TEXT_ATTACKS = (
    "malformed_json",
    "garbage_text",
    "deep_json",
    "huge_integer",
    "not_an_object",
    "not_utf8",
    "unknown_type",
    "missing_type",
    "oversized",
)


def _fatal(data: str | bytes) -> Msg:
    return Msg(data, "fatal")


def native_before_start(rng: random.Random) -> Script:
    """One hostile first message: the call must be refused with a code."""
    kind = rng.choice([*NATIVE_TEXT_ATTACKS, "wrong_value", "wrong_state", "binary_first"])
    if kind == "wrong_value":
        path = rng.choice(list(WRONG_VALUES))
        kind = f"wrong_value.{path}"
        msg: str | bytes = _j(_with(START, path, rng.choice(WRONG_VALUES[path])))
    elif kind == "wrong_state":
        msg = rng.choice(
            [
                _j({"type": "end", "total_samples": 0}),
                _j({"type": "respond"}),
                _j({"type": "update"}),
            ]
        )
    elif kind == "binary_first":
        msg = AudioFrame(0, 0, bytes(640)).pack()
    else:
        msg = _native_text_attack(rng, kind, "start")
    return Script("native", f"native.before_start.{kind}", (_fatal(msg),), session=False)


NATIVE_CALL_ATTACKS = (
    *NATIVE_TEXT_ATTACKS,
    "header_version",
    "header_kind",
    "reserved_flags",
    "reserved_byte",
    "short_binary",
    "bad_size",
    "odd_last",
    "empty_last",
    "gap_too_large",
    "start_twice",
    "end_twice",
    "audio_after_end",
    "audio_after_last",
    "end_beyond_sent",
    "end_negative",
    "bad_update",
    "respond_with_a_field",
    "oversized_binary",
    "sequence_not_growing",
    "samples_overlap",
    "end_below_sent",
)


def native_in_call(rng: random.Random) -> Script:
    """A call with a few good frames, then one hostile message in the call's state."""
    rate, frame_ms = rng.choice(NATIVE_FORMATS)
    fs = rate * frame_ms // 1000
    start = _with(_with(START, "audio.sample_rate", rate), "audio.frame_ms", frame_ms)
    kind = rng.choice(NATIVE_CALL_ATTACKS)
    n = rng.randint(0, 8)  # good frames first, sent at once
    if kind in ("sequence_not_growing", "samples_overlap", "end_below_sent"):
        n = max(1, n)
    elif kind in ("end_twice", "audio_after_end"):  # the call must outlast the next message:
        n += -(-640 // frame_ms)  # audio for 4 ticks ahead of the clock, so it cannot end first
    msgs = [Msg(_j(start), wait_ready=True)]
    msgs += [Msg(AudioFrame(i, i * fs, rng.randbytes(2 * fs)).pack()) for i in range(n)]
    seq, sent = n - 1, n * fs
    if rng.random() < 0.2:  # good messages in between: they are answered with no error
        msgs.append(Msg(_j({"type": "update", "sampling": {"temperature": 0.8}})))
    payload = bytes(2 * fs)
    nxt = n * fs

    def header(version: int = 1, kind_: int = 1, flags: int = 0, reserved: int = 0) -> bytes:
        return FRAME_HEADER.pack(version, kind_, flags, reserved, n, nxt) + payload

    attack: str | bytes
    if kind in NATIVE_TEXT_ATTACKS:
        attack = _native_text_attack(rng, kind, rng.choice(["update", "end", "start"]))
    elif kind == "header_version":
        attack = header(version=rng.choice([0, 2, 255]))
    elif kind == "header_kind":
        attack = header(kind_=rng.choice([0, 2, 9, 255]))
    elif kind == "reserved_flags":
        attack = header(flags=rng.choice([0x02, 0x80, 0x81, 0xFF]))
    elif kind == "reserved_byte":
        attack = header(reserved=rng.randint(1, 255))
    elif kind == "short_binary":
        attack = rng.randbytes(rng.randint(0, FRAME_HEADER.size - 1))
    elif kind == "bad_size":
        size = rng.choice([1, 2 * fs - 2, 2 * fs + 2, 2 * fs - 1, 3 * fs, 4 * fs])
        attack = AudioFrame(n, nxt, bytes(size)).pack()
    elif kind == "odd_last":
        attack = AudioFrame(n, nxt, bytes(2 * rng.randint(0, fs - 1) + 1), last=True).pack()
    elif kind == "empty_last":
        attack = AudioFrame(n, nxt, b"", last=True).pack()
    elif kind == "gap_too_large":
        attack = AudioFrame(
            n, nxt + rng.choice([10 * rate, 2**40, 2**64 - 1 - nxt]), payload
        ).pack()
    elif kind == "sequence_not_growing":
        attack = AudioFrame(rng.randint(0, seq), nxt, payload).pack()
    elif kind == "samples_overlap":
        attack = AudioFrame(n, rng.randint(0, nxt - 1), payload).pack()
    elif kind == "start_twice":
        attack = _j(START)
    elif kind in ("end_twice", "audio_after_end"):
        msgs.append(Msg(_j({"type": "end", "total_samples": sent})))
        again = _j({"type": "end", "total_samples": sent})
        attack = again if kind == "end_twice" else AudioFrame(n, nxt, payload).pack()
    elif kind == "audio_after_last":
        msgs.append(Msg(AudioFrame(n, nxt, payload, last=True).pack()))
        attack = AudioFrame(n + 1, nxt + fs, payload).pack()
    elif kind == "end_below_sent":
        attack = _j({"type": "end", "total_samples": rng.randint(0, sent - 1)})
    elif kind == "end_beyond_sent":
        total = sent + rng.choice([fs + 1, 60 * rate, 2**63, 2**70])
        attack = _j({"type": "end", "total_samples": total})
    elif kind == "end_negative":
        attack = _j({"type": "end", "total_samples": rng.choice([-1, -(2**63), -0.5])})
    elif kind == "bad_update":
        path = rng.choice([p for p in WRONG_VALUES if p.startswith(("sampling.", "noise"))])
        bad = _with({"type": "update"}, path, rng.choice(WRONG_VALUES[path]))
        attack = _j(rng.choice([bad, {"type": "update", "audio": START["audio"]}]))
    elif kind == "respond_with_a_field":
        attack = _j({"type": "respond", rng.choice(["now", "text", "type2"]): True})
    elif kind == "oversized_binary":
        attack = AudioFrame(n, nxt, bytes(rng.randint(OVERSIZED_BYTES, 2 * OVERSIZED_BYTES))).pack()
    else:
        raise ValueError(kind)
    msgs.append(_fatal(attack))
    return Script("native", f"native.in_call.{kind}", tuple(msgs), session=True)


# --- Realtime ----------------------------------------------------------------------------------

RT_RATE = 24000  # the Realtime default format: pcm16 at 24 kHz
RT_APPEND_SAMPLES = 480  # 20 ms
BAD_SESSIONS: tuple[Any, ...] = (
    {"temperature": "hot"},
    {"temperature": 9},
    {"temperature": True},
    {"temperature": -1},
    {"temperature": float("nan")},
    {"input_audio_format": "flac"},
    {"input_audio_format": "pcm16", "output_audio_format": "g711_ulaw"},
    {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}},
    {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": "24000"}}}},
    {"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "studio"}}}},
    {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}},
    {"input_audio_noise_reduction": {"type": "near_field", "strength": "max"}},
    {"turn_detection": {"type": "server_vad", "interrupt_response": 1}},
    {"turn_detection": {"type": "server_vad", "threshold": 2}},
)
RT_ANSWERED = (
    "malformed_json",
    "deep_json",
    "huge_integer",
    "not_an_object",
    "missing_type",
    "unknown_type",
    "unsupported_event",
    "audio_not_a_string",
    "audio_not_base64",
    "audio_odd_bytes",
    "update_not_an_object",
    "update_bad_value",
    "binary",
)


def _rt_append(rng: random.Random) -> str:
    pcm = rng.randbytes(2 * RT_APPEND_SAMPLES * rng.randint(1, 3))
    return _j({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


def _rt_attack(rng: random.Random, kind: str) -> str | bytes:
    """A Realtime event answered with an `error` event (the connection stays open)."""
    if kind == "malformed_json":
        return _truncated(rng, _rt_append(rng))
    if kind == "deep_json":
        return _nested(rng, '{"type": "session.update", "session": ')
    if kind == "huge_integer":
        return _huge_integer(rng, '{"type": "session.update", "session": {"temperature": ') + "}"
    if kind == "not_an_object":
        return _not_an_object(rng)
    if kind == "missing_type":
        return _j({"event_id": "evt_1", "audio": ""})
    if kind == "unknown_type":
        return _j({"type": rng.choice(["hello", "response.creat", "", "session.created"])})
    if kind == "unsupported_event":
        return _j(
            {"type": rng.choice(["output_audio_buffer.clear", "transcription_session.update"])}
        )
    if kind == "audio_not_a_string":
        return _j({"type": "input_audio_buffer.append", "audio": rng.choice([1, None, [], {}])})
    if kind == "audio_not_base64":
        good = base64.b64encode(rng.randbytes(6)).decode()
        bad = rng.choice(["abc", "####", "é" + good, good[:3] + "*" + good[4:], "AAAA=AAA"])
        return _j({"type": "input_audio_buffer.append", "audio": bad})
    if kind == "audio_odd_bytes":
        odd = base64.b64encode(rng.randbytes(2 * rng.randint(0, 100) + 1)).decode()
        return _j({"type": "input_audio_buffer.append", "audio": odd})
    if kind == "update_not_an_object":
        return _j({"type": "session.update", "session": rng.choice([None, [], "pcm16", 1])})
    if kind == "update_bad_value":
        return _j({"type": "session.update", "session": rng.choice(BAD_SESSIONS)})
    if kind == "binary":
        return rng.randbytes(rng.randint(1, 2000))
    raise ValueError(kind)


def _rt_fatal_ending(rng: random.Random, msgs: list[Msg]) -> str:
    """Most Realtime connections end with the client's close; some with a fatal frame."""
    r = rng.random()
    if r < 0.1:
        msgs.append(Msg(_not_utf8(rng, b'{"type": "session.update", "x": "'), "fatal"))
        return ".then_not_utf8"
    if r < 0.15:
        msgs.append(Msg(_oversized_text(rng, '{"type": "session.update", '), "fatal"))
        return ".then_oversized"
    return ""


def realtime_before_audio(rng: random.Random) -> Script:
    """Many bad events before the first audio (no call yet): each answered, the socket open."""
    msgs: list[Msg] = []
    for _ in range(rng.randint(10, 60)):
        r = rng.random()
        if r < 0.05:
            msgs.append(
                Msg(_j({"type": rng.choice(["input_audio_buffer.commit", "response.create"])}))
            )
        elif r < 0.1:
            msgs.append(Msg(_j({"type": "response.cancel"}), "answer"))  # nothing to cancel
        else:
            kind = rng.choice(RT_ANSWERED)
            msgs.append(Msg(_rt_attack(rng, kind), "answer"))
    end = _rt_fatal_ending(rng, msgs)
    return Script("realtime", "realtime.before_audio" + end, tuple(msgs), session=False)


def realtime_in_call(rng: random.Random) -> Script:
    """A call (the first append admits it), bad events between good appends."""
    msgs = [Msg(_rt_append(rng)) for _ in range(rng.randint(1, 4))]
    # its answer comes through the call: once it is there, the call was admitted
    msgs.append(
        Msg(_j({"type": "session.update", "session": {"temperature": 0.8}}), wait_ready=True)
    )
    for _ in range(rng.randint(5, 30)):
        if rng.random() < 0.3:
            msgs.append(Msg(_rt_append(rng)))
        msgs.append(Msg(_rt_attack(rng, rng.choice(RT_ANSWERED)), "answer"))
    end = _rt_fatal_ending(rng, msgs)
    return Script("realtime", "realtime.in_call" + end, tuple(msgs), session=True)


# --- Twilio ------------------------------------------------------------------------------------

TW_SID = "MZ" + "0" * 32
TW_CALL = "CA" + "0" * 32


def _tw_media(rng: random.Random, seq: int, index: int, **change: Any) -> str:
    msg = media_message(TW_SID, seq, index + 1, 20 * index, rng.randbytes(160))
    msg["media"].update(change)
    return _j(msg)


def _tw_text_attack(rng: random.Random, kind: str) -> str | bytes:
    if kind == "malformed_json":
        return _truncated(rng, _j(start_message(TW_SID, TW_CALL)))
    if kind == "deep_json":
        return _nested(rng, '{"event": "start", "start": ')
    if kind == "huge_integer":
        return _huge_integer(rng, '{"event": "media", "sequenceNumber": ')
    if kind == "not_an_object":
        return _not_an_object(rng)
    if kind == "missing_event":
        return _j({"streamSid": TW_SID, "sequenceNumber": "2"})
    if kind == "unknown_event":
        return _j({"event": rng.choice(["hello", "Media", "clear", ""]), "streamSid": TW_SID})
    if kind == "binary":
        return rng.randbytes(rng.randint(1, 400))
    if kind == "not_utf8":
        return _not_utf8(rng, b'{"event": "media", "x": "')
    if kind == "oversized":
        return _oversized_text(rng, '{"event": "media", ')
    raise ValueError(kind)


TW_TEXT_ATTACKS = (
    "malformed_json",
    "deep_json",
    "huge_integer",
    "not_an_object",
    "missing_event",
    "unknown_event",
    "binary",
    "not_utf8",
    "oversized",
)


def twilio_before_start(rng: random.Random) -> Script:
    msgs = [Msg(_j({"event": "connected", "protocol": "Call", "version": "1.0.0"}))]
    if rng.random() < 0.3:
        msgs = []
    kind = rng.choice(
        [
            *TW_TEXT_ATTACKS,
            "wrong_state",
            "media_format",
            "bad_start",
            "sid_mismatch",
            "bad_parameter",
        ]
    )
    start = start_message(TW_SID, TW_CALL)
    attack: str | bytes
    if kind in TW_TEXT_ATTACKS:
        attack = _tw_text_attack(rng, kind)
    elif kind == "wrong_state":
        attack = rng.choice(
            [
                _tw_media(rng, 1, 0),
                _j({"event": "stop", "sequenceNumber": "1", "streamSid": TW_SID}),
                _j(
                    {
                        "event": "mark",
                        "sequenceNumber": "1",
                        "streamSid": TW_SID,
                        "mark": {"name": "a"},
                    }
                ),
            ]
        )
    elif kind == "media_format":
        encoding, rate, channels = rng.choice(
            [("audio/l16", 8000, 1), ("audio/x-mulaw", 16000, 1), ("audio/x-mulaw", 8000, 2)]
        )
        start["start"]["mediaFormat"] = {
            "encoding": encoding,
            "sampleRate": rate,
            "channels": channels,
        }
        attack = _j(start)
    elif kind == "bad_start":
        broken: list[tuple[str, Any]] = [
            ("start", []),
            ("start", None),
            ("sequenceNumber", "abc"),
            ("sequenceNumber", None),
        ]
        where, value = rng.choice(broken)
        attack = _j({**start, where: value})
    elif kind == "sid_mismatch":
        attack = _j({**start, "streamSid": "MZ" + "1" * 32})
    else:  # a <Parameter> the call's settings refuse
        name, value = rng.choice([("temperature", "hot"), ("top_k", "-1"), ("noise_gate_db", "99")])
        start["start"]["customParameters"] = {name: value}
        attack = _j(start)
    msgs.append(_fatal(attack))
    return Script("twilio", f"twilio.before_start.{kind}", tuple(msgs), session=False)


def twilio_in_call(rng: random.Random) -> Script:
    msgs = [
        Msg(_j({"event": "connected", "protocol": "Call", "version": "1.0.0"})),
        Msg(_j(start_message(TW_SID, TW_CALL)), wait_ready=True),  # the first agent media
    ]
    n = rng.randint(0, 10)
    seq = 1
    for i in range(n):
        seq += 1
        msgs.append(Msg(_tw_media(rng, seq, i)))
    if rng.random() < 0.2:
        seq += 1
        mark = {"event": "mark", "sequenceNumber": str(seq), "streamSid": TW_SID}
        msgs.append(Msg(_j({**mark, "mark": {"name": "chunk-0"}})))
    kinds = [
        *TW_TEXT_ATTACKS,
        "bad_base64",
        "payload_too_big",
        "empty_payload",
        "sequence_not_growing",
        "other_stream",
        "timestamp_gap",
        "start_twice",
        "bad_media",
    ]
    if n:
        kinds.append("timestamp_back")
    kind = rng.choice(kinds)
    attack: str | bytes
    if kind in TW_TEXT_ATTACKS:
        attack = _tw_text_attack(rng, kind)
    elif kind == "bad_base64":
        attack = _tw_media(rng, seq + 1, n, payload=rng.choice(["abc", "é///", "////*///"]))
    elif kind == "payload_too_big":
        big = rng.randbytes(rng.randint(1281, 20000))
        attack = _tw_media(rng, seq + 1, n, payload=base64.b64encode(big).decode())
    elif kind == "empty_payload":
        attack = _tw_media(rng, seq + 1, n, payload="")
    elif kind == "sequence_not_growing":
        attack = _tw_media(rng, rng.randint(-5, seq), n)
    elif kind == "other_stream":
        msg = json.loads(_tw_media(rng, seq + 1, n))
        attack = _j({**msg, "streamSid": "MZ" + "f" * 32})
    elif kind == "timestamp_gap":
        attack = _tw_media(
            rng, seq + 1, n, timestamp=str(20 * n + rng.choice([2100, 10**6, 2**62]))
        )
    elif kind == "timestamp_back":
        attack = _tw_media(rng, seq + 1, n, timestamp=str(rng.choice([0, -20, -(2**40)])))
    elif kind == "start_twice":
        attack = _j(start_message(TW_SID, TW_CALL, sequence=seq + 1))
    elif kind == "bad_media":
        where, value = rng.choice([("timestamp", "x"), ("chunk", None), ("payload", 5)])
        attack = _tw_media(rng, seq + 1, n, **{where: value})
    else:
        raise ValueError(kind)
    msgs.append(_fatal(attack))
    return Script("twilio", f"twilio.in_call.{kind}", tuple(msgs), session=True)


# --- clients that go away or stop reading ------------------------------------------------------


def vanishing(rng: random.Random) -> Script:
    """A TCP reset: before the call opens, or mid-call on any endpoint."""
    mid_call = rng.random() < 0.75
    endpoint = rng.choice(ENDPOINTS)
    where = endpoint if mid_call else "before_start"
    msgs: list[Msg] = []
    if where == "native":
        msgs.append(Msg(_j(START), wait_ready=True))
        msgs += [
            Msg(AudioFrame(i, i * 320, rng.randbytes(640)).pack())
            for i in range(rng.randint(0, 10))
        ]
    elif where == "realtime":
        msgs += [Msg(_rt_append(rng)) for _ in range(rng.randint(1, 10))]
    elif where == "twilio":
        msgs.append(Msg(_j(start_message(TW_SID, TW_CALL))))
        msgs += [Msg(_tw_media(rng, i + 2, i)) for i in range(rng.randint(0, 10))]
    return Script(endpoint, f"vanish.{where}", tuple(msgs), session=mid_call, ending="abort")


def slow_reader(rng: random.Random) -> Script:
    """A call at 48 kHz (15 KB of agent audio a tick) whose client sends in real time but
    does not read for a while: cut off (slow_consumer) or caught up, never an internal error."""
    fs = 960
    start = _with(START, "audio.sample_rate", 48000)
    n = rng.randint(40, 120)  # 0.8 .. 2.4 s of 20 ms frames, sent on the clock
    msgs = [Msg(_j(start), wait_ready=True)]
    msgs += [Msg(AudioFrame(i, i * fs, bytes(2 * fs)).pack()) for i in range(n)]
    msgs.append(Msg(_j({"type": "end", "total_samples": n * fs})))
    return Script("native", "slow_reader", tuple(msgs), session=True, ending="stall")


# Who plays what share of the connections.
GENERATORS: tuple[tuple[Callable[[random.Random], Script], float], ...] = (
    (native_before_start, 0.22),
    (native_in_call, 0.22),
    (realtime_before_audio, 0.13),
    (realtime_in_call, 0.08),
    (twilio_before_start, 0.12),
    (twilio_in_call, 0.13),
    (vanishing, 0.09),
    (slow_reader, 0.01),
)


def plan(seed: int, messages: int, first: int = 0) -> list[Script]:
    """Scripts from connection `first` on until they hold `messages` messages; connection i's
    draws come from (seed, i) alone."""
    scripts: list[Script] = []
    total = 0
    makers, weights = zip(*GENERATORS, strict=True)
    while total < messages:
        rng = random.Random(f"{seed}:{first + len(scripts)}")
        script = rng.choices(makers, weights)[0](rng)
        scripts.append(script)
        total += len(script.messages)
    return scripts


# ---------------------------------------------------------------------------------------------
# Playing scripts


@dataclass(slots=True)
class Outcome:
    """What one connection saw."""

    endpoint: str
    kind: str
    sent: int = 0
    bad_sent: int = 0
    unanswered: int = 0
    error_codes: list[str] = field(default_factory=list)
    close_code: int | None = None  # the server's, when it closed the connection
    # server (it closed), client (we closed), abort, connect_failed, client_error (a bug here)
    ended: str = "server"
    note: str | None = None


class _Reader:
    """Reads a connection until it closes: counts errors, notes that the call is open."""

    def __init__(self, ws: ClientConnection, out: Outcome) -> None:
        self.ws, self.out = ws, out
        self.ready = asyncio.Event()
        self.progress = asyncio.Event()
        self.closed = False

    async def run(self) -> None:
        try:
            async for msg in self.ws:
                if isinstance(msg, bytes):
                    continue
                code, opened = _read(msg)
                if code is not None:
                    self.out.error_codes.append(code)
                    self.progress.set()
                elif opened:
                    self.ready.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.ready.set()
            self.progress.set()


def _read(text: str) -> tuple[str | None, bool]:
    """The code of a native `error` or a Realtime `error` event, and whether the message shows
    the call open: native `ready`, a Realtime `session.updated` (asked for after the first
    audio), Twilio's first agent `media`."""
    try:
        msg = json.loads(text)
    except ValueError:
        return None, False
    if not isinstance(msg, dict):
        return None, False
    if msg.get("type") == "error":
        detail = msg["error"] if isinstance(msg.get("error"), dict) else msg
        return str(detail.get("code")), False
    return None, msg.get("type") in ("ready", "session.updated") or msg.get("event") == "media"


async def _send(ws: ClientConnection, m: Msg) -> None:
    await ws.send(m.data, text=True if isinstance(m.data, RawText) else None)


async def play(script: Script, base: str, headers: dict[str, str]) -> Outcome:
    """Play one script; every failure is recorded in the outcome, none escapes."""
    out = Outcome(script.endpoint, script.kind)
    try:
        async with asyncio.timeout(CONNECTION_TIMEOUT_S):
            await _play(script, base, headers, out)
    except TimeoutError:
        out.note = "timed out"
        out.unanswered = _unanswered(script, out)
    except Exception as exc:  # a bug of ours: recorded, and the other connections go on
        out.ended, out.note = "client_error", f"{type(exc).__name__}: {exc}"
    return out


async def _play(script: Script, base: str, headers: dict[str, str], out: Outcome) -> None:
    stall = script.ending == "stall"
    sock = None
    if stall:  # a small receive window: the server's sends back up at once
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        parts = urlsplit(base)
        sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
        sock.setblocking(False)
    try:
        ws = await connect(
            base + PATHS[script.endpoint],
            additional_headers=headers or None,
            compression=None,
            proxy=None,
            open_timeout=10,
            max_queue=1 if stall else 16,
            sock=sock,
        )
    except (OSError, TimeoutError, InvalidStatus, WebSocketException) as exc:
        out.ended, out.note = "connect_failed", f"{type(exc).__name__}: {exc}"
        return
    reader = _Reader(ws, out)
    reading = None if stall else asyncio.create_task(reader.run())
    try:
        t0 = time.monotonic()
        for i, m in enumerate(script.messages):
            if reader.closed:
                break
            if stall and i:  # a real-time sender: frame i leaves 20 ms after frame i - 1
                await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
            try:
                await _send(ws, m)
            except ConnectionClosed:
                break
            out.sent += 1
            out.bad_sent += m.expect != "good"
            if m.expect == "answer":  # its answer before the next message: one for one
                await _await_answers(script, reader, out)
            if m.wait_ready:
                if stall:
                    await _await_ready(ws, out)
                    t0 = time.monotonic()
                else:
                    await asyncio.wait_for(reader.ready.wait(), ANSWER_TIMEOUT_S)
        if script.ending == "abort":
            ws.transport.abort()
            out.ended = "abort"
            return
        if reading is None:
            reading = asyncio.create_task(reader.run())
        await _await_answers(script, reader, out)
        if not reader.closed:
            out.ended = "client"
            await ws.close()
        await reading
        if out.ended == "server":
            out.close_code = ws.close_code
        out.unanswered = _unanswered(script, out)
    finally:
        if reading is not None and not reading.done():
            reading.cancel()
        ws.transport.abort()


async def _await_ready(ws: ClientConnection, out: Outcome) -> None:
    """A stalling client reads only up to `ready` (or the refusal), then stops reading."""
    async with asyncio.timeout(ANSWER_TIMEOUT_S):
        with contextlib.suppress(ConnectionClosed):
            while True:
                msg = await ws.recv()
                if isinstance(msg, bytes):
                    continue
                code, opened = _read(msg)
                if code is not None:
                    out.error_codes.append(code)
                elif opened:
                    return


async def _await_answers(script: Script, reader: _Reader, out: Outcome) -> None:
    """Until every hostile message sent has its answer and, after a fatal one (or at the end
    of a call that ended itself), the server closed; or until ANSWER_TIMEOUT_S."""
    fatal = any(m.expect == "fatal" for m in script.messages[: out.sent])
    answers_due = sum(m.expect == "answer" for m in script.messages[: out.sent])
    wait_close = fatal or script.ending == "stall"
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while not reader.closed:
        if len(out.error_codes) >= answers_due and not wait_close:
            return
        reader.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.progress.wait(), max(0.0, deadline - time.monotonic()))
        if time.monotonic() >= deadline:
            return


def _refused(out: Outcome) -> bool:
    """The server had no free slot: the script never got to its hostile part."""
    return out.bad_sent == 0 and (out.close_code == 1013 or "server_full" in out.error_codes)


def _unanswered(script: Script, out: Outcome) -> int:
    """Hostile messages sent that no error and no telling close answered (a close answers one:
    after it nothing more was read)."""
    told = (
        out.ended == "server" and out.close_code is not None and out.close_code not in NOT_ANSWERS
    )
    return max(0, out.bad_sent - len(out.error_codes) - told)


# ---------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True, slots=True)
class FuzzConfig:
    url: str = DEFAULT_URL  # ws://host:port (a path is ignored: the three endpoints are fixed)
    messages: int = 10_000
    seed: int = 0
    concurrency: int = 16
    server_log: str | None = None
    api_key: str | None = None
    progress: bool = False


@dataclass(slots=True)
class FuzzReport:
    config: dict[str, Any]
    messages_planned: int
    messages_sent: int
    bad_messages_sent: int
    unanswered: int
    connections: int
    by_endpoint: dict[str, dict[str, int]]
    kinds: dict[str, int]
    close_codes: dict[str, int]  # the server's closes, per code
    endings: dict[str, int]  # who ended each connection
    error_codes: dict[str, int]
    internal_errors: int  # 1011 closes and `internal_error` codes
    connect_failures: int
    refused_and_retried: int  # calls refused `server_full` (a slot not yet freed), tried again
    client_errors: int  # connections this program got wrong (its own bugs)
    examples: list[dict[str, Any]]  # the first few connections that went wrong
    healthz: dict[str, Any] | None
    sessions_after: int | None
    normal_call: dict[str, Any]
    server_log: dict[str, Any] | None
    wall_s: float
    failures: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _base(url: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "", "", ""))


def _http(base: str) -> str:
    return base.replace("wss://", "https://", 1).replace("ws://", "http://", 1)


def _get_json(url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


async def _health(http: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(_get_json, f"{http}/healthz", headers)


async def _settled(http: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """/healthz once no call is left open, or after SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        status, body = await _health(http, headers)
        if status != 200 or body.get("sessions") == 0 or time.monotonic() > deadline:
            return status, body
        await asyncio.sleep(0.1)


async def _normal_call(base: str, headers: dict[str, str]) -> dict[str, Any]:
    """One second of a tone through /v1/duplex: it must come back as long as it went."""
    rate = 16000
    pcm = (0.1 * np.sin(np.arange(rate) * 0.05)).astype(np.float32)
    try:
        r = await asyncio.wait_for(
            run_call(base + PATHS["native"], pcm, rate, headers=headers or None), 20
        )
    except (DuplexError, TimeoutError) as exc:
        return {"ok": False, "message": str(exc) or type(exc).__name__}
    ok = len(r.output) == len(pcm) and r.stats.frames_in == r.frames_sent
    return {
        "ok": ok,
        "message": None if ok else "the call's audio did not come back whole",
        "frames_sent": r.frames_sent,
        "frames_received": r.frames_received,
        "ticks": r.stats.ticks,
    }


def _log_from(path: str | None) -> int:
    return Path(path).stat().st_size if path else 0


def _log_figures(path: str, offset: int) -> dict[str, Any]:
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    lines = text.splitlines()
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    errors = [line for line in lines if " ERROR " in line or line.startswith("ERROR:")]
    first = lines[tracebacks[0] + 1 : tracebacks[0] + 40] if tracebacks else errors[:1]
    return {
        "path": path,
        "bytes_read": len(text),
        "tracebacks": len(tracebacks),
        "error_lines": len(errors),
        "first": "\n".join(first) or None,
    }


async def _progress(done: list[Outcome], total: int) -> None:
    from tqdm import tqdm

    with tqdm(total=total, unit="msg", desc=PROG, file=sys.stderr) as bar:
        try:
            while True:
                bar.n = sum(o.sent for o in done)
                bar.set_postfix_str(f"{len(done)} connections")
                bar.refresh()
                await asyncio.sleep(0.5)
        finally:
            bar.refresh()


async def run_fuzz(config: FuzzConfig) -> FuzzReport:
    """Plan, play every script, then check the server. Raises InputError when the server
    cannot be reached before the run."""
    base, headers = _base(config.url), _auth(config.api_key)
    http = _http(base)
    try:
        status, cap = await asyncio.to_thread(_get_json, f"{http}/v1/capacity", headers)
    except OSError as exc:
        raise InputError(f"cannot reach {http}: {exc}") from exc
    if status != 200 or not cap.get("free"):
        raise InputError(f"{http}/v1/capacity: {status} {cap}: the server has no free call slot")
    log_offset = _log_from(config.server_log)
    connections = asyncio.Semaphore(config.concurrency)
    sessions = asyncio.Semaphore(min(config.concurrency, int(cap["free"])))
    done: list[Outcome] = []
    refused: list[Outcome] = []

    async def one(script: Script) -> None:
        async with connections:
            if not script.session:
                done.append(await play(script, base, headers))
                return
            async with sessions:
                for _ in range(REFUSED_TRIES):
                    out = await play(script, base, headers)
                    if not _refused(out):
                        break
                    refused.append(out)  # a slot the server has yet to free: try again
                    await asyncio.sleep(REFUSED_PAUSE_S)
                done.append(out)

    t0 = time.monotonic()
    scripts: list[Script] = []
    bar = asyncio.create_task(_progress(done, config.messages)) if config.progress else None
    try:  # connections end early (refused, closed): more scripts until enough was sent
        while (sent := sum(o.sent for o in done)) < config.messages:
            batch = plan(config.seed, config.messages - sent, first=len(scripts))
            scripts += batch
            await asyncio.gather(*(one(s) for s in batch))
    finally:
        if bar is not None:
            bar.cancel()
            await asyncio.gather(bar, return_exceptions=True)
    wall = time.monotonic() - t0
    status, health = await _settled(http, headers)
    call = await _normal_call(base, headers)
    log = _log_figures(config.server_log, log_offset) if config.server_log else None
    return _report(config, scripts, done, len(refused), wall, (status, health), call, log)


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _report(
    config: FuzzConfig,
    scripts: Sequence[Script],
    done: Sequence[Outcome],
    refused: int,
    wall: float,
    health: tuple[int, dict[str, Any]],
    call: dict[str, Any],
    log: dict[str, Any] | None,
) -> FuzzReport:
    errors = Counter(c for o in done for c in o.error_codes)
    closes = Counter(str(o.close_code) for o in done if o.close_code is not None)
    internal = closes.get(str(INTERNAL), 0) + errors.get("internal_error", 0)
    by_endpoint: dict[str, dict[str, int]] = {}
    for o in done:
        e = by_endpoint.setdefault(o.endpoint, {"connections": 0, "messages": 0})
        e["connections"] += 1
        e["messages"] += o.sent
    wrong = [
        o
        for o in done
        if o.unanswered
        or o.ended in ("connect_failed", "client_error")
        or o.close_code == INTERNAL
        or "internal_error" in o.error_codes
    ]
    status, body = health
    sent = sum(o.sent for o in done)
    report = FuzzReport(
        config={k: v for k, v in asdict(config).items() if k not in ("api_key", "progress")},
        messages_planned=sum(len(s.messages) for s in scripts),
        messages_sent=sent,
        bad_messages_sent=sum(o.bad_sent for o in done),
        unanswered=sum(o.unanswered for o in done),
        connections=len(done),
        by_endpoint=by_endpoint,
        kinds=dict(sorted(Counter(o.kind for o in done).items())),
        close_codes=dict(sorted(closes.items())),
        endings=dict(Counter(o.ended for o in done)),
        error_codes=dict(sorted(errors.items())),
        internal_errors=internal,
        connect_failures=sum(o.ended == "connect_failed" for o in done),
        refused_and_retried=refused,
        client_errors=sum(o.ended == "client_error" for o in done),
        examples=[asdict(o) for o in wrong[:10]],
        healthz=body,
        sessions_after=body.get("sessions"),
        normal_call=call,
        server_log=log,
        wall_s=round(wall, 3),
        failures=[],
    )
    report.failures = _failures(report, status)
    return report


def _failures(r: FuzzReport, health_status: int) -> list[str]:
    """What failed, one phrase each (the CLI joins them into one line)."""
    out = []
    if r.internal_errors:
        out.append(f"{r.internal_errors} internal errors (1011 / internal_error)")
    if r.unanswered:
        kinds = sorted({e["kind"] for e in r.examples if e["unanswered"]})
        out.append(f"{r.unanswered} hostile messages unanswered ({', '.join(kinds)})")
    if r.connect_failures:
        out.append(f"{r.connect_failures} connections failed to open")
    if r.client_errors:
        out.append(f"{r.client_errors} connections failed in this client (its bug)")
    if health_status != 200 or (r.healthz or {}).get("status") != "ok":
        out.append(f"/healthz answered {health_status} {r.healthz}")
    elif r.sessions_after:
        out.append(f"{r.sessions_after} calls still open {SETTLE_S:g} s after the run")
    if not r.normal_call["ok"]:
        out.append(f"a normal call failed after the run: {r.normal_call['message']}")
    if r.server_log is not None and (r.server_log["tracebacks"] or r.server_log["error_lines"]):
        out.append(
            f"the server log holds {r.server_log['tracebacks']} tracebacks and "
            f"{r.server_log['error_lines']} ERROR lines"
        )
    return out


def summary(r: FuzzReport) -> str:
    """The report in a few lines."""

    def codes(c: dict[str, int]) -> str:
        return ", ".join(f"{k} x{v}" for k, v in c.items()) or "none"

    lines = [
        f"{r.messages_sent} messages ({r.bad_messages_sent} hostile) over {r.connections} "
        f"connections in {r.wall_s:.1f} s, seed {r.config['seed']}",
        "per endpoint: "
        + ", ".join(
            f"{k} {v['connections']} conn / {v['messages']} msg"
            for k, v in sorted(r.by_endpoint.items())
        ),
        f"close codes (server's): {codes(r.close_codes)}",
        f"connections ended by: {codes(r.endings)}",
        f"error codes: {codes(r.error_codes)}",
        f"hostile messages unanswered: {r.unanswered}; internal errors: {r.internal_errors}",
        f"after: /healthz {r.healthz}, normal call "
        + ("ok" if r.normal_call["ok"] else f"FAILED ({r.normal_call['message']})"),
    ]
    if r.server_log is not None:
        lines.append(
            f"server log ({r.server_log['bytes_read']} bytes written during the run): "
            f"{r.server_log['tracebacks']} tracebacks, {r.server_log['error_lines']} ERROR lines"
        )
    lines.append("PASSED" if not r.failures else "FAILED: " + "; ".join(r.failures))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `duplex fuzz`."""
    parser.description = (
        "Send hostile messages to a running server's three WebSocket endpoints (/v1/duplex, "
        "/v1/realtime, /v1/telephony/twilio), seeded and reproducible; exit 1, with one line "
        "why, unless every hostile message was answered with a code, nothing closed with 1011, "
        "the server is healthy after, a normal call completes and the log holds no traceback."
    )
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="the server, ws://HOST:PORT (%(default)s)"
    )
    parser.add_argument(
        "--messages", type=int, default=10_000, help="messages to send, at least (10000)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the same seed sends the same messages (0)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="connections at once (16); those that open a call: at most the server's free slots",
    )
    parser.add_argument(
        "--server-log",
        metavar="PATH",
        help="the server's log file: what it gains during the run must hold no traceback and "
        "no ERROR line",
    )
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    parser.add_argument("--json-out", metavar="PATH", help="also write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def _config(args: argparse.Namespace) -> FuzzConfig:
    check_url(args.url)
    if args.messages < 1:
        raise InputError(f"--messages must be positive, got {args.messages}")
    if args.concurrency < 1:
        raise InputError(f"--concurrency must be positive, got {args.concurrency}")
    if args.server_log and not Path(args.server_log).is_file():
        raise InputError(f"--server-log {args.server_log!r}: no such file")
    if args.json_out and not Path(args.json_out).parent.is_dir():
        raise InputError(f"cannot write {args.json_out!r}: no such directory")
    return FuzzConfig(
        url=args.url,
        messages=args.messages,
        seed=args.seed,
        concurrency=args.concurrency,
        server_log=args.server_log,
        api_key=args.api_key,
        progress=not args.quiet and sys.stderr.isatty(),
    )


def run(args: argparse.Namespace) -> int:
    """Run `duplex fuzz`: the report on stdout; a failure is one line on stderr."""
    try:
        report = asyncio.run(run_fuzz(_config(args)))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=1))
    except InputError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    print(json.dumps(report.to_dict()) if args.json else summary(report))
    if report.failures:
        return _fail("; ".join(report.failures))
    return 0


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"{PROG}: {'error: ' if code == EXIT_USAGE else ''}{message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (`python -m clients.measure.fuzz`), also used by the tests."""
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
