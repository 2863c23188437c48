"""Opt-in call recording for debugging (`--record-dir`): never on by default.

Per call, a folder with the user's audio as received and the agent's as sent (both at the wire
rate, placed by sample index), `start.json` (the call's `start`; a voice prompt the caller
uploaded goes to `prompt.wav` instead of its base64 there), and `ticks.jsonl`: per tick the
agent units, the user chunks that arrived, the estimate made and which estimates real audio
replaced; and a line for each change of the call's settings mid-call (`settings`), at the tick
from which they apply.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from model.engines.api import StepResult
from model.format import Frame


class CallRecorder:
    def __init__(self, folder: Path, sample_rate: int, start: dict[str, Any]) -> None:
        """Open the call's files; on failure, close those already opened and re-raise."""
        self.folder = folder
        self._user_samples = 0
        with contextlib.ExitStack() as opened:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "start.json").write_text(
                json.dumps(_prompt_apart(folder, start), indent=2) + "\n"
            )
            self._user = opened.enter_context(
                sf.SoundFile(
                    folder / "user.wav", "w", samplerate=sample_rate, channels=1, subtype="PCM_16"
                )
            )
            self._agent = opened.enter_context(
                sf.SoundFile(
                    folder / "agent.wav", "w", samplerate=sample_rate, channels=1, subtype="PCM_16"
                )
            )
            self._log = opened.enter_context((folder / "ticks.jsonl").open("w"))
            opened.pop_all()  # all open: close() closes them

    def user_audio(self, first_sample: int, pcm: np.ndarray) -> None:
        if first_sample > self._user_samples:  # frames the client dropped
            self._user.write(np.zeros(first_sample - self._user_samples, dtype=np.float32))
        self._user.write(pcm)
        self._user_samples = first_sample + len(pcm)

    def agent_audio(self, pcm: np.ndarray) -> None:
        self._agent.write(pcm)

    def tick(self, tick: int, result: StepResult, real: dict[int, list[Frame]]) -> None:
        entry = {
            "tick": tick,
            "chunk": result.chunk,
            "agent": _units(result.frames),
            "real_user": {str(j): _units(f) for j, f in sorted(real.items())},
            "estimate": _units(result.estimate) if result.estimated else None,
            "estimate_real_frames": result.partial_frames,  # its first frames, as they arrived
            "replaced": result.replaced,
            "dropped": result.dropped,
            "rollback_tokens": result.rollback_tokens,
            "prefill_tokens": result.prefill_tokens,
        }
        self._log.write(json.dumps(entry) + "\n")

    def settings(self, tick: int, settings: dict[str, Any]) -> None:
        """The call's settings changed mid-call: the steps from `tick` on use these."""
        self._log.write(json.dumps({"tick": tick, "settings": settings}) + "\n")

    def close(self) -> None:
        self._user.close()
        self._agent.close()
        self._log.close()


def _prompt_apart(folder: Path, start: dict[str, Any]) -> dict[str, Any]:
    """`start` with an uploaded prompt's audio written to `prompt.wav` and named there: a
    second of base64 is 43 kB of JSON no one reads, and the wav plays."""
    prompt = start.get("prompt") or {}
    if prompt.get("audio") is None:
        return start
    pcm = np.frombuffer(base64.b64decode(prompt["audio"]), dtype="<i2")
    sf.write(folder / "prompt.wav", pcm, prompt["sample_rate"], subtype="PCM_16")
    return {**start, "prompt": {**prompt, "audio": "prompt.wav"}}


def _units(frames: list[Frame]) -> list[int] | list[list[int]]:
    if frames and len(frames[0]) == 1:
        return [f[0] for f in frames]
    return [list(f) for f in frames]
