"""The `duplex` command: `serve` here, every other command from its own package.

Each top-level package registers its commands through the `duplex.commands` entry points
(pyproject.toml): clients/cli.py (call, loadtest, eval, selfplay), model/cli.py (model init,
data synth, train, bench), streaming/cli.py (codec build). The server imports none of them.
Subcommands import their modules lazily, so `duplex call` never loads torch. Every failure the
user can cause ends with a non-zero exit and one readable line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points, version
from pathlib import Path
from typing import NoReturn

PROG = "duplex"
COMMANDS = "duplex.commands"  # entry-point group: one `register(subparsers)` per package
COMMAND_ORDER = ("clients", "model", "streaming")  # the order `duplex --help` lists them in


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


class _OneLineParser(argparse.ArgumentParser):
    """A usage error is one line, like every other error of the command (the usage itself is
    in --help). Subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from server.settings import add_settings_arguments

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
    found = {ep.name: ep for ep in entry_points(group=COMMANDS)}
    for name in sorted(
        found, key=lambda n: (COMMAND_ORDER.index(n) if n in COMMAND_ORDER else 99, n)
    ):
        found[name].load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
