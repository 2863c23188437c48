"""Spoken two-channel dialogues in the chunk format (`duplex data synth`, issue 4 part 2).

Each dialogue of the corpus is voiced by espeak-ng (voice, speed and pitch drawn per speaker)
and laid out on two channels with conversational timing: floor-transfer offsets from a normal
distribution (so some turns overlap), pauses inside turns, backchannels on the listener's
channel and interruptions that cut the interrupted speaker short. Which corpus speaker is the
agent ([S0]) is drawn per dialogue, so the agent learns both to open and to answer. The held-out
split keeps its dialogues and one voice (the user's, every time) out of training.

Everything random comes from `default_rng([seed, crc32(dialogue id), rendition])`, so a dialogue
renders the same whatever subset or thread order it is rendered in. Several renditions of one
script (other voices, speeds, timing and agent role) multiply the audio the model hears without
letting a held-out script leak into training: renditions stay in their script's split.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from model.format import ChunkFormat, format_timeline
from model.training.dialogues import BACKCHANNELS, Dialogue, Speaker, dialogues, split
from streaming.codecs import SpeechCodec, load_codec
from streaming.espeak import PITCH_RANGE, VOICES, WPM_RANGE, synthesize
from streaming.resample import resample_whole

if TYPE_CHECKING:  # the checkpoint module loads torch; `duplex eval` needs none of it
    from model.checkpoint import DuplexConfig

RATE = 8000
TRAIN_VOICES = VOICES  # the codebook's voices
HELDOUT_VOICE = "en-029+f2"  # in no training data, codebook included
_TRIM_LEVEL = 0.005  # espeak pads ~0.2-0.3 s of silence; timing is ours to decide
_FADE = 80  # samples (10 ms) of fade where an interrupted clip is cut
_SEGMENT_END = re.compile(r"(?<=[,.?!;])\s+")


@dataclass(frozen=True, slots=True)
class Timing:
    """The timing model; durations in seconds."""

    fto_mean: float = 0.15  # floor-transfer offset ~ N(mean, sd): gaps, some overlaps
    fto_sd: float = 0.25
    fto_min: float = -0.6
    fto_max: float = 1.5
    comma_pause: tuple[float, float] = (0.15, 0.35)
    sentence_pause: tuple[float, float] = (0.25, 0.6)
    backchannel_p: float = 0.6  # per pause of a turn with a backchannel slot
    backchannel_delay: tuple[float, float] = (-0.1, 0.25)  # from the pause's start
    max_backchannels: int = 2
    interrupt_p: float = 0.7  # at an interruption point
    interrupt_at: tuple[float, float] = (0.4, 0.75)  # share of the turn before the barge-in
    interrupt_min: float = 0.6  # never barge in earlier than this into a turn
    cut_after: tuple[float, float] = (0.1, 0.3)  # the interrupted speaker stops this much later
    same_channel_gap: float = 0.1  # a channel never overlaps itself
    lead_in: tuple[float, float] = (0.2, 0.8)
    tail: tuple[float, float] = (0.3, 0.8)


@dataclass(slots=True)
class Clip:
    """One piece of speech on a speaker's channel (samples at 8 kHz)."""

    speaker: Speaker
    text: str
    start: int
    length: int
    turn: int  # -1 for a backchannel


@dataclass(slots=True)
class TurnTiming:
    speaker: Speaker
    start: int
    end: int
    fto: int | None  # start minus the previous turn's end; None for the first turn
    interrupted: bool = False


@dataclass(slots=True)
class Plan:
    clips: list[Clip]
    turns: list[TurnTiming]
    n_samples: int


def segments(text: str) -> list[str]:
    """A turn's pieces between commas and sentence ends: each gets its own pause."""
    return [s for s in _SEGMENT_END.split(text.strip()) if s]


def ends_sentence(piece: str) -> bool:
    """Whether a piece ends a sentence (a longer pause after it inside a turn, and in espeak-ng
    a falling contour) rather than a clause (a comma or semicolon: a continuation contour)."""
    return piece[-1] in ".?!"


