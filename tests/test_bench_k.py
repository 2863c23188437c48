"""What each extra codebook costs (issue 21, part 5), the tools behind the figures: `duplex
model init --heads/--kv-heads` (a ~1B Llama shape), `duplex bench` over several checkpoints in
one run, and `duplex bench --codec` (the batched codec against one call at a time). Tiny
shapes: the figures themselves are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.cli import main
from tests.test_mimi import K, init_mimi_checkpoint


@pytest.fixture(scope="module")
def k_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One small Llama shape over 1 and over 2 codebooks a frame."""
    root = tmp_path_factory.mktemp("k")
    for k in (1, 2):
        argv = ["model", "init", "--out", str(root / f"k{k}"), "--layers", "1", "--hidden", "64",
                "--heads", "8", "--kv-heads", "2", "--units-per-frame", str(k), "--context", "512",
                "--sink", "32"]  # fmt: skip
        assert main(argv) == 0
    return [root / "k1", root / "k2"]


def test_model_init_writes_the_heads_asked_for(k_checkpoints: list[Path]) -> None:
    config = json.loads((k_checkpoints[0] / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (8, 2)
    assert (config["hidden_size"], config["head_dim"], config["intermediate_size"]) == (64, 8, 192)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--heads", "6", "--kv-heads", "4"], "--heads must be a positive multiple of --kv-heads"),
        (["--heads", "0"], "--heads must be a positive multiple of --kv-heads, got 0 and 1"),
        (
            ["--hidden", "96", "--heads", "32"],
            "--hidden must be a positive multiple of 64 (32 heads)",
        ),
    ],
)
def test_model_init_refuses_heads_that_do_not_divide(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "init", "--out", str(tmp_path / "m"), *args]) == 2
    assert capsys.readouterr().err.startswith(f"duplex model init: error: {message}")
    assert not (tmp_path / "m").exists()


def test_bench_times_several_checkpoints_in_one_run(
    k_checkpoints: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One table per checkpoint, each named with its shape and K; `--loop-limit-s 0` times no
    per-session loop."""
    md = tmp_path / "bench.md"
    argv = ["bench", "--model", ",".join(map(str, k_checkpoints)), "--sessions", "1,2",
            "--contexts", "100", "--ticks", "2", "--threads", "0", "--loop-limit-s", "0",
            "--markdown", str(md)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    tables = out.split("-parameter Llama (1 layers x 64, 8 heads, 2 KV)")[1:]
    assert [t.split(" codebook(s)")[0].split("K = ")[1] for t in tables] == ["1", "2"]
    for table in tables:
        rows = [line.split() for line in table.splitlines() if line.strip()[:1].isdigit()]
        assert [(int(r[0]), int(r[1]), r[4]) for r in rows] == [
            (1, 100, "skipped"),
            (2, 100, "skipped"),
        ]
        assert all(0 < float(r[2]) <= float(r[3]) for r in rows)
    text = md.read_text()
    assert text.count("### `duplex bench ") == 1 and text.count("| 2 | 100 |") == 2
    assert f"{k_checkpoints[1]}: " in text and "K = 2 codebook(s)" in text


def test_bench_refuses_a_missing_checkpoint_among_several_before_timing(
    k_checkpoints: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--model", f"{k_checkpoints[0]},/no/such/model", "--threads", "0"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "/no/such/model is not a duplex checkpoint" in captured.err and not captured.out


def test_bench_codec_times_the_batch_against_one_call_at_a_time(
    k_checkpoints: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Mimi checkpoint's codec has a batch path (both setups timed); the default codec has
    none (one call at a time only)."""
    init_mimi_checkpoint(tmp_path / "mimi-ckpt")
    md = tmp_path / "codec.md"
    models = f"{tmp_path / 'mimi-ckpt'},{k_checkpoints[0]}"
    argv = ["bench", "--codec", "--model", models, "--sessions", "1,3", "--ticks", "2",
            "--threads", "0", "--markdown", str(md)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    mimi, units = out.split("codec codec2-units")
    assert f"codec mimi-{K}x64, 160 ms ticks (2 frames)" in mimi
    rows = [line.split() for line in mimi.splitlines() if line[:8].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [1, 3]
    for r in rows:
        b_enc, b_dec, b_99, enc, dec, both99 = map(float, r[1:])
        assert min(b_enc, b_dec, enc, dec) > 0 and b_enc + b_dec <= b_99 * 1.001
        assert enc + dec <= both99 * 1.001
    assert "3 call(s): encode + decode " in mimi and "one call at a time" in mimi
    rows = [line.split() for line in units.splitlines() if line[:8].strip().isdigit()]
    assert [r[:4] for r in rows] == [["1", "-", "-", "-"], ["3", "-", "-", "-"]]
    text = md.read_text()
    assert "| calls | batched encode p50 |" in text and "| 3 | - | - | - |" in text
