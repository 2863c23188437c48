"""A session's user audio on its way in: wire PCM -> codec rate -> noise gate -> units, per
time chunk.

The event loop only appends decoded frames (`push`, cheap); a tokenizer thread resamples and
encodes them as they come (`tokenize`), and the tick worker collects whole chunks and the first
frames of the chunk still arriving (`drain`). A chunk's index is fixed by its
samples' indices, never by arrival time; every codec frame keeps the arrival of the wire frame
that completed it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from streaming.codecs import SpeechCodec
from streaming.noise_gate import NoiseGate
from streaming.resample import StreamResampler


@dataclass(frozen=True, slots=True)
class UserChunk:
    index: int
    units: np.ndarray  # [frames_per_chunk, units_per_frame]
    arrival: float  # monotonic time the completing frame arrived


@dataclass(frozen=True, slots=True)
class PartialChunk:
    """The frames of chunk `index` encoded so far (fewer than a chunk)."""

    index: int
    units: np.ndarray  # [frames, units_per_frame]
    arrivals: list[float]  # per frame


class UserAudioInput:
    def __init__(
        self,
        codec: SpeechCodec,
        wire_rate: int,
        frames_per_chunk: int,
        noise_gate_db: float = 0.0,
    ) -> None:
        """`noise_gate_db`: the gate's margin over the noise floor (0: no gate)."""
        self.codec = codec
        self.frames_per_chunk = frames_per_chunk
        self._resampler = StreamResampler(wire_rate, codec.sample_rate)
        self.gate = NoiseGate(codec.sample_rate, codec.frame_samples, noise_gate_db)
        self._encoder = codec.new_encoder()
        self._lock = threading.Lock()  # guards the queue (event loop vs threads)
        self._work = threading.Lock()  # guards codec state (tokenizer thread vs tick worker)
        self._ready: list[UserChunk] = []
        self._queue: list[tuple[np.ndarray, float, bool]] = []
        self._ended = False
        self._flushed = False
        self._units = np.zeros((0, codec.units_per_frame), dtype=np.int64)
        self._arrivals: list[float] = []  # per row of _units
        self._last_arrival = 0.0
        self.next_chunk = 0  # index of the first chunk not yet complete
        self.frames_encoded = 0  # codec frames encoded so far (the tick waits on this)
        self.samples_in = 0  # wire samples in the stream (gaps and re-anchoring included)

    def push(self, pcm: np.ndarray, arrival: float, *, filler: bool = False) -> None:
        """Append the next wire samples (the caller checked their order). `filler`: silence
        the server inserted, not the caller's line (the noise gate does not learn from it)."""
        with self._lock:
            self._queue.append((pcm, arrival, filler))
            self.samples_in += len(pcm)

    def end(self) -> None:
        """No more audio: the last partial chunk is completed with silence."""
        with self._lock:
            self._ended = True

    def tokenize(self) -> int:
        """Encode what arrived so far; returns how many codec frames that made. A background
        thread calls this as audio comes, so the tick's own `drain` finds little left to do."""
        with self._lock:
            queue, self._queue = self._queue, []
            ended = self._ended
        with self._work:
            before = self.frames_encoded
            for pcm, arrival, filler in queue:
                self._last_arrival = arrival
                pcm = self.gate.process(self._resampler.process(pcm), track=not filler)
                self._add_units(self._encoder.encode(pcm), arrival)
            if ended and not self._flushed:
                self._flushed = True
                last = self._last_arrival
                # the resampler's tail runs into its zero padding: not the line's floor
                tail = [self.gate.process(self._resampler.flush(), track=False), self.gate.flush()]
                self._add_units(self._encoder.encode(np.concatenate(tail)), last)
                self._add_units(self._encoder.flush(), last)
                short = -len(self._units) % self.frames_per_chunk
                silence = np.full((short, self.codec.units_per_frame), self.codec.silence_unit)
                self._add_units(silence, last)
            self._ready += self._complete_chunks()
            return self.frames_encoded - before

    def drain(self) -> tuple[list[UserChunk], PartialChunk]:
        """Every chunk completed since the last drain, and the frames of the chunk still
        arriving, taken together (the tick worker)."""
        self.tokenize()
        with self._work:
            ready, self._ready = self._ready, []
            part = PartialChunk(self.next_chunk, self._units.copy(), list(self._arrivals))
        return ready, part

    def _add_units(self, units: np.ndarray, arrival: float) -> None:
        if len(units):
            self._units = np.concatenate([self._units, units.astype(np.int64)])
            self._arrivals += [arrival] * len(units)
            self.frames_encoded += len(units)

    def _complete_chunks(self) -> list[UserChunk]:
        f = self.frames_per_chunk
        out = []
        while len(self._units) >= f:
            out.append(UserChunk(self.next_chunk, self._units[:f], self._arrivals[f - 1]))
            self._units = self._units[f:]
            del self._arrivals[:f]
            self.next_chunk += 1
        return out
