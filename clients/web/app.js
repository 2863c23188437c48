// The duplex browser client: microphone -> /v1/duplex -> speakers, in plain ES modules.
//
// Wire format: Opus at 16 kHz in 20 ms packets (~30 kbit/s each way) where the browser has
// WebCodecs (opus.js), else PCM16 at 16 kHz, 20 ms frames (320 samples, 640 bytes + a 16-byte
// header), i.e. 256 kbit/s each way. `?codec=pcm16` forces PCM16. The AudioContext runs at
// 16 kHz where the browser allows it, so the browser resamples the mic and the output;
// otherwise the worklets resample (see capture-worklet.js).

import { OpusDownlink, OpusUplink, opusSupported } from "./opus.js";
import { Timeline } from "./timeline.js";

const WIRE_RATE = 16000;
const FRAME_MS = 20;
const FRAME_SAMPLES = (WIRE_RATE * FRAME_MS) / 1000;
const HEADER_BYTES = 16;
// If the socket has more than this much unsent, drop mic frames (a gap is silence to the
// server) rather than let the user's audio fall ever further behind.
const MAX_BUFFERED_BYTES = 64 * 1024;
// Playback acknowledgements (`played`, docs/protocol.md): how often the page tells the server
// up to which agent sample it has played, so that the model's history is what the caller heard.
const PLAYED_EVERY_S = 0.25;
// Answers to an Opus `start` from a server that lacks it: call again with PCM16.
const NO_OPUS_CODES = new Set(["invalid_message", "unsupported_audio"]);

// Error codes (docs/protocol.md) in words a caller understands.
const ERROR_WORDS = {
  server_full: "All lines are busy, try again in a moment.",
  unauthorized: "The server refused the access token (add ?token=YOUR_KEY to the page address).",
  forbidden_origin: "The server does not accept calls from this page's address.",
  server_shutdown: "The server is restarting; please call again.",
  idle_timeout: "The call ended: the server received no audio for too long.",
  call_too_long: "The call reached its maximum length.",
  slow_consumer: "The connection is too slow to keep up with the agent's audio.",
  start_timeout: "The call could not start in time.",
  internal_error: "The server hit an internal error.",
  mic_denied: "Microphone access was denied. Allow the microphone for this page and try again.",
  mic_missing: "No microphone was found.",
  insecure: "The microphone needs a secure page: open it over HTTPS (or on localhost).",
  connect_failed: "Cannot reach the server.",
  connection_lost: "The connection to the server was lost.",
  audio_failed: "The browser's audio engine could not start.",
};

const $ = (id) => document.getElementById(id);

// Test and debugging hooks: everything the page shows, as numbers (resetStats keeps the state,
// the last error and the context rate across calls).
const freshStats = () => ({
  state: "idle",
  sessionId: null,
  framesSent: 0,
  framesDropped: 0,
  samplesSent: 0,
  agentFrames: 0,
  samplesPlayed: 0,
  latencyMs: null,
  bufferedMs: 0,
  targetMs: 0,
  underruns: 0,
  overflows: 0,
  micLevel: 0,
  agentLevel: 0,
  maxMicLevel: 0,
  maxAgentLevel: 0,
  lastError: null,
  lastErrorCode: null,
  serverStats: null,
  ready: null, // the server's `ready`: the sampling the call got
  updated: null, // the server's latest `updated`: the sampling after a change mid-call
  responsesAsked: 0, // "Answer now" presses (`respond`)
  contextRate: null,
  codec: null, // "opus" or "pcm16": what the call uses on the wire
  bytesSent: 0, // WebSocket binary bytes (headers included), for the bandwidth figures
  bytesReceived: 0,
  // The conversation timeline's figures over the call (timeline.js), in seconds.
  timeline: { callerS: 0, agentS: 0, overlapS: 0, bargeIns: 0, truncatedS: 0 },
  timelineDraws: 0, // canvas frames drawn (requestAnimationFrame)
  playedAcks: 0, // `played` messages sent
  playedAcked: 0, // the agent sample the latest one acknowledged
});
const stats = freshStats();
window.duplexStats = stats;

let call = null; // the live call's resources, null when idle
const timeline = new Timeline(); // the current (or last) call's conversation

function setState(state) {
  stats.state = state;
  const labels = {
    idle: "Not connected",
    starting: "Connecting…",
    live: "In call",
    ending: "Hanging up…",
  };
  $("state").textContent = labels[state] || state;
  $("state").dataset.state = state;
  const button = $("call");
  button.textContent = state === "idle" ? "Call" : "Hang up";
  button.disabled = state === "ending";
  // Turn-taking goes with `start` when idle and as an `update` during the call.
  $("eagerness").disabled = state === "starting" || state === "ending";
  $("respond").disabled = state !== "live";
}

