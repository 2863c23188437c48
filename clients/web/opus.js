// Opus on the wire with WebCodecs (docs/protocol.md, "Opus"): about a tenth of PCM16's bytes,
// for calls over the internet or mobile links. The browser's own libopus does the work, off
// the audio thread; the page falls back to PCM16 where WebCodecs or its Opus is missing.
//
// Up: one packet per 20 ms mic frame, sent as one binary frame. Down: an agent frame holds
// that tick's audio as 20 ms packets, each prefixed by its u16 little-endian length.

export const OPUS_BITRATE = 24000; // bit/s, as the server's encoder: ample for speech
const AGENT_PACKET_MS = 20; // the server's packet length (docs/protocol.md)

function encoderConfig(rate, frameMs) {
  return {
    codec: "opus",
    sampleRate: rate,
    numberOfChannels: 1,
    bitrate: OPUS_BITRATE,
    opus: { frameDuration: frameMs * 1000 }, // microseconds: one packet per client frame
  };
}

function decoderConfig(rate) {
  return { codec: "opus", sampleRate: rate, numberOfChannels: 1 };
}

// Whether this browser can encode and decode Opus at `rate` (WebCodecs needs a secure page).
export async function opusSupported(rate, frameMs) {
  if (!("AudioEncoder" in window) || !("AudioDecoder" in window)) return false;
  try {
    const [enc, dec] = await Promise.all([
      AudioEncoder.isConfigSupported(encoderConfig(rate, frameMs)),
      AudioDecoder.isConfigSupported(decoderConfig(rate)),
    ]);
    return Boolean(enc.supported && dec.supported);
  } catch {
    return false;
  }
}

const micros = (sample, rate) => Math.round((sample * 1e6) / rate);
const samples = (us, rate) => Math.round((us * rate) / 1e6);

// Mic frames (PCM16) -> Opus packets, each handed to `onPacket(firstSample, bytes)`. The
// encoder keeps state across packets, so one lives for the whole call.
export class OpusUplink {
  constructor(rate, frameMs, onPacket, onError) {
    this.rate = rate;
    this.encoder = new AudioEncoder({
      // A packet's timestamp is its first sample's (it covers exactly one mic frame).
      output: (chunk) => {
        const bytes = new Uint8Array(chunk.byteLength);
        chunk.copyTo(bytes);
        onPacket(samples(chunk.timestamp, rate), bytes);
      },
      error: onError,
    });
    this.encoder.configure(encoderConfig(rate, frameMs));
  }

  encode(firstSample, pcm16, n) {
    const data = new AudioData({
      format: "s16",
      sampleRate: this.rate,
      numberOfFrames: n,
      numberOfChannels: 1,
      timestamp: micros(firstSample, this.rate),
      data: pcm16,
    });
    this.encoder.encode(data);
    data.close();
  }

  // Every packet of the frames encoded so far is out (before `end`).
  flush() {
    return this.encoder.state === "configured" ? this.encoder.flush() : Promise.resolve();
  }

  close() {
    if (this.encoder.state !== "closed") this.encoder.close();
  }
}

// Agent frames (length-prefixed packets) -> float PCM at the wire rate, handed on as one
// `onAudio(firstSample, pcm)` per frame once all its packets are decoded: the jitter buffer
// sizes its limits by the frames it is given, so it must see whole ticks, not 20 ms pieces.
// Each packet's place is its timestamp: the frame's first_sample plus 20 ms per packet before.
export class OpusDownlink {
  constructor(rate, onAudio, onError) {
    this.rate = rate;
    this.packetSamples = (rate * AGENT_PACKET_MS) / 1000;
    this.pending = []; // frames being decoded, oldest first: {first, pcm, remaining}
    this.decoder = new AudioDecoder({
      output: (data) => {
        const pcm = new Float32Array(data.numberOfFrames);
        data.copyTo(pcm, { planeIndex: 0, format: "f32-planar" });
        const first = samples(data.timestamp, rate);
        const factor = data.sampleRate / rate; // a decoder may answer at 48 kHz whatever we ask
        data.close();
        this.place(first, factor === 1 ? pcm : decimate(pcm, factor), onAudio);
      },
      error: onError,
    });
    this.decoder.configure(decoderConfig(rate));
  }

  place(first, pcm, onAudio) {
    const frame = this.pending[0];
    if (!frame) return;
    const offset = first - frame.first;
    frame.pcm.set(pcm.subarray(0, Math.max(0, frame.pcm.length - offset)), offset);
    if (--frame.remaining > 0) return;
    this.pending.shift();
    onAudio(frame.first, frame.pcm);
  }

  decodeFrame(firstSample, payload) {
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    const packets = [];
    for (let pos = 0; pos + 2 <= payload.byteLength; ) {
      const n = view.getUint16(pos, true);
      packets.push(payload.subarray(pos + 2, pos + 2 + n));
      pos += 2 + n;
    }
    if (packets.length === 0) return;
    const pcm = new Float32Array(packets.length * this.packetSamples);
    this.pending.push({ first: firstSample, pcm, remaining: packets.length });
    packets.forEach((data, i) => {
      const timestamp = micros(firstSample + i * this.packetSamples, this.rate);
      this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp, data }));
    });
  }

  close() {
    if (this.decoder.state !== "closed") this.decoder.close();
  }
}

// Down by an integer factor, averaging each group: the agent's speech lies below 4 kHz (its
// codec runs at 8 kHz), where a box filter over 3 samples at 48 kHz costs under 1 dB.
function decimate(pcm, factor) {
  const out = new Float32Array(Math.floor(pcm.length / factor));
  for (let i = 0; i < out.length; i++) {
    let sum = 0;
    for (let j = 0; j < factor; j++) sum += pcm[i * factor + j];
    out[i] = sum / factor;
  }
  return out;
}
