"""A call's audio against the clock (server/pacing/anchor.py), driven tick by tick without a
server: the re-anchor rules that tests/test_reanchor.py checks on the real one."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np
import pytest

from server.pacing.anchor import DRIFT_WINDOWS, MAX_DRIFT, REANCHOR_TICKS, CallPacing, ReAnchor

RATE = 16000
FRAME = 320  # 20 ms client frames
TICK_S = 0.16
REACH_S = 3 * TICK_S


def pacing() -> CallPacing:
    return CallPacing("c", RATE, FRAME, REACH_S)


def run(p: CallPacing, ticks: range, streamed: float) -> list[ReAnchor]:
    """Check at ticks `ticks`, with the call `streamed` seconds ahead (< 0: behind) of the
    clock; the re-anchors made (a late one's silence goes in, as the tick loop does)."""
    moves: list[ReAnchor] = []
    for k in ticks:
        elapsed = k * TICK_S
        inserted = sum(m.samples for m in moves if m.samples > 0)
        move = p.check(elapsed, round((elapsed + streamed) * RATE) + inserted)
        if move is not None:
            moves.append(move)
    return moves


def test_a_client_on_time_is_left_alone() -> None:
    """Trailing by a frame (and by up to the buffer's reach, a network delay) is on the clock."""
    p = pacing()
    assert run(p, range(1, 200), -FRAME / RATE) == []
    assert run(p, range(200, 400), -0.9 * REACH_S) == []
    assert (p.re_anchors, p.re_anchored_samples, p.drop_pending) == (0, 0, 0)


def test_late_audio_gets_silence_once_it_stays_beyond_reach() -> None:
    """0.7 s behind for REANCHOR_TICKS ticks: that much silence (less the frame a client on
    time trails by) goes in, once; then the call is on the clock."""
    p = pacing()
    assert run(p, range(10, 10 + REANCHOR_TICKS - 1), -0.7) == []
    (move,) = run(p, range(10 + REANCHOR_TICKS - 1, 10 + 4 * REANCHOR_TICKS), -0.7)
    assert move.direction == "late" and abs(move.lag_s - 0.7) < 1e-4
    assert abs(move.samples - (0.7 - FRAME / RATE) * RATE) <= 1
    assert (p.re_anchors, p.re_anchored_samples, p.drop_pending) == (1, move.samples, 0)


def test_early_audio_is_dropped_as_it_comes() -> None:
    """1 s ahead for REANCHOR_TICKS ticks: the next second of incoming audio is dropped, from
    the start of the frames that bring it; the call is then on the clock."""
    p = pacing()
    (move,) = run(p, range(1, 4 * REANCHOR_TICKS), 1.0)
    assert move.direction == "early" and move.samples == -RATE and p.drop_pending == RATE
    assert p.re_anchored_samples == -RATE
    assert abs(p.lag_s(2.0, 3 * RATE)) < 1e-9  # 1 s ahead: on the clock, the drop planned
    frame = np.arange(FRAME, dtype=np.float32)
    assert len(p.after_drop(frame)) == 0 and p.drop_pending == RATE - FRAME
    p.drop_pending = 100
    assert p.after_drop(frame).tolist() == frame[100:].tolist() and p.drop_pending == 0


def test_a_drop_not_made_is_revoked_once_the_call_trails_again() -> None:
    """A burst 1 s ahead, then nothing: the drop planned for audio still to come is given up
    as far as the call falls behind the clock, so the pause is not cut: net nothing moved."""
    p = pacing()
    burst = round((REANCHOR_TICKS * TICK_S + 1.0) * RATE)
    for k in range(1, REANCHOR_TICKS + 1):
        p.check(k * TICK_S, burst)
    assert p.drop_pending == RATE
    for k in range(REANCHOR_TICKS + 1, REANCHOR_TICKS + 20):  # the client pauses
        assert p.check(k * TICK_S, burst) is None
    assert p.drop_pending == 0 and p.re_anchored_samples == 0 and p.re_anchors == 1


def test_a_stall_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    """A client that stops sending is re-anchored every REANCHOR_TICKS ticks: one info line
    for the stall, the rest at debug; once on time for REANCHOR_TICKS ticks, one line that it
    is back, with the count."""
    caplog.set_level(logging.DEBUG, logger="duplex.pacing")
    p = pacing()
    inserted = 0
    for k in range(1, 4 * REANCHOR_TICKS + 1):  # 0.3 s sent, then nothing
        move = p.check(k * TICK_S, round(0.3 * RATE) + inserted)
        inserted += move.samples if move is not None else 0
    assert p.re_anchors == p.stall_re_anchors == 3
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and infos[0].startswith("call c re-anchored: its audio was")
    assert infos[0].endswith(" ms late")
    assert sum("re-anchored" in r.getMessage() for r in caplog.records) == 3  # 2 at debug
    caplog.clear()
    start = 4 * REANCHOR_TICKS + 1
    for k in range(start, start + REANCHOR_TICKS):  # on time again
        assert p.check(k * TICK_S, round((k * TICK_S - FRAME / RATE) * RATE)) is None
    assert p.stall_re_anchors == 0
    assert [r.getMessage() for r in caplog.records] == [
        "call c back on the clock after 3 re-anchors"
    ]


def test_end_leaves_owed_at_most_the_buffers_reach() -> None:
    """Issue 24 (a): at `end`, audio more than the reach ahead of the clock is dropped and
    counted as an early re-anchor; a drop planned for audio that will now never come is
    revoked, so the figures say what was really dropped. A client on time loses nothing."""
    on_time = pacing()
    assert on_time.bound_end(3.0, round((3.0 - FRAME / RATE) * RATE)) == 0
    assert on_time.ended and (on_time.re_anchors, on_time.re_anchored_samples) == (0, 0)

    ahead = pacing()  # 8 s sent in the first 0.2 s, `end` at once
    cut = ahead.bound_end(0.2, 8 * RATE)
    assert cut == 8 * RATE - round((0.2 + REACH_S) * RATE)
    assert (ahead.re_anchors, ahead.re_anchored_samples) == (1, -cut)

    p = pacing()  # 8 s ahead long enough to be re-anchored, then 0.5 s more, then `end`
    (move,) = run(p, range(1, REANCHOR_TICKS + 1), 8.0)
    assert move.samples == -8 * RATE
    more = np.zeros(round(0.5 * RATE), dtype=np.float32)
    assert len(p.after_drop(more)) == 0  # dropped as it comes
    samples_in = round((REANCHOR_TICKS * TICK_S + 8.0) * RATE)
    elapsed = (REANCHOR_TICKS + 1) * TICK_S
    cut = p.bound_end(elapsed, samples_in)
    assert p.drop_pending == 0
    assert cut == samples_in - round((elapsed + REACH_S) * RATE)
    assert p.re_anchors == 2 and p.re_anchored_samples == -(len(more) + cut)


def refused_at(
    p: CallPacing, sent: Callable[[float], float], seconds: float
) -> tuple[float, str] | None:
    """Look at the call's clock once a tick for `seconds`, the client having sent `sent(t)`
    seconds of audio (its own numbering, in 20 ms frames) `t` s after sample 0; when it is
    refused and why, if it is."""
    for k in range(1, round(seconds / TICK_S)):
        t = k * TICK_S
        if (why := p.refusal(t, int(sent(t) * RATE) // FRAME * FRAME)) is not None:
            return t, why
    return None


@pytest.mark.parametrize(("speed", "way"), [(0.7, "slow"), (1.3, "fast"), (1.02, "fast")])
def test_a_clock_off_beyond_max_drift_is_refused(speed: float, way: str) -> None:
    """Issue 24: a clock 30 % off (or 2 % fast) is refused once DRIFT_WINDOWS windows after
    the first (which only sets where the lag started) have drifted the same way, with a
    reason that says by how much and which way."""
    refused = refused_at(pacing(), lambda t: speed * t, 60.0)
    assert refused is not None
    at, why = refused
    assert abs(at - (DRIFT_WINDOWS + 1) * REANCHOR_TICKS * TICK_S) < 1e-6, at
    found = re.search(r"clock runs (\d+\.\d) % (slow|fast) against", why)
    assert found is not None and found[2] == way, why
    assert abs(float(found[1]) - abs(1 - speed) * 100) <= 0.3, why  # a frame in 7.7 s


def test_what_a_real_line_does_is_never_refused() -> None:
    """Half MAX_DRIFT (5x a real line's) for 10 minutes with up to 100 ms of jitter on every
    look, a network delay of 300 ms that comes and goes, and a client that starts 3 s late:
    none is refused."""
    rng = np.random.default_rng(0)
    for speed in (1 - MAX_DRIFT / 2, 1 + MAX_DRIFT / 2):
        sent = lambda t, s=speed: s * t - rng.uniform(0, 0.1)  # noqa: E731
        assert refused_at(pacing(), sent, 600.0) is None
    assert refused_at(pacing(), lambda t: t - 0.3 * (t % 7 < 3), 120.0) is None
    assert refused_at(pacing(), lambda t: max(0.0, t - 3.0), 120.0) is None


def test_stalls_and_bursts_are_not_drift() -> None:
    """A client that stops sending (re-anchored, and the idle timeout's business); one that
    stalls 2.6 s, sends a frame, stalls 2.6 s more, then sends in real time (as in
    tests/test_reanchor.py); a network that holds 1 s of audio back every 2 s, then delivers
    it at once; a burst 3 s ahead, then real time: none is refused."""
    assert refused_at(pacing(), lambda t: min(t, 1.0), 60.0) is None
    stall = lambda t: min(t, 0.3) + 0.02 * (t > 2.9) + max(0.0, t - 5.5)  # noqa: E731
    assert refused_at(pacing(), stall, 60.0) is None
    assert refused_at(pacing(), lambda t: t - max(0.0, t % 2 - 1), 60.0) is None
    assert refused_at(pacing(), lambda t: 3.0 + t, 60.0) is None
