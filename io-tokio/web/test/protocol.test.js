// Codec tests: golden bytes (shared with Rust), round trips of every message,
// randomized round trips and fuzzing with a seeded PRNG, refusal of bad input.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import {
  DEFAULT_MAX_FRAME_SIZE,
  FrameDecoder,
  MessageType,
  PushwireDecodeError,
  PushwireEncodeError,
  codeName,
  CloseCode,
  decodeFrame,
  encodeMessage,
  formatAddress,
  fromHex,
  parseAddress,
  toHex,
} from "../protocol.js";
import { Rng, fromJson, toJson } from "./util.js";

const golden = JSON.parse(readFileSync(new URL("./golden.json", import.meta.url), "utf8"));
const CASES = Number(process.env.PUSHWIRE_JS_CASES ?? 200);
const SEED = BigInt(process.env.PUSHWIRE_JS_SEED ?? Date.now());

/** Runs `body(rng, i)` CASES times; on failure, says how to replay the case. */
function randomized(name, body) {
  test(name, () => {
    for (let i = 0; i < CASES; i++) {
      const seed = SEED + BigInt(i);
      try {
        body(new Rng(seed), i);
      } catch (e) {
        e.message = `${e.message}\n  replay with PUSHWIRE_JS_SEED=${seed} PUSHWIRE_JS_CASES=1`;
        throw e;
      }
    }
  });
}

test("golden messages decode to their fields and encode to their bytes", () => {
  assert.ok(golden.messages.length >= 30);
  const types = new Set();
  for (const entry of golden.messages) {
    const bytes = fromHex(entry.hex);
    const decoded = decodeFrame(bytes);
    types.add(decoded.type);
    assert.deepEqual(toJson(decoded), entry.message, entry.name);
    if (entry.canonical) {
      assert.equal(toHex(encodeMessage(fromJson(entry.message))), entry.hex, entry.name);
    }
  }
  // Every message type of the catalogue has a golden frame.
  assert.deepEqual([...types].sort(), Object.keys(MessageType).sort());
});

test("golden errors are refused with their error", () => {
  for (const entry of golden.errors) {
    const decoder = new FrameDecoder();
    const { messages, error } = decoder.push(fromHex(entry.hex));
    assert.equal(messages.length, 0, entry.name);
    assert.ok(error instanceof PushwireDecodeError, entry.name);
    assert.equal(error.kind, entry.error, `${entry.name}: ${error.message}`);
    assert.equal(error.closeCode, entry.error === "FrameTooLarge" ? CloseCode.FrameTooLarge : CloseCode.ProtocolError);
    // Poisoned: nothing more is read.
    assert.equal(decoder.push(encodeMessage({ type: "ping", nonce: 1n })).messages.length, 0);
  }
});

test("every worked example of PROTOCOL.md section 11 is a golden frame", () => {
  const spec = readFileSync(new URL("../../../protocol/PROTOCOL.md", import.meta.url), "utf8");
  const section = spec.slice(spec.indexOf("## 11. Worked examples"));
  const dumps = [...section.matchAll(/```text\n([\s\S]*?)```/g)].map((m) => toHex(fromHex(m[1])));
  assert.equal(dumps.length, 8);
  const hexes = new Set(golden.messages.map((e) => e.hex));
  for (const dump of dumps) assert.ok(hexes.has(dump), `PROTOCOL.md example ${dump} not in golden.json`);
});

test("the frame limit is checked from the 4 length bytes, before any body", () => {
  const decoder = new FrameDecoder(4096);
  const { error } = decoder.push(new Uint8Array([0, 0, 0x10, 0x01]));
  assert.equal(error.kind, "FrameTooLarge");
  assert.equal(decoder.buffered, 0);
  // Exactly at the limit is fine.
  const ok = new FrameDecoder(4096);
  const frame = encodeMessage({ type: "response", requestId: 1n, payload: new Uint8Array(4096 - 9) });
  assert.equal(frame.length, 4100);
  const r = ok.push(frame);
  assert.equal(r.error, null);
  assert.equal(r.messages[0].payload.length, 4087);
  // The default limit is 1 MiB.
  assert.equal(new FrameDecoder().maxFrameSize, DEFAULT_MAX_FRAME_SIZE);
});

