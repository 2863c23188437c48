"""Default offline codec: Codec2 700C frames quantised to one learned unit per 40 ms frame.

Why these choices:

* Codec2 700C codes 320 samples (40 ms at 8 kHz) as 28 bits, which we read (verified
  empirically, MSB first, natural binary) as VQ stage 1 (9) | VQ stage 2 (9) | energy (4) |
  pitch (6, 0 = unvoiced).
* Frame features are computed from those bits through the decoder's own tables (read from the
  libcodec2 that pycodec2 loaded): the two VQ stages sum to the 20-point mel-spaced log
  envelope (dB) the decoder synthesises, so its DCT c1-c12 is the MFCC of the decoded
  envelope, plus level (dB), voicing and log2 F0. Decoding the bits to audio instead would
  not give a function of the bits: the decoder draws unvoiced/post-filter phases from a
  process-global RNG, so the same bits decode differently run to run.
* Silent frames (energy index <= ``silence_max_energy_index``, 0 by default: below roughly
  -60 dBFS of white noise) all map to unit 0, which decodes to digital zeros.
* Other frames map to the nearest of K-1 k-means centroids (see
  ``streaming.codecs.codec2_codebook``); each unit decodes through the real 28-bit frame
  nearest its centroid (the medoid).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pycodec2  # noqa: F401  (loads the libcodec2 it ships, which we call)
from scipy.fft import dct

from streaming.codecs import check_pcm, describe, resolve_asset, spec_string
from streaming.dependencies import untested_version

SAMPLE_RATE = 8000
FRAME_SAMPLES = 320
CODEC2_MODE = 700
FRAME_BYTES = 4
SILENCE_UNIT = 0
FORMAT = "codec2-units/1"
N_CEPS = 12
FEATURE_NAMES = tuple(f"c{i}" for i in range(1, N_CEPS + 1)) + ("level_db", "voiced", "log2_f0")
_LEVEL = FEATURE_NAMES.index("level_db")
_VOICED = FEATURE_NAMES.index("voiced")
_LF0 = FEATURE_NAMES.index("log2_f0")
_RAND_SEED = 1  # codec2_rand's own initial state
_LCG_MUL = 1103515245
_LCG_ADD = 12345
_PCM_SCALE = 32768.0
# The pycodec2 whose bundled libcodec2 this module is written against (pinned in
# pyproject.toml): its tables are read and its RNG state is found by matching machine code.
PYCODEC2_TESTED = "4.1.1"


class _LspCodebook(ctypes.Structure):
    """``struct lsp_codebook`` from codec2's defines.h."""

    _fields_ = [
        ("k", ctypes.c_int),
        ("log2m", ctypes.c_int),
        ("m", ctypes.c_int),
        ("cb", ctypes.POINTER(ctypes.c_float)),
    ]


@functools.cache
def _libcodec2() -> ctypes.CDLL:
    """The libcodec2 that pycodec2 itself loaded (same handle: same tables, same RNG), with
    the prototypes of the functions called here declared once."""
    check_pycodec2_version()
    lib = _find_libcodec2()
    lib.codec2_create.restype = ctypes.c_void_p
    lib.codec2_create.argtypes = [ctypes.c_int]
    lib.codec2_destroy.argtypes = [ctypes.c_void_p]
    lib.codec2_encode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    lib.codec2_encode.restype = None
    lib.codec2_decode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
    lib.codec2_decode.restype = None
    lib.codec2_rand.restype = ctypes.c_int
    return lib


def check_pycodec2_version(installed: str | None = None) -> str | None:
    """One warning line when another pycodec2 is installed; `installed` defaults to the
    installed version. Another build is used as far as it checks out (codebook shapes, the RNG
    located and verified by a call; else decoding is not reproducible), hence no refusal."""
    return untested_version(
        "pycodec2",
        PYCODEC2_TESTED,
        "streaming/codecs/codec2_units.py reads its libcodec2's tables and patches its RNG state",
        installed,
    )


def _find_libcodec2() -> ctypes.CDLL:
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and Path(parts[5].strip()).name.startswith("libcodec2"):
                return ctypes.CDLL(parts[5].strip())
    name = ctypes.util.find_library("codec2")
    if name is None:
        raise RuntimeError("cannot locate the libcodec2 shared library used by pycodec2")
    return ctypes.CDLL(name)


_MODE_700C = 8  # CODEC2_MODE_700C in codec2.h


