"""Prometheus metrics (no per-session labels: cardinality must stay bounded)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from streaming.wire import ErrorCode

_TICK_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2, 0.3, 0.5, 1.0)
_LAT_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.12, 0.16, 0.25, 0.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, process_open_fds, ...: what a soak watches for growth
        ProcessCollector(registry=r)
        self.sessions_active = Gauge("duplex_sessions_active", "calls in progress", registry=r)
        self.sessions_total = Counter("duplex_sessions", "calls admitted", registry=r)
        self.sessions_rejected = Counter(
            "duplex_sessions_rejected", "calls refused at admission", ["reason"], registry=r
        )
        self.ticks = Counter("duplex_ticks", "ticks run", registry=r)
        self.tick_seconds = Histogram(
            "duplex_tick_compute_seconds",
            "compute time of one tick's step",
            buckets=_TICK_BUCKETS,
            registry=r,
        )
        # A tick's step serves every call: one tick that ends late is one overrun tick and, with
        # N calls in it, N chunks sent late (what the calls' `stats.overruns` add up to).
        self.overrun_ticks = Counter(
            "duplex_overrun_ticks",
            "ticks whose step ended after their deadline (one per tick, whatever its calls)",
            registry=r,
        )
        self.overrun_call_ticks = Counter(
            "duplex_overrun_call_ticks",
            "calls' agent chunks sent late: a late tick counts once per call in it "
            "(the sum of the calls' stats.overruns)",
            registry=r,
        )
        self.tick_overruns_deprecated = Counter(  # the old name, kept for one release
            "duplex_tick_overruns",
            "deprecated, removed in the next release: duplex_overrun_ticks_total",
            registry=r,
        )
        self.skipped = Counter(
            "duplex_ticks_skipped", "ticks skipped (more than one behind)", registry=r
        )
        self.estimates = Counter(
            "duplex_estimates", "user chunks estimated by the model", registry=r
        )
        self.replaced = Counter(
            "duplex_estimates_replaced", "estimates replaced by real audio", registry=r
        )
        self.late_dropped = Counter(
            "duplex_late_chunks_dropped",
            "user chunks that arrived beyond the latency budget",
            registry=r,
        )
        self.calls_lost = Counter(
            "duplex_calls_lost",
            "calls whose connection dropped without a close frame, by what became of them "
            "(waiting: kept for a resume; resumed; ended: resuming off or not possible)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("waiting", "resumed", "ended"):
            self.calls_lost.labels(outcome)
        self.calls_moved = Counter(
            "duplex_calls_moved",
            "live calls this replica handed to a peer while draining (server/moving.py)",
            registry=r,
        )
        self.agent_unheard = Counter(
            "duplex_agent_unheard_frames",
            "agent codec frames that never reached the caller (playback acknowledgements): "
            "made silence in the model's context, or beyond the rollback reach",
            ["fate"],
            registry=r,
        )
        for fate in ("silenced", "beyond_reach"):
            self.agent_unheard.labels(fate)
        self.re_anchors = Counter(
            "duplex_re_anchors",
            "calls' audio moved back onto the server's clock (drift or lasting delay)",
            ["direction"],
            registry=r,
        )
        for direction in ("late", "early"):
            self.re_anchors.labels(direction)
        self.rollback_tokens = Histogram(
            "duplex_rollback_tokens",
            "KV positions rolled back per replacement",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.frames_gated = Counter(
            "duplex_frames_gated", "callers' codec frames the noise gate made silence", registry=r
        )
        self.noise_floor = Histogram(
            "duplex_call_noise_floor_dbfs",
            "each ended call's line noise floor, as the noise gate estimated it",
            buckets=(-100, -80, -70, -65, -60, -55, -50, -45, -40),
            registry=r,
        )
        self.frames_in = Counter("duplex_frames_in", "audio frames received", registry=r)
        self.frames_out = Counter("duplex_frames_out", "audio frames sent", registry=r)
        self.errors = Counter("duplex_errors", "calls ended by an error", ["code"], registry=r)
        for code in ErrorCode:  # export every series from the start, at 0
            self.errors.labels(code.value)
        self.sessions_rejected.labels(ErrorCode.SERVER_FULL.value)
        self.latency = Histogram(
            "duplex_server_latency_seconds",
            "newest user frame arrival to the send of the agent frame its step made",
            buckets=_LAT_BUCKETS,
            registry=r,
        )
