"""The noise gate: a noisy line's pauses reach the tokenizer as the silence the model knows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.codecs import load_codec
from streaming.noise_gate import NoiseGate
from streaming.user_input import UserAudioInput

BUILTIN = {"type": "codec2-units", "codebook": "builtin:codec2_units_1024"}
F = 320  # one codec frame at 8 kHz


def _noise(db: float, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 10 ** (db / 20), n).astype(np.float32)


def _tone(db: float, n: int) -> np.ndarray:
    amp = 10 ** (db / 20) * np.sqrt(2)  # a sine's RMS is amp / sqrt(2)
    return (amp * np.sin(2 * np.pi * 220 * np.arange(n) / 8000)).astype(np.float32)


def _frames(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, F)


def test_noise_is_gated_and_speech_over_it_passes() -> None:
    gate = NoiseGate(8000, F, margin_db=10)
    noise = _noise(-60, 40 * F)
    line = noise.copy()
    line[20 * F : 30 * F] += _tone(-20, 10 * F)  # "speech" from frame 20 to 30
    out = _frames(gate.process(line))
    assert len(out) == 40
    warm = gate.warmup
    assert np.array_equal(out[:warm], _frames(line)[:warm])  # nothing gated while warming up
    silent = ~out.any(axis=1)
    # the noise alone: digital silence (but for the frame after the tone's abrupt end, which
    # the high-pass that measures the levels rings into)
    assert silent[warm:20].all() and silent[31:].all()
    assert not silent[20:30].any()  # the tone over it passes untouched
    assert np.array_equal(out[20:30], _frames(line)[20:30])
    assert gate.frames_gated == 40 - 10 - warm - 1
    assert -61 < gate.floor_db < -59


def test_rumble_under_the_hiss_does_not_hide_the_floor() -> None:
    """Brown noise (rumble: most of its power far below the codec's band, its level swinging
    by tens of dB from frame to frame) at -40 dBFS over white noise at -60: the levels are
    measured above 100 Hz, so the hiss is still gated (measured flat, about half of it is)."""
    n = 150 * F
    spectrum = np.fft.rfft(np.random.default_rng(3).normal(size=n))
    spectrum /= np.maximum(np.arange(len(spectrum)), 1)  # 1/f amplitude: brown
    rumble = np.fft.irfft(spectrum, n)
    line = 10 ** (-40 / 20) * rumble / np.sqrt(np.mean(rumble**2)) + _noise(-60, n)
    gate = NoiseGate(8000, F, margin_db=10)
    out = _frames(gate.process(line.astype(np.float32)))
    assert (~out[gate.warmup :].any(axis=1)).mean() > 0.9


def test_a_stretch_of_loud_sound_is_never_taken_for_noise() -> None:
    """The floor is capped: constant sound at -20 dBFS (no quiet frame for seconds) passes."""
    gate = NoiseGate(8000, F, margin_db=10)
    loud = _tone(-20, 200 * F)
    assert np.array_equal(gate.process(loud), loud)
    assert gate.floor_db == gate.max_floor_db and gate.frames_gated == 0


def test_the_floor_follows_the_line_down_at_once_and_up_after_the_window() -> None:
    gate = NoiseGate(8000, F, margin_db=6, window=25)
    gate.process(_noise(-50, 30 * F))
    assert -51 < gate.floor_db < -49
    gate.process(_noise(-70, F, seed=1))
    assert gate.floor_db < -69  # one quieter frame lowers it
    gate.process(_noise(-50, 24 * F, seed=2))
    assert gate.floor_db < -69  # still in the window
    out = _frames(gate.process(_noise(-50, 5 * F, seed=3)))
    assert -51 < gate.floor_db < -49  # the quiet frame has left the window
    assert not out[-1].any()


def test_silence_the_server_inserted_leaves_the_floor_alone() -> None:
    """A client's dropped frames are filled with zeros by the server; were they the line's own
    sound, they would set the floor to digital silence and open the gate for the window."""
    for track, floor_after in ((False, (-61, -59)), (True, (-121, -119))):
        gate = NoiseGate(8000, F, margin_db=10)
        gate.process(_noise(-60, 20 * F))
        gate.process(np.zeros(3 * F, dtype=np.float32), track=track)
        out = _frames(gate.process(_noise(-60, 10 * F, seed=1)))
        assert floor_after[0] < gate.floor_db < floor_after[1]
        assert (not out.any()) is (not track)  # the noise after it is gated, or passes


def test_the_warm_up_counts_the_line_not_inserted_silence() -> None:
    """A call whose first audio comes late starts with server-inserted silence: its first
    frames of sound still warm up (the first of them would otherwise be the floor)."""
    gate = NoiseGate(8000, F, margin_db=10)
    gate.process(np.zeros(20 * F, dtype=np.float32), track=False)
    out = _frames(gate.process(_tone(-30, 8 * F)))
    assert out.any(axis=1).all() and gate.frames_tracked == 7  # the first follows the filler


def test_only_frames_with_sound_count_as_gated() -> None:
    gate = NoiseGate(8000, F, margin_db=10)
    gate.process(np.concatenate([_noise(-60, 20 * F), np.zeros(5 * F, dtype=np.float32)]))
    assert gate.frames_gated == 20 - gate.warmup  # the zeros were silence already


def test_the_last_partial_frame_reaches_the_codec() -> None:
    """12.5 frames of audio, then `end`: 13 codec frames (the codec pads the half), in whole
    chunks of 4."""
    codec = load_codec(BUILTIN, Path("."))
    user = UserAudioInput(codec, codec.sample_rate, frames_per_chunk=4, noise_gate_db=10.0)
    user.push(_noise(-30, 12 * F + F // 2), arrival=0.0)
    user.end()
    chunks, _ = user.drain()
    assert user.frames_encoded == 13 + 3 and len(chunks) == 4


def test_margin_zero_passes_everything() -> None:
    gate = NoiseGate(8000, F, margin_db=0)
    x = _noise(-60, 10 * F + 17)
    assert np.array_equal(np.concatenate([gate.process(x), gate.flush()]), x)
    assert gate.frames_gated == 0
    assert -61 < gate.floor_db < -59  # still measured, for the call's stats


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, 30 * F), max_size=12), margin=st.sampled_from([0.0, 10.0]))
def test_any_split_of_the_stream_gives_the_same_frames(cuts: list[int], margin: float) -> None:
    x = _noise(-55, 30 * F + 100)
    x[10 * F : 18 * F] += _tone(-25, 8 * F)
    whole = NoiseGate(8000, F, margin)
    expected = np.concatenate([whole.process(x), whole.flush()])
    parts = NoiseGate(8000, F, margin)
    bounds = [0, *sorted(cuts), len(x)]
    got = [parts.process(x[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    for piece in got:
        assert len(piece) % F == 0  # whole frames only: the codec's framing is kept
    assert np.array_equal(np.concatenate([*got, parts.flush()]), expected)
    assert parts.figures == whole.figures  # the high-pass's state carried across the pieces


def test_a_noisy_pause_reaches_the_model_as_the_silence_unit() -> None:
    """Through the real codec: white noise at -60 dBFS is silence to the codec in under half its
    frames (the flicker the model takes for talk); with the gate, in all after the warm-up."""
    codec = load_codec(BUILTIN, Path("."))
    noise = _noise(-60, 60 * F)

    def units(margin: float) -> np.ndarray:
        user = UserAudioInput(codec, codec.sample_rate, frames_per_chunk=4, noise_gate_db=margin)
        user.push(noise, arrival=0.0)
        user.end()
        chunks, _ = user.drain()
        return np.concatenate([c.units[:, 0] for c in chunks])

    ungated = units(0.0) == codec.silence_unit
    gated = units(10.0) == codec.silence_unit
    assert ungated.mean() < 0.7
    assert gated[NoiseGate(8000, F, 10).warmup + 1 :].all()  # +1: the codec's look-back window


def test_a_lost_packet_does_not_open_the_gate() -> None:
    """60 ms of server-inserted silence on a noisy line: the noise after it stays silence."""
    codec = load_codec(BUILTIN, Path("."))
    user = UserAudioInput(codec, codec.sample_rate, frames_per_chunk=4, noise_gate_db=10.0)
    user.push(_noise(-60, 40 * F), arrival=0.0)
    user.push(np.zeros(480, dtype=np.float32), arrival=0.0, filler=True)
    user.push(_noise(-60, 40 * F, seed=1), arrival=0.0)
    user.end()
    chunks, _ = user.drain()
    units = np.concatenate([c.units[:, 0] for c in chunks])
    assert (units[10:] == codec.silence_unit).all()
    gated, floor_db = user.gate.figures
    assert -61 < floor_db < -59 and gated >= 70
