"""`duplex bench`: tick cost of the batched engine vs a per-session loop, in the same run.

The per-session loop is the same engine code with one session per engine (a batch of one),
stepped one after the other: how single-user servers work. Both start from the same context
(built once per length, then copied into every slot), and each measured tick is a real step:
a replaced estimate (rollback + prefill), a new estimate and an agent chunk per session.
A setup "sustains" N sessions when its p99 tick time stays under the tick (160 ms). The
contexts of one session count take turns tick by tick, so a host whose speed drifts slows them
alike and the cost-vs-context ratio is a fair one.

`--model a,b,...` times several checkpoints in one run, one table each (what each extra
codebook costs: the same Llama shape over K = 1, 2, 4, 8 codebooks). `--codec` times the
checkpoint's codec instead of its model: per tick, every call's new audio encoded and every
agent's frames decoded, in one batched call each and one call at a time.

`--engine torch,vllm` also times the vLLM engine (model/engines/vllm/) on the same sessions:
the same conversations (their timelines; vLLM computes their KV at the first tick, which is
not timed), one vLLM engine for the whole run, its contexts one after the other.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from transformers import LlamaForCausalLM

from model.checkpoint import CheckpointError, DuplexConfig, load_checkpoint, read_config
from model.engines import ENGINES, build_engine
from model.engines.api import EngineOptions, StepRequest
from model.engines.stepper import Stepper
from model.engines.torch.engine import DTYPES, TorchEngine
from model.format import ChunkFormat, Frame
from model.sampling import SamplingParams
from streaming.codecs import SpeechCodec, decoder_batch, encoder_batch, load_codec

if TYPE_CHECKING:  # the vLLM engine's module is imported only when it is timed
    from model.engines.vllm.engine import VllmEngine

ROLLBACK_CHUNKS = 3  # 240 ms budget + lead at 160 ms ticks


@dataclass
class Row:
    sessions: int
    context: int
    batched_p50_ms: float
    batched_p99_ms: float
    loop_p50_ms: float | None
    loop_p99_ms: float | None
    vllm_p50_ms: float | None = None
    vllm_p99_ms: float | None = None


def _user_chunk(rnd: random.Random, fmt: ChunkFormat) -> list[Frame]:
    """Two random frames: the first held for two frames, the second for the rest."""

    def frame() -> Frame:
        return tuple(rnd.randrange(fmt.n_units) for _ in range(fmt.units_per_frame))

    a = frame()
    b = frame()
    return [a] * 2 + [b] * (fmt.frames_per_chunk - 2)


def _template(config: DuplexConfig, llama: LlamaForCausalLM, context: int) -> TorchEngine:
    """One session whose conversation holds `context` tokens (silent ticks, then real ones)."""
    engine = TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=ROLLBACK_CHUNKS)
    engine.add_session("t", SamplingParams(seed=0))
    rnd = random.Random(0)
    k = 0
    while len(engine.timeline("t").tokens) < context:
        real = {k - 1: _user_chunk(rnd, engine.fmt)} if k else {}
        engine.step([StepRequest("t", real, silent=True)])
        k += 1
    engine.step([StepRequest("t", {k - 1: _user_chunk(rnd, engine.fmt)})])  # prefill the backlog
    return engine


def _clone_into(template: TorchEngine, engine: TorchEngine, session_id: str, seed: int) -> None:
    """Give `engine` a session with the template's conversation and KV cache."""
    engine.add_session(session_id, SamplingParams(seed=seed))
    src = template.sessions["t"]
    dst = engine.sessions[session_id]
    dst.timeline = copy.deepcopy(src.timeline)
    a, b = template.cache, engine.cache
    for tensors_a, tensors_b in ((a.keys, b.keys), (a.values, b.values), (a.sink_raw, b.sink_raw)):
        for ta, tb in zip(tensors_a, tensors_b, strict=True):
            tb[dst.row].copy_(ta[src.row])
    b.positions[dst.row].copy_(a.positions[src.row])
    b.lengths[dst.row] = a.lengths[src.row]
    b.sink_shift[dst.row] = a.sink_shift[src.row]


