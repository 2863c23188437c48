"""Opus on the wire: the stateful streams, a real call through the server, and bad packets."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import chirp

from clients.call import run_call
from streaming.opus import OpusDecoderStream, OpusEncoderStream, pack_packets, unpack_packets
from tests.conftest import ServerProcess, read_wav
from tests.test_e2e_bad_input import expect_error, frame, open_ws, start_msg, until_ready

TICK_S = 0.16


def tone(rate: int, seconds: float) -> np.ndarray:
    """A slow sweep: speech-band, and not periodic, so its alignment is unambiguous."""
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * chirp(t, 200, seconds, 1500)).astype(np.float32)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_agent_stream_is_sample_aligned(rate: int) -> None:
    """Uneven chunks in, whole packets out; decoded audio lands on the samples it covers."""
    x = tone(rate, 2.0)
    enc, dec = OpusEncoderStream(rate), OpusDecoderStream(rate)
    cuts = [0, rate * 157 // 1000, *range(rate * 317 // 1000, len(x), rate * 160 // 1000)]
    covered, decoded = [], []
    for a, b in zip(cuts, [*cuts[1:], len(x)], strict=True):
        pcm, packets = enc.encode(x[a:b])
        covered.append(pcm)
        decoded += [dec.decode(p) for p in unpack_packets(pack_packets(packets))]
    y, c = np.concatenate(decoded), np.concatenate(covered)
    assert len(y) == len(c) and len(y) % enc.packet_samples == 0
    assert len(x) - len(y) < enc.packet_samples + enc.lookahead  # only the remainder waits
    np.testing.assert_array_equal(c, x[: len(c)])
    mid = slice(rate // 2, rate)
    lag = max(
        range(-rate // 100, rate // 100),
        key=lambda k: float(y[mid] @ x[mid.start + k : mid.stop + k]),
    )
    assert abs(lag) <= rate // 1000  # within 1 ms: the lookahead is compensated
    err = y[mid] - x[mid]
    assert 10 * np.log10(np.sum(x[mid] ** 2) / np.sum(err**2)) > 5  # misaligned: below 0


def test_unpack_refuses_torn_payloads() -> None:
    with pytest.raises(ValueError, match="torn"):
        unpack_packets(b"\x05")
    with pytest.raises(ValueError, match="does not fit"):
        unpack_packets(b"\x05\x00abc")


@pytest.mark.parametrize(("wire_rate", "frame_ms"), [(16000, 20), (48000, 40)])
def test_opus_call_round_trip(
    server: ServerProcess, speech_wav: Path, wire_rate: int, frame_ms: int
) -> None:
    pcm, rate = read_wav(speech_wav)
    pcm = pcm[: int(1.5 * rate)]

    async def main() -> None:
        result = await asyncio.wait_for(
            run_call(
                server.url, pcm, rate, encoding="opus", wire_rate=wire_rate, frame_ms=frame_ms
            ),
            10,
        )
        wire = result.ready.sample_rate
        assert (result.ready.encoding, wire) == ("opus", wire_rate)
        n = len(result.output)
        assert abs(n - len(pcm) * wire / rate) <= 1  # exactly the input's length, at the wire rate
        frame = result.ready.frame_samples
        assert result.samples_sent == math.ceil(n / frame) * frame  # the last packet is padded
        assert result.stats.frames_in == result.frames_sent == math.ceil(n / frame)
        assert result.stats.samples_in == result.samples_sent
        assert result.frames_received == result.stats.ticks
        frames = sorted(result.frames, key=lambda f: f.seq)
        for a, b in zip(frames, frames[1:], strict=False):  # contiguous, whole 20 ms packets
            assert b.first_sample == a.first_sample + len(a.pcm)
            assert len(a.pcm) % (wire // 50) == 0
        assert float(np.sqrt(np.mean(result.output**2))) > 1e-3  # the agent's audio is not silent

    asyncio.run(main())


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        (b"\xff\xff\xff", "bad_frame"),  # a code-3 packet claiming more frames than it holds
        (b"", "bad_frame_size"),
        (bytes(1276), "bad_frame_size"),
    ],
    ids=["undecodable", "empty", "oversized"],
)
def test_bad_opus_packet(server: ServerProcess, packet: bytes, code: str) -> None:
    async def main() -> None:
        async with await open_ws(server) as ws:
            await ws.send(start_msg(encoding="opus"))
            await until_ready(ws)
            await ws.send(frame(0, 0, 0)[:16] + packet)
            err = await expect_error(ws, code, 1007)
            assert "Opus" in err["message"]

    asyncio.run(main())


def test_opus_packet_of_the_wrong_length(server: ServerProcess) -> None:
    """A 40 ms packet in a call that said 20 ms frames: refused, not silently misplaced."""
    _, packets = OpusEncoderStream(16000, 40, align=False).encode(tone(16000, 0.04))

    async def main() -> None:
        async with await open_ws(server) as ws:
            await ws.send(start_msg(encoding="opus"))
            await until_ready(ws)
            await ws.send(frame(0, 0, 0)[:16] + packets[0])
            await expect_error(ws, "bad_frame_size", 1007)

    asyncio.run(main())


def test_opus_frame_ms_must_be_a_packet_length(server: ServerProcess) -> None:
    async def main() -> None:
        async with await open_ws(server) as ws:
            await ws.send(start_msg(encoding="opus", frame_ms=80))
            err = await expect_error(ws, "unsupported_audio", 1003)
            assert "Opus" in err["message"]

    asyncio.run(main())


def test_without_libopus_opus_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A machine without libopus0 still serves and calls PCM16; Opus is refused clearly."""
    import clients.call as call_module

    monkeypatch.setattr(call_module, "opus_available", lambda: False)
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(8000, dtype=np.float32), 8000)
    assert call_module.main(["--input", str(wav), "--encoding", "opus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "libopus" in err[0]
