"""Mimi codec: chunked == whole, == transformers' whole-signal MimiModel, batch == alone.

A tiny random MimiModel (real 1920-sample frames, a 10-token attention window so signals of a
few frames already slide it) saved with save_pretrained and loaded through the registry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import MimiConfig, MimiModel
from transformers.models.mimi.modeling_mimi import MimiAttention, MimiEuclideanCodebook

from model.checkpoint import DuplexConfig, init_random_checkpoint
from streaming.codecs import SpeechCodec, load_codec
from streaming.codecs.mimi import MAX_STEP_FRAMES, SILENCE_PROBE_FRAMES, MimiCodec

K = 8
FRAME = 1920
VOCAB = 64
WINDOW_FRAMES = 5  # sliding_window 10 tokens at 2 tokens a frame


def tiny_config() -> MimiConfig:
    return MimiConfig(
        hidden_size=16,
        num_filters=4,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        codebook_size=VOCAB,
        codebook_dim=8,
        vector_quantization_hidden_dimension=8,  # shrinks with hidden_size ...
        upsample_groups=8,  # ... and so do the groups (hidden_size must divide by them)
        num_quantizers=K,
        sliding_window=2 * WINDOW_FRAMES,
        layer_scale_initial_scale=1.0,  # not 0.01: the transformers' part must show in the codes
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny model's ops are small: a second thread only spins (the file takes 6x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_tiny_mimi(path: Path) -> None:
    """A seeded tiny random Mimi, written as ``MimiModel.save_pretrained`` writes real ones."""
    torch.manual_seed(0)
    model = MimiModel(tiny_config())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MimiEuclideanCodebook):  # all-zero: every code would be 0
                module.embed_sum.normal_()
            if isinstance(module, MimiAttention):  # sharper attention, so that positions matter
                module.q_proj.weight.mul_(20)
                module.k_proj.weight.mul_(20)
    model.save_pretrained(path)


def init_mimi_checkpoint(root: Path) -> DuplexConfig:
    """A random-weight tiny Llama speaking K codebooks of a tiny Mimi kept in ``root/mimi``."""
    save_tiny_mimi(root / "mimi")
    spec = {"type": "mimi", "dir": "mimi", "codebooks": K}
    return init_random_checkpoint(root, codec_spec=spec, layers=1, hidden=64)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory holding the Mimi model in a subdirectory ``mimi``."""
    root = tmp_path_factory.mktemp("ckpt")
    save_tiny_mimi(root / "mimi")
    return root


@pytest.fixture(scope="module")
def codec(ckpt: Path) -> MimiCodec:
    loaded = load_codec({"type": "mimi", "dir": "mimi", "codebooks": K}, ckpt)
    assert isinstance(loaded, MimiCodec)
    return loaded


def noise(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def codes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (n, K))


def assert_pcm_close(got: np.ndarray, want: np.ndarray) -> None:
    """Float rounding only: the random model's output peaks in the tens, errors ~1e-5."""
    assert got.shape == want.shape
    peak = float(np.abs(want).max(initial=1.0))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * peak)


def cuts(n: int, points: list[int]) -> list[tuple[int, int]]:
    bounds = [0, *sorted({p % (n + 1) for p in points}), n]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def test_interface_and_registry(codec: MimiCodec, ckpt: Path) -> None:
    c: SpeechCodec = codec
    assert (c.sample_rate, c.frame_samples, c.units_per_frame, c.vocab_size) == (
        24000,
        FRAME,
        K,
        64,
    )
    assert c.frame_ms == 80.0 and c.name == "mimi-8x64"
    absolute = load_codec({"type": "mimi", "dir": str(ckpt / "mimi")}, Path("/nonexistent"))
    assert absolute.units_per_frame == 8  # the default K
    with pytest.raises(ValueError, match="needs a 'dir'"):
        load_codec({"type": "mimi"}, ckpt)


