"""Batched constrained sampling: masks, top-k, temperature, per-session seeds."""

from __future__ import annotations

import math

import pytest
import torch

from model.checkpoint import init_random_checkpoint, load_checkpoint
from model.engines.api import StepRequest
from model.engines.torch.engine import TorchEngine
from model.format import ChunkFormat, format_timeline
from model.sampling import SamplingParams, TokenMasks, sample


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_only_allowed_tokens_are_drawn() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    allowed = torch.zeros(3, 50, dtype=torch.bool)
    allowed[0, [3, 7]] = True
    allowed[1, 10:20] = True
    allowed[2, 49] = True
    params = [SamplingParams(temperature=1.5, top_k=0, seed=0)] * 3
    g = gens(1, 2, 3)
    for _ in range(200):
        a, b, c = sample(logits, allowed, params, g)
        assert a in (3, 7) and 10 <= b < 20 and c == 49


def test_temperature_zero_and_top_k_one_are_greedy_over_the_allowed() -> None:
    logits = torch.tensor([[5.0, 1.0, 4.0, 3.0]] * 2)
    allowed = torch.tensor([[False, True, True, True]] * 2)
    params = [SamplingParams(temperature=0.0, top_k=0), SamplingParams(temperature=2.0, top_k=1)]
    assert sample(logits, allowed, params, gens(0, 1)) == [2, 2]


def test_the_distribution_follows_the_softmax() -> None:
    logits = torch.tensor([[0.0, math.log(3.0), 9.0]])
    allowed = torch.tensor([[True, True, False]])
    g = gens(5)
    draws = [sample(logits, allowed, [SamplingParams(1.0, 0)], g)[0] for _ in range(4000)]
    assert draws.count(1) / len(draws) == pytest.approx(0.75, abs=0.03)
    top2 = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = gens(6)
    drawn = {sample(top2, torch.ones(1, 4, dtype=torch.bool), [SamplingParams(1.0, 2)], g)[0]
             for _ in range(300)}  # fmt: skip
    assert drawn == {2, 3}


def test_a_seeded_row_draws_the_same_whatever_shares_the_batch() -> None:
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    allowed = torch.ones(4, 30, dtype=torch.bool)
    params = [SamplingParams(0.9, 10)] * 4
    alone = sample(logits[2:3], allowed[2:3], params[:1], gens(42))[0]
    together = sample(logits, allowed, params, gens(7, 8, 42, 9))[2]
    assert together == alone


def test_a_turn_temperature_keeps_speak_or_not_at_its_own_temperature() -> None:
    """Half the mass on one tag, half spread over 100 units: a flat 0.5 temperature all but
    never picks a unit; with the turn temperature at 1 units come half the time, and which
    unit is still drawn at 0.5 (the favoured unit wins more often than at 1)."""
    vocab = 101
    units = torch.zeros(vocab, dtype=torch.bool)
    units[:100] = True
    probs = torch.full((vocab,), 0.5 / 100)
    probs[7] = 0.5 / 100 * 5  # one unit favoured
    probs[:100] *= 0.5 / float(probs[:100].sum())
    probs[100] = 0.5  # the tag
    logits = probs.log()[None, :]
    allowed = torch.ones(1, vocab, dtype=torch.bool)

    def draws(params: SamplingParams, n: int = 3000) -> list[int]:
        g = gens(11)
        return [sample(logits, allowed, [params], g, units)[0] for _ in range(n)]

    flat = draws(SamplingParams(temperature=0.5, top_k=0))
    split = draws(SamplingParams(temperature=0.5, top_k=0, turn_temperature=1.0))
    plain = draws(SamplingParams(temperature=1.0, top_k=0))
    assert sum(t < 100 for t in flat) / len(flat) < 0.02
    assert sum(t < 100 for t in split) / len(split) == pytest.approx(0.5, abs=0.04)
    spoken = [t for t in split if t < 100]
    assert spoken.count(7) / len(spoken) > 2 * [t for t in plain if t < 100].count(7) / sum(
        t < 100 for t in plain
    )
    logits[0, 100] = math.log(0.6)  # the tag now outweighs all units together (0.5)
    greedy = draws(SamplingParams(temperature=1.0, top_k=0, turn_temperature=0.0), n=50)
    assert set(greedy) == {100}  # a turn temperature of 0 takes the likelier kind
    with pytest.raises(ValueError, match="turn_temperature"):
        SamplingParams(turn_temperature=-1.0)
    with pytest.raises(ValueError, match="unit mask"):
        sample(logits, allowed, [SamplingParams(turn_temperature=1.0)], gens(0))


