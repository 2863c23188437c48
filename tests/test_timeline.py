"""The timeline's rewrites: a replaced estimate and unheard agent audio re-format what follows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from model.format import ChunkFormat, Frame, dedup, format_timeline, interpolate
from model.timeline import Timeline

FMT = ChunkFormat(
    n_units=6, units_per_frame=1, unit_offset=0, frames_per_chunk=4, s0=6, s1=7, bos=8,
    silence_unit=0,
)  # fmt: skip
FMT2 = ChunkFormat(
    n_units=5, units_per_frame=2, unit_offset=3, frames_per_chunk=2, s0=0, s1=1, bos=2,
    silence_unit=0, silence_frame=(0, 4),
)  # fmt: skip


def chunk(fmt: ChunkFormat) -> st.SearchStrategy[list[Frame]]:
    frame = st.tuples(*[st.integers(0, 2)] * fmt.units_per_frame)
    return st.lists(frame, min_size=fmt.frames_per_chunk, max_size=fmt.frames_per_chunk)


def build(fmt: ChunkFormat, agent: list[list[Frame]], user: list[list[Frame]]) -> Timeline:
    """A closed timeline (one more agent chunk than user chunks), all of it cached."""
    tl = Timeline(fmt)
    for k, a in enumerate(agent):
        if k:
            tl.append_user(user[k - 1], real=k % 2 == 0)
        tl.append_agent(dedup(a, tl.prev_agent()))
    tl.cached = len(tl.tokens)
    return tl


@st.composite
def silenced(draw, fmt: ChunkFormat):  # type: ignore[no-untyped-def]
    agent = draw(st.lists(chunk(fmt), min_size=1, max_size=6))
    user = draw(st.lists(chunk(fmt), min_size=len(agent) - 1, max_size=len(agent) - 1))
    frames = len(agent) * fmt.frames_per_chunk
    first = draw(st.integers(0, frames - 1))
    end = draw(st.integers(first + 1, frames + 3))  # past the chunks made: left alone
    return agent, user, first, end


@settings(max_examples=300, deadline=None)
@given(data=st.data(), fmt=st.sampled_from([FMT, FMT2]))
def test_unheard_agent_frames_become_silence_and_the_rest_is_kept(
    data: st.DataObject, fmt: ChunkFormat
) -> None:
    agent, user, first, end = data.draw(silenced(fmt))
    tl = build(fmt, agent, user)
    before = list(tl.tokens)
    heard = [list(a) for a in tl.agent]
    cut = tl.silence_agent(first, end)
    n = fmt.frames_per_chunk
    want = [list(a) for a in heard]
    for f in range(first, min(end, len(agent) * n)):
        want[f // n][f % n] = fmt.silence
    prev, expected = fmt.silence, []
    for a in want:  # what the format keeps of it: interpolate(dedup(x))
        expected.append(interpolate(dedup(a, prev), prev, n))
        prev = a[-1]
    assert tl.agent == expected
    assert tl.user == user and tl.user_real == [k % 2 == 1 for k in range(len(user))]
    assert tl.tokens == format_timeline(fmt, tl.agent, tl.user)
    assert tl.tokens[:cut] == before[:cut] and tl.cached == cut
    if cut < min(len(before), len(tl.tokens)):
        assert tl.tokens[cut] != before[cut]  # the first token that differs
    assert tl.agent_start[-1] < len(tl.tokens) and tl.tokens[tl.agent_start[-1]] == fmt.s0


def test_silence_already_there_costs_no_rollback() -> None:
    sil = [FMT.silence] * 4
    tl = build(FMT, [[(1,)] * 4, sil, sil], [sil, sil])
    assert tl.silence_agent(4, 12) == len(tl.tokens) == tl.cached


def test_a_replaced_estimate_keeps_later_chunks() -> None:
    a = [[(1,), (1,), (2,), (2,)], [(3,)] * 4, [(4,)] * 4]
    u = [[(0,)] * 4, [(5,)] * 4]
    tl = build(FMT, a, u)
    tl.replace_user(0, [(2,)] * 4)
    assert tl.user == [[(2,)] * 4, [(5,)] * 4] and tl.user_real == [True, True]
    assert tl.tokens == format_timeline(FMT, tl.agent, tl.user)
