"""Training data: the dialogue corpus, the timing planner and `duplex data synth`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from model.checkpoint import init_random_checkpoint, read_config
from model.format import format_timeline, parse_timeline
from model.training.dialogues import BACKCHANNELS, dialogues, parse_script, split
from model.training.synth import HELDOUT_VOICE, RATE, Timing, load_split, plan, synth
from server.cli import main
from tests.test_mimi import K, init_mimi_checkpoint

TOPICS = {"greeting", "smalltalk", "time", "weather", "plans", "numbers", "names", "requests",
          "confirmations"}  # fmt: skip
FRAME_S = 0.04


def test_corpus_size_and_variety() -> None:
    corpus = dialogues(0)
    assert len(corpus) >= 300
    assert len({d.id for d in corpus}) == len(corpus)
    assert len({d.turns for d in corpus}) == len(corpus)
    assert len({d.turns[0].text for d in corpus}) >= 250
    assert {d.topic for d in corpus} >= TOPICS
    assert all(2 <= len(d.turns) <= 6 for d in corpus)
    assert sum(any(t.backchannel for t in d.turns) for d in corpus) >= 50
    assert sum(any(t.interruptible for t in d.turns) for d in corpus) >= 50
    texts = {t.text for d in corpus for t in d.turns}
    assert texts & set(BACKCHANNELS), "backchannels also occur as whole turns"
    assert dialogues(0) == corpus, "seeded"
    assert dialogues(1) != corpus


def test_split_is_disjoint_and_stable() -> None:
    corpus = dialogues(0)
    train, held = split(corpus)
    assert len(train) + len(held) == len(corpus)
    assert 0.05 <= len(held) / len(corpus) <= 0.15
    assert not {d.id for d in train} & {d.id for d in held}
    assert not {d.turns for d in train} & {d.turns for d in held}
    held_1 = {d.id for d in split(dialogues(1))[1]}
    assert {d.id for d in held} == held_1, "membership follows the id, not the seed"


@pytest.mark.parametrize(
    "lines", [["A: hi"], ["A: hi", "A: again"], ["C: who?", "A: hi"], ["A hi", "B: yo"]]
)
def test_parse_script_refuses_bad_scripts(lines: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_script(lines)


def test_timing_model() -> None:
    """The planner alone (fake clip lengths: 70 ms a character) over the whole corpus."""
    ftos: list[float] = []
    cut_ftos: list[float] = []
    n_bc = 0
    for k, d in enumerate(dialogues(0)):
        p = plan(d, lambda _s, text: 560 * len(text), np.random.default_rng([0, k]))
        assert p.n_samples % 1280 == 0
        assert p.n_samples >= max(c.start + c.length for c in p.clips)
        for spk in "AB":
            clips = sorted((c.start, c.start + c.length) for c in p.clips if c.speaker == spk)
            assert all(b[0] > a[1] for a, b in zip(clips, clips[1:], strict=False)), (
                "no self-overlap"
            )
        for c in (c for c in p.clips if c.turn < 0):
            n_bc += 1
            assert any(t.speaker != c.speaker and t.start < c.start < t.end for t in p.turns)
        for prev, t in zip(p.turns, p.turns[1:], strict=False):
            assert t.fto is not None
            (cut_ftos if prev.interrupted else ftos).append(t.fto / RATE)
    f = np.asarray(ftos + cut_ftos)
    assert ((f >= 0) & (f <= 0.5)).mean() >= 0.5, "most gaps are 0-500 ms"
    assert 0.1 <= (f < 0).mean() <= 0.45, "some overlaps"
    assert 0.1 <= np.median(f) <= 0.3
    lo, hi = Timing().cut_after  # an interrupted speaker stops this long after the barge-in
    assert len(cut_ftos) >= 30 and all(-hi - 0.01 <= x <= -lo + 0.01 for x in cut_ftos)
    assert n_bc >= 50


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth(out, read_config(checkpoint), checkpoint, n_dialogues=6, seed=3, wav=True, progress=False)
    return out


def _meta(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_synth_is_reproducible_and_cli_wired(
    synthesized: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "synth", "--out", str(tmp_path), "--dialogues", "6", "--seed", "3"]
    assert main([*argv, "--checkpoint", str(checkpoint)]) == 0
    assert "audio_hours=" in capsys.readouterr().out
    for name in ("train", "heldout"):
        with np.load(synthesized / f"{name}.npz") as a, np.load(tmp_path / f"{name}.npz") as b:
            assert set(a.files) == set(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
        assert _meta(synthesized / f"{name}.jsonl") == _meta(tmp_path / f"{name}.jsonl")
    assert main([*argv, "--checkpoint", str(tmp_path / "missing")]) == 1


def test_synth_tokens_parse_back(synthesized: Path, checkpoint: Path) -> None:
    fmt = read_config(checkpoint).chunk_format()
    for name, n in (("train", 5), ("heldout", 1)):
        ids, tokens, frames = load_split(synthesized / f"{name}.npz")
        metas = _meta(synthesized / f"{name}.jsonl")
        assert len(ids) == len(metas) == n and ids == [m["id"] for m in metas]
        for tok, fr, m in zip(tokens, frames, metas, strict=True):
            agent, user = parse_timeline(fmt, tok.tolist())
            assert len(agent) == m["n_chunks"] == len(fr) // fmt.frames_per_chunk
            # A user chunk adding no frame writes no token, so a silent last one is implied.
            assert len(user) == len(agent) or (len(user) == len(agent) - 1 and fr[-1, 1, 0] == 0)
            assert all(len(c) == fmt.frames_per_chunk for c in agent + user)
            chunks = [
                [[tuple(f) for f in fr[k : k + 4, ch].tolist()] for k in range(0, len(fr), 4)]
                for ch in (0, 1)
            ]
            assert format_timeline(fmt, *chunks) == tok.tolist()
            wav, rate = sf.read(synthesized / "wav" / name / f"{m['id']}.wav")
            assert rate == RATE and wav.shape == (len(fr) * 320, 2)


def test_heldout_voice_only_in_heldout(synthesized: Path) -> None:
    for m in _meta(synthesized / "train.jsonl"):
        assert HELDOUT_VOICE not in {v["voice"] for v in m["voices"].values()}
    for m in _meta(synthesized / "heldout.jsonl"):
        user = "B" if m["agent"] == "A" else "A"
        assert m["voices"][user]["voice"] == HELDOUT_VOICE
        assert m["voices"][m["agent"]]["voice"] != HELDOUT_VOICE


def test_speech_where_turns_are_silence_elsewhere(synthesized: Path) -> None:
    _, _, frames = load_split(synthesized / "train.npz")
    for fr, m in zip(frames, _meta(synthesized / "train.jsonl"), strict=True):
        channel = {m["agent"]: 0, ("B" if m["agent"] == "A" else "A"): 1}
        for spk, ch in channel.items():
            spans = [s for t in m["turns"] if t["speaker"] == spk for s in t["segments"]]
            spans += [[b["start_s"], b["end_s"]] for b in m["backchannels"] if b["speaker"] == spk]
            units = fr[:, ch, 0]
            inside = np.zeros(len(units), bool)
            near = np.zeros(len(units), bool)
            for a, b in spans:
                inside[int(np.ceil(a / FRAME_S)) : int(b / FRAME_S)] = True
                near[max(0, int(a / FRAME_S) - 1) : int(np.ceil(b / FRAME_S)) + 1] = True
            assert (units[inside] != 0).mean() >= 0.8, (m["id"], spk)
            assert (units[~near] == 0).all(), (m["id"], spk)


def test_renditions_vary_the_audio_and_keep_the_split(
    synthesized: Path, checkpoint: Path, tmp_path: Path
) -> None:
    """Rendition 0 is the plain render; later ones re-voice and re-time the same scripts and
    stay in their script's split."""
    synth(tmp_path, read_config(checkpoint), checkpoint, n_dialogues=6, seed=3, renditions=2,
          progress=False)  # fmt: skip
    base = {
        m["id"]: m for name in ("train", "heldout") for m in _meta(synthesized / f"{name}.jsonl")
    }
    for name in ("train", "heldout"):
        metas = _meta(tmp_path / f"{name}.jsonl")
        assert len(metas) == 2 * sum(1 for m in base.values() if m["split"] == name)
        ids, tokens, _ = load_split(tmp_path / f"{name}.npz")
        by_id = dict(zip(ids, tokens, strict=True))
        for m in metas:
            assert m["split"] == name and m["rendition"] in (0, 1)
            if m["rendition"] == 0:
                assert m["id"] == m["dialogue"] and m["voices"] == base[m["id"]]["voices"]
            else:
                assert m["id"] == f"{m['dialogue']}~1"
                first = by_id[m["dialogue"]]
                assert not np.array_equal(by_id[m["id"]], first)  # another voice and timing
    assert json.loads((tmp_path / "synth.json").read_text())["renditions"] == 2