def test_a_speak_floor_raises_the_chance_of_sound_to_it_and_no_further() -> None:
    """The tag holds nearly all the mass: without a floor a unit all but never comes; with a
    floor of 1/4 a quarter of the draws are units; a floor below the model's own chance (at
    the row's temperature) changes nothing in that chance."""
    vocab = 11
    units = torch.zeros(vocab, dtype=torch.bool)
    units[:10] = True
    logits = torch.zeros(1, vocab)
    logits[0, 10] = 12.0
    allowed = torch.ones(1, vocab, dtype=torch.bool)

    def unit_share(floor: float, params: SamplingParams, n: int = 3000) -> float:
        g = gens(3)
        drawn = [sample(logits, allowed, [params], g, units, [floor])[0] for _ in range(n)]
        return sum(t < 10 for t in drawn) / n

    flat = SamplingParams(temperature=0.6, top_k=0)
    assert unit_share(0.0, flat) < 0.01
    assert unit_share(0.25, flat) == pytest.approx(0.25, abs=0.03)
    logits[0, 10] = math.log(10.0)  # tag and units even: P(unit) is 1/2 at temperature 1
    even = SamplingParams(temperature=1.0, top_k=0, turn_temperature=1.0)
    assert unit_share(0.25, even) == pytest.approx(0.5, abs=0.04)
    with pytest.raises(ValueError, match="speak_up_chunks"):
        SamplingParams(speak_up_chunks=-1)


def test_a_speak_floor_leaves_other_rows_and_the_allowed_set_alone() -> None:
    """A row without a floor draws as it would alone, next to one with a floor; a floored
    row that may not make sound (no unit allowed) still draws a tag."""
    vocab = 11
    units = torch.zeros(vocab, dtype=torch.bool)
    units[:10] = True
    logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(4))
    allowed = torch.ones(2, vocab, dtype=torch.bool)
    allowed[1, :10] = False  # row 1: only the tag
    params = [SamplingParams(0.7, 0)] * 2
    alone_g, pair_g = gens(5), gens(5, 6)
    for _ in range(200):
        alone = sample(logits[:1], allowed[:1], params[:1], alone_g, units, [0.0])[0]
        plain, floored = sample(logits, allowed, params, pair_g, units, [0.0, 0.9])
        assert plain == alone and floored == 10


def test_a_start_bias_moves_the_odds_of_sound() -> None:
    """Units hold 0.3 of the mass: at turn temperature 0 the tag always wins; a bias of 1
    (units win above 1 / (1 + e) = 0.27) makes every draw a unit, a bias of -1 leaves the
    tag; at turn temperature 1 a bias of log(7/3) makes sound and silence even."""
    vocab = 11
    units = torch.zeros(vocab, dtype=torch.bool)
    units[:10] = True
    logits = torch.full((1, vocab), math.log(0.03))
    logits[0, 10] = math.log(0.7)
    allowed = torch.ones(1, vocab, dtype=torch.bool)

    def unit_share(params: SamplingParams, bias: float, n: int = 2000) -> float:
        g = gens(8)
        drawn = [sample(logits, allowed, [params], g, units, None, [bias])[0] for _ in range(n)]
        return sum(t < 10 for t in drawn) / n

    argmax = SamplingParams(temperature=0.6, top_k=0, turn_temperature=0.0)
    assert unit_share(argmax, 0.0) == 0.0
    assert unit_share(argmax, 1.0) == 1.0
    assert unit_share(argmax, -1.0) == 0.0
    split = SamplingParams(temperature=1.0, top_k=0, turn_temperature=1.0)
    assert unit_share(split, 0.0) == pytest.approx(0.3, abs=0.03)
    assert unit_share(split, math.log(7 / 3)) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="start_bias"):
        SamplingParams(start_bias=math.inf)


