"""Speech codec interface: streaming PCM <-> discrete units.

Every codec (the default Codec2-unit codec, or a future neural codec with several units per
frame and another rate) implements these protocols, so the server and the model only ever see
``[n_frames, units_per_frame]`` int64 unit arrays and float32 PCM in [-1, 1].
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

BUILTIN_PREFIX = "builtin:"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


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


# codec type in duplex.json -> "module:factory"; a factory takes the "codec" entry and the
# checkpoint directory (relative paths are taken from it) and returns a SpeechCodec. Adding a
# codec is one module with such a factory and one line here; modules load when chosen.
CODECS: dict[str, str] = {
    "codec2-units": "streaming.codecs.codec2_units:from_spec",
    "mimi": "streaming.codecs.mimi:from_spec",
}


class CodecFactory(Protocol):
    def __call__(self, spec: dict[str, Any], base_dir: Path) -> SpeechCodec: ...


def spec_string(spec: dict[str, Any], key: str, example: str) -> str:
    """A non-empty string field of a codec spec, or a ValueError that names it."""
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"{spec.get('type')} spec needs a {key!r} string ({example}), got {value!r}"
        )
    return value


def load_codec(spec: dict[str, Any], base_dir: Path) -> SpeechCodec:
    """Build a codec from a checkpoint's ``duplex.json`` "codec" entry, e.g.
    ``{"type": "codec2-units", "codebook": "builtin:codec2_units_1024"}`` or
    ``{"type": "mimi", "dir": "mimi", "codebooks": 8}`` (a local Hugging Face directory)."""
    if not isinstance(spec, dict):
        raise ValueError(f"codec spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in CODECS:
        raise ValueError(
            f"unknown codec type {kind!r} in spec {spec!r}; known types: {sorted(CODECS)}"
        )
    module, factory = CODECS[kind].split(":")
    return cast(CodecFactory, getattr(import_module(module), factory))(spec, base_dir)
