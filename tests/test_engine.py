"""Decoder over slots, rollback, and the synchronous engine's bookkeeping."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, init_random_checkpoint, load_checkpoint, read_config
from model.engines.api import StepRequest
from model.engines.torch.decoder import SlotDecoder
from model.engines.torch.engine import TorchEngine
from model.format import dedup, format_timeline, parse_timeline
from model.sampling import SamplingParams
from model.timeline import Timeline
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def loaded(checkpoint: Path):  # type: ignore[no-untyped-def]
    return load_checkpoint(checkpoint)


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda k: f"K{k}")
def loaded_k(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A random-weight model with K units per frame (K codebooks): the default shape at K = 1,
    one narrow layer above (each frame costs K forwards)."""
    if request.param == 1:
        return request.getfixturevalue("loaded")
    path = tmp_path_factory.mktemp(f"ckpt-k{request.param}")
    init_random_checkpoint(path, seed=0, units_per_frame=request.param, layers=1, hidden=64)
    return load_checkpoint(path)


def reference_logits(llama, tokens: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return llama(torch.tensor([tokens])).logits[0, -1].float()


def test_slot_decoder_matches_transformers_on_ragged_batches(loaded) -> None:  # type: ignore[no-untyped-def]
    _, llama = loaded
    dec = SlotDecoder(llama)
    cache = dec.new_cache(max_slots=4, capacity=128, reserve=32)
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 1024, (n,), generator=gen).tolist() for n in (40, 23, 7)]
    for _ in seqs:
        cache.allocate()
    pos, last = [0, 0, 0], [None, None, None]
    rnd = random.Random(0)
    while any(p < len(s) for p, s in zip(pos, seqs, strict=True)):
        rows = []
        for i, s in enumerate(seqs):
            n = min(rnd.randint(0, 5), len(s) - pos[i])
            rows.append(s[pos[i] : pos[i] + n])
            pos[i] += n
        logits = dec.forward(cache, rows)
        for i, r in enumerate(rows):
            if r:
                last[i] = logits[i]
    for i, s in enumerate(seqs):
        torch.testing.assert_close(last[i], reference_logits(llama, s), atol=1e-4, rtol=1e-4)


def test_rollback_then_refeed_equals_fresh(loaded) -> None:  # type: ignore[no-untyped-def]
    _, llama = loaded
    dec = SlotDecoder(llama)
    cache = dec.new_cache(max_slots=2, capacity=128, reserve=16)
    cache.allocate()
    seq = list(range(100, 130))
    dec.forward(cache, [seq])
    cache.rollback(0, 20)  # drop 10 tokens, feed different ones
    other = list(range(500, 510))
    logits = dec.forward(cache, [other])
    torch.testing.assert_close(
        logits[0], reference_logits(llama, seq[:20] + other), atol=1e-4, rtol=1e-4
    )
    with pytest.raises(ValueError, match="reserve"):
        cache.rollback(0, 0)


def test_ring_cache_runs_past_capacity_with_flat_span(loaded) -> None:  # type: ignore[no-untyped-def]
    _, llama = loaded
    dec = SlotDecoder(llama)
    cache = dec.new_cache(max_slots=1, capacity=64, reserve=16)
    cache.allocate()
    for i in range(50):
        logits = dec.forward(cache, [[i % 1000, (i * 7) % 1000]])
        assert torch.isfinite(logits).all()
    assert cache.lengths[0] == 100
    plan = cache.plan_write([0], [1])
    mask = cache.attention_mask(plan)
    assert plan.span == 64
    assert int((mask == 0).sum()) == cache.window  # exactly the window, never more


def test_release_keeps_other_rows_intact(loaded) -> None:  # type: ignore[no-untyped-def]
    _, llama = loaded
    dec = SlotDecoder(llama)
    cache = dec.new_cache(max_slots=3, capacity=128, reserve=32)
    seqs = [list(range(10, 20)), list(range(30, 45)), list(range(60, 66))]
    for _ in seqs:
        cache.allocate()
    dec.forward(cache, seqs)
    assert cache.release(0) == 2  # the last row moves into row 0
    logits = dec.forward(cache, [[7], [8]])
    torch.testing.assert_close(
        logits[0], reference_logits(llama, seqs[2] + [7]), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        logits[1], reference_logits(llama, seqs[1] + [8]), atol=1e-4, rtol=1e-4
    )