def _requests(engines: list[Stepper[Any]], rnd: random.Random) -> list[list[StepRequest]]:
    """Per engine, one request per session at agent chunk k: user chunk k-2, estimated last
    tick, is now real (rollback + prefill); chunk k-1 is estimated; chunk k is generated."""
    out = []
    for engine in engines:
        reqs = []
        for sid, s in engine.sessions.items():
            k = len(s.timeline.agent)
            reqs.append(StepRequest(sid, {k - 2: _user_chunk(rnd, engine.fmt)}))
        out.append(reqs)
    return out


def _time_ticks(
    groups: dict[int, list[Stepper[Any]]], ticks: int, rnd: random.Random
) -> dict[int, list[float]]:
    """Tick times per context. The contexts take turns tick by tick, so the host's speed
    (which drifts over minutes here) weighs on every context alike and their ratio holds."""
    times: dict[int, list[float]] = {context: [] for context in groups}
    for _ in range(ticks + 2):
        for context, engines in groups.items():
            batches = _requests(engines, rnd)
            t0 = time.perf_counter()
            for engine, reqs in zip(engines, batches, strict=True):
                engine.step(reqs)
            times[context].append(time.perf_counter() - t0)
    # the first two ticks after cloning settle into the estimate/replace rhythm
    return {context: t[2:] for context, t in times.items()}


def _engine(
    config: DuplexConfig,
    llama: LlamaForCausalLM,
    template: TorchEngine,
    seeds: range,
    estimate_units: int | None,
) -> TorchEngine:
    """An engine with one session per seed, each a copy of the template's conversation."""
    engine = TorchEngine(
        config, llama, max_sessions=len(seeds), max_rollback_chunks=ROLLBACK_CHUNKS,
        estimate_units=estimate_units,
    )  # fmt: skip
    for i in seeds:
        _clone_into(template, engine, f"s{i}", i)
    return engine


