"""The Llama decoder over session slots: transformers' weights and layers, our KV cache.

transformers' own forward keeps a cache per call and copies it as it grows; a tick serves many
sessions with ragged lengths and rolls caches back, so this module runs the same layers
(projections, rotary embedding, RMSNorm, MLP) over `SlotKVCache` with one batched attention
per layer. `tests/test_decoder.py` checks it against `LlamaForCausalLM.forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm, rotate_half

from model.engines.torch.slots import SlotKVCache


class SlotDecoder:
    """Runs a LlamaForCausalLM step by step for many sessions at once."""

    def __init__(self, llama: LlamaForCausalLM) -> None:
        self.llama = llama
        cfg = llama.config
        if cfg.hidden_act != "silu":
            raise ValueError(f"the slot decoder runs SiLU MLPs, not {cfg.hidden_act!r}")
        self.layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.kv_heads: int = cfg.num_key_value_heads or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.vocab_size = cfg.vocab_size
        param = next(llama.parameters())
        self.device = param.device
        self.dtype = param.dtype

    def new_cache(self, max_slots: int, capacity: int, reserve: int, sink: int = 0) -> SlotKVCache:
        return SlotKVCache(
            layers=self.layers,
            max_slots=max_slots,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            capacity=capacity,
            reserve=reserve,
            sink=sink,
            device=self.device,
            dtype=self.dtype,
        )

    @torch.inference_mode()
    def forward(self, cache: SlotKVCache, tokens: list[list[int]]) -> torch.Tensor:
        """Feed `tokens[r]` (possibly empty) to live row r; logits at each row's last token.

        Only rows with tokens are computed, and every per-token layer (projections, MLP,
        norms) runs on the real tokens alone, packed; only attention pads them to the longest
        row. A step's prefill is ragged (3 to 7 tokens a row) and its last forwards serve a
        few sessions, so neither pays for the others. Returns [rows, vocab] float32 logits;
        rows fed nothing get zeros.
        """
        rows = len(tokens)
        if rows != cache.live:
            raise ValueError(f"{rows} token rows for {cache.live} live slots")
        logits = torch.zeros((rows, self.vocab_size), device=self.device)
        active = [r for r, t in enumerate(tokens) if t]
        if not active:
            return logits
        # Attention runs over a view of rows 0..R-1 (idle rows ride along) or, when most of
        # those would be idle, over a gathered copy of the active rows: either costs about
        # the same per row.
        span_rows = active[-1] + 1
        att_rows = active if 2 * len(active) <= span_rows else list(range(span_rows))
        counts = [len(tokens[r]) for r in att_rows]
        n, width, batch = sum(counts), max(counts), len(att_rows)
        ids = torch.tensor([tok for r in active for tok in tokens[r]], device=self.device)
        refresh = cache.sink_refresh(active)
        plan = cache.plan_write(att_rows, counts)
        mask = cache.attention_mask(plan)
        # Grouped-query attention with the query heads of a KV head folded into the query
        # length: each KV head is read once for its group. On CPU this attention call took
        # 1.06 ms against 1.29 ms with SDPA's enable_gqa (32 sessions x 512 keys, one query
        # each); whole ticks did not move measurably.
        group = self.heads // self.kv_heads
        mask = mask.repeat(1, 1, group, 1)
        dense = n == batch * width  # every row has `width` tokens: packed is padded already
        if not dense:  # where each packed token sits in the padded [batch, width] layout
            b = torch.repeat_interleave(torch.arange(batch), torch.tensor(counts))
            t = torch.cat([torch.arange(c) for c in counts])
        last = (
            torch.tensor(counts, device=self.device).cumsum(0)[
                torch.tensor([i for i, c in enumerate(counts) if c])
            ]
            - 1
        )

        model = self.llama.model
        h = model.embed_tokens(ids)  # [n, hidden]
        cos, sin = model.rotary_emb(h, plan.pos[None])
        cos, sin = cos[0, :, None], sin[0, :, None]  # [n, 1, d]: broadcast over heads
        if refresh is not None:
            sink_rows, sink_pos = refresh
            sink_cos, sink_sin = model.rotary_emb(h, sink_pos)
            sink_cos, sink_sin = sink_cos[:, None], sink_sin[:, None]
        for i, layer in enumerate(model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            x = _rms_norm(h, layer.input_layernorm)
            q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(n, self.heads, -1)
            k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(n, self.kv_heads, -1)
            v = F.linear(x, attn.v_proj.weight, attn.v_proj.bias).view(n, self.kv_heads, -1)
            q = q * cos + rotate_half(q) * sin
            cache.write(i, plan, k * cos + rotate_half(k) * sin, v, k)
            if refresh is not None:
                raw = cache.sink_raw[i][sink_rows]
                cache.rotate_sink(i, sink_rows, raw * sink_cos + rotate_half(raw) * sink_sin)
            keys, values = cache.view(i, plan)
            if dense:
                padded = q.view(batch, width, self.heads, self.head_dim)
            else:
                padded = q.new_zeros((batch, width, self.heads, self.head_dim))
                padded[b, t] = q
            padded = padded.transpose(1, 2).reshape(
                batch, self.kv_heads, group * width, self.head_dim
            )
            out = F.scaled_dot_product_attention(
                padded, keys, values, attn_mask=mask, scale=attn.scaling
            )
            out = out.view(batch, self.heads, width, self.head_dim).transpose(1, 2)
            out = out.reshape(n, self.heads, self.head_dim) if dense else out[b, t]
            h = h + F.linear(out.reshape(n, -1), attn.o_proj.weight, attn.o_proj.bias)
            x = _rms_norm(h, layer.post_attention_layernorm)
            gate = F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias)
            up = F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias)
            h = h + F.linear(F.silu(gate) * up, mlp.down_proj.weight, mlp.down_proj.bias)
        head = self.llama.lm_head
        logits[active] = F.linear(_rms_norm(h[last], model.norm), head.weight, head.bias).float()
        return logits


def _rms_norm(x: torch.Tensor, norm: LlamaRMSNorm) -> torch.Tensor:
    """LlamaRMSNorm as one fused op (its module runs six), same weights and epsilon."""
    return F.rms_norm(x, tuple(norm.weight.shape), norm.weight, norm.variance_epsilon)