class Codec2:
    """One Codec2 700C encoder/decoder state, called through ctypes rather than pycodec2:
    a ctypes call releases the GIL, so the tokenizer thread's encoding runs beside the tick
    worker's forward passes instead of taking turns with them (and is ~1.7x quicker)."""

    def __init__(self) -> None:
        lib = _libcodec2()
        self._lib = lib
        self._state = lib.codec2_create(_MODE_700C)
        if not self._state:
            raise RuntimeError("codec2_create(700C) failed")
        weakref.finalize(self, lib.codec2_destroy, self._state)
        self._bits = ctypes.create_string_buffer(FRAME_BYTES)

    def encode(self, pcm: np.ndarray) -> bytes:
        """One frame of int16 PCM [320] -> its 4 bytes."""
        frame = np.ascontiguousarray(pcm, dtype=np.int16)
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"a Codec2 700C frame is {FRAME_SAMPLES} samples, got {frame.shape}")
        self._lib.codec2_encode(self._state, self._bits, frame.ctypes.data)
        return self._bits.raw

    def decode(self, bits: bytes) -> np.ndarray:
        """4 bytes -> one frame of int16 PCM [320]."""
        if len(bits) != FRAME_BYTES:
            raise ValueError(f"a Codec2 700C frame is {FRAME_BYTES} bytes, got {len(bits)}")
        out = np.empty(FRAME_SAMPLES, dtype=np.int16)
        self._lib.codec2_decode(self._state, out.ctypes.data, bits)
        return out


def _read_codebook(symbol: str, stage: int, rows: int, dim: int) -> np.ndarray:
    entry = (_LspCodebook * (stage + 1)).in_dll(_libcodec2(), symbol)[stage]
    if (entry.m, entry.k) != (rows, dim) or not entry.cb:
        raise RuntimeError(
            f"libcodec2 {symbol}[{stage}] is {entry.m}x{entry.k}, expected {rows}x{dim}"
        )
    return (
        np.ctypeslib.as_array(entry.cb, shape=(rows * dim,)).reshape(rows, dim).astype(np.float64)
    )


