"""Several replicas behind a real load balancer (deploy/, docs/deploy.md).

Two `duplex serve` replicas of two call slots each run behind HAProxy with the configuration
as shipped (deploy/haproxy/haproxy.cfg), all on loopback: new calls go where there is a free
slot, `server_full` comes only when every replica is full, a draining replica gets no new
calls, and a replica that stops ends its own calls cleanly while the other's go on. The
Kubernetes manifests are checked for what they must agree on with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from clients.call import CallResult, run_call
from clients.client import DuplexClient, DuplexError
from server.settings import Settings
from tests.conftest import ROOT, ServerProcess, free_port, read_wav, start_server, stop_server

pytestmark = pytest.mark.replicas  # make test-replicas: CI runs it after the default suite

HAPROXY = shutil.which("haproxy")
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
K8S = ROOT / "deploy" / "k8s"
SLOTS = 2  # call slots per replica
GRACE_S = 2.0  # each replica's --shutdown-grace-s


# -- the balancer -----------------------------------------------------------------------------


@dataclass
class Balancer:
    """A haproxy process running deploy/haproxy/haproxy.cfg."""

    url: str  # ws://.../v1/duplex through the balancer
    stats: str  # its stats page, as CSV
    proc: subprocess.Popen[bytes]
    log: Path

    async def states(self) -> dict[str, tuple[str, str]]:
        """Each replica as HAProxy sees it: {"replicas/r1": (status, last check), ...}."""
        async with httpx.AsyncClient() as http:
            r = await http.get(self.stats, timeout=2)
        r.raise_for_status()
        rows = csv.DictReader(io.StringIO(r.text.removeprefix("# ")))
        return {
            f"{row['pxname']}/{row['svname']}": (row["status"], row["check_status"])
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    async def until(
        self, server: str, status: str, check: str | None = None, within_s: float = 5.0
    ) -> None:
        """Wait until HAProxy has `server` ("replicas/r1") in `status` (and its last check
        ended `check`)."""
        states: dict[str, tuple[str, str]] = {}

        async def seen() -> bool:
            nonlocal states
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                states = await self.states()
            now, last = states.get(server, ("", ""))
            return now == status and check in (None, last)

        await until(seen, within_s, lambda: f"{server} never {status}: {states}")


def start_balancer(haproxy: str, replicas: list[ServerProcess], log: Path) -> Balancer:
    port, stats_port = free_port(), free_port()
    env = {
        **os.environ,
        "DUPLEX_LB_BIND": f"127.0.0.1:{port}",
        "DUPLEX_LB_STATS": f"127.0.0.1:{stats_port}",
        **{
            f"DUPLEX_REPLICA_{i}": r.http.removeprefix("http://") for i, r in enumerate(replicas, 1)
        },
    }
    with log.open("wb") as out:  # -db: in the foreground, as a test's child
        proc = subprocess.Popen([haproxy, "-db", "-f", str(CONFIG)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    return Balancer(
        f"ws://127.0.0.1:{port}/v1/duplex", f"http://127.0.0.1:{stats_port}/stats;csv", proc, log
    )


async def until(
    condition: Callable[[], Awaitable[bool]], within_s: float, why: Callable[[], str]
) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(why())
        await asyncio.sleep(0.05)


async def live(replicas: list[ServerProcess]) -> list[int]:
    """Open calls on each replica, as its /v1/capacity says (its body, whatever the status)."""
    async with httpx.AsyncClient() as http:
        bodies = [(await http.get(f"{r.http}/v1/capacity", timeout=2)).json() for r in replicas]
    return [int(b["live"]) for b in bodies]


async def live_becomes(replicas: list[ServerProcess], want: list[int]) -> None:
    seen: list[int] = []

    async def there() -> bool:
        nonlocal seen
        seen = await live(replicas)
        return seen == want

    await until(there, 5.0, lambda: f"live calls per replica {seen}, expected {want}")


# -- the cluster ------------------------------------------------------------------------------


@dataclass
class Cluster:
    replicas: list[ServerProcess]  # r1, r2 in the configuration
    lb: Balancer
    pcm: np.ndarray  # espeak-ng speech, float32 mono
    rate: int

    def audio(self, seconds: float) -> np.ndarray:
        """`seconds` of speech (looped)."""
        n = int(seconds * self.rate)
        return np.resize(self.pcm, n).astype(np.float32)

    async def call(self, url: str, seconds: float) -> CallResult:
        """A real-time call of `seconds`; one that hangs fails the test instead."""
        return await asyncio.wait_for(run_call(url, self.audio(seconds), self.rate), seconds + 5)


@pytest.fixture(scope="module")
def haproxy() -> str:
    """The haproxy binary; asked for first, so that without it nothing else is built."""
    if HAPROXY is None:
        pytest.skip(
            "the haproxy binary is missing (Debian: apt-get install haproxy; make apt-test)"
        )
    return HAPROXY


@pytest.fixture(scope="module")
def cluster(
    haproxy: str, checkpoint: Path, speech_wav: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("deploy")
    args = ("--max-sessions", str(SLOTS), "--shutdown-grace-s", str(GRACE_S))
    starts = [partial(start_server, checkpoint, logs / f"r{i}.log", *args) for i in (1, 2)]
    with behind_haproxy(haproxy, starts, logs) as (replicas, lb):
        asyncio.run(_checked(lb))
        pcm, rate = read_wav(speech_wav)
        yield Cluster(replicas, lb, pcm, rate)


@contextlib.contextmanager
def behind_haproxy(
    haproxy: str, starts: Sequence[Callable[[], ServerProcess]], logs: Path
) -> Iterator[tuple[list[ServerProcess], Balancer]]:
    """Replicas started at once (their warm-ups overlap) behind a haproxy process; all of
    them stopped after, whatever happened."""
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = [pool.submit(start) for start in starts]
    started = [f.result() for f in futures if f.exception() is None]
    try:
        replicas = [f.result() for f in futures]  # raises if one did not start
        lb = start_balancer(haproxy, replicas, logs / "haproxy.log")
        try:
            yield replicas, lb
        finally:
            lb.proc.terminate()
            lb.proc.wait(10)
    finally:
        for r in started:
            stop_server(r)


async def _checked(lb: Balancer) -> None:
    """Every replica UP after a real check (L7OK), not in HAProxy's initial state (INI)."""
    for name in ("replicas/r1", "replicas/r2", "overflow/r1", "overflow/r2"):
        await lb.until(name, "UP", check="L7OK", within_s=10)


