// Client lifecycle tests against a fake WebSocket server and a fake clock: nothing
// touches the network or real time.
import assert from "node:assert/strict";
import { test } from "node:test";
import { PushwireClient, PushwireError, backoffDelay, connect } from "../client.js";
import { CloseCode, decodeFrame, encodeMessage, payloadText } from "../protocol.js";
import { ECHO, SAY_HELLO, SLEEP, sayHello, sayHelloArgs, sleepArgs } from "../hello.js";
import { FakeClock, FakeServer, TOKEN, peer, settle, welcome } from "./util.js";

function setup(options = {}) {
  const server = new FakeServer();
  const clock = new FakeClock();
  const client = new PushwireClient({
    url: "wss://chat.example/pushwire",
    userId: "alice",
    password: "secret",
    transport: server.transport,
    timers: clock,
    random: () => 0.5,
    ...options,
  });
  const events = [];
  for (const type of ["connected", "reconnecting", "closed", "published", "userMessage", "subscribed", "unsubscribed", "gap", "sessionLost", "rejected"]) {
    client.on(type, (detail) => events.push({ type, detail }));
  }
  const of = (type) => events.filter((e) => e.type === type).map((e) => e.detail);
  return { server, clock, client, events, of };
}

/** Opens the client and plays a Welcome; returns the setup. */
async function ready(options = {}, welcomeFields = {}) {
  const s = setup(options);
  const opened = s.client.open();
  s.server.socket.open();
  await settle();
  s.server.socket.deliver(welcome(welcomeFields));
  assert.equal(await opened, s.client);
  s.socket = s.server.socket;
  return s;
}

test("the Hello offers versions 1 to 5, echo, no compression, its frame limit; connect resolves on Welcome", async () => {
  const s = setup({ serviceId: 7 });
  const opened = s.client.open();
  const socket = s.server.socket;
  assert.equal(socket.binaryType, "arraybuffer");
  assert.equal(socket.frames.length, 0, "nothing before the socket is open");
  socket.open();
  await settle();
  const hello = socket.frames[0];
  assert.equal(hello.type, "hello");
  assert.equal(hello.minVersion, 1);
  assert.equal(hello.maxVersion, 5);
  assert.equal(hello.maxFrameSize, 1 << 20);
  assert.equal(hello.serviceId, 7);
  assert.deepEqual(hello.options, { echo: true, compression: false });
  assert.equal(hello.userId, "alice");
  assert.equal(payloadText(hello.password), "secret");
  assert.equal(hello.resume, null);
  socket.deliver(welcome({ version: 2 }));
  await opened;
  assert.equal(s.client.state, "ready");
  assert.equal(s.client.version, 2);
  assert.equal(s.of("connected")[0].reconnected, false);
  assert.equal(s.of("connected")[0].sessionId, 42n);
});

test("connect() with the default transport, echo off", async () => {
  const server = new FakeServer();
  const previous = globalThis.WebSocket;
  globalThis.WebSocket = class extends Object {
    constructor(url) {
      super();
      return server.transport(url);
    }
  };
  try {
    const pending = connect({ url: "wss://x/", userId: "u", password: "p", echo: false });
    server.socket.open();
    await settle();
    assert.equal(server.socket.frames[0].options.echo, false);
    server.socket.deliver(welcome());
    const client = await pending;
    assert.ok(client instanceof PushwireClient);
    await client.close();
  } finally {
    globalThis.WebSocket = previous;
  }
});

test("ws:// is refused unless insecure is set; bad options are refused", async () => {
  await assert.rejects(connect({ url: "ws://x/", userId: "u" }), (e) => e.code === "InvalidArgument");
  assert.doesNotThrow(() => new PushwireClient({ url: "ws://x/", userId: "u", insecure: true, transport: new FakeServer().transport }));
  await assert.rejects(connect({ url: "wss://x/", userId: "" }), (e) => e.code === "InvalidArgument");
  await assert.rejects(connect({ url: "wss://x/", userId: "é".repeat(256) }), (e) => e.code === "InvalidArgument");
  await assert.rejects(connect({ url: "wss://x/", userId: "u", serviceId: -1 }), (e) => e.code === "InvalidArgument");
  await assert.rejects(connect({ url: "wss://x/", userId: "u", password: "p".repeat(1025) }), (e) => e.code === "InvalidArgument");
});

