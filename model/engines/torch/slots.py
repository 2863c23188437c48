"""KV cache in preallocated session slots: an attention sink plus a ring, per slot.

Each live session owns one row ("slot") of `capacity` entries. The first `sink` positions of a
call (its opening: the prompt and first chunks) stay at indices [0, sink) for good; later
positions p go round a ring at index sink + (p - sink) % ring. A query at position q sees the
sink and the ring positions in (q - window, q], so a call can last any time at flat cost.

RoPE: ring keys are rotated at their absolute positions (queries only ever see relative
distances < window there). Sink keys are kept un-rotated too, and once the window has slid past
them they are re-rotated to sit just before the window's oldest position, so no relative
distance ever exceeds sink + window (the model's trained context), as in StreamingLLM.

Rollback is moving a length back: no copy, no invalidation (stale entries have positions
beyond every query and are masked by causality until they are overwritten). The `reserve` =
ring - window positions are never attended, which keeps rollback safe after wrap-around:
positions overwritten by rolled-back tokens are older than the window of every later query.
Live slots are kept contiguous (rows 0..n-1) so a forward over every session attends over
views; one over a few of them (the last forwards of a step) gathers just their rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

SINK_SLACK = 16  # re-rotate sink keys only when the window moved this far (a bounded error)

Rotate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (keys, positions) -> rotated


@dataclass(frozen=True, slots=True)
class WritePlan:
    """Where one forward's N new tokens go, worked out once for every layer."""

    qpos: torch.Tensor  # [rows, T] query positions (padding repeats the last real one)
    rows: torch.Tensor  # [N] slot row of each token
    pos: torch.Tensor  # [N] absolute position of each token
    index: torch.Tensor  # [N] cache index of each token
    in_sink: torch.Tensor | None  # [N] booleans, None when no token lands in the sink
    attended: int  # how many rows the forward attends for
    gather: torch.Tensor | None  # those rows when they are not 0..attended-1 (else a view)
    span: int  # cache indices 0..span-1 hold every attended row's keys


