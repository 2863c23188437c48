"""The streaming package's command: `duplex codec build`."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _fail(command: str, message: str, code: int = 2) -> int:
    """One readable line on stderr and a non-zero exit (2: usage, 1: the work failed)."""
    print(f"duplex {command}: error: {message}", file=sys.stderr)
    return code


def _codec_build(args: argparse.Namespace) -> int:
    from streaming.codecs.codec2_codebook import build_codebook

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


def register(sub: argparse._SubParsersAction) -> None:
    """Add the codec commands to the `duplex` command line."""
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
