"""The browser client (clients/web) for real: Debian's chromium, headless, driven by playwright.

A speech wav is the fake microphone. The page must send the user's audio (the server counts the
frames), play the agent's audio (samples played, a non-zero output level), show a latency, and
explain a full server in words. Playwright never downloads a browser here: it launches
/usr/bin/chromium (`make apt` installs it).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from tests.conftest import ServerProcess, read_wav, speak, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (make apt installs it)"
)

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


def test_page_is_served_next_to_the_api(server: ServerProcess) -> None:
    root = httpx.get(f"{server.http}/", timeout=5)
    assert root.status_code == 200 and "app.js" in root.text
    assert httpx.get(f"{server.http}/playback-worklet.js", timeout=5).status_code == 200
    assert httpx.get(f"{server.http}/healthz", timeout=5).json()["status"] == "ok"


def test_browser_call_sends_and_plays_audio(server: ServerProcess, page_factory: Any) -> None:
    before = frames_in_total(server)
    page = page_factory(f"{server.http}/")
    page.click("#call")
    page.wait_for_function("() => window.duplexStats.state === 'live'", timeout=30_000)
    page.wait_for_timeout(CALL_S * 1000)
    live = page_stats(page)
    latency_text = page.inner_text("#latency")
    page.screenshot(path="/tmp/duplex-page.png")
    page.click("#call")  # hang up: `end`, the rest of the agent audio, `stats`, close
    page.wait_for_function("() => window.duplexStats.state === 'idle'", timeout=20_000)
    final = page_stats(page)
    after = frames_in_total(server)

    assert final["lastError"] is None, final["lastError"]
    assert final["sessionId"]
    # The server received the user's audio: ~50 frames a second, every one counted.
    assert final["framesSent"] > 100, final
    assert final["maxMicLevel"] > 0.001, "the fake microphone delivered silence"
    server_stats = final["serverStats"]
    assert server_stats is not None, "no `stats` at the end of the call"
    assert server_stats["frames_in"] == final["framesSent"]
    assert after - before >= final["framesSent"]
    assert page.inner_text("#server-frames").startswith(f"{final['framesSent']} in")
    # The page played the agent's audio: over a second of it, and not silence.
    assert final["agentFrames"] > 5
    assert final["samplesPlayed"] > WIRE_RATE, final
    assert final["maxAgentLevel"] > 0, "the playback level meter never moved"
    # Latency (audio sent minus audio played) is shown as a number of ms, and plausible.
    assert re.fullmatch(r"-?\d+ ms", latency_text), latency_text
    assert live["latencyMs"] is not None and 0 <= live["latencyMs"] < 2000, live
    assert page_factory.errors == []


def _hold_the_slot(url: str, holding: threading.Event, release: threading.Event) -> None:
    """A native-protocol call that keeps the only slot busy until `release` is set."""
    from clients.client import DuplexClient
    from server.protocol import AudioFormat

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
