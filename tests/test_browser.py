"""The browser client (clients/web) for real: Debian's chromium, headless, driven by playwright.

A speech wav is the fake microphone. The page must send the user's audio (the server counts the
frames), play the agent's audio (samples played, a non-zero output level), acknowledge what it
played (`played`), show a latency and the conversation's timeline, and explain a full server
in words. Playwright never downloads a browser here: it launches
/usr/bin/chromium (`make apt` installs it).
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from tests.conftest import (
    ROOT,
    ServerProcess,
    free_port,
    read_wav,
    speak,
    start_server,
    stop_server,
)

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.tools,  # make test-tools: CI runs it after the default suite
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed (make apt installs it)"
    ),
]

# The flags of docs/browser.md's test setup: a fake mic fed from a file, no prompts, no network
# chatter, audio allowed to start without a gesture.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    # For the HTTPS test: a name that is not localhost (so only HTTPS makes the page a secure
    # context, as on another host), resolved to the local server, with its self-signed cert.
    "--host-resolver-rules=MAP duplex.test 127.0.0.1",
    "--ignore-certificate-errors",
]

CALL_S = 4.0
WIRE_RATE = 16000


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak speech as chromium's fake capture wants it: 48 kHz 16-bit mono."""
    folder = tmp_path_factory.mktemp("mic")
    pcm, rate = read_wav(speak("Hello there. Can you hear me? Tell me a story.", folder / "s.wav"))
    pcm48 = resample_poly(pcm, 48000 // 3000, rate // 3000) if rate != 48000 else pcm
    pcm48 = np.clip(pcm48, -1.0, 1.0).astype(np.float32)
    path = folder / "mic48k.wav"
    sf.write(path, pcm48, 48000, subtype="PCM_16")
    return path


@pytest.fixture()
def page_factory(mic_wav: Path, tmp_path: Path) -> Iterator[Any]:
    """Opens pages in a fresh chromium profile; collects console errors and page errors."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={mic_wav}"],
        )

        def open_page(url: str) -> Any:
            """A page at `url`, its errors collected (the page is loaded when this returns)."""
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on(
                "console",
                lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
            )
            page.goto(url)
            return page

        open_page.errors = errors  # type: ignore[attr-defined]
        try:
            yield open_page
        finally:
            context.close()


def frames_in_total(server: ServerProcess) -> float:
    text = httpx.get(f"{server.http}/metrics", timeout=5).text
    match = re.search(r"^duplex_frames_in_total (\S+)$", text, re.MULTILINE)
    assert match, "duplex_frames_in_total missing from /metrics"
    return float(match.group(1))


def page_stats(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("() => ({...window.duplexStats})"))


# Where each of the timeline's colours (the CSS custom properties that timeline.js draws with)
# lies on a canvas: its opaque pixels' count and bounding box, in canvas pixels.
COLOUR_BOXES_JS = """(selector) => {
  const canvas = document.querySelector(selector);
  const style = getComputedStyle(canvas);
  const names = ["caller", "agent", "overlap", "barge-in", "truncated"];
  const rgb = names.map((n) => parseInt(style.getPropertyValue(`--${n}`).trim().slice(1), 16));
  const boxes = Object.fromEntries(names.map((n) => [n, {count: 0, top: Infinity,
    bottom: -1, left: Infinity, right: -1}]));
  const { width, height } = canvas;
  const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] !== 255) continue;
    const k = rgb.indexOf((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    if (k < 0) continue;
    const box = boxes[names[k]], x = (i / 4) % width, y = Math.floor(i / 4 / width);
    box.count++;
    box.top = Math.min(box.top, y);
    box.bottom = Math.max(box.bottom, y);
    box.left = Math.min(box.left, x);
    box.right = Math.max(box.right, x);
  }
  return boxes;
}"""


def colour_boxes(page: Any, selector: str) -> dict[str, dict[str, float]]:
    return dict(page.evaluate(COLOUR_BOXES_JS, selector))


def test_page_is_served_next_to_the_api(server: ServerProcess) -> None:
    root = httpx.get(f"{server.http}/", timeout=5)
    assert root.status_code == 200 and "app.js" in root.text
    assert httpx.get(f"{server.http}/playback-worklet.js", timeout=5).status_code == 200
    assert httpx.get(f"{server.http}/healthz", timeout=5).json()["status"] == "ok"


@pytest.mark.parametrize("codec", ["pcm16", "opus"])
def test_browser_call_sends_and_plays_audio(
    server: ServerProcess, page_factory: Any, codec: str
) -> None:
    """A call on each wire codec: `?codec=pcm16` forces PCM16; by default the page negotiates
    Opus through WebCodecs. The PCM16 call picks quick turn-taking (`sampling.eagerness`),
    changes it to patient mid-call (`update`) and asks for an answer (`respond`)."""
    before = frames_in_total(server)
    page = page_factory(f"{server.http}/" + ("?codec=pcm16" if codec == "pcm16" else ""))
    if codec == "opus" and not page.evaluate("() => 'AudioEncoder' in window"):
        pytest.skip("this chromium has no WebCodecs AudioEncoder: the page falls back to PCM16")
    if codec == "pcm16":
        page.select_option("#eagerness", "high")
    page.click("#call")
    assert page.is_disabled("#respond")  # no call to answer
    page.wait_for_function("() => window.duplexStats.state === 'live'", timeout=30_000)
    if codec == "pcm16":
        page.select_option("#eagerness", "low")
        page.wait_for_function("() => window.duplexStats.updated !== null", timeout=5_000)
        page.click("#respond")
    page.wait_for_timeout(CALL_S * 1000)
    live = page_stats(page)
    drawn = colour_boxes(page, "#timeline")
    latency_text = page.inner_text("#latency")
    page.screenshot(path="/tmp/duplex-page.png")
    page.click("#call")  # hang up: `end`, the rest of the agent audio, `stats`, close
    page.wait_for_function("() => window.duplexStats.state === 'idle'", timeout=20_000)
    final = page_stats(page)
    after = frames_in_total(server)
    print("live:", live, "\nfinal:", final)

    assert final["lastError"] is None, final["lastError"]
    assert final["sessionId"]
    assert final["ready"]["speak_up_ms"] == (2080 if codec == "pcm16" else 3040)  # Quick or not
    if codec == "pcm16":  # `low` from mid-call on: one flat draw, cooler, patient
        updated = final["updated"]
        assert (updated["turn_temperature"], updated["temperature"]) == (None, 0.5), updated
        assert updated["speak_up_ms"] == 8000 and final["responsesAsked"] == 1
    assert page.is_enabled("#eagerness") and page.is_disabled("#respond")
    assert final["codec"] == codec
    assert page.inner_text("#codec") == ("PCM16" if codec == "pcm16" else "Opus (WebCodecs)")
    # Wire bytes per second of call, headers included: PCM16 ~262 kbit/s up, Opus ~30.
    seconds = final["samplesSent"] / WIRE_RATE
    up, down = (final[k] * 8 / seconds / 1000 for k in ("bytesSent", "bytesReceived"))
    print(f"{codec}: {up:.1f} kbit/s up, {down:.1f} kbit/s down")
    if codec == "opus":
        assert up < 64 and down < 64, (up, down)
    else:
        assert up > 250 and down > 200, (up, down)
    # The server received the user's audio: ~50 frames a second, every one counted.
    assert final["framesSent"] > 100, final
    assert final["maxMicLevel"] > 0.001, "the fake microphone delivered silence"
    server_stats = final["serverStats"]
    assert server_stats is not None, "no `stats` at the end of the call"
    assert server_stats["frames_in"] == final["framesSent"]
    assert after - before >= final["framesSent"]
    assert page.inner_text("#server-frames").startswith(f"{final['framesSent']} in")
    floor = server_stats["noise_floor_db"]
    shown = "digital silence" if floor <= -120 else f"{math.floor(floor + 0.5)} dBFS"  # JS round
    assert page.inner_text("#line-noise") == f"{shown}, {server_stats['frames_gated']} frames gated"
    # The page played the agent's audio: over a second of it, and not silence.
    assert final["agentFrames"] > 5
    assert final["samplesPlayed"] > WIRE_RATE, final
    assert final["maxAgentLevel"] > 0, "the playback level meter never moved"
    # Latency (audio sent minus audio played) is shown as a number of ms, and plausible. It may
    # be a little negative: agent frame k is due at the *start* of its 160 ms (the model
    # estimates the user's newest chunk), so it can play before the mic frames of the same
    # moment are cut (20 ms framing) and sent.
    assert re.fullmatch(r"-?\d+ ms", latency_text), latency_text
    assert live["latencyMs"] is not None and -200 < live["latencyMs"] < 2000, live
    # Playback acknowledgements: `played` about every 250 ms from the play head, never ahead
    # of what was played; the server's `stats` carry the latest it got. Nothing was flushed.
    assert final["playedAcks"] >= CALL_S * 2, final
    assert 0 < live["playedAcked"] <= server_stats["played_samples"], (live, server_stats)
    assert server_stats["played_samples"] <= final["playedAcked"] <= final["samplesPlayed"]
    assert server_stats["unplayed_samples"] == 0
    # The conversation timeline, drawn live: the caller's lane (the fake mic talks throughout)
    # above the agent's, where its voice played alone or over the caller's.
    t = final["timeline"]
    print("timeline:", t, "drawn:", drawn)
    assert live["timelineDraws"] > CALL_S * 10, live  # requestAnimationFrame kept drawing
    assert t["callerS"] > 1 and t["agentS"] > 0, t
    assert t["overlapS"] <= min(t["callerS"], t["agentS"]), t
    assert drawn["caller"]["count"] > 0, drawn
    agent_lane = max(drawn["agent"]["bottom"], drawn["overlap"]["bottom"])
    assert agent_lane > drawn["caller"]["bottom"], drawn
    assert page.inner_text("#conversation").startswith(f"you {t['callerS']:.1f} s, agent ")
    assert page_factory.errors == []


def test_agent_audio_dropped_unplayed_is_marked_truncated(
    server: ServerProcess, page_factory: Any
) -> None:
    """A page too busy for a second (its main thread blocked): the agent's frames queue up
    behind it and arrive at once, more than the jitter buffer may hold, so it drops the oldest
    (a trim). That audio was received and never played: the timeline counts and draws it as
    truncated, and the `played` acknowledgements jump over it without an error."""
    page = page_factory(f"{server.http}/?codec=pcm16")
    page.click("#call")
    page.wait_for_function("() => window.duplexStats.samplesPlayed > 16000", timeout=30_000)
    page.evaluate("() => { const t = performance.now(); while (performance.now() - t < 1200); }")
    page.wait_for_function("() => window.duplexStats.timeline.truncatedS > 0", timeout=5_000)
    page.wait_for_timeout(500)
    drawn = colour_boxes(page, "#timeline")
    page.click("#call")
    page.wait_for_function("() => window.duplexStats.state === 'idle'", timeout=20_000)
    final = page_stats(page)
    print("final:", final, "\ndrawn:", drawn)
    assert final["lastError"] is None, final["lastError"]
    assert final["overflows"] >= 1, final
    # About the 1.2 s of frames that came at once, less the target + one frame the buffer
    # keeps (a loaded machine may stall the page a little longer).
    assert 0.1 < final["timeline"]["truncatedS"] < 2.5, final["timeline"]
    assert drawn["truncated"]["count"] > 0, drawn
    assert final["serverStats"]["played_samples"] > 0
    assert final["serverStats"]["unplayed_samples"] == 0
    assert page_factory.errors == []


def test_timeline_marks_overlaps_barge_ins_and_truncation(
    server: ServerProcess, page_factory: Any
) -> None:
    """The page's timeline module in chromium, fed a scripted conversation in 20 ms frames:
    speech runs (short pauses bridged, quiet frames not speech), the overlap, one barge-in
    where the caller starts over the agent, truncated audio, and where each is drawn."""
    page = page_factory(f"{server.http}/")
    result = page.evaluate(
        """async () => {
          const { Timeline } = await import("./timeline.js");
          const t = new Timeline();
          const talk = (lane, from, to, level = 0.1) => {
            for (let i = Math.round(from * 50); i < Math.round(to * 50); i++) {
              t.add(lane, i / 50, (i + 1) / 50, level);
            }
          };
          talk("agent", 10, 14);
          talk("caller", 8, 9); // before the agent: no overlap
          talk("caller", 9, 9.5, 0.002); // -54 dBFS: not speech
          talk("caller", 12, 12.5); // over the agent: a barge-in
          talk("caller", 12.6, 13); // a 0.1 s pause: the same run, no second barge-in
          talk("caller", 15, 16); // after the agent
          t.truncate(14, 0.3);
          const canvas = document.createElement("canvas");
          canvas.id = "scripted";
          canvas.style.cssText = "display: block; width: 600px; height: 100px";
          document.querySelector(".timeline").append(canvas);
          t.draw(canvas, 20);
          return { figures: t.figures(), caller: t.caller, agent: t.agent };
        }"""
    )
    assert result["caller"] == [[8, 9], [12, 13], [15, 16]]
    assert result["agent"] == [[10, 14]]
    f = result["figures"]
    assert f["callerS"] == pytest.approx(3) and f["agentS"] == pytest.approx(4)
    assert f["overlapS"] == pytest.approx(1) and f["bargeIns"] == 1
    assert f["truncatedS"] == pytest.approx(0.3)
    boxes = colour_boxes(page, "#scripted")
    caller, agent, both = boxes["caller"], boxes["agent"], boxes["overlap"]
    barge_in, truncated = boxes["barge-in"], boxes["truncated"]
    assert min(caller["count"], agent["count"], both["count"], barge_in["count"]) > 0, boxes
    assert caller["bottom"] < agent["top"]  # two lanes, the caller's on top
    assert both["top"] <= caller["top"] and both["bottom"] >= agent["bottom"] - 1  # both lanes
    # A line (under a small triangle) where the caller started over the agent.
    assert abs((barge_in["left"] + barge_in["right"]) / 2 - both["left"]) <= 2, boxes
    assert barge_in["top"] <= caller["top"] and barge_in["bottom"] >= agent["bottom"]
    # The truncated audio: a strip at the foot of the agent's lane, from where it was dropped.
    assert truncated["count"] > 0 and agent["top"] < truncated["top"] <= agent["bottom"]
    assert abs(truncated["left"] - agent["right"]) <= 2
    assert page_factory.errors == []


def _hold_the_slot(url: str, holding: threading.Event, release: threading.Event) -> None:
    """A native-protocol call that keeps the only slot busy until `release` is set."""
    from clients.client import DuplexClient
    from streaming.wire import AudioFormat

    async def call() -> None:
        async with DuplexClient.connect(url, audio=AudioFormat(sample_rate=16000)) as client:
            holding.set()

            async def drain() -> None:
                async for _ in client.events():
                    pass

            reader = asyncio.create_task(drain())
            silence = np.zeros(client.frame_samples, dtype=np.float32)
            while not release.is_set():
                await client.send_frame(silence)  # keeps the call from idling out
                await asyncio.sleep(client.audio.frame_ms / 1000)
            await client.end()
            await reader

    asyncio.run(call())


def test_full_server_is_explained_in_words(
    checkpoint: Path, tmp_path: Path, page_factory: Any
) -> None:
    srv = start_server(checkpoint, tmp_path / "server.log", "--max-sessions", "1")
    holding, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_the_slot, args=(srv.url, holding, release))
    holder.start()
    try:
        assert holding.wait(30), "the first call did not start"
        page = page_factory(f"{srv.http}/")
        page.click("#call")
        page.wait_for_function("() => window.duplexStats.lastError !== null", timeout=30_000)
        stats = page_stats(page)
        assert stats["lastErrorCode"] == "server_full"
        assert "All lines are busy, try again in a moment" in page.inner_text("#error")
        assert page.is_visible("#error")
        page.wait_for_function("() => window.duplexStats.state === 'idle'", timeout=10_000)
        assert page.inner_text("#call") == "Call"
        assert page_factory.errors == []
    finally:
        release.set()
        holder.join(30)
        stop_server(srv)


@pytest.fixture()
def https_server(checkpoint: Path, tmp_path: Path) -> Iterator[int]:
    """`duplex serve` with a self-signed certificate (docs/browser.md's openssl command)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=duplex.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port),
             "--model", str(checkpoint), "--max-sessions", "1",
             "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    srv = ServerProcess(f"wss://127.0.0.1:{port}/v1/duplex", f"https://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no HTTPS answer:\n" + log.read_text()
            try:
                if httpx.get(f"{srv.http}/healthz", verify=False, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield port
    finally:
        stop_server(srv)


def test_remote_page_needs_https(https_server: int, page_factory: Any) -> None:
    """From another host the mic works only over HTTPS; over plain HTTP the page says so."""
    page = page_factory(f"https://duplex.test:{https_server}/")
    assert page.evaluate("() => window.isSecureContext")
    page.click("#call")
    page.wait_for_function("() => window.duplexStats.framesSent > 25", timeout=30_000)
    page.click("#call")
    page.wait_for_function("() => window.duplexStats.state === 'idle'", timeout=20_000)
    stats = page_stats(page)
    assert stats["lastError"] is None, stats["lastError"]
    assert stats["serverStats"]["frames_in"] == stats["framesSent"]
    # The same page from a plain-HTTP server on a non-local name: no microphone, in words.
    http_port = free_port()
    plain = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"],
        cwd=ROOT / "clients" / "web", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):  # until the file server answers
            try:
                httpx.get(f"http://127.0.0.1:{http_port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        page2 = page_factory(f"http://duplex.test:{http_port}/")
        assert not page2.evaluate("() => window.isSecureContext")
        page2.click("#call")
        page2.wait_for_function("() => window.duplexStats.lastError !== null", timeout=10_000)
        assert page_stats(page2)["lastErrorCode"] == "insecure"
        assert "HTTPS" in page2.inner_text("#error")
    finally:
        plain.terminate()
        plain.wait(10)
    assert page_factory.errors == []
