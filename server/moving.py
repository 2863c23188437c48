"""Moving live calls off a draining replica (decisions.md section 12; docs/deploy.md).

On SIGTERM, each live native call that could resume (it has a token) is packed
between two steps: its conversation and random stream (the engine's `CallState`), where its
clock stands, its figures and the key its token is bound to. It goes to a peer with room
(`--peers`), which re-prefills the conversation at its next tick and keeps the call waiting
for its client as a dropped call waits (server/resume.py). The client is told `moved` with
the peer's token and name and closed with 1012; it reconnects through the load balancer
(`?replica=NAME`) and resumes. The caller's audio of the chunk under way and of the
reconnection is silence; the agent's chunks the client missed are sent again.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from model.engines.api import CallState
from model.sampling import SamplingParams
from server.session import CallSession, CallStats, State
from streaming.wire import AudioFormat, ErrorCode, MovedMessage, ProtocolError
from streaming.wire import SamplingParams as SamplingRequest

if TYPE_CHECKING:
    from server.runtime import Runtime

log = logging.getLogger("duplex.moving")

INTERNAL_PATH = "/v1/internal/calls"
PEER_TIMEOUT_S = 5.0


class CallPackage(BaseModel):
    """A call on its way to another replica (JSON over `POST /v1/internal/calls`)."""

    session_id: str
    audio: AudioFormat
    asked: SamplingRequest
    asked_gate_db: float | None
    noise_gate_db: float
    engine: dict[str, Any]  # CallState, frames as lists, the generator in base64
    next_chunk: int  # the call's next agent chunk
    user_chunk: int  # its first user chunk not complete: the new stream starts there,
    user_frames: list[list[int]]  # after the frames of it encoded so far
    samples_out: int  # agent wire samples sent
    client_offset: int  # the stream's samples minus the client's (re-anchoring)
    stats: dict[str, Any]
    key_hash: str  # of the API key the call's token is bound to (hex)
    resumes: int
    barge_in_notices: bool = False


def pack(runtime: Runtime, s: CallSession) -> CallPackage:
    """The call's state, taken between two steps (no step may run meanwhile)."""
    state = runtime.engine.export(s.id)
    chunks, part = s.user_in.drain()  # whole chunks the engine has not had yet
    for c in chunks:
        state.pending[c.index + state.opening] = [tuple(f) for f in c.units.tolist()]
    engine = dataclasses.asdict(state)
    engine["params"] = dataclasses.asdict(state.params)
    engine["generator"] = base64.b64encode(state.generator).decode()
    engine["pending"] = {str(j): f for j, f in state.pending.items()}
    stats = dataclasses.asdict(s.stats)
    stats["unreplaced"] = sorted(s.stats.unreplaced)
    return CallPackage(
        session_id=s.id,
        audio=s.audio,
        asked=s.asked[0],
        asked_gate_db=s.asked[1],
        noise_gate_db=s.user_in.gate.margin_db,
        engine=engine,
        next_chunk=len(state.agent) - state.opening,
        user_chunk=part.index,
        user_frames=part.units.tolist(),
        samples_out=s.agent_out.samples_out,
        client_offset=s.user_in.samples_in - s.expected_sample,
        stats=stats,
        key_hash=runtime.resume.key_hash(s).hex(),
        resumes=s.resumes,
        barge_in_notices=s.barge_in_notices,
    )


def unpack_state(engine: dict[str, Any]) -> CallState:
    def frames(chunks: list[list[list[int]]]) -> list[list[tuple[int, ...]]]:
        return [[tuple(f) for f in c] for c in chunks]

    return CallState(
        agent=frames(engine["agent"]),
        user=frames(engine["user"]),
        user_real=list(engine["user_real"]),
        opening=int(engine["opening"]),
        pending={int(j): [tuple(f) for f in c] for j, c in engine["pending"].items()},
        params=SamplingParams(**engine["params"]),
        generator=base64.b64decode(engine["generator"]),
        barged_in=bool(engine["barged_in"]),
    )


def unpack_stats(stats: dict[str, Any]) -> CallStats:
    return CallStats(**{**stats, "unreplaced": set(stats["unreplaced"])})


async def move_calls(runtime: Runtime) -> int:
    """Move every live call that can resume to a peer with room; returns how many moved.
    A call no peer takes stays, and ends as the drain ends it."""
    peers = runtime.settings.peers
    movable = [
        s
        for s in runtime.ticker.sessions.values()
        if s.state is State.LIVE
        and s.opened
        and s.resume_token
        and s.detached_at is None
        and s.adapter is None  # native: a Realtime client has no `moved` to follow
    ]
    moved = 0
    for s in movable:
        if s.state is not State.LIVE:
            continue
        await runtime.ticker.between_steps()
        package = pack(runtime, s)  # no await between the two: no step runs in between
        for peer in peers:
            try:
                answer = await asyncio.to_thread(_post, peer, package, runtime.settings.api_keys)
            except (OSError, ValueError) as exc:  # refused, full, unreachable, not ours
                log.warning("call %s not moved to %s: %s", s.id, peer, exc)
                continue
            s.send_moved(MovedMessage(**answer))
            runtime.metrics.calls_moved.inc()
            log.info("call %s moved to %s (%s)", s.id, peer, answer.get("replica") or "-")
            moved += 1
            break
    return moved


def _post(peer: str, package: CallPackage, keys: list[str]) -> dict[str, Any]:
    """Hand the call to `peer`; its answer (`resume_token`, `replica`)."""
    headers = {"Content-Type": "application/json"}
    if keys:
        headers["Authorization"] = f"Bearer {keys[0]}"
    request = urllib.request.Request(
        peer.rstrip("/") + INTERNAL_PATH,
        data=package.model_dump_json().encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=PEER_TIMEOUT_S) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"HTTP {exc.code}: {exc.read()[:200]!r}") from exc
    return answer


def adopt(runtime: Runtime, package: CallPackage) -> dict[str, Any]:
    """Take a call a draining peer sends (raises ProtocolError when there is no room): it
    waits for its client's resume like a dropped call; the answer the peer tells it."""
    session = runtime.adopt_session(package, unpack_state(package.engine))
    token = runtime.resume.issue_for_hash(session, bytes.fromhex(package.key_hash))
    if token is None:
        runtime.ticker.discard(session)
        raise ProtocolError(ErrorCode.RESUME_FAILED, "this replica does not resume calls")
    return {
        "resume_token": token,
        "replica": runtime.settings.replica_name or None,
        "session_id": session.id,
    }