// Send a control message on the call's socket, from `ready` until it closes (the agent's
// last audio plays out after `end`, and `played` goes on saying so); false when there is none.
function sendControl(message) {
  const inCall = stats.state === "live" || stats.state === "ending";
  if (!inCall || !call || !call.ws || call.ws.readyState !== WebSocket.OPEN) return false;
  call.ws.send(JSON.stringify(message));
  return true;
}

function showError(code, detail) {
  const words = ERROR_WORDS[code] || `Error: ${code}.`;
  stats.lastError = detail ? `${words} (${detail})` : words;
  stats.lastErrorCode = code;
  $("error").textContent = stats.lastError;
  $("error").hidden = false;
}

function clearError() {
  stats.lastError = null;
  stats.lastErrorCode = null;
  $("error").hidden = true;
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = new URL(`${scheme}//${location.host}/v1/duplex`);
  const token = new URLSearchParams(location.search).get("token");
  if (token) url.searchParams.set("token", token); // browsers cannot set WebSocket headers
  return url.toString();
}

// One binary audio frame: the 16-byte little-endian header, then the payload (PCM16 samples
// or one Opus packet).
function packFrame(seq, firstSample, pcm, last) {
  const buf = new ArrayBuffer(HEADER_BYTES + pcm.byteLength);
  const view = new DataView(buf);
  view.setUint8(0, 1); // version
  view.setUint8(1, 1); // kind: audio
  view.setUint8(2, last ? 1 : 0); // flags
  view.setUint8(3, 0);
  view.setUint32(4, seq, true);
  view.setBigUint64(8, BigInt(firstSample), true);
  new Uint8Array(buf, HEADER_BYTES).set(new Uint8Array(pcm));
  return buf;
}

function unpackFrame(buf) {
  const view = new DataView(buf);
  if (buf.byteLength < HEADER_BYTES || view.getUint8(0) !== 1 || view.getUint8(1) !== 1) {
    return null;
  }
  return {
    seq: view.getUint32(4, true),
    firstSample: Number(view.getBigUint64(8, true)),
    last: (view.getUint8(2) & 1) === 1,
    payload: new Uint8Array(buf, HEADER_BYTES),
  };
}

function pcm16ToFloat(payload) {
  const pcm16 = new Int16Array(payload.slice().buffer);
  const pcm = new Float32Array(pcm16.length);
  for (let i = 0; i < pcm16.length; i++) pcm[i] = pcm16[i] / 32768;
  return pcm;
}

// The codec to ask for: Opus where WebCodecs has it, unless `?codec=pcm16` says otherwise.
async function chooseCodec() {
  if (new URLSearchParams(location.search).get("codec") === "pcm16") return "pcm16";
  return (await opusSupported(WIRE_RATE, FRAME_MS)) ? "opus" : "pcm16";
}

async function openMic() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw Object.assign(new Error("no mediaDevices"), { code: "insecure" });
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: 1,
        echoCancellation: true, // the agent's voice from the speakers must not come back
        noiseSuppression: true,
        autoGainControl: true,
      },
    });
  } catch (err) {
    const code = err.name === "NotFoundError" ? "mic_missing" : "mic_denied";
    throw Object.assign(new Error(err.message), { code });
  }
}

async function openAudio(mic) {
  let ctx;
  try {
    // At the wire rate the browser resamples for us; not every browser can feed a mic into
    // a context of another rate, so fall back to the device rate (the worklets resample).
    ctx = new AudioContext({ sampleRate: WIRE_RATE, latencyHint: "interactive" });
  } catch {
    ctx = new AudioContext({ latencyHint: "interactive" });
  }
  try {
    await ctx.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
    await ctx.audioWorklet.addModule(new URL("./playback-worklet.js", import.meta.url));
    let source;
    try {
      source = ctx.createMediaStreamSource(mic);
    } catch (err) {
      if (ctx.sampleRate === WIRE_RATE) {
        await ctx.close();
        ctx = new AudioContext({ latencyHint: "interactive" });
        await ctx.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
        await ctx.audioWorklet.addModule(new URL("./playback-worklet.js", import.meta.url));
        source = ctx.createMediaStreamSource(mic);
      } else {
        throw err;
      }
    }
    const processorOptions = { wireRate: WIRE_RATE, frameSamples: FRAME_SAMPLES };
    const capture = new AudioWorkletNode(ctx, "duplex-capture", {
      numberOfOutputs: 1,
      processorOptions,
    });
    const playback = new AudioWorkletNode(ctx, "duplex-playback", {
      numberOfInputs: 0,
      outputChannelCount: [1],
      processorOptions,
    });
    // The capture node outputs nothing useful; route it through a muted gain so that every
    // browser keeps pulling it (a node connected to nothing may not be processed).
    const mute = ctx.createGain();
    mute.gain.value = 0;
    source.connect(capture).connect(mute).connect(ctx.destination);
    playback.connect(ctx.destination);
    await ctx.resume();
    stats.contextRate = ctx.sampleRate;
    return { ctx, capture, playback };
  } catch (err) {
    await ctx.close().catch(() => {});
    throw Object.assign(new Error(err.message), { code: "audio_failed" });
  }
}

