"""Has the caller barged in on the agent? Read from the real user frames of a timeline.

A caller barges in when their speech starts while the agent is making sound, or just before
the agent starts, too late for the agent to have heard it (its chunk was drawn a chunk
ahead: both started at once, as when a caller resumes after a pause the agent took for the
end of the turn). The engine then keeps the agent silent once that speech has made `frames`
frames of sound, until the caller pauses: the floor goes to the caller, as a person yields
(and as a Realtime server's `interrupt_response` does). Speech the caller was already making
when the agent started, and that the agent had heard (an agent's backchannel, an answer that
starts early), is no barge-in: the agent chose to talk over it.

Only real audio counts; the model's estimates of chunks not yet in say nothing about the
caller. A pause is `PAUSE_S` of quiet frames in a row, so the short dips between words do
not end a speech. Speech that began before what can be read (LOOKBACK_S back, or an
estimate) has no known start: the answer is None, and the engine keeps its last one. Audio
more than STALE_CHUNKS behind is no evidence of what the caller does now: False. Pause and
look-back are times, counted in the codec's frames (`Windows`): 4 and 128 of Codec2's 40 ms
frames, 2 and 64 of Mimi's 80 ms.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from model.format import Frame
from model.timeline import Timeline

PAUSE_S = 0.16  # this long without sound ends the caller's speech
LOOKBACK_S = 5.12  # how far back an onset is looked for
ONSET_FRAMES = 3  # the agent counts as talking at an onset if it sounded in these last frames
STALE_CHUNKS = 3  # newest chunks still estimates (late or stalled audio) that may be skipped


@dataclass(frozen=True, slots=True)
class Windows:
    """The rule's times in a codec's frames."""

    pause_frames: int
    lookback_frames: int

    @classmethod
    def of(cls, frame_s: float) -> Windows:
        """For frames of `frame_s` seconds (at least one frame each)."""
        return cls(max(1, round(PAUSE_S / frame_s)), max(1, round(LOOKBACK_S / frame_s)))


def barged_in(tl: Timeline, newest: list[Frame], frames: int, windows: Windows) -> bool | None:
    """Whether the caller's speech under way started while the agent was sounding (or within
    a chunk before it started) and has made `frames` frames of sound, with no pause since;
    None when that speech started before the frames that can be read.

    `tl` holds agent chunks past the user's; `newest` are the real first frames of user chunk
    len(tl.user), the one being estimated (empty when none arrived or it is in whole);
    `windows`: the pause and look-back in the timeline's frames.
    """
    if frames <= 0:
        return False
    silence, n = tl.fmt.silence, tl.fmt.frames_per_chunk
    sounding, quiet, onset, paused, oldest = 0, 0, None, False, 0
    for index, frame in _heard(tl, newest, windows.lookback_frames):
        oldest = index
        if frame != silence:
            sounding, quiet, onset = sounding + 1, 0, index
        else:
            quiet += 1
            if quiet == windows.pause_frames:
                paused = True
                break
    if onset is None or sounding < frames:
        return False
    if not paused and oldest > 0:
        return None  # its start is further back than the frames read
    # the agent sounding at the onset, or starting within a chunk of it (the agent's chunks
    # run ahead of the user's, so they cover every frame of this window they can)
    last = min(len(tl.agent) * n - 1, onset + n)
    return any(
        tl.agent[i // n][i % n] != silence
        for i in range(max(0, onset - ONSET_FRAMES + 1), last + 1)
    )


def _heard(tl: Timeline, newest: list[Frame], lookback: int) -> Iterator[tuple[int, Frame]]:
    """The caller's real frames, newest first, with their frame index, back to the first
    estimate before them or `lookback` frames."""
    n = tl.fmt.frames_per_chunk
    first = len(tl.user) * n
    given = len(newest)
    for i in reversed(range(given)):
        yield first + i, newest[i]
    for j in reversed(range(len(tl.user))):
        if given >= lookback:
            return
        if not tl.user_real[j]:
            if given:
                return  # the evidence stops at an estimate
            if len(tl.user) - j > STALE_CHUNKS:
                return  # the newest real audio is too old to tell
            continue  # a chunk whose audio is not in yet
        for i in reversed(range(n)):
            yield j * n + i, tl.user[j][i]
        given += n
