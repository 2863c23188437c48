"""Resampling a 3:2 ratio (16 kHz wire against Mimi's 24 kHz) through two integer stages:
chunked == whole, the length a single stage would give, time-aligned, no imaging."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.rate_chain import ChainedResampler, stream_resampler
from streaming.resample import StreamResampler

PAIRS = [(16000, 24000), (24000, 16000)]


def sine(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate).astype(np.float32)


def test_one_stage_for_integer_ratios_two_else() -> None:
    for pair in [(8000, 24000), (48000, 24000), (24000, 24000), (16000, 8000)]:
        assert isinstance(stream_resampler(*pair), StreamResampler)
    for pair in PAIRS:
        assert isinstance(stream_resampler(*pair), ChainedResampler)


@given(
    pair=st.sampled_from(PAIRS),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 3000),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
)
@settings(max_examples=60, deadline=None)
def test_chunked_equals_whole(pair: tuple[int, int], seed: int, n: int, cuts: list[int]) -> None:
    x = np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)
    whole = ChainedResampler(*pair)
    want = np.concatenate([whole.process(x), whole.flush()])
    r = ChainedResampler(*pair)
    bounds = [0, *sorted(c for c in cuts if c <= n), n]
    parts = [r.process(x[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    got = np.concatenate([*parts, r.flush()])
    assert got.dtype == np.float32
    assert len(got) == len(want) == round(n * pair[1] / pair[0])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_time_aligned_and_clean() -> None:
    """A 1 kHz tone comes out where it went in (no delay), and an 11 kHz one (above 16 kHz's
    Nyquist) does not come out at 16 kHz."""
    for a, b in PAIRS:
        r = ChainedResampler(a, b)
        y = np.concatenate([r.process(sine(1000, a)), r.flush()])
        want = sine(1000, b)
        np.testing.assert_allclose(y[400:-400], want[400:-400], rtol=0, atol=0.01)
    r = ChainedResampler(24000, 16000)
    y = np.concatenate([r.process(sine(11000, 24000)), r.flush()])
    assert np.sqrt(np.mean(np.square(y[400:-400]))) < 1e-3
