// The default transport against a real WebSocket implementation: the runtime's global
// WebSocket (Node 22, or Node 20 with --experimental-websocket) talking to a minimal
// WebSocket server on the loopback interface, which plays a pushwire server. Skipped
// where the runtime has no global WebSocket. Nothing leaves the machine.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { test } from "node:test";
import { connect } from "../client.js";
import { FrameDecoder, encodeMessage, payloadText } from "../protocol.js";
import { welcome } from "./util.js";

/** A WebSocket server (RFC 6455, just enough) whose binary messages carry pushwire frames. */
function pushwireOverWebSocket(onMessage) {
  const server = createServer((_, res) => res.writeHead(426).end());
  server.on("upgrade", (req, socket) => {
    const accept = createHash("sha1")
      .update(`${req.headers["sec-websocket-key"]}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest("base64");
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    const decoder = new FrameDecoder();
    const send = (...messages) => {
      const payload = Buffer.concat(messages.map((m) => encodeMessage(m)));
      const header = payload.length < 126 ? Buffer.from([0x82, payload.length]) : Buffer.from([0x82, 126, payload.length >> 8, payload.length & 0xff]);
      socket.write(Buffer.concat([header, payload]));
    };
    let pending = Buffer.alloc(0);
    socket.on("data", (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        if (pending.length < 2) return;
        const opcode = pending[0] & 0x0f;
        let len = pending[1] & 0x7f;
        let at = 2;
        if (len === 126) {
          if (pending.length < 4) return;
          len = pending.readUInt16BE(2);
          at = 4;
        } else if (len === 127) {
          if (pending.length < 10) return;
          len = Number(pending.readBigUInt64BE(2));
          at = 10;
        }
        if (pending.length < at + 4 + len) return;
        const mask = pending.subarray(at, at + 4);
        const data = Buffer.from(pending.subarray(at + 4, at + 4 + len));
        for (let i = 0; i < data.length; i++) data[i] ^= mask[i % 4];
        pending = pending.subarray(at + 4 + len);
        if (opcode === 0x8) {
          socket.end(Buffer.from([0x88, 0]));
          return;
        }
        if (opcode === 0x2) {
          const { messages, error } = decoder.push(data);
          if (error) throw error;
          for (const m of messages) onMessage(m, send);
        }
      }
    });
    socket.on("error", () => {});
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

test("a real WebSocket: Hello, Welcome, a request, a publication and its echo, close", { skip: typeof globalThis.WebSocket !== "function" && "no global WebSocket in this runtime" }, async () => {
  const seen = [];
  let closeSeen;
  const closeArrived = new Promise((resolve) => (closeSeen = resolve));
  const server = await pushwireOverWebSocket((m, send) => {
    seen.push(m.type);
    if (m.type === "close") closeSeen(m);
    if (m.type === "hello") send(welcome());
    if (m.type === "request") send({ type: "response", requestId: m.requestId, payload: m.payload });
    if (m.type === "publish") {
      const me = { kind: "peer", self: true, userId: "alice", address: "127.0.0.1", port: 1, serviceId: 1 };
      send({ type: "published", seq: 1n, sender: me, groups: m.groups, payload: m.payload, compression: null }, { type: "pushTaken", commandId: m.commandId });
    }
  });
  try {
    const { port } = server.address();
    const client = await connect({ url: `ws://127.0.0.1:${port}/pushwire`, insecure: true, userId: "alice", password: "pw" });
    assert.equal(payloadText(await client.request(3, "echo me")), "echo me");
    const echoed = new Promise((resolve) => client.on("published", resolve));
    assert.equal(await client.publish([1], "to group 1"), 1);
    assert.equal((await echoed).text, "to group 1");
    await client.close("done");
    assert.deepEqual(await closeArrived, { type: "close", code: 0, reason: "done" });
    assert.deepEqual(seen, ["hello", "request", "publish", "close"]);
  } finally {
    server.close();
    server.closeAllConnections?.();
  }
});
