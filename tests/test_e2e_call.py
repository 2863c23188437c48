"""End-to-end calls through a real `duplex serve` process (decisions.md sections 1, 2, 6, 8).

Every call runs in real time, so the audio is kept short (about 1-2 s). The shared `server`
fixture serves most tests; shutdown and admission tests start servers of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from scipy import signal as sps
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from clients.call import CallResult, place_frames, run_call
from clients.client import DuplexClient, DuplexError, ReceivedFrame
from server.settings import Settings
from streaming.resample import resample_whole
from streaming.wire import AudioFormat, SamplingParams, StatsMessage
from tests.conftest import (
    ServerProcess,
    end_marker,
    read_wav,
    speak,
    start_server,
    stop_server,
)

TICK_S = 0.16
DUPLEX = Path(sys.executable).parent / "duplex"


async def call(
    url: str, pcm: np.ndarray, rate: int, *, margin_s: float = 4.0, **kwargs: Any
) -> CallResult:
    """`run_call` bounded by the audio length plus a margin (a hung call fails fast)."""
    delay_s = float(kwargs.get("delay_ms", 0.0)) / 1000
    limit = len(pcm) / rate + delay_s + margin_s
    try:
        return await asyncio.wait_for(run_call(url, pcm, rate, **kwargs), limit)
    except TimeoutError as exc:
        raise AssertionError(f"the call did not finish within {limit:.1f} s") from exc


def call_sync(url: str, pcm: np.ndarray, rate: int, **kwargs: Any) -> CallResult:
    return asyncio.run(call(url, pcm, rate, **kwargs))


def healthz(server: ServerProcess) -> dict[str, Any]:
    r = httpx.get(f"{server.http}/healthz", timeout=5)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def metrics(server: ServerProcess) -> dict[str, float]:
    """Prometheus text as {sample name with labels: value}."""
    r = httpx.get(f"{server.http}/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def wire_length(n: int, in_rate: int, wire_rate: int) -> int:
    return len(resample_whole(np.zeros(n, dtype=np.float32), in_rate, wire_rate))


def check_stats(stats: StatsMessage, result: CallResult | None = None) -> None:
    """Internal consistency of a `stats` message (and of the call that produced it)."""
    assert stats.ticks > 0
    assert stats.frames_out == stats.ticks
    assert stats.estimates_made >= 0 and stats.estimates_replaced >= 0
    # missing: estimates never replaced whose budget ran out while the call still ran
    assert 0 <= stats.missing_chunks <= stats.estimates_made - stats.estimates_replaced
    assert stats.latency_ms_p50 is not None and stats.latency_ms_p99 is not None
    assert 0 <= stats.latency_ms_p50 <= stats.latency_ms_p99
    assert stats.latency_ms_p95 is not None
    assert stats.latency_ms_p50 <= stats.latency_ms_p95 <= stats.latency_ms_p99
    if result is not None:
        assert stats.frames_in == result.frames_sent
        assert stats.samples_in == result.samples_sent
        assert result.frames_received == stats.ticks
        duration = result.samples_sent / result.ready.sample_rate
        assert abs(stats.ticks - math.ceil(duration / TICK_S)) <= 1
        # `duplex call` acknowledges what it received (it writes, never drops): `played`
        assert 0 < stats.played_samples <= stats.ticks * result.ready.chunk_samples
        assert stats.unplayed_samples == stats.unheard_silenced_samples == 0


# -- audio ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    pcm: np.ndarray  # float32 mono
    rate: int
    path: Path

    def seconds(self, s: float) -> np.ndarray:
        return self.pcm[: int(s * self.rate)]


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> Voice:
    """About 1.5-2 s of espeak-ng speech (22.05 kHz mono)."""
    path = speak("Hello there, what time is it?", tmp_path_factory.mktemp("voice") / "v.wav")
    pcm, rate = read_wav(path)
    assert 1.0 < len(pcm) / rate < 3.0
    return Voice(pcm.astype(np.float32), rate, path)


def _cli(server: ServerProcess, inp: Path, out: Path, *extra: str, duration_s: float) -> Any:
    cmd = [str(DUPLEX), "call", "--url", server.url, "--input", str(inp), "--output", str(out),
           "--json", "--tail-s", "0", *extra]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`duplex call` did not finish within {duration_s + 10:.1f} s")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


SUMMARY_KEYS = {
    "session_id", "frames_sent", "frames_received", "ticks", "latency_ms_p50", "latency_ms_p95",
    "latency_ms_p99", "estimates_made", "estimates_replaced", "late_samples_dropped",
    "missing_chunks", "overruns", "re_anchors", "frames_gated", "noise_floor_db",
    "output_samples", "duration_s",
}  # fmt: skip


# -- `duplex call` --------------------------------------------------------------------------------


def test_cli_call_writes_aligned_output_and_summary(
    server: ServerProcess, voice: Voice, tmp_path: Path
) -> None:
    """The input and a second of silence after it (`--tail-s`) are streamed; the output is as
    long, sample for sample."""
    out = tmp_path / "agent.wav"
    n_in = len(voice.pcm) + voice.rate  # the tail
    duration = n_in / voice.rate
    summary = _cli(server, voice.path, out, "--tail-s", "1", duration_s=duration)

    info = sf.info(str(out))
    assert info.samplerate == voice.rate
    assert info.frames == n_in
    agent, _ = read_wav(out)
    assert rms(agent) > 1e-3, "the random model babbles: its audio is not silence"
    assert np.isfinite(agent).all() and np.abs(agent).max() <= 1.0

    assert set(summary) >= SUMMARY_KEYS
    n_wire = wire_length(n_in, voice.rate, 16000)
    assert summary["output_samples"] == n_wire
    assert summary["frames_sent"] == math.ceil(n_wire / 320)  # 20 ms frames at 16 kHz
    assert abs(summary["ticks"] - math.ceil(duration / TICK_S)) <= 1
    assert summary["frames_received"] == summary["ticks"]  # audio frames, not the end marker
    assert 0 <= summary["latency_ms_p50"] <= summary["latency_ms_p95"] <= summary["latency_ms_p99"]
    assert summary["estimates_made"] > 0  # the newest user chunk is always an estimate
    unreplaced = summary["estimates_made"] - summary["estimates_replaced"]
    assert 0 <= summary["missing_chunks"] <= unreplaced
    assert summary["late_samples_dropped"] == 0
    assert summary["duration_s"] >= duration - 0.05
    assert len(summary["session_id"]) >= 8


@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (48000, 1)])
def test_cli_call_other_input_formats(
    server: ServerProcess, voice: Voice, tmp_path: Path, rate: int, channels: int
) -> None:
    pcm = voice.seconds(1.3)
    g = math.gcd(rate, voice.rate)
    x = sps.resample_poly(pcm, rate // g, voice.rate // g).astype(np.float32)
    data = np.stack([x, 0.5 * x], axis=1) if channels == 2 else x
    inp = tmp_path / f"in_{rate}_{channels}.wav"
    sf.write(str(inp), data, rate)
    out = tmp_path / "agent.wav"

    summary = _cli(server, inp, out, duration_s=len(x) / rate)

    info = sf.info(str(out))
    assert (info.samplerate, info.frames) == (rate, len(x))
    agent, _ = read_wav(out)
    assert rms(agent) > 1e-3
    assert summary["output_samples"] == wire_length(len(x), rate, 16000)


def test_a_noisy_line_reaches_the_model_gated(
    server: ServerProcess, voice: Voice, tmp_path: Path
) -> None:
    """White noise at -55 dBFS under the voice and a 1.5 s pause: the call reports the line's
    noise floor, and the pause's frames were gated (the server's default gate); a call that
    asks for no gate (`start.noise_gate_db` 0) has none."""
    speech = resample_whole(voice.pcm, voice.rate, 8000)
    line = np.concatenate([speech, np.zeros(12000, dtype=np.float32)])
    line += np.random.default_rng(0).normal(0, 10 ** (-55 / 20), len(line)).astype(np.float32)
    inp = tmp_path / "noisy.wav"
    sf.write(str(inp), line, 8000)
    summary = _cli(server, inp, tmp_path / "agent.wav", duration_s=len(line) / 8000)
    assert -57 < summary["noise_floor_db"] < -53, summary
    assert summary["frames_gated"] >= 30, summary  # the pause is 37 frames
    off = _cli(server, inp, tmp_path / "off.wav", "--noise-gate-db", "0",
               duration_s=len(line) / 8000)  # fmt: skip
    assert off["frames_gated"] == 0, off  # this call asked for no gate
    assert -57 < off["noise_floor_db"] < -53, off  # the floor is measured all the same
    clean = _cli(server, voice.path, tmp_path / "clean.wav", duration_s=len(voice.pcm) / voice.rate)
    assert clean["noise_floor_db"] < -90, clean  # espeak's pauses are digital zeros


def test_frames_a_client_dropped_do_not_open_the_noise_gate(server: ServerProcess) -> None:
    """On a noisy line, the silence the server puts in for 3 dropped frames (60 ms) every half
    second is not the line's noise floor: were it taken for one, the floor would read digital
    silence at the end and the gate would pass the noise for 3 s after every loss."""
    line = resample_whole(
        np.random.default_rng(0).normal(0, 10 ** (-55 / 20), 4 * 8000).astype(np.float32),
        8000, 16000,
    )  # fmt: skip

    async def main() -> StatsMessage | None:
        async with DuplexClient.connect(server.url, audio=AudioFormat(sample_rate=16000)) as c:
            fs = c.frame_samples
            for n in range(len(line) // fs):
                due = c.t_ready + n * fs / 16000
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if n % 25 in (10, 11, 12):  # a lost packet: the next frame's number skips
                    c.frames_sent, c.samples_sent = c.frames_sent + 1, c.samples_sent + fs
                    continue
                await c.send_frame(line[n * fs : (n + 1) * fs])
            await c.end()
            async for _ in c.events():  # to the close after `stats`
                pass
            return c.stats

    stats = asyncio.run(main())
    assert stats is not None
    assert -57 < stats.noise_floor_db < -53, stats
    assert stats.frames_gated >= 70, stats  # 100 frames, minus the warm-up and the losses


def test_respond_mid_call(server: ServerProcess, voice: Voice) -> None:
    """`respond` (push to talk: the user let go) is taken during the call and after `end`;
    the call ends normally (what it does to the agent's chunks: tests/test_ticker.py,
    tests/test_default_model.py)."""
    pcm = resample_whole(voice.seconds(1.0), voice.rate, 16000)

    async def main() -> StatsMessage | None:
        async with DuplexClient.connect(server.url, audio=AudioFormat(sample_rate=16000)) as c:
            fs = c.frame_samples
            for n in range(len(pcm) // fs):
                await asyncio.sleep(max(0.0, c.t_ready + n * fs / 16000 - time.monotonic()))
                await c.send_frame(pcm[n * fs : (n + 1) * fs])
                if n == 20:
                    await c.respond()
            await c.end()
            await c.respond()
            async for _ in c.events():
                pass
            return c.stats

    stats = asyncio.run(main())
    assert stats is not None and stats.frames_in == len(pcm) // 320


def test_playback_acks_make_the_unheard_agent_audio_silence(
    server: ServerProcess, voice: Voice
) -> None:
    """`played` every 10 frames says how far the client played; one with `flushed` (the
    caller interrupted; the client dropped the 2 chunks it held) makes that audio silence in
    the model's context: counted in `stats` and /metrics (what it does to the context:
    tests/test_engine.py)."""
    rate, chunk = 16000, 2560
    pcm = resample_whole(voice.seconds(3.0), voice.rate, rate)
    metric = 'duplex_agent_unheard_frames_total{fate="silenced"}'
    before = metrics(server).get(metric, 0.0)

    async def main() -> tuple[DuplexClient, int, int]:
        async with DuplexClient.connect(server.url, audio=AudioFormat(sample_rate=rate)) as c:
            received, acked, flushed_at = 0, 0, 0

            async def read() -> None:
                nonlocal received
                async for ev in c.events():
                    if isinstance(ev, ReceivedFrame):
                        received = max(received, ev.first_sample + len(ev.pcm))

            reader = asyncio.create_task(read())
            fs = c.frame_samples
            for n in range(len(pcm) // fs):
                await asyncio.sleep(max(0.0, c.t_ready + n * fs / rate - time.monotonic()))
                await c.send_frame(pcm[n * fs : (n + 1) * fs])
                if n % 10 == 0 and received - chunk > acked:
                    acked = received - chunk  # a chunk in the playback buffer
                    flush = n >= 60 and not flushed_at  # the first ack from 1.2 s on
                    if flush:
                        flushed_at = acked - chunk  # ... and one more, dropped at once
                        acked = flushed_at
                    await c.played(acked, flushed=flush)
            await c.end()
            await reader
            return c, acked, flushed_at

    c, acked, flushed_at = asyncio.run(main())
    s = c.stats
    assert s is not None and flushed_at > 0
    assert s.played_samples == acked
    # everything sent after the flushed position, as the server counted it when it came
    assert 2 * chunk <= s.unplayed_samples <= 4 * chunk, s
    frame = chunk // 4
    assert s.unheard_beyond_reach_samples == 0, s
    assert s.unplayed_samples <= s.unheard_silenced_samples < s.unplayed_samples + frame, s
    assert metrics(server)[metric] - before == s.unheard_silenced_samples // frame


def test_a_client_that_asks_is_told_when_the_caller_barges_in(
    server: ServerProcess, voice: Voice
) -> None:
    """`start.barge_in_notices`: when the engine's barge-in rule silences the agent (the
    shared server's random model talks all the time, so speech after a second of silence
    talks over it), `barge_in` names the first silent sample, which is the first sample of
    a frame that follows, silent; a client that did not ask is told nothing."""
    rate = 16000
    speech = resample_whole(voice.pcm, voice.rate, rate)
    onset = rate + int(np.argmax(np.abs(speech) > 0.01))
    pcm = np.concatenate([np.zeros(rate, np.float32), speech])

    async def call(notices: bool) -> tuple[DuplexClient, dict[int, np.ndarray]]:
        audio = AudioFormat(sample_rate=rate)
        async with DuplexClient.connect(server.url, audio=audio, barge_in_notices=notices) as c:
            frames: dict[int, np.ndarray] = {}

            async def read() -> None:
                async for ev in c.events():
                    if isinstance(ev, ReceivedFrame):
                        frames[ev.first_sample] = ev.pcm

            reader = asyncio.create_task(read())
            fs = c.frame_samples
            for n in range(len(pcm) // fs):
                await asyncio.sleep(max(0.0, c.t_ready + n * fs / rate - time.monotonic()))
                await c.send_frame(pcm[n * fs : (n + 1) * fs])
            await c.end()
            await reader
            return c, frames

    async def both() -> list[tuple[DuplexClient, dict[int, np.ndarray]]]:
        return list(await asyncio.gather(call(True), call(False)))

    (told, frames), (untold, _) = asyncio.run(both())
    assert untold.barge_ins == []
    assert told.barge_ins, "the caller's speech over the agent was no barge-in"
    first = told.barge_ins[0].sample
    assert onset < first < onset + rate, (onset, first)  # within a second of the speech
    silent = frames[first]  # a frame starts there...
    assert np.abs(silent[rate // 200 :]).max() < 1e-3  # ... silent past the resampler's 3 ms
    assert np.abs(np.concatenate([frames[k] for k in sorted(frames) if k < first])).max() > 0.01


def test_update_changes_a_running_call(server: ServerProcess) -> None:
    """`update` mid-call: `updated` answers with the call's new settings (the fields named
    change, the rest stay, null is the server's default), and they reach the call: a noise
    gate turned on after a second of a noisy line gates the rest of it, not the first second
    (what a new sampling does to the agent: tests/test_engine.py, tests/test_ticker.py)."""
    line = resample_whole(
        np.random.default_rng(1).normal(0, 10 ** (-55 / 20), 3 * 8000).astype(np.float32),
        8000, 16000,
    )  # fmt: skip
    audio, sampling = AudioFormat(sample_rate=16000), SamplingParams(eagerness="low", seed=5)

    async def main() -> DuplexClient:
        async with DuplexClient.connect(
            server.url, audio=audio, sampling=sampling, noise_gate_db=0.0
        ) as c:
            fs = c.frame_samples
            for n in range(len(line) // fs):
                await asyncio.sleep(max(0.0, c.t_ready + n * fs / 16000 - time.monotonic()))
                await c.send_frame(line[n * fs : (n + 1) * fs])
                if n == 50:
                    await c.update(sampling={"eagerness": "high"}, noise_gate_db=20.0)
                if n == 100:
                    await c.update(sampling={"temperature": 0.9}, noise_gate_db=None)
            await c.end()
            async for _ in c.events():
                pass
            return c

    c = asyncio.run(main())
    ready, (high, hotter) = c.ready, c.updates
    assert (ready.temperature, ready.turn_temperature, ready.speak_up_ms) == (0.5, None, 8000.0)
    assert ready.noise_gate_db == 0.0 and ready.seed == 5
    assert (high.temperature, high.turn_temperature, high.speak_up_ms) == (0.6, 0.1, 2080.0)
    assert (high.noise_gate_db, high.seed, high.top_k) == (20.0, 5, ready.top_k)
    assert (hotter.temperature, hotter.turn_temperature, hotter.seed) == (0.9, 0.1, 5)
    assert hotter.noise_gate_db == Settings().noise_gate_db
    assert c.stats is not None
    assert 35 <= c.stats.frames_gated <= 52, c.stats  # of 75 frames: none of the first 25


@pytest.mark.parametrize("path", ["/v1/realtime", "/v1/telephony/twilio"])
def test_another_endpoint_is_named_as_the_likely_mistake(server: ServerProcess, path: str) -> None:
    """A duplex client pointed at the Realtime endpoint (which opens with `session.created`) or
    the Twilio bridge (which closes on a `start` it cannot read) says the URL is likely wrong."""
    url = server.url.replace("/v1/duplex", path)
    with pytest.raises(DuplexError) as info:
        asyncio.run(run_call(url, np.zeros(1600, dtype=np.float32), 16000))
    assert "is the URL a duplex /v1/duplex endpoint?" in info.value.message, info.value


def test_eagerness_sets_the_calls_sampling(server: ServerProcess, voice: Voice) -> None:
    """`sampling.eagerness` brings its sampling (server/call_sampling.py); a field the call names
    itself wins over it. `ready` echoes what the call got."""
    asks = [SamplingParams(eagerness="low"), SamplingParams(eagerness="high", speak_up_ms=500)]

    async def main() -> list[CallResult]:
        return await asyncio.gather(
            *(call(server.url, voice.seconds(0.5), voice.rate, sampling=a) for a in asks)
        )

    low, high = (r.ready for r in asyncio.run(main()))
    assert (low.temperature, low.turn_temperature, low.speak_up_ms) == (0.5, None, 8000.0)
    assert (high.temperature, high.turn_temperature, high.speak_up_ms) == (0.6, 0.1, 640.0)


# -- wire formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [("mulaw", 8000), ("pcm16", 8000), ("pcm16", 16000), ("pcm16", 24000), ("pcm16", 48000)],
)
def test_wire_formats(server: ServerProcess, voice: Voice, encoding: str, rate: int) -> None:
    pcm = voice.seconds(1.2)
    result = call_sync(server.url, pcm, voice.rate, encoding=encoding, wire_rate=rate)

    ready = result.ready
    assert (ready.encoding, ready.sample_rate) == (encoding, rate)
    assert ready.chunk_samples == round(rate * TICK_S)
    assert ready.frame_samples == rate * 20 // 1000
    assert ready.codec_sample_rate == 8000
    n_wire = wire_length(len(pcm), voice.rate, rate)
    assert result.samples_sent == n_wire
    assert len(result.output) == n_wire
    assert rms(result.output) > 1e-3
    frames = sorted(result.frames, key=lambda f: f.seq)
    for f in frames[1 : len(frames) - end_marker(frames)]:
        assert len(f.pcm) == ready.chunk_samples
    check_stats(result.stats, result)


# -- estimates and replacement --------------------------------------------------------------------


@pytest.mark.parametrize("delay_ms", [0, 100, 240])
def test_delayed_uplink_estimates_are_replaced(
    server: ServerProcess, voice: Voice, delay_ms: int
) -> None:
    pcm = voice.seconds(1.5)
    result = call_sync(server.url, pcm, voice.rate, delay_ms=delay_ms)
    s = result.stats
    assert s.estimates_made > 0, "the newest user chunk is always estimated (decisions.md 2)"
    assert s.estimates_replaced > 0, "estimates must be replaced once the real audio arrived"
    # Chunk j's audio is complete at the server at (j+1)T + delay; the step of agent chunk k
    # starts at kT - lead and may replace chunks down to k-1-R, R = ceil((budget + lead +
    # 40 ms) / T) (decisions.md 2): audio up to the budget late (and then some) is never lost.
    assert delay_ms <= result.ready.latency_budget_ms
    assert s.late_samples_dropped == 0 and s.missing_chunks == 0 and s.re_anchors == 0, s
    # a replacement rolls back at least the agent chunk that followed the estimate
    assert s.max_rollback_tokens >= 1
    assert len(result.output) == wire_length(len(pcm), voice.rate, 16000)
    assert rms(result.output) > 1e-3
    check_stats(s)
    assert s.frames_in == result.frames_sent and s.samples_in == result.samples_sent
    assert result.frames_received == s.ticks


# -- time alignment -------------------------------------------------------------------------------


def test_agent_frames_are_contiguous_and_on_the_clock(server: ServerProcess, voice: Voice) -> None:
    result = call_sync(server.url, voice.seconds(1.5), voice.rate)
    c = result.ready.chunk_samples
    frames = sorted(result.frames, key=lambda f: f.seq)
    assert [f.seq for f in frames] == list(range(len(frames))), "one frame per chunk index"
    assert frames[0].first_sample == 0
    assert [f.last for f in frames] == [False] * (len(frames) - 1) + [True]
    audio = frames[: len(frames) - end_marker(frames)]
    if end_marker(frames):  # `end` after the final chunk: an empty frame where the audio ends
        assert frames[-1].first_sample == audio[-1].first_sample + len(audio[-1].pcm)
    delay = c - len(frames[0].pcm)  # the resampler's delay, compensated in chunk 0
    assert 0 <= delay < c // 8
    for prev, cur in zip(audio, audio[1:], strict=False):
        assert cur.first_sample == prev.first_sample + len(prev.pcm)
        assert len(cur.pcm) == c
        assert cur.first_sample == cur.seq * c - delay  # chunk k covers ~[kC, (k+1)C)
    # Chunk k is due at t0 + k*T; it may leave up to a lead early, and is late only by an
    # overrun (allow a tick for a loaded test machine).
    for f in frames:
        offset = f.arrival - result.t_start - f.seq * TICK_S
        assert -TICK_S <= offset <= TICK_S, (f.seq, offset)
    np.testing.assert_array_equal(place_frames(frames, len(result.output)), result.output)


# -- several calls --------------------------------------------------------------------------------


def test_three_concurrent_calls(server: ServerProcess, voice: Voice) -> None:
    """Three calls share the ticks; two sample with their own turn temperature, speak-up
    silence (echoed in whole ticks) and barge-in (in whole codec frames)."""
    lengths = [1.0, 1.3, 1.6]
    split = SamplingParams(turn_temperature=1.0, speak_up_ms=500, barge_in_ms=90)

    async def main() -> list[CallResult]:
        return await asyncio.gather(
            *(
                call(server.url, voice.seconds(s), voice.rate, sampling=split if i else None)
                for i, s in enumerate(lengths)
            )
        )

    results = asyncio.run(main())
    assert len({r.stats.session_id for r in results}) == 3
    assert [r.ready.turn_temperature for r in results] == [0.1, 1.0, 1.0]
    assert [r.ready.speak_up_ms for r in results] == [3040.0, 640.0, 640.0]
    assert [r.ready.barge_in_ms for r in results] == [120.0, 120.0, 120.0]
    assert [r.ready.noise_gate_db for r in results] == [10.0] * 3  # the server's default
    for s, r in zip(lengths, results, strict=True):
        n = wire_length(len(voice.seconds(s)), voice.rate, 16000)
        assert len(r.output) == n == r.samples_sent
        assert rms(r.output) > 1e-3
        check_stats(r.stats, r)


# -- health and metrics ---------------------------------------------------------------------------


METRIC_NAMES = [
    "duplex_sessions_active", "duplex_ticks_total", "duplex_tick_compute_seconds_bucket",
    "duplex_overrun_ticks_total", "duplex_estimates_total", "duplex_estimates_replaced_total",
    "duplex_frames_in_total", "duplex_frames_out_total", "duplex_frames_gated_total",
    "duplex_call_noise_floor_dbfs_count", "process_resident_memory_bytes", "process_open_fds",
]  # fmt: skip


def test_healthz_and_metrics_move_with_a_call(server: ServerProcess, voice: Voice) -> None:
    h = healthz(server)
    assert h["status"] == "ok"
    assert h["sessions"] + h["free_slots"] == 4
    assert h["tick_ms"] == pytest.approx(160.0)
    assert 0 < h["lead_ms"] < 160

    before = metrics(server)
    for name in METRIC_NAMES:
        assert any(k == name or k.startswith(name + "{") for k in before), name

    result = call_sync(server.url, voice.seconds(1.2), voice.rate)
    after = metrics(server)
    s = result.stats

    def grew(name: str, by: float | None = None) -> None:
        delta = after[name] - before.get(name, 0.0)
        if by is None:
            assert delta > 0, name
        else:
            assert delta == by, (name, delta, by)

    # The shared server may run nothing else meanwhile: per-call deltas are exact.
    grew("duplex_ticks_total")
    grew("duplex_tick_compute_seconds_count")
    grew("duplex_frames_in_total", s.frames_in)
    grew("duplex_frames_out_total", s.frames_out)  # audio frames: not the end marker
    grew("duplex_estimates_total", s.estimates_made)
    grew("duplex_estimates_replaced_total", s.estimates_replaced)
    grew("duplex_sessions_total", 1)
    assert (
        after['duplex_tick_compute_seconds_bucket{le="+Inf"}']
        == after["duplex_tick_compute_seconds_count"]
    )
    assert after["duplex_overrun_ticks_total"] >= before["duplex_overrun_ticks_total"]
    deadline = time.monotonic() + 2
    while healthz(server)["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    final = metrics(server)
    assert final["duplex_sessions_active"] == 0
    # counted once the call is gone: its line's noise floor and the frames gated
    assert (
        final["duplex_call_noise_floor_dbfs_count"] - before["duplex_call_noise_floor_dbfs_count"]
        == 1
    )
    assert (
        final["duplex_frames_gated_total"] - before["duplex_frames_gated_total"] == s.frames_gated
    )


# -- the end of a call ----------------------------------------------------------------------------


def test_call_finishes_when_end_arrives_after_the_last_chunk(server: ServerProcess) -> None:
    """`end` after the agent chunk covering the last user sample: stats and 1000 must follow,
    and the `last` flag too, on an empty frame after the last one sent.

    A live client's `end` always leaves after its last audio, while the server computes agent
    chunk k a lead *before* t0 + k*T; with any uplink delay the chunk covering the last sample
    has normally been sent by the time `end` arrives. Here that order is forced.
    """
    frames: list[ReceivedFrame] = []

    async def main() -> tuple[StatsMessage | None, int | None]:
        async with DuplexClient.connect(server.url, audio=AudioFormat(sample_rate=16000)) as c:
            n = 4 * c.ready.chunk_samples  # exactly chunks 0..3
            fs = c.frame_samples
            pcm = (0.1 * np.sin(np.arange(n) * 0.05)).astype(np.float32)
            for i in range(0, n, fs):
                await c.send_frame(pcm[i : i + fs], last=i + fs >= n)
            events = c.events()
            async for ev in events:  # wait until chunk 4 (beyond the audio) was sent
                if isinstance(ev, ReceivedFrame):
                    frames.append(ev)
                    if ev.seq >= 4:
                        break
            await c.end(n)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.5):  # a few ticks
                    async for ev in events:  # returns at the close 1000 that follows `stats`
                        if isinstance(ev, ReceivedFrame):
                            frames.append(ev)
            return c.stats, c._ws.close_code

    stats, close = asyncio.run(main())
    assert stats is not None, "no `stats` after `end`"
    assert close == 1000
    assert [f.last for f in frames] == [False] * (len(frames) - 1) + [True]
    assert end_marker(frames) and frames[-1].seq == frames[-2].seq + 1
    assert frames[-1].first_sample == frames[-2].first_sample + len(frames[-2].pcm)
    assert stats.frames_out == stats.ticks == len(frames) - 1  # the marker is no tick


def test_stats_count_every_frame_sent(server: ServerProcess, voice: Voice) -> None:
    """All audio (and `end`) sent at once: the last chunk is made after `end`, flagged `last`."""
    result = call_sync(server.url, voice.seconds(1.0), voice.rate, realtime=False)
    frames = sorted(result.frames, key=lambda f: f.seq)
    assert frames[-1].last
    assert not any(f.last for f in frames[:-1])
    assert not end_marker(frames) and result.stats.ticks == result.frames_received
    assert result.stats.frames_out == result.frames_received


# -- admission: server_full -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_slot_server(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("one_slot") / "server.log"
    srv = start_server(checkpoint, log, "--max-sessions", "1")
    yield srv
    stop_server(srv)


def test_error_counters_are_exported_before_any_error(one_slot_server: ServerProcess) -> None:
    """A fresh server: every error code's counter exists at 0 (no 'missing series' in alerts)."""
    m = metrics(one_slot_server)
    assert m.get('duplex_errors_total{code="internal_error"}') == 0
    assert m.get('duplex_sessions_rejected_total{reason="server_full"}') == 0


