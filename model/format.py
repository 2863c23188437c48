"""The synchronous chunk format (SyncLLM): time chunks, speaker tags, deduplicated units.

A conversation is `[BOS] [S0] agent_0 [S1] user_0 [S0] agent_1 [S1] user_1 ...`. Each chunk
covers `frames_per_chunk` codec frames per speaker. Runs of identical frames are collapsed per
speaker, also across chunk borders; `[S0]` is always written, `[S1]` only when the user adds a
new frame. Timing comes back by interpolation: a chunk's new frames are repeated evenly to fill
it (remainder spread from the front), an empty chunk repeats the speaker's previous frame.
Both speakers start from the silence frame (what digital silence encodes to, per codebook), so
a silent opening costs no unit tokens.

Frames are tuples of `units_per_frame` unit ids (one for the default codec); a frame's tokens
are `unit_offset + codebook * n_units + unit`. Deduplication applies to whole frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Frame = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ChunkFormat:
    """Vocabulary layout and chunk geometry, as stated by a checkpoint's duplex.json."""

    n_units: int
    units_per_frame: int
    unit_offset: int
    frames_per_chunk: int
    s0: int
    s1: int
    bos: int
    silence_unit: int
    # What digital silence encodes to, one unit per codebook (a neural codec's differs per
    # codebook); None: `silence_unit` in every codebook.
    silence_frame: Frame | None = None

    def __post_init__(self) -> None:
        if self.silence_frame is not None:
            self.frame_tokens(self.silence_frame)  # K units, each in range, or ValueError

    @property
    def silence(self) -> Frame:
        """The frame both speakers start from, and the one a quiet speaker holds."""
        if self.silence_frame is not None:
            return self.silence_frame
        return (self.silence_unit,) * self.units_per_frame

    @property
    def unit_token_range(self) -> range:
        return range(self.unit_offset, self.unit_offset + self.n_units * self.units_per_frame)

    def frame_tokens(self, frame: Frame) -> list[int]:
        if len(frame) != self.units_per_frame:
            raise ValueError(f"frame has {len(frame)} units, expected {self.units_per_frame}")
        out = []
        for book, unit in enumerate(frame):
            if not 0 <= unit < self.n_units:
                raise ValueError(f"unit {unit} out of range [0, {self.n_units})")
            out.append(self.unit_offset + book * self.n_units + unit)
        return out

    def token_unit(self, token: int) -> int:
        """The unit id of a unit token (its codebook position is implied by its place)."""
        rel = token - self.unit_offset
        if not 0 <= rel < self.n_units * self.units_per_frame:
            raise ValueError(f"token {token} is not a unit token")
        return rel % self.n_units

    def token_book(self, token: int) -> int:
        """The codebook of a unit token."""
        return (token - self.unit_offset) // self.n_units

    def frames(self, units: Sequence[int]) -> list[Frame]:
        """Units in frame order (codebook 0 first) as whole frames."""
        k = self.units_per_frame
        if len(units) % k:
            raise ValueError(f"{len(units)} units do not make whole {k}-unit frames")
        return [tuple(units[i : i + k]) for i in range(0, len(units), k)]

    def frames_from_tokens(self, tokens: Sequence[int]) -> list[Frame]:
        k = self.units_per_frame
        for i, tok in enumerate(tokens):
            book = self.token_book(tok)
            if book != i % k:
                raise ValueError(f"token {tok} at frame position {i % k} is from codebook {book}")
        return self.frames([self.token_unit(t) for t in tokens])


def dedup(frames: Sequence[Frame], prev: Frame) -> list[Frame]:
    """Drop every frame equal to the one before it (`prev` precedes the first)."""
    out: list[Frame] = []
    last = prev
    for frame in frames:
        if frame != last:
            out.append(frame)
            last = frame
    return out


