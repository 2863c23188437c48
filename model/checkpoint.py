"""Checkpoints: a Hugging Face Llama directory plus `duplex.json` stating everything duplex needs.

Nothing a checkpoint must be able to change is hard-coded: codec, chunk length, special token
ids, unit offset and the attention span all come from duplex.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from model.device import torch_device
from model.format import ChunkFormat
from streaming.codecs import load_codec

DUPLEX_JSON = "duplex.json"
hf_logging.disable_progress_bar()  # a server log is no terminal


class SpecialTokens(BaseModel):
    model_config = ConfigDict(extra="forbid")
    S0: int = Field(ge=0, description="agent speaker tag (the model's own voice)")
    S1: int = Field(ge=0, description="user speaker tag")
    BOS: int = Field(ge=0, description="start of a conversation")


class DuplexConfig(BaseModel):
    """The content of duplex.json."""

    model_config = ConfigDict(extra="forbid")
    format_version: int = 1
    codec: dict[str, Any]
    codec_sample_rate: int = Field(gt=0)
    frame_ms: float = Field(gt=0)
    chunk_ms: float = Field(gt=0)
    units_per_frame: int = Field(default=1, ge=1)
    n_units: int = Field(gt=0)
    silence_unit: int = Field(default=0, ge=0)
    silence_frame: list[int] | None = Field(
        default=None,
        description="what digital silence encodes to, one unit per codebook (default: "
        "silence_unit in every codebook)",
    )
    unit_offset: int = Field(ge=0)
    special_tokens: SpecialTokens
    context_tokens: int = Field(gt=0, description="KV capacity per session: sink + ring")
    sink_tokens: int = Field(default=0, ge=0, description="opening positions kept for good")
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> DuplexConfig:
        ratio = self.chunk_ms / self.frame_ms
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(
                f"chunk_ms {self.chunk_ms} must be a multiple of the codec's frame_ms "
                f"{self.frame_ms}"
            )
        if self.sink_tokens * 2 > self.context_tokens:
            raise ValueError(
                f"sink_tokens {self.sink_tokens} must be at most half of context_tokens "
                f"{self.context_tokens}"
            )
        if self.silence_unit >= self.n_units:
            raise ValueError(f"silence_unit {self.silence_unit} >= n_units {self.n_units}")
        frame = self.silence_frame
        if frame is not None and (
            len(frame) != self.units_per_frame or not all(0 <= u < self.n_units for u in frame)
        ):
            raise ValueError(
                f"silence_frame {frame} must hold units_per_frame {self.units_per_frame} "
                f"units in [0, n_units {self.n_units})"
            )
        units = range(self.unit_offset, self.unit_offset + self.n_units * self.units_per_frame)
        specials = self.special_tokens.model_dump()
        if len(set(specials.values())) != len(specials):
            raise ValueError(f"special tokens must be distinct: {specials}")
        for name, tok in specials.items():
            if tok in units:
                raise ValueError(f"special token {name}={tok} collides with the unit range")
        return self

    @property
    def frames_per_chunk(self) -> int:
        return round(self.chunk_ms / self.frame_ms)

    def chunk_format(self) -> ChunkFormat:
        s = self.special_tokens
        return ChunkFormat(
            n_units=self.n_units,
            units_per_frame=self.units_per_frame,
            unit_offset=self.unit_offset,
            frames_per_chunk=self.frames_per_chunk,
            s0=s.S0,
            s1=s.S1,
            bos=s.BOS,
            silence_unit=self.silence_unit,
            silence_frame=None if self.silence_frame is None else tuple(self.silence_frame),
        )

    @property
    def silence(self) -> tuple[int, ...]:
        """The silence frame the model speaks (its codec must encode silence to it)."""
        return self.chunk_format().silence


class CheckpointError(Exception):
    """A checkpoint directory that cannot be used; the message says why."""


def read_config(path: Path) -> DuplexConfig:
    file = path / DUPLEX_JSON
    if not file.is_file():
        raise CheckpointError(f"{path} is not a duplex checkpoint: {DUPLEX_JSON} is missing")
    try:
        return DuplexConfig.model_validate_json(file.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "duplex.json"
        raise CheckpointError(f"{file}: {where}: {first['msg']}") from exc


def load_checkpoint(
    path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[DuplexConfig, LlamaForCausalLM]:
    """Load duplex.json and the Llama weights from a local directory (never downloads)."""
    target = torch_device(device)
    config = read_config(path)
    try:
        llama = LlamaForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype, attn_implementation="sdpa"
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load Llama weights from {path}: {exc}") from exc
    vocab = llama.config.vocab_size
    top = max(config.special_tokens.model_dump().values())
    top = max(top, config.unit_offset + config.n_units * config.units_per_frame - 1)
    if top >= vocab:
        raise CheckpointError(f"duplex.json uses token id {top} but the model's vocab is {vocab}")
    llama.eval().requires_grad_(False)
    llama.to(target)  # type: ignore[arg-type]  # transformers types .to oddly
    return config, llama


def new_llama(
    duplex: DuplexConfig,
    *,
    seed: int,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    max_positions: int,
) -> LlamaForCausalLM:
    """A seeded, randomly initialised Llama whose vocabulary covers duplex.json's tokens."""
    fmt = duplex.chunk_format()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=max(fmt.s0, fmt.s1, fmt.bos, fmt.unit_token_range.stop - 1) + 1,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=fmt.bos,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def codec_dir_ref(codec_dir: Path, out: Path) -> str:
    """How duplex.json names a codec's directory: relative to the checkpoint when it lies
    inside it (the two move together), else absolute."""
    target, home = codec_dir.expanduser().resolve(), out.expanduser().resolve()
    return str(target.relative_to(home)) if target.is_relative_to(home) else str(target)


