"""Shared fixtures: a small checkpoint, espeak-ng speech, and the real server on a free port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from clients.client import ReceivedFrame

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default random-weight model shape, generated the way `make serve` does."""
    from model.checkpoint import init_random_checkpoint

    path = tmp_path_factory.mktemp("ckpt")
    init_random_checkpoint(path, seed=0)
    return path


def speak(text: str, path: Path, voice: str = "en-us") -> Path:
    """Synthesize `text` with espeak-ng into a wav (22.05 kHz mono)."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return path


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "user.wav"
    return speak("Hello there. What time is it in Paris? I would like to book a table.", path)


@dataclass
class ServerProcess:
    url: str  # ws://.../v1/duplex
    http: str  # http://host:port
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_mark(self) -> int:
        """Where the log ends now; `log_since` reads what comes after."""
        return self.log.stat().st_size

    def log_since(self, mark: int) -> str:
        with self.log.open("rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")


def assert_no_traceback(log: str) -> None:
    """Whatever a client sends, the server logs no traceback and no ERROR line for it (one
    client could flood the log)."""
    bad = [line for line in log.splitlines() if "Traceback" in line or "ERROR" in line]
    assert not bad, log[-4000:]


def start_server(
    checkpoint: Path,
    log: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> ServerProcess:
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "server.cli", "serve",
        "--port", str(port), "--model", str(checkpoint), "--log-level", "info", *extra,
    ]  # fmt: skip
    full_env = {**os.environ, **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    http = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{http}/healthz", timeout=1).status_code == 200:
                return ServerProcess(f"ws://127.0.0.1:{port}/v1/duplex", http, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{log.read_text()}")


def stop_server(server: ServerProcess) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="session")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server shared by the end-to-end tests (4 call slots; a call whose connection
    drops waits 2 s for a resume, so the tests that drop calls do not hold slots long)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = start_server(
        checkpoint, log, "--max-sessions", "4", "--idle-timeout-s", "5", "--resume-window-s", "2"
    )
    yield srv
    stop_server(srv)


class TextSocket:
    """Stands in for the WebSocket where an adapter only writes text (a Realtime transport's
    events, on its sender side or before the call is admitted): what it sent, as JSON."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data.mean(axis=1), int(rate)


def end_marker(frames: Sequence[ReceivedFrame]) -> int:
    """1 when the call's last agent frame is the empty one that only carries the `last` flag
    (`end` came after the final chunk was made: no step made it, so it is no tick)."""
    final = max(frames, key=lambda f: f.seq, default=None)
    return int(final is not None and final.last and final.is_end_marker)
