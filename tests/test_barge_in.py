"""A caller barging in on the agent: read from real user frames, then a silent agent."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.barge_in import STALE_CHUNKS, Windows
from model.barge_in import barged_in as rule
from model.checkpoint import init_random_checkpoint, load_checkpoint
from model.engines.api import StepRequest
from model.engines.torch.engine import TorchEngine
from model.format import ChunkFormat, Frame, dedup, format_timeline
from model.sampling import SamplingParams
from model.timeline import Timeline

FMT = ChunkFormat(
    n_units=6, units_per_frame=1, unit_offset=0, frames_per_chunk=4, s0=6, s1=7, bos=8,
    silence_unit=0,
)  # fmt: skip
Q, S = (0,), (3,)  # a quiet frame, a frame of sound
W = Windows.of(0.04)  # Codec2's 40 ms frames


def barged_in(tl: Timeline, newest: list[Frame], frames: int) -> bool | None:
    return rule(tl, newest, frames, W)


def test_the_rules_times_are_counted_in_the_codecs_frames() -> None:
    """160 ms of quiet ends a speech and an onset is looked for 5.12 s back, whatever the
    frame: Codec2's 40 ms frames, Mimi's 80 ms."""
    assert (W.pause_frames, W.lookback_frames) == (4, 128)
    assert Windows.of(0.08) == Windows(pause_frames=2, lookback_frames=64)
    agent = [S] * 8 + [Q] * 4  # talking when the caller starts, quiet when they start again
    user = [Q] * 4 + [S] * 4 + [Q, Q] + [S, S]  # 2 quiet frames between
    assert rule(timeline(agent, user), [], 2, W) is True  # 80 ms: a dip in the barge-in
    assert rule(timeline(agent, user), [], 2, Windows.of(0.08)) is False  # 160 ms: a pause


def timeline(agent: list[Frame], user: list[Frame], estimated: tuple[int, ...] = ()) -> Timeline:
    """Agent and user frames as chunks; the agent one chunk ahead when it has one more."""
    n = FMT.frames_per_chunk
    tl = Timeline(FMT)
    for j in range(len(agent) // n):
        tl.append_agent(dedup(agent[j * n : (j + 1) * n], tl.prev_agent()))
        if (j + 1) * n <= len(user):
            tl.append_user(user[j * n : (j + 1) * n], real=j not in estimated)
    return tl


def test_speech_that_starts_while_the_agent_talks_is_a_barge_in() -> None:
    agent = [S] * 12
    user = [Q] * 4 + [Q, S, S, S]
    tl = timeline(agent, user)
    assert barged_in(tl, [], 3)
    assert not barged_in(tl, [], 4)  # not yet that long
    assert barged_in(tl, [S], 4)  # the newest chunk's first frame makes it so
    assert not barged_in(tl, [], 0)  # off


def test_an_agent_that_started_over_the_callers_speech_is_not_interrupted() -> None:
    """A backchannel, or an answer that starts before the caller's last word. (Agent frames
    change at chunk boundaries here: within a chunk the format keeps no run lengths.)"""
    agent = [Q] * 8 + [S] * 4
    user = [S] * 8
    assert not barged_in(timeline(agent, user), [S, S], 1)


def test_an_agent_that_starts_too_soon_to_have_heard_the_caller_yields() -> None:
    """The caller resumes just before the agent's chunk starts: drawn a chunk ahead, the agent
    could not have heard it (a collision); a start more than a chunk after it, it could."""
    agent = [Q] * 8 + [S] * 4
    assert barged_in(timeline(agent, [Q] * 4 + [Q, Q, S, S]), [S], 2)  # 2 frames before
    assert not barged_in(timeline(agent, [Q, Q, S, S] + [S] * 4), [S], 2)  # 6 frames before


def test_an_agent_that_had_finished_is_not_interrupted() -> None:
    """The caller answers the agent's turn: no barge-in, unless the agent starts again."""
    user = [Q] * 4 + [Q, Q, Q, S]
    assert not barged_in(timeline([S] * 4 + [Q] * 8, user), [S], 2)
    assert barged_in(timeline([S] * 4 + [Q] * 4 + [S] * 4, user), [S], 2)


def test_a_pause_ends_the_barge_in_and_a_dip_does_not() -> None:
    agent = [S] * 16
    dip = [Q] * 4 + [S, S, Q, Q] + [S, S, Q, Q]
    assert barged_in(timeline(agent, dip), [S], 4)  # 2 quiet frames inside the speech
    paused = [Q] * 4 + [S, S, S, S] + [Q] * W.pause_frames
    assert not barged_in(timeline(agent, paused), [], 1)


def test_the_models_estimates_are_no_evidence() -> None:
    agent = [S] * 12
    user = [Q] * 4 + [Q, Q, S, S]
    assert barged_in(timeline(agent, user), [], 2)
    # chunk 1 only estimated: nothing real shows speech
    assert not barged_in(timeline(agent, user, estimated=(1,)), [], 1)


