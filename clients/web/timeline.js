// The conversation as the caller lived it: a two-lane timeline of the last 30 s on a canvas.
//
// Times are on the page's audio clock (AudioContext.currentTime, seconds): the caller's speech
// at the moment the microphone captured it, the agent's at the moment the page played it. So an
// overlap is two voices at once as the caller heard them, and a barge-in is the caller starting
// to talk while the agent's voice was playing, whatever the network and the jitter buffer did.
//
// A lane is active where its audio's RMS is above SPEECH_LEVEL (a plain energy threshold); gaps
// shorter than BRIDGE_S inside speech (stops, breaths between words) are bridged, so a sentence
// is one run and a barge-in is counted once, at the start of the caller's run.

const VIEW_S = 30;
const SPEECH_LEVEL = 10 ** (-45 / 20); // -45 dBFS RMS
const BRIDGE_S = 0.25;
const TICK_S = 5; // a grid line and a label every 5 s
const LABEL_W = 44; // px: the lane names
const AXIS_H = 14; // px: the time labels
const GAP = 4; // px between and around the lanes

const GRID = "rgba(128, 128, 128, 0.35)";
const TEXT = "rgba(128, 128, 128, 0.95)";

// The lanes' colours, from the page's stylesheet (custom properties on the canvas's figure),
// so that the legend and the drawing cannot disagree.
function laneColors(canvas) {
  const style = getComputedStyle(canvas);
  const get = (name) => style.getPropertyValue(name).trim();
  return {
    caller: get("--caller"),
    agent: get("--agent"),
    overlap: get("--overlap"),
    bargeIn: get("--barge-in"),
    truncated: get("--truncated"),
  };
}

// The intersections of two sorted lists of disjoint [start, end] runs (a sweep).
function intersect(a, b) {
  const out = [];
  for (let i = 0, j = 0; i < a.length && j < b.length; ) {
    const start = Math.max(a[i][0], b[j][0]);
    const end = Math.min(a[i][1], b[j][1]);
    if (start < end) out.push([start, end]);
    if (a[i][1] < b[j][1]) i++;
    else j++;
  }
  return out;
}

const total = (runs) => runs.reduce((s, [a, b]) => s + (b - a), 0);

export class Timeline {
  constructor() {
    this.reset();
  }

  // A new call starts with an empty timeline (the last call's stays on show until then).
  reset() {
    this.caller = []; // [start, end] runs of the caller's speech
    this.agent = []; // [start, end] runs of the agent's speech, as played
    this.truncated = []; // [at, seconds]: agent audio received and dropped unplayed at `at`
    this.now = 0; // the latest time any lane has heard of
  }

  // The interval [from, to) of `lane` ("caller" or "agent"), active if `level` is speech.
  add(lane, from, to, level) {
    this.now = Math.max(this.now, to);
    if (!(level >= SPEECH_LEVEL) || to <= from) return;
    const runs = this[lane];
    const last = runs[runs.length - 1];
    if (last && from - last[1] <= BRIDGE_S) last[1] = Math.max(last[1], to);
    else runs.push([from, to]);
  }

  // `seconds` of received agent audio dropped at `at` without being played.
  truncate(at, seconds) {
    this.truncated.push([at, seconds]);
  }

  overlaps() {
    return intersect(this.caller, this.agent);
  }

  // Starts of caller runs that began while the agent's voice was already playing.
  bargeIns() {
    const starts = [];
    let j = 0;
    for (const [s] of this.caller) {
      while (j < this.agent.length && this.agent[j][1] < s) j++;
      if (j < this.agent.length && this.agent[j][0] < s) starts.push(s);
    }
    return starts;
  }

  // The whole call's figures, in seconds (and a count of barge-ins).
  figures() {
    return {
      callerS: total(this.caller),
      agentS: total(this.agent),
      overlapS: total(this.overlaps()),
      bargeIns: this.bargeIns().length,
      truncatedS: this.truncated.reduce((s, [, d]) => s + d, 0),
    };
  }

  // The last VIEW_S seconds up to `now`: the caller's lane above, the agent's below.
  draw(canvas, now) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const colors = laneColors(canvas);
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const laneH = (h - AXIS_H - 3 * GAP) / 2;
    const lanes = { caller: GAP, agent: 2 * GAP + laneH };
    const left = now - VIEW_S;
    const plotW = w - LABEL_W;
    const x = (t) => LABEL_W + ((Math.max(t, left) - left) / VIEW_S) * plotW;
    const visible = (runs) => runs.filter(([a, b]) => b > left && a < now);
    const fill = (color, runs, y, height) => {
      g.fillStyle = color;
      for (const [a, b] of visible(runs)) g.fillRect(x(a), y, Math.max(1, x(b) - x(a)), height);
    };

    g.font = "11px system-ui, sans-serif";
    g.textBaseline = "middle";
    g.fillStyle = TEXT;
    g.fillText("You", 0, lanes.caller + laneH / 2);
    g.fillText("Agent", 0, lanes.agent + laneH / 2);
    g.textBaseline = "bottom";
    g.textAlign = "center";
    g.strokeStyle = GRID;
    g.lineWidth = 1;
    for (let back = 0; back <= VIEW_S; back += TICK_S) {
      const gx = Math.round(x(now - back)) - 0.5;
      g.beginPath();
      g.moveTo(gx, GAP);
      g.lineTo(gx, h - AXIS_H);
      g.stroke();
      const label = back === 0 ? "now" : `−${back} s`;
      g.fillText(label, Math.min(Math.max(gx, LABEL_W + 12), w - 12), h);
    }
    g.textAlign = "start";

    fill(colors.caller, this.caller, lanes.caller, laneH);
    fill(colors.agent, this.agent, lanes.agent, laneH);
    const both = this.overlaps();
    fill(colors.overlap, both, lanes.caller, laneH);
    fill(colors.overlap, both, lanes.agent, laneH);
    // Truncated audio: a strip under the agent's lane from the moment it was dropped, as long
    // as it would have played.
    const strip = Math.max(3, laneH / 3);
    fill(
      colors.truncated,
      this.truncated.map(([at, d]) => [at, at + d]),
      lanes.agent + laneH - strip,
      strip,
    );
    // Barge-ins: a line across both lanes where the caller started over the agent.
    g.strokeStyle = colors.bargeIn;
    g.fillStyle = colors.bargeIn;
    g.lineWidth = 2;
    for (const s of this.bargeIns()) {
      if (s < left) continue;
      const bx = x(s);
      g.beginPath();
      g.moveTo(bx, GAP);
      g.lineTo(bx, lanes.agent + laneH);
      g.stroke();
      g.beginPath();
      g.moveTo(bx - 4, 0);
      g.lineTo(bx + 4, 0);
      g.lineTo(bx, GAP + 4);
      g.fill();
    }
  }
}
