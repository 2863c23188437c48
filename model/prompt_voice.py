"""Does a voice prompt move the agent's voice? (docs/prompts.md, `python -m model.prompt_voice`)

Held-out calls (scripts and the caller's voice no training dialogue has) run through the
engine directly, three times each with the same seed: with no prompt, after a low voice
prompt and after a high one (espeak-ng voices and pitches, `--low` / `--high`), each cut to
the longest opening the engine takes. The caller's turns start after a short lead-in and its
audio is real at every step (no estimates), so the three runs of a call differ only by the
opening. The agent's chunks are
decoded with the checkpoint's codec, and the F0 of its voiced frames (Codec2's pitch
estimator) is compared per call: what the engine writes is what the server would send.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from model.checkpoint import read_config
from model.engines import build_engine
from model.engines.api import EngineOptions, StepRequest
from model.format import Frame
from model.sampling import SamplingParams
from model.training.dialogues import dialogues, split
from model.training.synth import HELDOUT_VOICE, trim_silence
from streaming.codecs import SpeechCodec, load_codec
from streaming.codecs.codec2_units import Codec2, codec2_words, energy_index, pcm_to_int16
from streaming.espeak import PITCH_RANGE, synthesize
from streaming.resample import resample_whole

PROMPT_TEXT = "Hello, thanks for calling the help line. What can I do for you today?"
PROMPTS = {"low": ("en-us", 10), "high": ("en-us", 90)}  # espeak-ng voice, pitch
LEAD_IN_S = 0.5
C2_RATE, C2_FRAME = 8000, 320


def frame_f0(pcm: np.ndarray, rate: int) -> np.ndarray:
    """F0 (Hz) of each voiced 40 ms frame of `pcm`, by Codec2's own pitch estimator (its
    700C analysis at 8 kHz: 6 bits of log-spaced F0 from 50 to 400 Hz, 0 = unvoiced)."""
    x = resample_whole(pcm, rate, C2_RATE)
    x = pcm_to_int16(x[: len(x) // C2_FRAME * C2_FRAME])
    words = codec2_words(Codec2(), x)
    pitch = (words & 63).astype(np.int64)
    voiced = pitch[(pitch > 0) & (energy_index(words) > 0)]
    return 2.0 ** (np.log2(50.0) + 3.0 * voiced / 64.0)


def speech_frames(codec: SpeechCodec, pcm: np.ndarray, rate: int) -> list[Frame]:
    enc = codec.new_encoder()
    pcm = np.clip(resample_whole(pcm, rate, codec.sample_rate), -1.0, 1.0)
    return [tuple(int(u) for u in f) for f in np.concatenate([enc.encode(pcm), enc.flush()])]


def decode(codec: SpeechCodec, frames: list[Frame]) -> np.ndarray:
    return codec.new_decoder().decode(np.asarray(frames, dtype=np.int64))


def measure(
    checkpoint: Path,
    calls: int,
    seconds: float,
    seed: int,
    voices: dict[str, tuple[str, int]] = PROMPTS,
) -> dict[str, Any]:
    config = read_config(checkpoint)
    codec = load_codec(config.codec, checkpoint)
    n = config.frames_per_chunk
    engine = build_engine(
        "torch", checkpoint, EngineOptions(max_sessions=3 * calls, max_rollback_chunks=3)
    )
    most = engine.info.max_opening_frames
    prompts: dict[str, list[Frame]] = {"none": []}
    prompt_f0: dict[str, float] = {}
    for name, (voice, pitch) in voices.items():
        speech = trim_silence(synthesize(PROMPT_TEXT, voice, 165, pitch))
        frames = speech_frames(codec, speech, 22050)
        prompts[name] = frames[:most]
        prompt_f0[name] = float(
            np.median(frame_f0(decode(codec, prompts[name]), codec.sample_rate))
        )
    rng = np.random.default_rng(seed)
    held = split(dialogues())[1]
    chunks = math.ceil(seconds * 1000 / config.chunk_ms)
    users: list[list[list[Frame]]] = []
    for d in held[:calls]:
        pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
        text = " ".join(t.text for t in d.turns[:2])
        pcm = trim_silence(synthesize(text, HELDOUT_VOICE, 165, pitch))
        pcm = np.concatenate([np.zeros(round(LEAD_IN_S * 22050), np.float32), pcm])
        frames = speech_frames(codec, pcm, 22050) + [config.silence] * (chunks * n)
        users.append([frames[k * n : (k + 1) * n] for k in range(chunks)])
    ids = {(i, name): f"{name}-{i}" for i in range(len(users)) for name in prompts}
    for (i, name), sid in ids.items():
        engine.add_session(sid, SamplingParams(seed=seed + i), prompts[name])
    agent: dict[str, list[Frame]] = {sid: [] for sid in ids.values()}
    for k in range(chunks):
        reqs = [
            StepRequest(sid, {k - 1: users[i][k - 1]} if k else {}) for (i, _), sid in ids.items()
        ]
        for sid, r in engine.step(reqs).items():
            agent[sid] += r.frames
    rows = []
    for (i, name), sid in ids.items():
        f0 = frame_f0(decode(codec, agent[sid]), codec.sample_rate)
        rows.append(
            {
                "call": i,
                "prompt": name,
                "voiced_s": len(f0) * C2_FRAME / C2_RATE,
                "mean_f0": float(f0.mean()) if len(f0) else None,
                "median_f0": float(np.median(f0)) if len(f0) else None,
            }
        )
    return {
        "checkpoint": str(checkpoint),
        "calls": len(users),
        "seconds": chunks * config.chunk_ms / 1000,
        "prompt_seconds": {k: len(v) * config.frame_ms / 1000 for k, v in prompts.items()},
        "prompt_voices": voices,
        "prompt_f0": prompt_f0,
        "rows": rows,
        "summary": summarize(rows),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per prompt: the mean over calls of each call's mean and median F0, and its voiced
    time; then high against low, call by call (a sign test: is high above low more often
    than chance?)."""
    out: dict[str, Any] = {}
    by = {name: {r["call"]: r for r in rows if r["prompt"] == name} for name in ("none", *PROMPTS)}
    for name, got in by.items():
        voiced = [r for r in got.values() if r["mean_f0"] is not None]
        out[name] = {
            "calls_voiced": len(voiced),
            "voiced_s": float(np.mean([r["voiced_s"] for r in got.values()])),
        } | {
            key: float(np.mean([r[key] for r in voiced])) if voiced else None
            for key in ("mean_f0", "median_f0")
        }
    diff = [
        by["high"][c]["mean_f0"] - by["low"][c]["mean_f0"]
        for c in by["low"]
        if by["high"][c]["mean_f0"] is not None and by["low"][c]["mean_f0"] is not None
    ]
    above = sum(d > 0 for d in diff)
    out["high_minus_low"] = {
        "pairs": len(diff),
        "mean_hz": float(np.mean(diff)) if diff else None,
        "high_above_low": above,
        "sign_test_p": float(binomtest(above, len(diff)).pvalue) if diff else None,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--calls", type=int, default=20, help="held-out calls (each run 3 times)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each call")
    parser.add_argument("--seed", type=int, default=0)
    for name, (voice, pitch) in PROMPTS.items():
        parser.add_argument(
            f"--{name}", default=f"{voice}:{pitch}", metavar="VOICE:PITCH",
            help=f"the {name} prompt's espeak-ng voice and pitch (default {voice}:{pitch})",
        )  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    voices = {}
    for name in PROMPTS:
        voice, pitch = getattr(args, name).rsplit(":", 1)
        voices[name] = (voice, int(pitch))
    result = measure(args.model, args.calls, args.seconds, args.seed, voices)
    text = json.dumps(result if args.out is None else result["summary"], indent=2)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    print(f"prompt F0 after the codec: {result['prompt_f0']}")
    print(text)


if __name__ == "__main__":
    main()
