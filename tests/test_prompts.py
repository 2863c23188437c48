"""Voice prompts (docs/prompts.md): a call's opening in the engine's timeline, cache and sink,
and through the real server: named and uploaded prompts, `GET /v1/prompts`, refusals, the
Realtime `voice`, the Twilio `<Parameter name="prompt">` and `duplex call --prompt`."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from clients.call import main as call_main
from clients.client import upload_prompt
from clients.measure.twilio_sim import media_message, start_message
from model.checkpoint import init_random_checkpoint, load_checkpoint
from model.engines.api import StepRequest
from model.engines.torch.engine import TorchEngine
from model.format import Frame, format_timeline
from model.sampling import SamplingParams
from server.adapters.realtime_options import ClientError, RealtimeOptions
from server.prompts import PromptLibrary
from server.settings import Settings
from streaming.codecs import load_codec
from streaming.encodings import decode_audio
from streaming.espeak import synthesize
from streaming.resample import resample_whole
from streaming.wire import AudioFrame, StartMessage
from tests.conftest import ServerProcess, assert_no_traceback, start_server, stop_server

SILENCE: Frame = (0,)


def frames(n: int, seed: int) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [(int(u),) for u in rng.integers(1, 1024, n)]


def chunks(n: int, seed: int) -> list[list[Frame]]:
    """n user chunks of two frames, each held for two (as speech units often are)."""
    rng = np.random.default_rng(seed)
    return [[(int(a),)] * 2 + [(int(b),)] * 2 for a, b in rng.integers(1, 1024, (n, 2))]


def logits_now(engine: TorchEngine, sid: str) -> torch.Tensor:
    """The next-token logits the cache gives after the timeline plus one `[S1]`."""
    tl = engine.timeline(sid)
    rows: list[list[int]] = [[] for _ in range(engine.cache.live)]
    rows[engine.sessions[sid].row] = tl.tokens[tl.cached :] + [engine.fmt.s1]
    return engine.decoder.forward(engine.cache, rows)[engine.sessions[sid].row]


# -- the engine ------------------------------------------------------------------------------


def test_an_opening_comes_before_chunk_0_and_the_calls_numbering_stays(checkpoint: Path) -> None:
    """Two calls with the same seed and audio (one estimate replaced each step), one opened
    with a prompt: both number chunks, replacements and unheard frames from the call's own
    chunk 0; the prompt is agent speech over user silence in the timeline and in the cache."""
    config, llama = load_checkpoint(checkpoint)
    engine = TorchEngine(config, llama, max_sessions=2, max_rollback_chunks=3, estimate_units=0)
    assert (engine.info.sink_tokens, engine.info.max_opening_frames) == (64, 48)  # unchanged
    prompt = frames(30, 1)  # 7.5 chunks: the last one is filled with silence
    engine.add_session("plain", SamplingParams(seed=5))
    engine.add_session("voiced", SamplingParams(seed=5), prompt)
    audio = chunks(8, 2)
    for k in range(8):
        real = {k - 2: audio[k - 2]} if k >= 2 else {}
        unheard = [(4, 6)] if k == 4 else []  # call frames 4 and 5: chunk 1's first half
        results = engine.step([StepRequest(s, real, unheard=unheard) for s in ("plain", "voiced")])
        for r in results.values():
            assert r.chunk == k and len(r.frames) == 4
            assert r.replaced == ([k - 2] if k >= 2 else [])
            assert (r.unheard_silenced, r.unheard_beyond_reach) == ((2, 0) if k == 4 else (0, 0))
    tl = engine.timeline("voiced")
    assert tl.opening == 8 and len(tl.agent) == 8 + 8 and len(tl.user) == 8 + 7
    assert all(a != b for a, b in zip(prompt, prompt[1:], strict=False))  # no run to dedup
    assert sum(tl.agent[:7], []) == prompt[:28]  # what the model hears, in full
    # the last chunk, filled with silence, as the chunk format spreads its 3 new frames
    assert tl.agent[7] == [prompt[28], prompt[28], prompt[29], SILENCE]
    assert tl.user[:8] == [[SILENCE] * 4] * 8 and all(tl.user_real[:8])
    assert tl.user[8:14] == audio[:6]  # the call's user chunks, real, after the opening
    assert tl.tokens == format_timeline(engine.fmt, tl.agent, tl.user)
    ref = llama(torch.tensor([tl.tokens + [engine.fmt.s1]])).logits[0, -1].float()
    torch.testing.assert_close(logits_now(engine, "voiced"), ref, atol=1e-4, rtol=1e-4)
    plain = engine.timeline("plain")
    assert plain.opening == 0 and len(plain.agent) == 8
    with pytest.raises(ValueError, match="does not fit the attention sink"):
        engine.add_session("long", SamplingParams(seed=0), frames(49, 3))


def test_the_sink_keeps_the_opening_after_the_window_slid_past(tmp_path: Path) -> None:
    """A sink grown to hold the longest opening (21 tokens, the checkpoint's is 16) keeps the
    prompt attended once the window has slid far past it: the cache's logits equal a
    one-layer reference that sees the opening's tokens (at the sink's moved positions) and
    the window, and differ from a call without the prompt."""
    init_random_checkpoint(
        tmp_path, seed=3, layers=1, hidden=64, heads=2, kv_heads=1,
        context_tokens=128, sink_tokens=16,
    )  # fmt: skip
    config, llama = load_checkpoint(tmp_path)
    engine = TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=1, opening_frames=16)
    sink = engine.cache.sink
    assert sink == engine.info.sink_tokens == 1 + 4 * 5 and engine.info.max_opening_frames == 16
    prompt = [(u,) for u in range(1, 17)]  # every frame new: the most tokens it can take
    engine.add_session("voiced", SamplingParams(seed=1, temperature=0.0), prompt)
    assert len(engine.timeline("voiced").tokens) == sink
    audio = chunks(80, 4)
    for k in range(80):  # real audio and agent silence (no decoding): the window slides on
        engine.step([StepRequest("voiced", {k - 1: audio[k - 1]} if k else {}, silent=True)])
    engine.step([StepRequest("voiced", {79: audio[79]})])  # fed through the ring in pieces
    tl = engine.timeline("voiced")
    row = engine.sessions["voiced"].row
    q = len(tl.tokens)  # the next token's position
    assert q > 2 * config.context_tokens
    assert engine.cache.positions[row, :sink].tolist() == list(range(sink))
    got = logits_now(engine, "voiced")
    shift = engine.cache.sink_shift[row]
    window = list(range(q - engine.cache.window + 1, q + 1))
    seq = tl.tokens + [engine.fmt.s1]
    tokens = seq[:sink] + [seq[p] for p in window]
    positions = [shift + j for j in range(sink)] + window
    with torch.inference_mode():
        ref = llama(torch.tensor([tokens]), position_ids=torch.tensor([positions])).logits[0, -1]
        blank = list(seq[:1]) + [engine.fmt.s0] * (sink - 1) + [seq[p] for p in window]
        other = llama(torch.tensor([blank]), position_ids=torch.tensor([positions])).logits[0, -1]
    torch.testing.assert_close(got, ref.float(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, other.float(), atol=1e-3)


# -- the prompt library ----------------------------------------------------------------------


def test_the_library_refuses_what_it_cannot_use_at_start(tmp_path: Path) -> None:
    codec = load_codec({"type": "codec2-units", "codebook": "builtin:codec2_units_1024"}, None)
    speech = synthesize("Hello, I am the agent.")
    sf.write(tmp_path / "hello.wav", speech, 22050)
    library = PromptLibrary(codec, 48, tmp_path)
    (prompt,) = library.prompts.values()
    assert prompt.rate == 22050 and len(prompt.frames) == -(-round(prompt.seconds * 8000) // 320)
    assert library.listing()["prompts"] == [
        {"name": "hello", "seconds": round(prompt.seconds, 3), "rate": 22050}
    ]
    sf.write(tmp_path / "long.flac", np.tile(speech, 3), 22050)
    with pytest.raises(ValueError, match=r"long.flac: a voice prompt of .* s is too long"):
        PromptLibrary(codec, 48, tmp_path)
    with pytest.raises(ValueError, match="is not a directory"):
        PromptLibrary(codec, 48, tmp_path / "hello.wav")


# -- through the server ----------------------------------------------------------------------

RATE = 16000
LOW_S = 1.5  # the named prompts' length (the default sink holds 1.92 s)


@pytest.fixture(scope="module")
def prompt_server(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server with two named prompts, a low and a high voice."""
    folder = tmp_path_factory.mktemp("prompts")
    for name, pitch in (("low", 10), ("high", 90)):
        pcm = synthesize("Hello, how can I help you today?", pitch=pitch)
        sf.write(folder / f"{name}.wav", _exactly(pcm, LOW_S * 22050), 22050)
    log = tmp_path_factory.mktemp("prompt-server") / "server.log"
    srv = start_server(checkpoint, log, "--max-sessions", "4", "--prompts-dir", str(folder))
    yield srv
    stop_server(srv)


