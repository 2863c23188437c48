"""Energy voice activity with hysteresis, on 20 ms frames: cheap enough for every frame of
every call, no model needed. Protocol bridges use it for speech_started/stopped events and
for barge-in; the load test uses silero-vad offline instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

FRAME_MS = 20
Event = tuple[Literal["started", "stopped"], int]  # (what, ms from the start of the stream)


def dbfs(pcm: np.ndarray) -> float:
    """Level of a frame in dB relative to full scale (silence is -inf)."""
    power = float(np.mean(np.square(pcm, dtype=np.float64))) if len(pcm) else 0.0
    return 10.0 * np.log10(power) if power > 0 else float("-inf")


@dataclass(frozen=True)
class VadParams:
    on_dbfs: float = -36.5  # a frame this loud may start speech
    off_dbfs: float = -42.5  # quieter frames count as silence (the gap is the hysteresis)
    start_frames: int = 3  # this many loud frames in a row start speech (a click does not)
    stop_frames: int = 25  # this many quiet frames in a row stop it


class EnergyVad:
    """Feed audio in any lengths; get speech start/stop events with their stream times."""

    def __init__(self, rate: int, params: VadParams = VadParams()) -> None:
        self.frame = rate * FRAME_MS // 1000
        self.params = params  # may change between pushes (a Realtime session.update)
        self._rest = np.zeros(0, dtype=np.float32)
        self._frames = 0
        self._loud = 0
        self._quiet = 0
        self._last_voiced = 0
        self.speaking = False

    def push(self, pcm: np.ndarray) -> list[Event]:
        x = np.concatenate([self._rest, pcm])
        n = len(x) // self.frame
        self._rest = x[n * self.frame :]
        frames = x[: n * self.frame].reshape(n, self.frame).astype(np.float64)
        rms = np.sqrt(np.mean(np.square(frames), axis=1))
        p = self.params
        on, off = 10 ** (p.on_dbfs / 20), 10 ** (p.off_dbfs / 20)
        events: list[Event] = []
        for level in rms.tolist():
            i = self._frames
            self._frames += 1
            if not self.speaking:
                self._loud = self._loud + 1 if level >= on else 0
                if self._loud >= p.start_frames:
                    self.speaking, self._quiet, self._last_voiced = True, 0, i
                    events.append(("started", (i - p.start_frames + 1) * FRAME_MS))
            elif level >= off:
                self._quiet, self._last_voiced = 0, i
            else:
                self._quiet += 1
                if self._quiet >= p.stop_frames:
                    self.speaking, self._loud = False, 0
                    events.append(("stopped", (self._last_voiced + 1) * FRAME_MS))
        return events
