"""`duplex loadtest`'s report: per-caller figures, totals over callers, the server's metrics
over time, and their presentation (the summary table and the PNG plots)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.measure.plots import plot_ecdf, pyplot


@dataclass(slots=True)
class CallerReport:
    """One caller's figures; `status` is "ok" or the error code that ended it.

    Figures a failed caller could not measure stay None (shown as "-"), never a false 0.
    """

    caller: int
    status: str = "ok"
    message: str | None = None
    connected: bool = False
    session_id: str | None = None
    start_s: float = 0.0  # when it connected, from the start of the test
    frames_sent: int = 0
    frames_received: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    overruns: int | None = None
    estimates_made: int | None = None
    estimates_replaced: int | None = None
    late_samples_dropped: int | None = None
    missing_chunks: int | None = None
    re_anchors: int | None = None
    recv_jitter_ms: float | None = None
    recv_late_ms_p99: float | None = None
    recv_gaps: int | None = None
    turns: int | None = None
    turns_answered: int | None = None
    turn_latency_ms_p50: float | None = None
    turn_latency_ms_p95: float | None = None
    turn_latencies_ms: list[float] = field(default_factory=list)
    # Realtime only (None otherwise): responses done; barge-ins (the server's speech_started
    # while the caller's player held agent audio or a response was open: each sends a
    # truncate) and the truncates answered; agent audio dropped unplayed at them; error
    # events (a clean call gets none)
    responses: int | None = None
    barge_ins: int | None = None
    truncated: int | None = None
    unplayed_ms: float | None = None
    error_events: int | None = None


@dataclass(slots=True)
class LoadtestReport:
    """The whole run: per caller, overall, and the server's metrics over time."""

    config: dict[str, Any]
    wall_s: float
    vad: str
    callers: list[CallerReport]
    overall: dict[str, Any]
    server_metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def overall(callers: Sequence[CallerReport]) -> dict[str, Any]:
    """Totals over callers; turn latency pooled over all turns; the other percentiles and the
    jitter are the worst caller's.

    Sessions report percentiles, not samples, so a pooled p99 cannot be computed; the largest
    per-caller p99 is an upper bound of it (the pooled CDF at that value is >= 0.99).
    """
    done = [c for c in callers if c.status == "ok"]
    turns = [x for c in done for x in c.turn_latencies_ms]
    n_turns = sum(c.turns or 0 for c in done)

    def worst(key: str) -> float | None:
        vals = [getattr(c, key) for c in done if getattr(c, key) is not None]
        return max(vals) if vals else None

    def total(key: str) -> int | None:
        vals = [getattr(c, key) for c in done if getattr(c, key) is not None]
        return sum(vals) if vals else None

    return {
        "callers": len(callers),
        "completed": len(done),
        "connect_failures": dict(Counter(c.status for c in callers if not c.connected)),
        "errors": dict(Counter(c.status for c in callers if c.connected and c.status != "ok")),
        "frames_sent": sum(c.frames_sent for c in callers),
        "frames_received": sum(c.frames_received for c in callers),
        "latency_ms_p50": worst("latency_ms_p50"),
        "latency_ms_p95": worst("latency_ms_p95"),
        "latency_ms_p99": worst("latency_ms_p99"),
        "overruns": total("overruns"),
        "estimates_made": total("estimates_made"),
        "estimates_replaced": total("estimates_replaced"),
        "late_samples_dropped": total("late_samples_dropped"),
        "missing_chunks": total("missing_chunks"),
        "re_anchors": total("re_anchors"),
        "recv_jitter_ms": worst("recv_jitter_ms"),
        "recv_late_ms_p99": worst("recv_late_ms_p99"),
        "recv_gaps": total("recv_gaps"),
        "responses": total("responses"),
        "barge_ins": total("barge_ins"),
        "truncated": total("truncated"),
        "unplayed_ms": total("unplayed_ms"),
        "error_events": sum(c.error_events or 0 for c in callers)
        if any(c.error_events is not None for c in callers)
        else None,
        "turns": n_turns,
        "turns_answered": len(turns),
        "response_rate": round(len(turns) / n_turns, 3) if n_turns else None,
        "turn_latency_ms_p50": percentile(turns, 50),
        "turn_latency_ms_p95": percentile(turns, 95),
        "turn_latency_ms_p99": percentile(turns, 99),
    }


