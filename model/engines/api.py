"""The engine seam: what the server may ask of an engine, and the plain data they exchange.

The server imports this module and `model.engines.build_engine`, never an engine itself. An
engine owns the model, every call's conversation (its timeline) and whatever cache it keeps;
per tick the server hands it one `StepRequest` per live call and gets one `StepResult` back,
one agent chunk each (docs/architecture.md, "One tick"). Calls join and leave, and change
their sampling, only between steps, on the one thread that runs steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from model.format import ChunkFormat, Frame

if TYPE_CHECKING:  # the seam itself loads no torch: settings and the CLI import it
    from model.checkpoint import DuplexConfig
    from model.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """What the server asks of an engine it builds (from its settings)."""

    max_sessions: int  # calls served at once: the engine reserves a slot for each
    max_rollback_chunks: int  # how many user chunks may be estimated at once (the latency buffer)
    estimate_units: int | None = None  # most frames sampled per estimated chunk (None: a chunk)
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None  # CPU threads for the model (None: the engine's own choice)
    tensor_parallel_size: int = 1  # GPUs one engine's model is split over (vllm)
    # The longest opening (voice prompt, in codec frames) a call may bring; the attention sink
    # grows past the checkpoint's to hold it, whatever its content (None: what the
    # checkpoint's sink holds).
    opening_frames: int | None = None


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the engine tells the server: the format it speaks and what it can hold."""

    name: str  # as registered (`--engine`)
    config: DuplexConfig  # the checkpoint's duplex.json: codec, rates, vocabulary
    fmt: ChunkFormat  # the chunk format; frames are `fmt.units_per_frame`-tuples
    max_sessions: int
    max_rollback_chunks: int
    sink_tokens: int = 0  # the attention sink: a call's first tokens, kept for good
    max_opening_frames: int = 0  # the longest opening `add_session` takes (it fits the sink)

    @property
    def frames_per_chunk(self) -> int:
        return self.fmt.frames_per_chunk


@dataclass
class StepRequest:
    """One call's input to a step."""

    session_id: str
    real_user: dict[int, list[Frame]] = field(default_factory=dict)  # chunk index -> frames
    silent: bool = False  # a missed tick: write agent silence, estimate nothing
    # The first frames of a user chunk still arriving, as (chunk index, frames). Used when it
    # is the chunk this step estimates (k-1): the estimate starts with them.
    partial_user: tuple[int, list[Frame]] | None = None
    prompt: bool = False  # the caller asked for a response: this agent chunk starts with sound
    # Ranges of agent frames [a, b) (numbered over the call) that the caller never heard (a playback
    # acknowledgement at an interruption): silence in the model's context from this step on.
    unheard: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class StepResult:
    """What a step produced for one call."""

    chunk: int  # index k of the agent chunk
    frames: list[Frame]  # agent chunk k, frames_per_chunk frames
    replaced: list[int]  # user chunks whose estimates real audio replaced
    dropped: list[int]  # real user chunks too old to replace (beyond the rollback reserve)
    rollback_tokens: int
    prefill_tokens: int
    estimate: list[Frame] = field(default_factory=list)  # user chunk k-1 as estimated here
    partial_frames: int = 0  # real frames the estimate starts with
    tokens: int = 0  # length of the conversation in tokens after this step
    unheard_silenced: int = 0  # of `StepRequest.unheard`, the frames made silence
    unheard_beyond_reach: int = 0  # ... and those too old to change (beyond the rollback reserve)
    barged_in: bool = False  # the caller barged in: from this chunk on the agent is silent

    @property
    def estimated(self) -> bool:
        return bool(self.estimate)


@dataclass
class CallState:
    """A call's conversation and sampling as an engine holds them, to go on in another engine
    (moving a call off a draining server: decisions.md section 12). Chunks are numbered as
    the timeline numbers them (a voice prompt's `opening` chunks first)."""

    agent: list[list[Frame]]
    user: list[list[Frame]]  # one chunk fewer than `agent`: a closed timeline
    user_real: list[bool]  # False: still the model's estimate
    opening: int
    pending: dict[int, list[Frame]]  # real user chunks not yet in the timeline
    params: SamplingParams
    generator: bytes  # the call's random stream (torch.Generator.get_state)
    barged_in: bool


class Engine(Protocol):
    """A synchronous tick engine: every requested call advances one agent chunk per step."""

    info: EngineInfo

    def add_session(
        self, session_id: str, params: SamplingParams, opening: Sequence[Frame] = ()
    ) -> None:
        """A call joins; raises RuntimeError when no slot is free. `opening` (a voice prompt:
        at most `info.max_opening_frames` codec frames, else ValueError) is written as whole
        chunks of the agent's speech over user silence before the call's chunk 0 and stays
        in the attention sink for the whole call; the call's chunks (`StepRequest`,
        `StepResult`) are numbered from after it, as without one."""
        ...

    def remove_session(self, session_id: str) -> None:
        """A call leaves; its slot is free for the next."""
        ...

    def export(self, session_id: str) -> CallState:
        """A call's state, for `adopt` in another engine (the call stays until removed)."""
        ...

    def adopt(self, session_id: str, state: CallState) -> None:
        """A call moved from another engine joins with its conversation, which the next step
        prefills; raises when no slot is free."""
        ...

    def retune(self, session_id: str, params: SamplingParams) -> None:
        """Sample a call's next steps with `params`; its random stream goes on unless the seed
        changes."""
        ...

    def step(self, requests: list[StepRequest]) -> dict[str, StepResult]:
        """Advance each requested call by one agent chunk, all in one batched step."""
        ...

    def warm_up(self) -> float:
        """Run steps of every shape at full load and full context before the first call;
        return the slowest step in seconds (what the server's pacing starts from)."""
        ...


class EngineFactory(Protocol):
    """How the registry builds an engine (model/engines/__init__.py)."""

    def __call__(self, checkpoint: Path, options: EngineOptions) -> Engine: ...
