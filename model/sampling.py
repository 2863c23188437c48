"""Constrained sampling: every step draws from the tokens the chunk format allows there."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.format import ChunkFormat


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")


class TokenMasks:
    """Boolean masks over the vocabulary for each kind of position in a chunk."""

    def __init__(self, fmt: ChunkFormat, vocab_size: int) -> None:
        if fmt.units_per_frame != 1:
            raise ValueError(
                f"the engine samples one unit per frame; this checkpoint has "
                f"{fmt.units_per_frame} units per frame"
            )
        self.fmt = fmt
        units = torch.zeros(vocab_size, dtype=torch.bool)
        units[fmt.unit_offset : fmt.unit_offset + fmt.n_units] = True
        self._units = units
        self.user_open = self._only(vocab_size, fmt.s1, fmt.s0)

    @staticmethod
    def _only(vocab_size: int, *tokens: int) -> torch.Tensor:
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[list(tokens)] = True
        return mask

    def unit_after(self, last_unit: int, *end_tags: int) -> torch.Tensor:
        """Any unit but a repeat of `last_unit` (dedup), or one of `end_tags`."""
        mask = self._units.clone()
        mask[self.fmt.unit_offset + last_unit] = False
        if end_tags:
            mask[list(end_tags)] = True
        return mask


def sample(
    logits: torch.Tensor, allowed: torch.Tensor, params: SamplingParams, gen: torch.Generator
) -> int:
    """Draw one token id from `logits` [vocab] restricted to `allowed`."""
    masked = logits.masked_fill(~allowed, float("-inf"))
    if params.temperature == 0:
        return int(masked.argmax())
    if params.top_k:
        k = min(params.top_k, int(allowed.sum()))
        top = torch.topk(masked, k)
        probs = torch.softmax(top.values / params.temperature, dim=-1)
        return int(top.indices[torch.multinomial(probs, 1, generator=gen)])
    probs = torch.softmax(masked / params.temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))
