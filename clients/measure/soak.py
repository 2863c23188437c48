"""`duplex soak`: hold a server at capacity for minutes, calls ending and starting, and fail
when it grows.

Each of N callers places short calls back to back (real speech at real-time pace, as
`duplex loadtest` does; the callers' first calls are spread over one call's length so that
calls end and start all the time). Every few seconds the server is sampled: its resident
memory and open file descriptors (from /proc/<pid> with `--server-pid`, else from the
`process_*` metrics of prometheus_client's process collector when /metrics has them), and
from /metrics its ticks, tick compute time, overrun ticks and active calls, and the server's
CPU time; with each sample go the host's load average and its CPUs' busy and stolen time, since
a shared machine moves the overruns (the tick's compute is wall time: it slows with the host;
the server's CPU time per tick is what it did).

Growth, as judged (`judge`):
- memory: the least-squares slope of RSS over the samples after the warm-up while calls still
  start (not while the last ones end), per 10 minutes, above `--max-rss-growth-mb`;
- descriptors: open FDs once the server is idle again above those before the first call, plus
  `--fd-slack`;
- overruns: the share of ticks that overran in the last third of those samples above the
  first third's by more than `--overrun-growth-pct` points;
- and any call that did not complete.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np

from clients.call import InputError, check_url, load_input
from clients.measure.loadtest import (
    DEFAULT_URL,
    CallerRun,
    Live,
    LoadtestConfig,
    caller_audio,
    default_inputs,
    metrics_url,
    place_call,
    scrape_metrics,
)
from clients.measure.loadtest_report import CallerReport
from streaming.resample import resample_whole

__all__ = ["SoakConfig", "SoakReport", "add_arguments", "judge", "main", "run", "run_soak"]

PROG = "duplex soak"
EXIT_USAGE = 2
EXIT_FAILURE = 1
MB = 1024 * 1024
SETTLE_S = 10.0  # after the last call: how long the server may take to let its calls go
SLOPE_WINDOW_S = 600.0  # RSS growth is stated per 10 minutes


@dataclass(frozen=True, slots=True)
class SoakConfig:
    url: str = DEFAULT_URL
    callers: int = 16
    duration_s: float = 600.0  # calls start until a call would end after this
    call_s: float = 20.0
    sample_s: float = 10.0
    # RSS climbs while the first few hundred calls' allocations settle (KV slots, codec state,
    # the allocator's arenas): at 16 calls it was flat from 180-290 s on in every 10-minute
    # run on record (docs/benchmarks.md), so memory growth is judged from 300 s
    warmup_s: float = 300.0
    server_pid: int | None = None
    max_rss_growth_mb: float = 20.0  # per 10 minutes, by the fitted slope
    fd_slack: int = 8
    overrun_growth_pct: float = 1.0
    inputs: tuple[str, ...] = ()
    seed: int | None = None
    api_key: str | None = None

    def call(self) -> LoadtestConfig:
        """What each call is: `duplex loadtest`'s caller, `call_s` long."""
        return LoadtestConfig(
            url=self.url, duration_s=self.call_s, seed=self.seed, api_key=self.api_key
        )


@dataclass(slots=True)
class Sample:
    """The server (and the host) at one instant; `t` in seconds from the first call."""

    t: float
    phase: str  # before (idle), load (calls churning), drain (the last calls end), after (idle)
    rss_mb: float | None
    fds: int | None
    sessions: int
    ticks: int
    tick_sum_s: float
    overrun_ticks: int
    calls_done: int
    load_1m: float
    cpu_s: float | None = None  # the server's CPU time (user + system) so far
    host_busy_s: float | None = None  # this machine's CPUs busy, all processes (/proc/stat)
    host_steal_s: float | None = None  # and taken by the hypervisor for other guests


@dataclass(slots=True)
class SoakReport:
    config: dict[str, Any]
    wall_s: float
    calls: int
    completed: int
    errors: dict[str, int]
    worst_latency_ms_p99: float | None
    figures: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Sampling


