"""Wire encodings: mu-law must match G.711 bit for bit (clients decode with their own codec),
PCM16 must be lossless for int16 input, and malformed input must fail loudly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from streaming.encodings import Encoding, bytes_per_sample, decode_audio, encode_audio

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)


def g711_ulaw_encode(sample: int) -> int:
    """Scalar G.711 mu-law compression (Sun g711.c / audioop), written as an independent loop."""
    v = sample >> 2
    mask = 0x7F if v < 0 else 0xFF
    v = min(abs(v), 8159) + 33
    for seg in range(8):
        if v <= (0x40 << seg) - 1:
            return ((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask
    return 0x7F ^ mask


def g711_ulaw_decode(code: int) -> int:
    """Scalar G.711 mu-law expansion."""
    u = ~code & 0xFF
    t = ((((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)) - 0x84
    return -t if u & 0x80 else t


def test_mulaw_known_values() -> None:
    x = np.array([0.0, 1.0, -1.0, 3 / 32768, -4 / 32768], dtype=np.float32)
    codes = encode_audio(x, "mulaw")  # 14-bit truncation: 3 -> 0 but -4 -> -1
    assert list(codes) == [0xFF, 0x80, 0x00, 0xFF, 0x7E]
    decoded = decode_audio(bytes([0xFF, 0x7F, 0x80, 0x00]), Encoding.MULAW) * 32768
    assert decoded.tolist() == [0, 0, 32124, -32124]


def test_mulaw_encode_matches_g711_for_every_int16() -> None:
    expected = bytes(g711_ulaw_encode(int(v)) for v in ALL_INT16)
    assert encode_audio(ALL_INT16 / 32768.0, Encoding.MULAW) == expected


def test_mulaw_decode_matches_g711_for_every_code() -> None:
    decoded = decode_audio(bytes(range(256)), Encoding.MULAW)
    assert decoded.dtype == np.float32
    assert (decoded * 32768).astype(int).tolist() == [g711_ulaw_decode(c) for c in range(256)]


def test_mulaw_codes_survive_decode_encode() -> None:
    codes = bytes(c for c in range(256) if c != 0x7F)  # 0x7F is "negative zero" -> 0xFF
    assert encode_audio(decode_audio(codes, "mulaw"), "mulaw") == codes


def test_mulaw_round_trip_error_is_bounded() -> None:
    x = ALL_INT16 / 32768.0
    y = decode_audio(encode_audio(x, "mulaw"), "mulaw")
    # Logarithmic quantiser: ~1/32 relative error (4 mantissa bits) plus a small floor.
    assert np.all(np.abs(y - x) <= np.abs(x) / 32 + 8 / 32768)


def test_pcm16_round_trip_is_exact_for_int16() -> None:
    payload = ALL_INT16.astype("<i2").tobytes()
    x = decode_audio(payload, Encoding.PCM16)
    assert x.dtype == np.float32
    assert np.array_equal(x * 32768, ALL_INT16)
    assert encode_audio(x, Encoding.PCM16) == payload


def test_pcm16_is_little_endian() -> None:
    assert decode_audio(b"\x01\x00\x00\x80", "pcm16").tolist() == [1 / 32768, -1.0]
    assert encode_audio(np.array([1 / 32768, -1.0]), "pcm16") == b"\x01\x00\x00\x80"


@given(arrays(np.float32, st.integers(0, 400), elements=st.floats(-1, 1, width=32)))
@settings(max_examples=100, deadline=None)
def test_pcm16_round_trip_within_one_lsb(x: np.ndarray) -> None:
    y = decode_audio(encode_audio(x, "pcm16"), "pcm16")
    assert y.shape == x.shape
    assert np.all(np.abs(y - x) <= 1 / 32768)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_encode_clips_and_silences_nan(encoding: Encoding) -> None:
    x = np.array([2.0, -2.0, np.inf, -np.inf, np.nan])
    clean = np.array([1.0, -1.0, 1.0, -1.0, 0.0])
    assert encode_audio(x, encoding) == encode_audio(clean, encoding)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_empty_and_buffer_types(encoding: Encoding) -> None:
    assert encode_audio(np.zeros(0, dtype=np.float32), encoding) == b""
    assert decode_audio(b"", encoding).shape == (0,)
    payload = encode_audio(np.linspace(-1, 1, 50), encoding)
    expected = decode_audio(payload, encoding)
    for buf in (bytearray(payload), memoryview(payload)):
        assert np.array_equal(decode_audio(buf, encoding), expected)


def test_bytes_per_sample() -> None:
    assert bytes_per_sample(Encoding.PCM16) == 2
    assert bytes_per_sample("mulaw") == 1


def test_pcm16_odd_length_names_the_length() -> None:
    with pytest.raises(ValueError, match="got 3 bytes"):
        decode_audio(b"\x00\x01\x02", "pcm16")


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        decode_audio(b"\x00\x00", "opus")
    with pytest.raises(ValueError):
        encode_audio(np.zeros(4), "alaw")
    with pytest.raises(ValueError):
        bytes_per_sample("pcm24")
    with pytest.raises(ValueError, match="1-D"):
        encode_audio(np.zeros((2, 4)), "pcm16")
