"""Settings, the `duplex` command line, and access control through the real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.settings import Settings
from tests.conftest import ROOT, start_server, stop_server


def duplex(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-sessions", "0"], "invalid setting max_sessions"),
        (["--port", "http"], "invalid setting port"),
        (["--device", "tpu"], "invalid setting device"),
        (["--device", "cuda:99"], "device 'cuda:99'"),  # no such GPU here (or anywhere)
        (["--dtype", "int3"], "invalid setting dtype"),
        (["--model", "/nonexistent"], "duplex.json is missing"),
    ],
)
def test_serve_refuses_bad_settings_with_one_line(args: list[str], message: str) -> None:
    result = duplex("serve", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("duplex serve: error:") and message in lines[0]


def test_serve_refuses_what_it_cannot_listen_with_before_loading_the_model(
    tmp_path: Path,
) -> None:
    """A taken port, an unknown host, half a TLS pair, an unreadable certificate and a
    recording folder that cannot be made: one line each, before the model loads."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    cases = [
        (["--port", port], f"cannot listen on 127.0.0.1:{port}: [Errno 98]"),
        (["--host", "999.1.1.1"], "cannot listen on 999.1.1.1:"),
        (["--ssl-keyfile", str(not_a_dir)], "--ssl-certfile and --ssl-keyfile go together"),
        (["--ssl-certfile", str(not_a_dir), "--ssl-keyfile", str(not_a_dir)],
         f"cannot use certificate {not_a_dir} with key {not_a_dir}"),
        (["--record-dir", str(not_a_dir / "calls")], f"cannot record calls into {not_a_dir}"),
    ]  # fmt: skip
    try:
        for args, message in cases:
            result = duplex("serve", "--model", "/nonexistent", *args)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1, result.stderr
            assert lines[0].startswith("duplex serve: error: ") and message in lines[0], lines
    finally:
        taken.close()


def test_env_vars_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUPLEX_MAX_SESSIONS", "12")
    monkeypatch.setenv("DUPLEX_API_KEYS", "k1, k2")
    s = Settings()
    assert s.max_sessions == 12 and s.api_keys == ["k1", "k2"]
    assert Settings(max_sessions=3).max_sessions == 3


def test_turn_temperature_none_is_the_flat_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().turn_temperature == 0.1
    assert Settings(turn_temperature="none").turn_temperature is None  # type: ignore[arg-type]
    monkeypatch.setenv("DUPLEX_TURN_TEMPERATURE", "")
    assert Settings().turn_temperature is None
    monkeypatch.setenv("DUPLEX_TURN_TEMPERATURE", "0.7")
    assert Settings().turn_temperature == 0.7


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`DUPLEX_{name.upper()}`" in doc and f"`--{name.replace('_', '-')}`" in doc


def test_model_init_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = duplex("model", "init", "--out", str(out), "--layers", "1", "--hidden", "64")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "duplex.json").read_text())["special_tokens"]["S0"] == 1024
    again = duplex("model", "init", "--out", str(out))
    assert again.returncode == 2 and "already holds a checkpoint" in again.stderr
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 3 * 64
    wide = duplex("model", "init", "--out", str(tmp_path / "w"), "--layers", "1", "--hidden",
                  "64", "--intermediate", "100")  # fmt: skip
    assert wide.returncode == 0, wide.stderr
    assert json.loads((tmp_path / "w" / "config.json").read_text())["intermediate_size"] == 100
    bad = duplex("model", "init", "--out", str(tmp_path / "b"), "--intermediate", "0")
    assert bad.returncode == 2 and "--intermediate must be >= 1" in bad.stderr


def test_serve_refuses_a_checkpoint_its_codec_does_not_fit(tmp_path: Path) -> None:
    """A checkpoint of 2-unit frames with the 1-unit default codec: one line naming the field."""
    out = tmp_path / "k2"
    made = duplex("model", "init", "--out", str(out), "--layers", "1", "--hidden", "64",
                  "--units-per-frame", "2")  # fmt: skip
    assert made.returncode == 0, made.stderr
    result = duplex("serve", "--model", str(out), "--port", "0")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (
        "duplex serve: error: the codec writes 1 units per frame but duplex.json says "
        "units_per_frame 2"
    )


@pytest.mark.slow
def test_codec_build_command(tmp_path: Path) -> None:
    out = tmp_path / "cb.npz"
    result = duplex("codec", "build", "--out", str(out), "--units", "16", "--minutes", "0.3")
    assert result.returncode == 0, result.stderr
    assert out.is_file()


