"""User audio on its way in: whole chunks by sample index, the newest chunk's first frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.sampling import SamplingParams
from server.session import CallSession
from streaming.codecs import load_codec
from streaming.user_input import UserAudioInput
from streaming.wire import AudioFormat

BUILTIN = {"type": "codec2-units", "codebook": "builtin:codec2_units_1024"}


def test_partial_frames_then_the_whole_chunk_with_their_arrivals() -> None:
    codec = load_codec(BUILTIN, Path("."))
    f = codec.frame_samples  # 8 kHz wire: no resampling, one codec frame per wire frame
    audio = np.random.default_rng(0).normal(0, 0.1, 6 * f).astype(np.float32)
    user = UserAudioInput(codec, codec.sample_rate, frames_per_chunk=4)
    for i in range(2):
        user.push(audio[i * f : (i + 1) * f], arrival=float(i))
    chunks, part = user.drain()
    assert chunks == []
    assert part.index == 0 and len(part.units) == 2 and part.arrivals == [0.0, 1.0]
    assert user.frames_encoded == 2
    for i in range(2, 6):
        user.push(audio[i * f : (i + 1) * f], arrival=float(i))
    (chunk,), later = user.drain()
    assert chunk.index == 0 and chunk.arrival == 3.0  # the frame that completed it
    assert chunk.units[:2].tolist() == part.units.tolist()  # the early frames stay as they were
    part = later
    assert part.index == 1 and len(part.units) == 2 and part.arrivals == [4.0, 5.0]


def test_end_completes_the_last_chunk_with_silence() -> None:
    codec = load_codec(BUILTIN, Path("."))
    f = codec.frame_samples
    user = UserAudioInput(codec, codec.sample_rate, frames_per_chunk=4)
    user.push(np.zeros(f, dtype=np.float32), arrival=7.0)
    user.end()
    (chunk,), part = user.drain()
    assert chunk.index == 0 and chunk.arrival == 7.0
    assert (chunk.units == codec.silence_unit).all()
    assert len(part.units) == 0


def test_a_call_wakes_its_tokenizer_after_each_push() -> None:
    """The server side wakes the tokenizer (streaming/ never calls back into server/): once
    for each push of audio into the stream, the silence it inserts included."""
    codec = load_codec(BUILTIN, Path("."))
    woke: list[int] = []
    audio = AudioFormat(sample_rate=codec.sample_rate, frame_ms=40)
    session = CallSession(
        "c", audio, SamplingParams(), codec, 4, 0.16, max_gap_s=0.24, rollback_chunks=3,
        wake=lambda: woke.append(session.user_in.samples_in),
    )  # fmt: skip
    f = codec.frame_samples
    session.on_audio(0, np.zeros(f, dtype=np.float32))
    session.on_audio(2 * f, np.zeros(f, dtype=np.float32))  # a dropped frame: silence first
    session.on_end(3 * f + 10)  # a short last frame, padded
    assert woke == [f, 2 * f, 3 * f, 3 * f + 10]


def test_a_call_has_work_only_while_audio_or_its_end_waits() -> None:
    """The tokenizer wakes for every wire frame of any call while a tick waits; a call with
    nothing queued says so and is passed over without touching its codec."""
    codec = load_codec(BUILTIN, Path("."))
    f = codec.frame_samples
    user = UserAudioInput(codec, codec.sample_rate, frames_per_chunk=4)
    assert not user.has_work and user.tokenize() == 0
    user.push(np.zeros(f, dtype=np.float32), arrival=1.0)
    assert user.has_work
    assert user.tokenize() == 1 and not user.has_work
    assert user.tokenize() == 0 and user.frames_encoded == 1
    user.end()
    assert user.has_work  # the end is still to be flushed: the chunk's silence
    assert user.tokenize() == 3 and not user.has_work
    assert user.tokenize() == 0 and user.frames_encoded == 4
