// Playback worklet: the agent's audio, placed by first_sample, through an adaptive jitter buffer.
//
// The server sends one agent frame per tick (160 ms of audio), each carrying the index of its
// first sample on the call's timeline. Frames are written into a ring buffer at that index, so a
// late frame still lands in the right place and a missing one is silence. The play head walks
// the same timeline; the buffer is what lies between the play head and the furthest written
// sample.
//
// Rules (all in wire-rate samples, reported in ms):
// - start: playing begins, and resumes after an underrun, once `target` is buffered
//   (initially 80 ms);
// - underrun: the play head reached the end of the written audio while playing: play silence,
//   grow `target` by 20 ms (up to `maxTarget`) and wait to re-buffer. The head does not move
//   meanwhile, so no audio is skipped: the call's latency grows instead;
// - overflow: more than target + one frame + `slack` is buffered (the network delivered a
//   burst, or the audio clock runs slower than the server's): drop the oldest audio so that
//   target + one frame is left, which brings the latency back down.
//
// The page hears back every ~50 ms: samples played (the play head), buffered and target ms,
// underruns, overflows, the agent audio dropped unplayed so far (trimmed or late), and the
// output level over [from, to) on the audio clock (the page's conversation timeline).

const START_MS = 80;
const GROW_MS = 20;
const MAX_TARGET_MS = 1000;
const SLACK_MS = 120;
const RING_SECONDS = 20;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.wireRate = opts.wireRate || 16000;
    this.step = this.wireRate / sampleRate; // wire samples per output sample
    this.ms = this.wireRate / 1000; // wire samples per millisecond
    this.ring = new Float32Array(this.wireRate * RING_SECONDS);
    this.reset();
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "frame") this.write(m.firstSample, new Float32Array(m.pcm));
      else if (m.type === "reset") this.reset();
    };
  }

  reset() {
    this.ring.fill(0);
    this.head = 0; // play position on the call's timeline (fractional when resampling)
    this.end = 0; // one past the furthest sample written
    this.playing = false;
    this.target = START_MS * this.ms;
    this.frameLen = 0; // longest frame seen: the buffer naturally swings by this much
    this.underruns = 0;
    this.overflows = 0;
    this.droppedLate = 0;
    this.trimmed = 0; // samples the overflow rule skipped: received, never played
    this.sumSq = 0;
    this.count = 0;
    this.lastReport = 0;
    this.reportFrom = currentTime;
  }

  write(first, pcm) {
    const n = this.ring.length;
    let start = first;
    let data = pcm;
    const headInt = Math.floor(this.head);
    if (start < headInt) {
      // Part of the frame is already behind the play head (it arrived after we trimmed):
      // keep only what is still ahead.
      const skip = Math.min(data.length, headInt - start);
      this.droppedLate += skip;
      data = data.subarray(skip);
      start += skip;
    }
    if (start + data.length - headInt > n) return; // further ahead than the ring: drop it
    for (let i = this.end; i < start; i++) this.ring[i % n] = 0; // a gap is silence
    for (let i = 0; i < data.length; i++) this.ring[(start + i) % n] = data[i];
    this.end = Math.max(this.end, start + data.length);
    this.frameLen = Math.max(this.frameLen, pcm.length);
    // Overflow: trim the oldest audio so target + one frame is left.
    const limit = this.target + this.frameLen + SLACK_MS * this.ms;
    if (this.end - this.head > limit) {
      const head = this.end - (this.target + this.frameLen);
      this.trimmed += Math.floor(head) - Math.floor(this.head);
      this.head = head;
      this.overflows++;
    }
  }

  sample(pos) {
    const n = this.ring.length;
    const i = Math.floor(pos);
    const f = pos - i;
    const a = this.ring[i % n];
    return f === 0 ? a : a + (this.ring[(i + 1) % n] - a) * f;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    for (let k = 0; k < out.length; k++) {
      const buffered = this.end - this.head;
      if (!this.playing && buffered >= this.target && buffered > 0) this.playing = true;
      if (this.playing && buffered < this.step + 1) {
        // Underrun: nothing left to play. Re-buffer with a larger target.
        this.playing = false;
        this.underruns++;
        this.target = Math.min(this.target + GROW_MS * this.ms, MAX_TARGET_MS * this.ms);
      }
      let x = 0;
      if (this.playing) {
        x = this.sample(this.head);
        this.head += this.step;
      }
      out[k] = x;
      this.sumSq += x * x;
      this.count++;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (currentTime - this.lastReport >= 0.05) {
      this.lastReport = currentTime;
      const to = currentTime + out.length / sampleRate; // this block's end
      this.port.postMessage({
        type: "report",
        played: Math.floor(this.head),
        bufferedMs: Math.max(0, this.end - this.head) / this.ms,
        targetMs: this.target / this.ms,
        playing: this.playing,
        underruns: this.underruns,
        overflows: this.overflows,
        dropped: this.droppedLate + this.trimmed,
        level: this.count ? Math.sqrt(this.sumSq / this.count) : 0,
        from: this.reportFrom,
        to,
      });
      this.reportFrom = to;
      this.sumSq = 0;
      this.count = 0;
    }
    return true;
  }
}

registerProcessor("duplex-playback", PlaybackProcessor);