test("Refused: open() rejects with the refusal, closed says why, no reconnect", async () => {
  const s = setup();
  const opened = s.client.open();
  s.server.socket.open();
  await settle();
  s.server.socket.deliver({ type: "refused", code: 1, reason: "wrong password" });
  await assert.rejects(opened, (e) => e instanceof PushwireError && e.code === "Refused" && e.refuseCodeName === "BadCredentials");
  assert.equal(s.client.state, "closed");
  assert.deepEqual(s.of("closed")[0], { source: "refused", code: 1, codeName: "BadCredentials", reason: "wrong password", remote: true });
  assert.equal(s.clock.pending().length, 0);
  assert.equal(s.server.sockets.length, 1);
});

test("requests: results resolve in request order; ServerError rejects with its code", async () => {
  const s = await ready();
  const a = s.client.request(ECHO, "one");
  const b = s.client.request(SAY_HELLO, sayHelloArgs("Jack", "Smith"));
  const c = s.client.request(9, new Uint8Array([1]));
  await settle();
  const sent = s.socket.of("request");
  assert.deepEqual(sent.map((r) => r.requestId), [1n, 2n, 3n]);
  assert.equal(s.socket.sent.length, 2, "Hello, then the three requests in one WebSocket message");
  s.socket.deliver(
    { type: "response", requestId: 1n, payload: new TextEncoder().encode("one") },
    { type: "response", requestId: 2n, payload: new TextEncoder().encode("Hello Jack Smith") },
    { type: "serverError", requestId: 3n, code: 1, message: "hello-world has no method 9" },
  );
  assert.equal(payloadText(await a), "one");
  assert.equal(payloadText(await b), "Hello Jack Smith");
  await assert.rejects(c, (e) => e.code === "ServerError" && e.serverCodeName === "UnknownMethod" && e.message.includes("no method 9"));
  assert.equal(s.client.outstandingRequests, 0);
});

test("a result out of request order is a protocol error: Close ProtocolError, requests lost", async () => {
  const s = await ready();
  const a = s.client.request(ECHO, "a");
  const b = s.client.request(ECHO, "b");
  await settle();
  s.socket.deliver({ type: "response", requestId: 2n, payload: new Uint8Array(0) });
  await assert.rejects(a, (e) => e.code === "ConnectionLost");
  await assert.rejects(b, (e) => e.code === "ConnectionLost");
  assert.equal(s.socket.last.type, "close");
  assert.equal(s.socket.last.code, CloseCode.ProtocolError);
  assert.match(s.socket.last.reason, /out of order/);
  assert.ok(s.socket.closed);
  const closed = s.of("closed")[0];
  assert.equal(closed.source, "protocol");
  assert.equal(s.client.state, "closed", "a protocol error does not reconnect");
});

test("batching: one message of BatchBegin, frames, BatchCommit; abort and cancel in a batch", async () => {
  const s = await ready();
  s.client.startBatching();
  assert.throws(() => s.client.startBatching(), (e) => e.code === "BatchOpen");
  const r1 = s.client.request(ECHO, "1");
  const r2 = s.client.request(ECHO, "2");
  const r3 = s.client.request(ECHO, "3");
  const published = s.client.publish([1], "in a batch");
  assert.equal(s.client.cancel(r2), "removedFromBatch");
  await assert.rejects(r2, (e) => e.code === "Cancelled");
  await settle();
  assert.equal(s.socket.sent.length, 1, "nothing leaves before the commit");
  s.client.commitBatching(true);
  await settle();
  assert.equal(s.socket.sent.length, 2);
  assert.deepEqual(
    s.socket.frames.slice(1).map((f) => f.type),
    ["batchBegin", "request", "request", "publish", "batchCommit"],
  );
  assert.equal(s.socket.last.serverBatching, true);
  s.socket.deliver(
    { type: "response", requestId: 1n, payload: new Uint8Array([1]) },
    { type: "response", requestId: 3n, payload: new Uint8Array([3]) },
    { type: "pushTaken", commandId: 1n },
  );
  assert.deepEqual([...(await r1)], [1]);
  assert.deepEqual([...(await r3)], [3]);
  assert.equal(await published, 1);

  s.client.startBatching();
  const dropped = s.client.request(ECHO, "x");
  const droppedPush = s.client.subscribe([5]);
  s.client.abortBatching();
  await assert.rejects(dropped, (e) => e.code === "BatchAborted");
  await assert.rejects(droppedPush, (e) => e.code === "BatchAborted");
  assert.throws(() => s.client.commitBatching(), (e) => e.code === "NoBatch");
  await settle();
  assert.equal(s.socket.sent.length, 2, "an aborted batch sends nothing");
});

