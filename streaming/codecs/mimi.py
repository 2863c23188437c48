"""Mimi (Kyutai's neural codec) behind the codec interface: streaming, and batched across calls.

Mimi codes 24 kHz audio as one frame per 80 ms (1920 samples) of up to 32 residual codebooks
(2048 entries each); a codec here uses the first K. transformers' ``MimiModel`` does all the
maths; this module only carries each call's state from one frame to the next, so that coding a
signal in any chunking gives what coding it whole gives (to float rounding):

* causal convolutions: their left context, in a ``MimiConv1dPaddingCache`` (the encoder takes
  one already; the decoder's convolutions get layer indices so that they take one too);
* transposed convolutions (decoder): ``MimiModel`` keeps no state there, so decoding frame by
  frame would lose the overlap between frames. Their last ``kernel - stride`` outputs still
  await the next input's contribution: ``_overlap_add`` keeps them (less the bias) and adds
  them to the next chunk's first outputs;
* the two transformers' sliding-window KV caches: a ring per row (``_Window``), keys stored
  RoPE-rotated at the call's own positions, fed to ``MimiTransformerModel`` with an explicit
  mask and positions, so rows of different ages share one forward.

State lives in batch rows (``_Rows``): one forward serves every call that brings the same
number of frames, which is every call in the steady state (a tick's frames each).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import torch
from transformers import AutoConfig, MimiConfig, MimiModel
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConv1dPaddingCache,
    MimiConvTranspose1d,
    MimiResnetBlock,
    MimiTransformerModel,
)

from streaming.codecs import check_pcm, describe, resolve_path, spec_string

DEFAULT_CODEBOOKS = 8
# Frames of one call in one forward: a KV ring holds the window plus this many frames' tokens.
MAX_STEP_FRAMES = 8
# Digital silence encoded from a fresh encoder; the last frame's codes are the silence frame.
SILENCE_PROBE_FRAMES = 4

CallId = Hashable
C = TypeVar("C", bound=Hashable)  # a batch's call ids, as the caller types them


@dataclass(frozen=True)
class _Slot:
    """One per-row state tensor: its shape without the row dimension, dtype and reset value."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    fill: float


class _Half(Protocol):
    """The encoder or the decoder: per-row state layout and one batched forward."""

    slots: list[_Slot]
    out_shape: tuple[int, ...]  # one frame of output
    out_dtype: type[np.generic]

    def run(self, x: torch.Tensor, state: list[torch.Tensor], fresh: bool) -> torch.Tensor:
        """x [rows, frames, ...] -> [rows, frames, *out_shape]; updates ``state`` in place
        (``fresh``: the rows' first forward, their stored convolution context is unset)."""
        ...


def _padding_cache(convs: list[MimiConv1d], state: list[torch.Tensor]) -> MimiConv1dPaddingCache:
    """A padding cache over ``convs`` (ordered by layer index); empty ``state`` lets
    transformers initialise each layer's context from its first input, as in a whole pass."""
    cache = MimiConv1dPaddingCache(
        len(convs),
        [int(c.padding_total) for c in convs],
        [c.pad_mode for c in convs],
        [c.in_channels for c in convs],
    )
    if state:
        cache.padding_cache = cast(list[None], list(state))  # typed for its initial Nones
    return cache


def _conv_slots(convs: list[MimiConv1d], dtype: torch.dtype) -> list[_Slot]:
    return [_Slot((c.in_channels, int(c.padding_total)), dtype, 0.0) for c in convs]


def _store(state: list[torch.Tensor], cache: MimiConv1dPaddingCache) -> None:
    for dst, src in zip(state, cast(list[torch.Tensor], cache.padding_cache), strict=True):
        dst.copy_(src)


