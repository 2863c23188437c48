"""Opt-in call recording: both channels and the estimate/replace log of a real call."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import soundfile as sf
from websockets.asyncio.client import connect

from clients.call import run_call
from clients.client import upload_prompt
from tests.conftest import read_wav, start_server, stop_server


def test_record_dir_keeps_audio_units_and_estimates(
    checkpoint: Path, speech_wav: Path, tmp_path: Path
) -> None:
    record = tmp_path / "rec"
    srv = start_server(checkpoint, tmp_path / "log", "--record-dir", str(record))
    try:
        pcm, rate = read_wav(speech_wav)
        pcm = pcm[: rate * 2]
        prompt = upload_prompt(pcm[: rate // 2], rate)  # the caller's own, uploaded
        result = asyncio.run(run_call(srv.url, pcm, rate, wire_rate=16000, prompt=prompt))
    finally:
        stop_server(srv)
    (folder,) = list(record.iterdir())
    assert folder.name == result.ready.session_id
    user = sf.info(folder / "user.wav")
    assert user.samplerate == 16000 and user.frames == result.samples_sent
    agent, _ = sf.read(folder / "agent.wav", dtype="float32")
    assert len(agent) > 0 and abs(agent).max() > 0
    lines = [json.loads(line) for line in (folder / "ticks.jsonl").read_text().splitlines()]
    (joined,) = [line for line in lines if "settings" in line]  # at the join: what it got
    assert joined == {"tick": lines[1]["tick"], "settings": result.ready.model_dump(
        include={"temperature", "turn_temperature", "top_k", "seed", "speak_up_ms",
                 "start_bias", "barge_in_ms", "noise_gate_db"})}  # fmt: skip
    ticks = [line for line in lines if "chunk" in line]
    assert len(ticks) == result.stats.ticks
    assert [t["chunk"] for t in ticks] == list(range(len(ticks)))
    assert all(len(t["agent"]) == 4 for t in ticks)
    assert sum(t["estimate"] is not None for t in ticks) == result.stats.estimates_made
    assert sum(len(t["replaced"]) for t in ticks) == result.stats.estimates_replaced > 0
    start = json.loads((folder / "start.json").read_text())
    assert start["audio"]["sample_rate"] == 16000
    # the uploaded prompt's audio is a wav beside it, not base64 in the JSON
    assert start["prompt"] == {"name": None, "audio": "prompt.wav", "sample_rate": 16000}
    played, prompt_rate = sf.read(folder / "prompt.wav", dtype="int16")
    assert prompt_rate == 16000
    assert played.tobytes() == base64.b64decode(prompt.audio or "")


def test_a_call_that_cannot_be_recorded_goes_on_and_frees_its_slot(
    checkpoint: Path, speech_wav: Path, tmp_path: Path
) -> None:
    """The folder was fine at start and is gone (a file in its place) when calls come: each
    call is served unrecorded, the error is logged, and no slot stays taken."""
    record = tmp_path / "rec"
    srv = start_server(
        checkpoint, tmp_path / "log", "--record-dir", str(record), "--max-sessions", "1"
    )
    try:
        record.rmdir()
        record.write_text("not a folder")
        pcm, rate = read_wav(speech_wav)
        for _ in range(2):  # the second is refused if the first kept the only slot
            result = asyncio.run(run_call(srv.url, pcm[: rate // 2], rate, wire_rate=16000))
            assert len(result.output) == result.samples_sent > 0 and result.stats.ticks > 0
        health = httpx.get(f"{srv.http}/healthz", timeout=5).json()
    finally:
        stop_server(srv)
    assert health["sessions"] == 0, health
    assert (tmp_path / "log").read_text().count("is not recorded") == 2


def test_a_refused_call_leaves_no_recording(checkpoint: Path, tmp_path: Path) -> None:
    """Only admitted calls are recorded: a `server_full` refusal opens no files."""
    record = tmp_path / "rec"
    srv = start_server(
        checkpoint, tmp_path / "log", "--record-dir", str(record), "--max-sessions", "1"
    )
    start = json.dumps({"type": "start", "audio": {"sample_rate": 16000}})

    async def main() -> str:
        async with connect(srv.url) as first:
            await first.send(start)
            assert json.loads(await first.recv())["type"] == "ready"
            async with connect(srv.url) as second:
                await second.send(start)
                return str(json.loads(await second.recv())["code"])

    try:
        code = asyncio.run(main())
    finally:
        stop_server(srv)
    assert code == "server_full"
    assert len(list(record.iterdir())) == 1
