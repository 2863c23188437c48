"""The vLLM engine against the torch engine: the same draws from the same logits.

Runs in the vLLM lane (`make test-vllm`, its own environment); skipped where vLLM is not
installed (the default environment).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("vllm", reason="the vLLM lane: make test-vllm")

import model.engines.stepper  # noqa: E402  (after the skip: vLLM's lane only)
from model.checkpoint import init_random_checkpoint  # noqa: E402
from model.engines import build_engine  # noqa: E402
from model.engines.api import EngineOptions, StepRequest, StepResult  # noqa: E402
from model.engines.vllm.engine import VllmEngine  # noqa: E402
from model.format import Frame, format_timeline  # noqa: E402
from model.sampling import SamplingParams  # noqa: E402

# vLLM 0.32.0 leaves its ZMQ context to the collector after shutdown
pytestmark = pytest.mark.filterwarnings("ignore:Unclosed context:ResourceWarning")
TICKS = 130  # 20.8 s of call at 160 ms
TOL = 1e-4  # on log-probabilities: float32 on both (measured: 2e-6 apart at worst)
OPTIONS = EngineOptions(max_sessions=3, max_rollback_chunks=3, estimate_units=None)
# Per-call sampling the script gives its calls: greedy; sampled with the turn split, start
# bias and speak-up; greedy that yields to a caller who barges in.
CALLS = {
    "greedy": SamplingParams(temperature=0.0, top_k=0, seed=0),
    "sampled": SamplingParams(
        temperature=0.8,
        top_k=50,
        seed=7,
        turn_temperature=0.3,
        start_bias=1.0,
        speak_up_chunks=4,
    ),  # fmt: skip
    "barge": SamplingParams(temperature=0.0, top_k=0, seed=1, barge_in_frames=3),
}


@pytest.fixture(scope="module")
def vllm_engine(checkpoint: Path) -> Iterator[VllmEngine]:
    engine = build_engine("vllm", checkpoint, OPTIONS)
    assert isinstance(engine, VllmEngine)
    yield engine
    engine.close()


def script(seed: int) -> list[list[StepRequest]]:
    """A call per entry of CALLS, TICKS steps: speech in bursts and pauses, each user chunk
    in one tick after it was estimated (replaced), two ticks late now and then, its first
    frames early now and then, a missed tick, a response asked for."""
    rnd = random.Random(seed)
    steps: list[list[StepRequest]] = []
    audio: dict[str, list[list[Frame]]] = {sid: [] for sid in CALLS}
    for sid in CALLS:
        talking = False
        for _ in range(TICKS):
            if rnd.random() < 0.15:
                talking = not talking
            a, b = (rnd.randrange(1, 1024),), (rnd.randrange(1, 1024),)
            audio[sid].append([a, a, b, b] if talking else [(0,)] * 4)
    for k in range(TICKS):
        reqs = []
        for sid in CALLS:
            late = k % 11 == 5  # chunk k-2 comes a tick late, with chunk k-1
            real = {} if late or k < 2 else {k - 2: audio[sid][k - 2]}
            if k % 11 == 6:
                real[k - 3] = audio[sid][k - 3]
            partial = (k - 1, audio[sid][k - 1][:2]) if k % 7 == 3 else None
            reqs.append(
                StepRequest(sid, real, silent=k == 60, partial_user=partial, prompt=k == 90)
            )
        steps.append(reqs)
    return steps


@dataclass
class Draws:
    """What `sample` was given and drew, draw by draw, on one engine."""

    logits: list[torch.Tensor] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)


def run(
    engine: Any,
    steps: list[list[StepRequest]],
    monkeypatch: pytest.MonkeyPatch,
    against: Draws | None,
) -> tuple[Draws, list[dict[str, StepResult]], int]:
    """Step the script; record every draw. With `against` (the torch engine's draws), check
    each draw's logits against the same draw there, and where a float difference flipped a
    token (only possible within the tolerance) take the torch engine's, so the calls go on
    alike; returns how many flipped."""
    draws, flips = Draws(), 0
    real_sample = model.engines.stepper.sample

    def spy(logits: torch.Tensor, *args: Any, **kwargs: Any) -> list[int]:
        nonlocal flips
        i = len(draws.tokens)
        tokens = real_sample(logits, *args, **kwargs)
        if against is not None:
            theirs = against.logits[i]
            assert logits.shape == theirs.shape, f"draw {i}: other calls drawing"
            mine, ref = torch.log_softmax(logits, -1), torch.log_softmax(theirs, -1)
            seen = torch.isfinite(ref)
            torch.testing.assert_close(mine[seen], ref[seen], atol=TOL, rtol=0, msg=f"draw {i}")
            for row, (a, b) in enumerate(zip(tokens, against.tokens[i], strict=True)):
                if a != b:
                    assert abs(float(ref[row, a] - ref[row, b])) <= 2 * TOL, f"draw {i}"
                    tokens[row] = b
                    flips += 1
        draws.logits.append(logits.clone())
        draws.tokens.append(list(tokens))
        return tokens

    monkeypatch.setattr(model.engines.stepper, "sample", spy)
    for sid, params in CALLS.items():
        engine.add_session(sid, params)
    results = []
    try:
        for k, reqs in enumerate(steps):
            if k == 40:  # a caller changes its sampling mid-call
                engine.retune("greedy", SamplingParams(temperature=0.0, top_k=0, start_bias=2.0))
            results.append(engine.step(reqs))
        for sid in CALLS:
            tl = engine.timeline(sid)
            assert tl.tokens == format_timeline(engine.fmt, tl.agent, tl.user)
    finally:
        for sid in CALLS:
            engine.remove_session(sid)
        monkeypatch.undo()
    return draws, results, flips


def test_both_engines_draw_the_same_agent_tokens(
    checkpoint: Path, vllm_engine: VllmEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 20 s scripted call of three calls at once, with replaced estimates, late and early
    audio, a missed tick, a response asked for, a retune and per-call sampling: every draw's
    logits agree within TOL and every drawn token is the same (a flip only at a near tie)."""
    steps = script(0)
    torch_engine = build_engine("torch", checkpoint, OPTIONS)
    ref, ref_results, _ = run(torch_engine, steps, monkeypatch, None)
    draws, results, flips = run(vllm_engine, steps, monkeypatch, ref)
    assert len(draws.tokens) == len(ref.tokens) > 4 * TICKS
    assert flips <= 2, f"{flips} near ties flipped"
    for mine, theirs in zip(results, ref_results, strict=True):
        for sid, r in mine.items():
            t = theirs[sid]
            assert (r.frames, r.estimate, r.replaced, r.dropped) == (
                t.frames, t.estimate, t.replaced, t.dropped
            )  # fmt: skip
            assert r.tokens == t.tokens
    replaced = sum(len(r.replaced) for step in results for r in step.values())
    assert replaced > TICKS  # the estimates were replaced, at most ticks, in every call
    assert any(r.rollback_tokens for step in results for r in step.values())  # not all right
    sounding = sum(f != (0,) for step in results for r in step.values() for f in r.frames)
    assert sounding > TICKS  # the agents talked: the draws were not all the silence unit


def test_a_call_past_the_window_keeps_its_prefix_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call many times the context long: the prompt is the sink and a window that moves in
    steps, so between moves vLLM finds all but the last block in its prefix cache and the
    conversation goes on at flat cost; a full prefill only where the window moved."""
    # vLLM's CPU attention takes 64-wide heads, not the 16-wide of a 64-wide model
    init_random_checkpoint(tmp_path, seed=3, layers=1, context_tokens=256, sink_tokens=16)
    engine = build_engine("vllm", tmp_path, EngineOptions(max_sessions=1, max_rollback_chunks=2))
    assert isinstance(engine, VllmEngine)
    uncached: list[int] = []  # per forward: prompt tokens vLLM had to compute
    generate = engine.llm.generate

    def spy(prompts: list[Any], *args: Any, **kwargs: Any) -> Any:
        outputs = generate(prompts, *args, **kwargs)
        for prompt, out in zip(prompts, outputs, strict=True):
            uncached.append(len(prompt["prompt_token_ids"]) - out.num_cached_tokens)
        return outputs

    monkeypatch.setattr(engine.llm, "generate", spy)
    try:
        engine.add_session("long", SamplingParams(temperature=1.0, top_k=0, seed=0))
        rnd = random.Random(0)
        for k in range(300):
            a, b = (rnd.randrange(1, 1024),), (rnd.randrange(1, 1024),)
            engine.step([StepRequest("long", {k - 1: [a, a, b, b]} if k else {})])
        tl = engine.timeline("long")
        assert len(tl.tokens) > 6 * 256
        assert tl.tokens == format_timeline(engine.fmt, tl.agent, tl.user)
        block = engine.llm.llm_engine.vllm_config.cache_config.block_size
        moves = (len(tl.tokens) - 256) // engine.trim + 1
        full = [n for n in uncached if n > block + engine.chunk_tokens]
        assert 0 < len(full) <= moves
        assert sorted(uncached)[len(uncached) // 2] <= block
    finally:
        engine.close()


def test_admission_follows_the_kv_cache(vllm_engine: VllmEngine) -> None:
    """More calls than the KV cache holds are refused at start; a call beyond max_sessions
    at join."""
    with pytest.raises(ValueError, match="KV cache holds"):
        VllmEngine(vllm_engine.config, vllm_engine.llm, max_sessions=10**6, max_rollback_chunks=3)
    ids = [f"c{i}" for i in range(OPTIONS.max_sessions)]
    for sid in ids:
        vllm_engine.add_session(sid, SamplingParams())
    try:
        with pytest.raises(RuntimeError, match="calls"):
            vllm_engine.add_session("one too many", SamplingParams())
    finally:
        for sid in ids:
            vllm_engine.remove_session(sid)


def test_bench_times_both_engines_in_one_run(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`duplex bench --engine torch,vllm`: the torch engine, its per-session loop and the
    vLLM engine, every cell, in one table and one markdown file."""
    from model.bench import run
    from server.cli import build_parser

    md = tmp_path / "bench.md"
    args = build_parser().parse_args(
        ["bench", "--model", str(checkpoint), "--sessions", "1,2", "--contexts", "100",
         "--ticks", "2", "--markdown", str(md)]
    )  # fmt: skip
    args.engine = "torch,vllm"
    assert run(args) == 0
    out = capsys.readouterr().out
    after = out.split("vllm99\n")[1].splitlines()  # the vLLM rows follow their own header
    vllm = [line.split() for line in after if line.strip()[:1].isdigit()]
    assert [(int(r[0]), int(r[1])) for r in vllm] == [(1, 100), (2, 100)]
    assert all(0 < float(r[2]) <= float(r[3]) for r in vllm)
    assert "context 100: batched sustains" in out and ", vllm " in out
    text = md.read_text()
    assert "| vllm p50 | vllm p99 |" in text and "| 2 | 100 |" in text
