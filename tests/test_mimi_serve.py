"""A checkpoint that speaks Mimi, end to end: `duplex model init --codec mimi`, the server's
checks at start, and whole calls through `duplex serve` on this CPU over `/v1/duplex`,
`/v1/realtime` and the Twilio bridge, with a tiny random Mimi read from its own directory the
way real weights are. Audio goes out at the wire rate, time-aligned and as long as the input,
as with the default model.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clients.call import CallResult, place_frames
from clients.measure.twilio_sim import run_twilio_call
from model.checkpoint import CheckpointError, read_config
from server.cli import main
from streaming.codecs import load_codec
from tests.conftest import (
    ROOT,
    ServerProcess,
    assert_no_traceback,
    end_marker,
    read_wav,
    speak,
    start_server,
    stop_server,
)
from tests.test_e2e_call import call, call_sync, check_stats, rms, wire_length
from tests.test_mimi import VOCAB, K, save_tiny_mimi
from tests.test_realtime import FORMATS, _call, _check_call

TICK_S = 0.16


@pytest.fixture(scope="module")
def mimi_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny Llama over K codebooks of a tiny random Mimi kept inside the
    checkpoint (duplex.json names it relative to it). A 512-token context: a step at K = 8
    is up to 34 sequential forwards, and at 2048 tokens three calls' step takes ~360 ms
    here, over the tick."""
    root = tmp_path_factory.mktemp("mimi_ckpt")
    save_tiny_mimi(root / "mimi")
    argv = ["model", "init", "--out", str(root), "--codec", "mimi", "--codec-dir",
            str(root / "mimi"), "--codebooks", str(K), "--layers", "1", "--hidden", "64",
            "--context", "512", "--sink", "32"]  # fmt: skip
    assert main(argv) == 0
    return root


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int]:
    return read_wav(speak("Hello there, what time is it?", tmp_path_factory.mktemp("v") / "v.wav"))


@pytest.fixture(scope="module")
def mimi_server(
    mimi_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("mimi_server") / "server.log"
    srv = start_server(mimi_checkpoint, log, "--max-sessions", "3", "--idle-timeout-s", "5")
    yield srv
    stop_server(srv)
    assert_no_traceback(srv.log_text())


# -- the checkpoint -----------------------------------------------------------------------------


def test_model_init_writes_what_the_codec_says(mimi_checkpoint: Path, tmp_path: Path) -> None:
    written = json.loads((mimi_checkpoint / "duplex.json").read_text())
    codec = load_codec(written["codec"], mimi_checkpoint)
    assert written["codec"] == {"type": "mimi", "dir": "mimi", "codebooks": K}
    assert (written["codec_sample_rate"], written["frame_ms"], written["chunk_ms"]) == (
        24000, 80.0, 160.0,
    )  # fmt: skip
    assert (written["units_per_frame"], written["n_units"]) == (K, VOCAB)
    assert written["silence_frame"] == list(codec.silence_frame)
    assert written["special_tokens"] == {"S0": K * VOCAB, "S1": K * VOCAB + 1, "BOS": K * VOCAB + 2}
    llama = json.loads((mimi_checkpoint / "config.json").read_text())
    assert llama["vocab_size"] == K * VOCAB + 3
    # a codec directory outside the checkpoint is named by its absolute path
    elsewhere = tmp_path / "elsewhere"
    argv = ["model", "init", "--out", str(elsewhere), "--codec", "mimi", "--codec-dir",
            str(mimi_checkpoint / "mimi"), "--codebooks", "2", "--layers", "1",
            "--hidden", "64"]  # fmt: skip
    assert main(argv) == 0
    config = read_config(elsewhere)
    assert config.codec["dir"] == str((mimi_checkpoint / "mimi").resolve())
    assert config.units_per_frame == 2 and config.silence == codec.silence_frame[:2]


def test_model_init_refuses_what_it_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["model", "init", "--out", str(tmp_path / "m"), "--layers", "1", "--hidden", "64"]
    assert main([*out, "--codec", "mimi"]) == 2
    assert "--codec mimi needs --codec-dir" in capsys.readouterr().err
    assert main([*out, "--codebooks", "4"]) == 2
    assert "are for --codec mimi" in capsys.readouterr().err
    assert main([*out, "--codec", "mimi", "--codec-dir", str(tmp_path / "absent")]) == 1
    assert "no Mimi model at" in capsys.readouterr().err
    assert not (tmp_path / "m" / "duplex.json").exists()


def test_a_default_silence_frame_is_left_unsaid(checkpoint: Path, tmp_path: Path) -> None:
    """Existing checkpoints (no silence_frame) read as before; a bad one is refused."""
    assert "silence_frame" not in json.loads((checkpoint / "duplex.json").read_text())
    assert read_config(checkpoint).silence == (0,)
    bad = tmp_path / "bad"
    bad.mkdir()
    written = json.loads((checkpoint / "duplex.json").read_text())
    (bad / "duplex.json").write_text(json.dumps({**written, "silence_frame": [0, 1]}))
    with pytest.raises(CheckpointError, match="silence_frame .* must hold units_per_frame 1"):
        read_config(bad)


def test_serve_refuses_a_silence_frame_its_codec_does_not_encode(
    mimi_checkpoint: Path, tmp_path: Path
) -> None:
    """One line naming the mismatch, before anything is loaded into the engine."""
    written = json.loads((mimi_checkpoint / "duplex.json").read_text())
    other = [(u + 1) % VOCAB for u in written["silence_frame"]]
    (tmp_path / "duplex.json").write_text(json.dumps({
        **written, "codec": {**written["codec"], "dir": str(mimi_checkpoint / "mimi")},
        "silence_frame": other,
    }))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--model", str(tmp_path), "--port", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (
        f"duplex serve: error: the codec encodes silence as {written['silence_frame']} but "
        f"duplex.json says silence_frame {other}"
    )