test("an unknown type is refused from the header, without waiting for the body", () => {
  const { error } = new FrameDecoder().push(new Uint8Array([0, 0, 0x40, 0, 0x7f]));
  assert.equal(error.kind, "UnknownMessageType");
});

test("every strict prefix of a golden frame waits; cut bodies are Truncated", () => {
  for (const entry of golden.messages) {
    const bytes = fromHex(entry.hex);
    for (let cut = 0; cut < bytes.length; cut++) {
      const d = new FrameDecoder();
      const r = d.push(bytes.subarray(0, cut));
      assert.equal(r.error, null);
      assert.equal(r.messages.length, 0);
    }
    // The same frame with a shorter length: the body ends inside a field, or has
    // a shorter payload, or is refused some other way, but never throws.
    for (let len = 1; len < bytes.length - 4; len++) {
      const cut = bytes.slice(0, 4 + len);
      new DataView(cut.buffer).setUint32(0, len);
      const r = new FrameDecoder().push(cut);
      if (r.error) assert.ok(r.error instanceof PushwireDecodeError);
    }
  }
});

test("a stream cut at every point decodes to the same messages", () => {
  const all = golden.messages.filter((e) => e.canonical).map((e) => fromHex(e.hex));
  const stream = new Uint8Array(all.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of all) {
    stream.set(b, at);
    at += b.length;
  }
  const whole = new FrameDecoder().push(stream);
  assert.equal(whole.error, null);
  assert.equal(whole.messages.length, all.length);
  for (let cut = 0; cut <= stream.length; cut += 7) {
    const d = new FrameDecoder();
    const a = d.push(stream.subarray(0, cut));
    const b = d.push(stream.subarray(cut));
    assert.equal(a.error ?? b.error, null);
    assert.deepEqual(toJson([...a.messages, ...b.messages]), toJson(whole.messages));
  }
});

test("encoders refuse over-long fields instead of clamping", () => {
  assert.throws(() => encodeMessage({ type: "close", code: 0, reason: "x".repeat(4097) }), PushwireEncodeError);
  assert.throws(
    () => encodeMessage({ type: "hello", minVersion: 1, maxVersion: 3, serviceId: 1, options: {}, userId: "é".repeat(256), password: "", resume: null }),
    PushwireEncodeError,
  );
  assert.throws(() => encodeMessage({ type: "subscribe", commandId: 1n, groups: [2 ** 32] }), PushwireEncodeError);
  assert.throws(() => encodeMessage({ type: "ping", nonce: -1n }), PushwireEncodeError);
  assert.throws(() => encodeMessage({ type: "ping", nonce: 1n << 64n }), PushwireEncodeError);
  assert.throws(() => encodeMessage({ type: "nonsense" }), PushwireEncodeError);
  assert.throws(() => encodeMessage({ type: "ping", nonce: 1n, compression: { algorithm: 1, originalLen: 0 } }), PushwireEncodeError);
});

test("user ids: 255 characters of 4 bytes pass, 256 characters do not", () => {
  const hello = (userId) => ({ type: "hello", minVersion: 1, maxVersion: 3, serviceId: 1, options: { echo: true }, userId, password: "", resume: null });
  const max = "😀".repeat(255);
  assert.equal(decodeFrame(encodeMessage(hello(max))).userId, max);
  // 256 two-byte characters fit the byte limit but not the character limit.
  const frame = encodeMessage(hello("é".repeat(255)));
  const bytes = new Uint8Array(frame.length + 2);
  bytes.set(frame.subarray(0, 14));
  new DataView(bytes.buffer).setUint16(14, 512);
  bytes.set(new TextEncoder().encode("é".repeat(256)), 16);
  bytes.set(frame.subarray(16 + 510), 16 + 512);
  new DataView(bytes.buffer).setUint32(0, bytes.length - 4);
  assert.throws(() => decodeFrame(bytes), (e) => e.kind === "TooLong");
});

