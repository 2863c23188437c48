"""Speech codec interface: streaming PCM <-> discrete units.

Every codec (the default Codec2-unit codec, or a future neural codec with several units per
frame and another rate) implements these protocols, so the server and the model only ever see
``[n_frames, units_per_frame]`` int64 unit arrays and float32 PCM in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np

BUILTIN_PREFIX = "builtin:"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
# Codec spec fields that name a file or directory (relative ones are taken from the checkpoint).
PATH_FIELDS = ("codebook", "dir")

C = TypeVar("C", bound=Hashable)  # a batch's call ids, as its user types them


class StreamEncoder(Protocol):
    """Per-session encoder state: PCM arrives in arbitrary chunks, units leave per frame."""

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """Buffer float32 mono PCM (codec rate, any length); return int64 units
        ``[n_complete_frames, units_per_frame]`` for the frames completed by this chunk."""
        ...

    def flush(self) -> np.ndarray:
        """Zero-pad a pending partial frame and return its units (``[0, units_per_frame]``
        when nothing is pending)."""
        ...


class StreamDecoder(Protocol):
    """Per-session decoder state (carried across calls so chunked == whole decoding)."""

    def decode(self, units: np.ndarray) -> np.ndarray:
        """Units int ``[n, units_per_frame]`` -> float32 PCM of exactly ``n * frame_samples``."""
        ...


class SpeechCodec(Protocol):
    """Immutable, shareable codec description; sessions get their own encoder/decoder."""

    name: str
    sample_rate: int
    frame_samples: int
    units_per_frame: int
    vocab_size: int
    silence_unit: int
    # What digital silence encodes to, one unit per codebook (a checkpoint's silence frame
    # must be this one): (silence_unit,) for the default codec, another code per codebook for
    # a neural codec.
    silence_frame: tuple[int, ...]

    @property
    def frame_ms(self) -> float:
        """Frame duration in milliseconds (one model step)."""
        ...

    def new_encoder(self) -> StreamEncoder:
        """Fresh per-session encoder state."""
        ...

    def new_decoder(self) -> StreamDecoder:
        """Fresh per-session decoder state."""
        ...


class EncoderBatch(Protocol):
    """The optional batched path of a codec (``new_encoder_batch()``): many calls' encoders as
    rows of one batch, so a tick's audio of every call is encoded in one pass. Calls join and
    leave between calls to ``encode``; each gets what its own ``StreamEncoder`` would give."""

    def __contains__(self, call_id: object) -> bool: ...

    def add(self, call_id: Hashable) -> None:
        """A call joins with a fresh encoder state."""
        ...

    def remove(self, call_id: Hashable) -> None:
        """A call leaves; its row is free."""
        ...

    def encode(self, pcm: Mapping[C, np.ndarray]) -> dict[C, np.ndarray]:
        """Per call, new PCM (any length) -> units ``[completed frames, units_per_frame]``."""
        ...

    def flush(self, calls: Iterable[C]) -> dict[C, np.ndarray]:
        """Per call, its pending partial frame zero-padded -> its units (maybe none)."""
        ...


class DecoderBatch(Protocol):
    """The decoding half of a codec's batched path (``new_decoder_batch()``): one pass decodes
    every call's new frames. Apart from the encoder batch, so that the two may run on two
    threads (the tokenizer's, the tick worker's)."""

    def __contains__(self, call_id: object) -> bool: ...

    def add(self, call_id: Hashable) -> None: ...

    def remove(self, call_id: Hashable) -> None: ...

    def decode(self, units: Mapping[C, np.ndarray]) -> dict[C, np.ndarray]:
        """Per call, units ``[n, units_per_frame]`` -> PCM of exactly ``n * frame_samples``."""
        ...


def encoder_batch(codec: SpeechCodec) -> EncoderBatch | None:
    """A fresh batch of the codec's encoders when it offers one, else None (its calls encode
    one by one)."""
    new = getattr(codec, "new_encoder_batch", None)
    return None if new is None else cast(EncoderBatch, new())


def decoder_batch(codec: SpeechCodec) -> DecoderBatch | None:
    """A fresh batch of the codec's decoders when it offers one, else None."""
    new = getattr(codec, "new_decoder_batch", None)
    return None if new is None else cast(DecoderBatch, new())