def test_server_full_refuses_at_once_and_first_call_goes_on(
    one_slot_server: ServerProcess, voice: Voice
) -> None:
    srv = one_slot_server
    pcm = voice.seconds(1.6)

    async def main() -> tuple[CallResult, DuplexError, float]:
        first = asyncio.create_task(call(srv.url, pcm, voice.rate))
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 5
            while (await http.get(f"{srv.http}/healthz")).json()["sessions"] < 1:
                assert time.monotonic() < deadline, "the first call never opened"
                await asyncio.sleep(0.02)
        t0 = time.monotonic()
        with pytest.raises(DuplexError) as info:
            async with DuplexClient.connect(srv.url):
                pass
        refused_after = time.monotonic() - t0
        return await first, info.value, refused_after

    result, err, refused_after = asyncio.run(main())
    assert err.code == "server_full"
    assert err.close_code == 1013
    assert refused_after < 1.0
    assert len(result.output) == wire_length(len(pcm), voice.rate, 16000)
    check_stats(result.stats, result)
    m = metrics(srv)
    assert m['duplex_sessions_rejected_total{reason="server_full"}'] == 1


# -- a server that overruns every tick ------------------------------------------------------------


def test_calls_survive_a_server_that_overruns_every_tick(
    checkpoint: Path, tmp_path: Path, voice: Voice
) -> None:
    """`--lead-ms 1` lets a step wait for audio until 1 ms before its deadline, and audio
    100 ms late keeps it waiting that long: every tick overruns. The call still gets all its
    audio and a normal end; so does a call of one frame that ends at once."""
    srv = start_server(checkpoint, tmp_path / "server.log", "--lead-ms", "1")
    try:
        pcm = voice.seconds(1.0)
        late = call_sync(srv.url, pcm, voice.rate, delay_ms=100.0)
        assert late.stats.overruns == late.stats.ticks > 0
        assert len(late.output) == wire_length(len(pcm), voice.rate, 16000) == late.samples_sent
        check_stats(late.stats, late)

        async def one_frame() -> tuple[list[ReceivedFrame], StatsMessage]:
            async with DuplexClient.connect(srv.url) as c:
                await c.send_frame(np.zeros(c.frame_samples, dtype=np.float32), last=True)
                await c.end(c.frame_samples)
                events = [e async for e in c.events()]
            frames = [e for e in events if isinstance(e, ReceivedFrame)]
            stats = [e for e in events if isinstance(e, StatsMessage)]
            assert len(stats) == 1  # and the close was normal: `events` raises otherwise
            return frames, stats[0]

        for _ in range(3):
            frames, stats = asyncio.run(one_frame())
            assert stats.ticks == stats.frames_out == 1 and stats.overruns == 1
            assert frames[0].seq == 0 and len(frames[0].pcm) > 0 and frames[-1].last
    finally:
        stop_server(srv)


