"""Three frameworks that no one here wrote, pointed at `/v1/realtime` as a new user would:
the openai-agents SDK (`RealtimeAgent` + `RealtimeRunner`), pipecat (`OpenAIRealtimeLLMService`
in a pipeline with its context aggregators) and LiveKit Agents (an `AgentSession` on the OpenAI
realtime plugin). In each call the caller talks over the agent (the random-weight model
babbles), so the framework interrupts it and truncates the agent's item; the call holds and no
error event reaches the framework. The versions are pinned in pyproject.toml's `frameworks`
extra; `make test-frameworks` installs them and runs this file, which skips a test whose
framework is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from streaming.encodings import encode_audio
from streaming.resample import resample_whole
from tests.conftest import ServerProcess, read_wav, speak

RATE = 24000  # what the three use with OpenAI: pcm16 24 kHz
PIECE = RATE // 10  # 100 ms a send, as a microphone client


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The caller's line: silence, then three sentences with pauses between them, each
    (after the first) into the agent's talk, then 3 s for the agent to answer the last."""
    path = speak(
        "Hello, can you hear me? I would like to book a table.",
        tmp_path_factory.mktemp("fw") / "v.wav",
    )
    pcm, rate = read_wav(path)
    voice = resample_whole(pcm, rate, RATE)
    pause = np.zeros(2 * RATE)
    x = np.concatenate([np.zeros(RATE), voice, pause, voice, pause, voice, np.zeros(3 * RATE)])
    return encode_audio(x.astype(np.float32), "pcm16")


async def _paced(line: bytes) -> AsyncIterator[bytes]:
    """`line` in 100 ms pieces, each when it is due (real time)."""
    loop = asyncio.get_running_loop()
    t0, step = loop.time(), 2 * PIECE
    for i in range(0, len(line), step):
        yield line[i : i + step]
        await asyncio.sleep(max(0.0, t0 + (i + step) / (2 * RATE) - loop.time()))


def _needs(module: str) -> pytest.MarkDecorator:
    """Skip, before the server is started, where the framework is not installed."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    return pytest.mark.skipif(not found, reason=f"{module} is not installed: make test-frameworks")


def _ws_url(server: ServerProcess) -> str:
    return server.http.replace("http://", "ws://") + "/v1/realtime"


# -- openai-agents -----------------------------------------------------------------------------


async def _agents_call(server: ServerProcess, line: bytes) -> list[Any]:
    from agents.realtime import RealtimeAgent, RealtimeRunner

    agent = RealtimeAgent(name="assistant", instructions="Answer the caller.")
    runner = RealtimeRunner(
        agent, config={"tracing_disabled": True, "model_settings": {"model_name": "duplex"}}
    )
    session = await runner.run(
        model_config={"url": _ws_url(server) + "?model=duplex", "api_key": "unused-on-loopback"}
    )
    events: list[Any] = []
    async with session:

        async def listen() -> None:
            async for event in session:
                events.append(event)

        listener = asyncio.create_task(listen())
        async for piece in _paced(line):
            await session.send_audio(piece)
        await asyncio.sleep(0.5)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    return events


@_needs("agents.realtime")
def test_openai_agents_sdk_holds_a_call_with_barge_ins(
    server: ServerProcess, script: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK truncates the item it was playing at each `speech_started` (then retrieves
    it): answered, no `error` event reaches the app, and its history holds the caller's and
    the agent's items."""
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")  # nothing leaves the machine
    events = asyncio.run(_agents_call(server, script))
    kinds = [e.type for e in events]
    assert "error" not in kinds, [e for e in events if e.type == "error"]
    raw = [e.data.data["type"] for e in events if e.type == "raw_model_event"
           and e.data.type == "raw_server_event"]  # fmt: skip
    assert "error" not in raw
    assert kinds.count("audio_interrupted") >= 1 and "conversation.item.truncated" in raw, kinds
    assert "conversation.item.retrieved" in raw
    history = [e.history for e in events if e.type == "history_updated"][-1]
    roles = {item.role for item in history if item.type == "message"}
    assert roles == {"user", "assistant"}, history