def make_engine(loaded, sessions: int = 4, rollback: int = 3) -> TorchEngine:  # type: ignore[no-untyped-def]
    config, llama = loaded
    return TorchEngine(config, llama, max_sessions=sessions, max_rollback_chunks=rollback)


def assert_cache_holds_timeline(engine: TorchEngine, llama, sid: str) -> None:  # type: ignore[no-untyped-def]
    """The KV cache holds exactly the timeline: next-token logits match a fresh forward."""
    tl = engine.timeline(sid)
    row = engine.sessions[sid].row
    rows: list[list[int]] = [[] for _ in range(engine.cache.live)]
    rows[row] = tl.tokens[tl.cached :] + [engine.fmt.s1]
    logits = engine.decoder.forward(engine.cache, rows)
    torch.testing.assert_close(
        logits[row], reference_logits(llama, tl.tokens + [engine.fmt.s1]), atol=1e-4, rtol=1e-4
    )


def user_chunks(n: int, seed: int, k: int = 1) -> list[list[tuple[int, ...]]]:
    """n chunks of two random frames of k units, each held for two frames."""
    rnd = random.Random(seed)

    def frame() -> tuple[int, ...]:
        return tuple(rnd.randrange(1024) for _ in range(k))

    return [[frame()] * 2 + [frame()] * 2 for _ in range(n)]


def test_engine_estimates_then_replaces_and_cache_matches_timeline(loaded_k) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(loaded_k)
    _, llama = loaded_k
    k_units = engine.fmt.units_per_frame
    delays = {"a": 0, "b": 1, "c": 2}  # chunks of network delay
    audio = {sid: user_chunks(30, i, k_units) for i, sid in enumerate(delays)}
    for i, sid in enumerate(delays):
        engine.add_session(sid, SamplingParams(seed=i))
    replaced = dict.fromkeys(delays, 0)
    for k in range(25):
        reqs = []
        for sid, d in delays.items():
            j = k - 2 - d  # chunk k-2 completes just after step k-1 started
            reqs.append(StepRequest(sid, {j: audio[sid][j]} if j >= 0 else {}))
        results = engine.step(reqs)
        for sid, r in results.items():
            assert r.chunk == k
            assert len(r.frames) == engine.frames_per_chunk
            assert r.estimated == (k > 0)
            replaced[sid] += len(r.replaced)
    for sid, d in delays.items():
        tl = engine.timeline(sid)
        assert tl.tokens == format_timeline(engine.fmt, tl.agent, tl.user)
        agent, _ = parse_timeline(engine.fmt, tl.tokens)
        assert agent == tl.agent
        assert replaced[sid] == 25 - 2 - d
        assert all(tl.user_real[: 25 - 2 - d]) and not any(tl.user_real[25 - 2 - d :])
        assert_cache_holds_timeline(engine, llama, sid)


def test_a_right_estimate_costs_no_rollback(loaded_k) -> None:  # type: ignore[no-untyped-def]
    """Real audio equal to its estimate (silence, mostly) keeps the KV cache: no rollback, and
    the cache still holds exactly the timeline."""
    engine = make_engine(loaded_k)
    _, llama = loaded_k
    engine.add_session("s", SamplingParams(seed=3))
    last = engine.step([StepRequest("s")])["s"]
    for _ in range(6):
        r = engine.step([StepRequest("s", {last.chunk - 1: last.estimate} if last.chunk else {})])
        s = r["s"]
        if last.chunk:
            assert s.replaced == [last.chunk - 1] and s.rollback_tokens == 0
        last = s
    tl = engine.timeline("s")
    assert tl.tokens == format_timeline(engine.fmt, tl.agent, tl.user)
    assert_cache_holds_timeline(engine, llama, "s")


