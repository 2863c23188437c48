"""Unit tests of the Python client and `duplex call` that need no real server.

A scripted stand-in for `/v1/duplex` (protocol messages only, no model) runs in a thread so the
client's framing, pacing, out-of-order placement and error mapping are checked end to end.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.server import ServerConnection, serve

from clients.call import (
    fit_length,
    load_input,
    main,
    place_frames,
    run_call,
    send_schedule,
)
from clients.client import DuplexError, ReceivedFrame
from streaming.encodings import decode_audio, encode_audio
from streaming.wire import (
    AudioFrame,
    ErrorCode,
    ErrorMessage,
    ReadyMessage,
    StatsMessage,
    parse_client_message,
)

REPO = Path(__file__).resolve().parents[1]
CHUNK_MS = 160


@dataclass
class FakeServer:
    """Speaks the protocol like the real server, answering with constant-valued agent chunks.

    Path `/full` refuses with `server_full`; any other path runs a call. Agent chunk k holds
    the value (k + 1) / 64 and is sent in reverse order after `end`, to test placement.
    """

    url: str = ""
    received: list[AudioFrame] = field(default_factory=list)
    total_samples: int | None = None
    authorization: str | None = None

    async def handler(self, ws: ServerConnection) -> None:
        start = parse_client_message(str(await ws.recv()))
        assert start.type == "start" and ws.request is not None
        self.authorization = ws.request.headers.get("Authorization")
        if ws.request.path == "/full":
            err = ErrorMessage(code=ErrorCode.SERVER_FULL, message="no free slot, retry later")
            await ws.send(err.model_dump_json())
            await ws.close(1013)
            return
        audio = start.audio
        chunk = audio.sample_rate * CHUNK_MS // 1000
        ready = ReadyMessage(
            session_id="fake",
            tick_ms=CHUNK_MS,
            chunk_samples=chunk,
            frame_samples=audio.sample_rate * audio.frame_ms // 1000,
            sample_rate=audio.sample_rate,
            encoding=audio.encoding,
            codec_sample_rate=8000,
            lead_ms=50.0,
            latency_budget_ms=240.0,
            temperature=0.8,
            top_k=50,
            seed=1,
        )
        await ws.send(ready.model_dump_json())
        async for data in ws:
            if isinstance(data, bytes):
                self.received.append(AudioFrame.unpack(data))
                continue
            end = parse_client_message(data)
            assert end.type == "end"
            self.total_samples = end.total_samples
            break
        assert self.total_samples is not None
        n_chunks = -(-self.total_samples // chunk)
        for k in reversed(range(n_chunks)):
            pcm = np.full(chunk, (k + 1) / 64, dtype=np.float32)
            frame = AudioFrame(n_chunks - 1 - k, k * chunk, encode_audio(pcm, audio.encoding))
            await ws.send(frame.pack())
        stats = StatsMessage(
            session_id="fake",
            ticks=n_chunks,
            frames_in=len(self.received),
            frames_out=n_chunks,
            samples_in=self.total_samples,
            estimates_made=3,
            estimates_replaced=2,
            late_samples_dropped=0,
            missing_chunks=0,
            overruns=0,
            latency_ms_p50=40.0,
            latency_ms_p95=45.0,
            latency_ms_p99=50.0,
        )
        await ws.send(stats.model_dump_json())
        await ws.close(1000)


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A FakeServer on a free loopback port, served from its own thread and event loop."""
    fake = FakeServer()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def serve_forever() -> None:
        async with serve(fake.handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            fake.url = f"ws://127.0.0.1:{port}/v1/duplex"
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve_forever(),))
    thread.start()
    assert started.wait(10)
    yield fake
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _frame(first: int, values: list[float]) -> ReceivedFrame:
    return ReceivedFrame(0, first, np.array(values, dtype=np.float32), False, 0.0)


# --- pure helpers -------------------------------------------------------------------------