def _p(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _vllm_ticks(
    engine: Stepper[Any], templates: dict[int, TorchEngine], n: int, ticks: int, rnd: random.Random
) -> dict[int, list[float]]:
    """Tick times of `n` sessions on `engine` per context, each session a copy of the
    template's conversation (the untimed first ticks compute its KV)."""
    times: dict[int, list[float]] = {}
    ids = [f"s{i}" for i in range(n)]
    for context, template in templates.items():
        for i, sid in enumerate(ids):
            engine.add_session(sid, SamplingParams(seed=i))
            engine.sessions[sid].timeline = copy.deepcopy(template.timeline("t"))
        times.update(_time_ticks({context: [engine]}, ticks, rnd))
        for sid in ids:
            engine.remove_session(sid)
    return times


def run_bench(
    config: DuplexConfig,
    llama: LlamaForCausalLM,
    sessions: list[int],
    contexts: list[int],
    ticks: int,
    loop_limit_s: float,
    estimate_units: int | None = None,
    vllm: Callable[[], VllmEngine] | None = None,
) -> list[Row]:
    """Rows for every (sessions, context) with a loaded model; the per-session loop stops
    growing once its median tick exceeds `loop_limit_s`. With `vllm` (it starts an engine
    with room for the most sessions), its ticks too, once the torch engine's are done: vLLM's
    processes busy-wait a second after each request, which would slow the torch engine's.
    A `loop_limit_s` of 0 times no loop."""
    templates = {context: _template(config, llama, context) for context in contexts}
    rows = []
    loop_too_slow = loop_limit_s <= 0
    for n in sessions:
        rnd = random.Random(n)
        batched: dict[int, list[Stepper[Any]]] = {
            c: [_engine(config, llama, t, range(n), estimate_units)] for c, t in templates.items()
        }
        bt = _time_ticks(batched, ticks, rnd)
        del batched
        lt: dict[int, list[float]] = {}
        if not loop_too_slow:
            loops: dict[int, list[Stepper[Any]]] = {
                c: [_engine(config, llama, t, range(i, i + 1), estimate_units) for i in range(n)]
                for c, t in templates.items()
            }
            lt = _time_ticks(loops, ticks, rnd)
            del loops
            loop_too_slow = any(statistics.median(t) > loop_limit_s for t in lt.values())
        for context in contexts:
            row = Row(n, context, _p(bt[context], 0.5), _p(bt[context], 0.99), None, None)
            if context in lt:
                row.loop_p50_ms, row.loop_p99_ms = _p(lt[context], 0.5), _p(lt[context], 0.99)
            rows.append(row)
            print(_format_row(row), flush=True)
    if vllm:
        engine = vllm()
        print(" ".join(f"{h:>8}" for h in ("sessions", "context", "vllm50", "vllm99")))
        try:
            for n in sessions:
                vt = _vllm_ticks(engine, templates, n, ticks, random.Random(n))
                for row in (r for r in rows if r.sessions == n):
                    times = vt[row.context]
                    row.vllm_p50_ms, row.vllm_p99_ms = _p(times, 0.5), _p(times, 0.99)
                    print(f"{n:8d} {row.context:8d} {row.vllm_p50_ms:8.1f} {row.vllm_p99_ms:8.1f}")
        finally:
            engine.close()
    return sorted(rows, key=lambda r: (r.context, r.sessions))


def _format_row(r: Row) -> str:
    loop = "skipped" if r.loop_p50_ms is None else f"{r.loop_p50_ms:8.1f} {r.loop_p99_ms:8.1f}"
    return (
        f"{r.sessions:8d} {r.context:8d} {r.batched_p50_ms:8.1f} {r.batched_p99_ms:8.1f}   {loop}"
    )


SETUPS = {"batched": "batched", "loop": "per-session loop", "vllm": "vllm"}


def sustained(rows: list[Row], context: int, tick_ms: float, setup: str) -> int:
    """Most sessions whose p99 tick stays under the tick at this context, on `setup` (a key
    of SETUPS)."""
    best = 0
    for r in rows:
        p99 = getattr(r, f"{setup}_p99_ms")
        if r.context == context and p99 is not None and p99 < tick_ms:
            best = max(best, r.sessions)
    return best


def _fail(message: str) -> int:
    """A bad argument: one line on stderr, exit 2."""
    print(f"duplex bench: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        sessions = [int(x) for x in args.sessions.split(",")]
        contexts = [int(x) for x in args.contexts.split(",")]
    except ValueError:
        return _fail("--sessions/--contexts take comma-separated integers")
    if min(sessions) < 1 or min(contexts) < 1 or args.ticks < 1 or args.threads < 0:
        return _fail("--sessions, --contexts and --ticks must be >= 1, --threads >= 0")
    if args.estimate_units < 0:
        return _fail("--estimate-units must be >= 0")
    if args.markdown and not Path(args.markdown).parent.is_dir():
        return _fail(f"cannot write {args.markdown}: no such directory")
    # the torch engine and its per-session loop are always timed: the reference
    engines = set(getattr(args, "engine", "torch").split(","))
    if not engines <= set(ENGINES):
        return _fail(f"--engine takes names of {', '.join(ENGINES)}, comma-separated")
    dtype = getattr(args, "dtype", "float32")
    if dtype not in DTYPES:
        return _fail(f"--dtype takes one of {', '.join(DTYPES)}")
    models = [Path(m) for m in args.model.split(",")]
    try:  # every duplex.json before the first (long) run
        configs = [read_config(m) for m in models]
    except CheckpointError as exc:
        return _fail(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    tables: list[tuple[str, list[Any]]] = []
    for model, config in zip(models, configs, strict=True):
        try:
            if getattr(args, "codec", False):
                tables.append(_codec_table(args, model, config, sessions))
            else:
                tables.append(_model_table(args, model, sessions, contexts, dtype, engines))
        except (CheckpointError, ValueError) as exc:  # vLLM missing, a KV cache too small, ...
            return _fail(str(exc))
    if args.markdown:
        _write_markdown(Path(args.markdown), tables, contexts, _setups(engines), args.device)
    return 0


TICK_MS = 160.0


def _setups(engines: set[str]) -> list[str]:
    return ["batched", "loop"] + (["vllm"] if "vllm" in engines else [])


def _model_table(
    args: argparse.Namespace,
    model: Path,
    sessions: list[int],
    contexts: list[int],
    dtype: str,
    engines: set[str],
) -> tuple[str, list[Row]]:
    """One checkpoint's rows (printed as they come, with its summary)."""
    config, llama = load_checkpoint(model, device=args.device, dtype=DTYPES[dtype])
    label = _label(model, config, llama, dtype)
    print(label)
    options = EngineOptions(
        max_sessions=max(sessions), max_rollback_chunks=ROLLBACK_CHUNKS,
        estimate_units=args.estimate_units, device=args.device, dtype=dtype,
    )  # fmt: skip

    def start_vllm() -> VllmEngine:
        return cast("VllmEngine", build_engine("vllm", model, options))

    vllm = start_vllm if "vllm" in engines else None
    setups = _setups(engines)
    heads = ("sessions", "context", "batch50", "batch99", "  loop50", "loop99")
    print(" ".join(f"{h:>8}" for h in heads))
    rows = run_bench(
        config, llama, sessions, contexts, args.ticks, args.loop_limit_s, args.estimate_units,
        vllm,
    )  # fmt: skip
    for context in contexts:
        held = {setup: sustained(rows, context, TICK_MS, setup) for setup in setups}
        b, lp = held["batched"], held["loop"]
        times = f"{b / lp:.1f}x" if lp else "inf"
        line = f"context {context}: batched sustains {b}, per-session loop {lp} ({times})"
        print(line + (f", vllm {held['vllm']}" if vllm else ""))
    for n in sessions:
        for setup in setups:
            by_ctx = {r.context: getattr(r, f"{setup}_p50_ms") for r in rows if r.sessions == n}
            if by_ctx.get(8000) and by_ctx.get(1000):
                ratio = by_ctx[8000] / by_ctx[1000]
                print(f"flat cost at {n} session(s), {SETUPS[setup]}: 8000 vs 1000 tokens "
                      f"{ratio:.2f}x")  # fmt: skip
    return label, rows


def _label(model: Path, config: DuplexConfig, llama: LlamaForCausalLM, dtype: str) -> str:
    """What a table was measured on: the checkpoint, its Llama shape, its codebooks."""
    c = llama.config
    params = sum(p.numel() for p in llama.parameters())
    return (
        f"{model}: {params / 1e6:.0f}M-parameter Llama ({c.num_hidden_layers} layers x "
        f"{c.hidden_size}, {c.num_attention_heads} heads, {c.num_key_value_heads} KV), "
        f"window {config.context_tokens}, K = {config.units_per_frame} codebook(s) of "
        f"{config.n_units}, {dtype}"
    )


@dataclass
class CodecRow:
    """Milliseconds per tick for `sessions` calls: encode p50, decode p50, both p99; batched
    is None for a codec without a batch path."""

    sessions: int
    batched: tuple[float, float, float] | None
    alone: tuple[float, float, float]


_Coder = Callable[[dict[int, np.ndarray]], object]  # every call's input -> its output


def _each(coders: list[Callable[[np.ndarray], object]]) -> _Coder:
    """One call at a time, each call with its own coder."""
    return lambda inputs: [coders[c](x) for c, x in inputs.items()]


def run_codec_bench(
    codec: SpeechCodec, chunk_frames: int, sessions: list[int], ticks: int
) -> list[CodecRow]:
    """Per tick and call, a chunk of noise encoded and a chunk of random codes decoded: every
    call's in one batched call (when the codec has a batch path), then one call at a time,
    each call with its own streaming state (as the server keeps them). The first tick (fresh
    state, another path) is not timed."""
    rng = np.random.default_rng(0)
    samples = chunk_frames * codec.frame_samples
    shape = (chunk_frames, codec.units_per_frame)

    def timed(n: int, encode: _Coder, decode: _Coder) -> tuple[float, float, float]:
        enc: list[float] = []
        dec: list[float] = []
        for _ in range(ticks + 1):
            pcm = {c: rng.normal(0, 0.1, samples).astype(np.float32) for c in range(n)}
            units = {c: rng.integers(0, codec.vocab_size, shape) for c in range(n)}
            t0 = time.perf_counter()
            encode(pcm)
            t1 = time.perf_counter()
            decode(units)
            enc.append(t1 - t0)
            dec.append(time.perf_counter() - t1)
        both = [a + b for a, b in zip(enc[1:], dec[1:], strict=True)]
        return _p(enc[1:], 0.5), _p(dec[1:], 0.5), _p(both, 0.99)

    rows = []
    for n in sessions:
        encoders, decoders = encoder_batch(codec), decoder_batch(codec)
        batched = None
        if encoders is not None and decoders is not None:
            for c in range(n):
                encoders.add(c)
                decoders.add(c)
            batched = timed(n, encoders.encode, decoders.decode)
        alone = timed(
            n,
            _each([codec.new_encoder().encode for _ in range(n)]),
            _each([codec.new_decoder().decode for _ in range(n)]),
        )
        rows.append(CodecRow(n, batched, alone))
        print(_format_codec_row(rows[-1]), flush=True)
    return rows


def _codec_table(
    args: argparse.Namespace, model: Path, config: DuplexConfig, sessions: list[int]
) -> tuple[str, list[CodecRow]]:
    codec = load_codec(config.codec, model, args.device)
    label = (
        f"{model}: codec {codec.name}, {config.chunk_ms:g} ms ticks "
        f"({config.chunk_format().frames_per_chunk} frames)"
    )
    print(label)
    heads = ("sessions", "b-enc50", "b-dec50", "b-both99", "enc50", "dec50", "both99")
    print(" ".join(f"{h:>8}" for h in heads))
    rows = run_codec_bench(codec, config.chunk_format().frames_per_chunk, sessions, args.ticks)
    for r in rows:
        if r.batched:
            alone, batched = r.alone[0] + r.alone[1], r.batched[0] + r.batched[1]
            print(f"{r.sessions} call(s): encode + decode {batched:.1f} ms a tick batched, "
                  f"{alone:.1f} ms one call at a time ({alone / batched:.1f}x)")  # fmt: skip
    return label, rows


def _codec_cells(r: CodecRow) -> list[str]:
    batched = ["-"] * 3 if r.batched is None else [f"{v:.1f}" for v in r.batched]
    return [str(r.sessions), *batched, *(f"{v:.1f}" for v in r.alone)]


def _format_codec_row(r: CodecRow) -> str:
    return " ".join(f"{c:>8}" for c in _codec_cells(r))


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def _write_markdown(
    path: Path,
    tables: list[tuple[str, list[Any]]],
    contexts: list[int],
    setups: list[str],
    device: str,
) -> None:
    """Append this run's tables (one per checkpoint), with the command that made them."""
    command = "duplex bench " + " ".join(sys.argv[2:])
    lines = [
        f"\n### `{command}`\n",
        f"torch {torch.__version__} on {_device_name(device)}, "
        f"{torch.get_num_threads()} thread(s), "
        f"{time.strftime('%Y-%m-%d')}; milliseconds per tick (p50 / p99)\n",
    ]
    for label, rows in tables:
        if len(tables) > 1:
            lines.append(f"{label}\n")
        if rows and isinstance(rows[0], CodecRow):
            lines += [
                "| calls | batched encode p50 | batched decode p50 | batched both p99 "
                "| alone encode p50 | alone decode p50 | alone both p99 |",
                "|---:|---:|---:|---:|---:|---:|---:|",
                *("| " + " | ".join(_codec_cells(r)) + " |" for r in rows),
                "",
            ]
        else:
            lines += _model_markdown(rows, contexts, setups)
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")


def _model_markdown(rows: list[Row], contexts: list[int], setups: list[str]) -> list[str]:
    heads = "".join(f" {SETUPS[s]} p50 | {SETUPS[s]} p99 |" for s in setups)
    heads = heads.replace("per-session loop", "loop")
    lines = [f"| sessions | context |{heads}", "|---:|---:|" + "---:|---:|" * len(setups)]
    for r in rows:
        cells = [f"{r.sessions}", f"{r.context}"]
        for setup in setups:
            for q in ("p50", "p99"):
                value = getattr(r, f"{setup}_{q}_ms")
                cells.append("-" if value is None else f"{value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for context in contexts:
        held = ", ".join(f"{SETUPS[s]} {sustained(rows, context, TICK_MS, s)}" for s in setups[1:])
        b = sustained(rows, context, TICK_MS, "batched")
        lines.append(f"- context {context}: batched sustains {b} sessions, {held}")
    lines.append("")
    return lines