def test_an_estimate_keeps_the_frames_that_arrived(loaded_k) -> None:  # type: ignore[no-untyped-def]
    """The first frames of the newest chunk are written as they are and the last of them is
    held for the rest; when the whole chunk arrives, the cache rolls back no further than the
    held part, and the timeline and cache still agree."""
    engine = make_engine(loaded_k)
    _, llama = loaded_k
    engine.add_session("s", SamplingParams(temperature=1.0, top_k=0, seed=5))
    k_units = engine.fmt.units_per_frame
    audio = user_chunks(12, 7, k_units)
    n = engine.frames_per_chunk
    rollbacks = []
    for k in range(12):
        real = {k - 2: audio[k - 2]} if k >= 2 else {}
        p = k % n  # 0 .. n-1 frames of chunk k-1 have arrived
        partial = (k - 1, audio[k - 1][:p]) if k >= 1 else None
        r = engine.step([StepRequest("s", real, partial_user=partial)])["s"]
        rollbacks.append(r.rollback_tokens)
        if k >= 1:
            assert r.partial_frames == p
            assert r.estimate[:p] == audio[k - 1][:p]
            assert len(r.estimate) == n
            if p:
                assert r.estimate[p:] == [r.estimate[p - 1]] * (n - p)
    tl = engine.timeline("s")
    assert tl.tokens == format_timeline(engine.fmt, tl.agent, tl.user)
    # with n-1 frames kept, replacing the estimate re-feeds at most the last frame's units and
    # the agent chunk after it, never the kept frames
    for k in range(n - 1, 11, n):
        assert rollbacks[k + 1] <= k_units + (1 + n * k_units), (k, rollbacks)
    assert_cache_holds_timeline(engine, llama, "s")


def test_estimates_sample_at_most_estimate_units(loaded_k) -> None:  # type: ignore[no-untyped-def]
    """`estimate_units` counts frames (of K units each)."""
    config, llama = loaded_k
    engine = TorchEngine(config, llama, max_sessions=2, max_rollback_chunks=3, estimate_units=1)
    engine.add_session("s", SamplingParams(temperature=1.5, top_k=0, seed=2))
    audio = user_chunks(20, 4, config.units_per_frame)
    new_units = []
    for k in range(20):
        r = engine.step([StepRequest("s", {k - 2: audio[k - 2]} if k >= 2 else {})])["s"]
        if k >= 1:
            tl = engine.timeline("s")
            prev = tl.user[k - 2][-1] if k >= 2 else engine.fmt.silence
            new_units.append(len(dedup(r.estimate, prev)))
    assert max(new_units) == 1  # at 1.5 the model often wants more; one is all it gets
    tl = engine.timeline("s")
    assert tl.tokens == format_timeline(engine.fmt, tl.agent, tl.user)
    with pytest.raises(ValueError, match="estimate_units"):
        TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=3, estimate_units=-1)


def test_estimate_units_0_holds_the_last_real_frame(loaded_k) -> None:  # type: ignore[no-untyped-def]
    config, llama = loaded_k
    engine = TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=3, estimate_units=0)
    engine.add_session("s", SamplingParams(temperature=1.5, top_k=0, seed=2))
    audio = user_chunks(10, 4, config.units_per_frame)
    for k in range(10):
        r = engine.step([StepRequest("s", {k - 2: audio[k - 2]} if k >= 2 else {})])["s"]
        if k >= 2:
            assert r.estimate == [audio[k - 2][-1]] * engine.frames_per_chunk
    assert_cache_holds_timeline(engine, llama, "s")


def test_a_step_with_nothing_new_samples_after_the_last_token() -> None:
    """A silent agent's chunk ends at a tag, which is not written; with no user audio either,
    the next step has nothing to feed. Its first draw must still come from the logits after
    the timeline's last token (fed again), never from a row that was not fed."""
    config, llama = load_checkpoint(ROOT / "models" / "default")  # trained: silent when alone
    engine = TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=3)
    engine.add_session("s", SamplingParams(seed=0))
    nothing_pending = 0
    for _ in range(6):
        tl = engine.timeline("s")
        nothing_pending += tl.cached == len(tl.tokens)
        r = engine.step([StepRequest("s")])["s"]
        assert r.prefill_tokens >= 1
    assert nothing_pending >= 3
    assert_cache_holds_timeline(engine, llama, "s")


def test_a_partial_chunk_of_another_index_is_ignored(loaded) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(loaded)
    engine.add_session("s", SamplingParams(seed=1))
    engine.step([StepRequest("s")])
    frames = user_chunks(1, 3)[0][:3]
    r = engine.step([StepRequest("s", partial_user=(5, frames))])["s"]
    assert r.partial_frames == 0 and r.estimated


