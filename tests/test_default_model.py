"""The committed default checkpoint: small, loadable offline, and trained (not random)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import model.engines.stepper as engine_module
from model.checkpoint import load_checkpoint, read_config
from model.engines.api import StepRequest
from model.engines.torch.engine import TorchEngine
from model.format import Frame
from model.sampling import SamplingParams
from model.training.synth import load_split, synth
from model.training.train import PRESETS, evaluate, heldout_windows
from tests.conftest import ROOT

DEFAULT = ROOT / "models" / "default"


def test_the_default_checkpoint_is_committed_small_and_loads() -> None:
    files = {p.name for p in DEFAULT.iterdir()}
    assert {"duplex.json", "config.json", "model.safetensors"} <= files
    assert "train_state.pt" not in files  # optimizer state stays out of the repository
    size = sum(p.stat().st_size for p in DEFAULT.iterdir())
    assert size <= 30 * 2**20, size
    config, llama = load_checkpoint(DEFAULT)
    assert config.sink_tokens < config.context_tokens
    assert config.description.startswith("duplex train:")  # not `duplex model init`
    assert sum(p.numel() for p in llama.parameters()) < 10_000_000


def test_the_default_model_predicts_unseen_dialogues_far_better_than_chance(
    tmp_path: Path,
) -> None:
    """Teacher-forced loss on freshly rendered held-out dialogues (unseen scripts, unseen
    user voice): chance is ln(vocab) ~ 6.9 nats; the trained model must be far below it."""
    config = read_config(DEFAULT)
    synth(tmp_path, config, DEFAULT, n_dialogues=20, seed=11, progress=False)
    held = load_split(tmp_path / "heldout.npz")[1]
    assert held
    _, llama = load_checkpoint(DEFAULT)
    windows = heldout_windows(held, config.chunk_format(), config.context_tokens)
    losses = evaluate(llama, windows, PRESETS["cpu-default"])
    chance = math.log(llama.config.vocab_size)
    assert losses["heldout_loss"] < chance - 2.0, losses
    # Timing tokens ([S0]/[S1]: does a speaker add frames, when does a chunk end) are what
    # turn-taking rests on: nearly certain for a trained model.
    assert losses["heldout_tags"] < 1.0, losses
    assert losses["heldout_agent"] < chance - 1.0, losses


@pytest.mark.parametrize("name", ["model.safetensors", "duplex.json", "loss.png"])
def test_the_training_record_is_committed(name: str) -> None:
    assert (DEFAULT / name).is_file()


def test_a_dead_conversation_gets_the_agent_to_speak_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller who says nothing: left alone, the default agent says nothing for seconds on
    end; with `speak_up_chunks` it speaks up at the first chunk after that many silent ones
    (made certain here), and nothing changes before it (the same draws: the session's random
    generator is where it would be without the option)."""
    monkeypatch.setattr(engine_module, "SPEAK_UP_P", 1.0)
    config, llama = load_checkpoint(DEFAULT)
    fmt = config.chunk_format()
    quiet = [fmt.silence] * fmt.frames_per_chunk

    def agent_chunks(seed: int, speak_up: int) -> tuple[list[list[Frame]], list[torch.Tensor]]:
        """The agent's chunks, and its generator's state after each step."""
        engine = TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=4)
        params = SamplingParams(temperature=0.6, seed=seed, speak_up_chunks=speak_up)
        engine.add_session("c", params)
        chunks, states = [], []
        for k in range(16):
            step = engine.step([StepRequest("c", real_user={k - 1: quiet} if k else {})])
            chunks.append(step["c"].frames)
            states.append(engine.sessions["c"].gen.get_state())
        return chunks, states

    for seed in range(4):
        (alone, alone_rng), (nudged, nudged_rng) = agent_chunks(seed, 0), agent_chunks(seed, 10)
        # chunk 10 is the first with 10 silent pairs before it
        assert nudged[:10] == alone[:10]
        assert all(torch.equal(a, b) for a, b in zip(alone_rng[:10], nudged_rng[:10], strict=True))
        assert not torch.equal(alone_rng[10], nudged_rng[10])  # its speak-or-not draw
        assert all(chunk == quiet for chunk in alone), seed  # left alone: 2.6 s of dead air
        assert nudged[10] != quiet


def test_a_response_asked_for_starts_the_agents_chunk_with_sound() -> None:
    """`StepRequest.prompt` (a Realtime `response.create`): the agent chunk of that step
    starts with a unit, where the default agent, left alone with a silent caller, says
    nothing; the steps before are as they were."""
    config, llama = load_checkpoint(DEFAULT)
    fmt = config.chunk_format()
    quiet = [fmt.silence] * fmt.frames_per_chunk

    def agent_chunks(seed: int, prompt_at: int | None) -> list[list[Frame]]:
        engine = TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=4)
        engine.add_session("c", SamplingParams(temperature=0.6, seed=seed))
        return [
            engine.step(
                [StepRequest("c", real_user={k - 1: quiet} if k else {}, prompt=k == prompt_at)]
            )["c"].frames
            for k in range(8)
        ]

    for seed in range(3):
        alone, asked = agent_chunks(seed, None), agent_chunks(seed, 5)
        assert asked[:5] == alone[:5] and all(chunk == quiet for chunk in alone), seed
        assert asked[5][0] != fmt.silence, seed


def test_a_prompted_chunk_never_starts_with_silence() -> None:
    """Prompted at every step, the agent talks and would often stop: the first frame of each
    chunk is still sound (the silence unit is not a start a response may have)."""
    config, llama = load_checkpoint(DEFAULT)
    fmt = config.chunk_format()
    quiet = [fmt.silence] * fmt.frames_per_chunk
    for seed in range(3):
        engine = TorchEngine(config, llama, max_sessions=1, max_rollback_chunks=4)
        engine.add_session("c", SamplingParams(temperature=0.6, seed=seed))
        for k in range(16):
            req = StepRequest("c", real_user={k - 1: quiet} if k else {}, prompt=True)
            assert engine.step([req])["c"].frames[0] != fmt.silence, (seed, k)