def test_place_frames_uses_first_sample_not_arrival_order() -> None:
    frames = [_frame(4, [3, 3]), _frame(0, [1, 1]), _frame(8, [5, 5, 5, 5])]
    out = place_frames(frames, 10)
    assert out.tolist() == [1, 1, 0, 0, 3, 3, 0, 0, 5, 5]  # gap stays silent, tail truncated


def test_fit_length_pads_and_truncates() -> None:
    x = np.arange(5, dtype=np.float32)
    assert fit_length(x, 3).tolist() == [0, 1, 2]
    assert fit_length(x, 7).tolist() == [0, 1, 2, 3, 4, 0, 0]
    assert fit_length(x, 7).dtype == np.float32


def test_send_schedule_is_absolute_delayed_and_never_reorders() -> None:
    due = send_schedule(50, 0.02, 100.0, delay_s=0.1)
    assert due == pytest.approx([100.1 + (n + 1) * 0.02 for n in range(50)])
    jittered = send_schedule(500, 0.02, 0.0, 0.05, 0.2, random.Random(3))
    assert all(b >= a for a, b in zip(jittered, jittered[1:], strict=False))
    for n, t in enumerate(jittered):
        assert (n + 1) * 0.02 + 0.05 <= t <= (n + 1) * 0.02 + 0.25 + 1e-9


def test_load_input_downmixes_stereo_44k(tmp_path: Path) -> None:
    rate = 44100
    t = np.arange(rate) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), rate, subtype="FLOAT")
    mono, got_rate = load_input(str(path))
    assert got_rate == rate and mono.dtype == np.float32 and mono.ndim == 1
    np.testing.assert_allclose(mono, left / 2, atol=1e-6)


# --- against the fake server --------------------------------------------------------------