test("cancel: version 3 sends Cancel; version 2 ends locally and drops the late result", async () => {
  const s3 = await ready();
  const slow = s3.client.request(SLEEP, sleepArgs(5000));
  assert.equal(slow.requestId, 1);
  await settle();
  assert.equal(s3.client.cancel(slow), "sentToServer");
  assert.equal(s3.client.cancel(slow), "alreadySent");
  await settle();
  assert.deepEqual(s3.socket.last, { type: "cancel", requestId: 1n });
  s3.socket.deliver({ type: "serverError", requestId: 1n, code: 6, message: "cancelled" });
  await assert.rejects(slow, (e) => e.code === "Cancelled");
  assert.equal(s3.client.cancel(slow), "notOutstanding");

  const s2 = await ready({}, { version: 2 });
  const old = s2.client.request(SLEEP, sleepArgs(5000));
  const next = s2.client.request(ECHO, "after");
  assert.equal(s2.client.cancel(old), "endedLocally");
  await assert.rejects(old, (e) => e.code === "Cancelled");
  await settle();
  assert.equal(s2.socket.of("cancel").length, 0);
  s2.socket.deliver(
    { type: "response", requestId: 1n, payload: new Uint8Array(0) },
    { type: "response", requestId: 2n, payload: new TextEncoder().encode("after") },
  );
  assert.equal(payloadText(await next), "after");
});

test("push commands: resolved by PushTaken (v2+), at once on v1; answers and rejections", async () => {
  const s = await ready();
  const sub = s.client.subscribe([1, 2]);
  const pub = s.client.publish([1], "hello");
  const dm = s.client.sendUserMessage("Bob", new Uint8Array([7]));
  const bad = s.client.sendUserMessage("", "x");
  const list = s.client.listGroups();
  await settle();
  const types = s.socket.frames.slice(1).map((f) => [f.type, f.commandId]);
  assert.deepEqual(types, [["subscribe", 1n], ["publish", 2n], ["sendUserMessage", 3n], ["sendUserMessage", 4n], ["listGroups", 5n]]);
  assert.equal(payloadText(s.socket.frames[2].payload), "hello");
  s.socket.deliver(
    { type: "pushTaken", commandId: 2n },
    { type: "userMessageDelivered", commandId: 3n, connections: 2 },
    { type: "pushRejected", commandId: 4n, code: 5, groups: [], reason: "empty receiver" },
    { type: "groupList", commandId: 5n, groups: [{ id: 1, description: "lobby" }] },
  );
  assert.equal(await sub, 1);
  assert.equal(await pub, 2);
  assert.equal(await dm, 2);
  await assert.rejects(bad, (e) => e.code === "Rejected" && e.rejectCodeName === "InvalidReceiver");
  assert.deepEqual(await list, [{ id: 1, description: "lobby" }]);
  assert.deepEqual(s.of("rejected"), [{ commandId: 4, code: 5, codeName: "InvalidReceiver", groups: [], reason: "empty receiver" }]);
  await assert.rejects(s.client.subscribe([]), (e) => e.code === "InvalidArgument");
  await assert.rejects(s.client.subscribe([-1]), (e) => e.code === "InvalidArgument");
  await assert.rejects(s.client.publish([1], 42), (e) => e.code === "InvalidArgument");

  const v1 = await ready({}, { version: 1 });
  assert.equal(await v1.client.subscribe([3]), 1, "nothing confirms commands on version 1");
  v1.socket.deliver({ type: "pushTaken", commandId: 1n });
  assert.equal(v1.client.state, "closed", "PushTaken is undefined on version 1");
});

