"""A restart that drops no call (issue 24 part 5): SIGTERM moves a replica's live calls to a
peer, and their clients resume there through HAProxy (server/moving.py, docs/deploy.md).

Two real replicas that name each other as peers, behind the shipped HAProxy configuration;
eight real-time calls spread over them; one replica is sent SIGTERM mid-call.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from clients.call import CallResult, run_call
from tests.conftest import ServerProcess, free_port, read_wav, start_server
from tests.test_deploy import HAPROXY, Balancer, behind_haproxy, live

pytestmark = pytest.mark.replicas  # make test-replicas

TICK_MS = 160
CALLS = 8
SECONDS = 7.0
TERM_AT_S = 2.5  # into the calls


@dataclass
class Moved:
    results: list[CallResult | BaseException]
    live_before: list[int]
    exit_code: int | None
    took_s: float  # from SIGTERM to the draining replica's exit


@pytest.fixture(scope="module")
def moved(
    checkpoint: Path, speech_wav: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Moved]:
    if HAPROXY is None:
        pytest.skip("the haproxy binary is missing (Debian: apt-get install haproxy)")
    logs = tmp_path_factory.mktemp("moving")
    ports = [free_port(), free_port()]

    def replica(i: int) -> ServerProcess:
        other = ports[1 - i]
        return start_server(
            checkpoint, logs / f"r{i + 1}.log",
            "--max-sessions", str(CALLS), "--shutdown-grace-s", "4",
            "--replica-name", f"r{i + 1}", "--peers", f"http://127.0.0.1:{other}",
            "--resume-window-s", "10",
            port=ports[i],
        )  # fmt: skip

    with behind_haproxy(HAPROXY, [partial(replica, i) for i in (0, 1)], logs) as (replicas, lb):
        pcm, rate = read_wav(speech_wav)
        yield asyncio.run(_scenario(lb, replicas, np.resize(pcm, int(SECONDS * rate)), rate))


async def _scenario(
    lb: Balancer, replicas: list[ServerProcess], pcm: np.ndarray, rate: int
) -> Moved:
    for name in ("replicas/r1", "replicas/r2"):
        await lb.until(name, "UP", check="L7OK", within_s=10)
    calls = []
    for _ in range(CALLS):
        calls.append(asyncio.create_task(run_call(lb.url, pcm.astype(np.float32), rate)))
        await asyncio.sleep(0.05)
    await asyncio.sleep(TERM_AT_S)
    live_before = await live(replicas)
    t0 = time.monotonic()
    replicas[0].proc.send_signal(signal.SIGTERM)
    results = await asyncio.gather(*calls, return_exceptions=True)
    code = await asyncio.to_thread(replicas[0].proc.wait, 15)
    return Moved(list(results), live_before, code, time.monotonic() - t0)


def test_sigterm_moves_every_call_and_none_is_dropped(moved: Moved) -> None:
    """All eight calls end normally with full-length, time-aligned output; the calls of the
    replica that drained went on at the other one (one resume each), and it exited 0."""
    assert moved.live_before[0] > 0 and moved.live_before[1] > 0, moved.live_before
    errors = [r for r in moved.results if isinstance(r, BaseException)]
    assert not errors, errors
    results = [r for r in moved.results if isinstance(r, CallResult)]
    assert all(len(r.output) == r.samples_sent > 0 for r in results)
    moves = [r for r in results if r.stats.resumes]
    assert len(moves) == moved.live_before[0], [r.stats.resumes for r in results]
    for r in results:  # every agent chunk came, once at least, where it belongs
        seqs = sorted({f.seq for f in r.frames if len(f.pcm)})
        assert seqs == list(range(len(seqs))) and len(seqs) >= r.stats.ticks - 1, seqs
    assert moved.exit_code == 0
    # the caller's audio from the step the call was packed at to its resume: silence
    gaps = [r.stats.resume_silence_samples / r.ready.sample_rate * 1000 for r in moves]
    print(f"caller's silence at the move, ms: {sorted(round(g) for g in gaps)}; "
          f"SIGTERM to exit {moved.took_s:.2f} s")  # fmt: skip
    assert all(0 < g < 2 * TICK_MS for g in gaps), gaps  # one tick (84-130 ms) when measured
