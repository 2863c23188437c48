"""The torch engine: the shared step (model/engines/stepper.py) over our slot KV cache.

All sessions' forwards are batched: the first forward of a step prefills every session's
pending tokens (ragged), each later one feeds one sampled token per session that still
decodes. Rollback is moving a slot's length back (model/engines/torch/slots.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from model.checkpoint import DuplexConfig, load_checkpoint
from model.engines.api import EngineOptions
from model.engines.stepper import Call, Stepper
from model.engines.torch.decoder import SlotDecoder
from model.sampling import SamplingParams
from model.timeline import Timeline


@dataclass(kw_only=True)
class _Session(Call):
    row: int  # its slot in the KV cache


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_engine(checkpoint: Path, options: EngineOptions) -> TorchEngine:
    """The registry's factory (model/engines/__init__.py): load the checkpoint's Llama onto
    `options.device` and build the engine around it."""
    if options.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {options.dtype!r}; use one of {sorted(DTYPES)}")
    if options.threads:
        torch.set_num_threads(options.threads)
    config, llama = load_checkpoint(checkpoint, device=options.device, dtype=DTYPES[options.dtype])
    return TorchEngine(
        config,
        llama,
        max_sessions=options.max_sessions,
        max_rollback_chunks=options.max_rollback_chunks,
        estimate_units=options.estimate_units,
        opening_frames=options.opening_frames,
    )


class TorchEngine(Stepper[_Session]):
    """Owns the decoder, the slot KV cache and every session's timeline."""

    def __init__(
        self,
        config: DuplexConfig,
        llama: LlamaForCausalLM,
        *,
        max_sessions: int,
        max_rollback_chunks: int,
        estimate_units: int | None = None,
        opening_frames: int | None = None,
    ) -> None:
        """`estimate_units`, `opening_frames`: as `Stepper`'s."""
        self.decoder = SlotDecoder(llama)
        super().__init__(
            "torch", config, self.decoder.vocab_size, max_sessions=max_sessions,
            max_rollback_chunks=max_rollback_chunks, estimate_units=estimate_units,
            opening_frames=opening_frames,
        )  # fmt: skip
        self.max_forward_tokens = 2 * self.chunk_tokens  # what the reserve leaves after a rollback
        self.cache = self.decoder.new_cache(
            max_sessions, config.context_tokens, self.reserve, sink=self.sink_tokens
        )

    def _new_call(
        self, timeline: Timeline, params: SamplingParams, gen: torch.Generator
    ) -> _Session:
        return _Session(row=self.cache.allocate(), timeline=timeline, params=params, gen=gen)

    def _drop_call(self, call: _Session) -> None:
        moved = self.cache.release(call.row)
        if moved is not None:
            for other in self.sessions.values():
                if other.row == moved:
                    other.row = call.row
                    break

    def _roll_back(self, call: _Session) -> int:
        cached = call.timeline.cached
        depth = self.cache.lengths[call.row] - cached
        if depth <= 0:
            return 0
        self.cache.rollback(call.row, cached)
        return depth

    def _logits(self, calls: list[_Session]) -> torch.Tensor:
        logits, fed = self._forward()
        rows = [call.row for call in calls]
        if not fed.issuperset(rows):  # its logits would be another position's, or none
            raise RuntimeError("a session was sampled without being fed its last token")
        return logits[rows].cpu()

    def _forward(self) -> tuple[torch.Tensor, set[int]]:
        """Feed every session's pending tokens; logits [rows, vocab] after each one's last,
        and the rows that were fed (the others' logits mean nothing).

        A backlog longer than the ring can take in one write (after skipped ticks) goes in
        pieces of `max_forward_tokens`.
        """
        out: torch.Tensor | None = None
        fed: set[int] = set()
        while True:
            rows: list[list[int]] = [[] for _ in range(self.cache.live)]
            done: list[int] = []  # rows fed their last pending token in this forward
            more = False
            for s in self.sessions.values():
                tl = s.timeline
                rows[s.row] = tl.tokens[tl.cached : tl.cached + self.max_forward_tokens]
                tl.cached += len(rows[s.row])
                if tl.cached < len(tl.tokens):
                    more = True
                elif rows[s.row]:
                    done.append(s.row)
            logits = self.decoder.forward(self.cache, rows)
            fed.update(done)
            if out is None:
                out = logits
            else:
                out[done] = logits[done]
            if not more:
                return out, fed