def test_engine_drops_audio_older_than_the_rollback_reserve(loaded_k) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(loaded_k, rollback=2)
    engine.add_session("s", SamplingParams(seed=0))
    for _ in range(6):
        engine.step([StepRequest("s")])
    chunk = user_chunks(1, 0, engine.fmt.units_per_frame)[0]
    r = engine.step([StepRequest("s", {1: chunk, 4: chunk})])
    assert r["s"].dropped == [1]
    assert r["s"].replaced == [4]


def test_engine_is_deterministic_per_seed_and_silent_steps_hold(loaded) -> None:  # type: ignore[no-untyped-def]
    outs = []
    for _ in range(2):
        engine = make_engine(loaded)
        engine.add_session("s", SamplingParams(temperature=0.9, top_k=50, seed=42))
        outs.append([engine.step([StepRequest("s")])["s"].frames for _ in range(8)])
        silent = engine.step([StepRequest("s", silent=True)])["s"]
        assert silent.frames == [outs[-1][-1][-1]] * engine.frames_per_chunk
    assert outs[0] == outs[1]


def test_a_retune_takes_effect_at_the_next_step(loaded) -> None:  # type: ignore[no-untyped-def]
    """A caller's mid-call change: the next draws use the new values (two seeds retuned to
    greedy draw alike, where they differed before); the random stream goes on unless the
    seed changes."""
    Frames = list[list[tuple[int, ...]]]

    def run(seed: int, retune: SamplingParams | None, at: int = 3) -> Frames:
        engine = make_engine(loaded)
        engine.add_session("s", SamplingParams(temperature=0.9, top_k=50, seed=seed))
        frames = [engine.step([StepRequest("s")])["s"].frames for _ in range(at)]
        if retune is not None:
            engine.retune("s", retune)
        return frames + [engine.step([StepRequest("s")])["s"].frames for _ in range(6)]

    def greedy(seed: int) -> SamplingParams:
        return SamplingParams(temperature=0.0, top_k=0, seed=seed)

    assert run(1, None, at=0) != run(2, None, at=0)
    assert run(1, greedy(1), at=0) == run(2, greedy(9), at=0)
    same_seed = run(42, SamplingParams(temperature=0.9, top_k=50, seed=42))
    assert same_seed == run(42, None)  # nothing changed: the stream goes on
    reseeded = run(42, SamplingParams(temperature=0.9, top_k=50, seed=7))
    assert reseeded[:3] == same_seed[:3] and reseeded[3:] != same_seed[3:]


def test_greedy_sampling_respects_the_format(loaded) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(loaded)
    engine.add_session("g", SamplingParams(temperature=0.0, top_k=0, seed=0))
    for _ in range(10):
        engine.step([StepRequest("g")])
    tl = engine.timeline("g")
    assert tl.tokens == format_timeline(engine.fmt, tl.agent, tl.user)


def test_bad_checkpoints_give_one_clear_error(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="duplex.json is missing"):
        read_config(tmp_path)
    (tmp_path / "duplex.json").write_text(
        (checkpoint / "duplex.json").read_text().replace('"chunk_ms": 160.0', '"chunk_ms": 150.0')
    )
    with pytest.raises(CheckpointError, match="multiple of the codec's frame_ms"):
        read_config(tmp_path)


def test_sink_and_window_match_transformers_with_virtual_positions(tmp_path: Path) -> None:
    """One layer makes K/V depend only on token and position, so the cache's view (sink
    re-rotated before the window, ring at absolute positions) has an exact reference."""
    from model.checkpoint import init_random_checkpoint

    init_random_checkpoint(tmp_path, seed=3, layers=1, hidden=64, heads=2, kv_heads=1)
    _, llama = load_checkpoint(tmp_path)
    dec = SlotDecoder(llama)
    cache = dec.new_cache(max_slots=2, capacity=44, reserve=8, sink=4)  # ring 40, window 32
    cache.allocate()
    cache.allocate()
    gen = torch.Generator().manual_seed(1)
    seq = torch.randint(0, 1024, (150,), generator=gen).tolist()
    done = 0
    for n in [3, 1, 5, 2, 7, 1, 1, 4] * 20:
        if done + n > len(seq) - 1:
            break
        # row 0 rides along only sometimes: row 1 alone is a gathered (not a view) forward
        dec.forward(cache, [[done % 1000] if n % 2 else [], seq[done : done + n]])
        done += n
    assert cache.lengths[1] == done > cache.capacity
    logits = dec.forward(cache, [[], [seq[done]]])[1]
    q = done  # the query's position
    shift = cache.sink_shift[1]
    assert shift > 0
    window = list(range(q - cache.window + 1, q + 1))
    tokens = seq[:4] + [seq[p] for p in window]
    positions = [shift + j for j in range(4)] + window
    with torch.inference_mode():
        ref = llama(torch.tensor([tokens]), position_ids=torch.tensor([positions])).logits[0, -1]
    torch.testing.assert_close(logits, ref.float(), atol=1e-4, rtol=1e-4)


