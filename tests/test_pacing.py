"""The step pacer: the time a step is given, and the frames of the newest chunk it waits for."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from server.pacing import MIN_BUDGET_S, MIN_HISTORY, StepPacer


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