def _secs(rng: np.random.Generator, bounds: tuple[float, float]) -> int:
    return round(rng.uniform(*bounds) * RATE)


def plan(
    dialogue: Dialogue,
    length: Callable[[Speaker, str], int],
    rng: np.random.Generator,
    timing: Timing = Timing(),
    chunk_samples: int = 1280,
) -> Plan:
    """Place every turn, pause, backchannel and interruption; `length` gives a clip's samples."""
    t = timing
    gap = round(t.same_channel_gap * RATE)
    clips: list[Clip] = []
    turns: list[TurnTiming] = []
    busy: dict[Speaker, int] = {"A": 0, "B": 0}  # where each channel's audio ends
    barge_in: int | None = None  # where the current turn starts when it interrupts
    start = _secs(rng, t.lead_in)
    for i, turn in enumerate(dialogue.turns):
        spk = turn.speaker
        listener: Speaker = "B" if spk == "A" else "A"
        if turns:
            prev = turns[-1]
            if barge_in is not None:
                start = barge_in
            else:
                gap_s = float(np.clip(rng.normal(t.fto_mean, t.fto_sd), t.fto_min, t.fto_max))
                start = max(
                    prev.end + round(gap_s * RATE), prev.start + (prev.end - prev.start) // 2
                )
            start = max(start, busy[spk] + gap)
        pieces = segments(turn.text)
        own: list[Clip] = []
        pauses: list[int] = []
        pos = start
        for j, piece in enumerate(pieces):
            own.append(Clip(spk, piece, pos, length(spk, piece), i))
            pos += own[-1].length
            if j < len(pieces) - 1:
                pauses.append(pos)
                pos += _secs(rng, t.sentence_pause if ends_sentence(piece) else t.comma_pause)
        end = own[-1].start + own[-1].length
        cut_next = turn.interruptible and i + 1 < len(dialogue.turns)
        cut_next = cut_next and rng.random() < t.interrupt_p
        barge_in = None
        interrupted = False
        if cut_next:
            # The cut lands inside speech, at least 0.1 s from a clip's edges, or not at all.
            stay = round(t.interrupt_min * RATE)
            stay = max(round(rng.uniform(*t.interrupt_at) * (end - start)), stay)
            overlap = _secs(rng, t.cut_after)
            cut = start + stay + overlap
            edge = RATE // 10
            live = [c for c in own if c.start + c.length - edge > max(cut, c.start + edge)]
            if live:
                cut = max(cut, live[0].start + edge)
                barge_in, interrupted = cut - overlap, True
                own = [c for c in own if c.start < cut]
                for c in own:
                    c.length = min(c.length, cut - c.start)
                end = cut
        elif turn.backchannel:
            spots = pauses or [start + round(rng.uniform(0.4, 0.8) * (end - start))]
            placed = 0
            for spot in spots:
                if placed == t.max_backchannels or rng.random() >= t.backchannel_p:
                    continue
                text = BACKCHANNELS[int(rng.integers(len(BACKCHANNELS)))]
                at = max(spot + _secs(rng, t.backchannel_delay), busy[listener] + gap)
                n = length(listener, text)
                if at + n + gap <= end:  # a backchannel never outlasts the turn it backs
                    clips.append(Clip(listener, text, at, n, -1))
                    busy[listener] = at + n
                    placed += 1
        clips += own
        turns.append(
            TurnTiming(spk, start, end, start - turns[-1].end if turns else None, interrupted)
        )
        busy[spk] = max(busy[spk], end)
    total = max(busy.values()) + _secs(rng, t.tail)
    return Plan(clips, turns, -(-total // chunk_samples) * chunk_samples)


@dataclass(frozen=True, slots=True)
class Voice:
    voice: str
    wpm: int
    pitch: int


@dataclass(slots=True)
class Rendered:
    """One dialogue: its tokens, its frames [n, 2 (agent, user), units_per_frame], its meta."""

    tokens: np.ndarray
    frames: np.ndarray
    meta: dict[str, Any]
    stereo: np.ndarray | None


def trim_silence(pcm: np.ndarray) -> np.ndarray:
    """Cut espeak's leading and trailing silence: timing is the caller's to decide."""
    loud = np.flatnonzero(np.abs(pcm) > _TRIM_LEVEL)
    return pcm[loud[0] : loud[-1] + 1] if loud.size else pcm[:0]


def draw_voices(rng: np.random.Generator, heldout: bool) -> tuple[Speaker, dict[Speaker, Voice]]:
    """The agent's corpus speaker and both speakers' voices (distinct). Held-out dialogues
    give the user the held-out voice."""
    agent: Speaker = "A" if rng.random() < 0.5 else "B"
    names = [TRAIN_VOICES[int(i)] for i in rng.choice(len(TRAIN_VOICES), 2, replace=False)]
    voices: dict[Speaker, Voice] = {}
    speakers: tuple[Speaker, Speaker] = ("A", "B")
    for spk, name in zip(speakers, names, strict=True):
        wpm = int(rng.integers(WPM_RANGE[0], WPM_RANGE[1] + 1))
        pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
        voices[spk] = Voice(HELDOUT_VOICE if heldout and spk != agent else name, wpm, pitch)
    return agent, voices


def render(
    dialogue: Dialogue,
    seed: int,
    fmt: ChunkFormat,
    codec: SpeechCodec,
    timing: Timing = Timing(),
    keep_audio: bool = False,
    rendition: int = 0,
) -> Rendered:
    """Voice, place, encode and tokenize one dialogue (thread-safe: all state is local)."""
    rng = np.random.default_rng([seed, zlib.crc32(dialogue.id.encode()), rendition])
    agent, voices = draw_voices(rng, dialogue.heldout)
    audio: dict[tuple[Speaker, str], np.ndarray] = {}

    def length(spk: Speaker, text: str) -> int:
        if (spk, text) not in audio:
            v = voices[spk]
            audio[spk, text] = trim_silence(synthesize(text, v.voice, v.wpm, v.pitch))
        return len(audio[spk, text])

    chunk_samples = codec.frame_samples * fmt.frames_per_chunk * RATE // codec.sample_rate
    layout = plan(dialogue, length, rng, timing, chunk_samples)
    channels = {s: np.zeros(layout.n_samples, np.float32) for s in ("A", "B")}
    for c in layout.clips:
        pcm = audio[c.speaker, c.text][: c.length].copy()
        if c.length < len(audio[c.speaker, c.text]):
            pcm[-_FADE:] *= np.linspace(1.0, 0.0, min(_FADE, len(pcm)), dtype=np.float32)
        channels[c.speaker][c.start : c.start + c.length] += pcm
    user: Speaker = "B" if agent == "A" else "A"
    order = (channels[agent], channels[user])
    units = [
        codec.new_encoder().encode(at_codec_rate(np.clip(ch, -1.0, 1.0), codec)) for ch in order
    ]
    frames = np.stack(units, axis=1).astype(np.int32)  # [n_frames, 2, units_per_frame]
    fpc = fmt.frames_per_chunk
    n_chunks = len(frames) // fpc

    def chunks(ch: int) -> list[list[tuple[int, ...]]]:
        return [
            [tuple(int(u) for u in f) for f in frames[k * fpc : (k + 1) * fpc, ch]]
            for k in range(n_chunks)
        ]

    tokens = np.asarray(format_timeline(fmt, chunks(0), chunks(1)), dtype=np.int32)
    meta = _meta(dialogue, agent, voices, layout, n_chunks, len(tokens), rendition)
    stereo = np.stack(order, axis=1) if keep_audio else None
    return Rendered(tokens, frames, meta, stereo)


def at_codec_rate(pcm: np.ndarray, codec: SpeechCodec) -> np.ndarray:
    """A channel (8 kHz, whole chunks) at the codec's rate: as it is for the default codec,
    resampled for another (Mimi's 24 kHz: 3 samples each, so whole chunks stay whole)."""
    if codec.sample_rate == RATE:
        return pcm
    return resample_whole(pcm, RATE, codec.sample_rate)


def _s(samples: int) -> float:
    return round(samples / RATE, 4)


def _meta(
    d: Dialogue,
    agent: Speaker,
    voices: dict[Speaker, Voice],
    p: Plan,
    n_chunks: int,
    n_tok: int,
    rendition: int,
) -> dict[str, Any]:
    ftos = [_s(t.fto) for t in p.turns if t.fto is not None]
    bcs = [c for c in p.clips if c.turn < 0]
    return {
        "id": f"{d.id}~{rendition}" if rendition else d.id,
        "dialogue": d.id,
        "rendition": rendition,
        "topic": d.topic,
        "split": "heldout" if d.heldout else "train",
        "agent": agent,
        "voices": {s: asdict(v) for s, v in voices.items()},
        "duration_s": _s(p.n_samples),
        "n_chunks": n_chunks,
        "n_tokens": n_tok,
        "turns": [
            {
                "speaker": t.speaker,
                "text": turn.text,
                "start_s": _s(t.start),
                "end_s": _s(t.end),
                "segments": [[_s(c.start), _s(c.start + c.length)] for c in p.clips if c.turn == i],
                "interrupted": t.interrupted,
            }
            for i, (t, turn) in enumerate(zip(p.turns, d.turns, strict=True))
        ],
        "fto_s": ftos,
        "backchannels": [
            {
                "speaker": c.speaker,
                "text": c.text,
                "start_s": _s(c.start),
                "end_s": _s(c.start + c.length),
            }
            for c in bcs
        ],
        "overlap": any(f < 0 for f in ftos),
        "backchannel": bool(bcs),
        "interruption": any(t.interrupted for t in p.turns),
    }


@dataclass(slots=True)
class SynthStats:
    dialogues: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    audio_hours: float = 0.0
    fto_mean_s: float = 0.0
    fto_median_s: float = 0.0
    fto_0_500ms: float = 0.0  # share of floor transfers with a 0-500 ms gap
    fto_overlap: float = 0.0  # share with a negative offset
    with_backchannel: int = 0
    with_interruption: int = 0
    seconds: float = 0.0
    bytes_written: int = 0


def _select(items: list[Dialogue], n: int | None) -> tuple[list[Dialogue], list[Dialogue]]:
    """All dialogues, or n spread over the corpus with about a tenth (at least one) held out."""
    train, held = split(items)
    if n is None:
        return train, held
    if n < 2:
        raise ValueError(f"--dialogues must be at least 2 (one per split), got {n}")
    k = max(1, min(len(held), round(n * len(held) / len(items))))

    def spread(xs: list[Dialogue], m: int) -> list[Dialogue]:
        m = min(m, len(xs))
        return [xs[i] for i in np.linspace(0, len(xs) - 1, m).round().astype(int)] if m else []

    return spread(train, n - k), spread(held, k)


def synth(
    out_dir: Path,
    config: DuplexConfig,
    base_dir: Path,
    n_dialogues: int | None = None,
    seed: int = 0,
    wav: bool = False,
    progress: bool = True,
    workers: int = 2,
    timing: Timing = Timing(),
    renditions: int = 1,
    device: str = "cpu",
) -> SynthStats:
    """Render the corpus (or `n_dialogues` of it) `renditions` times into `out_dir`: per split
    an .npz (tokens, frames, offsets, ids) and a .jsonl of per-dialogue meta, plus synth.json;
    `wav` adds the stereo wavs (left = agent, right = user). `device`: where a neural codec
    encodes (a GPU makes Mimi's encoding of a large corpus fast)."""
    if renditions < 1:
        raise ValueError(f"--renditions must be at least 1, got {renditions}")
    start = time.perf_counter()
    codec = load_codec(config.codec, base_dir, device)
    fmt = config.chunk_format()
    frame_at_rate = codec.frame_samples * RATE / codec.sample_rate
    if frame_at_rate != int(frame_at_rate) or abs(codec.frame_ms - config.frame_ms) > 1e-9:
        raise ValueError(
            f"synthesis speaks at {RATE} Hz in duplex.json's frames of {config.frame_ms} ms; "
            f"codec {codec.name} is {codec.sample_rate} Hz, {codec.frame_ms} ms frames"
        )
    if codec.units_per_frame != fmt.units_per_frame:
        raise ValueError(
            f"duplex.json has {fmt.units_per_frame} units per frame; codec {codec.name} "
            f"writes {codec.units_per_frame}"
        )
    train, held = _select(dialogues(seed), n_dialogues)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = SynthStats()
    ftos: list[float] = []
    samples = 0
    total = (len(train) + len(held)) * renditions
    bar = tqdm(total=total, desc="synth", unit="dlg", disable=not progress)
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        for name, scripts in (("train", train), ("heldout", held)):
            items = [(d, k) for k in range(renditions) for d in scripts]
            done: list[Rendered] = []
            jobs = pool.map(lambda dk: render(dk[0], seed, fmt, codec, timing, wav, dk[1]), items)
            for r in jobs:
                done.append(r)
                bar.update()
                ftos += r.meta["fto_s"]
                samples += round(r.meta["duration_s"] * RATE)
                stats.with_backchannel += r.meta["backchannel"]
                stats.with_interruption += r.meta["interruption"]
                if r.stereo is not None:
                    (out_dir / "wav" / name).mkdir(parents=True, exist_ok=True)
                    sf.write(out_dir / "wav" / name / f"{r.meta['id']}.wav", r.stereo, RATE)
            _write_split(out_dir, name, done, fmt.units_per_frame)
            stats.dialogues[name] = len(done)
            stats.tokens[name] = int(sum(len(r.tokens) for r in done))
    f = np.asarray(ftos)
    stats.audio_hours = round(samples / RATE / 3600, 3)
    if f.size:
        stats.fto_mean_s = round(float(f.mean()), 3)
        stats.fto_median_s = round(float(np.median(f)), 3)
        stats.fto_0_500ms = round(float(((f >= 0) & (f <= 0.5)).mean()), 3)
        stats.fto_overlap = round(float((f < 0).mean()), 3)
    stats.seconds = round(time.perf_counter() - start, 1)
    summary = {"seed": seed, "renditions": renditions, "codec": config.codec,
               "chunk_format": asdict(fmt),
               "timing": asdict(timing), "heldout_voice": HELDOUT_VOICE,
               "train_voices": list(TRAIN_VOICES), "stats": asdict(stats)}  # fmt: skip
    (out_dir / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    stats.bytes_written = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return stats


def _write_split(out_dir: Path, name: str, done: list[Rendered], units_per_frame: int) -> None:
    def offsets(lengths: list[int]) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)

    with open(out_dir / f"{name}.npz", "wb") as f:
        np.savez_compressed(
            f,
            tokens=np.concatenate([r.tokens for r in done] or [np.zeros(0, np.int32)]),
            offsets=offsets([len(r.tokens) for r in done]),
            frames=np.concatenate(
                [r.frames for r in done] or [np.zeros((0, 2, units_per_frame), np.int32)]
            ),
            frame_offsets=offsets([len(r.frames) for r in done]),
            ids=np.asarray([r.meta["id"] for r in done], dtype=str),
        )
    (out_dir / f"{name}.jsonl").write_text("".join(json.dumps(r.meta) + "\n" for r in done))


def load_split(path: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(ids, token arrays, frame arrays [n, 2, units_per_frame]) of one split's .npz."""
    with np.load(path, allow_pickle=False) as z:
        # each z[key] reads the whole array again: read once (a slice per dialogue would keep
        # its own full copy alive, memory quadratic in the corpus)
        to, fo, all_tokens, all_frames = z["offsets"], z["frame_offsets"], z["tokens"], z["frames"]
        tokens = [all_tokens[a:b] for a, b in zip(to[:-1], to[1:], strict=True)]
        frames = [all_frames[a:b] for a, b in zip(fo[:-1], fo[1:], strict=True)]
        return [str(i) for i in z["ids"]], tokens, frames