def test_a_long_backlog_is_fed_in_pieces_the_ring_can_hold(loaded_k) -> None:  # type: ignore[no-untyped-def]
    """Many skipped (silent) ticks leave more pending tokens than one ring write may take."""
    _, llama = loaded_k
    engine = make_engine(loaded_k, sessions=2)
    engine.add_session("busy", SamplingParams(seed=0))
    engine.add_session("calm", SamplingParams(seed=1))
    audio = user_chunks(60, 5, engine.fmt.units_per_frame)
    for k in range(40):  # real audio, no decode: tokens pile up
        engine.step([StepRequest("busy", {k - 1: audio[k - 1]} if k else {}, silent=True)])
    tl = engine.timeline("busy")
    assert len(tl.tokens) - tl.cached > engine.max_forward_tokens
    engine.step([StepRequest("busy", {39: audio[39]}), StepRequest("calm")])
    assert_cache_holds_timeline(engine, llama, "busy")


def test_any_llama_with_an_extended_vocabulary_loads(tmp_path: Path) -> None:
    """Units and tags may live anywhere in a bigger (e.g. text + speech) vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from model.checkpoint import DUPLEX_JSON, DuplexConfig, SpecialTokens

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1400, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    duplex = DuplexConfig(
        codec={"type": "codec2-units", "codebook": "builtin:codec2_units_1024"},
        codec_sample_rate=8000, frame_ms=40, chunk_ms=160, n_units=1024, unit_offset=300,
        special_tokens=SpecialTokens(S0=7, S1=8, BOS=1), context_tokens=512, sink_tokens=16,
    )  # fmt: skip
    (tmp_path / DUPLEX_JSON).write_text(duplex.model_dump_json())
    config, llama = load_checkpoint(tmp_path)
    engine = TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=2)
    engine.add_session("x", SamplingParams(seed=0))
    for k in range(6):
        engine.step([StepRequest("x", {k - 2: [(5,), (5,), (900,), (17,)]} if k >= 2 else {})])
    tl = engine.timeline("x")
    assert tl.tokens == format_timeline(engine.fmt, tl.agent, tl.user)
    units = [t for t in tl.tokens if t not in (1, 7, 8)]
    assert units and all(300 <= t < 1324 for t in units)
    bad = duplex.model_copy(update={"unit_offset": 500})  # units would run past the vocab
    (tmp_path / DUPLEX_JSON).write_text(bad.model_dump_json())
    with pytest.raises(CheckpointError, match="vocab is 1400"):
        load_checkpoint(tmp_path)


def test_silent_chunks_counts_the_trailing_silence_of_both_sides(loaded) -> None:  # type: ignore[no-untyped-def]
    config, _ = loaded
    fmt = config.chunk_format()
    tl = Timeline(fmt)
    sil, sound = [fmt.silence] * fmt.frames_per_chunk, [(5,)] * fmt.frames_per_chunk
    assert tl.silent_chunks(10) == 0
    for agent, user in [(sil, sil), (sound, sil), (sil, sil), (sil, sil), (sil, sil)]:
        tl.append_agent(dedup(agent, tl.prev_agent()))
        tl.append_user(user, real=True)
    assert tl.silent_chunks(10) == 3
    assert tl.silent_chunks(2) == 2
    tl.append_agent([])
    tl.append_user([fmt.silence, (7,), fmt.silence, fmt.silence], real=True)  # a click
    assert tl.silent_chunks(10) == 0


def test_the_start_bias_reaches_only_a_start_after_the_agents_silence(
    loaded_k, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Each step's first agent draw (codebook 0 of its first frame) gets the bias when the
    agent's last frame was silence; a draw that goes on speaking, and every later draw of a
    chunk, gets none."""
    import model.engines.stepper

    biases: list[list[float]] = []
    real_sample = model.engines.stepper.sample

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        biases.append(list(args[6]))
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(model.engines.stepper, "sample", spy)
    engine = make_engine(loaded_k)
    engine.add_session("b", SamplingParams(temperature=1.0, seed=2, start_bias=1.5))
    tl = engine.timeline("b")
    silence = engine.fmt.silence
    seen = set()
    for k in range(24):
        was_silent = tl.prev_agent() == silence
        biases.clear()
        real = {k - 1: user_chunks(1, k, engine.fmt.units_per_frame)[0]} if k else {}
        engine.step([StepRequest("b", real)])
        assert biases[0] == [1.5 if was_silent else 0.0]
        assert all(b == [0.0] for b in biases[1:])
        seen.add(was_silent)
    assert seen == {True, False}  # both kinds of step were met