def describe(x: object) -> str:
    """What a codec was given instead of what it takes, for its error message."""
    if isinstance(x, np.ndarray):
        return f"ndarray dtype={x.dtype} shape={x.shape}"
    return type(x).__name__


def check_pcm(pcm: object) -> np.ndarray:
    """What every codec takes: float mono PCM [n] of finite samples; anything else is refused
    with what it was."""
    if (
        not isinstance(pcm, np.ndarray)
        or pcm.ndim != 1
        or not np.issubdtype(pcm.dtype, np.floating)
    ):
        raise ValueError(f"expected float32 mono PCM of shape [n], got {describe(pcm)}")
    if not np.isfinite(pcm).all():
        raise ValueError("expected finite PCM samples, got NaN or inf")
    return pcm


def resolve_asset(ref: str, base_dir: Path) -> Path:
    """Resolve ``builtin:NAME`` to the packaged asset ``NAME.npz``; other refs are paths,
    relative ones taken from ``base_dir`` (the checkpoint directory)."""
    if ref.startswith(BUILTIN_PREFIX):
        name = ref[len(BUILTIN_PREFIX) :]
        path = ASSETS_DIR / f"{name}.npz"
        if not name or not path.is_file():
            known = sorted(p.stem for p in ASSETS_DIR.glob("*.npz"))
            raise ValueError(f"unknown builtin codebook {ref!r}; available: {known}")
        return path
    path = resolve_path(ref, base_dir)
    if not path.is_file():
        raise ValueError(f"codebook file not found: {path} (from {ref!r})")
    return path


def resolve_path(ref: str, base_dir: Path) -> Path:
    """A path from a checkpoint's codec spec: relative ones are taken from ``base_dir``."""
    path = Path(ref).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def absolute_spec(spec: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The spec with its relative paths made absolute (from ``base_dir``), for a checkpoint
    written elsewhere (a trained model) that speaks the same codec."""
    out = dict(spec)
    for key in PATH_FIELDS:
        ref = out.get(key)
        if isinstance(ref, str) and ref and not ref.startswith(BUILTIN_PREFIX):
            out[key] = str(resolve_path(ref, base_dir).resolve())
    return out


# codec type in duplex.json -> "module:factory"; a factory takes the "codec" entry, the
# checkpoint directory (relative paths are taken from it) and a torch device (where a neural
# codec runs) and returns a SpeechCodec. Adding a codec is one module with such a factory and
# one line here; modules load when chosen.
CODECS: dict[str, str] = {
    "codec2-units": "streaming.codecs.codec2_units:from_spec",
    "mimi": "streaming.codecs.mimi:from_spec",
}


class CodecFactory(Protocol):
    def __call__(self, spec: dict[str, Any], base_dir: Path, device: str) -> SpeechCodec: ...


def spec_string(spec: dict[str, Any], key: str, example: str) -> str:
    """A non-empty string field of a codec spec, or a ValueError that names it."""
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"{spec.get('type')} spec needs a {key!r} string ({example}), got {value!r}"
        )
    return value


def load_codec(spec: dict[str, Any], base_dir: Path, device: str = "cpu") -> SpeechCodec:
    """Build a codec from a checkpoint's ``duplex.json`` "codec" entry, e.g.
    ``{"type": "codec2-units", "codebook": "builtin:codec2_units_1024"}`` or
    ``{"type": "mimi", "dir": "mimi", "codebooks": 8}`` (a local Hugging Face directory).
    `device` (cpu, cuda, cuda:N) is where a neural codec runs; the default codec is CPU code."""
    if not isinstance(spec, dict):
        raise ValueError(f"codec spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in CODECS:
        raise ValueError(
            f"unknown codec type {kind!r} in spec {spec!r}; known types: {sorted(CODECS)}"
        )
    module, factory = CODECS[kind].split(":")
    return cast(CodecFactory, getattr(import_module(module), factory))(spec, base_dir, device)
