// The messages behind test/golden.json, the golden vectors shared with the Rust codec
// (protocol/tests/js_golden.rs). `npm run golden` rewrites golden.json from this file;
// both test suites then check it: JS decodes and re-encodes every entry, Rust decodes
// every entry with pushwire-protocol, compares the fields and re-encodes the bytes.
// The worked examples of PROTOCOL.md section 11 are among them (a JS test checks that
// every dump there is here, byte for byte).

import { fromHex } from "../protocol.js";

const token = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
const alice = { kind: "peer", self: false, userId: "alice", address: "192.168.1.10", port: 50000, serviceId: 1 };
const v6self = { kind: "peer", self: true, userId: "Zoë", address: "2001:db8::7", port: 443, serviceId: 256 };
const server = { kind: "server" };
const hi = new TextEncoder().encode("hi");
const lz4 = fromHex("3f 68 69 20 03 00 13 60 20 68 69 20 68 69");

export const messages = [
  ["ping (PROTOCOL.md §11)", { type: "ping", nonce: 0x0102030405060708n }],
  ["subscribe (PROTOCOL.md §11)", { type: "subscribe", commandId: 7n, groups: [1, 2] }],
  ["published from an IPv4 peer (PROTOCOL.md §11)", { type: "published", seq: 5n, sender: alice, groups: [1], payload: hi, compression: null }],
  [
    "hello (PROTOCOL.md §11)",
    { type: "hello", minVersion: 1, maxVersion: 1, serviceId: 256, options: { echo: true, compression: false }, userId: "alice", password: new TextEncoder().encode("secret"), resume: null, maxFrameSize: null },
  ],
  [
    "hello, version 4 (PROTOCOL.md §11)",
    { type: "hello", minVersion: 1, maxVersion: 4, serviceId: 1, options: { echo: true, compression: true }, userId: "bob", password: new Uint8Array(0), resume: null, maxFrameSize: 65536 },
  ],
  [
    "welcome, version 4 (PROTOCOL.md §11)",
    { type: "welcome", version: 4, sessionId: 42n, resumeToken: Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i), resumed: false, maxFrameSize: 1048576, pingIntervalMs: 15000, sessionTimeoutMs: 60000, replayCapacity: 1024, idleTimeoutMs: 45000 },
  ],
  [
    "compressed publish (PROTOCOL.md §11)",
    { type: "publish", commandId: 7n, groups: [1], payload: lz4, compression: { algorithm: 1, originalLen: 47 } },
  ],
  [
    "compressed published (PROTOCOL.md §11)",
    { type: "published", seq: 5n, sender: alice, groups: [1], payload: lz4, compression: { algorithm: 1, originalLen: 47 } },
  ],
  [
    "hello as the JS client sends it, resuming",
    { type: "hello", minVersion: 1, maxVersion: 3, serviceId: 1, options: { echo: false, compression: false }, userId: "Zoë", password: new Uint8Array([0, 255, 10]), resume: { token, lastSeq: 18446744073709551615n }, maxFrameSize: null },
  ],
  [
    "welcome",
    { type: "welcome", version: 3, sessionId: 0x1122334455667788n, resumeToken: token, resumed: true, maxFrameSize: 1048576, pingIntervalMs: 15000, sessionTimeoutMs: 120000, replayCapacity: 4096, idleTimeoutMs: 0 },
  ],
  ["refused", { type: "refused", code: 1, reason: "bad credentials" }],
  ["refused, unknown code", { type: "refused", code: 999, reason: "" }],
  ["request", { type: "request", requestId: 1n, methodId: 3, payload: new Uint8Array([1, 2, 3]) }],
  ["request, empty payload", { type: "request", requestId: 9007199254740993n, methodId: 0, payload: new Uint8Array(0) }],
  ["response", { type: "response", requestId: 1n, payload: new TextEncoder().encode("Hello Jack Smith") }],
  ["server error", { type: "serverError", requestId: 2n, code: 6, message: "cancelled before it started" }],
  ["server error, application code", { type: "serverError", requestId: 3n, code: 1000, message: "\u{feff}ünïcode ✓" }],
  ["batch begin", { type: "batchBegin" }],
  ["batch commit", { type: "batchCommit", serverBatching: true }],
  ["cancel", { type: "cancel", requestId: 77n }],
  ["subscribe, empty", { type: "subscribe", commandId: 1n, groups: [] }],
  ["unsubscribe", { type: "unsubscribe", commandId: 2n, all: false, groups: [4294967295, 0] }],
  ["unsubscribe all", { type: "unsubscribe", commandId: 3n, all: true, groups: [] }],
  ["publish", { type: "publish", commandId: 4n, groups: [2, 3], payload: hi, compression: null }],
  ["send user message", { type: "sendUserMessage", commandId: 5n, receiver: "Bob", payload: new TextEncoder().encode("psst"), compression: null }],
  ["list groups", { type: "listGroups", commandId: 6n }],
  ["subscribed, self, IPv6", { type: "subscribed", seq: 1n, sender: v6self, groups: [1, 2] }],
  ["unsubscribed, server sender", { type: "unsubscribed", seq: 2n, sender: server, groups: [2] }],
  ["published from the server, empty payload", { type: "published", seq: 3n, sender: server, groups: [], payload: new Uint8Array(0), compression: null }],
  [
    "published from an IPv4-mapped IPv6 peer",
    { type: "published", seq: 4n, sender: { ...alice, address: "::ffff:10.0.0.1" }, groups: [7], payload: hi, compression: null },
  ],
  ["user message", { type: "userMessage", seq: 6n, sender: v6self, payload: hi, compression: null }],
  [
    "published from a peer on cluster node n2 (version 5)",
    { type: "published", seq: 11n, sender: { ...alice, node: "n2" }, groups: [1], payload: hi, compression: null },
  ],
  ["user message from a peer on a cluster node, self (version 5)", { type: "userMessage", seq: 12n, sender: { ...v6self, node: "eu-west.3" }, payload: hi, compression: null }],
  ["gap", { type: "gap", first: 7n, last: 9n }],
  ["session lost", { type: "sessionLost", reason: 2, text: "expired" }],
  ["push rejected", { type: "pushRejected", commandId: 7n, code: 1, groups: [99], reason: "unknown groups" }],
  ["user message delivered", { type: "userMessageDelivered", commandId: 5n, connections: 2 }],
  [
    "group list",
    { type: "groupList", commandId: 6n, groups: [{ id: 1, description: "lobby" }, { id: 2, description: "" }] },
  ],
  ["push taken", { type: "pushTaken", commandId: 7n }],
  ["pong", { type: "pong", nonce: 1n }],
  ["close", { type: "close", code: 2, reason: "result out of order" }],
  ["close, unknown code", { type: "close", code: 65535, reason: "" }],
  ["ack", { type: "ack", lastSeq: 32n }],
];

