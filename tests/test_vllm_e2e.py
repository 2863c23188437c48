"""Calls through every endpoint of a real `duplex serve --engine vllm`, and bad input.

The tests are the torch engine's own (imported: they run here against this module's
`server`, which overrides the shared one); the Realtime call is wrapped, as its module names
its voice fixture as the native tests do. Runs in the vLLM lane (`make test-vllm`); skipped
where vLLM is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("vllm", reason="the vLLM lane: make test-vllm")

from tests import test_realtime  # noqa: E402
from tests.conftest import ServerProcess, read_wav, speak, start_server, stop_server  # noqa: E402
from tests.test_e2e_bad_input import (  # noqa: E402, F401  (collected here, on vLLM)
    _still_healthy,
    test_a_disconnect_frees_the_slot,
    test_bad_first_message,
    test_bad_message_during_call,
    test_zz_normal_call_still_completes,
)
from tests.test_e2e_call import (  # noqa: E402, F401
    test_agent_frames_are_contiguous_and_on_the_clock,
    test_delayed_uplink_estimates_are_replaced,
    test_playback_acks_make_the_unheard_agent_audio_silence,
    test_respond_mid_call,
    test_three_concurrent_calls,
    voice,
)
from tests.test_resume import (  # noqa: E402, F401
    test_a_dropped_call_resumes_with_its_token,
    test_a_dropped_realtime_session_resumes,
)
from tests.test_twilio import (  # noqa: E402, F401
    barge_in_call,
    test_barge_in_sends_one_clear_per_onset,
    test_outbound_message_shapes,
)


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server's settings (tests/conftest.py), on the vLLM engine."""
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    srv = start_server(
        checkpoint, log, "--engine", "vllm", "--max-sessions", "4", "--idle-timeout-s", "5",
        "--resume-window-s", "2",
    )  # fmt: skip
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def realtime_voice(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int]:
    path = speak("Hello there, what time is it in Paris?", tmp_path_factory.mktemp("rt") / "v.wav")
    return read_wav(path)


@pytest.mark.parametrize(("fmt", "beta"), [("pcm16", False), ("g711_alaw", True)])
def test_realtime_call(
    server: ServerProcess, realtime_voice: tuple[np.ndarray, int], fmt: str, beta: bool
) -> None:
    test_realtime.test_call(server, realtime_voice, fmt, beta)


def test_realtime_errors_keep_the_connection(server: ServerProcess) -> None:
    test_realtime.test_errors_keep_the_connection(server)


def test_the_engine_is_vllm(server: ServerProcess) -> None:
    """What this module's calls ran on: vLLM's engine core started in the server."""
    assert "LLM engine" in server.log_text()