class SlotKVCache:
    """Per-layer K/V tensors [slots, kv_heads, capacity, head_dim], per-slot lengths."""

    def __init__(
        self,
        *,
        layers: int,
        max_slots: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        reserve: int,
        sink: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        ring = capacity - sink
        if not 0 <= sink < capacity or not 0 < reserve < ring:
            raise ValueError(
                f"need 0 <= sink ({sink}) < capacity ({capacity}) and "
                f"0 < reserve ({reserve}) < capacity - sink ({ring})"
            )
        self.capacity = capacity
        self.sink = sink
        self.ring = ring
        self.window = ring - reserve
        self.max_slots = max_slots
        shape = (max_slots, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        sink_shape = (max_slots, kv_heads, sink, head_dim)
        self.sink_raw = [torch.zeros(sink_shape, device=device, dtype=dtype) for _ in range(layers)]
        self.positions = torch.full((max_slots, capacity), -1, dtype=torch.long, device=device)
        self.lengths = [0] * max_slots
        self.sink_shift = [0] * max_slots  # how far each row's sink keys are re-rotated
        self.live = 0  # rows 0..live-1 are in use

    def allocate(self) -> int:
        """Take the next free row for a new session (its length starts at 0)."""
        if self.live >= self.max_slots:
            raise RuntimeError(f"all {self.max_slots} KV slots are in use")
        row = self.live
        self.live += 1
        self.lengths[row] = 0
        self.sink_shift[row] = 0
        self.positions[row].fill_(-1)
        return row

    def release(self, row: int) -> int | None:
        """Free `row`; the last live row moves into it. Returns the row that moved, if any."""
        last = self.live - 1
        if not 0 <= row <= last:
            raise ValueError(f"row {row} is not live (live rows: 0..{last})")
        moved = None
        if row != last:
            for tensors in (self.keys, self.values, self.sink_raw):
                for t in tensors:
                    t[row].copy_(t[last])
            self.positions[row].copy_(self.positions[last])
            self.lengths[row] = self.lengths[last]
            self.sink_shift[row] = self.sink_shift[last]
            moved = last
        self.lengths[last] = 0
        self.live = last
        return moved

    def rollback(self, row: int, length: int) -> None:
        """Forget every token from `length` on (O(1))."""
        current = self.lengths[row]
        if not 0 <= length <= current:
            raise ValueError(f"cannot roll row {row} back to {length}: it holds {current}")
        reserve = self.ring - self.window
        if current - length > reserve:
            raise ValueError(f"rollback depth {current - length} exceeds the reserve {reserve}")
        self.lengths[row] = length

    def _index(self, pos: torch.Tensor) -> torch.Tensor:
        s = self.sink
        return torch.where(pos < s, pos, s + (pos - s) % self.ring)

    def plan_write(self, rows: list[int], counts: list[int]) -> WritePlan:
        """Positions for `counts[i]` new tokens on live row `rows[i]`; records them and
        advances lengths. A row with no tokens rides along (its query repeats its last
        position; its output is meaningless). `rows` ascend; tokens are numbered row by row."""
        width = max(max(counts), 1)
        qpos = torch.empty((len(rows), width), dtype=torch.long)
        flat_rows: list[int] = []
        flat_pos: list[int] = []
        for i, (r, n) in enumerate(zip(rows, counts, strict=True)):
            start = self.lengths[r]
            if n:
                flat_rows += [r] * n
                flat_pos += range(start, start + n)
                qpos[i, :n] = torch.arange(start, start + n)
                qpos[i, n:] = start + n - 1
            else:
                qpos[i, :] = max(start - 1, 0)
            self.lengths[r] = start + n
        device = self.positions.device
        row_idx = torch.tensor(flat_rows, dtype=torch.long, device=device)
        pos = torch.tensor(flat_pos, dtype=torch.long, device=device)
        index = self._index(pos)
        self.positions[row_idx, index] = pos
        in_sink = pos < self.sink if flat_pos and min(flat_pos) < self.sink else None
        contiguous = rows[-1] == len(rows) - 1  # ascending rows 0..n-1
        gather = None if contiguous else torch.tensor(rows, device=device)
        span = max(1, min(self.capacity, max(self.lengths[r] for r in rows)))
        return WritePlan(qpos.to(device), row_idx, pos, index, in_sink, len(rows), gather, span)

    def attention_mask(self, plan: WritePlan) -> torch.Tensor:
        """Additive mask [rows, 1, T, plan.span] (0 = seen, -inf = not) over cache indices
        0..span-1 for the plan's attended rows."""
        span = plan.span
        kpos = self._rows(self.positions, plan)[:, :span][:, None, :]  # [rows, 1, span]
        q = plan.qpos[:, :, None]  # [rows, T, 1]
        seen = (kpos <= q) & (kpos >= 0) & ((kpos < self.sink) | (kpos > q - self.window))
        # a row with nothing to attend to (a fresh slot riding along) would give NaN
        seen |= ~seen.any(dim=-1, keepdim=True)
        mask = torch.zeros(seen.shape, dtype=self.keys[0].dtype, device=seen.device)
        return mask.masked_fill_(~seen, float("-inf"))[:, None]

    def write(
        self, layer: int, plan: WritePlan, k: torch.Tensor, v: torch.Tensor, k_raw: torch.Tensor
    ) -> None:
        """Store the new tokens' keys/values ([N, kv_heads, head_dim]) of one layer.

        `k_raw` are the keys before RoPE, kept for the sink positions.
        """
        self.keys[layer][plan.rows, :, plan.index] = k
        self.values[layer][plan.rows, :, plan.index] = v
        if plan.in_sink is not None:
            sel = plan.in_sink
            self.sink_raw[layer][plan.rows[sel], :, plan.pos[sel]] = k_raw[sel]

    def sink_refresh(self, rows: list[int]) -> tuple[list[int], torch.Tensor] | None:
        """Rows whose sink keys must be re-rotated now, with their new sink positions [n, sink].

        A row's sink sits just before the oldest position its window shows; it is moved only
        when that drifted by SINK_SLACK, so most steps re-rotate nothing.
        """
        if not self.sink:
            return None
        todo: list[int] = []
        shifts: list[int] = []
        for r in rows:
            want = max(0, self.lengths[r] - self.window - self.sink)
            if abs(want - self.sink_shift[r]) >= SINK_SLACK or (want == 0) != (
                self.sink_shift[r] == 0
            ):
                todo.append(r)
                shifts.append(want)
                self.sink_shift[r] = want
        if not todo:
            return None
        base = torch.arange(self.sink, device=self.positions.device)
        offsets = torch.tensor(shifts, device=self.positions.device)[:, None]
        return todo, base[None, :] + offsets

    def rotate_sink(self, layer: int, rows: list[int], rotated: torch.Tensor) -> None:
        """Put re-rotated sink keys ([n, kv_heads, sink, head_dim]) in place."""
        self.keys[layer][rows, :, : self.sink] = rotated

    def view(self, layer: int, plan: WritePlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [rows, kv_heads, span, head_dim] of one layer, the plan's rows."""
        keys = self._rows(self.keys[layer], plan)
        return keys[:, :, : plan.span], self._rows(self.values[layer], plan)[:, :, : plan.span]

    @staticmethod
    def _rows(t: torch.Tensor, plan: WritePlan) -> torch.Tensor:
        """The plan's attended rows of `t`: a view of 0..n-1, or a gathered copy."""
        return t[: plan.attended] if plan.gather is None else t[plan.gather]