def proc_figures(pid: int) -> tuple[float, int, float]:
    """RSS in MB, open file descriptors and CPU seconds of a process on this machine."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:  # utime and stime follow the state, after `(comm)`
        fields = f.read().rpartition(")")[2].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), cpu_s


def host_cpu() -> tuple[float, float] | None:
    """Seconds this machine's CPUs have been busy (all processes) and stolen by the
    hypervisor, from /proc/stat; None off Linux. A busier host or a neighbour's steal slows
    every tick without the server doing more."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = cpu
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _load_1m() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def take_sample(cfg: SoakConfig, t: float, phase: str, calls_done: int) -> Sample:
    """One look at the server: /metrics, then /proc/<pid> where given."""
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    page = scrape_metrics(metrics_url(cfg.url), headers)
    rss_b, fds_m, cpu = page["rss_bytes"], page["open_fds"], page["cpu_s"]
    rss = None if rss_b is None else rss_b / MB
    fds = None if fds_m is None else int(fds_m)
    if cfg.server_pid is not None:
        rss, fds, cpu = proc_figures(cfg.server_pid)
    host = host_cpu()
    return Sample(
        t=round(t, 2),
        phase=phase,
        rss_mb=None if rss is None else round(rss, 2),
        fds=fds,
        sessions=int(page["sessions_active"]),
        ticks=int(page["tick_count"]),
        tick_sum_s=page["tick_sum"],
        overrun_ticks=int(page["overruns"]),
        calls_done=calls_done,
        load_1m=_load_1m(),
        cpu_s=cpu,
        host_busy_s=None if host is None else host[0],
        host_steal_s=None if host is None else host[1],
    )


# ---------------------------------------------------------------------------------------------
# The judgement (a pure function of the samples)


def _share(a: Sample, b: Sample) -> tuple[float | None, float | None, float | None]:
    """Between two samples: the overrun share of ticks (%), the mean tick compute time (ms,
    wall time: it slows with the host) and the server's CPU time per tick (ms, all its
    threads: what the server did, whatever else ran)."""
    ticks = b.ticks - a.ticks
    if ticks <= 0:
        return None, None, None
    cpu = None if a.cpu_s is None or b.cpu_s is None else 1000 * (b.cpu_s - a.cpu_s) / ticks
    return (
        round(100 * (b.overrun_ticks - a.overrun_ticks) / ticks, 2),
        round(1000 * (b.tick_sum_s - a.tick_sum_s) / ticks, 2),
        None if cpu is None else round(cpu, 2),
    )


def _host_pct(a: Sample, b: Sample) -> tuple[float | None, float | None]:
    """This machine's CPUs busy and stolen between two samples, % of all its CPUs."""
    if (
        a.host_busy_s is None
        or b.host_busy_s is None
        or a.host_steal_s is None
        or b.host_steal_s is None
        or b.t <= a.t
    ):
        return None, None
    room = (b.t - a.t) * (os.cpu_count() or 1) / 100
    busy, steal = b.host_busy_s - a.host_busy_s, b.host_steal_s - a.host_steal_s
    return round(busy / room, 1), round(steal / room, 1)