def test_synth_refuses_a_codec_with_other_units_per_frame(tmp_path: Path) -> None:
    """duplex.json says 2 units a frame; its codec (the default) writes 1: refused up front."""
    config = init_random_checkpoint(tmp_path / "k2", units_per_frame=2, layers=1, hidden=64)
    with pytest.raises(ValueError, match="2 units per frame; codec .* writes 1"):
        synth(tmp_path / "out", config, tmp_path / "k2", n_dialogues=2, progress=False)
    assert not (tmp_path / "out").exists()


def test_synth_speaks_mimi(tmp_path: Path) -> None:
    """A Mimi checkpoint (24 kHz, 80 ms frames of K codes): the 8 kHz dialogues are encoded at
    the codec's rate, two frames a chunk; the tokens parse back to the frames, and a channel
    holds the silence frame wherever it is silent for long."""
    config = init_mimi_checkpoint(tmp_path / "ckpt")
    fmt = config.chunk_format()
    argv = ["data", "synth", "--out", str(tmp_path / "data"), "--dialogues", "2",
            "--checkpoint", str(tmp_path / "ckpt")]  # fmt: skip
    assert main([*argv, "--device", "cuda:7"]) == 1  # refused before any work
    assert not (tmp_path / "data").exists()
    assert main([*argv, "--device", "cpu"]) == 0
    written = json.loads((tmp_path / "data" / "synth.json").read_text())
    assert written["chunk_format"]["silence_frame"] == list(fmt.silence)
    for name in ("train", "heldout"):
        _, tokens, frames = load_split(tmp_path / "data" / f"{name}.npz")
        meta = _meta(tmp_path / "data" / f"{name}.jsonl")
        for tok, fr, m in zip(tokens, frames, meta, strict=True):
            assert fr.shape == (m["n_chunks"] * 2, 2, K)
            assert m["n_chunks"] == round(m["duration_s"] / 0.16)
            chunks = [[[tuple(f) for f in fr[k : k + 2, ch].tolist()] for k in range(0, len(fr), 2)]
                      for ch in (0, 1)]  # fmt: skip
            assert format_timeline(fmt, *chunks) == tok.tolist()
            quiet = [tuple(f) == fmt.silence for f in fr[:, 1].tolist()]
            assert any(quiet) and not all(quiet)
