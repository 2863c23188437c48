"""A session's user audio on its way in: wire PCM -> codec rate -> noise gate -> units, per
time chunk.

The event loop only appends decoded frames (`push`, cheap); a tokenizer thread resamples and
encodes them as they come (`tokenize`), and the tick worker collects whole chunks and the first
frames of the chunk still arriving (`drain`). A chunk's index is fixed by its
samples' indices, never by arrival time; every codec frame keeps the arrival of the wire frame
that completed it.

A codec with a batched path (a neural one: streaming/codecs/__init__.py, `EncoderBatch`) keeps
every call's encoder in a row of one batch (`EncoderRows`): `tokenize_all` encodes all calls'
new audio in one batched codec call. Other codecs give each call its own encoder.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streaming.codecs import EncoderBatch, SpeechCodec, StreamEncoder
from streaming.noise_gate import NoiseGate
from streaming.rate_chain import stream_resampler


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


@dataclass(frozen=True, slots=True)
class _Taken:
    """Audio taken off a call's queue, at the codec rate, gated: what to encode next."""

    pcm: np.ndarray  # float32 [n]
    ends: np.ndarray  # int64 [pieces]: where each queued piece ends in `pcm`
    arrivals: list[float]  # per piece
    flush: bool  # the call ended: flush the encoder, complete the last chunk with silence


class EncoderRows:
    """Every call's encoder as a row of one codec batch: calls join at their first tick and
    leave with it (the tick worker), and `tokenize` encodes all their new audio in one batched
    call. The tokenizer thread and the tick worker both encode: one lock keeps each call's
    audio in order."""

    def __init__(self, batch: EncoderBatch) -> None:
        self._batch = batch
        self._lock = threading.Lock()

    def add(self, user: UserAudioInput) -> None:
        with self._lock:
            self._batch.add(user)

    def remove(self, user: UserAudioInput) -> None:
        with self._lock:
            self._batch.remove(user)

    def tokenize(self, users: Sequence[UserAudioInput]) -> int:
        """Encode what arrived for each of `users` that has joined (the others' audio waits
        for their row); returns how many codec frames that made."""
        with self._lock:  # a call whose audio is being encoded now is waited for, not skipped
            users = [u for u in users if u.has_work]
            if not users:
                return 0
            taken: dict[UserAudioInput, _Taken] = {}
            for user in users:
                if user in self._batch:
                    with user._work:
                        taken[user] = user._take()
            units = self._batch.encode({u: t.pcm for u, t in taken.items()})
            ended = [u for u, t in taken.items() if t.flush]
            tails = self._batch.flush(ended) if ended else {}
            made = 0
            for user, t in taken.items():
                with user._work:
                    made += user._accept(t, units[user], tails.get(user))
            return made


def tokenize_all(users: Sequence[UserAudioInput]) -> int:
    """Encode what arrived for each call: those whose encoders are rows of a batch in one
    batched call, the others one by one; returns how many codec frames that made."""
    shared: dict[EncoderRows, list[UserAudioInput]] = {}
    made = 0
    for user in users:
        if user.rows is None:
            made += user.tokenize()
        else:
            shared.setdefault(user.rows, []).append(user)
    return made + sum(rows.tokenize(group) for rows, group in shared.items())