test("a frame over the server's limit is refused before it is sent", async () => {
  const s = await ready({}, { maxFrameSize: 4096 });
  await assert.rejects(s.client.publish([1], new Uint8Array(5000)), (e) => e.code === "TooLarge");
  await assert.rejects(s.client.request(ECHO, new Uint8Array(5000)), (e) => e.code === "TooLarge");
  assert.equal(s.client.state, "ready");
});

test("coalesced frames leave in messages of at most the server's frame limit plus 4", async () => {
  const s = await ready({}, { maxFrameSize: 4096 });
  const before = s.socket.sent.length;
  for (let i = 0; i < 10; i++) s.client.publish([1], new Uint8Array(3000));
  await settle();
  const messages = s.socket.sent.slice(before);
  assert.ok(messages.length > 1, "more than one message");
  for (const m of messages) assert.ok(m.length <= 4100, `a message of ${m.length} bytes`);
  const publishes = s.socket.frames.filter((f) => f.type === "publish");
  assert.equal(publishes.length, 10, "the byte stream is whole");
});

test("events: publications, user messages, presence, gap; senders; Ack every 32 events", async () => {
  const s = await ready();
  const me = { kind: "peer", self: true, userId: "alice", address: "2001:db8::1", port: 443, serviceId: 1 };
  s.socket.deliver(
    { type: "subscribed", seq: 1n, sender: me, groups: [1, 2] },
    { type: "subscribed", seq: 2n, sender: peer("bob"), groups: [1] },
    { type: "published", seq: 3n, sender: peer("bob"), groups: [1], payload: new TextEncoder().encode("héllo"), compression: null },
    { type: "userMessage", seq: 4n, sender: { kind: "server" }, payload: new TextEncoder().encode("psst"), compression: null },
    { type: "unsubscribed", seq: 5n, sender: peer("bob"), groups: [1] },
    { type: "gap", first: 6n, last: 8n },
    { type: "unsubscribed", seq: 9n, sender: me, groups: [2] },
  );
  assert.equal(s.of("subscribed").length, 2);
  assert.equal(s.of("subscribed")[0].sender.self, true);
  const pub = s.of("published")[0];
  assert.equal(pub.text, "héllo");
  assert.deepEqual(pub.sender, { kind: "peer", self: false, userId: "bob", address: "192.168.1.20", port: 40000, serviceId: 1 });
  assert.deepEqual(pub.groups, [1]);
  assert.equal(pub.seq, 3n);
  assert.equal(s.of("userMessage")[0].text, "psst");
  assert.equal(s.of("userMessage")[0].sender.kind, "server");
  assert.equal(s.of("unsubscribed").length, 2);
  assert.deepEqual(s.of("gap"), [{ first: 6n, last: 8n }]);
  assert.equal(s.client.lastSeq, 9n);
  assert.deepEqual(s.client.groups, [1], "own membership from self-flagged presence");
  await settle();
  assert.equal(s.socket.of("ack").length, 0, "not yet 32 events");
  const burst = [];
  for (let seq = 10n; seq <= 41n; seq++) {
    burst.push({ type: "published", seq, sender: peer(), groups: [1], payload: new Uint8Array(0), compression: null });
  }
  s.socket.deliver(...burst);
  await settle();
  assert.deepEqual(s.socket.of("ack"), [{ type: "ack", lastSeq: 41n }]);
});

