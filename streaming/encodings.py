"""Wire audio encodings: float32 PCM <-> the bytes a client sends or receives.

Float samples live in [-1, 1) with int16 full scale at 32768, so an int16 value ``v`` maps to
``v / 32768`` and back exactly. Mu-law is ITU-T G.711 as implemented by CPython's (deprecated,
removed in 3.13) ``audioop.lin2ulaw`` / ``audioop.ulaw2lin``, A-law as ``audioop.lin2alaw`` /
``audioop.alaw2lin``: both directions are table lookups built once at import, so encoding and
decoding are single vectorised numpy gathers.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import numpy.typing as npt

__all__ = [
    "Encoding", "alaw_decode", "alaw_encode", "bytes_per_sample", "decode_audio", "encode_audio",
]  # fmt: skip

_INT16_SCALE = 32768.0


class Encoding(StrEnum):
    """Wire sample formats; the values are the strings clients put in their session config."""

    PCM16 = "pcm16"  # little-endian signed 16-bit mono
    MULAW = "mulaw"  # G.711 mu-law, one byte per sample


def _ulaw_to_int16(code: npt.NDArray[np.int64]) -> npt.NDArray[np.int16]:
    """G.711 expansion: complement, then (mantissa * 8 + bias) << exponent, minus the bias."""
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _int16_to_ulaw(pcm: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """G.711 compression of 16-bit input truncated to 14 bits, exactly as audioop does it."""
    v = pcm >> 2  # arithmetic shift: -1..-4 -> -1, as in audioop
    mask = np.where(v < 0, 0x7F, 0xFF)
    mag = np.abs(v) + (0x84 >> 2)
    # Segment = number of segment end points (0x3F, 0x7F, ..., 0x1FFF) that mag exceeds.
    seg_end = np.array([(0x40 << i) - 1 for i in range(8)])
    seg = np.searchsorted(seg_end, mag, side="left")
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8)


# Decode: mu-law byte -> float32. Encode: int16 bit pattern (read as uint16) -> mu-law byte.
_ULAW_DECODE: npt.NDArray[np.float32] = _ulaw_to_int16(np.arange(256, dtype=np.int64)).astype(
    np.float32
) * np.float32(1.0 / _INT16_SCALE)
_ULAW_ENCODE: npt.NDArray[np.uint8] = _int16_to_ulaw(
    np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int64)
)
_ULAW_DECODE.flags.writeable = False
_ULAW_ENCODE.flags.writeable = False


def bytes_per_sample(encoding: Encoding | str) -> int:
    """Payload bytes per mono sample, so callers can size frames without decoding them."""
    return 2 if Encoding(encoding) is Encoding.PCM16 else 1


def decode_audio(payload: bytes | bytearray | memoryview, encoding: Encoding | str) -> np.ndarray:
    """Decode a wire payload to float32 mono in [-1, 1).

    Raises ValueError for an unknown encoding or a PCM16 payload of odd length (a torn sample
    means the client framing is broken; guessing would shift every later sample).
    """
    enc = Encoding(encoding)
    if enc is Encoding.PCM16:
        n = memoryview(payload).nbytes
        if n % 2:
            raise ValueError(f"pcm16 payload length must be even, got {n} bytes")
        pcm = np.frombuffer(payload, dtype="<i2")
        return pcm.astype(np.float32) * np.float32(1.0 / _INT16_SCALE)
    return _ULAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


def _to_int16(pcm: np.ndarray) -> npt.NDArray[np.int16]:
    """Clip to [-1, 1] and round to int16; NaN becomes silence so one bad sample cannot crash
    the send path (inf clips to full scale)."""
    x = np.asarray(pcm)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono audio, got shape {x.shape}")
    y = np.clip(x.astype(np.float32, copy=False), -1.0, 1.0) * np.float32(_INT16_SCALE)
    np.nan_to_num(y, copy=False, nan=0.0)
    np.rint(y, out=y)
    np.minimum(y, 32767.0, out=y)
    return y.astype(np.int16)


def encode_audio(pcm: np.ndarray, encoding: Encoding | str) -> bytes:
    """Encode float mono audio to a wire payload, clipping to [-1, 1].

    Raises ValueError for an unknown encoding or audio that is not 1-D.
    """
    enc = Encoding(encoding)
    samples = _to_int16(pcm)
    if enc is Encoding.PCM16:
        return samples.astype("<i2", copy=False).tobytes()
    return _ULAW_ENCODE[samples.view(np.uint16)].tobytes()


# -- G.711 A-law: OpenAI Realtime's `audio/pcma` (the native protocol speaks pcm16 and mu-law) --


def _alaw_to_int16(code: npt.NDArray[np.int64]) -> npt.NDArray[np.int16]:
    """G.711 A-law expansion, bit-exact with audioop.alaw2lin."""
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(
        seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0))
    )
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _int16_to_alaw(pcm: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """G.711 A-law compression of 16-bit input (13 bits used), bit-exact with audioop.lin2alaw."""
    v = pcm >> 3
    negative = v < 0
    mask = np.where(negative, 0x55, 0xD5)
    v = np.where(negative, -v - 1, v)
    seg = np.searchsorted(np.array([(0x20 << i) - 1 for i in range(8)]), v, side="left")
    mantissa = np.where(seg < 2, v >> 1, v >> np.maximum(seg, 1)) & 0x0F
    return (np.where(seg >= 8, 0x7F, (seg << 4) | mantissa) ^ mask).astype(np.uint8)


_ALAW_DECODE = _alaw_to_int16(np.arange(256, dtype=np.int64)).astype(np.float32) / np.float32(
    _INT16_SCALE
)
_ALAW_ENCODE = _int16_to_alaw(np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int64))


def alaw_decode(payload: bytes) -> npt.NDArray[np.float32]:
    return _ALAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


def alaw_encode(pcm16: bytes) -> bytes:
    """pcm16 little-endian bytes -> A-law bytes."""
    return _ALAW_ENCODE[np.frombuffer(pcm16, dtype="<u2")].tobytes()
