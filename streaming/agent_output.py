"""A session's agent audio on its way out: units -> codec PCM -> wire rate -> wire bytes.

Frames are contiguous: the resampler's delay is compensated, so the first frame is shorter
by that delay and every frame's `first_sample` is exact; a client writes each at its place.
With Opus a frame holds whole 20 ms packets: the rest of a tick's audio waits for the next.

A codec with a batched path keeps every call's decoder in a row of one batch (`DecoderRows`):
`render_all` vocodes all calls' new frames of a tick in one batched codec call. Other codecs
give each call its own decoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from streaming.codecs import DecoderBatch, SpeechCodec, StreamDecoder
from streaming.encodings import encode_audio
from streaming.opus import OpusEncoderStream, pack_packets
from streaming.rate_chain import stream_resampler


@dataclass(frozen=True, slots=True)
class AgentAudio:
    first_sample: int  # at the wire rate
    pcm: np.ndarray  # float32 at the wire rate
    payload: bytes


class DecoderRows:
    """Every call's decoder as a row of one codec batch: calls join at their first tick and
    leave with it, and `render` vocodes all their new frames in one batched call. One thread
    (the tick worker) drives it."""

    def __init__(self, batch: DecoderBatch) -> None:
        self._batch = batch

    def add(self, out: AgentAudioOutput) -> None:
        self._batch.add(out)

    def remove(self, out: AgentAudioOutput) -> None:
        self._batch.remove(out)

    def render(
        self, units: Mapping[AgentAudioOutput, np.ndarray]
    ) -> dict[AgentAudioOutput, AgentAudio]:
        pcm = self._batch.decode(units)
        return {out: out._send(pcm[out]) for out in units}


def render_all(units: Mapping[AgentAudioOutput, np.ndarray]) -> dict[AgentAudioOutput, AgentAudio]:
    """Each call's chunk of units vocoded and encoded for its wire: calls whose decoders are
    rows of a batch in one batched call, the others one by one."""
    shared: dict[DecoderRows, dict[AgentAudioOutput, np.ndarray]] = {}
    done: dict[AgentAudioOutput, AgentAudio] = {}
    for out, u in units.items():
        if out.rows is None:
            done[out] = out.render(u)
        else:
            shared.setdefault(out.rows, {})[out] = u
    for rows, group in shared.items():
        done.update(rows.render(group))
    return done


class AgentAudioOutput:
    def __init__(
        self, codec: SpeechCodec, wire_rate: int, encoding: str, rows: DecoderRows | None = None
    ) -> None:
        """`rows`: the batch the call's decoder is a row of (from `join` on), else it has its
        own."""
        self.rows = rows
        self._decoder: StreamDecoder | None = codec.new_decoder() if rows is None else None
        self._resampler = stream_resampler(codec.sample_rate, wire_rate)
        self._encoding = encoding
        self._opus = OpusEncoderStream(wire_rate) if encoding == "opus" else None
        self.samples_out = 0

    def join(self) -> None:
        """The call's decoder takes its row in the batch (no-op with a decoder of its own)."""
        if self.rows is not None:
            self.rows.add(self)

    def leave(self) -> None:
        """The call's row is freed."""
        if self.rows is not None:
            self.rows.remove(self)

    def render(self, units: np.ndarray) -> AgentAudio:
        """Vocode one chunk of units [frames, units_per_frame] and encode it for the wire."""
        if self.rows is not None:
            return self.rows.render({self: units})[self]
        assert self._decoder is not None  # one of the two, from __init__
        return self._send(self._decoder.decode(units))

    def _send(self, codec_pcm: np.ndarray) -> AgentAudio:
        """Vocoded PCM at the codec rate -> the wire's rate and encoding."""
        pcm = self._resampler.process(codec_pcm)
        if self._opus is None:
            payload = encode_audio(pcm, self._encoding)
        else:  # `pcm` becomes the audio the packets cover, so first_sample stays exact
            pcm, packets = self._opus.encode(pcm)
            payload = pack_packets(packets)
        out = AgentAudio(self.samples_out, pcm, payload)
        self.samples_out += len(pcm)
        return out