test("hostile input closes with a Close, never throws: garbage, oversized, compressed, text, wrong direction", async () => {
  const cases = [
    [(sock) => sock.deliver(new Uint8Array([0, 0, 0, 9, 0x99, 1, 2])), CloseCode.ProtocolError, /unknown message type/],
    [(sock) => sock.deliver(new Uint8Array([0x7f, 0xff, 0xff, 0xff])), CloseCode.FrameTooLarge, /exceeds the limit/],
    [
      (sock) => sock.deliver({ type: "published", seq: 1n, sender: peer(), groups: [1], payload: new Uint8Array([1, 2]), compression: { algorithm: 1, originalLen: 9 } }),
      CloseCode.ProtocolError,
      /compressed/,
    ],
    [(sock) => sock.deliverText("hello"), CloseCode.ProtocolError, /text WebSocket message/],
    [(sock) => sock.deliver({ type: "subscribe", commandId: 1n, groups: [1] }), CloseCode.ProtocolError, /from the server/],
    [(sock) => sock.deliver(welcome()), CloseCode.ProtocolError, /after Welcome/],
    [(sock) => sock.deliver({ type: "response", requestId: 1n, payload: new Uint8Array(0) }), CloseCode.ProtocolError, /out of order/],
  ];
  for (const [inject, code, reason] of cases) {
    const s = await ready({}, {});
    inject(s.socket);
    await settle();
    assert.equal(s.socket.last.type, "close", String(reason));
    assert.equal(s.socket.last.code, code, String(reason));
    assert.match(s.socket.last.reason, reason);
    assert.equal(s.client.state, "closed");
    assert.equal(s.of("closed").length, 1);
    // Whatever comes after is ignored.
    s.socket.deliver(new Uint8Array([1, 2, 3]));
  }
  // Before the Welcome, too: a bad Welcome version.
  const s = setup({ maxVersion: 2 });
  const opened = s.client.open();
  s.server.socket.open();
  await settle();
  assert.equal(s.server.socket.frames[0].maxVersion, 2);
  s.server.socket.deliver(welcome({ version: 3 }));
  await assert.rejects(opened, (e) => e.code === "ConnectionLost");
  assert.equal(s.server.socket.last.code, CloseCode.ProtocolError);
});

test("frames split across WebSocket messages, and many in one, are decoded alike", async () => {
  const s = await ready();
  const frames = [1n, 2n, 3n].map((seq) => encodeMessage({ type: "published", seq, sender: peer(), groups: [1], payload: new TextEncoder().encode(`m${seq}`), compression: null }));
  const all = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const f of frames) {
    all.set(f, at);
    at += f.length;
  }
  for (let i = 0; i < all.length; i += 5) s.socket.deliver(all.subarray(i, i + 5));
  assert.deepEqual(s.of("published").map((p) => p.text), ["m1", "m2", "m3"]);
});

test("reconnect with backoff, resume with the last seq; commands queue meanwhile", async () => {
  const s = await ready({ reconnect: { initialDelayMs: 100, maxDelayMs: 1000, jitter: 0.5 } });
  s.socket.deliver({ type: "published", seq: 7n, sender: peer(), groups: [1], payload: new Uint8Array(0), compression: null });
  const lost = s.client.request(ECHO, "in flight");
  await settle();
  s.socket.drop();
  await assert.rejects(lost, (e) => e.code === "ConnectionLost");
  assert.equal(s.client.state, "reconnecting");
  const r = s.of("reconnecting")[0];
  assert.equal(r.attempt, 1);
  assert.equal(r.delayMs, 125, "100 ms plus half of the 50 % jitter (random 0.5)");
  const queued = s.client.publish([1], "while away");
  await assert.rejects(s.client.request(ECHO, "x"), (e) => e.code === "NotReady");
  // Two failed attempts: the delay doubles.
  s.server.failNext = 1;
  await s.clock.advance(125);
  assert.equal(s.of("reconnecting")[1].delayMs, 250);
  await s.clock.advance(250);
  const again = s.server.socket;
  assert.notEqual(again, s.socket);
  again.drop();
  assert.equal(s.of("reconnecting")[2].delayMs, 500);
  await s.clock.advance(500);
  const third = s.server.socket;
  third.open();
  await settle();
  const hello = third.frames[0];
  assert.deepEqual([...hello.resume.token], [...TOKEN]);
  assert.equal(hello.resume.lastSeq, 7n);
  third.deliver(welcome({ resumed: true }));
  await settle();
  assert.equal(s.client.state, "ready");
  assert.equal(s.of("connected")[1].reconnected, true);
  assert.equal(s.of("connected")[1].resumed, true);
  assert.equal(s.client.lastSeq, 7n, "a resumed session keeps its numbering");
  assert.equal(payloadText(third.of("publish")[0].payload), "while away");
  third.deliver({ type: "pushTaken", commandId: 1n });
  assert.equal(await queued, 1);
});

