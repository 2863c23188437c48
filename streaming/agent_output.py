"""A session's agent audio on its way out: units -> codec PCM -> wire rate -> wire bytes.

Frames are contiguous: the resampler's delay is compensated, so the first frame is shorter
by that delay and every frame's `first_sample` is exact; a client writes each at its place.
With Opus a frame holds whole 20 ms packets: the rest of a tick's audio waits for the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streaming.codecs import SpeechCodec
from streaming.encodings import encode_audio
from streaming.opus import OpusEncoderStream, pack_packets
from streaming.resample import StreamResampler


@dataclass(frozen=True, slots=True)
class AgentAudio:
    first_sample: int  # at the wire rate
    pcm: np.ndarray  # float32 at the wire rate
    payload: bytes


class AgentAudioOutput:
    def __init__(self, codec: SpeechCodec, wire_rate: int, encoding: str) -> None:
        self._decoder = codec.new_decoder()
        self._resampler = StreamResampler(codec.sample_rate, wire_rate)
        self._encoding = encoding
        self._opus = OpusEncoderStream(wire_rate) if encoding == "opus" else None
        self.samples_out = 0

    def render(self, units: np.ndarray) -> AgentAudio:
        """Vocode one chunk of units [frames, units_per_frame] and encode it for the wire."""
        pcm = self._resampler.process(self._decoder.decode(units))
        if self._opus is None:
            payload = encode_audio(pcm, self._encoding)
        else:  # `pcm` becomes the audio the packets cover, so first_sample stays exact
            pcm, packets = self._opus.encode(pcm)
            payload = pack_packets(packets)
        out = AgentAudio(self.samples_out, pcm, payload)
        self.samples_out += len(pcm)
        return out