def _overlap_add(layer: MimiConvTranspose1d, x: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """``layer`` streamed: its outputs for ``x`` that no later input reaches; ``tail`` [rows,
    channels, kernel - stride] carries the rest (without bias) to the next call."""
    y = layer.conv(x)
    done = y.shape[-1] - layer.padding_right  # = frames * stride
    y[..., : tail.shape[-1]] += tail
    rest = y[..., done:]
    bias = layer.conv.bias
    tail.copy_(rest if bias is None else rest - bias[:, None])
    return y[..., :done]


class _RingCache:
    """What ``MimiAttention`` asks of a cache: store this step's keys and values (in the rows'
    ring slots) and return every slot; the mask says which slots each query sees."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], slot: torch.Tensor):
        self.keys, self.values, self.slot = keys, values, slot
        self.rows = torch.arange(slot.shape[0], device=slot.device)[:, None]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, **_: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self.rows, :, self.slot] = key_states.transpose(1, 2)
        values[self.rows, :, self.slot] = value_states.transpose(1, 2)
        return keys, values


class _Window:
    """A Mimi transformer stepped over rows of different ages.

    Per row: keys/values [kv_heads, ring, head_dim] per layer, the position held in each ring
    slot (-1: empty) and the tokens seen. A token at position p goes to slot p % ring; a query
    at q sees the slots holding positions in (q - window, q], as the whole-signal mask does.
    ring = window - 1 + the most tokens one forward adds, so no slot a query needs is
    overwritten in the same forward. Positions are each call's own (0 at its start), as when
    the call is coded alone.
    """

    def __init__(self, transformer: MimiTransformerModel, config: MimiConfig, tokens: int):
        window = config.sliding_window
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"Mimi streaming needs an int sliding_window, got {window!r}")
        self.transformer = transformer
        self.window = window
        self.ring = window - 1 + tokens
        self.layers = config.num_hidden_layers
        dtype = next(transformer.parameters()).dtype
        head_dim = cast(int, config.head_dim)  # set by MimiConfig.__post_init__
        kv = _Slot((config.num_key_value_heads, self.ring, head_dim), dtype, 0.0)
        self.slots = [kv] * (2 * self.layers) + [
            _Slot((self.ring,), torch.long, -1),
            _Slot((), torch.long, 0),
        ]

    def step(self, h: torch.Tensor, state: list[torch.Tensor]) -> torch.Tensor:
        """h [rows, channels, tokens] -> the transformer's output, same shape."""
        n = self.layers
        keys, values, held, seen = state[:n], state[n : 2 * n], state[2 * n], state[2 * n + 1]
        tokens = h.shape[-1]
        qpos = seen[:, None] + torch.arange(tokens, device=h.device)
        slot = qpos % self.ring
        held.scatter_(1, slot, qpos)
        key_pos, q = held[:, None, :], qpos[:, :, None]
        visible = (key_pos >= 0) & (key_pos <= q) & (key_pos > q - self.window)
        mask = torch.zeros(visible.shape, dtype=h.dtype, device=h.device)
        mask.masked_fill_(~visible, torch.finfo(h.dtype).min)
        out = self.transformer(
            h.transpose(1, 2),
            attention_mask=mask[:, None],
            position_ids=qpos,
            cache=_RingCache(keys, values, slot),
            use_cache=True,
        )
        seen += tokens
        return out.last_hidden_state.transpose(1, 2)


class _EncoderHalf:
    """PCM frames -> K codes per frame: SEANet encoder, transformer, downsampling, RVQ."""

    out_dtype: type[np.generic] = np.int64

    def __init__(self, model: MimiModel, codebooks: int) -> None:
        enc = model.encoder
        if enc is None:
            raise ValueError("this Mimi has no encoder (saved with encoder_config=None)")
        self.enc, self.quantizer, self.codebooks = enc, model.quantizer, codebooks
        by_idx = {m.layer_idx: m for m in enc.modules() if isinstance(m, MimiConv1d)}
        if set(by_idx) != set(range(len(by_idx))):  # e.g. conv shortcuts, which have none
            raise ValueError("Mimi streaming needs every encoder convolution in its padding cache")
        self.convs = [by_idx[i] for i in range(len(by_idx))]
        config = model.config
        self.window = _Window(
            enc.encoder_transformer, config, MAX_STEP_FRAMES * config.latent_stride
        )
        dtype = next(model.parameters()).dtype
        self.slots = _conv_slots(self.convs, dtype) + self.window.slots
        self.out_shape: tuple[int, ...] = (codebooks,)

    def run(self, x: torch.Tensor, state: list[torch.Tensor], fresh: bool) -> torch.Tensor:
        n = len(self.convs)
        cache = _padding_cache(self.convs, [] if fresh else state[:n])
        h = self.enc.encoder_seanet(x.reshape(x.shape[0], 1, -1), padding_cache=cache)
        h = self.window.step(h, state[n:])
        latents = self.enc.downsample(h, padding_cache=cache)
        _store(state[:n], cache)
        return self.quantizer.encode(latents, self.codebooks).permute(1, 2, 0)


class _DecoderHalf:
    """K codes per frame -> PCM frames: RVQ, upsampling, transformer, SEANet decoder."""

    out_dtype: type[np.generic] = np.float32

    def __init__(self, model: MimiModel, frame_samples: int) -> None:
        dec = model.decoder
        if dec is None:
            raise ValueError("this Mimi has no decoder (saved with decoder_config=None)")
        self.dec, self.quantizer = dec, model.quantizer
        self.convs = [m for m in dec.decoder_seanet.modules() if isinstance(m, MimiConv1d)]
        for i, conv in enumerate(self.convs):
            conv.layer_idx = i  # its slot in our padding cache (transformers sets none here)
        transposed = [dec.upsample] + [
            m for m in dec.decoder_seanet.layers if isinstance(m, MimiConvTranspose1d)
        ]
        if any(t.padding_left for t in transposed):
            raise ValueError("Mimi streaming needs trim_right_ratio = 1 (no left trim)")
        config = model.config
        self.window = _Window(
            dec.decoder_transformer, config, MAX_STEP_FRAMES * config.latent_stride
        )
        dtype = next(model.parameters()).dtype
        tails = [_Slot((t.conv.out_channels, t.padding_right), dtype, 0.0) for t in transposed]
        self.slots = _conv_slots(self.convs, dtype) + tails + self.window.slots
        self.n_transposed = len(transposed)
        self.out_shape: tuple[int, ...] = (frame_samples,)

    def run(self, x: torch.Tensor, state: list[torch.Tensor], fresh: bool) -> torch.Tensor:
        rows, frames = x.shape[:2]
        n, m = len(self.convs), self.n_transposed
        tails = iter(state[n : n + m])
        dec = self.dec
        h = self.quantizer.decode(x.transpose(1, 2))
        h = _overlap_add(dec.upsample, h, next(tails))
        h = self.window.step(h, state[n + m :])
        cache = _padding_cache(self.convs, [] if fresh else state[:n])
        for layer in dec.decoder_seanet.layers:
            if isinstance(layer, MimiConvTranspose1d):
                h = _overlap_add(layer, h, next(tails))
            elif isinstance(layer, MimiConv1d | MimiResnetBlock):
                h = layer(h, padding_cache=cache)
            else:
                h = layer(h)
        _store(state[:n], cache)
        return h.reshape(rows, frames, -1)


class _Rows:
    """One half's per-call state in batch rows: row r of every state tensor is call ids[r].

    A step runs one forward per group of calls bringing the same number of frames (one group
    in the steady state), over views of rows 0..n-1 when the group is every row, else over
    gathered copies written back after. A call's first forward runs in a group of first
    forwards, so that its convolution context is initialised as in a whole pass (zeros, or the
    first input where the layer pads by replication). Leaving moves the last row into the gap.
    """

    def __init__(self, half: _Half, device: torch.device) -> None:
        self.half, self.device = half, device
        self.ids: list[CallId] = []
        self.index: dict[CallId, int] = {}
        self.fresh: set[CallId] = set()
        self.state = self._alloc(0)

    def _alloc(self, rows: int) -> list[torch.Tensor]:
        return [
            torch.empty((rows, *s.shape), dtype=s.dtype, device=self.device)
            for s in self.half.slots
        ]

    def add(self, call_id: CallId) -> None:
        if call_id in self.index:
            raise ValueError(f"call {call_id!r} is already in the batch")
        row = len(self.ids)
        if row == self.state[0].shape[0]:  # full: double the rows
            grown = self._alloc(max(1, 2 * row))
            for new, old in zip(grown, self.state, strict=True):
                new[:row] = old
            self.state = grown
        for t, s in zip(self.state, self.half.slots, strict=True):
            t[row].fill_(s.fill)
        self.ids.append(call_id)
        self.index[call_id] = row
        self.fresh.add(call_id)

    def remove(self, call_id: CallId) -> None:
        if call_id not in self.index:
            raise KeyError(f"call {call_id!r} is not in the batch")
        row = self.index.pop(call_id)
        last = self.ids.pop()
        if last != call_id:
            for t in self.state:
                t[row] = t[len(self.ids)]
            self.ids[row] = last
            self.index[last] = row
        self.fresh.discard(call_id)

    @torch.no_grad()
    def step(self, inputs: Mapping[C, np.ndarray]) -> dict[C, np.ndarray]:
        """Per call, its frames [n, ...] (n >= 0) -> its outputs [n, *out_shape]."""
        for call_id in inputs:
            if call_id not in self.index:
                raise KeyError(f"call {call_id!r} is not in the batch")
        pieces = {
            c: torch.as_tensor(x, device=self.device).split(MAX_STEP_FRAMES)
            for c, x in inputs.items()
            if len(x)
        }
        done: dict[C, list[torch.Tensor]] = {c: [] for c in pieces}
        for turn in range(max((len(p) for p in pieces.values()), default=0)):
            groups: dict[tuple[int, bool], list[C]] = {}
            for c, p in pieces.items():
                if turn < len(p):
                    groups.setdefault((len(p[turn]), c in self.fresh), []).append(c)
            for (_, fresh), calls in groups.items():
                calls.sort(key=self.index.__getitem__)
                x = torch.stack([pieces[c][turn] for c in calls])
                for c, y in zip(calls, self._forward(calls, x, fresh), strict=True):
                    done[c].append(y)
                self.fresh.difference_update(calls)
        empty = np.zeros((0, *self.half.out_shape), dtype=self.half.out_dtype)
        return {
            c: torch.cat(done[c]).cpu().numpy().astype(self.half.out_dtype) if c in done else empty
            for c in inputs
        }

    def _forward(self, calls: Sequence[CallId], x: torch.Tensor, fresh: bool) -> torch.Tensor:
        rows = [self.index[c] for c in calls]
        if rows == list(range(len(self.ids))):
            return self.half.run(x, [t[: len(rows)] for t in self.state], fresh)
        idx = torch.tensor(rows, device=self.device)
        state = [t[idx] for t in self.state]
        y = self.half.run(x, state, fresh)
        for t, s in zip(self.state, state, strict=True):
            t[idx] = s
        return y


def _check_pcm(pcm: np.ndarray) -> np.ndarray:
    """Validate float mono PCM [n] -> float32."""
    return check_pcm(pcm).astype(np.float32, copy=False)


class _Framer:
    """A call's PCM not yet a whole frame."""

    def __init__(self, frame_samples: int) -> None:
        self.frame = frame_samples
        self.pending = np.zeros(0, dtype=np.float32)

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Checked PCM (``_check_pcm``) -> the whole frames it completes, [n, frame]."""
        buf = np.concatenate([self.pending, pcm])
        n = buf.size // self.frame * self.frame
        self.pending = buf[n:].copy()
        return buf[:n].reshape(-1, self.frame)

    def flush(self) -> np.ndarray:
        """The pending partial frame zero-padded, [0 or 1, frame]."""
        if not self.pending.size:
            return np.zeros((0, self.frame), dtype=np.float32)
        frame = np.zeros((1, self.frame), dtype=np.float32)
        frame[0, : self.pending.size] = self.pending
        self.pending = np.zeros(0, dtype=np.float32)
        return frame


class MimiCodec:
    """Mimi with K codebooks; immutable and shared: calls get their own state (an encoder,
    a decoder, or rows of a ``MimiEncoderBatch`` / ``MimiDecoderBatch``).

    ``silence_frame`` is what digital silence encodes to once the encoder has settled (the
    last of ``SILENCE_PROBE_FRAMES`` frames from a fresh encoder): one code per codebook.
    ``silence_unit`` (the interface's one unit) is its first, semantic, code.
    """

    sample_rate: int
    frame_samples: int
    units_per_frame: int
    vocab_size: int
    silence_unit: int
    silence_frame: tuple[int, ...]

    def __init__(self, model: MimiModel, codebooks: int = DEFAULT_CODEBOOKS) -> None:
        config = model.config
        _check_streamable(model)
        semantic, total = config.num_semantic_quantizers, config.num_quantizers
        if isinstance(codebooks, bool) or not isinstance(codebooks, int):
            raise ValueError(f"codebooks must be an int, got {codebooks!r}")
        if not max(1, semantic) <= codebooks <= total:
            raise ValueError(
                f"codebooks must be in [{max(1, semantic)}, {total}] for this Mimi, got {codebooks}"
            )
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.sample_rate = int(config.sampling_rate)
        self.frame_samples = int(config.frame_size)
        self.units_per_frame = codebooks
        self.vocab_size = int(config.codebook_size)
        self.name = f"mimi-{codebooks}x{self.vocab_size}"
        self._encoder = _EncoderHalf(model, codebooks)
        self._decoder = _DecoderHalf(model, self.frame_samples)
        probe = np.zeros(SILENCE_PROBE_FRAMES * self.frame_samples, dtype=np.float32)
        self.silence_frame = tuple(int(u) for u in self.new_encoder().encode(probe)[-1])
        self.silence_unit = self.silence_frame[0]

    @classmethod
    def from_pretrained(
        cls, path: str | Path, codebooks: int = DEFAULT_CODEBOOKS, device: str = "cpu"
    ) -> MimiCodec:
        """Load a local Hugging Face Mimi directory (config.json + weights); never downloads."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"no Mimi model at {path}: expected a directory with config.json")
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if not isinstance(config, MimiConfig):
            raise ValueError(f"{path} holds a {config.model_type!r} model, not a Mimi codec")
        try:
            model = MimiModel.from_pretrained(
                path, config=config, local_files_only=True, dtype=torch.float32
            )
        except OSError as e:
            raise ValueError(f"cannot load the Mimi weights in {path}: {e}") from e
        model.to(torch.device(device))  # type: ignore[arg-type]  # transformers types .to oddly
        return cls(model, codebooks)

    @property
    def frame_ms(self) -> float:
        return 1000.0 * self.frame_samples / self.sample_rate

    def new_encoder(self) -> MimiStreamEncoder:
        return MimiStreamEncoder(self)

    def new_decoder(self) -> MimiStreamDecoder:
        return MimiStreamDecoder(self)

    def new_encoder_batch(self) -> MimiEncoderBatch:
        return MimiEncoderBatch(self)

    def new_decoder_batch(self) -> MimiDecoderBatch:
        return MimiDecoderBatch(self)

    def check_units(self, units: np.ndarray) -> np.ndarray:
        """Validate codes [n, K] in [0, vocab_size) -> int64."""
        if (
            not isinstance(units, np.ndarray)
            or units.ndim != 2
            or units.shape[1] != self.units_per_frame
            or not np.issubdtype(units.dtype, np.integer)
        ):
            raise ValueError(
                f"expected integer units of shape [n, {self.units_per_frame}], "
                f"got {describe(units)}"
            )
        if units.size and (units.min() < 0 or units.max() >= self.vocab_size):
            raise ValueError(
                f"unit ids must be in [0, {self.vocab_size}), got min {units.min()} "
                f"max {units.max()}"
            )
        return units.astype(np.int64, copy=False)


def _check_streamable(model: MimiModel) -> None:
    config = model.config
    problems = [
        what
        for what, bad in [
            ("causal convolutions", not config.use_causal_conv),
            ("mono audio", config.audio_channels != 1),
        ]
        if bad
    ]
    if problems:
        raise ValueError(f"Mimi streaming needs {', '.join(problems)}")


class MimiStreamEncoder:
    """One call's streaming encoder: PCM at 24 kHz in any chunks -> codes [frames, K]."""

    def __init__(self, codec: MimiCodec) -> None:
        self._batch = MimiEncoderBatch(codec)
        self._batch.add(0)

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        return self._batch.encode({0: pcm})[0]

    def flush(self) -> np.ndarray:
        return self._batch.flush([0])[0]


class MimiStreamDecoder:
    """One call's streaming decoder: codes [frames, K] in any chunks -> PCM, 1920 a frame."""

    def __init__(self, codec: MimiCodec) -> None:
        self._batch = MimiDecoderBatch(codec)
        self._batch.add(0)

    def decode(self, units: np.ndarray) -> np.ndarray:
        return self._batch.decode({0: units})[0]


class MimiEncoderBatch:
    """Many calls' encoders, one batched forward per ``encode`` (the codec interface's
    ``EncoderBatch``).

    Calls join (``add``) and leave (``remove``) between calls. ``encode`` takes each call's new
    PCM (any length: partial frames wait, per call, for the rest) and codes every completed
    frame of every call together. A call's codes equal what it gets coded alone, to float
    rounding. Not thread-safe: one thread at a time drives a batch (the encoder and decoder
    batches are apart, so that the two may run on two threads).
    """

    def __init__(self, codec: MimiCodec) -> None:
        self._frame_samples = codec.frame_samples
        self._rows = _Rows(codec._encoder, codec.device)
        self._framers: dict[CallId, _Framer] = {}

    def __len__(self) -> int:
        return len(self._framers)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._framers

    def add(self, call_id: CallId) -> None:
        self._rows.add(call_id)
        self._framers[call_id] = _Framer(self._frame_samples)

    def remove(self, call_id: CallId) -> None:
        self._rows.remove(call_id)
        del self._framers[call_id]

    def encode(self, pcm: Mapping[C, np.ndarray]) -> dict[C, np.ndarray]:
        """Per call, new float32 PCM -> codes int64 [completed frames, K]."""
        checked = {c: (self._framer(c), _check_pcm(x)) for c, x in pcm.items()}
        return self._rows.step({c: framer.push(x) for c, (framer, x) in checked.items()})

    def flush(self, calls: Iterable[C]) -> dict[C, np.ndarray]:
        """Per call, its pending partial frame zero-padded -> its codes ([0, K] if none)."""
        return self._rows.step({c: self._framer(c).flush() for c in calls})

    def _framer(self, call_id: CallId) -> _Framer:
        if call_id not in self._framers:
            raise KeyError(f"call {call_id!r} is not in the batch")
        return self._framers[call_id]


class MimiDecoderBatch:
    """Many calls' decoders, one batched forward per ``decode`` (the codec interface's
    ``DecoderBatch``): each call's new frames vocoded together, each as it would be alone (to
    float rounding). Not thread-safe: one thread drives a batch."""

    def __init__(self, codec: MimiCodec) -> None:
        self._codec = codec
        self._rows = _Rows(codec._decoder, codec.device)

    def __len__(self) -> int:
        return len(self._rows.ids)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._rows.index

    def add(self, call_id: CallId) -> None:
        self._rows.add(call_id)

    def remove(self, call_id: CallId) -> None:
        self._rows.remove(call_id)

    def decode(self, units: Mapping[C, np.ndarray]) -> dict[C, np.ndarray]:
        """Per call, codes [n, K] -> float32 PCM [n * 1920]."""
        checked = {c: self._codec.check_units(u) for c, u in units.items()}
        return {c: pcm.reshape(-1) for c, pcm in self._rows.step(checked).items()}


def from_spec(spec: dict[str, Any], base_dir: Path, device: str = "cpu") -> MimiCodec:
    """The registry's factory (streaming/codecs/__init__.py):
    ``{"type": "mimi", "dir": "<local Mimi directory>", "codebooks": 8}``, run on `device`."""
    ref = spec_string(spec, "dir", "a local Mimi directory in Hugging Face format")
    return MimiCodec.from_pretrained(
        resolve_path(ref, base_dir), spec.get("codebooks", DEFAULT_CODEBOOKS), device
    )
