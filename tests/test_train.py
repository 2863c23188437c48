"""`duplex train`: loss goes down, resume is exact, the output is a servable checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import init_random_checkpoint, load_checkpoint, read_config
from model.engines.api import StepRequest
from model.engines.torch.engine import TorchEngine
from model.format import ChunkFormat, format_timeline
from model.sampling import SamplingParams
from model.training.synth import load_split, synth
from model.training.train import KINDS, STATE, TrainConfig, cut_windows, token_kinds, train
from server.cli import main
from server.runtime import check_codec_fits
from streaming.codecs import load_codec
from tests.test_mimi import VOCAB, K, init_mimi_checkpoint

TINY = TrainConfig(
    layers=1, hidden=64, heads=2, intermediate=128, context=128, batch_tokens=512, lr=3e-3,
    warmup_steps=5, steps=30, eval_every=10, checkpoint_every=15, serve_sink=16,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth(out, read_config(checkpoint), checkpoint, n_dialogues=6, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(data: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    train(TINY, data, out, checkpoint=checkpoint, progress=False)
    return out


def _rows(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_windows_and_kinds() -> None:
    fmt = ChunkFormat(8, 1, 0, 4, s0=8, s1=9, bos=10, silence_unit=0)
    tokens = np.array([10, 8, 1, 2, 9, 3, 8, 9, 4, 5])
    assert token_kinds(tokens, fmt).tolist() == [2, 2, 0, 0, 2, 1, 2, 2, 1, 1]
    w = cut_windows(tokens, fmt, 4)
    assert w.inputs.tolist() == [[10, 8, 1, 2], [9, 3, 8, 9], [4, 5, 10, 10]]
    assert w.targets.tolist() == [[8, 1, 2, 9], [3, 8, 9, 4], [5, -100, -100, -100]]
    assert w.kinds[0].tolist() == [2, 0, 0, 2]


def test_loss_goes_down(trained: Path) -> None:
    rows = _rows(trained)
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    first, last = rows[0], rows[-1]
    assert first["heldout_loss"] == pytest.approx(np.log(1027), abs=0.3)  # uniform at init
    assert last["train_loss"] < 0.75 * first["heldout_loss"]
    assert last["heldout_loss"] < first["heldout_loss"] - 0.5
    assert all(np.isfinite(last[f"heldout_{k}"]) for k in KINDS)
    assert last["tok_s"] > 0
    assert (trained / "loss.png").stat().st_size > 1000


def test_resume_is_exact(data: Path, checkpoint: Path, trained: Path, tmp_path: Path) -> None:
    train(TINY, data, tmp_path, checkpoint=checkpoint, progress=False, until=12)
    assert torch.load(tmp_path / STATE, weights_only=False)["step"] == 12
    with pytest.raises(ValueError, match="another configuration"):
        train(replace(TINY, lr=1e-3), data, tmp_path, checkpoint=checkpoint, resume=True)
    # The device is not part of the run: its state resumes on another (here cpu:0).
    again = replace(TINY, device="cpu:0", minutes=30.0)
    train(again, data, tmp_path, checkpoint=checkpoint, progress=False, resume=True)
    whole = torch.load(trained / STATE, weights_only=False)["model"]
    resumed = torch.load(tmp_path / STATE, weights_only=False)["model"]
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in _rows(tmp_path)] == [0, 10, 12, 20, 30]


def test_output_is_servable(trained: Path) -> None:
    config, llama = load_checkpoint(trained)
    assert config.context_tokens == TINY.context
    assert "duplex train" in config.description
    engine = TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=2)
    engine.add_session("s", SamplingParams(seed=0))
    for _ in range(4):
        result = engine.step([StepRequest("s")])["s"]
        assert len(result.frames) == engine.frames_per_chunk


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no data directory" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("duplex train: error:") and "train.npz" in err and "\n" not in err
    # A GPU that is not there: one line, before any data is read (the gpu preset on a CPU box).
    for device in (["--device", "cuda:99"], ["--device", "tpu"]):
        assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *device]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("duplex train: error: device") and "\n" not in err, err


def test_cli_trains_and_refuses_to_overwrite(
    data: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(data), "--out", str(tmp_path), "--checkpoint", str(checkpoint)]
    assert main([*args, "--steps", "1", "--threads", "1"]) == 0
    assert "step=1 " in capsys.readouterr().out
    assert load_checkpoint(tmp_path)[0].context_tokens == 512
    assert main([*args, "--steps", "1"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_k_codebooks_train_and_serve(data: Path, tmp_path: Path) -> None:
    """K = 2: the synthesized speech with each unit written in both codebooks (no codec has
    two yet). Every unit of a frame is a target of its speaker's kind; the model's vocabulary
    holds both codebooks (uniform loss at init is ln(2 x 1024 + 3)); the output serves
    two-unit frames."""
    ckpt, k2 = tmp_path / "k2", tmp_path / "data"
    config = init_random_checkpoint(ckpt, units_per_frame=2, layers=1, hidden=64)
    fmt = config.chunk_format()
    k2.mkdir()
    for name in ("train", "heldout"):
        ids, _, frames = load_split(data / f"{name}.npz")
        tokens, wide = [], []
        f = fmt.frames_per_chunk
        for fr in frames:
            fr2 = np.concatenate([fr, fr], axis=2)  # [n, 2, 2]
            chunks = [[[tuple(x) for x in fr2[a : a + f, ch].tolist()]
                       for a in range(0, len(fr2) - f + 1, f)] for ch in (0, 1)]  # fmt: skip
            tokens.append(np.asarray(format_timeline(fmt, *chunks), np.int32))
            wide.append(fr2)
        kinds = np.concatenate([token_kinds(t, fmt) for t in tokens])
        units = np.concatenate(tokens) < fmt.s0
        assert set(kinds[units].tolist()) == {0, 1} and set(kinds[~units].tolist()) == {2}
        np.savez_compressed(
            k2 / f"{name}.npz", tokens=np.concatenate(tokens),
            offsets=np.cumsum([0] + [len(t) for t in tokens]),
            frames=np.concatenate(wide), frame_offsets=np.cumsum([0] + [len(f) for f in wide]),
            ids=np.asarray(ids),
        )  # fmt: skip
    (k2 / "synth.json").write_text(json.dumps({"chunk_format": asdict(fmt)}))
    out = tmp_path / "out"
    record = train(replace(TINY, steps=3, eval_every=3), k2, out, checkpoint=ckpt, progress=False)
    assert _rows(out)[0]["heldout_loss"] == pytest.approx(np.log(2 * 1024 + 3), abs=0.3)
    assert record["step"] == 3
    served, llama = load_checkpoint(out)
    assert served.units_per_frame == 2
    engine = TorchEngine(served, llama, max_sessions=1, max_rollback_chunks=1)
    engine.add_session("s", SamplingParams(temperature=1.5, top_k=0, seed=0))
    for _ in range(4):
        result = engine.step([StepRequest("s")])["s"]
        assert all(len(f) == 2 for f in result.frames)
    with pytest.raises(ValueError, match="another chunk format"):
        train(TINY, data, tmp_path / "other", checkpoint=ckpt, progress=False)


def test_a_mimi_model_trains_and_serves(tmp_path: Path) -> None:
    """`data synth` and `train` on a Mimi checkpoint: the trained model names the same codec
    (its directory made absolute: the model is written elsewhere), speaks K-code frames and
    starts from Mimi's silence frame."""
    ckpt, data, out = tmp_path / "ckpt", tmp_path / "data", tmp_path / "out"
    config = init_mimi_checkpoint(ckpt)
    synth(data, config, ckpt, n_dialogues=2, progress=False)
    # a window of 256: a chunk of K = 8 takes up to 34 tokens, and serving keeps room to roll
    # back over a few of them
    cfg = replace(TINY, context=256, steps=3, eval_every=3)
    record = train(cfg, data, out, checkpoint=ckpt, progress=False)
    assert record["step"] == 3
    assert _rows(out)[0]["heldout_loss"] == pytest.approx(np.log(K * VOCAB + 3), abs=0.3)
    served, llama = load_checkpoint(out)
    assert served.codec == {**config.codec, "dir": str((ckpt / "mimi").resolve())}
    assert served.silence == config.silence and served.units_per_frame == K
    check_codec_fits(served, load_codec(served.codec, out))
    engine = TorchEngine(served, llama, max_sessions=1, max_rollback_chunks=1)
    engine.add_session("s", SamplingParams(temperature=1.5, top_k=0, seed=0))
    for _ in range(3):
        assert all(len(f) == K for f in engine.step([StepRequest("s")])["s"].frames)