function resetStats() {
  const { state, lastError, lastErrorCode, contextRate } = stats;
  Object.assign(stats, freshStats(), { state, lastError, lastErrorCode, contextRate });
}

async function startCall() {
  clearError();
  resetStats();
  setState("starting");
  const c = { ws: null, mic: null, audio: null, seq: 0, nextSample: 0, wireEnd: 0, ended: false };
  c.startAt = null; // sample 0 of the call on the audio clock (set at `ready`)
  c.dropped = 0; // agent samples the jitter buffer dropped unplayed, as last reported
  c.ackedAt = -Infinity; // audio-clock time of the latest `played`
  call = c;
  timeline.reset();
  let codec;
  try {
    c.mic = await openMic();
    c.audio = await openAudio(c.mic);
    codec = await chooseCodec();
  } catch (err) {
    teardown(c);
    showError(err.code || "audio_failed", err.message);
    return;
  }
  if (call !== c) return teardown(c); // hung up while the mic prompt was open

  c.audio.capture.port.onmessage = (e) => onMicFrame(c, e.data);
  c.audio.playback.port.onmessage = (e) => onPlaybackReport(c, e.data);
  connect(c, codec);
}

function connect(c, codec) {
  c.codec = codec;
  stats.codec = codec;
  $("codec").textContent = codec === "opus" ? "Opus (WebCodecs)" : "PCM16";
  if (codec === "opus") {
    const fail = (err) => {
      c.errorCode = "audio_failed";
      showError("audio_failed", `Opus: ${err.message}`);
      if (c.ws) c.ws.close(1000);
    };
    c.uplink = new OpusUplink(WIRE_RATE, FRAME_MS, (first, bytes) => sendAudio(c, first, bytes), fail);
    c.downlink = new OpusDownlink(WIRE_RATE, (first, pcm) => play(c, first, pcm), fail);
  }
  const ws = new WebSocket(socketUrl());
  ws.binaryType = "arraybuffer";
  c.ws = ws;
  ws.onopen = () => {
    const start = {
      type: "start",
      version: 1,
      audio: { encoding: codec, sample_rate: WIRE_RATE, frame_ms: FRAME_MS },
    };
    // Only a choice away from the server's defaults is sent: a server older than
    // `sampling.eagerness` refuses fields it does not know.
    const eagerness = $("eagerness").value;
    if (eagerness !== "medium") start.sampling = { eagerness };
    ws.send(JSON.stringify(start));
  };
  ws.onmessage = (e) => onMessage(c, e.data, e.timeStamp);
  ws.onerror = () => {}; // the close event that follows says what happened
  ws.onclose = (e) => onClose(c, e);
}

function play(c, firstSample, pcm) {
  if (call !== c) return; // a decoder's output after hang-up
  c.audio.playback.port.postMessage({ type: "frame", firstSample, pcm: pcm.buffer }, [pcm.buffer]);
}