test("addresses format like Rust's Display and parse back", () => {
  for (const [text, back] of [
    ["127.0.0.1", "127.0.0.1"],
    ["::1", "::1"],
    ["::", "::"],
    ["2001:0db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["::ffff:192.0.2.1", "::ffff:192.0.2.1"],
    ["fe80::", "fe80::"],
  ]) {
    assert.equal(formatAddress(parseAddress(text)), back);
  }
  for (const bad of ["1.2.3", "256.1.1.1", "1::2::3", "12345::", "::g", ""]) assert.equal(parseAddress(bad), null, bad);
});

test("code names, open tables", () => {
  assert.equal(codeName(CloseCode, 2), "ProtocolError");
  assert.equal(codeName(CloseCode, 4242), "Other(4242)");
});

// ----------------------------------------------------------------- randomized

function randomText(rng, maxChars) {
  const pool = ["a", "Z", "0", " ", "é", "ß", "中", "😀", "\u{feff}", "\u0000"];
  let s = "";
  const n = rng.below(maxChars + 1);
  for (let i = 0; i < n; i++) s += rng.pick(pool);
  return s;
}

const u64 = (rng) => (rng.bool() ? rng.nextU64() : BigInt(rng.below(1000)));
const u32 = (rng) => (rng.bool() ? rng.below(2 ** 32) : rng.below(10));
const u16 = (rng) => rng.below(65536);
const groups = (rng) => Array.from({ length: rng.below(6) }, () => u32(rng));
const bytes = (rng) => rng.bytes(rng.below(40));
function sender(rng) {
  if (rng.below(4) === 0) return { kind: "server" };
  const address = rng.bool() ? formatAddress(rng.bytes(4)) : formatAddress(rng.bytes(16));
  const sender = { kind: "peer", self: rng.bool(), userId: randomText(rng, 12), address, port: u16(rng), serviceId: u32(rng) };
  // Version 5: a clustered server names the sender's node.
  if (rng.bool()) sender.node = randomText(rng, 16);
  return sender;
}
const compression = (rng) => (rng.below(3) === 0 ? { algorithm: 1, originalLen: u32(rng) } : null);

const GENERATORS = {
  hello: (r) => {
    const maxVersion = r.below(4) + 2;
    return {
      minVersion: r.below(2) + 1,
      maxVersion,
      serviceId: u32(r),
      options: { echo: r.bool(), compression: r.bool() },
      userId: randomText(r, 20),
      password: bytes(r),
      resume: r.bool() ? { token: r.bytes(16), lastSeq: u64(r) } : null,
      // Version 4's field: only a client of version 4 or later announces it.
      maxFrameSize: maxVersion >= 4 && r.bool() ? u32(r) : null,
    };
  },
  welcome: (r) => {
    const version = r.below(5) + 1;
    return {
      version,
      sessionId: u64(r),
      resumeToken: r.bytes(16),
      resumed: r.bool(),
      maxFrameSize: u32(r),
      pingIntervalMs: u32(r),
      sessionTimeoutMs: u32(r),
      replayCapacity: u32(r),
      // On the wire from version 4; earlier Welcomes decode with 0.
      idleTimeoutMs: version >= 4 ? u32(r) : 0,
    };
  },
  refused: (r) => ({ code: u16(r), reason: randomText(r, 30) }),
  request: (r) => ({ requestId: u64(r), methodId: u32(r), payload: bytes(r) }),
  response: (r) => ({ requestId: u64(r), payload: bytes(r) }),
  serverError: (r) => ({ requestId: u64(r), code: u32(r), message: randomText(r, 30) }),
  batchBegin: () => ({}),
  batchCommit: (r) => ({ serverBatching: r.bool() }),
  cancel: (r) => ({ requestId: u64(r) }),
  subscribe: (r) => ({ commandId: u64(r), groups: groups(r) }),
  unsubscribe: (r) => (r.bool() ? { commandId: u64(r), all: true, groups: [] } : { commandId: u64(r), all: false, groups: groups(r) }),
  publish: (r) => ({ commandId: u64(r), groups: groups(r), payload: bytes(r), compression: compression(r) }),
  sendUserMessage: (r) => ({ commandId: u64(r), receiver: randomText(r, 20), payload: bytes(r), compression: compression(r) }),
  listGroups: (r) => ({ commandId: u64(r) }),
  subscribed: (r) => ({ seq: u64(r), sender: sender(r), groups: groups(r) }),
  unsubscribed: (r) => ({ seq: u64(r), sender: sender(r), groups: groups(r) }),
  published: (r) => ({ seq: u64(r), sender: sender(r), groups: groups(r), payload: bytes(r), compression: compression(r) }),
  userMessage: (r) => ({ seq: u64(r), sender: sender(r), payload: bytes(r), compression: compression(r) }),
  gap: (r) => {
    const first = BigInt(r.below(1000) + 1);
    return { first, last: first + BigInt(r.below(1000)) };
  },
  sessionLost: (r) => ({ reason: u16(r), text: randomText(r, 30) }),
  pushRejected: (r) => ({ commandId: u64(r), code: u16(r), groups: groups(r), reason: randomText(r, 30) }),
  userMessageDelivered: (r) => ({ commandId: u64(r), connections: u32(r) }),
  groupList: (r) => ({ commandId: u64(r), groups: Array.from({ length: r.below(4) }, () => ({ id: u32(r), description: randomText(r, 10) })) }),
  pushTaken: (r) => ({ commandId: u64(r) }),
  ping: (r) => ({ nonce: u64(r) }),
  pong: (r) => ({ nonce: u64(r) }),
  close: (r) => ({ code: u16(r), reason: randomText(r, 30) }),
  ack: (r) => ({ lastSeq: u64(r) }),
};

export function randomMessage(rng) {
  const type = rng.pick(Object.keys(GENERATORS));
  return { type, ...GENERATORS[type](rng) };
}

test("the generators cover every message type", () => {
  assert.deepEqual(Object.keys(GENERATORS).sort(), Object.keys(MessageType).sort());
});

randomized("random messages round-trip, fed in random pieces", (rng) => {
  const batch = Array.from({ length: rng.below(5) + 1 }, () => randomMessage(rng));
  const frames = batch.map(encodeMessage);
  const stream = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const f of frames) {
    stream.set(f, at);
    at += f.length;
  }
  const decoder = new FrameDecoder();
  const out = [];
  for (let pos = 0; pos < stream.length; ) {
    const n = rng.below(stream.length - pos) + 1;
    const { messages, error } = decoder.push(stream.subarray(pos, pos + n));
    assert.equal(error, null);
    out.push(...messages);
    pos += n;
  }
  assert.equal(decoder.buffered, 0);
  assert.deepEqual(toJson(out), toJson(batch));
  // And each re-encodes to its bytes.
  out.forEach((m, i) => assert.equal(toHex(encodeMessage(m)), toHex(frames[i])));
});

randomized("garbage and mutated frames never throw and never exceed the limit", (rng) => {
  const decoder = new FrameDecoder(4096);
  let input;
  if (rng.bool()) {
    input = rng.bytes(rng.below(200));
  } else {
    input = encodeMessage(randomMessage(rng));
    for (let k = rng.below(4) + 1; k > 0; k--) input[rng.below(input.length)] = rng.below(256);
  }
  let result;
  for (let pos = 0; pos < input.length; ) {
    const n = rng.below(input.length - pos) + 1;
    result = decoder.push(input.subarray(pos, pos + n)); // must not throw
    assert.ok(decoder.buffered <= 4 + 4096);
    if (result.error) {
      assert.ok(result.error instanceof PushwireDecodeError);
      assert.ok(["FrameTooLarge", "EmptyFrame", "UnknownMessageType", "Truncated", "InvalidUtf8", "TooLong", "InvalidValue", "TrailingBytes"].includes(result.error.kind));
      break;
    }
    pos += n;
  }
  // Whatever decodes re-encodes and decodes to itself (Hello may drop extension bytes).
  for (const m of result?.messages ?? []) assert.deepEqual(toJson(decodeFrame(encodeMessage(m))), toJson(m));
});