# -- pipecat -----------------------------------------------------------------------------------


async def _pipecat_call(
    server: ServerProcess, line: bytes
) -> tuple[list[Any], list[str], list[Any]]:
    """The caller's line into a pipeline of the user aggregator, the realtime service and the
    assistant aggregator; what came out of the service, the client events it sent, and the
    errors the pipeline saw."""
    from pipecat.frames.frames import (
        ErrorFrame,
        Frame,
        InputAudioRawFrame,
        InterruptionFrame,
        LLMRunFrame,
        StartFrame,
        TTSAudioRawFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
    from pipecat.workers.runner import WorkerRunner

    done = asyncio.Event()
    errors: list[Any] = []

    class Microphone(FrameProcessor):
        """The caller's line, in real time from the pipeline's start."""

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, ErrorFrame):
                errors.append(frame)
            await self.push_frame(frame, direction)
            if isinstance(frame, StartFrame):
                self.create_task(self._talk())

        async def _talk(self) -> None:
            async for piece in _paced(line):
                await self.push_frame(
                    InputAudioRawFrame(audio=piece, sample_rate=RATE, num_channels=1)
                )
            done.set()

    out: list[Any] = []

    class Speaker(FrameProcessor):
        """What the service sends on: the agent's audio and the interruptions."""

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame | InterruptionFrame):
                out.append(frame)
            await self.push_frame(frame, direction)

    llm = OpenAIRealtimeLLMService(api_key="unused-on-loopback", base_url=_ws_url(server))
    sent: list[str] = []
    send = llm.send_client_event

    async def send_and_note(event: Any) -> None:
        sent.append(event.type)
        await send(event)

    llm.send_client_event = send_and_note  # type: ignore[method-assign]
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(context)
    pipeline = Pipeline([Microphone(), aggregators.user(), llm, Speaker(), aggregators.assistant()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )

    @worker.event_handler("on_pipeline_error")
    async def on_error(_: Any, frame: Any) -> None:
        errors.append(frame)

    await worker.queue_frames([LLMRunFrame()])
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await done.wait()
    await asyncio.sleep(0.5)
    await worker.cancel()
    await running
    return out, sent, errors


@_needs("pipecat.services.openai.realtime.llm")
@pytest.mark.filterwarnings("ignore:'audioop' is deprecated:DeprecationWarning")  # pipecat's own
def test_pipecat_holds_a_call_with_barge_ins(server: ServerProcess, script: bytes) -> None:
    """pipecat truncates the audio response it is playing when the server hears the caller
    (and interrupts the pipeline): answered, no error frame (pipecat ends its session on an
    error event), and the agent's audio goes on after it."""
    out, sent, errors = asyncio.run(_pipecat_call(server, script))
    assert errors == []
    kinds = [type(f).__name__ for f in out]
    assert "conversation.item.truncate" in sent and "response.create" in sent, sent
    first_cut = kinds.index("InterruptionFrame")
    assert "TTSAudioRawFrame" in kinds[:first_cut] and "TTSAudioRawFrame" in kinds[first_cut:]


# -- LiveKit Agents ----------------------------------------------------------------------------


async def _livekit_call(
    server: ServerProcess, line: bytes
) -> tuple[list[dict[str, Any]], list[str], list[Any], list[str]]:
    """An AgentSession on the OpenAI realtime plugin, its audio in from the caller's line and
    out to a speaker that plays on the wall clock (so an interruption knows how much was
    played): the server's events, the client's, the session's errors and what it played."""
    from livekit import rtc
    from livekit.agents import Agent, AgentSession, utils
    from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities
    from livekit.plugins import openai as lk_openai

    played: list[str] = []  # what the speaker did: "audio" (a frame), "cleared"

    class Microphone(AudioInput):
        def __init__(self) -> None:
            super().__init__(label="line")
            self.frames = utils.aio.Chan[rtc.AudioFrame]()

        async def __anext__(self) -> rtc.AudioFrame:
            return await self.frames.__anext__()

    class Speaker(AudioOutput):
        def __init__(self) -> None:
            caps = AudioOutputCapabilities(pause=False)
            super().__init__(label="speaker", capabilities=caps, sample_rate=RATE)
            self._started, self._queued = 0.0, 0.0  # playback start, seconds queued
            self._end: asyncio.TimerHandle | None = None

        async def capture_frame(self, frame: rtc.AudioFrame) -> None:
            await super().capture_frame(frame)
            played.append("audio")
            if not self._queued:
                self._started = time.monotonic()
                self.on_playback_started(created_at=time.time())
            self._queued += frame.duration

        def flush(self) -> None:
            super().flush()
            if self._queued:
                left = max(0.0, self._queued - (time.monotonic() - self._started))
                loop = asyncio.get_running_loop()
                self._end = loop.call_later(left, self._finished, self._queued, False)

        def clear_buffer(self) -> None:
            played.append("cleared")
            if self._queued:
                if self._end is not None:
                    self._end.cancel()
                position = min(self._queued, time.monotonic() - self._started)
                self._finished(position, True)

        def _finished(self, position: float, interrupted: bool) -> None:
            self._queued, self._end = 0.0, None
            self.on_playback_finished(playback_position=position, interrupted=interrupted)

    server_events: list[dict[str, Any]] = []
    client_events: list[str] = []
    model = lk_openai.realtime.RealtimeModel(
        model="duplex", base_url=f"{server.http}/v1", api_key="unused-on-loopback"
    )
    open_session = model.session

    def session_noted(**options: Any) -> Any:
        rt = open_session(**options)
        rt.on("openai_server_event_received", server_events.append)
        rt.on("openai_client_event_queued", lambda ev: client_events.append(ev["type"]))
        return rt

    model.session = session_noted  # type: ignore[method-assign]
    errors: list[Any] = []
    async with utils.http_context.open():  # as outside LiveKit's worker
        session: AgentSession[None] = AgentSession(llm=model)
        microphone = Microphone()
        session.input.audio, session.output.audio = microphone, Speaker()
        session.on("error", errors.append)
        await session.start(Agent(instructions="Answer the caller."))
        async for piece in _paced(line):
            samples = len(piece) // 2
            microphone.frames.send_nowait(rtc.AudioFrame(piece, RATE, 1, samples))
        await asyncio.sleep(0.5)
        await session.aclose()
    return server_events, client_events, errors, played


@_needs("livekit.plugins.openai")
def test_livekit_agents_holds_a_call_with_barge_ins(server: ServerProcess, script: bytes) -> None:
    """LiveKit's session interrupts the agent when the server hears the caller (it cancels the
    response) and truncates (or, when nothing was played, deletes) the agent's item: answered,
    no error reaches the session, and the agent is heard again after it."""
    server_events, client_events, errors, played = asyncio.run(_livekit_call(server, script))
    assert errors == [], errors
    kinds = [e["type"] for e in server_events]
    # It cancels twice at a barge-in: the second finds no response, as it would at OpenAI,
    # whose words for that ("Cancellation failed") it knows to skip; nothing else is an error.
    refused = [e["error"] for e in server_events if e["type"] == "error"]
    assert all(e["code"] == "response_cancel_not_active" for e in refused), refused
    assert all(e["message"].startswith("Cancellation failed") for e in refused), refused
    cut = {"conversation.item.truncate", "conversation.item.delete"} & set(client_events)
    assert cut, client_events
    answers = {"conversation.item.truncated", "conversation.item.deleted"} & set(kinds)
    assert answers, kinds
    first_cut = played.index("cleared")
    assert "audio" in played[:first_cut] and "audio" in played[first_cut:]
