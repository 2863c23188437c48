"""Opus on the wire: stateful per-call streams around libopus (opuslib).

Opus predicts each packet from the previous ones, so a call needs its own decoder for the
user's packets and its own encoder for the agent's: they cannot be shared or made stateless
like `streaming.encodings`. libopus encodes and decodes a second of 16 kHz audio in about
12 ms of one core (17 ms at 48 kHz), cheap next to a model step.

Agent packets travel several to a frame, each prefixed by its length (u16 little-endian), as
`pack_packets` writes them and `unpack_packets` reads them.
"""

from __future__ import annotations

import functools
import struct
from types import ModuleType

import numpy as np

from streaming.encodings import encode_audio

__all__ = [
    "MAX_PACKET_BYTES",
    "OpusDecoderStream",
    "OpusEncoderStream",
    "opus_available",
    "pack_packets",
    "unpack_packets",
]

MAX_PACKET_BYTES = 1275  # RFC 6716 section 3.4: the largest packet of one frame
AGENT_PACKET_MS = 20
BITRATE = 24000  # bit/s: plenty for 8 kHz codec speech; the browser page uses it too
_MAX_DECODE_MS = 120  # the longest packet Opus allows
_LENGTH = struct.Struct("<H")


@functools.cache
def _opuslib() -> ModuleType | None:
    """opuslib, loaded on first use: it needs the libopus system library (Debian libopus0),
    and a server without it must still start and serve PCM16 and mu-law calls."""
    try:
        import opuslib
    except Exception:  # opuslib raises a bare Exception when libopus is missing
        return None
    return opuslib


def opus_available() -> bool:
    return _opuslib() is not None


def _require() -> ModuleType:
    lib = _opuslib()
    if lib is None:
        raise RuntimeError(
            "Opus needs the libopus system library (Debian: apt-get install libopus0)"
        )
    return lib


class OpusDecoderStream:
    """One call's decoder: packets in order -> float32 mono at the wire rate."""

    def __init__(self, sample_rate: int) -> None:
        self._opus = _require()
        self._decoder = self._opus.Decoder(sample_rate, 1)
        self._max_samples = sample_rate * _MAX_DECODE_MS // 1000

    def decode(self, packet: bytes) -> np.ndarray:
        """Decode one packet; raises ValueError when libopus cannot (a corrupt packet)."""
        try:
            pcm = self._decoder.decode(packet, self._max_samples)
        except self._opus.OpusError as exc:
            reason = str(exc).removeprefix("b'").removesuffix("'")  # opuslib's str is a bytes repr
            raise ValueError(f"not a valid Opus packet: {reason}") from exc
        return np.frombuffer(pcm, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)


class OpusEncoderStream:
    """One call's encoder: float32 audio in any chunk lengths -> whole packets.

    With `align` the encoder's lookahead is compensated the way the resampler's delay is: its
    first `lookahead` input samples are skipped, so packet m decodes to samples [m*F, (m+1)*F)
    exactly. The cost: audio waits until a whole packet plus the lookahead has arrived, so each
    tick's last samples go out with the next tick (see docs/protocol.md). Without it every
    whole packet of input goes out at once and decodes `lookahead` samples late.
    """

    def __init__(
        self, sample_rate: int, packet_ms: int = AGENT_PACKET_MS, align: bool = True
    ) -> None:
        opus = _require()
        self._encoder = opus.Encoder(sample_rate, 1, opus.APPLICATION_VOIP)
        self._encoder.bitrate = BITRATE
        self.packet_samples = sample_rate * packet_ms // 1000
        self.lookahead = int(self._encoder.lookahead) if align else 0
        self._pending = np.zeros(0, dtype=np.float32)  # wire audio from the next packet's start

    def encode(self, pcm: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
        """Append audio; return the audio the new packets cover, and the packets."""
        buf = np.concatenate([self._pending, np.asarray(pcm, dtype=np.float32)])
        f, la = self.packet_samples, self.lookahead
        n = max(0, (len(buf) - la) // f)
        packets = [
            self._encoder.encode(encode_audio(buf[la + i * f : la + (i + 1) * f], "pcm16"), f)
            for i in range(n)
        ]
        self._pending = buf[n * f :]
        return buf[: n * f], packets


def pack_packets(packets: list[bytes]) -> bytes:
    """Several packets in one payload, each prefixed by its u16 LE length."""
    return b"".join(_LENGTH.pack(len(p)) + p for p in packets)


def unpack_packets(payload: bytes) -> list[bytes]:
    """Split a `pack_packets` payload; raises ValueError on a torn or oversized packet."""
    packets, pos = [], 0
    while pos < len(payload):
        if pos + _LENGTH.size > len(payload):
            raise ValueError(f"torn Opus length prefix at byte {pos}")
        (n,) = _LENGTH.unpack_from(payload, pos)
        pos += _LENGTH.size
        if not 0 < n <= MAX_PACKET_BYTES or pos + n > len(payload):
            raise ValueError(f"Opus packet of {n} bytes at byte {pos} does not fit the payload")
        packets.append(bytes(payload[pos : pos + n]))
        pos += n
    return packets