test("reconnect gives up after maxAttempts; backoff is capped", async () => {
  const policy = { initialDelayMs: 100, maxDelayMs: 1000, jitter: 0 };
  assert.deepEqual([0, 1, 2, 3, 4, 30].map((f) => backoffDelay(policy, f)), [100, 200, 400, 800, 1000, 1000]);
  assert.equal(backoffDelay({ ...policy, jitter: 0.5 }, 0, () => 0.999), 150);
  const s = await ready({ reconnect: { initialDelayMs: 10, maxDelayMs: 40, jitter: 0, maxAttempts: 3 } });
  s.server.failNext = 100;
  s.socket.drop();
  await s.clock.advance(10_000);
  assert.deepEqual(s.of("reconnecting").map((r) => r.delayMs), [10, 20, 40]);
  assert.equal(s.client.state, "closed");
  assert.match(s.of("closed")[0].reason, /gave up after 3/);
  assert.equal(s.clock.pending().length, 0);
});

test("session lost after a reconnect: lastSeq restarts, subscriptions are restored", async () => {
  const s = await ready();
  const me = { kind: "peer", self: true, userId: "alice", address: "127.0.0.1", port: 1, serviceId: 1 };
  s.client.subscribe([3, 1]);
  s.socket.deliver({ type: "subscribed", seq: 1n, sender: me, groups: [3, 1] }, { type: "pushTaken", commandId: 1n });
  s.socket.drop(1001);
  await s.clock.advance(1000);
  const next = s.server.socket;
  next.open();
  await settle();
  assert.equal(next.frames[0].resume.lastSeq, 1n);
  next.deliver(welcome({ resumed: false, resumeToken: new Uint8Array(16).fill(9) }), { type: "sessionLost", reason: 2, text: "expired" });
  await settle();
  assert.equal(s.client.lastSeq, 0n);
  assert.deepEqual(s.of("sessionLost"), [{ reason: 2, reasonName: "Expired", text: "expired", resubscribing: [1, 3] }]);
  assert.deepEqual(next.of("subscribe").map((f) => f.groups), [[1, 3]]);
  // The next resume uses the new token.
  next.drop();
  await s.clock.advance(1000);
  s.server.socket.open();
  await settle();
  assert.deepEqual([...s.server.socket.frames[0].resume.token], new Array(16).fill(9));
});

test("a remote Close reconnects, a local close() does not", async () => {
  const s = await ready();
  s.socket.deliver({ type: "close", code: CloseCode.GoingAway, reason: "restart" });
  assert.equal(s.client.state, "reconnecting");
  assert.deepEqual(s.of("reconnecting")[0].reason, { source: "remote", code: 1, codeName: "GoingAway", reason: "restart", remote: true });
  await s.client.close("bye");
  assert.equal(s.client.state, "closed");
  assert.equal(s.of("closed")[0].source, "local");
  assert.equal(s.clock.pending().length, 0);
  await assert.rejects(s.client.publish([1], "x"), (e) => e.code === "Closed");

  const t = await ready();
  await t.client.close("bye");
  assert.deepEqual(t.socket.last, { type: "close", code: 0, reason: "bye" });
  assert.ok(t.socket.closed);
});

test("keepalive: Ping answered; Ping sent when idle; idle timeout closes and reconnects", async () => {
  const s = await ready({}, { pingIntervalMs: 1000 });
  s.socket.deliver({ type: "ping", nonce: 99n });
  await settle();
  assert.deepEqual(s.socket.last, { type: "pong", nonce: 99n });
  await s.clock.advance(1000);
  assert.deepEqual(s.socket.last, { type: "ping", nonce: 1n });
  s.socket.deliver({ type: "pong", nonce: 1n });
  await s.clock.advance(1000);
  assert.deepEqual(s.socket.last, { type: "ping", nonce: 2n });
  // Nothing received for 3 ping intervals (the default idle timeout).
  await s.clock.advance(2000);
  assert.deepEqual(s.socket.last, { type: "close", code: CloseCode.IdleTimeout, reason: "nothing received within the idle timeout" });
  assert.equal(s.client.state, "reconnecting");
});

