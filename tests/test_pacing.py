"""Pacing: the time a step is given, the frames of the newest chunk it waits for, the lead, the
rollback depth and the tick clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.pacing.clock import TickClock
from server.pacing.lead import STEP_MARGIN_S, lead_s, rollback_chunks
from server.pacing.step import MIN_BUDGET_S, MIN_HISTORY, RETRY_LATE_TICKS, StepPacer


def pacer(adaptive: bool = True) -> StepPacer:
    return StepPacer(
        tick_s=0.16,
        frame_s=0.04,
        frames_per_chunk=4,
        max_budget_s=0.125,
        arrival_s=0.025,
        adaptive=adaptive,
    )


def test_no_history_or_a_fixed_lead_gives_the_most_time() -> None:
    p = pacer()
    assert p.budget(1) == 0.125
    f = pacer(adaptive=False)
    for _ in range(MIN_HISTORY * 2):
        f.record(0.01, 1)
    assert f.budget(1) == 0.125


def test_fast_steps_wait_for_more_of_the_newest_chunk() -> None:
    p = pacer()
    for _ in range(MIN_HISTORY):
        p.record(0.012, 1)
    b = p.budget(1)
    assert b == MIN_BUDGET_S  # 12 ms x 1.25 + 5 ms is below the floor
    assert p.frames_to_wait(b) == 2  # 160 - 25 - 40 ms leaves room for two 40 ms frames
    assert p.frames_to_wait(0.125) == 0


def test_more_sessions_than_recently_seen_scale_the_prediction_up() -> None:
    p = pacer()
    for _ in range(MIN_HISTORY):
        p.record(0.02, 2)
    assert p.budget(8) > p.budget(2)
    assert p.budget(64) == 0.125  # capped at the configured lead


@given(
    st.lists(st.tuples(st.floats(0.0, 0.5), st.integers(1, 64)), min_size=0, max_size=80),
    st.integers(1, 64),
)
def test_the_step_always_keeps_its_time(history: list[tuple[float, int]], sessions: int) -> None:
    """Whatever the history, the awaited frames' nominal arrival plus the budget fits the tick,
    and the budget never exceeds the configured lead."""
    p = pacer()
    for t, n in history:
        p.record(t, n)
    b = p.budget(sessions)
    m = p.frames_to_wait(b)
    assert 0 < b <= 0.125
    assert 0 <= m <= 3
    assert m == 0 or m * 0.04 + 0.025 + b <= 0.16 + 1e-9


def test_the_awaited_frame_of_each_call() -> None:
    """Each live call waits for the m-th frame of its chunk tick - join - 1, m as the budget
    allows; not before that frame's last sample is due, no later than the budget before the
    deadline; a call late at the last step is waited for only every RETRY_LATE_TICKS ticks."""
    p = pacer()
    w = p.wait(10, 100.0, {"a": 2, "b": 9}, sessions=2)  # no history: the whole lead, m = 0
    assert w.need == {"a": 7 * 4, "b": 0}
    assert (w.earliest, w.latest) == (100.0 - 0.16, 100.0 - 0.125)
    for _ in range(MIN_HISTORY):
        p.record(0.012, 2)
    w = p.wait(10, 100.0, {"a": 2}, sessions=2)  # fast steps: two frames of the newest chunk
    assert w.need == {"a": 7 * 4 + 2}
    assert w.earliest == 100.0 - 0.16 + 2 * 0.04 and w.latest == 100.0 - MIN_BUDGET_S
    assert w.waits_for("a", on_time=True) and not w.waits_for("a", on_time=False)
    assert not w.waits_for("c", on_time=True)  # not joined, or no audio due yet
    retry = p.wait(RETRY_LATE_TICKS * 3, 100.0, {"a": 2}, sessions=2)
    assert retry.retry and retry.waits_for("a", on_time=False)


def test_the_lead_and_the_rollback_depth_it_needs() -> None:
    assert lead_s(0.16, None) == 0.16 - STEP_MARGIN_S  # auto: most of the tick
    assert lead_s(0.16, 60) == 0.06
    with pytest.raises(ValueError, match="below the tick"):
        lead_s(0.16, 160)
    # (240 ms budget + 125 ms lead + 40 ms slack) / 160 ms = 2.5: three chunks estimated at once
    assert rollback_chunks(0.24, 0.125, 0.16) == 3
    assert rollback_chunks(0.5, 0.125, 0.16) == 5
    assert rollback_chunks(0.0, 0.001, 0.16) == 1


def test_tick_deadlines_are_absolute() -> None:
    """Tick g starts at t0 + g * period whatever came before; the loop starts at the first
    tick at or after now (a float hair past a boundary is that boundary)."""
    clock = TickClock(0.16, t0=100.0)
    assert clock.deadline(0) == 100.0 and clock.deadline(1000) == 100.0 + 1000 * 0.16
    assert clock.next_tick(99.0) == 0 and clock.next_tick(100.0) == 0
    assert clock.next_tick(100.01) == 1
    assert clock.next_tick(clock.deadline(7)) == 7
    with pytest.raises(ValueError, match="period"):
        TickClock(0.0)