class UserAudioInput:
    def __init__(
        self,
        codec: SpeechCodec,
        wire_rate: int,
        frames_per_chunk: int,
        noise_gate_db: float = 0.0,
        rows: EncoderRows | None = None,
    ) -> None:
        """`noise_gate_db`: the gate's margin over the noise floor (0: no gate). `rows`: the
        batch the call's encoder is a row of (from `join` on), else it has its own."""
        self.codec = codec
        self.frames_per_chunk = frames_per_chunk
        self.rows = rows
        self._resampler = stream_resampler(wire_rate, codec.sample_rate)
        self.gate = NoiseGate(codec.sample_rate, codec.frame_samples, noise_gate_db)
        self._encoder: StreamEncoder | None = codec.new_encoder() if rows is None else None
        self._lock = threading.Lock()  # guards the queue (event loop vs threads)
        self._work = threading.Lock()  # guards codec state (tokenizer thread vs tick worker)
        self._ready: list[UserChunk] = []
        self._queue: list[tuple[np.ndarray, float, bool]] = []
        self._ended = False
        self._flushed = False
        self._units = np.zeros((0, codec.units_per_frame), dtype=np.int64)
        self._arrivals: list[float] = []  # per row of _units
        self._last_arrival = 0.0
        self._fed = 0  # codec-rate samples given to the encoder
        self._coded = 0  # frames the encoder returned for them (flush and padding aside)
        self.next_chunk = 0  # index of the first chunk not yet complete
        self.frames_encoded = 0  # codec frames encoded so far (the tick waits on this)
        self.samples_in = 0  # wire samples in the stream (gaps and re-anchoring included)

    def start_at(self, chunk: int, frames: np.ndarray, samples: int) -> None:
        """Go on from chunk `chunk`, whose first `frames` were encoded elsewhere, at wire
        sample `samples` of the stream, as a call moved from another replica does: what came
        before was that replica's."""
        self.next_chunk, self.samples_in = chunk, samples
        self._units = frames.astype(np.int64).reshape(-1, self.codec.units_per_frame)
        self._arrivals = [0.0] * len(self._units)
        self.frames_encoded = chunk * self.frames_per_chunk + len(self._units)

    def join(self) -> None:
        """The call's encoder takes its row in the batch (no-op with an encoder of its own)."""
        if self.rows is not None:
            self.rows.add(self)

    def leave(self) -> None:
        """The call's row is freed."""
        if self.rows is not None:
            self.rows.remove(self)

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

    @property
    def has_work(self) -> bool:
        """Audio is queued, or the end is still to be flushed: a `tokenize` would encode.
        Read without the lock: what is pushed after the read waits for the next call."""
        return bool(self._queue) or (self._ended and not self._flushed)

    def tokenize(self) -> int:
        """Encode what arrived so far; returns how many codec frames that made. A background
        thread calls this as audio comes, so the tick's own `drain` finds little left to do.
        With nothing queued it returns at once: the tokenizer wakes for every wire frame while
        a tick waits, and every call without new audio would otherwise pay for an empty
        encode."""
        if self.rows is not None:
            return self.rows.tokenize([self])
        if not self.has_work:  # (audio being encoded now: `drain` waits for it on `_work`)
            return 0
        assert self._encoder is not None  # one of the two, from __init__
        with self._work:
            taken = self._take()
            units = self._encoder.encode(taken.pcm)
            return self._accept(taken, units, self._encoder.flush() if taken.flush else None)

    def drain(self) -> tuple[list[UserChunk], PartialChunk]:
        """Every chunk completed since the last drain, and the frames of the chunk still
        arriving, taken together (the tick worker)."""
        self.tokenize()
        with self._work:
            ready, self._ready = self._ready, []
            part = PartialChunk(self.next_chunk, self._units.copy(), list(self._arrivals))
        return ready, part

    def _take(self) -> _Taken:
        """The queued audio resampled and gated, with the tails once the call ended (under
        `_work`)."""
        with self._lock:
            queue, self._queue = self._queue, []
            ended = self._ended
        pieces: list[np.ndarray] = []
        arrivals: list[float] = []
        for pcm, arrival, filler in queue:
            self._last_arrival = arrival
            pieces.append(self.gate.process(self._resampler.process(pcm), track=not filler))
            arrivals.append(arrival)
        flush = ended and not self._flushed
        if flush:
            self._flushed = True
            # the resampler's tail runs into its zero padding: not the line's floor
            pieces += [self.gate.process(self._resampler.flush(), track=False), self.gate.flush()]
            arrivals += [self._last_arrival] * 2
        ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
        pcm = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return _Taken(pcm, ends, arrivals, flush)

    def _accept(self, taken: _Taken, units: np.ndarray, tail: np.ndarray | None) -> int:
        """Take the encoder's frames for `taken` (each with the arrival of the piece that
        completed it), and `tail`, its flush; returns how many frames that made (under
        `_work`)."""
        before = self.frames_encoded
        if len(units):
            frame_ends = (self._coded + np.arange(1, len(units) + 1)) * self.codec.frame_samples
            pieces = np.searchsorted(self._fed + taken.ends, frame_ends)
            self._add_units(units, [taken.arrivals[i] for i in pieces])
        self._fed += len(taken.pcm)
        self._coded += len(units)
        if tail is not None:
            last = self._last_arrival
            self._add_units(tail, [last] * len(tail))
            short = -len(self._units) % self.frames_per_chunk
            silence = np.tile(np.asarray(self.codec.silence_frame, dtype=np.int64), (short, 1))
            self._add_units(silence, [last] * short)
        self._ready += self._complete_chunks()
        return self.frames_encoded - before

    def _add_units(self, units: np.ndarray, arrivals: list[float]) -> None:
        if len(units):
            self._units = np.concatenate([self._units, units.astype(np.int64)])
            self._arrivals += arrivals
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
