"""Streaming resampler: chunking must not change the output, lengths must be predictable from
the input count alone, the output must be time-aligned with the input, and the filter must
reject what would alias or image."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.resample import StreamResampler, resample_whole

CODEC = 8000
WIRE = (8000, 16000, 24000, 48000)
PAIRS = [(w, CODEC) for w in WIRE] + [(CODEC, w) for w in WIRE if w != CODEC]


def run(r: StreamResampler, x: np.ndarray) -> np.ndarray:
    return np.concatenate([r.process(x), r.flush()])


def tone_db(y: np.ndarray, freq: float, rate: int) -> float:
    """Level of a tone in y (dBFS of a unit sine), by projection onto sin/cos."""
    t = np.arange(len(y)) / rate
    a = 2 * np.mean(y * np.sin(2 * np.pi * freq * t))
    b = 2 * np.mean(y * np.cos(2 * np.pi * freq * t))
    return float(10 * np.log10(a * a + b * b + 1e-30))


def sine(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate).astype(np.float32)


@given(
    pair=st.sampled_from(PAIRS),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 3000),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
)
@settings(max_examples=150, deadline=None)
def test_chunked_equals_whole(pair: tuple[int, int], seed: int, n: int, cuts: list[int]) -> None:
    x = np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)
    r = StreamResampler(*pair)
    whole = run(r, x)  # flush() also resets, so r is reused below
    bounds = [0, *sorted(c for c in cuts if c <= n), n]
    parts = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        out = r.process(x[lo:hi])
        assert out.dtype == np.float32
        parts.append(out)
        assert sum(map(len, parts)) == r.available(hi)  # depends on input count only
    parts.append(r.flush())
    chunked = np.concatenate(parts)
    assert len(chunked) == len(whole) == round(n * pair[1] / pair[0])
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_available_formula_and_length(in_rate: int, out_rate: int) -> None:
    r = StreamResampler(in_rate, out_rate)
    for n in (0, 1, 2, 5, 7, 49, 50, 641, 960, 1001):
        assert r.available(n) == max(0, n * out_rate // in_rate - r.delay_samples)
        assert len(run(r, np.ones(n, dtype=np.float32))) == round(n * out_rate / in_rate)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_delay_is_small_and_whole_output_samples(in_rate: int, out_rate: int) -> None:
    r = StreamResampler(in_rate, out_rate)
    assert isinstance(r.delay_samples, int)
    assert 1000 * r.delay_samples / out_rate <= 5.0  # ms; each direction adds this latency
    assert (r.delay_samples == 0) == (in_rate == out_rate)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_click_comes_out_at_the_same_time(in_rate: int, out_rate: int) -> None:
    x = np.zeros(in_rate // 10, dtype=np.float32)
    at_in = 300 * max(1, in_rate // out_rate)  # a time that is a whole sample at both rates
    x[at_in] = 1.0
    y = run(StreamResampler(in_rate, out_rate), x)
    assert int(np.argmax(y)) == at_in * out_rate // in_rate


def test_round_trip_sine_is_aligned_with_unit_gain() -> None:
    x = sine(440, CODEC)
    y = run(StreamResampler(16000, CODEC), run(StreamResampler(CODEC, 16000), x))
    assert len(y) == len(x)
    mid = slice(400, -400)  # away from the zero-padded edges
    lags = np.arange(-20, 21)
    xc = [np.dot(x[mid], np.roll(y, -lag)[mid]) for lag in lags]
    assert lags[int(np.argmax(xc))] == 0
    gain_db = 20 * np.log10(np.std(y[mid]) / np.std(x[mid]))
    assert abs(gain_db) < 0.5
    assert np.max(np.abs(y[mid] - x[mid])) < 1e-2


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_passband_gain(in_rate: int, out_rate: int) -> None:
    for freq in (300.0, 1000.0, 3000.0):
        y = run(StreamResampler(in_rate, out_rate), sine(freq, in_rate))
        assert abs(tone_db(y[200:-200], freq, out_rate)) < 0.1  # 0 dB = the unit input sine


def test_7khz_tone_is_rejected_when_decimating_16k() -> None:
    y = run(StreamResampler(16000, CODEC), sine(7000, 16000))
    # 7 kHz would alias to 1 kHz at 8 kHz.
    assert tone_db(y[200:-200], 1000, CODEC) < -40
    assert 20 * np.log10(np.std(y[200:-200]) * np.sqrt(2)) < -40


@pytest.mark.parametrize("wire", [16000, 24000, 48000])
def test_stopband_above_codec_nyquist(wire: int) -> None:
    for freq in (4050.0, 6100.0, wire / 2 - 700):  # from just above the codec Nyquist
        y = run(StreamResampler(wire, CODEC), sine(freq, wire))
        assert 20 * np.log10(np.std(y[200:-200]) * np.sqrt(2) + 1e-12) < -55, freq


@pytest.mark.parametrize("wire", [16000, 24000, 48000])
def test_images_rejected_when_interpolating(wire: int) -> None:
    y = run(StreamResampler(CODEC, wire), sine(1000, CODEC))[400:-400]
    for image in range(CODEC - 1000, wire // 2, CODEC):  # 7k, 15k, 23k ...
        assert tone_db(y, image, wire) < -55
        assert tone_db(y, image + 2000, wire) < -55  # 9k, 17k ...


def test_ratio_one_is_a_passthrough() -> None:
    r = StreamResampler(CODEC, CODEC)
    x = np.random.default_rng(0).uniform(-1, 1, 321).astype(np.float32)
    assert r.process(x) is x
    assert r.flush().shape == (0,)
    assert r.delay_samples == 0


def test_flush_resets_for_a_new_stream() -> None:
    x = np.random.default_rng(1).uniform(-1, 1, 999).astype(np.float32)
    r = StreamResampler(48000, CODEC)
    first = run(r, x)
    assert r.flush().shape == (0,)
    assert np.array_equal(run(r, x), first)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="integer rate ratio"):
        StreamResampler(44100, 8000)
    with pytest.raises(ValueError, match="integer rate ratio"):
        StreamResampler(8000, 12000)
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0, 8000)
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(16000, -8000)
    with pytest.raises(ValueError, match="1-D"):
        StreamResampler(16000, 8000).process(np.zeros((2, 160), dtype=np.float32))


def test_resample_whole_arbitrary_rates() -> None:
    x = sine(440, 44100)
    y = resample_whole(x, 44100, CODEC)
    assert y.dtype == np.float32
    assert len(y) == CODEC
    spectrum = np.abs(np.fft.rfft(y))
    assert int(np.argmax(spectrum)) == 440  # 1 s of audio: bin k is k Hz
    assert abs(tone_db(y[200:-200], 440, CODEC)) < 0.1


def test_resample_whole_same_rate_and_bad_arguments() -> None:
    x = np.linspace(-1, 1, 10)
    assert np.array_equal(resample_whole(x, 16000, 16000), x.astype(np.float32))
    with pytest.raises(ValueError, match="positive"):
        resample_whole(x, 0, 8000)
    with pytest.raises(ValueError, match="1-D"):
        resample_whole(np.zeros((2, 2)), 16000, 8000)
