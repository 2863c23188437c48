"""KV cache in preallocated session slots.

Each live session owns one row ("slot") of fixed capacity W. Token at absolute position p is
stored at ring index p % W with its position recorded in `positions`; queries attend to keys
with position in (q - window, q]. Positions keep growing, so a call can last any time at flat
cost (RoPE only sees relative distances <= window). The `reserve` = W - window positions are
never attended, which is what makes rollback safe: rolling back to m only needs positions
(m - window, m), and a later write at p >= m overwrites ring slots of positions p - W, which
are older than m - window as long as the rollback depth is <= reserve.

Rollback is moving a length back: no copy, no invalidation (stale entries have positions
beyond every query and are masked by causality until they are overwritten).
Live slots are kept contiguous (rows 0..n-1) so a step attends over views, never gathers.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    """Per-layer K/V tensors [slots, kv_heads, W, head_dim], per-slot lengths."""

    def __init__(
        self,
        *,
        layers: int,
        max_slots: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        reserve: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not 0 < reserve < capacity:
            raise ValueError(f"reserve {reserve} must be in (0, capacity {capacity})")
        self.capacity = capacity
        self.window = capacity - reserve
        self.max_slots = max_slots
        shape = (max_slots, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.positions = torch.full((max_slots, capacity), -1, dtype=torch.long, device=device)
        self.lengths = [0] * max_slots
        self.live = 0  # rows 0..live-1 are in use

    def allocate(self) -> int:
        """Take the next free row for a new session (its length starts at 0)."""
        if self.live >= self.max_slots:
            raise RuntimeError(f"all {self.max_slots} KV slots are in use")
        row = self.live
        self.live += 1
        self.lengths[row] = 0
        self.positions[row].fill_(-1)
        return row

    def release(self, row: int) -> int | None:
        """Free `row`; the last live row moves into it. Returns the row that moved, if any."""
        last = self.live - 1
        if not 0 <= row <= last:
            raise ValueError(f"row {row} is not live (live rows: 0..{last})")
        moved = None
        if row != last:
            for k, v in zip(self.keys, self.values, strict=True):
                k[row].copy_(k[last])
                v[row].copy_(v[last])
            self.positions[row].copy_(self.positions[last])
            self.lengths[row] = self.lengths[last]
            moved = last
        self.lengths[last] = 0
        self.live = last
        return moved

    def rollback(self, row: int, length: int) -> None:
        """Forget every token from `length` on (O(1))."""
        current = self.lengths[row]
        if not 0 <= length <= current:
            raise ValueError(f"cannot roll row {row} back to {length}: it holds {current}")
        reserve = self.capacity - self.window
        if current - length > reserve:
            raise ValueError(f"rollback depth {current - length} exceeds the reserve {reserve}")
        self.lengths[row] = length

    def plan_write(self, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions for `counts[i]` new tokens per live row; records them and advances lengths.

        Returns (query positions [rows, T] (padding repeats the last real position),
        flat row index [N], flat ring index [N]) for the N real tokens.
        """
        rows = len(counts)
        width = max(max(counts), 1)
        qpos = torch.empty((rows, width), dtype=torch.long)
        flat_rows: list[int] = []
        flat_pos: list[int] = []
        for r, n in enumerate(counts):
            start = self.lengths[r]
            if n:
                pos = list(range(start, start + n))
                flat_rows += [r] * n
                flat_pos += pos
                qpos[r, :n] = torch.arange(start, start + n)
                qpos[r, n:] = start + n - 1
            else:
                qpos[r, :] = max(start - 1, 0)
            self.lengths[r] = start + n
        device = self.positions.device
        row_idx = torch.tensor(flat_rows, dtype=torch.long, device=device)
        pos_t = torch.tensor(flat_pos, dtype=torch.long, device=device)
        ring_idx = pos_t % self.capacity
        self.positions[row_idx, ring_idx] = pos_t
        return qpos.to(device), row_idx, ring_idx

    def attention_mask(self, qpos: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Boolean mask [rows, 1, T, span] over ring indices 0..span-1, and span."""
        rows = qpos.shape[0]
        span = min(self.capacity, max(self.lengths[:rows]))
        kpos = self.positions[:rows, :span][:, None, :]  # [rows, 1, span]
        q = qpos[:, :, None]  # [rows, T, 1]
        mask = (kpos <= q) & (kpos > q - self.window) & (kpos >= 0)
        # a row with nothing to attend to (a fresh slot riding along) would give NaN
        mask |= ~mask.any(dim=-1, keepdim=True)
        return mask[:, None], span

    def write(
        self,
        layer: int,
        row_idx: torch.Tensor,
        ring_idx: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> None:
        """Store the new tokens' keys/values ([N, kv_heads, head_dim]) of one layer."""
        self.keys[layer][row_idx, :, ring_idx] = k
        self.values[layer][row_idx, :, ring_idx] = v

    def view(self, layer: int, rows: int, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer][:rows, :, :span], self.values[layer][:rows, :, :span]
