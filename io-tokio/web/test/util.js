// Test helpers: JSON form of messages (shared with the Rust test protocol/tests/js_golden.rs),
// a seeded PRNG, a fake clock and a fake WebSocket server.

import { FrameDecoder, HARD_MAX_FRAME_SIZE, encodeMessage, fromHex, toHex } from "../protocol.js";

// Fields that are u64 (bigint in JS, decimal strings in JSON) and byte strings (hex).
const U64_FIELDS = new Set(["requestId", "commandId", "seq", "nonce", "lastSeq", "sessionId", "first", "last"]);
const BYTE_FIELDS = new Set(["payload", "password", "token", "resumeToken"]);

/** A message as JSON: u64 as decimal strings, bytes as hex. */
export function toJson(value) {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Uint8Array) return toHex(value);
  if (Array.isArray(value)) return value.map(toJson);
  if (value && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = toJson(v);
    return out;
  }
  return value;
}

/** The inverse of toJson. */
export function fromJson(value, key = null) {
  if (key !== null && U64_FIELDS.has(key) && typeof value === "string") return BigInt(value);
  if (key !== null && BYTE_FIELDS.has(key) && typeof value === "string") return fromHex(value);
  if (Array.isArray(value)) return value.map((v) => fromJson(v));
  if (value && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = fromJson(v, k);
    return out;
  }
  return value;
}

/** SplitMix64 as a seeded PRNG: reproducible cases from a printed seed. */
export class Rng {
  constructor(seed) {
    this.state = BigInt.asUintN(64, BigInt(seed));
  }
  nextU64() {
    this.state = BigInt.asUintN(64, this.state + 0x9e3779b97f4a7c15n);
    let z = this.state;
    z = BigInt.asUintN(64, (z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
    z = BigInt.asUintN(64, (z ^ (z >> 27n)) * 0x94d049bb133111ebn);
    return z ^ (z >> 31n);
  }
  /** An integer in 0..n (n ≤ 2^32). */
  below(n) {
    return Number(this.nextU64() % BigInt(n));
  }
  float() {
    return Number(this.nextU64() >> 11n) / 2 ** 53;
  }
  bool() {
    return this.below(2) === 1;
  }
  bytes(n) {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.below(256);
    return out;
  }
  pick(list) {
    return list[this.below(list.length)];
  }
}

/** Lets queued microtasks and immediate callbacks run (the client flushes in a microtask). */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A virtual clock with the timer API the client takes (options.timers). */
export class FakeClock {
  constructor(start = 1_000_000) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
  }
  now() {
    return this.time;
  }
  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + Math.max(0, ms), fn, id });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  /** The delays of the pending timers, from now. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.time).sort((a, b) => a - b);
  }
  /** Moves time on by `ms`, running the timers that come due, in order. */
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      const due = [...this.timers.values()].filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.timers.delete(due.id);
      this.time = due.at;
      due.fn();
      await settle();
    }
    this.time = end;
    await settle();
  }
}

/** One fake WebSocket, as the client sees it; the test plays the server. */
export class FakeSocket {
  constructor(url) {
    this.url = url;
    this.binaryType = "blob";
    this.sent = []; // the client's WebSocket messages, as Uint8Arrays
    this.frames = []; // the client's frames, decoded
    this.decoder = new FrameDecoder(HARD_MAX_FRAME_SIZE);
    this.closed = null;
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
  }
  send(data) {
    if (this.closed) throw new Error("send on a closed socket");
    const bytes = new Uint8Array(data);
    this.sent.push(bytes);
    const { messages, error } = this.decoder.push(bytes);
    if (error) throw error;
    this.frames.push(...messages);
  }
  close(code) {
    this.closed ??= { code };
  }
  // The server's side.
  open() {
    this.onopen?.({});
  }
  deliver(...messages) {
    const parts = messages.map((m) => (m instanceof Uint8Array ? m : encodeMessage(m)));
    const total = parts.reduce((n, p) => n + p.length, 0);
    const data = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      data.set(p, at);
      at += p.length;
    }
    this.onmessage?.({ data: data.buffer });
  }
  deliverText(text) {
    this.onmessage?.({ data: text });
  }
  drop(code = 1006) {
    this.closed ??= { code };
    this.onclose?.({ code, reason: "" });
  }
  /** Frames of a type the client sent. */
  of(type) {
    return this.frames.filter((f) => f.type === type);
  }
  /** The last frame the client sent. */
  get last() {
    return this.frames[this.frames.length - 1];
  }
}

/** A transport factory that records every socket it opens (options.transport). */
export class FakeServer {
  constructor() {
    this.sockets = [];
    this.failNext = 0; // how many next opens throw
  }
  get transport() {
    return (url) => {
      if (this.failNext > 0) {
        this.failNext--;
        throw new Error("network down");
      }
      const s = new FakeSocket(url);
      this.sockets.push(s);
      return s;
    };
  }
  get socket() {
    return this.sockets[this.sockets.length - 1];
  }
}

export const TOKEN = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);

export function welcome(overrides = {}) {
  return {
    type: "welcome",
    version: 3,
    sessionId: 42n,
    resumeToken: TOKEN,
    resumed: false,
    maxFrameSize: 1 << 20,
    pingIntervalMs: 15000,
    sessionTimeoutMs: 60000,
    replayCapacity: 1024,
    idleTimeoutMs: 0,
    ...overrides,
  };
}

export function peer(userId = "bob", extra = {}) {
  return { kind: "peer", self: false, userId, address: "192.168.1.20", port: 40000, serviceId: 1, ...extra };
}