def _fields(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """28-bit words -> (VQ stage 1, VQ stage 2, energy, pitch) indices."""
    w = words.astype(np.int64)
    return (w >> 19) & 511, (w >> 10) & 511, (w >> 6) & 15, w & 63


def energy_index(words: np.ndarray) -> np.ndarray:
    """4-bit Codec2 700C energy index of each 28-bit frame word."""
    return _fields(words)[2]


@functools.cache
def _feature_parts() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-field tables ``[2**bits, F]`` whose rows, one per field, sum to a frame's raw
    features: features are table lookups + adds, exact and independent of batching."""
    vq1 = _read_codebook("newamp1vq_cb", 0, 512, 20)
    vq2 = _read_codebook("newamp1vq_cb", 1, 512, 20)
    energy_db = _read_codebook("newamp1_energy_cb", 0, 16, 1)[:, 0]
    n_feat = len(FEATURE_NAMES)
    stage1, stage2 = np.zeros((512, n_feat)), np.zeros((512, n_feat))
    for part, vq in ((stage1, vq1), (stage2, vq2)):
        part[:, :N_CEPS] = dct(vq, type=2, norm="ortho", axis=1)[:, 1 : N_CEPS + 1]
        part[:, _LEVEL] = vq.mean(axis=1)  # decoded envelope = vq1 + vq2 + energy
    energy = np.zeros((16, n_feat))
    energy[:, _LEVEL] = energy_db
    pitch = np.zeros((64, n_feat))
    index = np.arange(64)
    pitch[:, _VOICED] = index > 0
    # decode_log_Wo: F0 log-spaced from 50 Hz (index 0) to 400 Hz (index 64); 0 = unvoiced.
    pitch[:, _LF0] = np.where(index > 0, np.log2(50.0) + 3.0 * index / 64.0, np.nan)
    return stage1, stage2, energy, pitch


def frame_features(words: np.ndarray) -> np.ndarray:
    """Raw features ``[n, F]`` (see FEATURE_NAMES) of 28-bit frame words; log2_f0 is NaN
    for unvoiced frames."""
    stage1, stage2, energy, pitch = _feature_parts()
    i1, i2, ie, ip = _fields(words)
    return stage1[i1] + stage2[i2] + energy[ie] + pitch[ip]


def normalise_features(feats: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """z-score raw features; unvoiced frames get the mean voiced log-F0 (0)."""
    z = (feats - mean) / std
    z[:, _LF0] = np.nan_to_num(z[:, _LF0], nan=0.0)
    return z


def codec2_words(c2: Codec2, pcm: np.ndarray) -> np.ndarray:
    """Encode whole frames of int16 PCM with a (stateful) Codec2 700C encoder -> uint32
    28-bit words."""
    raw = b"".join(
        [c2.encode(pcm[i : i + FRAME_SAMPLES]) for i in range(0, pcm.size, FRAME_SAMPLES)]
    )
    return (np.frombuffer(raw, dtype=">u4") >> 4).astype(np.uint32)


@functools.cache
def _rand_cell() -> ctypes.c_uint64 | None:
    """The process-global state of ``codec2_rand`` (an LCG the 700C decoder uses for
    unvoiced and post-filter phases), located from the function's first instruction
    ``imul $1103515245, next(%rip), %rax`` and verified by one call. Swapping a per-decoder
    copy in around each decode makes decoding deterministic and chunking-independent.
    None when the build does not match (decoding then still works, just not reproducibly)."""
    lib = _libcodec2()
    addr = ctypes.cast(lib.codec2_rand, ctypes.c_void_p).value
    if addr is None:
        return None
    code = ctypes.string_at(addr, 11)
    if code[:3] != b"\x48\x69\x05" or code[7:] != _LCG_MUL.to_bytes(4, "little"):
        return None
    cell = ctypes.c_uint64.from_address(
        addr + 11 + int.from_bytes(code[3:7], "little", signed=True)
    )
    before = cell.value
    drawn = lib.codec2_rand()
    expected = (before * _LCG_MUL + _LCG_ADD) % 2**64
    ok = cell.value == expected and drawn == (expected >> 16) & 0x7FFF
    cell.value = before
    return cell if ok else None


_RAND_LOCK = threading.Lock()


def deterministic_decoding() -> bool:
    """Whether decoded audio is reproducible (codec2's RNG state could be located)."""
    with _RAND_LOCK:
        return _rand_cell() is not None


def pcm_to_int16(pcm: np.ndarray) -> np.ndarray:
    """Validate float PCM [n] in [-1, 1] and convert to int16 (clipping)."""
    pcm = check_pcm(pcm)
    return np.clip(np.rint(pcm * _PCM_SCALE), -32768, 32767).astype(np.int16)


class Codec2UnitCodec:
    """Codec2 700C + learned unit codebook; immutable and shared across sessions."""

    name: str
    sample_rate: int = SAMPLE_RATE
    frame_samples: int = FRAME_SAMPLES
    units_per_frame: int = 1
    silence_unit: int = SILENCE_UNIT
    silence_frame: tuple[int, ...] = (SILENCE_UNIT,)

    def __init__(
        self,
        centroids: np.ndarray,
        feat_mean: np.ndarray,
        feat_std: np.ndarray,
        unit_bits: np.ndarray,
        meta: dict[str, Any],
    ) -> None:
        """centroids ``[K-1, F]`` (units 1..K-1, normalised space), unit_bits ``[K, 4]``
        (Codec2 frame decoded for each unit; row 0 is a silent frame fed to keep decoder
        state sane while unit 0 outputs zeros)."""
        n_feat = len(FEATURE_NAMES)
        k = unit_bits.shape[0]
        if unit_bits.shape != (k, FRAME_BYTES) or unit_bits.dtype != np.uint8 or k < 2:
            raise ValueError(f"unit_bits must be uint8 [K>=2, 4], got {describe(unit_bits)}")
        if centroids.shape != (k - 1, n_feat):
            raise ValueError(f"centroids must be [{k - 1}, {n_feat}], got {centroids.shape}")
        if feat_mean.shape != (n_feat,) or feat_std.shape != (n_feat,):
            raise ValueError(f"feature mean/std must be [{n_feat}], got {feat_mean.shape}")
        self.vocab_size = k
        self.name = f"codec2-units-{k}"
        self.meta = meta
        self.silence_max_energy_index = int(meta.get("silence_max_energy_index", 0))
        self.centroids = centroids.astype(np.float32)
        self.feat_mean = feat_mean.astype(np.float32)
        self.feat_std = feat_std.astype(np.float32)
        self.unit_bits = unit_bits
        # Squared distance to every centroid, split per field: ||c||^2 - 2 z.c with z the
        # normalised features as a sum of per-field rows (the LF0 mean sits in the pitch
        # table so unvoiced frames get z_lf0 = 0 exactly).
        c = self.centroids.astype(np.float64)
        mean, std = self.feat_mean.astype(np.float64), self.feat_std.astype(np.float64)
        shift = np.zeros((4, n_feat))  # per-field mean to subtract: stage1, stage2, energy, pitch
        shift[2] = mean
        shift[2, _LF0] = 0.0
        shift[3, _LF0] = mean[_LF0]
        self._scores = [
            -2.0 * np.nan_to_num((part - s) / std) @ c.T
            for part, s in zip(_feature_parts(), shift, strict=True)
        ]
        self._scores[2] += np.square(c).sum(axis=1)
        self._frames = [bytes(row) for row in unit_bits]

    @property
    def frame_ms(self) -> float:
        return 1000.0 * self.frame_samples / self.sample_rate

    @classmethod
    def load(cls, path: Path) -> Codec2UnitCodec:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: expected format {FORMAT!r}, got {meta.get('format')!r}")
            return cls(z["centroids"], z["feat_mean"], z["feat_std"], z["unit_bits"], meta)

    def save(self, path: Path) -> None:
        """Write exactly to ``path`` (np.savez would append '.npz' to other suffixes)."""
        with open(path, "wb") as f:
            np.savez_compressed(
                f,
                centroids=self.centroids,
                feat_mean=self.feat_mean,
                feat_std=self.feat_std,
                unit_bits=self.unit_bits,
                meta=np.array(json.dumps(self.meta, sort_keys=True)),
            )

    def units_from_words(self, words: np.ndarray) -> np.ndarray:
        """28-bit frame words -> int64 units [n] (nearest centroid; silence -> 0). Scores
        are gathered table rows added elementwise (no BLAS, whose rounding depends on the
        batch shape), so a frame's unit never depends on how frames were batched."""
        units = np.zeros(words.shape[0], dtype=np.int64)
        speech = energy_index(words) > self.silence_max_energy_index
        if speech.any():
            i1, i2, ie, ip = _fields(words[speech])
            s1, s2, se, sp = self._scores
            units[speech] = (s1[i1] + s2[i2] + se[ie] + sp[ip]).argmin(axis=1) + 1
        return units

    def new_encoder(self) -> Codec2UnitEncoder:
        return Codec2UnitEncoder(self)

    def new_decoder(self) -> Codec2UnitDecoder:
        return Codec2UnitDecoder(self)


class Codec2UnitEncoder:
    """Streaming encoder: buffers a partial frame; Codec2 analysis state carries over."""

    def __init__(self, codec: Codec2UnitCodec) -> None:
        self._codec = codec
        self._c2 = Codec2()
        self._pending = np.zeros(0, dtype=np.int16)

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        x = pcm_to_int16(pcm)
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        n = buf.size // FRAME_SAMPLES * FRAME_SAMPLES
        self._pending = buf[n:].copy()
        return self._units(buf[:n])

    def flush(self) -> np.ndarray:
        buf = np.zeros(FRAME_SAMPLES if self._pending.size else 0, dtype=np.int16)
        buf[: self._pending.size] = self._pending
        self._pending = np.zeros(0, dtype=np.int16)
        return self._units(buf)

    def _units(self, pcm: np.ndarray) -> np.ndarray:
        return self._codec.units_from_words(codec2_words(self._c2, pcm))[:, None]


class Codec2UnitDecoder:
    """Streaming decoder: one Codec2 700C decoder (interpolation, overlap-add and RNG
    state) carried across calls."""

    def __init__(self, codec: Codec2UnitCodec) -> None:
        self._frames = codec._frames
        self._vocab = codec.vocab_size
        self._c2 = Codec2()
        self._rand = _RAND_SEED

    def decode(self, units: np.ndarray) -> np.ndarray:
        if (
            not isinstance(units, np.ndarray)
            or units.ndim != 2
            or units.shape[1] != 1
            or not np.issubdtype(units.dtype, np.integer)
        ):
            raise ValueError(f"expected integer units of shape [n, 1], got {describe(units)}")
        ids = units[:, 0].astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self._vocab):
            raise ValueError(
                f"unit ids must be in [0, {self._vocab}), got min {ids.min()} max {ids.max()}"
            )
        out = np.zeros((ids.size, FRAME_SAMPLES), dtype=np.int16)
        with _RAND_LOCK:  # the RNG state is process-global: swap ours in and out atomically
            cell = _rand_cell()
            if cell is not None:
                cell.value = self._rand
            for i, unit in enumerate(ids.tolist()):
                pcm = self._c2.decode(self._frames[unit])
                if unit != SILENCE_UNIT:
                    out[i] = pcm
            if cell is not None:
                self._rand = cell.value
        return out.reshape(-1).astype(np.float32) * np.float32(1.0 / _PCM_SCALE)


def from_spec(spec: dict[str, Any], base_dir: Path, device: str = "cpu") -> Codec2UnitCodec:
    """The registry's factory (streaming/codecs/__init__.py):
    ``{"type": "codec2-units", "codebook": "builtin:codec2_units_1024"}`` or a codebook path.
    Codec2 runs on the CPU whatever `device` the server's model uses."""
    ref = spec_string(spec, "codebook", "e.g. 'builtin:codec2_units_1024'")
    return Codec2UnitCodec.load(resolve_asset(ref, base_dir))