FMT2 = ChunkFormat(
    n_units=3, units_per_frame=2, unit_offset=0, frames_per_chunk=4, s0=6, s1=7, bos=8,
    silence_unit=0,
)  # fmt: skip


def test_a_frames_units_come_in_codebook_order_and_never_repeat_the_frame_before() -> None:
    """K = 2: a frame's first unit is codebook 0's (or, where a frame starts, a tag), its
    second codebook 1's; the second never completes a copy of the previous frame, even where
    the logits want nothing else."""
    masks = TokenMasks(FMT2, vocab_size=9)
    book0, book1 = {0, 1, 2}, {3, 4, 5}

    def allowed(mask: torch.Tensor) -> set[int]:
        return set(torch.nonzero(mask).flatten().tolist())

    assert allowed(masks.next_unit([], (1, 2), FMT2.s0, FMT2.s1)) == book0 | {6, 7}
    assert allowed(masks.next_unit([1], (1, 2), FMT2.s0, FMT2.s1)) == book1 - {3 + 2}
    assert allowed(masks.next_unit([0], (1, 2))) == book1  # another frame already
    assert allowed(masks.units) == book0 | book1
    assert [allowed(m) for m in masks.silence] == [{0}, {3}]
    logits = torch.full((1, 9), -20.0)
    logits[0, 3 + 2] = 20.0  # the model all but insists on repeating (1, 2)
    mask = masks.next_unit([1], (1, 2))[None]
    g = gens(0)
    drawn = {sample(logits, mask, [SamplingParams(1.0, 0)], g)[0] for _ in range(50)}
    assert drawn <= {3, 4} and drawn


@pytest.fixture(scope="module", params=[2, 4], ids=lambda k: f"K{k}")
def k_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A random-weight model with K codebooks of only 2 units: a drawn frame would repeat
    the one before it often (1 in 2^K) if the masks let it."""
    path = tmp_path_factory.mktemp(f"k{request.param}")
    init_random_checkpoint(
        path, seed=1, n_units=2, units_per_frame=request.param, layers=1, hidden=64
    )
    return load_checkpoint(path)


def test_drawn_chunks_are_whole_frames_in_codebook_order_that_never_repeat(k_model) -> None:  # type: ignore[no-untyped-def]
    """Every chunk the engine draws at K > 1, the agent's and the user's estimates: its units
    parse back to whole frames, each unit from its place's codebook, a tag only where a frame
    starts, and no frame equal to the same speaker's frame before it."""
    config, llama = k_model
    fmt = config.chunk_format()
    k = fmt.units_per_frame
    engine = TorchEngine(config, llama, max_sessions=2, max_rollback_chunks=3)
    for seed in range(2):
        engine.add_session(f"s{seed}", SamplingParams(temperature=1.5, top_k=0, seed=seed))
    for _ in range(24):
        engine.step([StepRequest(sid) for sid in engine.sessions])
    for sid in engine.sessions:
        tl = engine.timeline(sid)
        prev = {fmt.s0: fmt.silence, fmt.s1: fmt.silence}
        tags = [i for i, t in enumerate(tl.tokens) if t not in fmt.unit_token_range]
        frames = 0
        for start, end in zip(tags, tags[1:] + [len(tl.tokens)], strict=True):
            units = tl.tokens[start + 1 : end]
            assert len(units) % k == 0, "a tag inside a frame"
            assert [fmt.token_book(t) for t in units] == [i % k for i in range(len(units))]
            for frame in fmt.frames_from_tokens(units):
                assert frame != prev[tl.tokens[start]], "a frame repeats the one before"
                prev[tl.tokens[start]] = frame
                frames += 1
        assert frames >= 25  # it made sound: the checks had something to check
        assert tl.tokens == format_timeline(fmt, tl.agent, tl.user)
        assert all(len(f) == k for chunk in tl.agent + tl.user for f in chunk)
