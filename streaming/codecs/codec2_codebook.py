"""Build the Codec2 unit codebook from synthetic English speech (espeak-ng, no downloads).

Seeded end to end (text, voices, speeds, k-means), so the same arguments on the same machine
give identical arrays.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from streaming.codecs.codec2_units import (
    CODEC2_MODE,
    FEATURE_NAMES,
    FORMAT,
    FRAME_SAMPLES,
    N_CEPS,
    SAMPLE_RATE,
    Codec2,
    Codec2UnitCodec,
    codec2_words,
    energy_index,
    frame_features,
    normalise_features,
    pcm_to_int16,
)
from streaming.espeak import PITCH_RANGE, VOICES, WPM_RANGE, synthesize
from streaming.espeak import paragraphs as espeak_paragraphs

_LF0 = FEATURE_NAMES.index("log2_f0")  # the feature --f0-weight scales

SILENCE_MAX_ENERGY_INDEX = 0
KMEANS_MAX_ITER = 40
_WAVE_PARAGRAPHS = 16


def _encode_paragraph(item: tuple[str, str, int, int]) -> np.ndarray:
    pcm = pcm_to_int16(synthesize(*item))
    pcm = np.concatenate([pcm, np.zeros(-pcm.size % FRAME_SAMPLES, dtype=np.int16)])
    return codec2_words(Codec2(), pcm)


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (np.square(x).sum(1)[:, None] - 2.0 * x @ c.T + np.square(c).sum(1)[None, :]).clip(0)


def _assign(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest row of ``c`` and its squared distance for every row of ``x`` (chunked so the
    distance matrix stays ~32 MB)."""
    chunk = max(1, 2**22 // len(c))
    labels = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x))
    for s in range(0, len(x), chunk):
        d = _sq_dists(x[s : s + chunk], c)
        labels[s : s + chunk] = d.argmin(1)
        dist[s : s + chunk] = d[np.arange(len(d)), labels[s : s + chunk]]
    return labels, dist


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, progress: bool) -> np.ndarray:
    """k-means++ seeding then Lloyd iterations; empty clusters are re-seeded with the
    worst-fit points so all k units stay in use. Deterministic for a given rng."""
    if len(x) < k:
        raise ValueError(f"need at least {k} non-silent frames for {k} clusters, got {len(x)}")
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(len(x))]
    d2 = np.square(x - centers[0]).sum(1)
    for j in range(1, k):
        centers[j] = x[rng.choice(len(x), p=d2 / d2.sum())]
        d2 = np.minimum(d2, np.square(x - centers[j]).sum(1))
    labels = np.full(len(x), -1)
    for _ in tqdm(range(KMEANS_MAX_ITER), desc="k-means", disable=not progress, leave=False):
        new_labels, dist = _assign(x, centers)
        counts = np.bincount(new_labels, minlength=k)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            worst = np.argsort(-dist, kind="stable")[: empty.size]
            new_labels[worst] = empty
            counts = np.bincount(new_labels, minlength=k)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for dim in range(x.shape[1]):
            centers[:, dim] = np.bincount(labels, weights=x[:, dim], minlength=k) / counts
    return centers


