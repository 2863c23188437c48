"""The OpenAI Realtime contract beyond audio in and out (docs/realtime.md, "Conversation items"):
items (user per speech segment, commit or created item; assistant per response), their
events in OpenAI's order, `conversation.item.create/truncate/delete/retrieve`, `usage`, and
a session that stays open while its client sends nothing. Every event a call sends is checked
against the `openai` package's own types, strictly (a discriminated `TypeAdapter`, as the
openai-agents SDK validates them), not only its lenient parser.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import openai
import pytest
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent
from pydantic import Field, TypeAdapter

from server.adapters.realtime import TEXT_ITEM_CODE, QueuedEvent, RealtimeTransport
from server.runtime import Runtime
from server.session import AgentChunk, CallSession, Outgoing
from server.settings import Settings
from streaming.encodings import encode_audio
from streaming.resample import resample_whole
from streaming.vad import EnergyVad
from tests.conftest import ServerProcess, TextSocket, read_wav, speak

RATE = 24000
CHUNK = 3840  # one 160 ms tick at 24 kHz
GA_EVENTS: TypeAdapter[Any] = TypeAdapter(
    Annotated[RealtimeServerEvent, Field(discriminator="type")]
)
BETA_EVENTS: TypeAdapter[Any] = TypeAdapter(Annotated[BetaServerEvent, Field(discriminator="type")])


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A sentence of espeak speech at 24 kHz."""
    pcm, rate = read_wav(speak("Hello, can you hear me?", tmp_path_factory.mktemp("rtc") / "v.wav"))
    return resample_whole(pcm, rate, RATE).astype(np.float32)


def _b64(x: np.ndarray) -> str:
    return base64.b64encode(encode_audio(x, "pcm16")).decode("ascii")


# -- in process: the adapter's two sides around a real session --------------------------------


class Call:
    """A RealtimeTransport admitted with a real session (no ticker steps): events go in as a
    client sends them, agent chunks as the ticker queues them, and what the sender writes is
    read back."""

    def __init__(self, runtime: Runtime) -> None:
        self.t = RealtimeTransport()
        self.t._server, self.t._runtime, self.t._admitted = runtime.settings, runtime, True
        self.session: CallSession = runtime.open_session(self.t._options.start(runtime.settings))
        self.t._vad = EnergyVad(RATE, self.t._options.vad_params())
        self.t._units_per_chunk = 4  # the default checkpoint: 4 frames of 1 unit a chunk
        self.ws = TextSocket()
        self.chunks = 0

    def client(self, **event: Any) -> list[dict[str, Any]]:
        """One client event, answered in order by the sender."""
        audio = asyncio.run(self.t._on_message(self.ws, self.session, json.dumps(event)))  # type: ignore[arg-type]
        if audio is not None:
            self.t._hear(self.session, audio)
        return self.drain()

    def agent(self, *loud: bool) -> list[dict[str, Any]]:
        """Agent chunks, speech (True) or silence (False)."""
        rng = np.random.default_rng(self.chunks)
        for speech in loud:
            pcm = 0.2 * rng.standard_normal(CHUNK) if speech else np.zeros(CHUNK)
            chunk = AgentChunk(self.chunks, self.chunks * CHUNK, encode_audio(pcm, "pcm16"), False)
            self.chunks += 1
            self.session.outbox.put_nowait(Outgoing(audio=chunk))
        return self.drain()

    def drain(self) -> list[dict[str, Any]]:
        self.ws.sent.clear()

        async def run() -> None:
            while not self.session.outbox.empty():
                await self.t.send(self.ws, self.session, self.session.outbox.get_nowait())  # type: ignore[arg-type]

        asyncio.run(run())
        return list(self.ws.sent)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


@pytest.fixture(scope="module")
def runtime(checkpoint: Path) -> Any:
    """A server's runtime, its ticker never started: each test opens a call in it."""
    rt = Runtime(Settings(model=checkpoint, max_sessions=8))
    yield rt
    rt.ticker.shutdown()


