"""`duplex loadtest`: the analysis on synthetic streams with known answers, then real runs.

The real runs are short (a few seconds of audio per caller) because callers stream in real time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clients.call import load_input
from clients.measure.loadtest import (
    LoadtestConfig,
    _config,
    add_arguments,
    caller_audio,
    main,
    metrics_url,
    run_loadtest,
    tick_slots,
)
from clients.measure.loadtest_report import metrics_summary
from clients.measure.reception import (
    ReceiveFigures,
    heard_time,
    receive_figures,
    simulate_downlink,
    turn_latencies,
)
from clients.measure.soak import (
    Sample,
    SoakConfig,
    host_cpu,
    judge,
    proc_figures,
    run_soak,
    summary,
)
from clients.measure.soak import main as soak_main
from clients.measure.speech_activity import speech_segments
from clients.realtime_client import Playback
from streaming.resample import resample_whole
from tests.conftest import ServerProcess, speak, start_server, stop_server

pytestmark = pytest.mark.tools  # make test-tools: CI runs it after the default suite

RATE = 8000


# --- turn latency on known segments ----------------------------------------------------------


def test_turn_latency_is_agent_onset_minus_user_end() -> None:
    turns = turn_latencies([(0.0, 1.0)], [1.3], end_s=5.0)
    assert turns.latencies_s == pytest.approx([0.3])
    assert turns.unanswered == 0


def test_a_short_pause_is_not_a_turn_end() -> None:
    # 0.2 s between the segments is a pause inside the turn; only the second end counts
    turns = turn_latencies([(0.0, 1.0), (1.2, 2.0)], [2.4], end_s=6.0)
    assert turns.latencies_s == pytest.approx([0.4])
    assert turns.count == 1


def test_agent_talking_through_the_end_or_too_late_is_unanswered() -> None:
    # onset before the user's end (talking over), and one after the 3 s window
    turns = turn_latencies([(0.0, 1.0)], [0.5, 4.5], end_s=10.0)
    assert (turns.latencies_s, turns.unanswered) == ([], 1)


def test_an_answer_must_come_before_the_user_speaks_again() -> None:
    turns = turn_latencies([(0.0, 1.0), (2.0, 3.0)], [2.5, 3.5], end_s=10.0)
    assert turns.latencies_s == pytest.approx([0.5])  # the second turn's
    assert turns.unanswered == 1  # the first: the onset at 2.5 s came after the user resumed


def test_a_turn_whose_window_the_call_cut_off_is_not_counted() -> None:
    assert turn_latencies([(0.0, 1.0)], [], end_s=2.0).count == 0
    assert turn_latencies([(0.0, 1.0)], [], end_s=4.5).unanswered == 1


def test_a_late_frame_delays_the_onset_as_heard() -> None:
    firsts = [0, 1280, 2560]  # 160 ms frames at 8 kHz
    arrivals = [0.0, 0.5, 0.33]  # the second frame is due at 0.16 s but arrives at 0.5 s
    assert heard_time(100, firsts, arrivals, RATE) == pytest.approx(100 / RATE)
    assert heard_time(1280 + 160, firsts, arrivals, RATE) == pytest.approx(0.52)
    assert heard_time(2560, firsts, arrivals, RATE) == pytest.approx(0.33)


def _trimmed(path: Path) -> np.ndarray:
    """espeak-ng speech at RATE without its leading and trailing silence."""
    pcm, rate = load_input(str(path))
    x = resample_whole(pcm, rate, RATE)
    loud = np.nonzero(np.abs(x) > 0.02 * np.abs(x).max())[0]
    return x[loud[0] : loud[-1] + 1]


def test_vad_turn_latency_in_speech_tracks_the_true_gap(tmp_path: Path) -> None:
    """User speech ends at a known time; the agent starts 300 ms or 800 ms later.

    silero-vad holds speech for 0-110 ms past the last sound (measured on espeak speech), so
    the absolute figure reads up to that much low; the difference between the two must be
    exact to about one 32 ms VAD window.
    """
    user_clip = _trimmed(speak("What time is it in Paris?", tmp_path / "u.wav"))
    agent_clip = _trimmed(speak("It is nine in the morning.", tmp_path / "a.wav"))
    user_end = 0.5 + len(user_clip) / RATE
    n = round((user_end + 0.8) * RATE) + len(agent_clip) + RATE
    user = np.zeros(n, np.float32)
    user[RATE // 2 : RATE // 2 + len(user_clip)] = user_clip
    streams = [user]
    for gap in (0.3, 0.8):
        agent = np.zeros(n, np.float32)
        onset = round((user_end + gap) * RATE)
        agent[onset : onset + len(agent_clip)] = agent_clip
        streams.append(agent)

    user_segs, *agent_segs = speech_segments(streams, RATE)
    assert user_segs[-1][1] == pytest.approx(user_end, abs=0.12)
    measured = []
    for segs, gap in zip(agent_segs, (0.3, 0.8), strict=True):
        assert segs[0][0] == pytest.approx(user_end + gap, abs=0.04)
        turns = turn_latencies(user_segs, [s for s, _ in segs], end_s=n / RATE)
        assert turns.unanswered == 0 and len(turns.latencies_s) == 1
        assert turns.latencies_s[0] == pytest.approx(gap, abs=0.12)
        measured.append(turns.latencies_s[0])
    assert measured[1] - measured[0] == pytest.approx(0.5, abs=0.04)


# --- jitter and gaps on known arrival times --------------------------------------------------


def test_jitter_and_gaps_from_arrival_times() -> None:
    # frames as the server sends them: the first one short (a codec delay), then 1280 each
    t_ready, tick, chunk = 100.0, 0.16, 1280
    firsts, lengths, arrivals, lateness = [], [], [], []
    for k in range(10):
        first = 0 if k == 0 else k * chunk - 24
        if k in (7, 9):
            continue  # never arrive: one hole inside, one at the end
        late = 0.2 if k == 5 else 0.01 * (k % 2)  # k=5: more than a tick late
        firsts.append(first)
        lengths.append(chunk - 24 if k == 0 else chunk)
        arrivals.append(t_ready + first / RATE + late)
        lateness.append(late)

    def figures(arrived: list[float], base: float = 0.0) -> ReceiveFigures:
        return receive_figures(
            firsts,
            lengths,
            arrived,
            t_ready=t_ready,
            rate=RATE,
            total_samples=10 * chunk,
            chunk_samples=chunk,
            tick_s=tick,
            base_delay_s=base,
        )

    fig = figures(arrivals)
    assert fig.jitter_ms == pytest.approx(np.std(lateness) * 1e3)
    assert fig.late_ms_p99 == pytest.approx(np.percentile(lateness, 99) * 1e3)
    assert (fig.late_frames, fig.missing_frames, fig.gaps) == (1, 2, 3)
    # an injected fixed downlink delay is latency, not a gap
    moved = figures([a + 0.5 for a in arrivals], base=0.5)
    assert (moved.gaps, moved.jitter_ms) == (3, pytest.approx(fig.jitter_ms))
    assert figures([a + 0.5 for a in arrivals]).late_frames == len(arrivals)  # not absorbed
    # the empty frame that flags the end (early, after the last chunk) is no arrival to time
    firsts.append(10 * chunk - 24)
    lengths.append(0)
    assert figures([*arrivals, t_ready]) == fig
    # frames out of order or overlapping leave no hole
    full = receive_figures(
        [1280, 0, 1000],
        [1280, 1280, 1280],
        [1.0, 1.0, 1.0],
        t_ready=0.0,
        rate=RATE,
        total_samples=2560,
        chunk_samples=chunk,
        tick_s=tick,
    )
    assert full.missing_frames == 0


def test_simulated_downlink_delays_and_never_reorders() -> None:
    arrivals = [i * 0.02 for i in range(200)]
    assert simulate_downlink(arrivals, 0.05, 0.0, random.Random(0)) == pytest.approx(
        [a + 0.05 for a in arrivals]
    )
    out = simulate_downlink(arrivals, 0.05, 0.1, random.Random(0))
    assert out == simulate_downlink(arrivals, 0.05, 0.1, random.Random(0))  # seeded
    assert all(b >= a for a, b in zip(out, out[1:], strict=False))
    assert all(0.05 <= o - a <= 0.15 + 0.02 * 5 for a, o in zip(arrivals, out, strict=True))


def test_tick_time_per_second_from_metrics_differences() -> None:
    page = {"overruns": 0.0, "sessions_active": 2.0, "latency_buckets": {"0.1": 0.0, "+Inf": 0.0}}
    samples = [
        {**page, "t": 0.0, "tick_sum": 1.0, "tick_count": 10.0},
        {**page, "t": 1.0, "tick_sum": 1.3, "tick_count": 16.0, "overruns": 1.0},
        {**page, "t": 2.0, "tick_sum": 1.3, "tick_count": 16.0, "overruns": 1.0},
    ]
    m = metrics_summary(samples, [])
    assert [p["tick_mean_ms"] for p in m["series"]] == [pytest.approx(50.0), None]
    assert [p["overruns"] for p in m["series"]] == [1, 0]
    assert m["tick_mean_ms"] == pytest.approx(50.0)
    assert metrics_url("wss://h:9/v1/duplex?token=x") == "https://h:9/metrics"


def test_realtime_deltas_are_placed_on_ticks_by_response_and_arrival() -> None:
    """A response's deltas are consecutive ticks whatever their arrival; a new response's
    first delta is placed by its arrival against the least late delta before it."""
    tick = 0.16
    items = ["a", "a", "a", "b", "b", "c"]
    # "a" at ticks 0-2 (the second one 0.1 s late), silence at 3-4, "b" at 5-6, "c" at 9
    arrivals = [10.0, 10.26, 10.32, 10.8 + 0.05, 10.96, 11.44 + 0.07]
    assert tick_slots(items, arrivals, tick) == [0, 1, 2, 5, 6, 9]
    # a response that follows at once is never placed on a tick already taken
    assert tick_slots(["a", "b"], [10.0, 10.05], tick) == [0, 1]
    assert tick_slots([], [], tick) == []


def test_the_realtime_player_plays_in_order_and_flushes_what_it_did_not_play() -> None:
    rate, t0 = 1000, 100.0
    p = Playback(t0, rate)
    chunk = np.ones(160, np.float32)
    p.play("a", chunk, t0 + 0.0)
    p.play("a", chunk, t0 + 0.1)  # early: queued after the first
    assert p.playing(t0 + 0.3) and not p.playing(t0 + 0.4)
    p.play("b", chunk, t0 + 0.5)  # after a silence: plays as it arrives
    assert [x.position for x in p.played] == [0, 160, 500]
    assert p.played_ms("a", t0 + 0.2) == 200 and p.played_ms("b", t0 + 0.2) == 0
    assert p.flush(t0 + 0.55) == 110  # the rest of "b"
    assert not p.playing(t0 + 0.56) and p.dropped == 110
    assert [len(x.pcm) for x in p.played] == [160, 160, 50]
    assert p.played_ms("b", t0 + 9) == 50


def test_callers_loop_the_clips_with_pauses_from_their_own_start() -> None:
    clips = [np.full(10, 1.0, np.float32), np.full(10, 2.0, np.float32)]
    x = caller_audio(clips, 10, duration_s=7.0, first=1)  # PAUSE_S = 2 s = 20 samples
    assert len(x) == 70
    assert x[0] == 2.0 and x[30] == 1.0 and x[60] == 2.0
    assert not x[10:30].any()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--protocol", "twilio", "--encoding", "pcm16"], "always streams mu-law at 8000 Hz"),
        (["--protocol", "twilio", "--rate", "16000"], "always streams mu-law at 8000 Hz"),
        (["--protocol", "realtime", "--encoding", "opus"], "no Opus in Realtime"),
        (["--encoding", "mulaw", "--rate", "16000"], "--rate 16000 is not supported with mulaw"),
        (["--callers", "0"], "--callers must be positive, got 0"),
        (["--slo-p99-ms", "-1"], "--slo-p99-ms must be > 0"),
        (["--json-out", "/no/such/dir/r.json"], "cannot write '/no/such/dir/r.json'"),
    ],
)
def test_usage_errors_exit_2_with_one_line_before_any_call(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before any connection: the URL points at a port nothing listens on."""
    assert main(["--url", "ws://127.0.0.1:9/v1/duplex", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("duplex loadtest: error: "), lines
    assert message in lines[0]


def test_twilio_accepts_its_own_encoding_named() -> None:
    """Naming what Twilio sends anyway is not an error."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = _config(parser.parse_args(["--protocol", "twilio", "--encoding", "mulaw"]))
    assert (cfg.encoding, cfg.wire_rate) == ("mulaw", 8000)


def test_realtime_defaults_to_its_endpoint_and_24_khz() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = _config(parser.parse_args(["--protocol", "realtime"]))
    assert (cfg.url, cfg.encoding, cfg.wire_rate) == (
        "ws://127.0.0.1:8000/v1/realtime",
        "pcm16",
        24000,
    )
    cfg = _config(parser.parse_args(["--protocol", "realtime", "--encoding", "mulaw"]))
    assert (cfg.encoding, cfg.wire_rate) == ("mulaw", 8000)


# --- real runs against `duplex serve` --------------------------------------------------------


def test_real_run_reports_writes_files_and_gates_on_slo(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plots = tmp_path / "report.json", tmp_path / "plots"
    rc = main(
        [
            "--url", server.url, "--callers", "3", "--duration", "4", "--ramp-up", "0.4",
            "--seed", "0", "--json", "--json-out", str(out), "--plots-dir", str(plots),
            "--slo-p99-ms", "0.001",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "SLO missed" in err[0] and "p99" in err[0], captured.err
    report = json.loads(captured.out)
    assert report == json.loads(out.read_text())
    o = report["overall"]
    assert (o["completed"], o["connect_failures"], o["errors"]) == (3, {}, {})
    for key in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "recv_jitter_ms"):
        assert o[key] is not None and o[key] >= 0
    assert o["frames_sent"] == 3 * 200  # 4 s of 20 ms frames each
    assert o["frames_received"] >= 3 * 25  # 160 ms agent frames
    for c in report["callers"]:
        assert c["status"] == "ok" and c["session_id"]
        assert {"overruns", "late_samples_dropped", "recv_gaps", "turns"} <= c.keys()
    assert report["server_metrics"]["available"]
    for name in ("latency_cdf.png", "tick_time.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_realtime_callers_barge_in_truncate_and_get_the_same_report(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three OpenAI Realtime callers say a short sentence every 2.6 s; the random-weight
    model babbles, so the second sentence starts over the agent: the caller stops playing and
    truncates the agent's item, and the server answers every truncate, with no error event."""
    clip = speak("Hello there.", tmp_path / "hello.wav")
    out = tmp_path / "report.json"
    url = server.url.replace("/v1/duplex", "/v1/realtime")
    rc = main(
        [
            "--url", url, "--protocol", "realtime", "--callers", "3", "--duration", "5",
            "--input", str(clip), "--seed", "0", "--json-out", str(out),
        ]
    )  # fmt: skip
    table = capsys.readouterr().out
    assert rc == 0, table
    report = json.loads(out.read_text())
    assert report["config"]["wire_rate"] == 24000
    o = report["overall"]
    assert (o["completed"], o["connect_failures"], o["errors"]) == (3, {}, {})
    assert o["error_events"] == 0 and o["responses"] >= 3
    assert o["frames_sent"] == 3 * 250  # 5 s of 20 ms appends each
    assert o["frames_received"] >= 3 * 5  # 160 ms deltas of agent speech
    assert o["barge_ins"] >= 3 and o["truncated"] == o["barge_ins"]
    assert o["unplayed_ms"] >= 0 and o["recv_jitter_ms"] is not None
    assert o["turns"] >= 3  # each sentence's end, placed on the caller's own clock
    assert o["latency_ms_p99"] is None  # no `stats` over Realtime: the server's view is /metrics
    assert report["server_metrics"]["available"]
    for c in report["callers"]:
        assert c["status"] == "ok" and c["session_id"].startswith("sess_")
    assert "realtime: " in table and " barge-ins truncated (" in table


def test_callers_beyond_capacity_are_connect_failures(checkpoint: Path, tmp_path: Path) -> None:
    """Natively and over Realtime (refused at its first append)."""
    srv = start_server(checkpoint, tmp_path / "server.log", "--max-sessions", "2")
    try:
        report = asyncio.run(run_loadtest(LoadtestConfig(url=srv.url, callers=6, duration_s=1.5)))
        url = srv.url.replace("/v1/duplex", "/v1/realtime")
        realtime = asyncio.run(
            run_loadtest(LoadtestConfig(url=url, callers=3, duration_s=1.5, protocol="realtime"))
        )
    finally:
        stop_server(srv)
    o = report.overall
    assert o["connect_failures"] == {"server_full": 4}
    assert o["completed"] == 2 and o["errors"] == {}
    refused = [c for c in report.callers if c.status == "server_full"]
    assert all(not c.connected and c.frames_received == 0 for c in refused)
    o = realtime.overall
    assert (o["connect_failures"], o["completed"], o["errors"]) == ({"server_full": 1}, 2, {})


# --- `duplex soak`: the judgement on known series, then a short real churn ----------------------


def _series(
    rss_mb_per_min: float = 0.0,
    fds_after: int = 40,
    overrun_pct_late: float = 0.8,
    minutes: int = 10,
) -> list[Sample]:
    """A sample a minute at 16 calls: 375 ticks a minute, 0.8 % of them overrun until the last
    third, then `overrun_pct_late` %; RSS from 500 MB, growing as asked after 2 minutes."""
    out = [Sample(0.0, "before", 400.0, 40, 0, 0, 0.0, 0, 0, 1.0)]
    overruns = 0.0
    for m in range(1, minutes + 1):
        overruns += 375 * (overrun_pct_late if m > 2 * minutes // 3 else 0.8) / 100
        rss = 500.0 + rss_mb_per_min * max(0, m - 2) + (0.8 if m % 2 else -0.8)  # noise
        out.append(Sample(60.0 * m, "load", rss, 60, 16, 375 * m, 9.0 * m, round(overruns), m, 2.0))
    out.append(Sample(60.0 * minutes + 5, "after", 510.0, fds_after, 0, 0, 0.0, 0, 0, 1.5))
    return out


SOAK = SoakConfig(warmup_s=120.0)


def test_a_flat_soak_passes() -> None:
    figures, failures = judge(_series(), SOAK, {})
    assert failures == []
    assert abs(figures["rss_growth_mb_per_10min"]) < 2
    assert figures["sessions_mean"] == 16 and figures["fds_after"] == 40


def test_memory_growing_after_the_warm_up_fails() -> None:
    figures, failures = judge(_series(rss_mb_per_min=3.0), SOAK, {})  # 30 MB per 10 min
    assert figures["rss_growth_mb_per_10min"] == pytest.approx(30.0, abs=1.0)
    assert len(failures) == 1 and failures[0].startswith("RSS grows "), failures
    assert judge(_series(rss_mb_per_min=1.5), SOAK, {})[1] == []  # 15 MB: under the limit


def test_descriptors_left_open_fail() -> None:
    assert judge(_series(fds_after=48), SOAK, {})[1] == []  # within the slack of 8
    failures = judge(_series(fds_after=49), SOAK, {})[1]
    assert failures == ["open FDs 49 after the run, 40 before (slack 8)"]


def test_overruns_growing_fail_and_failed_calls_fail() -> None:
    assert judge(_series(overrun_pct_late=1.6), SOAK, {})[1] == []  # + 0.8 points: allowed
    figures, failures = judge(_series(overrun_pct_late=4.0), SOAK, {})
    assert (figures["overrun_pct_first_third"], figures["overrun_pct_last_third"]) == (0.8, 4.0)
    assert failures == ["overruns grew from 0.8 % to 4 % of ticks (limit +1 points)"]
    assert judge(_series(), SOAK, {"server_full": 2})[1] == ["calls failed: server_full x2"]


def test_the_server_cpu_per_tick_and_the_host_are_figures_not_gates() -> None:
    """What the server did (its CPU time per tick) beside what the host did (its CPUs busy and
    stolen), so a reader can tell a slower host from a server doing more."""
    series = _series()
    for m, sample in enumerate(series):
        sample.cpu_s = 0.14 * sample.ticks + 3.75 * max(0, m - 7)  # 10 ms more a tick late
        sample.host_busy_s, sample.host_steal_s = 0.5 * sample.t, 0.01 * sample.t
    figures, failures = judge(series, SOAK, {})
    assert failures == []
    assert figures["cpu_ms_per_tick_first_third"] == pytest.approx(140.0)
    assert figures["cpu_ms_per_tick_last_third"] == pytest.approx(150.0)
    cpus = os.cpu_count() or 1
    assert figures["host_busy_pct"] == round(50.0 / cpus, 1)
    assert figures["host_steal_pct"] == round(1.0 / cpus, 1)


def test_the_soak_reads_a_process_and_the_host_from_proc() -> None:
    rss_mb, fds, cpu_s = proc_figures(os.getpid())
    assert rss_mb > 10 and fds >= 3 and cpu_s > 0
    busy, steal = host_cpu() or (0.0, -1.0)
    assert busy > 0 and steal >= 0


def test_too_short_a_soak_cannot_judge_memory() -> None:
    failures = judge(_series(minutes=3), SOAK, {})[1]
    assert failures == ["only 2 memory samples after the warm-up: need 3"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--call-s", "30", "--duration", "10"], "--call-s 30 is longer than --duration 10"),
        (["--warmup", "590"], "--warmup must be in [0, --duration - --call-s)"),
        (["--server-pid", "999999999"], "--server-pid 999999999: no such process"),
        (["--callers", "0"], "--callers must be positive"),
    ],
)
def test_soak_usage_errors_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert soak_main(["--url", "ws://127.0.0.1:9/v1/duplex", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("duplex soak: error: "), lines
    assert message in lines[0]


def test_a_short_churn_holds_capacity_and_lets_go(checkpoint: Path, tmp_path: Path) -> None:
    """4 callers placing 4 s calls back to back for 20 s against 4 slots. 20 s cannot tell a
    slow leak (the first minutes' allocations dominate; the tests above judge known series)
    nor overrun growth on a shared machine: here the limits only catch gross growth."""
    srv = start_server(checkpoint, tmp_path / "server.log", "--max-sessions", "4")
    cfg = SoakConfig(
        url=srv.url,
        callers=4,
        duration_s=20.0,
        call_s=4.0,
        sample_s=1.0,
        warmup_s=6.0,
        server_pid=srv.proc.pid,
        seed=0,
        max_rss_growth_mb=2000.0,  # 3.3 MB a second
        overrun_growth_pct=100.0,
    )
    try:
        report = asyncio.run(run_soak(cfg))
    finally:
        stop_server(srv)
    assert report.failures == [], summary(report)
    assert report.calls >= 3 * 4 and report.completed == report.calls and report.errors == {}
    f = report.figures
    assert f["sessions_mean"] >= 3.0  # calls end and start, the slots stay taken
    assert f["rss_mb_before"] > 50 and f["fds_before"] > 5
    assert f["fds_after"] <= f["fds_before"] + cfg.fd_slack
    phases = Counter(s.phase for s in report.samples)
    assert phases["before"] == 1 and phases["after"] == 1
    assert phases["load"] >= 14 and phases["drain"] >= 2
    assert f["samples_after_warmup"] >= 8 and f["rss_growth_mb_per_10min"] is not None
    assert [s.calls_done for s in report.samples] == sorted(s.calls_done for s in report.samples)