def judge(
    samples: Sequence[Sample], cfg: SoakConfig, errors: dict[str, int]
) -> tuple[dict[str, Any], list[str]]:
    """The run's figures and what failed (one phrase each)."""
    failures: list[str] = []
    load = [s for s in samples if s.phase == "load"]
    steady = [s for s in load if s.t >= cfg.warmup_s]
    before = next((s for s in samples if s.phase == "before"), None)
    after = next((s for s in reversed(samples) if s.phase == "after"), None)
    fig: dict[str, Any] = {
        "samples_after_warmup": len(steady),
        "rss_mb_before": before.rss_mb if before else None,
        "rss_mb_at_warmup": steady[0].rss_mb if steady else None,
        "rss_mb_end_of_load": load[-1].rss_mb if load else None,
        "rss_mb_after": after.rss_mb if after else None,
        "rss_mb_max": max((s.rss_mb for s in samples if s.rss_mb is not None), default=None),
        "rss_growth_mb_per_10min": None,
        "fds_before": before.fds if before else None,
        "fds_max": max((s.fds for s in samples if s.fds is not None), default=None),
        "fds_after": after.fds if after else None,
        "sessions_mean": round(float(np.mean([s.sessions for s in steady])), 2) if steady else None,
        "sessions_min": min((s.sessions for s in steady), default=None),
        "load_1m_mean": round(float(np.mean([s.load_1m for s in load])), 2) if load else None,
        "load_1m_max": max((s.load_1m for s in load), default=None),
    }
    if len(steady) >= 3 and all(s.rss_mb is not None for s in steady):
        t = np.array([s.t for s in steady])
        rss = np.array([s.rss_mb for s in steady], dtype=float)
        slope = float(np.polyfit(t, rss, 1)[0]) * SLOPE_WINDOW_S
        fig["rss_growth_mb_per_10min"] = round(slope, 2)
        if slope > cfg.max_rss_growth_mb:
            failures.append(
                f"RSS grows {slope:.1f} MB per 10 min after warm-up "
                f"(limit {cfg.max_rss_growth_mb:g})"
            )
    else:
        failures.append(f"only {len(steady)} memory samples after the warm-up: need 3")
    if before is None or after is None or before.fds is None or after.fds is None:
        failures.append("no file-descriptor count before and after the run")
    elif after.fds > before.fds + cfg.fd_slack:
        failures.append(
            f"open FDs {after.fds} after the run, {before.fds} before (slack {cfg.fd_slack})"
        )
    if len(steady) >= 4:
        third = len(steady) // 3
        first, first_ms, first_cpu = _share(steady[0], steady[third])
        last, last_ms, last_cpu = _share(steady[-1 - third], steady[-1])
        whole, whole_ms, _ = _share(steady[0], steady[-1])
        busy, steal = _host_pct(steady[0], steady[-1])
        fig.update(
            overrun_pct_first_third=first,
            overrun_pct_last_third=last,
            overrun_pct=whole,
            tick_ms_first_third=first_ms,
            tick_ms_last_third=last_ms,
            tick_ms_mean=whole_ms,
            cpu_ms_per_tick_first_third=first_cpu,
            cpu_ms_per_tick_last_third=last_cpu,
            host_busy_pct=busy,
            host_steal_pct=steal,
            overrun_ticks=steady[-1].overrun_ticks - steady[0].overrun_ticks,
            ticks=steady[-1].ticks - steady[0].ticks,
        )
        if first is not None and last is not None and last > first + cfg.overrun_growth_pct:
            failures.append(
                f"overruns grew from {first:g} % to {last:g} % of ticks "
                f"(limit +{cfg.overrun_growth_pct:g} points)"
            )
    if errors:
        failures.append(
            "calls failed: " + ", ".join(f"{k} x{v}" for k, v in sorted(errors.items()))
        )
    return fig, failures


# ---------------------------------------------------------------------------------------------
# The run


async def _caller(
    i: int,
    cfg: SoakConfig,
    clips: Sequence[np.ndarray],
    t0: float,
    end_at: float,
    done: list[CallerReport],
    live: Live,
) -> None:
    """Calls back to back from t0 + i / callers of a call, while one fits before `end_at`."""
    call = cfg.call()
    start_at = t0 + i * cfg.call_s / cfg.callers
    k = 0
    while start_at + cfg.call_s <= end_at:
        index = i + k * cfg.callers  # every call its own seeds
        audio = caller_audio(clips, call.wire_rate, cfg.call_s, index)
        run = CallerRun(CallerReport(caller=index), audio)
        await place_call(run, call, t0, start_at, live)
        done.append(run.report)
        if run.stats is not None:
            run.report.latency_ms_p99 = run.stats.latency_ms_p99
        k += 1
        # the next call at once; after a failed one, when this one would have ended
        failed = run.report.status != "ok"
        start_at = max(time.monotonic(), start_at + cfg.call_s if failed else 0.0)