def test_speech_that_began_before_what_can_be_read_has_no_answer() -> None:
    """A caller who has talked longer than the lookback without a pause: whether it was a
    barge-in is unknown (None: the engine keeps its last answer), either way round."""
    n = FMT.frames_per_chunk
    long = W.lookback_frames + 4 * n
    over_agent = timeline([S] * (long + n), [Q] * 4 + [S] * (long - 4))
    assert barged_in(over_agent, [], 3) is None
    agent_over = timeline([Q] * 4 * n + [S] * (long - 3 * n), [S] * long)
    assert barged_in(agent_over, [], 3) is None
    short = timeline([S] * 4 * n, [Q] * 4 + [S] * (3 * n - 4))
    assert barged_in(short, [], 3) is True  # the whole speech is in view


def test_audio_that_stopped_coming_is_no_evidence() -> None:
    """A barge-in whose audio then stalls: the estimates that stand in for it are skipped for
    a few chunks (late audio), then the old speech no longer counts."""
    n, spoke = FMT.frames_per_chunk, [Q] * 4 + [Q, S, S, S]  # chunk 1: the barge-in
    late = timeline([S] * (3 + STALE_CHUNKS) * n, spoke + [S] * STALE_CHUNKS * n,
                    estimated=tuple(range(2, 2 + STALE_CHUNKS)))  # fmt: skip
    assert barged_in(late, [], 3)
    stalled = timeline([S] * (4 + STALE_CHUNKS) * n, spoke + [S] * (STALE_CHUNKS + 1) * n,
                       estimated=tuple(range(2, 3 + STALE_CHUNKS)))  # fmt: skip
    assert not barged_in(stalled, [], 3)


@given(
    st.lists(st.sampled_from([Q, S]), min_size=16, max_size=16),
    st.lists(st.sampled_from([Q, S]), min_size=12, max_size=12),
    st.lists(st.sampled_from([Q, S]), min_size=4, max_size=4),
    st.lists(st.sampled_from([Q, S]), max_size=3),
    st.integers(1, 6),
)
def test_only_real_frames_decide(
    agent: list[Frame], user: list[Frame], guess: list[Frame], newest: list[Frame], need: int
) -> None:
    """Whatever the model estimated for the newest whole chunk, the answer is the same."""
    real = timeline(agent, user[:8] + [Q] * 4, estimated=(2,))
    other = timeline(agent, user[:8] + guess, estimated=(2,))
    assert barged_in(real, newest, need) == barged_in(other, newest, need)


@pytest.mark.parametrize("k", [1, 2, 4], ids=lambda k: f"K{k}")
def test_the_engine_falls_silent_for_a_barge_in_until_the_caller_pauses(
    checkpoint: Path, tmp_path: Path, k: int
) -> None:
    """The random-weight model babbles on; a caller who talks over it silences it until they
    pause, except for a chunk they ask a response for (a prompt wins). The tokens stay the
    chunk format's. At K units a frame, a silenced chunk is the silence frame, unit by unit,
    and a prompted one starts with a frame of sound."""
    if k > 1:
        checkpoint = tmp_path
        init_random_checkpoint(checkpoint, seed=0, units_per_frame=k, layers=1, hidden=64)
    config, llama = load_checkpoint(checkpoint)
    fmt = config.chunk_format()
    n = fmt.frames_per_chunk
    quiet, sound = [fmt.silence] * n, [(u,) * k for u in (37, 512, 88, 512)]
    user = [quiet] * 3 + [sound] * 3 + [quiet] * 2

    found: list[int] = []  # the steps whose result says the barge-in began there

    def run(barge_in_frames: int, prompt_at: int = -1) -> list[list[Frame]]:
        engine = TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=3)
        engine.add_session("a", SamplingParams(seed=4, barge_in_frames=barge_in_frames))
        out = []
        found.clear()
        for k in range(len(user) + 1):
            real = {k - 1: user[k - 1]} if k else {}  # whole chunks, in before the step
            step = engine.step([StepRequest("a", real, prompt=k == prompt_at)])
            out.append(step["a"].frames)
            if step["a"].barged_in:
                found.append(k)
        tl = engine.timeline("a")
        assert tl.tokens == format_timeline(fmt, tl.agent, tl.user)
        return out

    talking = run(0)
    assert found == []
    yielding = run(3)
    assert found == [4]  # the first silenced chunk says so (the server's `barge_in`)
    assert all(chunk[0] != fmt.silence for chunk in talking)  # it babbles throughout
    assert yielding[:4] == talking[:4]  # before the barge-in: the same draws
    assert yielding[4:7] == [quiet] * 3  # the caller talks (chunks 3-5): silence
    assert all(chunk[0] != fmt.silence for chunk in yielding[7:])  # paused: it goes on
    asked = run(3, prompt_at=5)
    assert asked[4] == asked[6] == quiet and asked[5][0] != fmt.silence
