"""The client commands: `duplex call`, `loadtest`, `soak`, `fuzz`, `eval`, `selfplay`.

Registered with the `duplex` command through the `duplex.commands` entry points; none of them
loads torch.
"""

from __future__ import annotations

import argparse

from clients import call
from clients.measure import evaluation, fuzz, loadtest, selfplay, soak


def register(sub: argparse._SubParsersAction) -> None:
    """Add the client commands to the `duplex` command line."""
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
    sk = sub.add_parser("soak", help="hold capacity for minutes, calls churning; fail on growth")
    soak.add_arguments(sk)
    sk.set_defaults(func=soak.run)
    fz = sub.add_parser("fuzz", help="hostile messages on every endpoint; the server must hold")
    fuzz.add_arguments(fz)
    fz.set_defaults(func=fuzz.run)
    ev = sub.add_parser("eval", help="full-duplex behaviour: turn-taking, pauses, interruptions")
    evaluation.add_arguments(ev)
    ev.set_defaults(func=evaluation.run)
    sp = sub.add_parser("selfplay", help="two agents converse through the server; turn statistics")
    selfplay.add_arguments(sp)
    sp.set_defaults(func=selfplay.run)
