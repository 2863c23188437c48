"""One session's conversation as the model sees it: chunk frames per speaker and their tokens.

The token list is always `format_timeline(agent, user)` plus any tokens of a chunk being
generated. Replacing an estimated user chunk truncates the tokens at that chunk and re-formats
what follows from the stored frames: agent frames stay as they were sent, except audio the
caller never heard, which becomes silence (a playback acknowledgement); later user chunks keep
their real audio or earlier estimates. `cached` tracks how much of the token
list the KV cache holds, so the runner knows what to roll back and what to prefill.

A call may open with a voice prompt (`open`): whole chunks of the agent's speech over user
silence before the call's own chunk 0. They are chunks 0..opening-1 here; the engine numbers
the call's chunks after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from model.format import ChunkFormat, Frame, agent_tokens, dedup, interpolate, user_tokens


@dataclass
class Timeline:
    fmt: ChunkFormat
    tokens: list[int] = field(default_factory=list)
    agent: list[list[Frame]] = field(default_factory=list)
    user: list[list[Frame]] = field(default_factory=list)
    user_real: list[bool] = field(default_factory=list)
    agent_start: list[int] = field(default_factory=list)  # token index of each [S0]
    user_start: list[int] = field(default_factory=list)  # token index where user chunk j begins
    cached: int = 0  # tokens[:cached] are in the KV cache
    opening: int = 0  # chunks of a voice prompt before the call's chunk 0

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = [self.fmt.bos]

    def open(self, frames: Sequence[Frame]) -> None:
        """Write a voice prompt as the agent's speech, user silence beside it, in whole chunks
        (the last one filled with silence) before anything else of the call."""
        if self.agent:
            raise ValueError("a voice prompt opens a timeline, before its first chunk")
        n = self.fmt.frames_per_chunk
        padded = list(frames) + [self.fmt.silence] * (-len(frames) % n)
        quiet = [self.fmt.silence] * n
        for i in range(0, len(padded), n):
            self.append_agent(dedup(padded[i : i + n], self.prev_agent()))
            self.append_user(quiet, real=True)
        self.opening = len(padded) // n

    def prev_agent(self) -> Frame:
        return self.agent[-1][-1] if self.agent else self.fmt.silence

    def prev_user(self) -> Frame:
        return self.user[-1][-1] if self.user else self.fmt.silence

    def silent_chunks(self, limit: int) -> int:
        """How many of the last closed chunk pairs are silence on both sides, counting to
        `limit` at most."""
        quiet = [self.fmt.silence] * self.fmt.frames_per_chunk
        n = 0
        for a, u in zip(reversed(self.agent), reversed(self.user), strict=False):
            if n == limit or a != quiet or u != quiet:
                break
            n += 1
        return n

    def append_agent(self, new: list[Frame], *, tokens_written: bool = False) -> list[Frame]:
        """Close agent chunk len(agent) from its deduplicated frames; returns its frames."""
        if len(self.user) != len(self.agent) or (self.agent and not self.user):
            raise ValueError(f"agent chunk {len(self.agent)} before user chunk {len(self.user)}")
        toks = agent_tokens(self.fmt, new)
        if tokens_written:
            start = len(self.tokens) - len(toks)
            if self.tokens[start:] != toks:
                raise ValueError("written agent tokens differ from the chunk's format")
        else:
            start = len(self.tokens)
            self.tokens += toks
        frames = interpolate(new, self.prev_agent(), self.fmt.frames_per_chunk)
        self.agent.append(frames)
        self.agent_start.append(start)
        return frames

    def append_user(self, frames: list[Frame], *, real: bool, tokens_written: int = 0) -> None:
        """Add user chunk len(user) (real audio units or an estimate)."""
        if len(self.user) + 1 != len(self.agent):
            raise ValueError(f"user chunk {len(self.user)} needs agent chunk {len(self.user)}")
        toks = user_tokens(self.fmt, dedup(frames, self.prev_user()))
        start = len(self.tokens) - tokens_written
        if tokens_written and self.tokens[start:] != toks:
            raise ValueError("written user tokens differ from the chunk's format")
        if not tokens_written:
            self.tokens += toks
        self.user.append(list(frames))
        self.user_real.append(real)
        self.user_start.append(start)

    def replace_user(self, j: int, frames: list[Frame]) -> int:
        """Put real frames in place of user chunk j's estimate; returns the rollback point:
        where the re-formatted tokens first differ from the old ones. A KV entry depends only
        on the tokens before it, so an estimate that was right (silence, most often) costs no
        rollback and no prefill."""
        if not 0 <= j < len(self.user):
            raise ValueError(f"no user chunk {j} to replace (have {len(self.user)})")
        later = list(zip(self.user[j:], self.user_real[j:], strict=True))
        later[0] = (frames, True)
        return self._rewrite(j, self.agent[j + 1 :], later, from_agent=False)

    def silence_agent(self, first: int, end: int) -> int:
        """Make agent frames [first, end) (counted over the whole call) silence: audio the
        caller never heard, so that the model's history is what they heard. Frames not
        generated yet are left alone. Returns the rollback point, as `replace_user`."""
        n = self.fmt.frames_per_chunk
        end = min(end, len(self.agent) * n)
        if not 0 <= first < end:
            return len(self.tokens)
        j = first // n
        agent = [list(chunk) for chunk in self.agent[j:]]
        for f in range(first, end):
            agent[f // n - j][f % n] = self.fmt.silence
        later = list(zip(self.user[j:], self.user_real[j:], strict=True))
        return self._rewrite(j, agent, later, from_agent=True)

    def _rewrite(
        self,
        j: int,
        agent: list[list[Frame]],
        user: list[tuple[list[Frame], bool]],
        *,
        from_agent: bool,
    ) -> int:
        """Re-format the timeline from agent chunk j (`from_agent`) or user chunk j on, with
        these chunks in place of the old ones (chunks of each speaker alternate: agent j, user
        j, agent j+1, ...); returns where the tokens first differ, and moves `cached` there."""
        if len(self.agent) != len(self.user) + 1:
            raise ValueError("a rewrite needs a closed timeline (no chunk in progress)")
        cut = self.agent_start[j] if from_agent else self.user_start[j]
        old = self.tokens[cut:]
        keep = j if from_agent else j + 1
        del self.tokens[cut:]
        del self.agent[keep:], self.agent_start[keep:]
        del self.user[j:], self.user_real[j:], self.user_start[j:]
        if not from_agent:
            self.append_user(user[0][0], real=user[0][1])
            user = user[1:]
        for i, a_frames in enumerate(agent):
            self.append_agent(dedup(a_frames, self.prev_agent()))
            if i < len(user):
                self.append_user(user[i][0], real=user[i][1])
        same = next(
            (i for i, (a, b) in enumerate(zip(old, self.tokens[cut:], strict=False)) if a != b),
            min(len(old), len(self.tokens) - cut),
        )
        self.cached = min(self.cached, cut + same)
        return cut + same


def opening_tokens(fmt: ChunkFormat, chunks: int) -> int:
    """The most tokens a timeline opened with `chunks` chunks of voice prompt holds: BOS, then
    per chunk `[S0]` and every frame new (user silence adds none: it starts silent)."""
    return 1 + chunks * (1 + fmt.frames_per_chunk * fmt.units_per_frame)