async def _sampler(
    cfg: SoakConfig, t0: float, samples: list[Sample], done: list[CallerReport]
) -> None:
    """A sample every `sample_s` until cancelled: `load` while calls still start, then `drain`
    (the last calls end and none follows)."""
    while True:
        await asyncio.sleep(max(0.0, t0 + len(samples) * cfg.sample_s - time.monotonic()))
        t = time.monotonic() - t0
        phase = "load" if t <= cfg.duration_s - cfg.call_s else "drain"
        samples.append(await asyncio.to_thread(take_sample, cfg, t, phase, len(done)))


async def run_soak(cfg: SoakConfig) -> SoakReport:
    """The whole soak; raises InputError when the server's memory cannot be sampled."""
    with tempfile.TemporaryDirectory(prefix="duplex-soak-") as tmp:
        paths = list(cfg.inputs) or [str(p) for p in default_inputs(Path(tmp))]
        clips = [resample_whole(*load_input(p), cfg.call().wire_rate) for p in paths]
    try:
        first = await asyncio.to_thread(take_sample, cfg, 0.0, "before", 0)
    except (URLError, OSError, ValueError) as exc:
        raise InputError(f"cannot sample the server: {exc}") from exc
    if first.rss_mb is None or first.fds is None:
        raise InputError(
            "the server's memory cannot be sampled: give --server-pid (a server on this "
            "machine), or serve /metrics with process_resident_memory_bytes and process_open_fds"
        )
    samples = [first]
    done: list[CallerReport] = []
    live = Live()
    t0 = time.monotonic()
    end_at = t0 + cfg.duration_s
    sampler = asyncio.create_task(_sampler(cfg, t0, samples, done))
    try:
        await asyncio.gather(
            *(_caller(i, cfg, clips, t0, end_at, done, live) for i in range(cfg.callers))
        )
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    wall = time.monotonic() - t0
    samples.append(await _settled(cfg, t0, len(done)))
    errors = dict(Counter(r.status for r in done if r.status != "ok"))
    figures, failures = judge(samples, cfg, errors)
    p99s = [r.latency_ms_p99 for r in done if r.latency_ms_p99 is not None]
    config = asdict(cfg)
    config.pop("api_key")
    return SoakReport(
        config=config,
        wall_s=round(wall, 1),
        calls=len(done),
        completed=sum(r.status == "ok" for r in done),
        errors=errors,
        worst_latency_ms_p99=max(p99s, default=None),
        figures=figures,
        samples=samples,
        failures=failures,
    )


