"""The `duplex` command: serve, call, codec build, model init, data synth, train.

Subcommands import their modules lazily, so `duplex call` never loads torch. Every failure
the user can cause ends with a non-zero exit and one readable line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

PROG = "duplex"


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return code


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from server.settings import describe_error, settings_from_args

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        return _fail("serve", describe_error(exc))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from model.checkpoint import CheckpointError

    if not (settings.model / "duplex.json").is_file() and settings.model == Path("models/default"):
        return _fail(
            "serve",
            f"no model at {settings.model}: the trained default is part of the repository "
            f"(`git checkout -- {settings.model}`), or write a random-weight one with "
            f"`duplex model init --out {settings.model}`",
        )
    from server.uvicorn_server import check_startup, serve

    try:
        sock = check_startup(settings)
    except ValueError as exc:
        return _fail("serve", str(exc))
    with sock:  # closed on every way out, an error during the model load included
        try:
            from server.runtime import Runtime

            runtime = Runtime(settings)
        except (CheckpointError, ValueError, OSError) as exc:
            return _fail("serve", str(exc))
        return serve(runtime, sock)


def _model_init(args: argparse.Namespace) -> int:
    from model.checkpoint import init_random_checkpoint

    out = Path(args.out)
    if (out / "duplex.json").exists() and not args.force:
        return _fail("model init", f"{out} already holds a checkpoint (use --force to replace)")
    if args.layers < 1:
        return _fail("model init", f"--layers must be >= 1, got {args.layers}")
    if args.hidden < 8 or args.hidden % 8:
        return _fail(
            "model init", f"--hidden must be a positive multiple of 8 (4 heads), got {args.hidden}"
        )
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
            context_tokens=args.context,
            sink_tokens=args.sink,
        )
    except OSError as exc:
        return _fail("model init", f"cannot write {out}: {exc}", 1)
    print(f"wrote {out}: {config.description}")
    return 0


def _codec_build(args: argparse.Namespace) -> int:
    from streaming.codebook import build_codebook

    if args.units < 2:
        return _fail("codec build", f"--units must be >= 2, got {args.units}")
    if args.minutes <= 0:
        return _fail("codec build", f"--minutes must be > 0, got {args.minutes}")
    if not 0 < args.f0_weight < math.inf:
        return _fail("codec build", f"--f0-weight must be > 0, got {args.f0_weight}")
    if Path(args.out).exists() and not args.force:
        return _fail(
            "codec build",
            f"{args.out} exists (the built-in codebook is what every checkpoint's units mean); "
            "pick another --out or add --force",
        )
    try:
        stats = build_codebook(
            Path(args.out),
            n_units=args.units,
            minutes=args.minutes,
            seed=args.seed,
            f0_weight=args.f0_weight,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail("codec build", str(exc), 1)
    print(" ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from subprocess import SubprocessError

    from model.checkpoint import CheckpointError, read_config
    from model.data.synth import synth

    if args.dialogues is not None and args.dialogues < 2:
        return _fail("data synth", f"--dialogues must be >= 2, got {args.dialogues}")
    checkpoint = Path(args.checkpoint)
    try:
        stats = synth(
            Path(args.out),
            read_config(checkpoint),
            checkpoint,
            n_dialogues=args.dialogues,
            seed=args.seed,
            wav=args.wav,
            renditions=args.renditions,
        )
    except (CheckpointError, OSError, ValueError, RuntimeError, SubprocessError) as exc:
        return _fail("data synth", str(exc), 1)
    print(" ".join(f"{k}={v}" for k, v in asdict(stats).items()))
    return 0


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from model.checkpoint import CheckpointError
    from model.train import PRESETS, STATE, describe, train

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


class _OneLineParser(argparse.ArgumentParser):
    """A usage error is one line, like every other error of the command (the usage itself is
    in --help). Subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from clients import call, evaluation, loadtest, selfplay
    from server.settings import Settings, add_settings_arguments

    parser = _OneLineParser(prog=PROG, description="full-duplex voice agent server")
    parser.add_argument("--version", action="version", version=f"{PROG} {version('duplex')}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="start the server",
        description="Start the server. Every flag is also a DUPLEX_* environment variable "
        "(a flag wins); docs/configuration.md says what each does.",
    )
    add_settings_arguments(serve)
    serve.set_defaults(func=_serve)

    call_p = sub.add_parser(
        "call",
        help="stream an audio file through a call; save the reply",
        description="Stream an audio file through one call in real time and save the agent's "
        "audio, time-aligned with it.",
    )
    call.add_arguments(call_p)
    call_p.set_defaults(func=call.run)
    lt = sub.add_parser("loadtest", help="many simulated callers; latency, jitter, SLO gate")
    loadtest.add_arguments(lt)
    lt.set_defaults(func=loadtest.run)
    ev = sub.add_parser("eval", help="full-duplex behaviour: turn-taking, pauses, interruptions")
    evaluation.add_arguments(ev)
    ev.set_defaults(func=evaluation.run)
    sp = sub.add_parser("selfplay", help="two agents converse through the server; turn statistics")
    selfplay.add_arguments(sp)
    sp.set_defaults(func=selfplay.run)

    model = sub.add_parser("model", help="checkpoints").add_subparsers(dest="action", required=True)
    init = model.add_parser("init", help="write a seeded random-weight checkpoint (it babbles)")
    init.add_argument("--out", default="models/default", help="checkpoint directory to write")
    init.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    init.add_argument("--layers", type=int, default=4, help="decoder layers")
    init.add_argument("--hidden", type=int, default=256, help="model width")
    init.add_argument("--context", type=int, default=2048, help="KV capacity per session")
    init.add_argument("--sink", type=int, default=64, help="opening positions kept for good")
    init.add_argument("--force", action="store_true", help="replace an existing --out")
    init.set_defaults(func=_model_init)

    codec = sub.add_parser("codec", help="speech codec").add_subparsers(
        dest="action", required=True
    )
    build = codec.add_parser("build", help="build the unit codebook from espeak-ng speech")
    build.add_argument(
        "--out", default="streaming/assets/codec2_units_1024.npz", help="codebook file to write"
    )
    build.add_argument("--units", type=int, default=1024, help="codebook size")
    build.add_argument("--minutes", type=float, default=48.0, help="speech to cluster")
    build.add_argument("--seed", type=int, default=0, help="voices, texts and k-means seed")
    build.add_argument(
        "--f0-weight", type=float, default=1.0,
        help="how much log-F0 counts in the clustering (finer intonation, coarser spectra)",
    )  # fmt: skip
    build.add_argument("--force", action="store_true", help="replace an existing --out")
    build.set_defaults(func=_codec_build)

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
    bench.add_argument("--model", default="models/default", help="checkpoint directory")
    bench.add_argument("--sessions", default="1,4,8,16,32,64", help="comma-separated")
    bench.add_argument("--contexts", default="500,1000,2000,4000,8000", help="tokens")
    bench.add_argument("--ticks", type=int, default=8, help="measured ticks per cell")
    bench.add_argument("--threads", type=int, default=1, help="torch threads")
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    bench.add_argument(
        "--loop-limit-s", type=float, default=1.0,
        help="stop growing the per-session loop once its median tick exceeds this",
    )  # fmt: skip
    bench.add_argument(
        "--estimate-units", type=int, default=Settings.model_fields["estimate_units"].default,
        help="most units sampled per estimated user chunk (the server's setting)",
    )  # fmt: skip
    bench.add_argument("--markdown", help="append the table and the command to this file")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