def test_model_init_writes_k_codebooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`duplex model init --units-per-frame K`: K codebooks of units, then the three tags, and
    the default codec entry."""
    from server.cli import main

    out = tmp_path / "k3"
    argv = ["model", "init", "--out", str(out), "--layers", "1", "--hidden", "64"]
    assert main([*argv, "--units-per-frame", "3"]) == 0
    config, llama = load_checkpoint(out)
    default = read_config(ROOT / "models" / "default")
    assert config.units_per_frame == 3 and config.codec == default.codec
    tags = config.special_tokens
    assert (tags.S0, tags.S1, tags.BOS) == (3 * 1024, 3 * 1024 + 1, 3 * 1024 + 2)
    assert llama.config.vocab_size == 3 * 1024 + 3
    assert main([*argv, "--force"]) == 0  # the default stays one unit a frame
    assert read_config(out).units_per_frame == 1
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "k0"), "--units-per-frame", "0"]) == 2
    assert "--units-per-frame must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "k0").exists()


def test_unheard_agent_audio_becomes_silence_within_reach(loaded_k) -> None:  # type: ignore[no-untyped-def]
    """A playback acknowledgement at an interruption: the agent frames the caller never
    heard are silence in the context (and the KV cache) as far back as a rollback reaches;
    older ones are counted, not changed."""
    engine = make_engine(loaded_k, rollback=2)
    _, llama = loaded_k
    n = engine.frames_per_chunk
    engine.add_session("s", SamplingParams(seed=0, temperature=1.5))
    audio = user_chunks(12, 1, engine.fmt.units_per_frame)
    for k in range(10):
        engine.step([StepRequest("s", {k - 1: audio[k - 1]} if k else {})])
    tl = engine.timeline("s")
    old_agent = [list(a) for a in tl.agent]  # chunks 0..9; user chunks 0..8
    # unheard from the middle of agent chunk 4 on: chunks 7.. are within reach (user 9 - 2)
    r = engine.step([StepRequest("s", {9: audio[9]}, unheard=[(4 * n + 1, 10 * n)])])["s"]
    assert r.unheard_beyond_reach == 3 * n - 1 and r.unheard_silenced == 3 * n
    assert tl.agent[:7] == old_agent[:7]
    assert all(frame == engine.fmt.silence for chunk in tl.agent[7:10] for frame in chunk)
    assert tl.tokens == format_timeline(engine.fmt, tl.agent, tl.user)
    assert_cache_holds_timeline(engine, llama, "s")


def test_a_call_moved_to_another_engine_goes_on_as_it_would_have(loaded) -> None:  # type: ignore[no-untyped-def]
    """`export` then `adopt` (moving a call off a draining server): the other engine
    re-prefills the conversation (its cache then holds the timeline) and, with the same
    random stream, draws the same next chunks as the first engine does."""
    _, llama = loaded
    a, b = make_engine(loaded), make_engine(loaded)
    a.add_session("s", SamplingParams(seed=3, temperature=1.0))
    audio = user_chunks(14, 2)
    for k in range(8):
        a.step([StepRequest("s", {k - 2: audio[k - 2]} if k >= 2 else {})])
    b.adopt("s", a.export("s"))
    assert b.timeline("s").tokens == a.timeline("s").tokens
    for k in range(8, 12):
        req = StepRequest("s", {k - 2: audio[k - 2]})
        ra, rb = a.step([req])["s"], b.step([req])["s"]
        assert (ra.chunk, ra.frames, ra.replaced) == (rb.chunk, rb.frames, rb.replaced)
    assert_cache_holds_timeline(b, llama, "s")
