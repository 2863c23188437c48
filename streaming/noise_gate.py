"""A noise gate on a caller's audio before the tokenizer: codec frames near the line's noise
floor become digital silence.

Why: the default model learnt from synthetic speech whose pauses are digital zeros, and the
codec maps only frames below about -60 dBFS to its silence unit. A caller's line or microphone
is never that quiet: with white noise at -60 dBFS (41 dB below the speech) a pause flickers
between the silence unit and noise units, which the model takes for the caller still talking,
and it answered a quarter of the turn ends instead of 0.875 (docs/benchmarks.md, "A noisy
line"). Gating the frames that are no louder than the noise puts back the silence the model
knows.

The floor is the quietest frame of the last `window` frames (minimum statistics: any few
seconds of speech have a pause or a quiet frame, and noise is under all of them), capped at
`max_floor_db` so that a stretch of loud speech is never taken for noise. 3 s, because with 2 s
the eval's longest clean utterances set the floor themselves and lost 0.6 % of their frames.
A frame is gated when it is less than `margin_db` above the floor. Nothing is gated before
`warmup` frames have been seen, so a call that starts with speech does not take its first
frame for the floor.
"""

from __future__ import annotations

from collections import deque

import numpy as np

SILENT_DB = -120.0  # the level of a frame of zeros (log of 0)


class NoiseGate:
    """Per-stream state; `process` takes any number of samples and returns whole frames."""

    def __init__(
        self,
        frame_samples: int,
        margin_db: float,
        *,
        window: int = 75,
        max_floor_db: float = -40.0,
        warmup: int = 8,
    ) -> None:
        if margin_db < 0:
            raise ValueError(f"margin_db must be >= 0, got {margin_db}")
        self.frame_samples = frame_samples
        self.margin_db = margin_db
        self.max_floor_db = max_floor_db
        self.warmup = warmup
        self._levels: deque[float] = deque(maxlen=window)
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_seen = 0
        self.frames_gated = 0

    @property
    def floor_db(self) -> float:
        """The noise floor as estimated now (dBFS)."""
        return min(min(self._levels, default=SILENT_DB), self.max_floor_db)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Float PCM in; the whole frames it completes out, gated frames as zeros. A partial
        frame waits for the next call (the codec frames it the same way)."""
        buf = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        n = buf.size // self.frame_samples * self.frame_samples
        self._pending = buf[n:].astype(np.float32, copy=True)
        out = buf[:n].astype(np.float32, copy=True)
        frames = out.reshape(-1, self.frame_samples)
        power = np.square(frames, dtype=np.float64).mean(axis=1)
        levels = 10.0 * np.log10(np.maximum(power, 10.0 ** (SILENT_DB / 10.0)))
        for i, level in enumerate(levels.tolist()):
            self._levels.append(level)  # the floor is tracked with the gate off too (stats)
            self.frames_seen += 1
            if (
                self.margin_db
                and self.frames_seen > self.warmup
                and level < self.floor_db + self.margin_db
            ):
                frames[i] = 0.0
                self.frames_gated += level > SILENT_DB
        return out

    def flush(self) -> np.ndarray:
        """The last partial frame, as it came (too short to measure)."""
        rest, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        return rest