async def _settled(cfg: SoakConfig, t0: float, calls: int) -> Sample:
    """The sample once the server has no call left (or after SETTLE_S)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        s = await asyncio.to_thread(take_sample, cfg, time.monotonic() - t0, "after", calls)
        if s.sessions == 0 or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.2)


def summary(r: SoakReport) -> str:
    f = r.figures
    lines = [
        f"{r.calls} calls ({r.completed} completed) by {r.config['callers']} callers of "
        f"{r.config['call_s']:g} s calls over {r.wall_s:.0f} s; errors: "
        + (", ".join(f"{k} x{v}" for k, v in r.errors.items()) or "none"),
        f"calls held after warm-up: mean {f['sessions_mean']}, min {f['sessions_min']}",
        f"RSS MB: before {f['rss_mb_before']}, at warm-up {f['rss_mb_at_warmup']}, end of "
        f"load {f['rss_mb_end_of_load']}, after {f['rss_mb_after']}; growth after warm-up "
        f"{f['rss_growth_mb_per_10min']} MB per 10 min (limit {r.config['max_rss_growth_mb']:g})",
        f"open FDs: before {f['fds_before']}, max {f['fds_max']}, after {f['fds_after']} "
        f"(slack {r.config['fd_slack']})",
        f"overrun ticks after warm-up: {f.get('overrun_ticks')} of {f.get('ticks')} "
        f"({f.get('overrun_pct')} %; first third {f.get('overrun_pct_first_third')} %, last "
        f"third {f.get('overrun_pct_last_third')} %); tick compute mean {f.get('tick_ms_mean')} "
        f"ms (first third {f.get('tick_ms_first_third')}, last {f.get('tick_ms_last_third')})",
        f"server CPU per tick: first third {f.get('cpu_ms_per_tick_first_third')} ms, last "
        f"{f.get('cpu_ms_per_tick_last_third')} ms; host CPUs busy {f.get('host_busy_pct')} %, "
        f"stolen {f.get('host_steal_pct')} % (all processes, after warm-up)",
        f"server-added latency p99, worst call: {r.worst_latency_ms_p99} ms; host load (1 min) "
        f"mean {f['load_1m_mean']}, max {f['load_1m_max']}",
        "PASSED" if not r.failures else "FAILED: " + "; ".join(r.failures),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `duplex soak`."""
    parser.description = (
        "Hold a server at capacity with calls ending and starting for a while; sample its "
        "memory, file descriptors and overruns; exit 1 on growth or on a failed call."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="server endpoint (%(default)s)")
    parser.add_argument("--callers", type=int, default=16, help="calls at once (16)")
    parser.add_argument(
        "--duration", type=float, default=600.0, help="seconds of calls, in all (600)"
    )
    parser.add_argument("--call-s", type=float, default=20.0, help="length of each call (20)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warmup",
        type=float,
        default=300.0,
        help="seconds before growth counts: the allocator settles first (300)",
    )
    parser.add_argument(
        "--server-pid",
        type=int,
        help="the server's process on this machine: RSS and FDs from /proc/PID (else from "
        "/metrics' process_* figures, where the server exports them)",
    )
    parser.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=20.0,
        help="fail when RSS after the warm-up grows faster than this many MB per 10 min (20)",
    )
    parser.add_argument(
        "--fd-slack",
        type=int,
        default=8,
        help="fail when the idle server holds more than this many FDs above its start (8)",
    )
    parser.add_argument(
        "--overrun-growth-pct",
        type=float,
        default=1.0,
        help="fail when the share of ticks overrun grows by more than this many points "
        "from the first to the last third after the warm-up (1)",
    )
    parser.add_argument(
        "--input", action="append", metavar="PATH", help="speech the callers play (repeatable)"
    )
    parser.add_argument("--seed", type=int, help="seeds the callers' sampling")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    parser.add_argument("--json-out", metavar="PATH", help="also write the JSON report here")


def _config(args: argparse.Namespace) -> SoakConfig:
    check_url(args.url)
    for flag, value in (
        ("--callers", args.callers),
        ("--duration", args.duration),
        ("--call-s", args.call_s),
        ("--sample-s", args.sample_s),
    ):
        if not value > 0:
            raise InputError(f"{flag} must be positive, got {value}")
    if args.call_s > args.duration:
        raise InputError(f"--call-s {args.call_s:g} is longer than --duration {args.duration:g}")
    if not 0 <= args.warmup < args.duration - args.call_s:
        raise InputError(
            f"--warmup must be in [0, --duration - --call-s): calls start only until then, "
            f"got {args.warmup:g}"
        )
    if args.server_pid is not None and not Path(f"/proc/{args.server_pid}").is_dir():
        raise InputError(f"--server-pid {args.server_pid}: no such process on this machine")
    if args.json_out and not Path(args.json_out).parent.is_dir():
        raise InputError(f"cannot write {args.json_out!r}: no such directory")
    return SoakConfig(
        url=args.url,
        callers=args.callers,
        duration_s=args.duration,
        call_s=args.call_s,
        sample_s=args.sample_s,
        warmup_s=args.warmup,
        server_pid=args.server_pid,
        max_rss_growth_mb=args.max_rss_growth_mb,
        fd_slack=args.fd_slack,
        overrun_growth_pct=args.overrun_growth_pct,
        inputs=tuple(args.input or ()),
        seed=args.seed,
        api_key=args.api_key,
    )


def run(args: argparse.Namespace) -> int:
    """Run `duplex soak`: the report on stdout; a failure is one line on stderr."""
    try:
        report = asyncio.run(run_soak(_config(args)))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=1))
    except InputError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    print(json.dumps(report.to_dict()) if args.json else summary(report))
    if report.failures:
        return _fail("; ".join(report.failures))
    return 0


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"{PROG}: {'error: ' if code == EXIT_USAGE else ''}{message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (`python -m clients.measure.soak`), also used by the tests."""
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