def test_bad_directory_and_codebooks(codec: MimiCodec, ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no Mimi model at"):
        load_codec({"type": "mimi", "dir": "absent"}, ckpt)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama' model, not a Mimi codec"):
        MimiCodec.from_pretrained(tmp_path / "llama")
    tiny_config().save_pretrained(tmp_path / "no_weights")
    with pytest.raises(ValueError, match="cannot load the Mimi weights"):
        MimiCodec.from_pretrained(tmp_path / "no_weights")
    for k in (0, K + 1):
        with pytest.raises(ValueError, match=r"codebooks must be in \[1, 8\]"):
            load_codec({"type": "mimi", "dir": "mimi", "codebooks": k}, ckpt)
    with pytest.raises(ValueError, match="codebooks must be an int"):
        MimiCodec(codec.model, True)
    with pytest.raises(ValueError, match="codebooks must be an int"):
        MimiCodec(codec.model, 2.0)  # type: ignore[arg-type]
    assert MimiCodec(codec.model, 1).new_encoder().encode(noise(FRAME, 0)).shape == (1, 1)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 3 * WINDOW_FRAMES * FRAME),
    points=st.lists(st.integers(0, 10**6), max_size=6),
    seed=st.integers(0, 3),
)
def test_chunked_encode_equals_whole(
    codec: MimiCodec, n: int, points: list[int], seed: int
) -> None:
    x = noise(n, seed)
    whole = codec.new_encoder()
    want = np.concatenate([whole.encode(x), whole.flush()])
    enc = codec.new_encoder()
    got = np.concatenate([enc.encode(x[a:b]) for a, b in cuts(n, points)] + [enc.flush()])
    assert got.dtype == np.int64 and got.shape == (-(-n // FRAME), K)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 3 * WINDOW_FRAMES),
    points=st.lists(st.integers(0, 100), max_size=6),
    seed=st.integers(0, 3),
)
def test_chunked_decode_equals_whole(
    codec: MimiCodec, n: int, points: list[int], seed: int
) -> None:
    units = codes(n, seed)
    want = codec.new_decoder().decode(units)
    dec = codec.new_decoder()
    got = np.concatenate([dec.decode(units[a:b]) for a, b in cuts(n, points)])
    assert got.dtype == np.float32 and got.shape == (n * FRAME,)
    assert_pcm_close(got, want)


def test_streaming_equals_transformers_whole_signal(codec: MimiCodec) -> None:
    """Frame by frame, past the attention window and the step size, against MimiModel's own
    whole-signal (non-streaming) encode and decode."""
    n = 4 * WINDOW_FRAMES + MAX_STEP_FRAMES + 1
    x = noise(n * FRAME, 7)
    enc, dec = codec.new_encoder(), codec.new_decoder()
    units = np.concatenate([enc.encode(x[i * FRAME : (i + 1) * FRAME]) for i in range(n)])
    pcm = np.concatenate([dec.decode(units[i : i + 1]) for i in range(n)])
    with torch.no_grad():
        ref = codec.model.encode(torch.from_numpy(x)[None, None], num_quantizers=K)
        np.testing.assert_array_equal(units, ref.audio_codes[0].T.numpy())
        audio = codec.model.decode(ref.audio_codes).audio_values[0, 0].numpy()
    assert_pcm_close(pcm, audio)
    # One call of many frames is split into forwards of at most MAX_STEP_FRAMES: same result.
    np.testing.assert_array_equal(codec.new_encoder().encode(x), units)
    assert_pcm_close(codec.new_decoder().decode(units), audio)


def test_flush_zero_pads_and_state_carries_on(codec: MimiCodec) -> None:
    x = noise(2 * FRAME + 700, 1)
    enc = codec.new_encoder()
    assert enc.flush().shape == (0, K)
    assert enc.encode(x).shape == (2, K)
    tail = enc.flush()
    assert tail.shape == (1, K) and enc.flush().shape == (0, K)
    after = enc.encode(x[:FRAME])
    padded = np.concatenate([x, np.zeros(FRAME - 700, np.float32), x[:FRAME]])
    want = codec.new_encoder().encode(padded)
    np.testing.assert_array_equal(np.concatenate([tail, after]), want[2:])


def test_silence_frame_is_the_settled_code_of_digital_silence(codec: MimiCodec) -> None:
    units = codec.new_encoder().encode(np.zeros(4 * SILENCE_PROBE_FRAMES * FRAME, np.float32))
    settled = units[SILENCE_PROBE_FRAMES - 1 :]
    np.testing.assert_array_equal(settled, np.broadcast_to(codec.silence_frame, settled.shape))
    assert isinstance(codec.silence_frame, tuple) and len(codec.silence_frame) == K
    assert codec.silence_unit == codec.silence_frame[0]
    assert len(set(codec.silence_frame)) > 1  # not one unit in every codebook


def test_batch_equals_each_call_alone(codec: MimiCodec) -> None:
    """Calls join and leave between ticks and bring different amounts of audio and frames
    (none, partial frames, more than one forward's worth); each gets what it gets alone."""
    rng = np.random.default_rng(3)
    enc_batch, dec_batch = codec.new_encoder_batch(), codec.new_decoder_batch()
    alone: dict[str, tuple] = {}
    pcm_lengths = [2 * FRAME, 2 * FRAME, 0, 700, FRAME + 1300, (MAX_STEP_FRAMES + 2) * FRAME]
    frame_counts = [2, 2, 0, 1, 3, MAX_STEP_FRAMES + 1]
    for tick in range(14):
        if tick in (0, 1, 4, 5, 9):
            enc_batch.add(f"call{tick}")
            dec_batch.add(f"call{tick}")
            alone[f"call{tick}"] = (codec.new_encoder(), codec.new_decoder())
        if tick in (6, 10):
            gone = sorted(alone)[1 if tick == 6 else 0]
            enc_batch.remove(gone)
            dec_batch.remove(gone)
            del alone[gone]
        for batch in (enc_batch, dec_batch):
            assert len(batch) == len(alone) and all(c in batch for c in alone)
        pcm = {c: noise(int(rng.choice(pcm_lengths)), tick) for c in alone}
        units = {c: codes(int(rng.choice(frame_counts)), tick) for c in alone}
        got_units, got_pcm = enc_batch.encode(pcm), dec_batch.decode(units)
        for c, (enc, dec) in alone.items():
            np.testing.assert_array_equal(got_units[c], enc.encode(pcm[c]))
            assert_pcm_close(got_pcm[c], dec.decode(units[c]))
    flushed = enc_batch.flush(list(alone))
    for c, (enc, _) in alone.items():
        np.testing.assert_array_equal(flushed[c], enc.flush())


def test_clear_errors(codec: MimiCodec) -> None:
    enc, dec = codec.new_encoder(), codec.new_decoder()
    enc_batch, dec_batch = codec.new_encoder_batch(), codec.new_decoder_batch()
    for bad in (np.zeros(10, np.int16), np.zeros((2, 10), np.float32), np.array([np.nan])):
        with pytest.raises(ValueError, match="PCM"):
            enc.encode(bad)
    with pytest.raises(ValueError, match=r"shape \[n, 8\]"):
        dec.decode(np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match=r"in \[0, 64\)"):
        dec.decode(np.full((1, K), VOCAB))
    for batch in (enc_batch, dec_batch):
        batch.add("a")
        with pytest.raises(ValueError, match="already in the batch"):
            batch.add("a")
        with pytest.raises(KeyError, match="not in the batch"):
            batch.remove("b")
    with pytest.raises(KeyError, match="not in the batch"):
        enc_batch.encode({"b": noise(10, 0)})
    with pytest.raises(KeyError, match="not in the batch"):
        enc_batch.flush(["b"])
    with pytest.raises(KeyError, match="not in the batch"):
        dec_batch.decode({"b": codes(1, 0)})
