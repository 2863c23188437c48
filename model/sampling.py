"""Constrained sampling: every step draws from the tokens the chunk format allows there.

With a `turn_temperature`, a draw is made in two parts: first whether the next token is a unit
(the speaker goes on making sound) or a speaker tag (the chunk ends: the speaker holds what it
had, silence most often), from the two kinds' total probabilities at the turn temperature;
then which token of that kind, at `temperature`. One flat temperature below 1 over ~1024 unit
tokens against one or two tags takes probability from the side whose mass is spread over
many tokens, so it biases every agent chunk towards not starting to speak; the split keeps
"say what" sharp without making "speak or not" timid. (Whether an estimated user chunk adds
anything, `[S1]` or `[S0]`, is a choice between two tags and stays at `temperature`.)

A `speak_floor` makes a row's chance to make sound at least that much: the engine asks for it
when a conversation has gone silent on both sides for `speak_up_chunks` (by default longer
than any silence in the training data), where the model, left alone, mostly stays silent.
Such a row draws in two parts as above (at `turn_temperature`, else `temperature`), the unit
side raised to the floor.

A `start_bias` moves the decision to start speaking: at the first draw of a chunk after the
agent's silence, it is added to the log-odds of a unit (sound) against a tag (silence goes
on) before the turn temperature. At a low turn temperature the agent then starts once the
model finds speaking likelier than 1 / (1 + e^bias), not 1/2: sooner after the caller's last
word. Only the first draw after the agent's silence moves (a start, or going on after a
pause of its own); once the agent makes sound, how long it goes on is the model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.format import ChunkFormat, Frame


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 250
    seed: int = 0
    turn_temperature: float | None = None  # None: one flat draw at `temperature`
    speak_up_chunks: int = 0  # after this many chunks of silence on both sides, speak up (0: never)
    # a caller who starts talking over the agent and makes this many frames of sound silences
    # it until the caller pauses (0: the model alone decides; model/barge_in.py)
    barge_in_frames: int = 0
    # added to the log-odds of making sound at the first draw of a chunk after the agent's
    # silence: starting to speak (0: as the model has it)
    start_bias: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.turn_temperature is not None and self.turn_temperature < 0:
            raise ValueError(f"turn_temperature must be >= 0, got {self.turn_temperature}")
        if self.speak_up_chunks < 0:
            raise ValueError(f"speak_up_chunks must be >= 0, got {self.speak_up_chunks}")
        if not math.isfinite(self.start_bias):
            raise ValueError(f"start_bias must be finite, got {self.start_bias}")
        if self.barge_in_frames < 0:
            raise ValueError(f"barge_in_frames must be >= 0, got {self.barge_in_frames}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")


class TokenMasks:
    """Boolean masks over the vocabulary for each kind of position in a chunk.

    A speaker's units come frame by frame, codebook 0 first (model/format.py): where a unit
    sits in its frame decides which codebook it is drawn from, and a speaker tag (the chunk
    ends) may only come where a frame starts, so every chunk holds whole frames.
    """

    def __init__(self, fmt: ChunkFormat, vocab_size: int) -> None:
        self.fmt = fmt
        units = fmt.unit_token_range
        self.units = self._only(vocab_size, *units)  # which tokens are units (the rest are tags)
        n = fmt.n_units
        self.books = [self._only(vocab_size, *units[c * n : (c + 1) * n])
                      for c in range(fmt.units_per_frame)]  # fmt: skip
        self.user_open = self._only(vocab_size, fmt.s1, fmt.s0)
        self.tags = self._only(vocab_size, fmt.s0, fmt.s1)  # the chunk ends here
        # codebook c's unit of the silence frame
        self.silence = [self._only(vocab_size, t) for t in fmt.frame_tokens(fmt.silence)]

    @staticmethod
    def _only(vocab_size: int, *tokens: int) -> torch.Tensor:
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[list(tokens)] = True
        return mask

    def next_unit(self, frame: Sequence[int], prev: Frame, *end_tags: int) -> torch.Tensor:
        """The next unit of a frame begun with the units `frame`: any unit of codebook
        len(frame) but the one that would make the frame equal `prev` (dedup: a frame never
        repeats the one before it); where a frame starts (`frame` empty), also `end_tags`."""
        fmt = self.fmt
        book = len(frame)
        mask = self.books[book].clone()
        if book == fmt.units_per_frame - 1 and tuple(frame) == prev[:-1]:
            mask[fmt.frame_tokens(prev)[book]] = False
        if end_tags and not frame:
            mask[list(end_tags)] = True
        return mask


def sample(
    logits: torch.Tensor,
    allowed: torch.Tensor,
    params: list[SamplingParams],
    gens: list[torch.Generator],
    units: torch.Tensor | None = None,
    speak_floor: list[float] | None = None,
    start_bias: list[float] | None = None,
) -> list[int]:
    """Draw one token per row of `logits` [rows, vocab], restricted to `allowed` [rows, vocab].

    Batched: one set of tensor ops for all rows. Each row draws its uniform numbers from its own
    session's generator, so a seeded call replays the same whatever else shares the batch (up
    to float differences in the logits themselves). `units` ([vocab] booleans) is needed by
    rows with a turn temperature, a `speak_floor` or a `start_bias` (per row, 0: none).
    """
    rows, vocab = logits.shape
    masked = logits.float().masked_fill(~allowed, float("-inf"))
    floors = speak_floor or [0.0] * rows
    biases = start_bias or [0.0] * rows
    split = [
        i
        for i, p in enumerate(params)
        if p.turn_temperature is not None or floors[i] > 0 or biases[i] != 0
    ]
    if split:
        if units is None:
            raise ValueError("a turn temperature, a speak floor or a bias needs the unit mask")
        masked[split] = _choose_kind(
            masked[split], units, [params[i] for i in split], [gens[i] for i in split],
            [floors[i] for i in split], [biases[i] for i in split],
        )  # fmt: skip
    temps = torch.tensor([p.temperature for p in params])
    greedy = masked.argmax(dim=-1)
    ks = torch.tensor(
        [min(p.top_k or vocab, int(n)) for p, n in zip(params, allowed.sum(dim=-1), strict=True)]
    )
    k = int(ks.max())
    top = torch.topk(masked / temps.clamp(min=1e-6)[:, None], k, dim=-1)
    keep = torch.arange(k)[None, :] < ks[:, None]
    probs = torch.softmax(top.values.masked_fill(~keep, float("-inf")), dim=-1)
    u = torch.cat([torch.rand(1, generator=g) for g in gens])
    cdf = probs.cumsum(dim=-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=k - 1)[:, 0]
    drawn = top.indices[torch.arange(rows), pick]
    return torch.where(temps == 0, greedy, drawn).tolist()


def _choose_kind(
    masked: torch.Tensor,
    units: torch.Tensor,
    params: list[SamplingParams],
    gens: list[torch.Generator],
    floors: list[float],
    biases: list[float],
) -> torch.Tensor:
    """Draw unit-or-tag per row at its turn temperature, the row's bias added to the log-odds
    of a unit, P(unit) at least the row's floor; mask out the kind not chosen."""
    logp = torch.log_softmax(masked, dim=-1)
    lp_unit = torch.logsumexp(logp.masked_fill(~units, float("-inf")), dim=-1)
    lp_tag = torch.logsumexp(logp.masked_fill(units, float("-inf")), dim=-1)
    turn = torch.tensor(
        [p.temperature if p.turn_temperature is None else p.turn_temperature for p in params]
    ).clamp(min=1e-6)
    odds = lp_unit - lp_tag + torch.tensor(biases)
    p_unit = torch.sigmoid(odds / turn).clamp(min=torch.tensor(floors))
    # a kind with no allowed token has probability 0
    p_unit = torch.where(
        torch.isinf(lp_tag), 1.0, torch.where(torch.isinf(lp_unit), 0.0, p_unit)
    )  # fmt: skip
    u = torch.cat([torch.rand(1, generator=g) for g in gens])
    speak = u < p_unit
    keep = torch.where(speak[:, None], units[None, :], ~units[None, :])
    return masked.masked_fill(~keep, float("-inf"))
