"""`duplex call`'s progress line: on a terminal (or with --progress) one line on stderr, drawn
over itself, ending in a final line; never on stdout, never when stderr is piped."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from clients.call import ProgressLine, main
from tests.conftest import ServerProcess, speak


def test_the_line_is_redrawn_in_place_and_ends_with_a_final_line() -> None:
    out = io.StringIO()
    line = ProgressLine(out, total_s=12.0, rate=1000, period_s=0.0)
    line(3200, 2900)
    line(12000, 11800)
    line.finish("done")
    draws = out.getvalue().split("\r")[1:]
    assert draws[0] == "duplex call: 3.2 / 12.0 s sent, 2.9 s of agent audio received"
    assert draws[-1] == "duplex call: 12.0 / 12.0 s sent, 11.8 s of agent audio received: done\n"
    assert out.getvalue().count("\n") == 1


def test_a_shorter_line_covers_the_longer_one_before_and_redraws_are_spaced() -> None:
    out = io.StringIO()
    line = ProgressLine(out, total_s=100.0, rate=1000, period_s=0.0)
    line(10000, 10000)
    line(0, 0)  # (shorter)
    first, second = out.getvalue().split("\r")[1:]
    assert len(second) == len(first) and second.endswith(" ")
    slow = io.StringIO()
    line = ProgressLine(slow, total_s=1.0, rate=1000, period_s=60.0)
    for n in range(50):
        line(n, n)
    assert slow.getvalue().count("\r") == 1  # the first draw only, until the period is over
    line.finish("failed")
    assert slow.getvalue().endswith("0.0 s of agent audio received: failed\n")


def test_call_shows_progress_on_stderr_only(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = speak("Hello.", tmp_path / "hello.wav")
    argv = ["--url", server.url, "--input", str(wav), "--tail-s", "0.5", "--json"]
    assert main([*argv, "--progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["frames_sent"] > 0  # stdout: the JSON alone
    assert "\r" in captured.err and captured.err.endswith("s of agent audio received: done\n")
    final = captured.err.rsplit("\r", 1)[1]
    sent, total = final.split(": ")[1].split(" s sent")[0].split(" / ")
    assert sent == total
    assert main(argv) == 0  # stderr is not a terminal here: no progress line
    assert "\r" not in capsys.readouterr().err