function onMessage(c, data, timeStamp) {
  if (typeof data !== "string") {
    stats.bytesReceived += data.byteLength;
    const frame = unpackFrame(data);
    if (!frame) return;
    stats.agentFrames++;
    if (c.downlink) c.downlink.decodeFrame(frame.firstSample, frame.payload);
    else play(c, frame.firstSample, pcm16ToFloat(frame.payload));
    return;
  }
  const msg = JSON.parse(data);
  if (msg.type === "ready") {
    // This instant is sample 0 of the call: start cutting mic frames from here. `at` is when
    // `ready` arrived, on the audio clock: if the page was busy before it got here, the capture
    // worklet sends that much silence first, so every frame keeps its place in time.
    stats.sessionId = msg.session_id;
    stats.ready = msg;
    $("session").textContent = msg.session_id;
    const waited = Math.max(0, performance.now() - timeStamp) / 1000;
    c.startAt = c.audio.ctx.currentTime - waited;
    c.audio.capture.port.postMessage({ type: "start", at: c.startAt });
    setState("live");
  } else if (msg.type === "updated") {
    stats.updated = msg;
  } else if (msg.type === "stats") {
    stats.serverStats = msg;
    $("server-frames").textContent = `${msg.frames_in} in / ${msg.frames_out} out`;
    const floor = msg.noise_floor_db <= -120 ? "digital silence" : `${Math.round(msg.noise_floor_db)} dBFS`;
    $("line-noise").textContent = `${floor}, ${msg.frames_gated} frames gated`;
  } else if (msg.type === "error") {
    if (c.codec === "opus" && !stats.sessionId && NO_OPUS_CODES.has(msg.code)) {
      c.retryPcm16 = true; // a server without Opus: onClose calls again with PCM16
      return;
    }
    c.errorCode = msg.code;
    showError(msg.code, msg.message);
  }
}

function onMicFrame(c, m) {
  if (m.type !== "frame" || c.ended || !c.ws || c.ws.readyState !== WebSocket.OPEN) return;
  stats.micLevel = m.level;
  stats.maxMicLevel = Math.max(stats.maxMicLevel, m.level);
  const first = c.nextSample;
  // Frame n holds the mic audio of [n, n+1) frames after sample 0 (the capture worklet sees
  // to it), so it goes on the timeline there.
  const at = c.startAt + first / WIRE_RATE;
  timeline.add("caller", at, at + FRAME_MS / 1000, m.level);
  c.nextSample += FRAME_SAMPLES; // a dropped frame leaves a gap: the server hears silence
  if (c.uplink) c.uplink.encode(first, m.pcm, FRAME_SAMPLES);
  else sendAudio(c, first, m.pcm);
}

function sendAudio(c, first, payload) {
  if (!c.ws || c.ws.readyState !== WebSocket.OPEN) return;
  if (c.ws.bufferedAmount > MAX_BUFFERED_BYTES) {
    stats.framesDropped++;
    return;
  }
  const frame = packFrame(c.seq++, first, payload, false);
  c.ws.send(frame);
  stats.bytesSent += frame.byteLength;
  stats.framesSent++;
  c.wireEnd = Math.max(c.wireEnd, first + FRAME_SAMPLES);
  stats.samplesSent = c.nextSample;
}

function onPlaybackReport(c, m) {
  if (m.type !== "report") return;
  stats.samplesPlayed = m.played;
  stats.bufferedMs = m.bufferedMs;
  stats.targetMs = m.targetMs;
  stats.underruns = m.underruns;
  stats.overflows = m.overflows;
  stats.agentLevel = m.level;
  stats.maxAgentLevel = Math.max(stats.maxAgentLevel, m.level);
  timeline.add("agent", m.from, m.to, m.level);
  if (m.dropped > c.dropped) {
    timeline.truncate(m.from, (m.dropped - c.dropped) / WIRE_RATE);
    c.dropped = m.dropped;
  }
  if (m.played > stats.playedAcked && m.to - c.ackedAt >= PLAYED_EVERY_S) {
    if (sendControl({ type: "played", sample: m.played })) {
      c.ackedAt = m.to;
      stats.playedAcked = m.played;
      stats.playedAcks++;
    }
  }
  if (stats.state === "live") {
    // Audio sent minus audio played: how far the agent's voice trails the user's, end to end.
    stats.latencyMs = ((c.nextSample - m.played) / WIRE_RATE) * 1000;
  }
}

function onClose(c, e) {
  if (c.retryPcm16 && call === c && !c.ended) {
    c.retryPcm16 = false;
    closeCodecs(c);
    connect(c, "pcm16");
    return;
  }
  // Expected: the normal close after hang-up, or a hang-up before the call started.
  const expected = c.ended && (e.code === 1000 || !stats.sessionId);
  if (!c.errorCode && !expected) {
    if (stats.state === "starting" && !stats.sessionId && e.code === 1006) {
      showError("connect_failed", `close ${e.code}`);
    } else {
      showError("connection_lost", `close ${e.code}${e.reason ? ": " + e.reason : ""}`);
    }
  }
  teardown(c);
}