# -- graceful shutdown ----------------------------------------------------------------------------


@dataclass
class ShutdownRun:
    t_sigterm: float | None = None
    error: DuplexError | None = None
    error_after_s: float | None = None  # since SIGTERM
    frames_before_error: int = 0
    healthz_while_draining: tuple[int, str, int] | None = None
    new_call_error: DuplexError | None = None
    exit_code: int | None = None
    exit_after_s: float | None = None  # since SIGTERM
    unstarted: tuple[str, int | None, float] | None = None  # a socket without `start`: error
    # code, close code, seconds since SIGTERM


@pytest.fixture(scope="module")
def shutdown_run(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, voice: Voice
) -> Iterator[ShutdownRun]:
    """SIGTERM a server (grace 0.5 s) while a call keeps streaming; record what everyone saw."""
    log = tmp_path_factory.mktemp("shutdown") / "server.log"
    srv = start_server(checkpoint, log, "--shutdown-grace-s", "0.5")
    try:
        run = asyncio.run(_shutdown_scenario(srv, voice))
        if run.t_sigterm is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.exit_code = srv.proc.wait(10)
                run.exit_after_s = time.monotonic() - run.t_sigterm
        yield run
    finally:
        stop_server(srv)


async def _shutdown_scenario(srv: ServerProcess, voice: Voice) -> ShutdownRun:
    pcm = np.tile(resample_whole(voice.pcm, voice.rate, 16000), 10)  # far longer than needed
    run = ShutdownRun()
    probe: asyncio.Task[None] | None = None
    unstarted = await connect(srv.url, compression=None, proxy=None)  # connected, no `start`
    async with DuplexClient.connect(srv.url, audio=AudioFormat(sample_rate=16000)) as c:
        fs = c.frame_samples

        async def send() -> None:
            with contextlib.suppress(DuplexError):
                for n in range(len(pcm) // fs):
                    await asyncio.sleep(max(0.0, c.t_ready + n * fs / 16000 - time.monotonic()))
                    await c.send_frame(pcm[n * fs : (n + 1) * fs])

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(15):
                async for ev in c.events():
                    if isinstance(ev, ReceivedFrame):
                        run.frames_before_error += 1
                        if ev.seq == 4 and run.t_sigterm is None:
                            run.t_sigterm = time.monotonic()
                            srv.proc.send_signal(signal.SIGTERM)
                            probe = asyncio.create_task(_probe_draining(srv, run))
        except DuplexError as exc:
            run.error = exc
            if run.t_sigterm is not None:
                run.error_after_s = time.monotonic() - run.t_sigterm
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    if probe is not None:
        await asyncio.wait_for(probe, 10)
    with contextlib.suppress(ConnectionClosed):
        error = json.loads(await asyncio.wait_for(unstarted.recv(), 5))
        await unstarted.wait_closed()
        assert run.t_sigterm is not None
        run.unstarted = (error["code"], unstarted.close_code, time.monotonic() - run.t_sigterm)
    return run


async def _probe_draining(srv: ServerProcess, run: ShutdownRun) -> None:
    """While the grace period runs: /healthz says draining and a new call gets 1012."""
    async with httpx.AsyncClient() as http:
        for _ in range(40):
            with contextlib.suppress(httpx.HTTPError):
                r = await http.get(f"{srv.http}/healthz", timeout=1)
                if r.status_code != 200:
                    body = r.json()
                    run.healthz_while_draining = (r.status_code, body["status"], body["free_slots"])
                    break
            await asyncio.sleep(0.01)
    try:
        async with DuplexClient.connect(srv.url):
            pass
    except DuplexError as exc:
        run.new_call_error = exc


def test_sigterm_sends_server_shutdown_1012_to_open_calls(shutdown_run: ShutdownRun) -> None:
    run = shutdown_run
    assert run.error is not None, "the call ended without an error"
    assert (run.error.code, run.error.close_code) == ("server_shutdown", 1012)
    assert run.error_after_s is not None
    assert 0.4 <= run.error_after_s <= 3.0, "after the 0.5 s grace period, not before"
    assert run.frames_before_error >= 5
    assert run.healthz_while_draining == (503, "draining", 0)  # no slot for a new call
    assert run.new_call_error is not None
    assert (run.new_call_error.code, run.new_call_error.close_code) == ("server_shutdown", 1012)
    # a connection that had not started its call is told so too, not closed bare
    assert run.unstarted is not None and run.unstarted[:2] == ("server_shutdown", 1012)


def test_sigterm_exits_zero_after_drain(shutdown_run: ShutdownRun) -> None:
    run = shutdown_run
    assert run.exit_code is not None, "the server did not exit within 10 s of its drain"
    assert run.exit_after_s is not None and run.exit_after_s < 5.0
    assert run.exit_code == 0


def test_a_second_ctrl_c_cuts_the_drain_short_and_shuts_down_cleanly(
    checkpoint: Path, tmp_path: Path
) -> None:
    """uvicorn's forced exit (SIGINT twice): open calls get `server_shutdown` 1012 at once
    instead of after the 30 s grace, and the app's shutdown still runs (no traceback)."""
    log = tmp_path / "server.log"
    srv = start_server(checkpoint, log, "--shutdown-grace-s", "30")
    t_second: list[float] = []

    async def main() -> DuplexError | None:
        async with DuplexClient.connect(srv.url, audio=AudioFormat(sample_rate=16000)) as c:
            silence = np.zeros(c.frame_samples, np.float32)
            try:
                async with asyncio.timeout(10):
                    async for ev in c.events():
                        if isinstance(ev, ReceivedFrame):
                            await c.send_frame(silence)  # keep the call going
                            if ev.seq == 3:
                                srv.proc.send_signal(signal.SIGINT)
                            elif ev.seq == 6:
                                srv.proc.send_signal(signal.SIGINT)
                                t_second.append(time.monotonic())
            except DuplexError as exc:
                return exc
        return None

    try:
        error = asyncio.run(main())
        assert error is not None and (error.code, error.close_code) == ("server_shutdown", 1012)
        assert t_second and time.monotonic() - t_second[0] < 5.0
        assert srv.proc.wait(10) == 0
    finally:
        stop_server(srv)
    text = log.read_text()
    assert "Traceback" not in text and "Application shutdown complete" in text, text


def test_audio_later_than_the_budget_is_dropped_and_counted(
    server: ServerProcess, voice: Voice
) -> None:
    """decisions.md 2: late audio never stalls the call; its estimate stays and is counted.
    Audio that stays beyond the buffer's reach (480 ms) for 2 s is re-anchored: 0.7 s of
    silence goes in and what comes after is on time."""
    pcm = voice.seconds(3.5)
    result = call_sync(server.url, pcm, voice.rate, delay_ms=700)
    s = result.stats
    assert s.late_samples_dropped > 0 and s.late_samples_dropped % result.ready.chunk_samples == 0
    assert s.missing_chunks > 0
    assert s.re_anchors == 1 and 0.6 * 16000 <= s.re_anchored_samples <= 0.8 * 16000, s
    assert len(result.output) == wire_length(len(pcm), voice.rate, 16000)


def test_a_call_runs_past_the_model_context(tmp_path: Path, voice: Voice) -> None:
    """Issue 3: sink + sliding window; a 256-token context is outgrown 2-3 times in 12 s (the
    random agent babbling over the caller throughout: no barge-in rule to silence it)."""
    from model.checkpoint import init_random_checkpoint

    ckpt = tmp_path / "small"
    init_random_checkpoint(ckpt, seed=1, context_tokens=256, sink_tokens=16)
    srv = start_server(ckpt, tmp_path / "log", "--max-sessions", "1", "--barge-in-ms", "0")
    try:
        pcm = np.concatenate([voice.seconds(2.0)] * 6)
        result = call_sync(srv.url, pcm, voice.rate)
        text = metrics(srv)
    finally:
        stop_server(srv)
    s = result.stats
    assert s.ticks >= 70 and s.context_tokens > 2 * 256
    assert s.estimates_replaced > 0 and s.missing_chunks == 0
    assert len(result.output) == wire_length(len(pcm), voice.rate, 16000)
    assert rms(result.output[-16000:]) > 1e-3  # still talking at the end
    assert text['duplex_errors_total{code="internal_error"}'] == 0