test("version 4 keepalive: the page pings within a third of the server's idle timeout and waits three of its ping intervals", async () => {
  // Its own interval (15 s by default) is longer than the server's idle timeout / 3.
  const s = await ready({ keepalive: { idleTimeoutMs: 1000 } }, { version: 5, pingIntervalMs: 600, idleTimeoutMs: 900 });
  await s.clock.advance(300);
  assert.deepEqual(s.socket.last, { type: "ping", nonce: 1n });
  s.socket.deliver({ type: "pong", nonce: 1n });
  // Its own idle timeout (1 s) is shorter than three server ping intervals (1.8 s).
  await s.clock.advance(1500);
  assert.notEqual(s.socket.last.type, "close");
  await s.clock.advance(300);
  assert.deepEqual(s.socket.last, { type: "close", code: CloseCode.IdleTimeout, reason: "nothing received within the idle timeout" });
});

test("before version 4 the page keeps its own keepalive timing", async () => {
  const s = await ready({ keepalive: { pingIntervalMs: 500, idleTimeoutMs: 1000 } }, { version: 3, pingIntervalMs: 600, idleTimeoutMs: 0 });
  await s.clock.advance(500);
  assert.deepEqual(s.socket.last, { type: "ping", nonce: 1n });
  await s.clock.advance(500);
  assert.deepEqual(s.socket.last, { type: "close", code: CloseCode.IdleTimeout, reason: "nothing received within the idle timeout" });
});

test("keepalive acknowledges the rest of the events on a quiet link", async () => {
  const s = await ready({ keepalive: { pingIntervalMs: 500, idleTimeoutMs: 10_000 } });
  s.socket.deliver({ type: "published", seq: 3n, sender: peer(), groups: [1], payload: new Uint8Array(0), compression: null });
  await s.clock.advance(500);
  assert.deepEqual(s.socket.of("ack"), [{ type: "ack", lastSeq: 3n }]);
});

test("the handshake times out without a Welcome", async () => {
  const s = setup({ connectTimeoutMs: 2000 });
  const opened = s.client.open();
  const rejected = assert.rejects(opened, (e) => e.code === "ConnectionLost");
  s.server.socket.open();
  await s.clock.advance(2000);
  await rejected;
  assert.equal(s.server.socket.last.code, CloseCode.HandshakeTimeout);
});

test("bounded: outstanding requests and queued commands", async () => {
  const s = await ready({ maxOutstandingRequests: 2, queueWhileDisconnected: 1 });
  s.client.request(ECHO, "1").catch(() => {});
  s.client.request(ECHO, "2").catch(() => {});
  await assert.rejects(s.client.request(ECHO, "3"), (e) => e.code === "TooManyRequests");
  s.socket.drop();
  s.client.publish([1], "queued").catch(() => {});
  await assert.rejects(s.client.publish([1], "over"), (e) => e.code === "NotReady");
  await s.client.close();
});

test("hello-world helpers: say_hello arguments as hello.rs encodes them", async () => {
  assert.deepEqual([...sayHelloArgs("Jack", "Smith")], [0, 4, 74, 97, 99, 107, 0, 5, 83, 109, 105, 116, 104]);
  assert.deepEqual([...sleepArgs(1000)], [0, 0, 3, 232]);
  const s = await ready();
  const greeting = sayHello(s.client, "Jack", "Smith");
  await settle();
  const req = s.socket.of("request")[0];
  assert.equal(req.methodId, SAY_HELLO);
  s.socket.deliver({ type: "response", requestId: req.requestId, payload: new TextEncoder().encode("Hello Jack Smith") });
  assert.equal(await greeting, "Hello Jack Smith");
  // The encoded request decodes as the Rust codec's golden Request layout.
  assert.equal(decodeFrame(encodeMessage(req)).type, "request");
});

test("fire-and-forget push commands do not become unhandled rejections when the connection drops", async () => {
  const s = await ready({ reconnect: false });
  s.client.publish([1], "never confirmed");
  s.client.subscribe([2]);
  await settle();
  s.socket.drop();
  await settle();
  assert.equal(s.client.state, "closed");
  assert.equal(s.of("closed")[0].source, "transport");
});
