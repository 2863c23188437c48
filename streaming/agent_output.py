"""A session's agent audio on its way out: units -> codec PCM -> wire rate -> wire bytes.

Frames are contiguous: the resampler's delay is compensated, so the first frame is shorter
by that delay and every frame's `first_sample` is exact; a client writes each at its place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streaming.codec import SpeechCodec
from streaming.resample import StreamResampler
from streaming.transport import encode_audio


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
        self.samples_out = 0

    def render(self, units: np.ndarray) -> AgentAudio:
        """Vocode one chunk of units [frames, units_per_frame] and encode it for the wire."""
        pcm = self._resampler.process(self._decoder.decode(units))
        out = AgentAudio(self.samples_out, pcm, encode_audio(pcm, self._encoding))
        self.samples_out += len(pcm)
        return out
