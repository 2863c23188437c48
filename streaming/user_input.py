"""A session's user audio on its way in: wire PCM -> codec rate -> units, per time chunk.

The event loop only appends decoded frames (`push`, cheap); a tokenizer thread resamples and
encodes them as they come (`tokenize`), and the tick worker collects whole chunks (`drain`).
A chunk's index is fixed by its samples' indices, never by arrival time, and its arrival is the
arrival of the frame that completed it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from streaming.codec import SpeechCodec
from streaming.resample import StreamResampler


@dataclass(frozen=True, slots=True)
class UserChunk:
    index: int
    units: np.ndarray  # [frames_per_chunk, units_per_frame]
    arrival: float  # monotonic time the completing frame arrived


class UserAudioInput:
    def __init__(self, codec: SpeechCodec, wire_rate: int, frames_per_chunk: int) -> None:
        self.codec = codec
        self.frames_per_chunk = frames_per_chunk
        self._resampler = StreamResampler(wire_rate, codec.sample_rate)
        self._encoder = codec.new_encoder()
        self._lock = threading.Lock()  # guards the queue (event loop vs threads)
        self._work = threading.Lock()  # guards codec state (tokenizer thread vs tick worker)
        self._ready: list[UserChunk] = []
        self._queue: list[tuple[np.ndarray, float]] = []
        self._ended = False
        self._flushed = False
        self._units = np.zeros((0, codec.units_per_frame), dtype=np.int64)
        self._last_arrival = 0.0
        self.next_chunk = 0  # index of the first chunk not yet drained
        self.samples_in = 0  # wire samples received (gaps included)

    def push(self, pcm: np.ndarray, arrival: float) -> None:
        """Append the next wire samples (the caller checked their order)."""
        with self._lock:
            self._queue.append((pcm, arrival))
            self.samples_in += len(pcm)

    def end(self) -> None:
        """No more audio: the last partial chunk is completed with silence."""
        with self._lock:
            self._ended = True

    def tokenize(self) -> None:
        """Encode what arrived so far. A background thread calls this between ticks, so the
        tick's own `drain` finds little left to do."""
        with self._lock:
            queue, self._queue = self._queue, []
            ended = self._ended
        with self._work:
            for pcm, arrival in queue:
                self._last_arrival = arrival
                self._add_units(self._encoder.encode(self._resampler.process(pcm)))
                self._ready += self._complete_chunks(arrival)
            if ended and not self._flushed:
                self._flushed = True
                self._add_units(self._encoder.encode(self._resampler.flush()))
                self._add_units(self._encoder.flush())
                short = -len(self._units) % self.frames_per_chunk
                silence = np.full((short, self.codec.units_per_frame), self.codec.silence_unit)
                self._add_units(silence)
                self._ready += self._complete_chunks(self._last_arrival)

    def drain(self) -> list[UserChunk]:
        """Every chunk completed since the last drain (the tick worker)."""
        self.tokenize()
        with self._work:
            ready, self._ready = self._ready, []
        return ready

    def _add_units(self, units: np.ndarray) -> None:
        if len(units):
            self._units = np.concatenate([self._units, units.astype(np.int64)])

    def _complete_chunks(self, arrival: float) -> list[UserChunk]:
        f = self.frames_per_chunk
        out = []
        while len(self._units) >= f:
            out.append(UserChunk(self.next_chunk, self._units[:f], arrival))
            self._units = self._units[f:]
            self.next_chunk += 1
        return out