def full_length(result: CallResult) -> bool:
    return len(result.output) == result.samples_sent > 0 and result.stats.ticks > 0


# -- routing ------------------------------------------------------------------------------------


def test_new_calls_go_where_a_slot_is_free_and_server_full_only_when_none_is(
    cluster: Cluster,
) -> None:
    """r1 is filled by calls straight to it, which HAProxy does not count: leastconn alone
    would send it the next call, so only the capacity check keeps both balanced calls off it.
    With every replica full the next call is refused by a replica, in the protocol's words."""
    r1, r2 = cluster.replicas
    lb = cluster.lb

    async def main() -> tuple[list[CallResult], DuplexError, float]:
        direct = [asyncio.create_task(cluster.call(r1.url, 4.0)) for _ in range(SLOTS)]
        await live_becomes(cluster.replicas, [SLOTS, 0])
        await lb.until("replicas/r1", "DOWN")  # full: no new calls
        balanced = [asyncio.create_task(cluster.call(lb.url, 2.0)) for _ in range(SLOTS)]
        await live_becomes(cluster.replicas, [SLOTS, SLOTS])
        await lb.until("replicas/r2", "DOWN")
        t0 = time.monotonic()
        with pytest.raises(DuplexError) as refused:
            async with DuplexClient.connect(lb.url):
                pass
        refused_after = time.monotonic() - t0
        return await asyncio.gather(*direct, *balanced), refused.value, refused_after

    results, refused, refused_after = asyncio.run(main())
    assert (refused.code, refused.close_code) == ("server_full", 1013)
    assert refused_after < 1.0
    assert all(full_length(r) for r in results)

    async def free_again() -> None:  # the slots come back, and the replicas with them
        await live_becomes(cluster.replicas, [0, 0])
        await lb.until("replicas/r1", "UP")
        await lb.until("replicas/r2", "UP")

    asyncio.run(free_again())


# -- a replica that drains, then one that dies ------------------------------------------------


@dataclass
class Outage:
    """What everyone saw: two calls spread over the replicas; SIGTERM to the first call's
    replica (P) and a call placed while it drains; then SIGKILL to the other (Q)."""

    spread: list[int] = field(default_factory=list)  # live calls per replica, two calls open
    drained_down_while_running: bool = False  # HAProxy had P DOWN while P still ran
    third_on_other: int = 0  # live calls on Q once a third call was placed during the drain
    on_drained: BaseException | CallResult | None = None  # P's call
    on_drained_ended_after_s: float = 0.0  # since SIGTERM
    drained_exit: int | None = None
    on_other: BaseException | CallResult | None = None  # Q's call while P drained
    on_killed: BaseException | CallResult | None = None  # Q's call when SIGKILL came
    on_killed_ended_after_s: float = 0.0  # since SIGKILL
    after_all: BaseException | CallResult | None = None  # a call with no replica left


@pytest.fixture(scope="module")
def outage(cluster: Cluster) -> Outage:
    return asyncio.run(_outage(cluster))


