"""`duplex eval`: its cases, its scoring, and a run through the real server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clients.measure.evaluation import (
    BACKCHANNEL_MAX_S,
    CATEGORIES,
    LEAD_IN_S,
    WIRE_RATE,
    CaseResult,
    EvalReport,
    build_cases,
    check_targets,
    main,
    median_ci95,
    rate_ci95,
    score_backchannel,
    score_interruption,
    score_pause,
    score_turn_taking,
    summarize,
    write_plots,
)
from model.training.dialogues import is_heldout
from model.training.synth import RATE, segments
from tests.conftest import ServerProcess

pytestmark = pytest.mark.tools  # make test-tools: CI runs it after the default suite


@pytest.fixture(scope="module")
def cases() -> list:
    return build_cases(2, seed=5, categories=CATEGORIES)


def test_cases_come_from_the_heldout_split_and_are_reproducible(cases: list) -> None:
    again = build_cases(2, seed=5, categories=CATEGORIES)
    assert [c.id for c in cases] == [c.id for c in again]
    assert all(np.array_equal(a.user, b.user) for a, b in zip(cases, again, strict=True))
    assert {c.category for c in cases} == set(CATEGORIES)
    for c in cases:
        dialogue_id = c.id.split("/")[1].rsplit(".", 1)[0]
        assert is_heldout(dialogue_id), c.id
        assert c.speech[0][0] == pytest.approx(LEAD_IN_S)
        assert np.abs(c.user[: round(LEAD_IN_S * RATE)]).max() == 0.0
        assert np.abs(c.user[round(c.user_end * RATE) + 1 :]).max() == 0.0  # silent after
    other = build_cases(2, seed=6, categories=CATEGORIES)
    assert [c.id for c in cases] != [c.id for c in other]


def test_a_pause_case_is_silent_in_its_pause_and_speaks_around_it(cases: list) -> None:
    for c in (c for c in cases if c.category == "pause"):
        assert c.pause is not None and 0.3 <= c.pause[1] - c.pause[0] <= 0.6 + 1e-9
        a, b = round(c.pause[0] * RATE) + 1, round(c.pause[1] * RATE) - 1
        assert np.abs(c.user[a:b]).max() == 0.0
        assert any(abs(e - c.pause[0]) < 1e-6 for _, e in c.speech)  # speech ends at the pause
        assert any(abs(s - c.pause[1]) < 1e-6 for s, _ in c.speech)  # and resumes after it
    for c in (c for c in cases if c.category == "interruption"):
        assert c.barge_in is not None and len(c.barge_in) > RATE // 4


def test_pause_takeover_is_split_by_what_precedes_the_pause() -> None:
    pauses = build_cases(12, seed=5, categories=["pause"])
    for c in pauses:
        assert c.pause is not None
        before = next(j for j, (_, e) in enumerate(c.speech) if abs(e - c.pause[0]) < 1e-6)
        last = segments(c.text)[before][-1]
        assert c.pause_after == ("sentence" if last in ".?!" else "comma"), c.text
    assert {c.pause_after for c in pauses} == {"comma", "sentence"}
    outcomes = [("comma", True), ("comma", False), ("comma", False), ("sentence", True)]
    results = [
        CaseResult(
            f"pause/{i}", "pause", "", outcome={"takeover": t, "backchannel": False, "after": k}
        )
        for i, (k, t) in enumerate(outcomes)
    ]
    row = summarize(results)["pause"]
    assert row["takeover_rate"] == 0.5
    assert row["takeover_rate_after_comma"] == 0.333
    assert row["takeover_rate_after_sentence"] == 1.0


def test_turn_taking_scoring() -> None:
    assert score_turn_taking([(3.3, 5.0)], 3.0) == pytest.approx(
        {"takeover": True, "latency_s": 0.3, "overlap": False}
    )
    early = score_turn_taking([(2.8, 5.0)], 3.0)
    assert early["takeover"] and early["latency_s"] == 0.0 and early["overlap"]
    # Talking over the user all along is not taking the turn; nor is a reply 3 s late.
    assert not score_turn_taking([(0.1, 6.0)], 3.0)["takeover"]
    assert not score_turn_taking([(5.5, 6.0)], 3.0)["takeover"]


def test_pause_scoring() -> None:
    pause = (2.0, 2.5)
    assert score_pause([(2.2, 3.5)], pause)["takeover"]
    assert score_pause([(0.5, 6.0)], pause)["takeover"]  # talking through the pause
    bc = score_pause([(2.1, 2.1 + BACKCHANNEL_MAX_S / 2)], pause)
    assert bc == {"takeover": False, "backchannel": True}
    assert not score_pause([(3.5, 5.0)], pause)["takeover"]  # after the reaction window
    assert not score_pause([], pause)["takeover"]


def test_interruption_scoring() -> None:
    assert score_interruption([(1.0, 3.0)], 2.6)["stopped"]
    late = score_interruption([(1.0, 3.0)], 2.0)
    assert late["talking"] and not late["stopped"] and late["stop_s"] == pytest.approx(1.0)
    assert not score_interruption([(1.0, 1.5)], 2.0)["talking"]
    assert not score_interruption([(1.0, 3.0)], None)["barged_in"]


def test_backchannel_scoring() -> None:
    speech = [(0.3, 1.5), (1.8, 3.0), (3.3, 4.5)]
    quiet = score_backchannel([(1.6, 1.9), (3.35, 3.6), (5.0, 7.0)], speech)
    assert quiet["backchannels"] == 2 and not quiet["takeover"]
    assert score_backchannel([(2.0, 3.5)], speech)["takeover"]


def test_rate_interval_is_wilsons_and_narrows_with_cases() -> None:
    assert rate_ci95([]) is None
    assert rate_ci95([True] * 8 + [False] * 2) == [0.49, 0.943]  # Wilson 95 %, 8 of 10
    assert rate_ci95([False] * 5) == [0.0, 0.434]
    ci40 = rate_ci95([True] * 32 + [False] * 8) or []
    ci120 = rate_ci95([True] * 96 + [False] * 24) or []
    assert ci40[0] < ci120[0] < 0.8 < ci120[1] < ci40[1]


def test_median_interval_is_from_order_statistics() -> None:
    assert median_ci95([0.3]) is None and median_ci95([0.1, 0.2, 0.3]) is None  # too few
    xs = [i / 10 for i in range(1, 21)]  # 0.1 .. 2.0, median 1.05
    lo, hi = median_ci95(xs) or []
    assert lo == pytest.approx(0.6) and hi == pytest.approx(1.5)  # 6th and 15th of 20
    row = summarize(
        [
            CaseResult(f"t{i}", "turn_taking", "", outcome={"takeover": True, "latency_s": x,
                                                             "overlap": False})
            for i, x in enumerate(xs)
        ]
    )["turn_taking"]  # fmt: skip
    assert row["latency_median_s"] == 1.05 and row["latency_median_s_ci95"] == [lo, hi]


PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_of_the_figures_and_of_a_run_that_measured_little(tmp_path: Path) -> None:
    results = []
    for i, x in enumerate(np.linspace(0.1, 0.9, 9)):
        results += [
            CaseResult(f"t{i}", "turn_taking", "", outcome={"takeover": True, "latency_s": x,
                                                            "overlap": False}),
            CaseResult(f"i{i}", "interruption", "", outcome={"barged_in": True, "talking": True,
                                                             "stop_s": x, "stopped": x <= 0.5}),
        ]  # fmt: skip
    summary = summarize(results)
    report = EvalReport(
        "ws://x", 0, None, None, "vad", results, summary, check_targets(summary), 1.0
    )
    written = write_plots(report, tmp_path / "plots")
    assert [p.name for p in written] == ["targets.png", "latency.png"]
    assert all(p.read_bytes()[:8] == PNG for p in written)
    # one category only, and every case failed: the targets not measured are left empty
    failed = [CaseResult("p0", "pause", "", error="connect_failed: refused")]
    summary = summarize(failed)
    empty = EvalReport("ws://x", 0, None, None, "vad", failed, summary, check_targets(summary), 1.0)
    assert all(p.read_bytes()[:8] == PNG for p in write_plots(empty, tmp_path / "empty"))


def test_eval_runs_every_category_through_the_real_server(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    wavs = tmp_path / "wav"
    plots = tmp_path / "plots"
    argv = ["--url", server.url, "--cases", "1", "--seed", "2", "--json-out", str(out)]
    assert main([*argv, "--out", str(wavs), "--plots-dir", str(plots)]) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["latency.png", "targets.png"]
    report = json.loads(out.read_text())
    assert [c["category"] for c in report["cases"]] == list(CATEGORIES)
    assert all(c["error"] is None for c in report["cases"])
    assert set(report["summary"]) == set(CATEGORIES)
    assert set(report["targets"]) == {
        "turn_taking.takeover_rate",
        "turn_taking.latency_median_s",
        "pause.takeover_rate",
        "interruption.stop_rate",
    }
    tt = report["targets"]["turn_taking.takeover_rate"]
    assert tt["ci95"] is not None and tt["ci95"][0] <= tt["value"] <= tt["ci95"][1]
    assert report["targets"]["turn_taking.latency_median_s"]["ci95"] is None
    # The random model babbles: the user barges in once it talks, live, into the sent audio.
    inter = next(c for c in report["cases"] if c["category"] == "interruption")
    assert inter["outcome"]["barged_in"], inter
    stereo, rate = sf.read(wavs / f"{inter['id'].replace('/', '_')}.wav")
    assert rate == WIRE_RATE and stereo.shape[1] == 2
    at = round(inter["barge_at"] * rate)
    assert np.abs(stereo[at - rate // 5 : at, 0]).max() < 1e-3  # silence, then the barge-in
    assert np.abs(stereo[at : at + rate // 2, 0]).max() > 0.05
    assert np.abs(stereo[:, 1]).max() > 0.05  # the agent's audio came back


def test_eval_on_a_noisy_line(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--noise-dbfs` puts white noise under all the user's audio, the lead-in included;
    `--respond-after-ms` is reported (what it does to the agent: tests/test_default_model.py)."""
    out, wavs = tmp_path / "report.json", tmp_path / "wav"
    argv = ["--url", server.url, "--cases", "1", "--categories", "turn_taking", "--seed", "2",
            "--noise-dbfs", "-50", "--json-out", str(out), "--out", str(wavs)]  # fmt: skip
    assert main([*argv, "--respond-after-ms", "200"]) == 0
    assert capsys.readouterr().out.startswith(
        "line noise: -50 dBFS white\nthe client sent `respond` 200 ms after each turn\n"
    )
    report = json.loads(out.read_text())
    assert report["noise_dbfs"] == -50 and report["cases"][0]["error"] is None
    assert report["respond_after_ms"] == 200
    (wav,) = wavs.iterdir()
    user = sf.read(wav)[0][: round(LEAD_IN_S * WIRE_RATE), 0]  # before the user speaks
    level = 10 * np.log10(np.mean(np.square(user)))
    assert -51.5 < level < -48.5, level


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--categories", "turn_taking,smalltalk"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "smalltalk" in err[0]
    assert main(["--cases", "0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["--temperature", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "temperature" in err[0]
    assert main(["--respond-after-ms", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--respond-after-ms" in err[0]
    for level in ("5", "nan"):
        assert main(["--noise-dbfs", level]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--noise-dbfs" in err[0]