def metrics_summary(samples: Sequence[dict[str, Any]], errors: Sequence[str]) -> dict[str, Any]:
    """Per-second tick compute time and overruns from consecutive /metrics pages."""
    series = []
    for a, b in zip(samples, samples[1:], strict=False):
        ticks = b["tick_count"] - a["tick_count"]
        series.append(
            {
                "t": round(b["t"], 2),
                "ticks": int(ticks),
                "tick_mean_ms": round((b["tick_sum"] - a["tick_sum"]) / ticks * 1e3, 3)
                if ticks
                else None,
                "overruns": int(b["overruns"] - a["overruns"]),
                "sessions_active": int(b["sessions_active"]),
            }
        )
    first, last = (samples[0], samples[-1]) if samples else ({}, {})
    means = [p["tick_mean_ms"] for p in series if p["tick_mean_ms"] is not None]
    return {
        "available": len(samples) >= 2,
        "error": errors[0] if errors else None,
        "series": series,
        "tick_mean_ms": round(
            (last["tick_sum"] - first["tick_sum"])
            / (last["tick_count"] - first["tick_count"])
            * 1e3,
            3,
        )
        if samples and last["tick_count"] > first["tick_count"]
        else None,
        "tick_mean_ms_worst_second": max(means) if means else None,
        "overruns": int(last["overruns"] - first["overruns"]) if samples else None,
        # cumulative counts per bucket upper bound (s), for the latency CDF over all sessions
        "latency_buckets": {
            le: last["latency_buckets"][le] - first["latency_buckets"].get(le, 0.0)
            for le in last["latency_buckets"]
        }
        if samples
        else {},
    }


