// Capture worklet: microphone samples -> fixed-length PCM16 frames at the wire rate.
//
// Runs on the audio rendering thread. The page creates its AudioContext at the wire rate
// (16 kHz) when the browser allows it, so the browser's own resampler does the conversion and
// this worklet only cuts frames. Where the context runs at another rate, a streaming linear
// resampler converts here (after a moving-average low-pass, so downsampling aliases less).
//
// Nothing is sent until the page posts {type: "start", at} (the server's `ready`): the
// protocol's sample 0 is that moment, so audio captured before it is dropped. `at` is that
// moment on the audio clock; when the start message comes later than that (a busy page), the
// gap is sent as silence first, so that frame n still holds the audio of [n, n+1) frames after
// `ready` (docs/protocol.md, "Time alignment") instead of every frame arriving that much late.

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.wireRate = opts.wireRate || 16000;
    this.frameSamples = opts.frameSamples || 320;
    this.step = sampleRate / this.wireRate; // input samples per wire sample
    this.frame = new Float32Array(this.frameSamples);
    this.fill = 0;
    this.running = false;
    this.pad = 0; // wire samples of silence owed before the mic's (see "start")
    this.pos = 0; // fractional read position into the current input block (resampling only)
    this.prev = 0; // last input sample of the previous block (resampling only)
    // Low-pass for downsampling: average over `taps` input samples (~ the decimation factor).
    this.taps = Math.max(1, Math.round(this.step));
    this.history = new Float32Array(this.taps);
    this.hpos = 0;
    this.hsum = 0;
    this.port.onmessage = (e) => {
      if (e.data.type === "start") {
        this.running = true;
        this.fill = 0;
        const late = typeof e.data.at === "number" ? currentTime - e.data.at : 0;
        this.pad = Math.max(0, Math.round(late * this.wireRate));
      } else if (e.data.type === "stop") {
        this.running = false;
      }
    };
  }

  // One wire-rate sample into the current frame; a full frame goes to the page as PCM16.
  push(x) {
    this.frame[this.fill++] = x;
    if (this.fill < this.frameSamples) return;
    const pcm = new Int16Array(this.frameSamples);
    let sumSq = 0;
    for (let i = 0; i < this.frameSamples; i++) {
      const s = Math.max(-1, Math.min(1, this.frame[i]));
      sumSq += s * s;
      pcm[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
    }
    const level = Math.sqrt(sumSq / this.frameSamples);
    this.port.postMessage({ type: "frame", pcm: pcm.buffer, level }, [pcm.buffer]);
    this.fill = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!this.running || !input || input.length === 0) return true;
    for (; this.pad > 0; this.pad--) this.push(0);
    const ch = input[0]; // mono: the page asks the mic for one channel
    if (this.step === 1) {
      for (let i = 0; i < ch.length; i++) this.push(ch[i]);
      return true;
    }
    // Low-pass in place (moving average), then read at fractional positions.
    const smooth = new Float32Array(ch.length);
    for (let i = 0; i < ch.length; i++) {
      this.hsum += ch[i] - this.history[this.hpos];
      this.history[this.hpos] = ch[i];
      this.hpos = (this.hpos + 1) % this.taps;
      smooth[i] = this.hsum / this.taps;
    }
    // pos runs from -1 (between prev and smooth[0]) up to the block's end.
    while (this.pos < smooth.length - 1) {
      const i = Math.floor(this.pos);
      const f = this.pos - i;
      const a = i < 0 ? this.prev : smooth[i];
      const b = smooth[i + 1];
      this.push(a + (b - a) * f);
      this.pos += this.step;
    }
    this.pos -= smooth.length;
    this.prev = smooth[smooth.length - 1];
    return true;
  }
}

registerProcessor("duplex-capture", CaptureProcessor);