// Hang up: stop the mic, tell the server the audio is complete, and let it finish (it sends the
// rest of the agent's audio, then `stats`, then closes).
function hangUp() {
  const c = call;
  if (!c) return;
  if (!c.ws || c.ws.readyState !== WebSocket.OPEN || !stats.sessionId) {
    c.ended = true; // not in a call yet: just drop the connection, no error to show
    if (c.ws) c.ws.close(1000);
    teardown(c);
    return;
  }
  c.ended = true;
  setState("ending");
  c.audio.capture.port.postMessage({ type: "stop" });
  c.mic.getTracks().forEach((t) => t.stop());
  // Do not wait for ever on a server that does not close.
  c.closeTimer = setTimeout(() => c.ws && c.ws.close(1000), 5000);
  // Opus: the encoder's last packets go out before `end` (the server refuses audio after it).
  const flushed = c.uplink ? c.uplink.flush().catch(() => {}) : Promise.resolve();
  flushed.then(() => {
    if (c.ws.readyState !== WebSocket.OPEN) return;
    // An encoder may pad its last packet past the mic audio: `end` counts what was sent.
    const total = Math.max(c.nextSample, c.wireEnd);
    c.ws.send(JSON.stringify({ type: "end", total_samples: total }));
  });
}

function closeCodecs(c) {
  if (c.uplink) c.uplink.close();
  if (c.downlink) c.downlink.close();
  c.uplink = null;
  c.downlink = null;
}

function teardown(c) {
  if (c.closeTimer) clearTimeout(c.closeTimer);
  closeCodecs(c);
  if (c.mic) c.mic.getTracks().forEach((t) => t.stop());
  if (c.audio) c.audio.ctx.close().catch(() => {});
  if (c.ws && c.ws.readyState <= WebSocket.OPEN) c.ws.close(1000);
  if (call === c) {
    call = null;
    stats.micLevel = 0;
    stats.agentLevel = 0;
    setState("idle");
  }
}

function render() {
  const meter = (id, level) => {
    // RMS to a 0..1 bar on a dB scale: -60 dBFS and below is empty.
    const db = 20 * Math.log10(Math.max(level, 1e-6));
    $(id).value = Math.max(0, Math.min(1, (db + 60) / 60));
  };
  meter("mic-level", stats.micLevel);
  meter("agent-level", stats.agentLevel);
  $("latency").textContent = stats.latencyMs === null ? "–" : `${Math.round(stats.latencyMs)} ms`;
  $("buffer").textContent = `${Math.round(stats.bufferedMs)} ms (target ${Math.round(stats.targetMs)} ms)`;
  $("sent").textContent = `${stats.framesSent} frames (${(stats.samplesSent / WIRE_RATE).toFixed(1)} s)`;
  $("played").textContent = `${(stats.samplesPlayed / WIRE_RATE).toFixed(1)} s`;
  $("glitches").textContent = `${stats.underruns} underruns, ${stats.overflows} trims`;
  $("bandwidth").textContent = `${kbits(stats.bytesSent)} up / ${kbits(stats.bytesReceived)} down`;
  const t = timeline.figures();
  stats.timeline = t;
  const seconds = (x) => `${x.toFixed(1)} s`;
  $("conversation").textContent =
    `you ${seconds(t.callerS)}, agent ${seconds(t.agentS)}, both ${seconds(t.overlapS)}, ` +
    `${t.bargeIns} barge-in${t.bargeIns === 1 ? "" : "s"}, ` +
    `${Math.round(t.truncatedS * 1000)} ms truncated`;
}

// The timeline follows the audio clock during a call and stays on the last call's end after it
// (drawn again only when that moves, or the canvas's size changes).
let drawnAt = null;
function drawTimeline() {
  const canvas = $("timeline");
  const live = call && call.audio && call.startAt !== null;
  const now = live ? call.audio.ctx.currentTime : timeline.now;
  const key = `${now} ${canvas.clientWidth}x${canvas.clientHeight}`;
  if (key !== drawnAt) {
    timeline.draw(canvas, now);
    drawnAt = key;
    stats.timelineDraws++;
  }
  requestAnimationFrame(drawTimeline);
}

// Average kbit/s over the call so far (both directions count from the call's sample 0).
function kbits(bytes) {
  const seconds = stats.samplesSent / WIRE_RATE;
  return seconds > 0 ? `${Math.round((bytes * 8) / seconds / 1000)} kbit/s` : "–";
}

$("call").addEventListener("click", () => {
  if (stats.state === "idle") startCall();
  else hangUp();
});
$("eagerness").addEventListener("change", () => {
  sendControl({ type: "update", sampling: { eagerness: $("eagerness").value } });
});
$("respond").addEventListener("click", () => {
  if (sendControl({ type: "respond" })) stats.responsesAsked++;
});
setState("idle");
// A timer, not requestAnimationFrame: the figures keep updating in a background tab.
setInterval(render, 100);
requestAnimationFrame(drawTimeline);