def test_codec_build_refuses_bad_arguments(tmp_path: Path) -> None:
    result = duplex("codec", "build", "--out", str(tmp_path / "x.npz"), "--units", "1")
    assert result.returncode == 2 and "--units must be >= 2" in result.stderr
    shipped = ROOT / "streaming" / "assets" / "codec2_units_1024.npz"
    before = shipped.read_bytes()
    result = duplex("codec", "build")  # the default --out is the built-in codebook
    assert result.returncode == 2 and "pick another --out or add --force" in result.stderr
    assert shipped.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model", "init", "--layers", "0"], "--layers must be >= 1"),
        (["model", "init", "--hidden", "100"], "--hidden must be a positive multiple of 8"),
        (["model", "init", "--sink", "5000"], "0 <= --sink <= context/2"),
        (["model", "init", "--units-per-frame", "0"], "--units-per-frame must be >= 1"),
        (
            ["train", "--data", "tests", "--out", "TMP", "--minutes", "0"],
            "--minutes must be > 0",
        ),
        (
            ["train", "--data", "tests", "--out", "TMP", "--minutes", "nan"],
            "--minutes must be > 0",
        ),
        (
            ["train", "--data", "tests", "--out", "TMP", "--layers", "0"],
            "--layers must be >= 1",
        ),
        (["bench", "--ticks", "0"], "--ticks must be >= 1"),
        (["bench", "--estimate-units", "-1"], "--estimate-units must be >= 0"),
        (["bench", "--markdown", "/no/such/dir/b.md"], "cannot write /no/such/dir/b.md"),
        (["eval", "--json-out", "/no/such/dir/e.json"], "cannot write /no/such/dir/e.json"),
    ],
)
def test_offline_commands_refuse_bad_numbers_and_paths_up_front(
    args: list[str], message: str, tmp_path: Path
) -> None:
    """Refused before any work (a model load, a training run, every eval case): one line."""
    if args[:2] == ["model", "init"]:
        args = [*args, "--out", str(tmp_path / "m")]
    args = [str(tmp_path / "t") if a == "TMP" else a for a in args]
    result = duplex(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert message in lines[0]
    assert not (tmp_path / "m").exists()


async def _first_error(url: str, **kwargs: object) -> tuple[dict[str, object], int | None]:
    async with connect(url, **kwargs) as ws:  # type: ignore[arg-type]
        with contextlib.suppress(ConnectionClosed):  # a refusal may close before `start` is sent
            await ws.send(json.dumps({"type": "start"}))
        message = json.loads(await ws.recv())
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        return message, ws.close_code


def test_api_keys_and_origins(checkpoint: Path, tmp_path: Path) -> None:
    srv = start_server(
        checkpoint, tmp_path / "log", "--api-keys", "sesame,other",
        "--allowed-origins", "https://app.example", "--max-sessions", "2",
    )  # fmt: skip
    try:
        msg, code = asyncio.run(_first_error(srv.url))
        assert msg["code"] == "unauthorized" and code == 1008
        msg, code = asyncio.run(
            _first_error(srv.url, additional_headers={"Authorization": "Bearer nope"})
        )
        assert msg["code"] == "unauthorized" and "not valid" in str(msg["message"])
        msg, code = asyncio.run(
            _first_error(srv.url, additional_headers={"Origin": "https://evil.example"})
        )
        assert msg["code"] == "forbidden_origin" and code == 1008
        msg, _ = asyncio.run(
            _first_error(
                srv.url + "?token=sesame", additional_headers={"Origin": "https://app.example"}
            )
        )
        assert msg["type"] == "ready"  # a good key (query token, as browsers do) and origin
        msg, _ = asyncio.run(
            _first_error(srv.url, additional_headers={"Authorization": "Bearer other"})
        )
        assert msg["type"] == "ready"
    finally:
        stop_server(srv)


def test_client_commands_do_not_load_torch() -> None:
    """`duplex call`, `loadtest`, `eval` and `selfplay` run on machines without a model stack
    worth loading: building the parser (every subcommand's arguments) must not import torch."""
    code = "import sys, server.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_bench_times_both_setups_for_every_cell_and_writes_markdown(
    checkpoint: Path, tmp_path: Path
) -> None:
    md = tmp_path / "bench.md"
    result = duplex(
        "bench", "--model", str(checkpoint), "--sessions", "1,2", "--contexts", "100,300",
        "--ticks", "2", "--markdown", str(md),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert sorted((int(r[0]), int(r[1])) for r in rows) == [(1, 100), (1, 300), (2, 100), (2, 300)]
    for r in rows:
        b50, b99, l50, l99 = map(float, r[2:6])
        assert 0 < b50 <= b99 and 0 < l50 <= l99
    assert "context 300: batched sustains" in result.stdout
    text = md.read_text()
    assert "duplex bench --model" in text and "| 2 | 300 |" in text
    assert " on cpu, " in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--device", "mps"], "device 'mps': expected 'cpu' or 'cuda[:N]'"),
        (["--model", "/no/such/model"], "/no/such/model is not a duplex checkpoint"),
    ],
)
def test_bench_refuses_a_bad_device_or_model_with_one_line(args: list[str], expected: str) -> None:
    result = duplex("bench", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("duplex bench: error: ")
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call", "--frame-ms", "twenty"], "duplex call: error: argument --frame-ms: invalid int"),
        (["train", "--data", "d"], "duplex train: error: the following arguments are required"),
        (["bogus"], "duplex: error: argument command: invalid choice: 'bogus'"),
    ],
)
def test_argparse_errors_are_one_line_too(args: list[str], message: str) -> None:
    result = duplex(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(message) and lines[0].endswith("--help)")


def test_bench_refuses_a_bad_list_with_one_line() -> None:
    result = duplex("bench", "--sessions", "1,two")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "duplex bench: error: --sessions/--contexts take comma-separated integers"
    )
