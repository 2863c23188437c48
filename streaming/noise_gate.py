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
`warmup` frames of the line have been seen, so a call that starts with speech does not take
its first frame for the floor.

Levels are measured above 100 Hz (the audio itself is not filtered): rumble below that (wind,
traffic, handling) swings the level of a frame by tens of dB and the codec hardly hears it;
with hiss on top, a flat measure let half of the hiss through (offline, docs/benchmarks.md),
the high-passed one 5 % of it.

Silence the server put in itself (a client's dropped frames, a re-anchoring; not the pauses of
a Realtime client that sends audio only while it talks, which are its line's) is passed with
`track=False`, and neither its frames nor the one after it (which holds its end, blurred by
the resampler) count for the floor: its zeros would set the floor to digital silence for the
whole window and open the gate on a noisy line for 3 s after every lost packet.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from scipy import signal

SILENT_DB = -120.0  # the level of a frame of zeros (log of 0)
HIGHPASS_HZ = 100.0  # levels are measured above this: rumble below it is not what the codec hears


class NoiseGate:
    """Per-stream state; `process` takes any number of samples and returns whole frames."""

    def __init__(
        self,
        rate: int,
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
        # One second-order section: `lfilter` on its (b, a) is the filter `sosfilt` would run,
        # at a seventh of the cost per call (this runs for every wire frame of every call).
        self._b, self._a = signal.butter(2, HIGHPASS_HZ, "highpass", fs=rate)
        self._zi = np.zeros(2)  # the high-pass's state across calls
        self._pending_hp = np.zeros(0)  # the pending samples, high-passed
        self._after_filler = False  # the next frame completed starts with inserted silence
        self.frames_tracked = 0  # frames of the line itself (not inserted silence) so far
        self.frames_gated = 0
        # (frames gated, floor dB) as of the last `process`: one tuple, replaced whole, so the
        # event loop reads a consistent pair (stats, metrics) while the tokenizer thread encodes
        self.figures: tuple[int, float] = (0, SILENT_DB)

    @property
    def floor_db(self) -> float:
        """The noise floor as estimated now (dBFS)."""
        return min(min(self._levels, default=SILENT_DB), self.max_floor_db)

    def process(self, pcm: np.ndarray, *, track: bool = True) -> np.ndarray:
        """Float PCM in; the whole frames it completes out, gated frames as zeros. A partial
        frame waits for the next call (the codec frames it the same way). With `track` False
        (silence the server inserted) the frames completed here leave the floor as it is."""
        hp = np.zeros(0)
        if pcm.size:
            hp, self._zi = signal.lfilter(self._b, self._a, pcm, zi=self._zi)
        buf = np.concatenate([self._pending, pcm])
        hbuf = np.concatenate([self._pending_hp, hp])
        n = buf.size // self.frame_samples * self.frame_samples
        self._pending, self._pending_hp = buf[n:].astype(np.float32), hbuf[n:]
        out = buf[:n].astype(np.float32, copy=True)
        frames = out.reshape(-1, self.frame_samples)
        power = np.mean(np.square(hbuf[:n].reshape(-1, self.frame_samples)), axis=1)
        levels = 10.0 * np.log10(np.maximum(power, 10.0 ** (SILENT_DB / 10.0)))
        for i, level in enumerate(levels.tolist()):
            if track and not self._after_filler:  # tracked with the gate off too (stats)
                self._levels.append(level)
                self.frames_tracked += 1
            self._after_filler = False
            if (
                self.margin_db
                and self.frames_tracked > self.warmup
                and level < self.floor_db + self.margin_db
            ):
                if frames[i].any():
                    self.frames_gated += 1
                frames[i] = 0.0
        if not track:  # the next frame holds the rest of it (and the resampler's delay)
            self._after_filler = True
        self.figures = (self.frames_gated, self.floor_db)
        return out

    def flush(self) -> np.ndarray:
        """The last partial frame, as it came (too short to measure; the codec pads it)."""
        rest, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        self._pending_hp = np.zeros(0)
        return rest
