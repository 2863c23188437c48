"""Resampling between wire rates and the 8 kHz codec rate.

``StreamResampler`` converts live audio chunk by chunk for integer ratios (8 kHz codec against
8/16/24/48 kHz wire audio). It is a linear-phase windowed-sinc FIR applied polyphase with carried
input history, so the output does not depend on how the input was chunked, and it compensates
its own filter delay, so output sample 0 sits at input time 0.

Output accounting (``n`` = total input samples since construction or the last ``flush``)::

    available(n) = max(0, n * out_rate // in_rate - delay_samples)   # after process()
    total(n)     = round(n * out_rate / in_rate)                     # after flush()

``available`` depends only on ``n``, never on the chunking, so a caller can tell exactly when an
output frame is complete. ``round`` is Python's (half to even); it differs from
``n * out_rate // in_rate`` only when decimating a total length that is not a multiple of the ratio.

``resample_whole`` handles arbitrary rate pairs for whole files (CLI input of any wav).
"""

from __future__ import annotations

from fractions import Fraction
from math import gcd

import numpy as np
import numpy.typing as npt
from scipy import signal

__all__ = ["StreamResampler", "resample_whole"]

# Half-length of the filter in low-rate samples: 24 either side of the centre (24 * ratio
# taps at the high rate). With a Kaiser window designed for 60 dB this gives >= 63 dB rejection
# from the low Nyquist up, a passband flat to 0.005 dB up to 0.8 * Nyquist (-0.44 dB at
# 3.4 kHz for 8 kHz), and a 3 ms delay.
_HALF_TAPS_LOW = 24
_STOPBAND_DB = 60.0
_CUTOFF_FRACTION = 0.9  # -6 dB point as a fraction of the low Nyquist frequency
_BLOCK_ROWS = 1024  # matrix rows per BLAS call; bounds the copy to a few MB


def _lowpass(ratio: int, half: int) -> npt.NDArray[np.float64]:
    """Windowed-sinc low-pass at the high rate with 2 * half * ratio + 1 taps (odd, symmetric,
    so the group delay is exactly ``half`` low-rate samples)."""
    return signal.firwin(
        2 * half * ratio + 1,
        _CUTOFF_FRACTION / ratio,  # relative to the high-rate Nyquist
        window=("kaiser", signal.kaiser_beta(_STOPBAND_DB)),
    )


class StreamResampler:
    """Stateful, delay-compensated resampler for one direction of one audio stream.

    ``process`` accepts chunks of any length (including 0) and returns every output sample
    that the input so far determines (see the module docstring); ``flush`` returns the tail
    as if the stream were followed by silence and resets the state for a new stream.
    Ratio 1 is a passthrough with no delay and no copy for float32 input.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        lo, hi = min(in_rate, out_rate), max(in_rate, out_rate)
        if hi % lo:
            raise ValueError(
                f"streaming resampling needs an integer rate ratio, got {in_rate} -> {out_rate} Hz;"
                " use resample_whole() for arbitrary ratios on whole files"
            )
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._ratio = hi // lo
        self._up = out_rate > in_rate
        half = _HALF_TAPS_LOW if self._ratio > 1 else 0
        # Input samples either side of an output's centre that it needs; the same count of
        # zeros seeds the history so the first output is centred on input sample 0.
        self._reach = half * self._ratio if not self._up else half
        self._delay = half * self._ratio if self._up else half
        h = _lowpass(self._ratio, half) if self._ratio > 1 else np.ones(1)
        if self._up:
            # Polyphase: row t of the (2*half+1, L) matrix weights input q - half + t for the
            # L outputs q*L .. q*L+L-1. The factor L restores the gain lost to zero-stuffing.
            padded = np.concatenate([h, np.zeros(self._ratio - 1)]) * self._ratio
            self._taps = padded.reshape(2 * half + 1, self._ratio)[::-1].copy()
        else:
            self._taps = h[::-1].reshape(-1, 1).copy()
        self._reset()

    def _reset(self) -> None:
        self._n_in = 0
        self._n_out = 0
        # Input history from absolute index (next output's centre - reach) onwards.
        self._hist: npt.NDArray[np.float64] = np.zeros(self._reach)

    @property
    def delay_samples(self) -> int:
        """Filter delay in output samples; already compensated (output is time-aligned)."""
        return self._delay

    def available(self, n_in: int) -> int:
        """Output samples ``process`` has emitted in total once ``n_in`` inputs have been fed."""
        return max(0, n_in * self.out_rate // self.in_rate - self._delay)

    def process(self, x: np.ndarray) -> npt.NDArray[np.float32]:
        """Feed a chunk; return the newly determined output samples (float32)."""
        x = np.asarray(x)
        if x.ndim != 1:
            raise ValueError(f"expected 1-D mono audio, got shape {x.shape}")
        if self._ratio == 1:
            return x.astype(np.float32, copy=False)
        self._n_in += x.size
        self._hist = np.concatenate([self._hist, x.astype(np.float64, copy=False)])
        return self._emit(self.available(self._n_in))

    def flush(self) -> npt.NDArray[np.float32]:
        """Return the remaining tail so the stream totals round(n_in * out / in), then reset."""
        if self._ratio == 1:
            return np.zeros(0, dtype=np.float32)
        total = round(Fraction(self._n_in * self.out_rate, self.in_rate))
        self._hist = np.concatenate([self._hist, np.zeros(self._reach + self._ratio)])
        tail = self._emit(total)
        self._reset()
        return tail

    def _emit(self, target: int) -> npt.NDArray[np.float32]:
        """Compute outputs up to ``target`` (absolute count) and drop history no longer needed."""
        count = target - self._n_out
        if count <= 0:
            return np.zeros(0, dtype=np.float32)
        # One row per matrix product: an output frame (up) or an output sample (down). The rows
        # are copied contiguous so BLAS does the products (~2x faster than strided views), in
        # blocks so a whole-file call does not materialise rows * taps floats at once.
        rows, step = (count // self._ratio, 1) if self._up else (count, self._ratio)
        # Row i is hist[i * step : i * step + taps]: a strided view built directly (numpy's
        # sliding_window_view checks cost ~10 us, a third of a 20 ms frame's resampling).
        hist = np.ascontiguousarray(self._hist)
        stride = hist.itemsize
        windows = np.ndarray((rows, len(self._taps)), hist.dtype, hist, 0, (stride * step, stride))
        y = np.empty((rows, self._taps.shape[1]), dtype=np.float32)
        for i in range(0, rows, _BLOCK_ROWS):
            y[i : i + _BLOCK_ROWS] = np.ascontiguousarray(windows[i : i + _BLOCK_ROWS]) @ self._taps
        self._hist = self._hist[rows * step :]
        self._n_out = target
        return y.ravel()


def resample_whole(x: np.ndarray, in_rate: int, out_rate: int) -> npt.NDArray[np.float32]:
    """Resample a whole signal between arbitrary rates (e.g. a 44.1 kHz wav to 8 kHz).

    Offline only: scipy's polyphase resampler, output length ceil(n * out_rate / in_rate).
    """
    if in_rate <= 0 or out_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono audio, got shape {x.shape}")
    g = gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    if up == down:
        return x.astype(np.float32)
    return signal.resample_poly(x.astype(np.float64), up, down).astype(np.float32)