OPENED = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
CLOSED = [
    "response.output_audio.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]


def test_a_response_is_an_item_with_usage(runtime: Runtime) -> None:
    """Agent speech opens a response whose one output item is added to the conversation, in
    OpenAI's order; `response.done` counts its usage: the model's context when it began in,
    the audio tokens of its chunks out."""
    call = Call(runtime)
    call.session.stats.context_tokens = 300
    sent = call.agent(True, True, False)
    assert types(sent) == OPENED + ["response.output_audio.delta"] * 2 + CLOSED
    item = sent[1]["item"]
    assert (item["role"], item["status"], item["content"]) == ("assistant", "in_progress", [])
    assert sent[2]["item"]["id"] == item["id"] and sent[2]["previous_item_id"] is None
    done = sent[-1]["response"]
    assert done["status"] == "completed" and done["output"][0]["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": None}]
    assert done["usage"] == {
        "total_tokens": 308,
        "input_tokens": 300,
        "output_tokens": 8,
        "input_token_details": {"audio_tokens": 300, "text_tokens": 0},
        "output_token_details": {"audio_tokens": 8, "text_tokens": 0},
    }
    assert sent[0]["response"]["usage"] is None and sent[0]["response"]["output"] == []


def test_truncate_cuts_the_open_response_and_counts_what_was_not_played(
    runtime: Runtime,
) -> None:
    """A barge-in's `conversation.item.truncate`: answered with `conversation.item.truncated`
    (`audio_end_ms` at most what was sent), the session told which agent samples were never
    played, the open response cancelled and the rest of that utterance not sent; the next
    one is a new response. Its errors name the item or the field."""
    call = Call(runtime)
    opened = call.agent(True, True, True)
    item_id = opened[1]["item"]["id"]
    sent = call.client(
        type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=200
    )
    assert types(sent) == ["conversation.item.truncated", *CLOSED]
    assert sent[0]["audio_end_ms"] == 200 and sent[0]["item_id"] == item_id
    done = sent[-1]["response"]
    assert done["status"] == "cancelled" and done["output"][0]["status"] == "incomplete"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    stats = call.session.stats
    assert stats.unplayed_samples == 3 * CHUNK - 200 * 24
    frame = CHUNK // call.session.user_in.frames_per_chunk  # the agent frames not heard
    assert call.session.take_unheard() == [(200 * 24 // frame, 3 * CHUNK // frame)]
    assert call.agent(True, True) == []  # the rest of the truncated utterance: withheld

    def truncate(item: str, end_ms: int) -> int:
        sent = call.client(
            type="conversation.item.truncate", item_id=item, content_index=0, audio_end_ms=end_ms
        )
        assert types(sent)[0] == "conversation.item.truncated", sent
        return int(sent[0]["audio_end_ms"])

    # the item is now 200 ms long: a later truncation shortens it, never lengthens it, and
    # counts only what it drops
    assert truncate(item_id, 9000) == 200 and stats.unplayed_samples == 3 * CHUNK - 4800
    assert truncate(item_id, 100) == 100 and stats.unplayed_samples == 3 * CHUNK - 2400
    opened = call.agent(False, True)
    assert types(opened)[:1] == ["response.created"]  # the next utterance: a new response
    # a client counting playback by the wall clock may name more than was sent
    assert truncate(opened[1]["item"]["id"], 9000) == 160
    errors = [
        call.client(type="conversation.item.truncate", event_id="e1", item_id="nope",
                    content_index=0, audio_end_ms=0),
        call.client(type="conversation.item.truncate", item_id=item_id, content_index=1,
                    audio_end_ms=0),
        call.client(type="conversation.item.truncate", item_id=item_id, content_index=0,
                    audio_end_ms=-1),
    ]  # fmt: skip
    assert [(e[0]["error"]["code"], e[0]["error"]["param"]) for e in errors] == [
        ("item_truncate_invalid_item_id", "item_id"),
        ("invalid_value", "content_index"),
        ("invalid_value", "audio_end_ms"),
    ]
    assert errors[0][0]["error"]["event_id"] == "e1"


def test_deleting_the_open_item_cuts_its_response(runtime: Runtime) -> None:
    """LiveKit deletes, rather than truncates, an agent item it never played: the open response
    is cancelled (no `conversation.item.done` for the forgotten item) and the rest of that
    utterance is not sent."""
    call = Call(runtime)
    item_id = call.agent(True)[1]["item"]["id"]
    sent = call.client(type="conversation.item.delete", item_id=item_id)
    closed = [kind for kind in CLOSED if kind != "conversation.item.done"]
    assert types(sent) == ["conversation.item.deleted", *closed]
    assert sent[-1]["response"]["status"] == "cancelled"
    assert call.agent(True) == []


def test_a_barge_in_cancels_the_response_as_turn_detected(runtime: Runtime) -> None:
    """Caller speech that starts while the agent talks: the response closes cancelled
    (`turn_detected`), as OpenAI's does when its VAD hears the caller."""
    call = Call(runtime)
    call.agent(True)
    started = QueuedEvent(run=lambda ws: call.t._speech_started({"type": "x"}, ws))
    call.session.outbox.put_nowait(started)
    sent = call.agent(False)
    done = sent[-1]["response"]
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}


def test_items_from_speech_commit_and_create(runtime: Runtime, voice: np.ndarray) -> None:
    """One user item per speech segment (after `speech_stopped` and `committed`), per commit
    with audio since the last item, and per created audio item, whose audio the call hears
    as if appended (no VAD events of its own). Items can be retrieved (without their audio:
    it is not kept) and deleted; a text item is refused with an error that names the limit."""
    call = Call(runtime)
    x = np.concatenate([np.zeros(RATE // 2), voice, np.zeros(RATE)]).astype(np.float32)
    events: list[dict[str, Any]] = []
    for i in range(0, len(x), RATE // 10):
        events += call.client(type="input_audio_buffer.append", audio=_b64(x[i : i + RATE // 10]))
    assert types(events) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    speech = events[0]["item_id"]
    assert {e.get("item_id") or e["item"]["id"] for e in events} == {speech}
    assert events[3]["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    heard = call.session.expected_sample
    sent = call.client(
        type="conversation.item.create",
        item={"id": "mine", "type": "message", "role": "user",
              "content": [{"type": "input_audio", "audio": _b64(voice)}]},
    )  # fmt: skip
    assert types(sent) == ["conversation.item.added", "conversation.item.done"]
    assert sent[0]["previous_item_id"] == speech and sent[0]["item"]["id"] == "mine"
    assert call.session.expected_sample == heard + len(voice)  # heard, after the rest
    sent = call.client(type="input_audio_buffer.append", audio=_b64(np.zeros(2400)))
    assert sent == []  # its speech is the item: no VAD events
    sent = call.client(type="input_audio_buffer.commit")
    assert types(sent) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert sent[0]["previous_item_id"] == "mine"
    assert call.client(type="input_audio_buffer.commit")[0]["item_id"] == sent[0]["item_id"]
    got = call.client(type="conversation.item.retrieve", item_id="mine")
    assert types(got) == ["conversation.item.retrieved"]
    assert got[0]["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    deleted = call.client(type="conversation.item.delete", item_id="mine")
    assert [(e["type"], e["item_id"]) for e in deleted] == [("conversation.item.deleted", "mine")]
    gone = call.client(type="conversation.item.retrieve", event_id="rci_mine", item_id="mine")
    assert gone[0]["error"]["code"] == "item_retrieve_invalid_item_id"
    assert call.client(type="conversation.item.delete", item_id="mine")[0]["error"]["code"] == (
        "item_delete_invalid_item_id"
    )
    text = call.client(
        type="conversation.item.create",
        event_id="e7",
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    )
    error = text[0]["error"]
    assert (error["code"], error["param"], error["event_id"]) == (
        TEXT_ITEM_CODE,
        "item.content[0].type",
        "e7",
    )
    assert "audio in, audio out" in error["message"] and "'input_text'" in error["message"]
    for item, param in [
        ({"type": "function_call_output", "call_id": "c", "output": "{}"}, "item.type"),
        ({"type": "message", "role": "system", "content": []}, "item.role"),
    ]:
        sent = call.client(type="conversation.item.create", item=item)
        assert (sent[0]["error"]["code"], sent[0]["error"]["param"]) == (TEXT_ITEM_CODE, param)
    again = {"id": speech, "type": "message", "role": "user",
             "content": [{"type": "input_audio", "audio": _b64(voice)}]}  # fmt: skip
    # an id in use is refused: one of the server's, or one the client gave
    refused = call.client(type="conversation.item.create", item=again)
    assert (refused[0]["error"]["code"], refused[0]["error"]["param"]) == (
        "item_create_duplicate_item_id",
        "item.id",
    )
    again["id"] = "mine2"
    assert types(call.client(type="conversation.item.create", item=again))[0] == (
        "conversation.item.added"
    )
    assert call.client(type="conversation.item.create", item=again)[0]["error"]["param"] == (
        "item.id"
    )


# -- end to end: the official client, every event checked -------------------------------------


class Client:
    """The official client's connection, with every event kept as its raw JSON."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.raw: list[bytes] = []
        self._collector = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        with contextlib.suppress(Exception):  # the connection closing ends the collection
            while True:
                self.raw.append(await self.conn.recv_bytes())

    def seen(self, kind: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.raw[since:]) if e["type"] == kind]

    async def stream(self, x: np.ndarray, until: str | None = None) -> None:
        """Append `x` in real time, 100 ms at a time; with `until`, go on with silence until
        such an event comes (10 s at most)."""
        loop, since = asyncio.get_running_loop(), len(self.raw)
        t0, i = loop.time(), 0
        while i < len(x) or (until and not self.seen(until, since) and i < 10 * RATE):
            piece = x[i : i + RATE // 10] if i < len(x) else np.zeros(RATE // 10)
            await self.conn.input_audio_buffer.append(audio=_b64(piece))
            i += RATE // 10
            await asyncio.sleep(max(0.0, t0 + i / RATE - loop.time()))

    async def close(self) -> list[dict[str, Any]]:
        self._collector.cancel()
        await asyncio.gather(self._collector, return_exceptions=True)
        return [json.loads(m) for m in self.raw]


def _client(server: ServerProcess, beta: bool) -> Any:
    ws = server.http.replace("http://", "ws://") + "/v1" if beta else None
    client = openai.AsyncOpenAI(
        base_url=f"{server.http}/v1", websocket_base_url=ws, api_key="unused-on-loopback"
    )
    return client.beta.realtime if beta else client.realtime


async def _contract_call(server: ServerProcess, voice: np.ndarray, beta: bool) -> list[bytes]:
    """A call that uses the whole contract: speech (VAD items), a created audio item and a
    text one (refused), a truncate of an open response's item, retrieve, delete, commit and
    cancel. Every event's raw JSON."""
    async with _client(server, beta).connect(model="duplex-test") as conn:
        c = Client(conn)
        await conn.session.update(session={"input_audio_format": "pcm16"} if beta else {})
        await c.stream(np.concatenate([np.zeros(RATE // 2), voice, np.zeros(RATE)]))
        audio = {"type": "input_audio", "audio": _b64(voice[: RATE // 2])}  # 32 KB of base64
        for part in (audio, {"type": "input_text", "text": "hello"}):
            item = {"type": "message", "role": "user", "content": [part]}
            await conn.send({"type": "conversation.item.create", "item": item})
        await c.stream(np.zeros(0, np.float32), until="response.output_item.added")
        item_id = c.seen("response.output_item.added")[-1]["item"]["id"]
        await conn.send(
            {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
             "audio_end_ms": 100}
        )  # fmt: skip
        for kind in ("retrieve", "delete", "retrieve"):
            await conn.send({"type": f"conversation.item.{kind}", "item_id": item_id})
        await conn.input_audio_buffer.commit()
        await c.stream(np.zeros(RATE // 2, np.float32))
        await conn.response.cancel()
        await c.stream(np.zeros(RATE // 2, np.float32))
        await c.close()
    return c.raw


def _in_order(events: list[dict[str, Any]], response: str, beta: bool) -> None:
    """A response's events, and its item's in the conversation, in OpenAI's order."""
    item = next(
        e["item"]["id"]
        for e in events
        if e["type"] == "response.output_item.added" and e["response_id"] == response
    )
    added = ("conversation.item.added", "conversation.item.created", "conversation.item.done")
    mine = [
        e["type"]
        for e in events
        if response in (e.get("response_id"), e.get("response", {}).get("id"))
        or (e["type"] in added and e["item"]["id"] == item)
    ]
    delta = "response.audio.delta" if beta else "response.output_audio.delta"
    opened = [*OPENED[:2], "conversation.item.created", OPENED[3]] if beta else OPENED
    closed = [e.replace("output_audio", "audio") for e in CLOSED if e != "conversation.item.done"]
    deltas = mine.count(delta)
    assert mine == [*opened, *[delta] * deltas, *(closed if beta else CLOSED)], mine
    assert deltas >= 1


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
def test_every_event_is_valid_against_the_openai_types(
    server: ServerProcess, voice: np.ndarray, beta: bool
) -> None:
    raw = asyncio.run(_contract_call(server, voice, beta))
    adapter = BETA_EVENTS if beta else GA_EVENTS
    for message in raw:
        adapter.validate_json(message, strict=True)
    events = [json.loads(m) for m in raw]
    kinds = types(events)
    errors = [e["error"]["code"] for e in events if e["type"] == "error"]
    assert errors[:2] == [TEXT_ITEM_CODE, "item_retrieve_invalid_item_id"], errors
    assert set(errors[2:]) <= {"response_cancel_not_active"}, errors
    added = "conversation.item.created" if beta else "conversation.item.added"
    assert ("conversation.item.done" in kinds) is not beta
    users = [e["item"] for e in events if e["type"] == added and e["item"]["role"] == "user"]
    assert len(users) >= 3, kinds  # the speech, the created item, the commit
    truncated = next(e for e in events if e["type"] == "conversation.item.truncated")
    assert truncated["audio_end_ms"] == 100
    assert kinds.index("conversation.item.retrieved") < kinds.index("conversation.item.deleted")
    done = [e["response"] for e in events if e["type"] == "response.done"]
    assert any(r["status"] == "cancelled" for r in done), done  # the truncated one
    delta = "response.audio.delta" if beta else "response.output_audio.delta"
    for r in done:
        _in_order(events, r["id"], beta)
        n = sum(e["type"] == delta and e["response_id"] == r["id"] for e in events)
        assert r["usage"]["output_tokens"] == 4 * n and r["usage"]["input_tokens"] > 0, r


async def _pausing_call(
    server: ServerProcess, voice: np.ndarray
) -> tuple[list[dict[str, Any]], int]:
    """Speech, then nothing sent for 7 s (the server's idle timeout is 5 s), then more."""
    async with _client(server, beta=False).connect(model="duplex-test") as conn:
        c = Client(conn)
        await c.stream(voice)
        await asyncio.sleep(7.0)
        during = len(c.raw)
        await c.stream(voice[: RATE // 2])
        await conn.input_audio_buffer.clear()
        await asyncio.sleep(0.5)
        return await c.close(), during


def test_a_client_that_pauses_its_audio_keeps_its_session(
    server: ServerProcess, voice: np.ndarray
) -> None:
    """Push-to-talk: a client that stops sending is not closed for idling (OpenAI keeps such a
    session open): its line is silence on the clock, and the agent goes on talking meanwhile."""
    events, during = asyncio.run(_pausing_call(server, voice))
    kinds = types(events)
    assert "error" not in kinds, [e for e in events if e["type"] == "error"]
    assert kinds[:during].count("response.output_audio.delta") >= 10, kinds[:during]
    assert "input_audio_buffer.cleared" in kinds[during:]  # still answering