async def _outage(cluster: Cluster) -> Outage:
    run, lb, replicas = Outage(), cluster.lb, cluster.replicas
    await live_becomes(replicas, [0, 0])
    first = asyncio.create_task(cluster.call(lb.url, 6.0))
    await until(lambda: _total(replicas, 1), 5.0, lambda: "the first call never opened")
    p = (await live(replicas)).index(1)
    q = 1 - p
    second = asyncio.create_task(cluster.call(lb.url, 3.0))
    await until(lambda: _total(replicas, 2), 5.0, lambda: "the second call never opened")
    run.spread = await live(replicas)

    t_term = time.monotonic()
    replicas[p].proc.send_signal(signal.SIGTERM)
    await lb.until(f"replicas/r{p + 1}", "DOWN", within_s=GRACE_S)
    run.drained_down_while_running = replicas[p].proc.poll() is None
    third = asyncio.create_task(cluster.call(lb.url, 5.0))

    async def placed() -> bool:  # open on Q, or refused (by P, if it went there)
        return third.done() or await _total([replicas[q]], 2)

    await until(placed, 5.0, lambda: "the third call neither opened nor failed")
    run.third_on_other = (await live([replicas[q]]))[0]
    run.on_drained = await _outcome(first)
    run.on_drained_ended_after_s = time.monotonic() - t_term
    run.drained_exit = await asyncio.to_thread(replicas[p].proc.wait, 10)
    run.on_other = await _outcome(second)  # ends on its own, at full length

    await asyncio.sleep(0.5)  # the third call is mid-call on Q
    t_kill = time.monotonic()
    replicas[q].proc.kill()
    run.on_killed = await _outcome(third)
    run.on_killed_ended_after_s = time.monotonic() - t_kill
    await lb.until(f"overflow/r{q + 1}", "DOWN")
    run.after_all = await _outcome(asyncio.create_task(cluster.call(lb.url, 1.0)))
    return run


async def _total(replicas: list[ServerProcess], n: int) -> bool:
    return sum(await live(replicas)) == n


async def _outcome(task: asyncio.Task[CallResult]) -> BaseException | CallResult:
    try:
        return await task
    except Exception as exc:  # noqa: BLE001 - the outcome is what the tests look at
        return exc


def test_calls_spread_over_the_replicas(outage: Outage) -> None:
    assert outage.spread == [1, 1]


def test_a_draining_replica_gets_no_new_calls_and_ends_its_own_with_1012(
    outage: Outage,
) -> None:
    assert outage.drained_down_while_running
    assert outage.third_on_other == 2  # with the second call: the third went to Q
    err = outage.on_drained
    assert isinstance(err, DuplexError), err
    assert (err.code, err.close_code) == ("server_shutdown", 1012)
    assert outage.on_drained_ended_after_s < GRACE_S + 1.5
    assert outage.drained_exit == 0


def test_the_other_replicas_call_goes_on_to_full_length(outage: Outage) -> None:
    result = outage.on_other
    assert isinstance(result, CallResult), result
    assert full_length(result)


def test_a_killed_replicas_calls_end_at_once(outage: Outage) -> None:
    """SIGKILL: no drain, no close frame from the server; HAProxy closes the client's side."""
    err = outage.on_killed
    assert isinstance(err, DuplexError), err
    assert (err.code, err.close_code) == ("connection_closed", 1006)
    assert outage.on_killed_ended_after_s < 2.0


def test_with_every_replica_gone_a_call_is_not_told_server_full(outage: Outage) -> None:
    """`server_full` says "retry later, here"; no replica at all is HAProxy's own 503."""
    gone = outage.after_all
    assert isinstance(gone, DuplexError) and gone.code == "connect_failed", gone
    assert "HTTP 503" in gone.message


# -- Kubernetes -----------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    """Every object in deploy/k8s/, by kind (each parses as YAML)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


UVICORN_SHUTDOWN_S = 5  # server/uvicorn_server.py: timeout_graceful_shutdown after the drain


def test_kubernetes_manifests_agree_with_the_server() -> None:
    objs = manifests()
    assert set(objs) == {"Deployment", "Service", "PodDisruptionBudget"}
    deploy, service, pdb = objs["Deployment"], objs["Service"], objs["PodDisruptionBudget"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["http"] == Settings.model_fields["port"].default
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/capacity"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"

    # The kubelet's SIGKILL must come after preStop, the drain and uvicorn's shutdown.
    env = {e["name"]: e["value"] for e in container["env"]}
    grace_s = float(env["DUPLEX_SHUTDOWN_GRACE_S"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    needed = float(command[1]) + grace_s + UVICORN_SHUTDOWN_S
    assert needed < pod["terminationGracePeriodSeconds"] <= needed + 15