def _exactly(x: np.ndarray, n: float) -> np.ndarray:
    """`x` cut or padded with silence to `n` samples."""
    return np.pad(x, (0, max(0, round(n) - len(x))))[: round(n)]


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


async def _native_call(url: str, pcm: np.ndarray, prompt: dict[str, Any] | None) -> dict[str, Any]:
    """One native call at real-time pace; the agent's audio frames and the `stats`."""
    frame = RATE * 20 // 1000
    start: dict[str, Any] = {"type": "start", "audio": {"sample_rate": RATE, "frame_ms": 20}}
    if prompt is not None:
        start["prompt"] = prompt
    got: dict[str, Any] = {"chunks": []}
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps(start))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready

        async def send() -> None:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for seq, at in enumerate(range(0, len(pcm), frame)):
                await asyncio.sleep(max(0.0, t0 + at / RATE - loop.time()))
                last = at + frame >= len(pcm)
                await ws.send(AudioFrame(seq, at, _pcm16(pcm[at : at + frame]), last).pack())
            await ws.send(json.dumps({"type": "end", "total_samples": len(pcm)}))

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(len(pcm) / RATE + 6):
                async for message in ws:
                    if isinstance(message, bytes):
                        f = AudioFrame.unpack(message)
                        got["chunks"].append((f.seq, f.first_sample, len(f.payload) // 2))
                    elif json.loads(message)["type"] == "stats":
                        got["stats"] = json.loads(message)
        except ConnectionClosed:
            pass
        await sender
        got["close"] = ws.close_code
    return got


def test_get_prompts_lists_the_named_prompts(prompt_server: ServerProcess) -> None:
    body = httpx.get(f"{prompt_server.http}/v1/prompts").json()
    assert [(p["name"], p["rate"]) for p in body["prompts"]] == [("high", 22050), ("low", 22050)]
    assert all(abs(p["seconds"] - LOW_S) < 1e-3 for p in body["prompts"])
    assert body["max_seconds"] == 1.92
    assert body["upload"] == {"encoding": "pcm16", "sample_rates": [8000, 16000, 24000, 48000]}


def test_native_calls_with_a_prompt_are_time_aligned_as_without(
    prompt_server: ServerProcess,
) -> None:
    """A call with a named prompt, one with an uploaded prompt and one with none, at once:
    each gets its agent chunks numbered from 0, the first at sample 0, one after the other
    on the clock to the input's end (a client cuts them to its length)."""
    speech = resample_whole(synthesize("What time is it?"), 22050, RATE)
    pcm = _exactly(np.concatenate([np.zeros(RATE // 2, np.float32), speech]), 1.7 * RATE)
    upload = _exactly(resample_whole(synthesize("I speak like this."), 22050, 8000), 12000)
    uploaded = {"audio": base64.b64encode(_pcm16(upload)).decode(), "sample_rate": 8000}
    mark = prompt_server.log_mark()

    async def all_three() -> list[dict[str, Any]]:
        prompts = [None, {"name": "low"}, uploaded]
        return await asyncio.gather(*(_native_call(prompt_server.url, pcm, p) for p in prompts))

    for got in asyncio.run(all_three()):
        assert got["close"] == 1000
        chunks = got["chunks"]
        assert [seq for seq, _, _ in chunks] == list(range(len(chunks)))
        assert chunks[0][1] == 0
        for (_, at, n), (_, nxt, _) in zip(chunks, chunks[1:], strict=False):
            assert nxt == at + n
        end = chunks[-1][1] + chunks[-1][2]
        assert 0 <= end - len(pcm) < 2 * round(0.16 * RATE)
        ticks = -(-len(pcm) // round(0.16 * RATE))
        assert got["stats"]["frames_out"] == got["stats"]["ticks"] in (ticks, ticks + 1)
    log = prompt_server.log_since(mark)
    assert re.search(r"opens with voice prompt low \(38 frames\)", log), log  # 1.5 s
    assert re.search(r"opens with voice prompt uploaded \(38 frames\)", log), log
    assert_no_traceback(log)


async def _refused(url: str, prompt: Any) -> tuple[dict[str, Any], int | None]:
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "prompt": prompt}))
        error = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return error, ws.close_code


def _b64(n: int) -> str:
    return base64.b64encode(b"\x00\x01" * n).decode()


@pytest.mark.parametrize(
    ("prompt", "code", "says"),
    [
        ({"name": "alloy"}, "invalid_message", r"no voice prompt 'alloy' on this server; it has "
         r"\['high', 'low'\]"),
        ({"audio": _b64(8000 * 2), "sample_rate": 8000}, "invalid_message",
         r"a voice prompt of 2.00 s is too long: this server takes at most 1.92 s"),
        ({"audio": "not base64!", "sample_rate": 8000}, "invalid_message", "not valid base64"),
        ({"audio": "AAAA", "sample_rate": 8000}, "invalid_message", "PCM16 is 2 bytes a sample"),
        ({"audio": _b64(800), "sample_rate": 44100}, "unsupported_audio", "44100 Hz"),
        ({"name": "low", "audio": _b64(10), "sample_rate": 8000}, "invalid_message",
         "either a `name` or `audio`"),
        ({"audio": _b64(10)}, "invalid_message", "`audio` and `sample_rate` go together"),
        ({"name": ""}, "invalid_message", "prompt.name"),
    ],
    ids=["unknown", "too-long", "base64", "odd-bytes", "rate", "both", "no-rate", "empty-name"],
)  # fmt: skip
def test_bad_prompts_are_refused_with_a_clear_error(
    prompt_server: ServerProcess, prompt: dict[str, Any], code: str, says: str
) -> None:
    error, close = asyncio.run(_refused(prompt_server.url, prompt))
    assert error["type"] == "error" and error["code"] == code, error
    assert re.search(says, error["message"]), error["message"]
    assert close == (1003 if code == "unsupported_audio" else 1007)


async def _realtime_open(url: str, update: dict[str, Any]) -> dict[str, Any]:
    """session.update, then one audio append admits the call; the `session.updated`."""
    async with connect(url.replace("/v1/duplex", "/v1/realtime")) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        updated = json.loads(await ws.recv())
        audio = base64.b64encode(bytes(4800)).decode()  # 100 ms at 24 kHz
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        await asyncio.sleep(0.5)  # admitted: its first ticks run
        return dict(updated)


def test_realtime_voice_selects_a_named_prompt(prompt_server: ServerProcess) -> None:
    """GA `audio.output.voice` and beta `voice` name a prompt; OpenAI's own names (sent by
    default) open the call in the model's voice, logged once whatever the number of calls."""
    mark = prompt_server.log_mark()
    ga = {"type": "realtime", "audio": {"output": {"voice": "high"}}}
    updated = asyncio.run(_realtime_open(prompt_server.url, ga))
    assert updated["type"] == "session.updated", updated
    assert updated["session"]["audio"]["output"]["voice"] == "high"
    assert asyncio.run(_realtime_open(prompt_server.url, {"voice": "low"}))["session"]["voice"] == (
        "low"
    )
    for _ in range(2):
        updated = asyncio.run(_realtime_open(prompt_server.url, {"voice": "alloy"}))
        assert updated["session"]["voice"] == "alloy"
    log = prompt_server.log_since(mark)
    assert len(re.findall(r"opens with voice prompt high", log)) == 1, log
    assert len(re.findall(r"opens with voice prompt low", log)) == 1, log
    assert len(re.findall(r"voice 'alloy' is no voice prompt of this server", log)) == 1, log
    assert "opens with voice prompt alloy" not in log
    assert_no_traceback(log)


def test_a_realtime_voice_is_a_name_read_until_the_call_opens() -> None:
    """A custom voice object names its id; once the call opened, a new voice changes nothing
    (OpenAI's: no voice change after the model has spoken); a voice that is no name is an
    error that keeps the connection."""
    server = Settings()
    ga = RealtimeOptions().updated({"audio": {"output": {"voice": {"id": "low"}}}}, server)
    assert ga.voice == "low"
    assert ga.updated({"voice": "high"}, server, opened=True).voice == "low"
    assert ga.updated({"voice": None}, server).voice is None
    with pytest.raises(ClientError, match="voice 5: use a name"):
        RealtimeOptions().updated({"voice": 5}, server)


async def _twilio(url: str, prompt: str) -> tuple[int | None, str]:
    sid = "MZ" + "4" * 32
    async with connect(url.replace("/v1/duplex", "/v1/telephony/twilio")) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps(start_message(sid, "CA9", custom_parameters={"prompt": prompt})))
        for i in range(10):
            await ws.send(json.dumps(media_message(sid, 2 + i, i + 1, 20 * i, b"\xff" * 160)))
        await ws.send(json.dumps({"event": "stop", "sequenceNumber": "99", "streamSid": sid}))
        async with asyncio.timeout(5):
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
        return ws.close_code, ws.close_reason or ""


def test_twilio_prompt_parameter_selects_a_named_prompt(prompt_server: ServerProcess) -> None:
    mark = prompt_server.log_mark()
    assert asyncio.run(_twilio(prompt_server.url, "low"))[0] == 1000
    assert asyncio.run(_twilio(prompt_server.url, "nope")) == (1007, "invalid_message")
    log = prompt_server.log_since(mark)
    assert "opens with voice prompt low" in log
    assert "no voice prompt 'nope' on this server; it has ['high', 'low']" in log, log


# -- the client: `upload_prompt` and `duplex call --prompt / --prompt-file` ------------------


@pytest.mark.parametrize(
    ("seconds", "rate", "sent_at"),
    [(1.0, 22050, 16000), (1.9, 22050, 8000), (0.4, 48000, 48000), (0.5, 6000, 8000)],
)
def test_an_upload_goes_at_the_highest_rate_whose_start_fits(
    seconds: float, rate: int, sent_at: int
) -> None:
    """Never above the audio's own rate (8 kHz at least); 1.9 s fits a 64 KiB `start` at
    8 kHz only (16 kHz would be 81 KB of base64)."""
    pcm = np.sin(np.arange(round(seconds * rate)) * 0.05).astype(np.float32) * 0.5
    prompt = upload_prompt(pcm, rate)
    assert prompt.sample_rate == sent_at
    assert prompt.audio is not None
    got = decode_audio(base64.b64decode(prompt.audio), "pcm16")
    np.testing.assert_allclose(got, resample_whole(pcm, rate, sent_at), atol=1 / 32767)
    start = StartMessage.model_validate(
        {
            "type": "start",
            "audio": {"sample_rate": 48000, "frame_ms": 20},
            "sampling": {"eagerness": "high", "temperature": 0.7, "top_k": 100, "seed": 2**31},
            "prompt": prompt,
        }
    )
    assert len(start.model_dump_json(exclude_none=True)) <= 65536


def test_an_upload_that_fits_no_start_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match=r"of 4.00 s does not fit in a `start` of 65536 bytes, "
                       r"even at 8000 Hz"):  # fmt: skip
        upload_prompt(np.zeros(32000, np.float32), 8000)
    assert upload_prompt(np.zeros(8000, np.float32), 8000, max_message_bytes=23000).audio
    with pytest.raises(ValueError, match="of 1.00 s does not fit in a `start` of 20000 bytes"):
        upload_prompt(np.zeros(8000, np.float32), 8000, max_message_bytes=20000)
    with pytest.raises(ValueError, match="at least one sample"):
        upload_prompt(np.zeros(0, np.float32), 8000)


@pytest.fixture(scope="module")
def caller_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s of a caller's speech at 22.05 kHz."""
    path = tmp_path_factory.mktemp("caller") / "caller.wav"
    sf.write(path, _exactly(synthesize("What time is it?"), 22050), 22050)
    return path


def _prompt_file(tmp_path: Path, seconds: float) -> Path:
    path = tmp_path / f"voice_{seconds}.flac"
    speech = synthesize("I speak like this, with this voice of mine.", pitch=20)
    sf.write(path, _exactly(speech, seconds * 22050), 22050)
    return path


@pytest.mark.parametrize("how", ["name", "file"])
def test_duplex_call_opens_with_a_prompt(
    prompt_server: ServerProcess,
    caller_wav: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    """`--prompt low` and `--prompt-file` (1.5 s at 22.05 kHz, uploaded at 16 kHz): the server
    opens the call with it (38 frames of 40 ms) and the output is as long as the input."""
    prompt = (
        ["--prompt", "low"]
        if how == "name"
        else ["--prompt-file", str(_prompt_file(tmp_path, 1.5))]
    )
    out = tmp_path / "agent.wav"
    mark = prompt_server.log_mark()
    argv = ["--url", prompt_server.url, "--input", str(caller_wav), "--output", str(out)]
    assert call_main([*argv, "--tail-s", "0", "--json", *prompt]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames_received"] == summary["ticks"] > 0
    info = sf.info(str(out))
    assert (info.samplerate, info.frames) == (22050, 22050)
    name = "low" if how == "name" else "uploaded"
    log = prompt_server.log_since(mark)
    assert re.search(rf"opens with voice prompt {name} \(38 frames\)", log), log
    assert_no_traceback(log)


@pytest.mark.parametrize(
    ("prompt", "code", "says"),
    [
        (["--prompt", "nope"], 1, "server error invalid_message: no voice prompt 'nope' on this "
         "server; it has ['high', 'low'] (close 1007)"),
        (["--prompt-file", "2.5"], 1, "server error invalid_message: a voice prompt of 2.50 s is "
         "too long: this server takes at most 1.92 s (--prompt-max-s) (close 1007)"),
        (["--prompt-file", "text"], 2, "--prompt-file: cannot read '{path}': Format not "
         "recognised."),
        (["--prompt-file", "4.0"], 2, "--prompt-file: a voice prompt of 4.00 s does not fit in a "
         "`start` of 65536 bytes, even at 8000 Hz: shorten it"),
        (["--prompt", ""], 2, "--prompt '': String should have at least 1 character"),
    ],
    ids=["unknown-name", "too-long", "not-audio", "too-big", "empty-name"],
)  # fmt: skip
def test_a_prompt_duplex_call_cannot_use_is_one_line_and_an_exit_code(
    prompt_server: ServerProcess,
    caller_wav: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    prompt: list[str],
    code: int,
    says: str,
) -> None:
    """Refused by the server (exit 1) or before any call (exit 2): one line, no traceback."""
    option, value = prompt
    if value == "text":
        path = tmp_path / "voice.wav"
        path.write_text("not audio at all")
        value = str(path)
    elif option == "--prompt-file":
        value = str(_prompt_file(tmp_path, float(value)))
    argv = ["--url", prompt_server.url, "--input", str(caller_wav), "--tail-s", "0"]
    assert call_main([*argv, option, value]) == code
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"duplex call: error: {says.format(path=value)}"]
    assert captured.out == ""
