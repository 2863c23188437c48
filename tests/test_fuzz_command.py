"""`duplex fuzz` against a real `duplex serve`: a few hundred hostile messages in the default
suite, over 10,000 in the slow one; both must leave the server healthy, every hostile message
answered with a code, no 1011 and no traceback in the server's log."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.measure.fuzz import Script, _log_figures, main, plan
from tests.conftest import ServerProcess, start_server, stop_server

pytestmark = pytest.mark.tools  # make test-tools: CI runs it after the default suite


@pytest.fixture(scope="module")
def fuzz_server(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    srv = start_server(  # the native calls it drops wait 1 s for a resume
        checkpoint, log, "--max-sessions", "8", "--idle-timeout-s", "5", "--resume-window-s", "1"
    )
    yield srv
    stop_server(srv)


def _base(srv: ServerProcess) -> str:
    return srv.url.removesuffix("/v1/duplex")


def _fuzz(srv: ServerProcess, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    rc = main(["--url", _base(srv), "--server-log", str(srv.log), "--json", *argv])
    captured = capsys.readouterr()
    report: dict[str, Any] = json.loads(captured.out)
    assert rc == 0, (captured.err, report["failures"], report["examples"])
    assert captured.err == ""
    return report


def _check(report: dict[str, Any], messages: int) -> None:
    assert report["messages_sent"] >= messages
    assert report["failures"] == []
    assert report["unanswered"] == 0 and report["internal_errors"] == 0
    assert "1011" not in report["close_codes"] and "internal_error" not in report["error_codes"]
    assert report["connect_failures"] == 0
    assert set(report["by_endpoint"]) == {"native", "realtime", "twilio"}
    # the server told the clients why, with the codes of docs/protocol.md
    assert {"1003", "1007", "1008"} <= report["close_codes"].keys()
    assert {"invalid_json", "invalid_message", "unexpected_message"} <= report["error_codes"].keys()
    assert report["healthz"]["status"] == "ok" and report["sessions_after"] == 0
    assert report["normal_call"]["ok"]
    log = report["server_log"]
    assert log["bytes_read"] > 0  # the server did log the run: its lines were read
    assert (log["tracebacks"], log["error_lines"]) == (0, 0)


def test_the_plan_is_the_seed_s() -> None:
    a, b = plan(7, 2000), plan(7, 2000)
    assert a == b and a != plan(8, 2000)
    assert sum(len(s.messages) for s in a) >= 2000
    kinds = Counter(s.kind.split(".")[0] for s in a)
    assert {"native", "realtime", "twilio", "vanish"} <= kinds.keys()
    hostile = [m for s in a for m in s.messages if m.expect != "good"]
    assert len(hostile) > 600
    # a prefix of a longer plan: more messages add connections, they change none
    assert plan(7, 4000)[: len(a)] == a


def test_every_script_says_what_it_tries() -> None:
    scripts: list[Script] = plan(3, 3000)
    for s in scripts:
        assert s.kind and s.messages or s.ending == "abort", s
        fatal = [m for m in s.messages if m.expect == "fatal"]
        assert len(fatal) <= 1 and (not fatal or s.messages[-1] is fatal[0]), s.kind


def test_a_few_hundred_hostile_messages(
    fuzz_server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _fuzz(fuzz_server, capsys, "--messages", "400", "--seed", "1")
    _check(report, 400)
    assert report["wall_s"] < 30


def test_the_server_log_is_read_from_where_it_stood(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("Traceback (most recent call last):\nold\n")
    start = log.stat().st_size
    with log.open("a") as f:
        f.write(
            "2026-12-06 INFO duplex.calls: fine\n2026-12-06 ERROR duplex.calls: call x failed\n"
        )
        f.write("Traceback (most recent call last):\n  File 'x', line 1\nRecursionError\n")
    figures = _log_figures(str(log), start)
    assert (figures["tracebacks"], figures["error_lines"]) == (1, 1)
    assert "RecursionError" in figures["first"]


def test_an_unreachable_server_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "ws://127.0.0.1:9", "--messages", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duplex fuzz: error: cannot reach"), err


@pytest.mark.slow
def test_ten_thousand_hostile_messages(
    fuzz_server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """20,000 messages: over 10,000 of them hostile (the rest reach the states they need)."""
    out = tmp_path / "fuzz.json"
    argv = ("--messages", "20000", "--seed", "0", "--json-out", str(out))
    report = _fuzz(fuzz_server, capsys, *argv)
    assert json.loads(out.read_text()) == report
    _check(report, 20_000)
    assert report["bad_messages_sent"] >= 10_000 and report["connections"] > 1000
    assert "1009" in report["close_codes"]  # frames over the size limit
    assert report["kinds"]["slow_reader"] > 0 and report["endings"]["abort"] > 0
