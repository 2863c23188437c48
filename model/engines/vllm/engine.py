"""The vLLM engine: the shared step (model/engines/stepper.py) with vLLM computing the logits.

Every forward of a step is one `LLM.generate` over the calls still drawing: one request per
call whose prompt is the call's whole visible conversation, `max_tokens=1`, with every
token's raw logit handed back (`logprobs_mode="raw_logits"`). Our own sampler then draws
from them with the call's masks, rules and generator, exactly as on the torch engine; vLLM's
own draw (greedy) is thrown away.

Rolling back (an estimate replaced by real audio) is resubmission: the next request's prompt
is the corrected conversation, and vLLM's prefix cache finds every full KV block before the
first changed token, so only the tail is computed again. That is cheaper here than the
streaming-input API, which can only append: the user's newest chunk is an estimate at almost
every tick and is replaced at the next, so a stream would be torn down and opened again
every tick, and a step needs the logits after each drawn token anyway.

Unlimited call length: vLLM has no attention sink, so the prompt is the call's first
`sink_tokens` tokens (the engine's sink, a voice prompt's opening in it) and then its latest
ones, from a window start that moves in steps of a quarter of the ring (context_tokens -
sink_tokens). Between two moves the prompt's prefix is
the same and stays cached; each move costs one prefill of the window. The model sees between
3/4 of the ring and all of it (the torch engine: the ring less the rollback reserve), and the
sink sits just before the window's start, as the torch engine re-rotates it (RoPE sees only
distances). Past the window the two engines differ: vLLM recomputes the window's keys
without what came before it, the torch engine keeps the keys it computed when they were new.

Admission: a call may hold `context_tokens` of KV at once; the engine refuses at start to
serve more calls than vLLM's KV cache holds, and a call beyond `max_sessions` at join.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import DuplexConfig, read_config
from model.engines.api import EngineOptions
from model.engines.stepper import Call, Stepper
from model.sampling import SamplingParams
from model.timeline import Timeline

BLOCK_SIZE = 32  # tokens per KV block: the prefix cache's grain (the CPU build's smallest)
CPU_KV_GIB = 1  # VLLM_CPU_KVCACHE_SPACE when not set: thousands of the default model's calls


@dataclass(kw_only=True)
class _Request(Call):
    held: int = 0  # how much of the timeline vLLM was last given (its cache may hold it)
    start: int = 0  # the window's start: tokens[sink:start] are left out of the prompt


def load_engine(checkpoint: Path, options: EngineOptions) -> VllmEngine:
    """The registry's factory (model/engines/__init__.py): start vLLM on the checkpoint's
    Llama weights (its engine core is a process of its own) and build the engine around it."""
    config = read_config(checkpoint)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_GIB))
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tempfile.gettempdir()) / "duplex-vllm"))
    try:
        with warnings.catch_warnings():  # what vLLM's imports say of torch's deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            from vllm import LLM
            from vllm.platforms import current_platform
    except ImportError as exc:
        raise ValueError(f"--engine vllm needs vLLM installed (docs/gpu.md): {exc}") from exc
    device = torch.device(options.device)
    if device.type != current_platform.device_type or device.index is not None:
        raise ValueError(
            f"this vLLM runs on {current_platform.device_type!r}, not {options.device!r} "
            "(GPUs are chosen with CUDA_VISIBLE_DEVICES and --tensor-parallel-size)"
        )
    llm = LLM(
        model=str(checkpoint),
        skip_tokenizer_init=True,
        dtype=options.dtype,
        max_model_len=config.context_tokens,
        block_size=BLOCK_SIZE,
        enable_prefix_caching=True,
        max_num_seqs=options.max_sessions,
        # a block and the new tokens of every call fit one engine step
        max_num_batched_tokens=max(4096, options.max_sessions * 2 * BLOCK_SIZE),
        max_logprobs=-1,
        logprobs_mode="raw_logits",
        tensor_parallel_size=options.tensor_parallel_size,
        # CUDA graphs on a GPU; on a CPU torch.compile costs ~50 s at start for nothing
        # measurable on the small default model
        enforce_eager=device.type == "cpu",
    )
    return VllmEngine(
        config,
        llm,
        max_sessions=options.max_sessions,
        max_rollback_chunks=options.max_rollback_chunks,
        estimate_units=options.estimate_units,
        opening_frames=options.opening_frames,
    )


class VllmEngine(Stepper[_Request]):
    """Every call's timeline; vLLM holds the weights and the (prefix-cached) KV blocks."""

    def __init__(
        self,
        config: DuplexConfig,
        llm: Any,
        *,
        max_sessions: int,
        max_rollback_chunks: int,
        estimate_units: int | None = None,
        opening_frames: int | None = None,
    ) -> None:
        """`llm`: a `vllm.LLM` on the checkpoint's weights, its prompts at most
        `config.context_tokens` long; `estimate_units`, `opening_frames`: as `Stepper`'s."""
        from vllm import SamplingParams as VllmSampling

        self.llm = llm
        vocab_size = llm.llm_engine.model_config.get_vocab_size()
        super().__init__(
            "vllm", config, vocab_size, max_sessions=max_sessions,
            max_rollback_chunks=max_rollback_chunks, estimate_units=estimate_units,
            opening_frames=opening_frames,
        )  # fmt: skip
        cache = llm.llm_engine.vllm_config.cache_config
        per_call = math.ceil(config.context_tokens / cache.block_size)
        room = cache.num_gpu_blocks // per_call
        if room < max_sessions:
            raise ValueError(
                f"vLLM's KV cache holds {cache.num_gpu_blocks} blocks of {cache.block_size} "
                f"tokens: {room} calls of {config.context_tokens} tokens, not {max_sessions}; "
                "lower --max-sessions or give it more memory (VLLM_CPU_KVCACHE_SPACE GiB on a "
                "CPU, gpu_memory_utilization on a GPU)"
            )
        ring = config.context_tokens - self.sink_tokens
        self.trim = ring // 4  # how far the window's start moves at a time
        self.max_prompt = config.context_tokens - 1  # and one position for vLLM's own draw
        self.request = VllmSampling(
            max_tokens=1, temperature=0.0, logprobs=-1, flat_logprobs=True, detokenize=False,
            ignore_eos=True,
        )  # fmt: skip

    def close(self) -> None:
        """Stop vLLM's engine core process (it also stops when this process ends)."""
        self.llm.llm_engine.engine_core.shutdown()

    def _new_call(
        self, timeline: Timeline, params: SamplingParams, gen: torch.Generator
    ) -> _Request:
        if len(self.sessions) >= self.info.max_sessions:
            raise RuntimeError(f"all {self.info.max_sessions} calls vLLM has room for are live")
        return _Request(timeline=timeline, params=params, gen=gen, start=self.sink_tokens)

    def _drop_call(self, call: _Request) -> None:
        """Nothing to free: its KV blocks are vLLM's cache, reused as others need them."""

    def _roll_back(self, call: _Request) -> int:
        depth = call.held - call.timeline.cached
        call.held = min(call.held, call.timeline.cached)
        return max(depth, 0)

    def _prompt(self, call: _Request) -> list[int]:
        """The sink, then the window: moved on in steps, so that its prefix stays cached."""
        tokens, sink = call.timeline.tokens, self.sink_tokens
        while sink + len(tokens) - call.start > self.max_prompt:
            call.start += self.trim
        return tokens[:sink] + tokens[call.start :]

    def _logits(self, calls: list[_Request]) -> torch.Tensor:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=self._prompt(call)) for call in calls]
        outputs = self.llm.generate(prompts, self.request, use_tqdm=False)
        logits = torch.full((len(calls), self.masks.units.numel()), float("-inf"))
        for row, (call, out) in enumerate(zip(calls, outputs, strict=True)):
            drawn = out.outputs[0].logprobs  # FlatLogprobs: every token's raw logit
            logits[row, drawn.token_ids] = torch.tensor(drawn.logprobs)
            call.timeline.cached = call.held = len(call.timeline.tokens)
        return logits
