"""Streaming resampling for any pair of wire and codec rates.

`StreamResampler` (streaming/resample.py) takes integer ratios: the 8 kHz default codec against
8/16/24/48 kHz wire audio. A 24 kHz codec (Mimi) against 16 kHz wire audio is a 3:2 ratio: it
goes through two integer stages via the rates' least common multiple (16 -> 48 -> 24 kHz).
Each stage compensates its own delay and emits what its input so far determines, so the chain
keeps both properties: output sample 0 sits at input time 0, and the output does not depend on
how the input was chunked.
"""

from __future__ import annotations

from math import lcm

import numpy as np
import numpy.typing as npt

from streaming.resample import StreamResampler


class ChainedResampler:
    """Two integer-ratio stages through `lcm(in_rate, out_rate)`; `StreamResampler`'s API."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        mid = lcm(in_rate, out_rate)
        self._first = StreamResampler(in_rate, mid)
        self._second = StreamResampler(mid, out_rate)

    def process(self, x: np.ndarray) -> npt.NDArray[np.float32]:
        return self._second.process(self._first.process(x))

    def flush(self) -> npt.NDArray[np.float32]:
        """The tail, as if silence followed (the stream totals round(n * out / in)); resets."""
        return np.concatenate([self._second.process(self._first.flush()), self._second.flush()])


def stream_resampler(in_rate: int, out_rate: int) -> StreamResampler | ChainedResampler:
    """One stage for an integer ratio (as before), two through the common multiple else."""
    lo, hi = sorted((in_rate, out_rate))
    if lo > 0 and hi % lo:
        return ChainedResampler(in_rate, out_rate)
    return StreamResampler(in_rate, out_rate)
