"""The energy VAD the protocol bridges share: edges, hysteresis, any chunking."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.vad import EnergyVad, VadParams, dbfs

RATE = 8000


def burst(start_s: float, end_s: float, total_s: float, level_dbfs: float = -20.0) -> np.ndarray:
    t = np.arange(int(total_s * RATE)) / RATE
    x = np.sin(2 * np.pi * 300 * t) * (10 ** (level_dbfs / 20) * np.sqrt(2))
    x[(t < start_s) | (t >= end_s)] = 0
    return x.astype(np.float32)


def test_a_burst_gives_one_start_and_one_stop_at_its_edges() -> None:
    vad = EnergyVad(RATE)
    events = vad.push(burst(0.4, 1.2, 3.0))
    assert [e for e, _ in events] == ["started", "stopped"]
    assert abs(events[0][1] - 400) <= 20 and abs(events[1][1] - 1200) <= 20


def test_a_click_and_quiet_noise_do_not_start_speech() -> None:
    vad = EnergyVad(RATE)
    assert vad.push(burst(0.5, 0.52, 1.0)) == []  # one loud frame: shorter than start_frames
    rng = np.random.default_rng(0)
    assert vad.push((rng.standard_normal(RATE) * 10 ** (-55 / 20)).astype(np.float32)) == []


def test_hysteresis_keeps_speech_through_a_dip_above_the_off_level() -> None:
    p = VadParams()
    x = burst(0.0, 2.0, 2.5)
    dip = (np.arange(len(x)) >= 0.8 * RATE) & (np.arange(len(x)) < 1.6 * RATE)
    x[dip] *= 10 ** ((p.off_dbfs + 3 - -20.0) / 20)  # between off and on: still speech
    assert [e for e, _ in EnergyVad(RATE).push(x)] == ["started", "stopped"]
    assert dbfs(np.zeros(10, dtype=np.float32)) == float("-inf")


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(1, 3000), min_size=1, max_size=30))
def test_events_do_not_depend_on_chunking(cuts: list[int]) -> None:
    x = np.concatenate([burst(0.3, 0.9, 1.5), burst(0.2, 0.7, 1.5)])
    whole = EnergyVad(RATE).push(x)
    vad, got, i = EnergyVad(RATE), [], 0
    for n in cuts:
        got += vad.push(x[i : i + n])
        i += n
    got += vad.push(x[i:])
    assert got == whole and len(whole) == 4