# -- whole calls ------------------------------------------------------------------------------


def check_mimi_call(result: CallResult) -> None:
    """`check_stats`, with room for the slower steps of K = 8: the agent frames are one per
    tick, and the call runs a tick per chunk of its input and up to two more, those whose
    steps started (up to a lead, here as much as 125 ms, before their chunk) before the
    call's `end` came in."""
    check_stats(result.stats)
    s = result.stats
    assert (s.frames_in, s.samples_in) == (result.frames_sent, result.samples_sent)
    assert result.frames_received == s.ticks
    chunks = math.ceil(result.samples_sent / result.ready.chunk_samples)
    assert chunks <= s.ticks <= chunks + 2, (s.ticks, chunks)


@pytest.mark.parametrize(
    ("encoding", "rate"), [("pcm16", 16000), ("pcm16", 48000), ("mulaw", 8000)]
)
def test_native_call(
    mimi_server: ServerProcess, voice: tuple[np.ndarray, int], encoding: str, rate: int
) -> None:
    """Mimi's 24 kHz to each wire rate (16 kHz through the two-stage resampler): one frame per
    tick, contiguous from sample 0, on the clock, and as long as the input."""
    pcm, in_rate = voice[0][: int(1.2 * voice[1])], voice[1]
    result = call_sync(mimi_server.url, pcm, in_rate, encoding=encoding, wire_rate=rate)
    ready = result.ready
    assert (ready.codec_sample_rate, ready.sample_rate) == (24000, rate)
    c = ready.chunk_samples
    assert c == round(rate * TICK_S)
    n_wire = wire_length(len(pcm), in_rate, rate)
    assert result.samples_sent == n_wire == len(result.output)
    check_mimi_call(result)
    frames = sorted(result.frames, key=lambda f: f.seq)
    assert [f.seq for f in frames] == list(range(len(frames))) and frames[0].first_sample == 0
    audio = frames[: len(frames) - end_marker(frames)]
    delay = c - len(audio[0].pcm)  # the resampler's, compensated in chunk 0
    assert 0 <= delay < c // 8
    for f in audio[1:]:
        assert len(f.pcm) == c and f.first_sample == f.seq * c - delay
    assert audio[-1].first_sample + c >= n_wire - delay  # the last chunk reaches the input's end
    np.testing.assert_array_equal(place_frames(frames, n_wire), result.output)
    assert rms(result.output) > 1e-3  # the random model babbles


def test_concurrent_calls_share_the_batched_codec(
    mimi_server: ServerProcess, voice: tuple[np.ndarray, int]
) -> None:
    """Three calls of different lengths (joining the codec's batch rows at once, leaving one
    by one): each is as long as its input."""
    pcm, rate = voice
    lengths = [0.8, 1.1, 1.4]

    async def calls() -> list[CallResult]:
        return await asyncio.gather(
            *(call(mimi_server.url, pcm[: int(s * rate)], rate) for s in lengths)
        )

    for s, result in zip(lengths, asyncio.run(calls()), strict=True):
        n = wire_length(int(s * rate), rate, 16000)
        assert len(result.output) == n == result.samples_sent
        check_mimi_call(result)
        assert rms(result.output) > 1e-3


def test_realtime_call(mimi_server: ServerProcess, voice: tuple[np.ndarray, int]) -> None:
    """The OpenAI Realtime endpoint at 24 kHz pcm16 (no resampling against Mimi): its events
    as with the default model, each delta one tick of audio at the wire rate."""
    events, start, end = asyncio.run(_call(mimi_server, voice, "pcm16", False))
    _check_call(events, "pcm16", False, (start, end))  # as with the default model
    deltas = [e for e in events if e.type == "response.output_audio.delta"]
    rate, _, decode = FORMATS["pcm16"]
    chunk = round(rate * TICK_S)
    sizes = [len(decode(base64.b64decode(d.delta))) for d in deltas]
    assert all(0 < n <= chunk for n in sizes) and sizes.count(chunk) >= len(sizes) - 2, sizes


def test_twilio_call(mimi_server: ServerProcess, voice: tuple[np.ndarray, int]) -> None:
    """The Twilio bridge (8 kHz mu-law): media of 20 ms, 8 a tick, as long as the input."""
    pcm, rate = voice[0][: int(1.2 * voice[1])], voice[1]
    url = mimi_server.url.replace("/v1/duplex", "/v1/telephony/twilio")
    result = asyncio.run(run_twilio_call(url, pcm, rate))
    assert result.close_code == 1000
    n_wire = wire_length(len(pcm), rate, 8000)
    assert len(result.output) == n_wire
    ticks = math.ceil(result.frames_sent / 8)
    # a K = 8 step is slower, so `end` may come a tick later than with the default (as above)
    assert ticks <= len(result.marks) <= ticks + 2, (len(result.marks), ticks)
    assert all(len(m.pcm) == 160 for m in result.media)
    # 24 kHz -> 8 kHz delays by 3 ms, compensated: the first tick's 1256 samples make 7 whole
    # media (the rest goes with the next tick's), then 8 a tick
    per_tick = np.bincount([m.tick for m in result.media])
    assert per_tick[0] == 7 and set(per_tick[1:-1]) == {8}, per_tick
    assert rms(result.output) > 1e-3
