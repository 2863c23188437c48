"""Voice prompts: a few seconds of speech a call opens with (docs/prompts.md).

A prompt is encoded with the checkpoint's codec and written before the call's chunk 0 as the
agent's own speech (model/timeline.py `Timeline.open`), in the attention sink for the whole
call: the model goes on in that voice as far as it learnt to keep a speaker's voice. Named
prompts are audio files (NAME.wav / NAME.flac) in `--prompts-dir`, read and encoded once at
start; a caller may upload its own (base64 PCM16 in the `start`), encoded at admission. Both
are at most the engine's longest opening (`--prompt-max-s`, or what the checkpoint's sink
holds).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from model.format import Frame
from streaming.codecs import SpeechCodec
from streaming.resample import resample_whole
from streaming.wire import SUPPORTED_RATES, ErrorCode, PromptRequest, ProtocolError

log = logging.getLogger("duplex.prompts")

SUFFIXES = (".wav", ".flac")
UPLOAD_RATES = SUPPORTED_RATES["pcm16"]


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    seconds: float
    rate: int  # of the source audio
    frames: list[Frame]  # the codec's frames of it


class PromptLibrary:
    """The server's named prompts, and the checks every prompt passes."""

    def __init__(self, codec: SpeechCodec, max_frames: int, directory: Path | None) -> None:
        """Read and encode every prompt in `directory`; a file that cannot be used stops the
        server at start (ValueError naming it), so that no call meets it later."""
        self.codec = codec
        self.max_frames = max_frames
        self.max_seconds = max_frames * codec.frame_samples / codec.sample_rate
        self.prompts: dict[str, Prompt] = {}
        self._unknown_voices: set[str] = set()  # logged once each
        if directory is None:
            return
        if not directory.is_dir():
            raise ValueError(f"--prompts-dir {directory} is not a directory")
        for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in SUFFIXES):
            if path.stem in self.prompts:
                raise ValueError(f"two voice prompts are named {path.stem!r} in {directory}")
            try:
                pcm, rate = sf.read(path, dtype="float32", always_2d=True)
            except (OSError, RuntimeError) as exc:  # soundfile's errors are RuntimeErrors
                raise ValueError(f"voice prompt {path} cannot be read: {exc}") from exc
            try:
                self.prompts[path.stem] = self._encode(path.stem, pcm.mean(axis=1), rate)
            except ProtocolError as exc:
                raise ValueError(f"voice prompt {path}: {exc.message}") from exc
        log.info(
            "voice prompts: %s (at most %.2f s each)",
            ", ".join(self.prompts) or f"none in {directory}",
            self.max_seconds,
        )

    def listing(self) -> dict[str, Any]:
        """What `GET /v1/prompts` shows."""
        return {
            "prompts": [
                {"name": p.name, "seconds": round(p.seconds, 3), "rate": p.rate}
                for p in self.prompts.values()
            ],
            "max_seconds": round(self.max_seconds, 3),
            "upload": {"encoding": "pcm16", "sample_rates": list(UPLOAD_RATES)},
        }

    def frames(self, request: PromptRequest) -> list[Frame]:
        """The codec frames a `start`'s prompt opens the call with (ProtocolError: why not)."""
        if request.name is not None:
            if request.name not in self.prompts:
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    f"no voice prompt {request.name!r} on this server; {self._names()}",
                )
            return self.prompts[request.name].frames
        assert request.audio is not None and request.sample_rate is not None  # PromptRequest's
        if request.sample_rate not in UPLOAD_RATES:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_AUDIO,
                f"a prompt's audio at {request.sample_rate} Hz is not supported; use one of "
                f"{list(UPLOAD_RATES)} Hz",
            )
        try:
            raw = base64.b64decode(request.audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, f"prompt.audio is not valid base64: {exc}"
            ) from exc
        if len(raw) % 2:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"prompt.audio holds {len(raw)} bytes: PCM16 is 2 bytes a sample",
            )
        pcm = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        return self._encode("uploaded", pcm, request.sample_rate).frames

    def voice(self, name: str | None) -> PromptRequest | None:
        """The prompt a Realtime `voice` selects: its namesake here, else none (the model's
        own voice). OpenAI's voice names ("alloy", ...) reach every server from clients that
        send their defaults, so an unknown one is no error; it is logged once."""
        if name is None or name in self.prompts:
            return None if name is None else PromptRequest(name=name)
        if name not in self._unknown_voices:
            self._unknown_voices.add(name)
            log.info("voice %r is no voice prompt of this server: calls that ask for it open "
                     "without one (%s)", name, self._names())  # fmt: skip
        return None

    def _names(self) -> str:
        return f"it has {sorted(self.prompts)}" if self.prompts else "it has none"

    def _encode(self, name: str, pcm: np.ndarray, rate: int) -> Prompt:
        seconds = len(pcm) / rate
        if not len(pcm):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a voice prompt holds no audio")
        codec = self.codec
        pcm = np.clip(resample_whole(pcm, rate, codec.sample_rate), -1.0, 1.0)
        frames = -(-len(pcm) // codec.frame_samples)
        if frames > self.max_frames:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"a voice prompt of {seconds:.2f} s is too long: this server takes at most "
                f"{self.max_seconds:.2f} s (--prompt-max-s)",
            )
        encoder = codec.new_encoder()
        units = np.concatenate([encoder.encode(pcm), encoder.flush()])
        return Prompt(name, seconds, rate, [tuple(int(u) for u in f) for f in units])