// Frames that decode to a message but do not re-encode to the same bytes: the reader
// ignores what later versions may add.
export const nonCanonical = [
  [
    "hello with extension bytes and reserved option bits",
    "00 00 00 13 01 0001 0003 00000001 fd 0001 61 0000 00 ee ee ee",
    { type: "hello", minVersion: 1, maxVersion: 3, serviceId: 1, options: { echo: true, compression: false }, userId: "a", password: new Uint8Array(0), resume: null, maxFrameSize: null },
  ],
];

// Frames every decoder must refuse, with the error (the Rust DecodeError variant).
export const errors = [
  ["empty frame", "00000000", "EmptyFrame"],
  ["frame over the 1 MiB limit, from the length alone", "00100001", "FrameTooLarge"],
  ["unknown type, from the header alone", "00000001 05", "UnknownMessageType"],
  ["compressed bit on a type without a compressed form", "00000009 c0 0000000000000001", "UnknownMessageType"],
  ["compressed bit on Request", "0000000d 90 0000000000000001 00000001", "UnknownMessageType"],
  ["ping body too short", "00000008 40 01020304050607", "Truncated"],
  ["group count not backed by ids", "00000013 20 0000000000000001 0003 00000001 00000002", "Truncated"],
  ["group list count over body / 6", "0000000d 38 0000000000000001 00000002", "Truncated"],
  ["compressed payload field shorter than its header", "0000000e a2 0000000000000001 0000 01 0000", "Truncated"],
  ["welcome too short", "00000003 02 0003", "Truncated"],
  ["close reason not UTF-8", "00000006 42 0000 0001 ff", "InvalidUtf8"],
  ["close reason over 4096 bytes, from its length", "00000005 42 0000 1001", "TooLong"],
  ["hello user id over 1020 bytes, from its length", "0000000c 01 0001 0003 00000001 01 03fd", "TooLong"],
  ["batch commit bool 2", "00000002 14 02", "InvalidValue"],
  ["sender tag 5", "0000000c 30 0000000000000001 05 0000", "InvalidValue"],
  ["sender reserved flag bit", "0000001a 30 0000000000000001 04 04 0001 61 7f000001 0001 00000001 0000", "InvalidValue"],
  ["sender node over 64 bytes, from its length", "0000001a 30 0000000000000001 04 02 0001 61 7f000001 0001 00000001 0041", "TooLong"],
  ["sender node shorter than its length", "0000001c 30 0000000000000001 04 02 0001 61 7f000001 0001 00000001 0005 6e32", "Truncated"],
  ["hello min_version > max_version", "00000005 01 0003 0001", "InvalidValue"],
  ["gap first 0", "00000011 34 0000000000000000 0000000000000001", "InvalidValue"],
  ["gap last < first", "00000011 34 0000000000000005 0000000000000004", "InvalidValue"],
  ["compression algorithm 2", "00000013 a2 0000000000000001 0000 02 00000003 616263", "InvalidValue"],
  ["ping with a trailing byte", "0000000a 40 0102030405060708 09", "TrailingBytes"],
  ["batch begin with a body", "00000002 13 00", "TrailingBytes"],
  ["unsubscribe all followed by a group list", "00000010 21 0000000000000001 01 0001 00000001", "TrailingBytes"],
];
