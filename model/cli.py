"""The model's commands: `duplex model init`, `data synth`, `train`, `bench`.

Each imports its modules when it runs, so building the `duplex` parser loads no torch.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _fail(command: str, message: str, code: int = 2) -> int:
    """One readable line on stderr and a non-zero exit (2: usage, 1: the work failed)."""
    print(f"duplex {command}: error: {message}", file=sys.stderr)
    return code


def _model_init(args: argparse.Namespace) -> int:
    from model.checkpoint import codec_dir_ref, init_random_checkpoint

    out = Path(args.out)
    if (out / "duplex.json").exists() and not args.force:
        return _fail("model init", f"{out} already holds a checkpoint (use --force to replace)")
    if args.layers < 1:
        return _fail("model init", f"--layers must be >= 1, got {args.layers}")
    if args.heads < 1 or args.kv_heads < 1 or args.heads % args.kv_heads:
        return _fail(
            "model init",
            f"--heads must be a positive multiple of --kv-heads, got {args.heads} and "
            f"{args.kv_heads}",
        )
    step = 2 * args.heads  # every head's width even (rotary positions pair its dimensions)
    if args.hidden < step or args.hidden % step:
        return _fail(
            "model init",
            f"--hidden must be a positive multiple of {step} ({args.heads} heads), "
            f"got {args.hidden}",
        )
    if args.intermediate is not None and args.intermediate < 1:
        return _fail("model init", f"--intermediate must be >= 1, got {args.intermediate}")
    if args.units_per_frame < 1:
        return _fail("model init", f"--units-per-frame must be >= 1, got {args.units_per_frame}")
    spec = None
    if args.codec == "mimi":
        if args.codec_dir is None:
            return _fail("model init", "--codec mimi needs --codec-dir (a local Mimi directory)")
        if args.units_per_frame != 1:
            return _fail("model init", "with --codec mimi, --codebooks sets the units per frame")
        from streaming.codecs.mimi import DEFAULT_CODEBOOKS

        books = DEFAULT_CODEBOOKS if args.codebooks is None else args.codebooks
        spec = {"type": "mimi", "dir": codec_dir_ref(Path(args.codec_dir), out), "codebooks": books}
    elif args.codec_dir is not None or args.codebooks is not None:
        return _fail("model init", "--codec-dir and --codebooks are for --codec mimi")
    if args.context < 2 or not 0 <= args.sink <= args.context // 2:
        return _fail(
            "model init",
            f"need --context >= 2 and 0 <= --sink <= context/2, got {args.context} and {args.sink}",
        )
    try:
        config = init_random_checkpoint(
            out,
            seed=args.seed,
            layers=args.layers,
            hidden=args.hidden,
            heads=args.heads,
            kv_heads=args.kv_heads,
            intermediate=args.intermediate,
            context_tokens=args.context,
            sink_tokens=args.sink,
            units_per_frame=args.units_per_frame,
            codec_spec=spec,
        )
    except ValueError as exc:  # the codec named cannot be loaded
        return _fail("model init", str(exc), 1)
    except OSError as exc:
        return _fail("model init", f"cannot write {out}: {exc}", 1)
    print(f"wrote {out}: {config.description}")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from subprocess import SubprocessError

    from model.checkpoint import CheckpointError, read_config
    from model.device import torch_device
    from model.training.synth import synth

    if args.dialogues is not None and args.dialogues < 2:
        return _fail("data synth", f"--dialogues must be >= 2, got {args.dialogues}")
    checkpoint = Path(args.checkpoint)
    try:
        torch_device(args.device)  # one line now for a GPU that is not there
        stats = synth(
            Path(args.out),
            read_config(checkpoint),
            checkpoint,
            n_dialogues=args.dialogues,
            seed=args.seed,
            wav=args.wav,
            renditions=args.renditions,
            device=args.device,
        )
    except (CheckpointError, OSError, ValueError, RuntimeError, SubprocessError) as exc:
        return _fail("data synth", str(exc), 1)
    print(" ".join(f"{k}={v}" for k, v in asdict(stats).items()))
    return 0


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from model.checkpoint import CheckpointError
    from model.training.train import PRESETS, STATE, describe, train
    from streaming.dependencies import require_tools

    require_tools("matplotlib")  # its loss plots: fail now, not at the first checkpoint
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        return _fail("train", f"no data directory {data}: run `duplex data synth --out {data}`")
    if (out / STATE).exists() and not args.resume:
        return _fail("train", f"{out} holds a training run: add --resume, or pick another --out")
    if args.minutes is not None and not 0 < args.minutes < math.inf:
        return _fail("train", f"--minutes must be > 0, got {args.minutes}")
    if args.layers is not None and args.layers < 1:
        return _fail("train", f"--layers must be >= 1, got {args.layers}")
    overrides = {k: v for k, v in (("steps", args.steps), ("minutes", args.minutes),
                                   ("seed", args.seed), ("device", args.device),
                                   ("layers", args.layers))
                 if v is not None}  # fmt: skip
    if args.threads is not None:
        if args.threads < 1:
            return _fail("train", f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    try:
        cfg = replace(PRESETS[args.preset], **overrides)
        record = train(cfg, data, out, checkpoint=Path(args.checkpoint), resume=args.resume)
    except (CheckpointError, OSError, ValueError, RuntimeError) as exc:
        return _fail("train", str(exc), 1)
    print(describe(record))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from model.bench import run

    return run(args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model's commands to the `duplex` command line."""
    model = sub.add_parser("model", help="checkpoints").add_subparsers(dest="action", required=True)
    init = model.add_parser("init", help="write a seeded random-weight checkpoint (it babbles)")
    init.add_argument("--out", default="models/default", help="checkpoint directory to write")
    init.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    init.add_argument("--layers", type=int, default=4, help="decoder layers")
    init.add_argument("--hidden", type=int, default=256, help="model width")
    init.add_argument(
        "--intermediate", type=int, help="the MLP's width (3x --hidden; Llama-3-8B: 14336)"
    )
    init.add_argument("--heads", type=int, default=4, help="attention heads")
    init.add_argument(
        "--kv-heads", type=int, default=1,
        help="key/value heads (default 1: multi-query, the cheapest KV reads on a CPU)",
    )  # fmt: skip
    init.add_argument("--context", type=int, default=2048, help="KV capacity per session")
    init.add_argument("--sink", type=int, default=64, help="opening positions kept for good")
    init.add_argument(
        "--units-per-frame", type=int, default=1,
        help="codebooks per frame (K): the vocabulary holds K codebooks of units (default 1)",
    )  # fmt: skip
    init.add_argument(
        "--codec", choices=["codec2-units", "mimi"], default="codec2-units",
        help="the codec it speaks (default: the offline Codec2 units; docs/models.md)",
    )  # fmt: skip
    init.add_argument(
        "--codec-dir",
        help="--codec mimi: a local Mimi directory in Hugging Face format (never downloaded)",
    )
    init.add_argument(
        "--codebooks", type=int,
        help="--codec mimi: how many of its codebooks a frame holds (default 8)",
    )  # fmt: skip
    init.add_argument("--force", action="store_true", help="replace an existing --out")
    init.set_defaults(func=_model_init)

    data = sub.add_parser("data", help="training data").add_subparsers(dest="action", required=True)
    synth = data.add_parser("synth", help="spoken two-channel dialogues in the chunk format")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--dialogues", type=int, help="how many (default: the whole corpus)")
    synth.add_argument("--seed", type=int, default=0, help="voices, timing and order")
    synth.add_argument(
        "--renditions",
        type=int,
        default=1,
        help="render each dialogue this many times (other voices, timing, roles; default 1)",
    )
    synth.add_argument(
        "--checkpoint", default="models/default", help="its duplex.json: codec, chunk format"
    )
    synth.add_argument("--wav", action="store_true", help="also write stereo wavs")
    synth.add_argument(
        "--device", default="cpu", help="where a neural codec (Mimi) encodes: cpu, cuda, cuda:1"
    )
    synth.set_defaults(func=_data_synth)

    tr = sub.add_parser("train", help="train a Llama decoder on `data synth` output")
    tr.add_argument("--data", required=True, help="`duplex data synth` output directory")
    tr.add_argument("--out", required=True, help="checkpoint directory to write")
    tr.add_argument(
        "--preset", choices=["cpu-default", "gpu"], default="cpu-default",
        help="model size and schedule (docs/training.md)",
    )  # fmt: skip
    tr.add_argument("--steps", type=int, help="schedule length (default: the preset's)")
    tr.add_argument("--minutes", type=float, help="stop after this long; --resume carries on")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    tr.add_argument("--seed", type=int, help="init and batch order (default: the preset's)")
    tr.add_argument("--layers", type=int, help="decoder layers (default: the preset's)")
    tr.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    tr.add_argument("--device", help="torch device: cpu, cuda, cuda:1 (default: the preset's)")
    tr.add_argument(
        "--checkpoint", default="models/default", help="its duplex.json: codec, chunk format"
    )
    tr.set_defaults(func=_train)

    bench = sub.add_parser("bench", help="tick cost: batched engine vs per-session loop")
    bench.add_argument(
        "--model", default="models/default",
        help="checkpoint directory, or several comma-separated: one table each",
    )  # fmt: skip
    bench.add_argument(
        "--codec", action="store_true",
        help="time the checkpoint's codec instead (per tick: batched vs one call at a time)",
    )  # fmt: skip
    bench.add_argument("--sessions", default="1,4,8,16,32,64", help="comma-separated")
    bench.add_argument("--contexts", default="500,1000,2000,4000,8000", help="tokens")
    bench.add_argument("--ticks", type=int, default=8, help="measured ticks per cell")
    bench.add_argument("--threads", type=int, default=1, help="torch threads")
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    bench.add_argument(
        "--engine", default="torch",
        help="comma-separated engines to time besides the per-session loop: torch, vllm",
    )  # fmt: skip
    bench.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="weights and KV cache dtype",
    )  # fmt: skip
    bench.add_argument(
        "--loop-limit-s", type=float, default=1.0,
        help="stop growing the per-session loop once its median tick exceeds this (0: no loop)",
    )  # fmt: skip
    bench.add_argument(
        "--estimate-units", type=int, default=0,
        help="most frames sampled per estimated user chunk (the server's setting; default 0)",
    )  # fmt: skip
    bench.add_argument("--markdown", help="append the table and the command to this file")
    bench.set_defaults(func=_bench)
