"""`duplex selfplay`: the relay's pure parts on known arrays, then real conversations.

The server's model has random weights (it babbles), so the real runs check mechanics only:
what is relayed, recorded, measured and written, never conversational behaviour.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clients.measure.selfplay import (
    RATE,
    Conversation,
    converse,
    main,
    mean_ratios,
    opening_track,
    parse_delays,
    ratio_ci95,
    relay_slice,
    target_check,
    tick_offset,
)
from clients.measure.turns import TurnStats
from model.checkpoint import read_config
from model.training.synth import synth
from tests.conftest import ServerProcess, free_port

pytestmark = pytest.mark.tools  # make test-tools: CI runs it after the default suite

# --- the relay on known arrays ---------------------------------------------------------------


def test_offset_is_whole_ticks_whatever_the_ready_jitter() -> None:
    assert tick_offset(10.0, 10.163, 0.16, 2560) == 2560  # B joined one tick later
    assert tick_offset(10.0, 9.683, 0.16, 2560) == -2 * 2560  # B two ticks earlier
    assert tick_offset(10.0, 10.004, 0.16, 2560) == 0


def test_relay_maps_samples_mixes_the_opening_and_counts_what_is_missing() -> None:
    out = np.arange(1, 11, dtype=np.float32) / 100  # one session's speech, samples 0..9
    have = np.ones(10, bool)
    have[7:] = False  # its last three samples have not arrived
    extra = np.zeros(10, np.float32)
    extra[2] = 0.5  # the opening, mixed into its channel

    pcm, missing = relay_slice(out, have, extra, 1, 4)  # listener samples map to 1..4
    assert pcm == pytest.approx([0.02, 0.53, 0.04, 0.05]) and missing == 0

    pcm, missing = relay_slice(out, have, extra, -3, 5)  # before that session existed
    assert pcm == pytest.approx([0, 0, 0, 0.01, 0.02]) and missing == 0

    pcm, missing = relay_slice(out, have, extra, 6, 4)  # not there yet: sent as what is there
    assert missing == 3 and pcm[0] == pytest.approx(0.07)
    assert relay_slice(out, have, extra, 12, 3) == (pytest.approx([0, 0, 0]), 0)

    loud = np.full(4, 0.9, np.float32)
    pcm, _ = relay_slice(loud, np.ones(4, bool), loud, 0, 4)  # speech + opening clips
    assert pcm.max() == 1.0


def test_opening_starts_at_the_conversation_and_is_cut_at_its_end() -> None:
    track = opening_track(np.ones(5, np.float32), at=3, length=6)
    assert track.tolist() == [0, 0, 0, 1, 1, 1]
    assert not opening_track(np.ones(5, np.float32), at=6, length=6).any()


def _stats(ipu: list[float], pause: list[float], gap: list[float]) -> TurnStats:
    return TurnStats(ipu=ipu, pause=pause, gap=gap, seconds=60.0)


def test_target_compares_mean_gap_pause_ipu_with_the_0ms_run() -> None:
    base = _stats([1.0, 3.0], [0.5], [0.2, 0.4])
    near = _stats([2.3], [0.45], [0.35])
    far = _stats([2.0], [0.5], [0.5])
    assert mean_ratios(base.summary(), near.summary()) == pytest.approx(
        {"gap": 1.1667, "pause": 0.9, "ipu": 1.15}, 1e-3
    )
    check = target_check({0.0: base, 80.0: far, 240.0: near})
    assert check is not None and check["delay_ms"] == 240.0 and check["holds"] is True
    assert target_check({0.0: base, 160.0: far})["holds"] is False  # type: ignore[index]
    none = _stats([2.0], [], [0.3])  # no pauses at all: the target cannot be judged
    assert target_check({0.0: base, 240.0: none})["holds"] is None  # type: ignore[index]
    assert target_check({80.0: base, 240.0: near}) is None  # no 0 ms run


def test_ratio_intervals_bootstrap_each_runs_events() -> None:
    base = TurnStats(ipu=[1.0, 2.0, 3.0] * 10, pause=[0.5], gap=[0.2, 0.4] * 20, seconds=60.0)
    same = TurnStats(ipu=[2.0] * 30, pause=[0.4, 0.6], gap=[0.3] * 40, seconds=60.0)
    ci = ratio_ci95(base, same)
    lo, hi = ci["ipu"]  # type: ignore[misc]
    # ratio 1; the 0 ms mean of 30 IPUs has a standard error of 0.15 (7.5 %)
    assert 0.8 < lo < 0.92 and 1.08 < hi < 1.25
    assert ci["pause"] is None  # one pause at 0 ms: nothing to resample
    far = TurnStats(ipu=[4.0, 6.0] * 30, pause=[1.0, 1.2], gap=[0.3] * 40, seconds=60.0)
    lo, hi = ratio_ci95(base, far)["ipu"]  # type: ignore[misc]
    assert 2.0 < lo < 2.5 < hi < 3.0  # ratio 2.5, about 8 % relative error
    assert ratio_ci95(base, same) == ci  # seeded
    check = target_check({0.0: base, 240.0: same})
    assert check is not None and check["ratios_ci95"] == ci


def test_delays_parse_in_order() -> None:
    assert parse_delays("0, 80,160.5") == [0.0, 80.0, 160.5]


# --- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--delays", "0,-80"], "non-negative"),
        (["--delays", "0,fast"], "not a number"),
        (["--delays", "80,80"], "twice"),
        (["--seconds", "0"], "--seconds"),
        (["--url", "http://x"], "ws://"),
        (["--temperature", "-1"], "--temperature"),
        (["--reference-dialogues", "0"], "--reference-dialogues"),
        (["--data", "{tmp}/nowhere"], "duplex data synth --out"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    url = f"ws://127.0.0.1:{free_port()}/v1/duplex"  # never reached: arguments fail first
    rc = main(["--url", url, "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("duplex selfplay: error:") and needle in err[0]


def test_no_server_is_a_failed_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/duplex"
    rc = main(["--url", url, "--out", str(tmp_path), "--no-reference", "--seconds", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "cannot connect" in err[0], err


# --- real conversations ----------------------------------------------------------------------


def test_each_agent_hears_the_other_and_b_hears_the_opening(server: ServerProcess) -> None:
    t = np.arange(RATE) / RATE
    opening = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # 1 s, easy to find
    conv: Conversation = asyncio.run(converse(server.url, 2.0, 0.0, opening=opening))
    a, b = conv.stereo[:, 0], conv.stereo[:, 1]
    heard_a, heard_b = conv.heard
    assert conv.stereo.shape == (2 * RATE, 2) and conv.offset_samples % 2560 == 0
    # A's channel is its speech plus the opening: the opening's share of it is the opening
    assert float(a[:RATE] @ opening / (opening @ opening)) == pytest.approx(1.0, abs=0.25)
    # what each was sent is the other's channel at the same instant, except samples that had
    # not arrived yet (sent as silence plus the opening)
    track = opening_track(opening, 0, len(a))
    assert np.all(np.isclose(heard_b, np.clip(a, -1, 1), atol=1e-6) | np.isclose(heard_b, track))
    assert np.all(np.isclose(heard_a, b, atol=1e-6) | (heard_a == 0))
    assert np.abs(heard_b[:RATE]).max() > 0.2 and heard_a.any()
    assert conv.missing_samples[1] < 0.05 * len(heard_b)
    for s in conv.stats:
        assert s.frames_in > 0 and s.frames_out > 0


def test_selfplay_writes_wavs_report_and_plots(
    server: ServerProcess, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "synth", tmp_path / "selfplay"
    synth(data, read_config(checkpoint), checkpoint, n_dialogues=4, progress=False)
    rc = main(
        [
            "--url", server.url, "--out", str(out), "--delays", "0,160", "--seconds", "4",
            "--data", str(data), "--checkpoint", str(checkpoint), "--reference-dialogues", "3",
            "--json",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    assert report == json.loads((out / "selfplay.json").read_text())
    assert [r["delay_ms"] for r in report["runs"]] == [0.0, 160.0]
    for r in report["runs"]:
        stereo, rate = sf.read(out / r["wav"], always_2d=True)
        assert rate == RATE and stereo.shape == (4 * RATE, 2)
        assert np.abs(stereo[:RATE, 0]).max() > 0.1  # A's channel opens with the opening
        assert r["relay"]["frames_received_a"] > 0 and r["relay"]["frames_received_b"] > 0
        assert [r["sampling"][k]["seed"] for k in "AB"] == [0, 1]  # --seed 0: A 0, B 1
        assert r["sampling"]["A"]["speak_up_ms"] == 3040.0  # the server's default, echoed
        assert r["turns"]["seconds"] == 4.0 and r["turns"]["ipu"]["count"] > 0
        for s in r["sessions"].values():
            assert s["frames_in"] == pytest.approx(200, abs=20) and s["late_samples_dropped"] == 0
    # 160 ms late audio replaces estimates a tick later than at 0 ms: deeper KV rollbacks.
    # (How much deeper depends on when steps start: on a loaded machine they start later and
    # find more of the late audio in, so only the order is checked.)
    at0, at160 = (r["sessions"] for r in report["runs"])
    assert max(s["max_rollback_tokens"] for s in at0.values()) <= max(
        s["max_rollback_tokens"] for s in at160.values()
    )
    ref = report["reference"]
    assert ref["dialogues"] == 3 and ref["turns"]["ipu"]["count"] > 0
    assert report["target"]["delay_ms"] == 160.0 and set(report["target"]["ratios"]) == {
        "gap",
        "pause",
        "ipu",
    }
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["plots"]) == {"turn_stats.png", "means_vs_delay.png"}