def test_run_call_frames_and_places_out_of_order_agent_audio(fake_server: FakeServer) -> None:
    in_rate = 44100
    pcm = np.random.default_rng(0).uniform(-0.5, 0.5, int(0.5 * in_rate)).astype(np.float32)
    result = asyncio.run(run_call(fake_server.url, pcm, in_rate, realtime=False))
    n_wire = -(-len(pcm) * 16000 // in_rate)  # resample_whole: ceil(n * out / in)
    frame = 320  # 20 ms at 16 kHz

    got = fake_server.received
    assert [f.seq for f in got] == list(range(len(got)))
    assert [f.first_sample for f in got] == [n * frame for n in range(len(got))]
    assert [f.last for f in got] == [False] * (len(got) - 1) + [True]
    sent = np.concatenate([decode_audio(f.payload, "pcm16") for f in got])
    assert len(sent) == n_wire == fake_server.total_samples == result.samples_sent
    assert len(decode_audio(got[-1].payload, "pcm16")) == n_wire - (len(got) - 1) * frame
    assert result.frames_sent == len(got)

    chunk = result.ready.chunk_samples
    assert len(result.output) == n_wire
    expected = np.repeat((np.arange(-(-n_wire // chunk)) + 1) / 64, chunk)[:n_wire]
    np.testing.assert_allclose(result.output, expected, atol=1 / 32768)
    assert [f.first_sample for f in result.frames] == sorted(
        (f.first_sample for f in result.frames), reverse=True
    )
    assert all(f.arrival >= result.t_start for f in result.frames)
    assert result.stats.estimates_replaced == 2
    assert result.summary()["frames_received"] == result.frames_received


def test_run_call_paces_frames_in_real_time_with_delay(fake_server: FakeServer) -> None:
    pcm = np.zeros(8000 * 3 // 10, dtype=np.float32)  # 300 ms = 15 frames of 20 ms
    result = asyncio.run(
        run_call(fake_server.url, pcm, 8000, encoding="mulaw", delay_ms=50.0, realtime=True)
    )
    assert result.ready.sample_rate == 8000 and result.frames_sent == 15
    offsets = np.array(result.send_times) - result.t_start
    expected = 0.05 + 0.02 * np.arange(15)
    assert np.all(offsets >= expected - 1e-3)
    assert np.all(offsets < expected + 0.03)  # no drift: each deadline is absolute


def test_server_error_becomes_duplex_error(fake_server: FakeServer) -> None:
    url = fake_server.url.replace("/v1/duplex", "/full")
    with pytest.raises(DuplexError) as info:
        asyncio.run(run_call(url, np.zeros(1600, dtype=np.float32), 16000))
    assert info.value.code == "server_full"
    assert info.value.close_code == 1013


def test_cli_writes_time_aligned_output_at_input_rate(
    fake_server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_rate = 22050
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, np.zeros((in_rate // 2, 2)), in_rate)
    code = main(["--url", fake_server.url, "--input", str(src), "--output", str(dst), "--json",
                 "--tail-s", "0"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames_sent"] == 25 and summary["latency_ms_p99"] == 50.0
    out, rate = sf.read(dst)
    assert rate == in_rate and out.shape == (in_rate // 2,)
    assert abs(out[in_rate // 10] - 1 / 64) < 2e-3  # 100 ms falls in agent chunk 0
    assert abs(out[in_rate // 4] - 2 / 64) < 2e-3  # 250 ms falls in agent chunk 1


def test_cli_prints_a_human_summary_and_sends_the_api_key(
    fake_server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.wav"
    sf.write(src, np.zeros(1600), 16000)
    assert main(["--url", fake_server.url, "--input", str(src), "--api-key", "k3y",
                 "--tail-s", "0"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("duplex call: session fake: ")
    assert "p99 50.0" in captured.err
    assert fake_server.authorization == "Bearer k3y"


def test_cli_server_error_exits_1_with_one_line(
    fake_server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.wav"
    sf.write(src, np.zeros(1600), 16000)
    url = fake_server.url.replace("/v1/duplex", "/full")
    assert main(["--url", url, "--input", str(src)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "duplex call: error: server error server_full: no free slot, retry later (close 1013)"
    ]


# --- command-line errors -----------------------------------------------------------------


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run the command in a real process: exit code and stderr exactly as a user sees them."""
    code = "import sys; from clients.call import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(path, np.zeros(1600), 16000)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "missing.wav"], "cannot read 'missing.wav': no such file"),
        (["--input", "."], "cannot read '.': it is a directory"),
        (["--output", "."], "cannot write '.': it is a directory"),
        (
            ["--encoding", "mulaw", "--rate", "16000"],
            "--rate 16000 is not supported with mulaw; use 8000",
        ),
        (["--frame-ms", "7"], "--frame-ms must be in [10, 160], got 7"),
        (["--encoding", "opus", "--frame-ms", "16"], "--frame-ms 16 is not an Opus packet length"),
        (["--tail-s", "-1"], "--tail-s must be in [0, 600]"),
        (["--rate", "44100"], "--rate 44100 is not supported with pcm16"),
        (["--temperature", "-1"], "--temperature:"),
        (["--noise-gate-db", "50"], "--noise-gate-db must be in [0, 40]"),
        (["--output", "/no/such/dir/out.wav"], "cannot write '/no/such/dir/out.wav'"),
        (["--output", "out.xyz"], "unknown audio file extension"),
        (["--url", "http://127.0.0.1:8000/v1"], "not a usable ws:// or wss:// URL: scheme"),
        (["--url", "ws://127.0.0.1:99999/v1/duplex"], "Port out of range"),
        (["--url", "ws:///v1/duplex"], "hostname isn't provided"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    wav: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argv if argv[0] == "--input" else ["--input", str(wav), *argv]
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("duplex call: error: ")
    assert message in lines[0]
    assert captured.out == ""


def test_argparse_errors_exit_2(wav: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--input", str(wav), "--frame-ms", "twenty"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("duplex call: error: ")


def test_unreadable_file_exits_2_in_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"not audio at all")
    proc = _cli("--input", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert f"cannot read '{bad}': Format not recognised" in proc.stderr  # the path once
    assert proc.stderr.count(str(bad)) == 1


def test_unreachable_server_exits_1_with_one_line(wav: Path) -> None:
    proc = _cli("--url", f"ws://127.0.0.1:{_free_port()}/v1/duplex", "--input", str(wav))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("duplex call: error: cannot connect to ")