def write_plots(report: LoadtestReport, directory: Path) -> list[Path]:
    """latency_cdf.png (server-added and turn latency) and, with metrics, tick_time.png."""
    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    buckets = {float(k): v for k, v in report.server_metrics["latency_buckets"].items()}
    total = buckets.get(math.inf, 0.0)
    if total > 0:
        les = sorted(b for b in buckets if b != math.inf)
        ax1.plot(  # linear inside buckets, as Prometheus' histogram_quantile assumes
            [0.0, *(le * 1e3 for le in les)],
            [0.0, *(buckets[le] / total for le in les)],
            ".-",
            label="all sessions (/metrics histogram)",
        )
    marked = False
    for c in report.callers:
        pts = [(c.latency_ms_p50, 0.5), (c.latency_ms_p95, 0.95), (c.latency_ms_p99, 0.99)]
        known = [(x, q) for x, q in pts if x is not None]
        if known:
            label = None if marked else "each caller's p50/p95/p99 (stats)"
            ax1.plot(*zip(*known, strict=True), "o", ms=3, alpha=0.6, label=label)
            marked = True
    ax1.set(title="server-added latency", xlabel="ms", ylabel="fraction <= x", ylim=(0, 1.02))
    if total > 0 or marked:
        ax1.legend(loc="lower right", fontsize=8)
    ax1.grid(alpha=0.3)
    turns = [x for c in report.callers for x in c.turn_latencies_ms]
    plot_ecdf(ax2, turns)
    ax2.set(
        title=f"turn latency ({len(turns)} answered turns)",
        xlabel="ms (end of user speech -> agent onset)",
        ylim=(0, 1.02),
    )
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    written.append(directory / "latency_cdf.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    series = report.server_metrics["series"]
    if series:
        fig, ax = plt.subplots(figsize=(11, 4.2))
        t = [p["t"] for p in series]
        ax.plot(
            t,
            [math.nan if p["tick_mean_ms"] is None else p["tick_mean_ms"] for p in series],
            label="mean tick compute time",
        )
        for key, style in (("lead_ms", ":"), ("tick_ms", "--")):
            if report.server_metrics[key] is not None:  # the step's deadline, and the tick
                ax.axhline(report.server_metrics[key], color="black", ls=style, lw=0.8, label=key)
        ax.set(xlabel="s since start", ylabel="ms", ylim=(0, None))
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.bar(t, [p["overruns"] for p in series], width=0.6, alpha=0.3, color="red")
        ax2.plot(t, [p["sessions_active"] for p in series], color="gray", ls="--")
        ax2.set_ylabel("overruns per second (bars), sessions (dashed)")
        ax.set_title("tick compute time over the run")
        fig.tight_layout()
        written.append(directory / "tick_time.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


_COLUMNS = (
    ("caller", "caller"),
    ("status", "status"),
    ("sent", "frames_sent"),
    ("recv", "frames_received"),
    ("lat p50", "latency_ms_p50"),
    ("p95", "latency_ms_p95"),
    ("p99", "latency_ms_p99"),
    ("overrun", "overruns"),
    ("late smp", "late_samples_dropped"),
    ("missing", "missing_chunks"),
    ("jitter", "recv_jitter_ms"),
    ("gaps", "recv_gaps"),
    ("turns", "turns"),
    ("answered", "turns_answered"),
    ("turn p50", "turn_latency_ms_p50"),
    ("turn p95", "turn_latency_ms_p95"),
)


def summary_table(report: LoadtestReport) -> str:
    """Per-caller rows and an overall row (times in ms), then the run's other figures."""
    rows = [[fmt(getattr(c, key)) for _, key in _COLUMNS] for c in report.callers]
    o = report.overall
    rows.append(
        ["all", f"{o['completed']}/{o['callers']} ok"] + [fmt(o.get(k)) for _, k in _COLUMNS[2:]]
    )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _) in enumerate(_COLUMNS)]
    line = "  ".join(h.rjust(w) for (h, _), w in zip(_COLUMNS, widths, strict=True))
    out = [line]
    for i, r in enumerate(rows):
        if i == len(rows) - 1:
            out.append("-" * len(line))
        out.append("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
    m = report.server_metrics
    out += [
        f"server-added latency ms (worst caller): p50 {fmt(o['latency_ms_p50'])}, "
        f"p95 {fmt(o['latency_ms_p95'])}, p99 {fmt(o['latency_ms_p99'])}",
        f"turn latency ms: p50 {fmt(o['turn_latency_ms_p50'])}, "
        f"p95 {fmt(o['turn_latency_ms_p95'])}; response rate "
        f"{fmt(None if o['response_rate'] is None else o['response_rate'] * 100)} % "
        f"({report.vad})",
        "connect failures: "
        + (codes(o["connect_failures"]) or "none")
        + "; errors: "
        + (codes(o["errors"]) or "none"),
        f"server ticks: mean {fmt(m['tick_mean_ms'])} ms, worst second "
        f"{fmt(m['tick_mean_ms_worst_second'])} ms, {fmt(m['overruns'])} overruns"
        if m["available"]
        else f"server metrics unavailable: {m['error']}",
        f"wall time {report.wall_s:.1f} s",
    ]
    if o["error_events"] is not None:  # Realtime callers
        out.insert(
            -2,
            f"realtime: {fmt(o['responses'])} responses, {fmt(o['barge_ins'])} barge-ins "
            f"truncated ({fmt(o['truncated'])} answered), {fmt(o['unplayed_ms'])} ms of agent "
            f"audio dropped unplayed, {fmt(o['error_events'])} error events",
        )
    return "\n".join(out)


def codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
