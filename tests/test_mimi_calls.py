"""A call's Mimi audio on its way in and out, batched across calls: every call's encoder and
decoder a row of one batch, calls joining and leaving between ticks, each call getting the
units (with their arrivals) and the audio it gets alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from streaming.agent_output import AgentAudioOutput, DecoderRows, render_all
from streaming.codecs import decoder_batch, encoder_batch, load_codec
from streaming.codecs.mimi import MimiCodec
from streaming.user_input import EncoderRows, UserAudioInput, tokenize_all
from tests.test_mimi import VOCAB, K, save_tiny_mimi

WIRE = 16000  # a 3:2 ratio against Mimi's 24 kHz: the two-stage resampler
WIRE_FRAME = WIRE * 20 // 1000
FRAMES_PER_CHUNK = 2  # 160 ms of 80 ms frames


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> MimiCodec:
    root = tmp_path_factory.mktemp("mimi")
    save_tiny_mimi(root / "mimi")
    loaded = load_codec({"type": "mimi", "dir": "mimi", "codebooks": K}, root)
    assert isinstance(loaded, MimiCodec)
    return loaded


def speech(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * WIRE)) * 0.1).astype(
        np.float32
    )


def test_the_default_codec_has_no_batched_path() -> None:
    default = load_codec({"type": "codec2-units", "codebook": "builtin:codec2_units_1024"}, Path())
    assert encoder_batch(default) is None and decoder_batch(default) is None
    assert default.silence_frame == (default.silence_unit,)


def test_batched_input_equals_each_call_alone(codec: MimiCodec) -> None:
    """Three calls push 20 ms wire frames; they join at ticks 0, 1 and 3 (audio before the
    join waits for it) and the second leaves at tick 4; each tick encodes every joined call's
    audio in one batched call. Every call gets the chunks, partial frames and arrivals it
    gets with its own encoder, and its end is completed with Mimi's silence frame."""
    batch = encoder_batch(codec)
    assert batch is not None
    rows = EncoderRows(batch)
    calls = {name: speech(0.85 + 0.13 * i, i) for i, name in enumerate("abc")}
    joins, leaves = {"a": 0, "b": 1, "c": 3}, {"b": 4}
    shared = {c: UserAudioInput(codec, WIRE, FRAMES_PER_CHUNK, rows=rows) for c in calls}
    alone = {c: UserAudioInput(codec, WIRE, FRAMES_PER_CHUNK) for c in calls}
    got: dict[str, list] = {c: [] for c in calls}
    want: dict[str, list] = {c: [] for c in calls}
    ended: set[str] = set()
    for tick in range(8):
        for c, pcm in calls.items():
            for i in range(8 * tick, 8 * tick + 8):  # 8 wire frames a tick
                frame = pcm[i * WIRE_FRAME : (i + 1) * WIRE_FRAME]
                if len(frame):
                    for user in (shared[c], alone[c]):
                        user.push(frame, arrival=float(i))
                elif c not in ended:
                    ended.add(c)
                    for user in (shared[c], alone[c]):
                        user.end()
            if joins[c] == tick:
                shared[c].join()
            if leaves.get(c) == tick:
                shared[c].leave()
                assert shared[c] not in batch
        live = [c for c in calls if joins[c] <= tick < leaves.get(c, 99)]
        if tick == 0:
            tokenize_all(list(shared.values()))
            assert shared["b"].frames_encoded == 0 < shared["a"].frames_encoded  # b waits
        tokenize_all([shared[c] for c in live])
        for c in live:
            for user, out in ((shared[c], got[c]), (alone[c], want[c])):
                chunks, part = user.drain()
                out += [(x.index, x.units.tolist(), x.arrival) for x in chunks]
                out.append((part.index, part.units.tolist(), part.arrivals))
    assert got == want
    assert len(batch) == 2 and ended == set(calls)  # a and c in the batch, all ended
    whole = [x for x in got["a"] if len(x) == 3 and isinstance(x[2], float)]
    assert len(whole) == 6 and tuple(whole[-1][1][-1]) == codec.silence_frame  # 11 frames + 1


def test_batched_output_equals_each_call_alone(codec: MimiCodec) -> None:
    """Calls join and leave between ticks; one batched decode per tick gives each call the
    wire audio (16 kHz, time-aligned: the first chunk is short by the resampler's delay) its
    own decoder gives."""
    batch = decoder_batch(codec)
    assert batch is not None
    rows = DecoderRows(batch)
    rng = np.random.default_rng(5)
    outs: dict[str, tuple[AgentAudioOutput, AgentAudioOutput]] = {}
    for tick in range(6):
        if tick in (0, 2):
            out = AgentAudioOutput(codec, WIRE, "pcm16", rows)
            out.join()
            outs[f"call{tick}"] = (out, AgentAudioOutput(codec, WIRE, "pcm16"))
        if tick == 4:
            outs.pop("call0")[0].leave()
        units = {c: rng.integers(0, VOCAB, (FRAMES_PER_CHUNK, K)) for c in outs}
        got = render_all({shared: units[c] for c, (shared, _) in outs.items()})
        for c, (shared, own) in outs.items():
            want = own.render(units[c])
            first = want.first_sample == 0
            assert got[shared].first_sample == want.first_sample
            assert len(got[shared].pcm) == len(want.pcm) == 2560 - 40 * first
            peak = float(np.abs(want.pcm).max(initial=1.0))
            np.testing.assert_allclose(got[shared].pcm, want.pcm, rtol=0, atol=1e-5 * peak)
    assert len(batch) == 1