def init_random_checkpoint(
    out: Path,
    *,
    seed: int = 0,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    kv_heads: int = 1,
    intermediate: int | None = None,
    context_tokens: int = 2048,
    sink_tokens: int = 64,
    codebook: str = "builtin:codec2_units_1024",
    n_units: int = 1024,
    units_per_frame: int = 1,
    codec_spec: dict[str, Any] | None = None,
) -> DuplexConfig:
    """Write a small seeded random-weight Llama checkpoint (it babbles: no training).

    Its vocabulary holds `units_per_frame` codebooks of `n_units` units, then [S0], [S1] and
    [BOS]. The codec entry stays the default's (one unit a frame) whatever `units_per_frame`:
    a checkpoint with several is for the model's side (format, engine, training) until a
    codec with as many codebooks is named in its duplex.json.

    `codec_spec` (a duplex.json codec entry, relative paths taken from `out`) names another
    codec, e.g. ``{"type": "mimi", "dir": "mimi", "codebooks": 8}``: the codec is loaded
    (never downloaded) and its rate, frame length, codebooks, units per codebook and silence
    frame make the checkpoint's (`codebook`, `n_units` and `units_per_frame` are then unused);
    a chunk stays 160 ms.

    One KV head (multi-query attention) by default: a batched tick reads every call's KV
    cache once per decode forward, and on CPU those reads dominate (docs/benchmarks.md).
    `intermediate`: the MLP's width (None: 3x `hidden`); Llama-3-8B's shape is 32 layers of
    4096 with 32 heads, 8 KV heads and 14336.
    """
    description = f"random-weight Llama, seed {seed}: untrained, it babbles"
    if codec_spec is None:
        config = _duplex_config(
            {"type": "codec2-units", "codebook": codebook},
            rate=8000,
            frame_ms=40,
            n_units=n_units,
            silence=(0,) * units_per_frame,
            context_tokens=context_tokens,
            sink_tokens=sink_tokens,
            description=description,
        )
    else:
        codec = load_codec(codec_spec, out)
        config = _duplex_config(
            codec_spec,
            rate=codec.sample_rate,
            frame_ms=codec.frame_ms,
            n_units=codec.vocab_size,
            silence=tuple(codec.silence_frame),
            context_tokens=context_tokens,
            sink_tokens=sink_tokens,
            description=f"{description} in {codec.name} units",
        )
    llama = new_llama(
        config,
        seed=seed,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=hidden * 3 if intermediate is None else intermediate,
        max_positions=context_tokens,
    )
    out.mkdir(parents=True, exist_ok=True)
    llama.save_pretrained(out)
    write_config(out, config)
    return config


def write_config(out: Path, config: DuplexConfig) -> None:
    """duplex.json (fields left unset, such as a default silence frame, are left out)."""
    text = json.dumps(config.model_dump(exclude_none=True), indent=2)
    (out / DUPLEX_JSON).write_text(text + "\n")


def _duplex_config(
    codec: dict[str, Any],
    *,
    rate: int,
    frame_ms: float,
    n_units: int,
    silence: tuple[int, ...],
    context_tokens: int,
    sink_tokens: int,
    description: str,
) -> DuplexConfig:
    """A 160 ms chunk of the codec's frames; units from offset 0, then [S0], [S1], [BOS]."""
    k = len(silence)
    units = n_units * k
    return DuplexConfig(
        codec=codec,
        codec_sample_rate=rate,
        frame_ms=frame_ms,
        chunk_ms=160,
        units_per_frame=k,
        n_units=n_units,
        silence_unit=silence[0],
        silence_frame=None if silence == (silence[0],) * k else list(silence),
        unit_offset=0,
        special_tokens=SpecialTokens(S0=units, S1=units + 1, BOS=units + 2),
        context_tokens=context_tokens,
        sink_tokens=sink_tokens,
        description=description,
    )