def interpolate(new: Sequence[Frame], prev: Frame, n: int) -> list[Frame]:
    """Spread `new` evenly over `n` frames; an empty chunk holds `prev` throughout."""
    m = len(new)
    if m == 0:
        return [prev] * n
    if m > n:
        raise ValueError(f"{m} new frames do not fit a chunk of {n} frames")
    base, extra = divmod(n, m)
    out: list[Frame] = []
    for i, frame in enumerate(new):
        out.extend([frame] * (base + (1 if i < extra else 0)))
    return out


def agent_tokens(fmt: ChunkFormat, new: Sequence[Frame]) -> list[int]:
    """An agent chunk's tokens: `[S0]` always, then its deduplicated frames."""
    return [fmt.s0] + [t for f in new for t in fmt.frame_tokens(f)]


def user_tokens(fmt: ChunkFormat, new: Sequence[Frame]) -> list[int]:
    """A user chunk's tokens: nothing when no new frame, else `[S1]` and the frames."""
    if not new:
        return []
    return [fmt.s1] + [t for f in new for t in fmt.frame_tokens(f)]


def format_timeline(
    fmt: ChunkFormat, agent: Sequence[Sequence[Frame]], user: Sequence[Sequence[Frame]]
) -> list[int]:
    """Tokens of a whole conversation; `user` may be one chunk shorter than `agent`."""
    if not len(agent) - 1 <= len(user) <= len(agent):
        raise ValueError(f"{len(agent)} agent chunks need {len(agent) - 1} or {len(agent)} user")
    tokens = [fmt.bos]
    prev_a = prev_u = fmt.silence
    for k, chunk in enumerate(agent):
        _check_chunk(fmt, chunk)
        new = dedup(chunk, prev_a)
        tokens += agent_tokens(fmt, new)
        prev_a = chunk[-1]
        if k < len(user):
            _check_chunk(fmt, user[k])
            tokens += user_tokens(fmt, dedup(user[k], prev_u))
            prev_u = user[k][-1]
    return tokens


def parse_timeline(
    fmt: ChunkFormat, tokens: Sequence[int]
) -> tuple[list[list[Frame]], list[list[Frame]]]:
    """Inverse of format_timeline up to interpolation: each chunk's frames per speaker."""
    if not tokens or tokens[0] != fmt.bos:
        raise ValueError("a timeline starts with [BOS]")
    agent: list[list[Frame]] = []
    user: list[list[Frame]] = []
    prev_a = prev_u = fmt.silence
    i, n = 1, len(tokens)
    while i < n:
        if tokens[i] != fmt.s0:
            raise ValueError(f"token {i} is {tokens[i]}, expected [S0] to open a chunk")
        j = _segment_end(fmt, tokens, i + 1)
        a_new = fmt.frames_from_tokens(tokens[i + 1 : j])
        agent.append(interpolate(a_new, prev_a, fmt.frames_per_chunk))
        prev_a = agent[-1][-1]
        if j < n and tokens[j] == fmt.s1:
            i = _segment_end(fmt, tokens, j + 1)
            u_new = fmt.frames_from_tokens(tokens[j + 1 : i])
            if not u_new:
                raise ValueError(f"[S1] at {j} is followed by no unit")
        else:
            i, u_new = j, []
        if i < n or u_new:
            user.append(interpolate(u_new, prev_u, fmt.frames_per_chunk))
            prev_u = user[-1][-1]
    return agent, user


def _segment_end(fmt: ChunkFormat, tokens: Sequence[int], start: int) -> int:
    i = start
    while i < len(tokens) and tokens[i] not in (fmt.s0, fmt.s1):
        if tokens[i] == fmt.bos:
            raise ValueError(f"[BOS] at {i} inside a conversation")
        i += 1
    return i


def _check_chunk(fmt: ChunkFormat, chunk: Sequence[Frame]) -> None:
    if len(chunk) != fmt.frames_per_chunk:
        raise ValueError(f"chunk has {len(chunk)} frames, expected {fmt.frames_per_chunk}")
