"""The chunk format: parse(format(x)) == interpolate(dedup(x)), chunk geometry, tags."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.format import (
    ChunkFormat,
    Frame,
    dedup,
    format_timeline,
    interpolate,
    parse_timeline,
)

FMT = ChunkFormat(
    n_units=6, units_per_frame=1, unit_offset=0, frames_per_chunk=4, s0=6, s1=7, bos=8,
    silence_unit=0,
)  # fmt: skip
FMT2 = ChunkFormat(
    n_units=5, units_per_frame=2, unit_offset=3, frames_per_chunk=3, s0=0, s1=1, bos=2,
    silence_unit=0,
)  # fmt: skip
FMT4 = ChunkFormat(
    n_units=3, units_per_frame=4, unit_offset=0, frames_per_chunk=2, s0=12, s1=13, bos=14,
    silence_unit=1,
)  # fmt: skip
# a neural codec's silence: another unit in each codebook (Mimi's digital silence)
FMT4S = ChunkFormat(
    n_units=3, units_per_frame=4, unit_offset=0, frames_per_chunk=2, s0=12, s1=13, bos=14,
    silence_unit=2, silence_frame=(2, 0, 1, 2),
)  # fmt: skip
FORMATS = pytest.mark.parametrize(
    "fmt", [FMT, FMT2, FMT4, FMT4S], ids=["K1", "K2", "K4", "K4-silence-frame"]
)


def chunks(fmt: ChunkFormat, n: int | None = None) -> st.SearchStrategy[list[list[Frame]]]:
    # few distinct units, so runs and cross-chunk repeats are common
    frame = st.tuples(*[st.integers(0, 2)] * fmt.units_per_frame)
    chunk = st.lists(frame, min_size=fmt.frames_per_chunk, max_size=fmt.frames_per_chunk)
    if n is None:
        return st.lists(chunk, min_size=1, max_size=8)
    return st.lists(chunk, min_size=n, max_size=n)


def expected(fmt: ChunkFormat, timeline: list[list[Frame]]) -> list[list[Frame]]:
    """interpolate(dedup(x)) chunk by chunk, dedup carried across chunk borders."""
    out, prev = [], fmt.silence
    for chunk in timeline:
        out.append(interpolate(dedup(chunk, prev), prev, fmt.frames_per_chunk))
        prev = chunk[-1]
    return out


@st.composite
def conversations(draw, fmt: ChunkFormat):  # type: ignore[no-untyped-def]
    agent = draw(chunks(fmt))
    n_user = draw(st.sampled_from([len(agent) - 1, len(agent)]))
    user = draw(chunks(fmt, n_user))
    return agent, user


@FORMATS
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_parse_of_format_is_interpolated_dedup(fmt: ChunkFormat, data: st.DataObject) -> None:
    agent, user = data.draw(conversations(fmt))
    tokens = format_timeline(fmt, agent, user)
    got_agent, got_user = parse_timeline(fmt, tokens)
    assert got_agent == expected(fmt, agent)
    want_user = expected(fmt, user)
    # a final user chunk that adds no new frame writes no token: it cannot be seen
    if len(user) == len(agent) and not dedup(
        user[-1], user[-2][-1] if len(user) > 1 else fmt.silence
    ):
        want_user = want_user[:-1]
    assert got_user == want_user
    for chunk in got_agent + got_user:
        assert len(chunk) == fmt.frames_per_chunk


@FORMATS
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_chunk_starts_with_s0_and_s1_only_with_new_units(
    fmt: ChunkFormat, data: st.DataObject
) -> None:
    agent, user = data.draw(conversations(fmt))
    tokens = format_timeline(fmt, agent, user)
    assert tokens[0] == fmt.bos
    assert tokens.count(fmt.s0) == len(agent)
    assert tokens[1] == fmt.s0
    k, since_tag = fmt.units_per_frame, 0
    for i, tok in enumerate(tokens):
        if tok == fmt.s1:  # [S1] is always followed by at least one unit
            assert i + 1 < len(tokens) and tokens[i + 1] in fmt.unit_token_range
        if tok in fmt.unit_token_range:  # whole frames, codebook 0 first
            assert fmt.token_book(tok) == since_tag % k
            since_tag += 1
        else:
            assert since_tag % k == 0
            since_tag = 0
    assert since_tag % k == 0
    # no frame repeats its predecessor of the same speaker (dedup across borders)
    units = [t for t in tokens if t in fmt.unit_token_range]
    assert len(units) <= k * sum(len(c) for c in agent + user)


def test_paper_example() -> None:
    """syncllm-format.md: chunk 2 has no [S1] when the user repeats unit 89."""
    fmt = ChunkFormat(
        n_units=500, units_per_frame=1, unit_offset=0, frames_per_chunk=4, s0=500, s1=501,
        bos=502, silence_unit=0,
    )  # fmt: skip
    agent = [[(75,)] * 4, [(17,), (17,), (338,), (338,)]]
    user = [[(89,)] * 4, [(89,)] * 4]
    tokens = format_timeline(fmt, agent, user)
    assert tokens == [502, 500, 75, 501, 89, 500, 17, 338]


def test_interpolation_spreads_remainder_from_the_front() -> None:
    assert interpolate([(1,), (2,), (3,)], (0,), 4) == [(1,), (1,), (2,), (3,)]
    assert interpolate([], (5,), 4) == [(5,)] * 4
    assert interpolate([(1,), (2,)], (0,), 5) == [(1,), (1,), (1,), (2,), (2,)]
    with pytest.raises(ValueError, match="do not fit"):
        interpolate([(1,)] * 5, (0,), 4)


def test_run_lengths_inside_a_chunk_are_not_kept() -> None:
    """decisions.md §5: [a,a,a,b] comes back as [a,a,b,b]."""
    a, b = (1,), (2,)
    tokens = format_timeline(FMT, [[a, a, a, b]], [])
    assert parse_timeline(FMT, tokens)[0] == [[a, a, b, b]]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([], "starts with"),
        ([8, 1], "expected \\[S0\\]"),
        ([8, 6, 1, 7], "followed by no unit"),
        ([8, 6, 1, 2, 3, 4, 5], "do not fit"),
        ([8, 6, 8], "BOS"),
    ],
)
def test_parse_rejects_malformed(tokens: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_timeline(FMT, tokens)


def test_frame_tokens_check_ranges() -> None:
    with pytest.raises(ValueError, match="out of range"):
        FMT.frame_tokens((6,))
    with pytest.raises(ValueError, match="units, expected"):
        FMT2.frame_tokens((1,))
    assert FMT2.frame_tokens((1, 4)) == [3 + 1, 3 + 5 + 4]
    assert FMT4.frame_tokens((0, 1, 2, 0)) == [0, 3 + 1, 6 + 2, 9 + 0]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([3 + 1], "whole 2-unit frames"),  # a frame cut short
        ([3 + 5 + 1, 3 + 1], "from codebook 1"),  # codebook 1 first
        ([3 + 1, 3 + 2], "from codebook 0"),  # two of codebook 0
    ],
)
def test_frames_from_tokens_wants_whole_frames_in_codebook_order(
    tokens: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FMT2.frames_from_tokens(tokens)
    with pytest.raises(ValueError, match=message):  # inside a timeline: [BOS] [S0] ...
        parse_timeline(FMT2, [FMT2.bos, FMT2.s0, *tokens])


def test_the_silence_frame_is_one_unit_per_codebook() -> None:
    """Both speakers start from the silence frame: a silent opening costs no unit token, and
    a frame of the default silence unit in every codebook is sound like any other."""
    assert FMT4.silence == (1, 1, 1, 1) and FMT4S.silence == (2, 0, 1, 2)
    quiet = [[FMT4S.silence] * 2] * 3
    assert format_timeline(FMT4S, quiet, quiet) == [FMT4S.bos] + [FMT4S.s0] * 3
    other = [[(2, 2, 2, 2)] * 2]
    assert format_timeline(FMT4S, other, []) == [FMT4S.bos, FMT4S.s0, 2, 3 + 2, 6 + 2, 9 + 2]
    with pytest.raises(ValueError, match="units, expected 4"):
        ChunkFormat(3, 4, 0, 2, s0=12, s1=13, bos=14, silence_unit=0, silence_frame=(0, 1))
    with pytest.raises(ValueError, match="out of range"):
        ChunkFormat(3, 4, 0, 2, s0=12, s1=13, bos=14, silence_unit=0, silence_frame=(0, 1, 2, 3))