def _run_lengths(units: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(
        [np.diff(np.flatnonzero(np.diff(u, prepend=-1, append=-1))) for u in units]
    )


def _quantisation_error(
    codec: Codec2UnitCodec, feats: np.ndarray, units: np.ndarray
) -> tuple[float, float]:
    """RMS distance between speech frames' raw features and their units' centroids: over
    the 12 cepstra (dB, the envelope's shape) and over log2 F0 of voiced frames (octaves, the
    intonation), the two a unit trades against each other."""
    decoded = codec.centroids[units - 1] * codec.feat_std + codec.feat_mean
    cepstra = np.square(feats[:, :N_CEPS] - decoded[:, :N_CEPS]).sum(1).mean()
    voiced = ~np.isnan(feats[:, _LF0])
    f0 = np.square(feats[voiced, _LF0] - decoded[voiced, _LF0]).mean() if voiced.any() else 0.0
    return float(np.sqrt(cepstra)), float(np.sqrt(f0))


def build_codebook(
    out: Path,
    n_units: int = 1024,
    minutes: float = 48.0,
    seed: int = 0,
    f0_weight: float = 1.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Synthesize ~``minutes`` of speech, learn ``n_units`` units (unit 0 = silence) and save
    the codebook to ``out`` (.npz). ``f0_weight`` > 1 makes log-F0 count more in the
    clustering: finer intonation, coarser spectra. Returns build statistics."""
    if n_units < 2 or minutes <= 0 or not 0 < f0_weight < np.inf:
        raise ValueError(
            f"need n_units >= 2, minutes > 0 and f0_weight > 0, "
            f"got {n_units}, {minutes} and {f0_weight}"
        )
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    items = espeak_paragraphs(rng)
    target_frames = int(minutes * 60 * SAMPLE_RATE / FRAME_SAMPLES)
    paragraphs: list[np.ndarray] = []
    n_frames = 0
    with (
        ThreadPoolExecutor(max_workers=2) as pool,
        tqdm(total=target_frames, desc="synthesis", unit="frame", disable=not progress) as bar,
    ):
        while n_frames < target_frames:
            wave = [next(items) for _ in range(_WAVE_PARAGRAPHS)]
            for words in pool.map(_encode_paragraph, wave):
                if n_frames >= target_frames:
                    break
                paragraphs.append(words)
                n_frames += words.size
                bar.update(words.size)

    words = np.concatenate(paragraphs)
    silent = energy_index(words) <= SILENCE_MAX_ENERGY_INDEX
    feats = frame_features(words[~silent])
    mean, std = np.nanmean(feats, axis=0), np.nanstd(feats, axis=0)
    std[std < 1e-6] = 1.0
    # Dividing the stored std weights log-F0 in the clustering; the encoder needs no change.
    std[_LF0] /= f0_weight
    mean, std = mean.astype(np.float32), std.astype(np.float32)  # as stored and used to encode
    meta: dict[str, Any] = {
        "format": FORMAT,
        "codec2_mode": CODEC2_MODE,
        "sample_rate": SAMPLE_RATE,
        "frame_samples": FRAME_SAMPLES,
        "n_units": n_units,
        "features": list(FEATURE_NAMES),
        "silence_max_energy_index": SILENCE_MAX_ENERGY_INDEX,
        "build": {
            "minutes": minutes,
            "seed": seed,
            "f0_weight": f0_weight,
            "voices": list(VOICES),
            "wpm": WPM_RANGE,
            "pitch": PITCH_RANGE,
        },
    }
    x = normalise_features(feats, mean, std)
    centers = kmeans(x, n_units - 1, rng, progress).astype(np.float32)

    # Medoid: the real frame nearest each centroid; silence decodes via the commonest silent frame.
    medoids = _assign(centers.astype(np.float64), x)[0]
    values, counts = np.unique(words[silent], return_counts=True)
    silence_word = values[counts.argmax()] if values.size else np.uint32(0)
    unit_words = np.concatenate([[silence_word], words[~silent][medoids]]).astype(np.uint32)
    unit_bits = (unit_words[:, None] << 4).astype(">u4").view(np.uint8).reshape(n_units, 4)

    codec = Codec2UnitCodec(centers, mean, std, unit_bits, meta)
    units = [codec.units_from_words(w) for w in paragraphs]
    runs = _run_lengths(units)
    cepstra_err, f0_err = _quantisation_error(codec, feats, np.concatenate(units)[~silent])
    seconds_audio = n_frames * FRAME_SAMPLES / SAMPLE_RATE
    stats: dict[str, Any] = {
        "frames": int(n_frames),
        "audio_seconds": round(seconds_audio, 2),
        "silence_share": round(float(silent.mean()), 4),
        "units_used": int(np.unique(np.concatenate(units)).size),
        "mean_run_length": round(float(runs.mean()), 3),
        "dedup_tokens_per_s": round(runs.size / seconds_audio, 2),
        "cepstra_rms_err_db": round(cepstra_err, 2),
        "log2_f0_rms_err": round(f0_err, 3),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    Codec2UnitCodec(centers, mean, std, unit_bits, {**meta, "stats": stats}).save(out)
    return {**stats, "seconds": round(time.perf_counter() - start, 2), "path": str(out)}
