// One run of the browser-path benchmark (issue 15), driven by benches/websocket_cost.sh:
// the JavaScript client of io-tokio/web/ (the one browsers load) with 1 publisher and
// N subscribers in group 1, M publications of S bytes, over one of two transports to
// the same `pushwire serve --web`:
//
//   --transport ws   Node's WebSocket (`node --experimental-websocket` on Node 20),
//                    wss:// — pushwire frames in WebSocket binary messages, as a browser;
//   --transport tls  a WebSocket-shaped adapter over node:tls carrying the raw frames —
//                    the native protocol (same frames, no WebSocket framing), so the
//                    same client code, the same driver and the same server port.
//
// The adapter gives client.js exactly what it uses of a WebSocket: a settable
// `binaryType`, `send(bytes)`, `close()`, and the `onopen`/`onmessage`/`onerror`/`onclose`
// properties. TLS records do not keep message boundaries, which is fine: the client's
// FrameDecoder reads the received chunks as one byte stream (frames may span chunks).
//
// Flow control, as `pushwire bench` (io-tokio/src/cli/bench.rs): before every 64th
// publication the publisher waits until no subscriber is more than W messages behind
// (W = 2 MiB / (S + 64), clamped to 256..65,536), and it awaits each publish() promise
// (resolved by the server's PushTaken) 2,048 publications later, which keeps it under
// the client's bound of 4,096 unconfirmed commands and far below the server's 8 MiB
// slow-consumer limit.
//
// Server cost: with --pid, /proc/PID/stat utime+stime (clock ticks, --hz per second)
// is read right before the first publication and right after the last delivery, so
// the connection set-up is not counted. Prints one line:
//   result transport=… size=… subs=… msgs=… delivered=… expected=… seconds=… rate=…
//     server_ticks=… server_us_per_msg=… client_us_per_msg=…
// (rate: deliveries counted at all subscribers per second, first publication to last
// delivery; *_us_per_msg: CPU microseconds per delivered message.)

import { readFileSync } from "node:fs";
import { connect as tlsConnect } from "node:tls";
import { fileURLToPath } from "node:url";
import { connect } from "../io-tokio/web/pushwire.js";

function args() {
  const o = { transport: "ws", subs: 1, msgs: 100000, size: 16, pid: 0, hz: 100, timeout: 120 };
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i += 2) {
    const key = a[i].replace(/^--/, "");
    if (!(key in o) && key !== "url") throw new Error(`unknown option ${a[i]}`);
    o[key] = key === "transport" || key === "url" ? a[i + 1] : Number(a[i + 1]);
  }
  if (!o.url) throw new Error("--url wss://HOST:PORT/ is required");
  if (o.transport !== "ws" && o.transport !== "tls") throw new Error("--transport is ws or tls");
  if (o.size < 1) throw new Error("--size must be at least 1");
  return o;
}

const CA = readFileSync(fileURLToPath(new URL("../certs/ca.cert.pem", import.meta.url)));

/** A WebSocket look-alike over a raw TLS stream: the native pushwire transport. */
class TlsTransport {
  constructor(url) {
    const u = new URL(url);
    this.binaryType = "arraybuffer"; // set by the client; chunks arrive as Buffers (views), which it takes
    this.onopen = null;
    this.onmessage = null;
    this.onerror = null;
    this.onclose = null;
    this.readyState = 0;
    const host = u.hostname.replace(/^\[|\]$/g, "");
    this.socket = tlsConnect({ host, port: Number(u.port || 443), ca: CA });
    this.socket.setNoDelay(true);
    this.socket.on("secureConnect", () => {
      this.readyState = 1;
      this.onopen?.({});
    });
    this.socket.on("data", (chunk) => this.onmessage?.({ data: chunk }));
    this.socket.on("error", (e) => {
      this.error = e;
      this.onerror?.({ error: e });
    });
    this.socket.on("close", () => {
      this.readyState = 3;
      this.onclose?.({ code: 1006, reason: this.error ? String(this.error.message) : "" });
    });
  }

  send(data) {
    this.socket.write(data);
  }

  close() {
    this.readyState = 2;
    this.socket.end();
  }
}

function ticks(pid) {
  if (!pid) return 0;
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which is in parentheses and may hold spaces).
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15 of stat)
}

async function main() {
  const o = args();
  const transport = o.transport === "tls" ? (url) => new TlsTransport(url) : undefined;
  const base = { url: o.url, password: "MyPassword", reconnect: false, ...(transport ? { transport } : {}) };

  const subs = [];
  const counts = new Array(o.subs).fill(0);
  let delivered = 0;
  let lastDelivery = 0;
  const expected = o.msgs * o.subs;
  let allDone;
  const done = new Promise((resolve) => {
    allDone = resolve;
  });
  let wake = null; // the publisher waiting on the window
  for (let i = 0; i < o.subs; i++) {
    const c = await connect({ ...base, userId: `sub${i}`, echo: false });
    c.on("published", () => {
      counts[i] += 1;
      delivered += 1;
      if (delivered === expected) {
        lastDelivery = performance.now();
        allDone();
      }
      if (wake && (counts[i] & 63) === 0) {
        const w = wake;
        wake = null;
        w();
      }
    });
    c.on("closed", (e) => {
      if (delivered < expected) {
        console.error(`subscriber ${i} closed early: ${e.source} ${e.codeName ?? ""} ${e.reason}`);
        process.exit(1);
      }
    });
    await c.subscribe([1]);
    subs.push(c);
  }
  const pub = await connect({ ...base, userId: "publisher", echo: false });
  pub.on("closed", (e) => {
    if (delivered < expected) {
      console.error(`publisher closed early: ${e.source} ${e.codeName ?? ""} ${e.reason}`);
      process.exit(1);
    }
  });

  const payload = new Uint8Array(o.size).fill(0x61);
  const window = Math.min(65536, Math.max(256, Math.floor((2 * 1024 * 1024) / (o.size + 64))));
  const inFlight = new Array(2048);
  const timer = setTimeout(() => {
    console.error(`timed out after ${o.timeout} s: ${delivered} of ${expected} delivered`);
    process.exit(5);
  }, o.timeout * 1000);

  const cpu0 = process.cpuUsage();
  const t0Ticks = ticks(o.pid);
  const t0 = performance.now();
  for (let k = 0; k < o.msgs; k++) {
    if ((k & 63) === 0) {
      while (k - Math.min(...counts) > window) {
        await new Promise((resolve) => {
          wake = resolve;
        });
      }
    }
    const slot = k % inFlight.length;
    if (inFlight[slot]) await inFlight[slot];
    inFlight[slot] = pub.publish([1], payload);
    // Let the client's microtask flush go out every so often (many publications in
    // one task leave as one write anyway).
    if ((k & 255) === 255) await new Promise((resolve) => setImmediate(resolve));
  }
  await done;
  const t1Ticks = ticks(o.pid);
  const cpu = process.cpuUsage(cpu0);
  clearTimeout(timer);
  const seconds = (lastDelivery - t0) / 1000;
  const serverTicks = t1Ticks - t0Ticks;
  const serverUs = (serverTicks / o.hz / delivered) * 1e6;
  const clientUs = (cpu.user + cpu.system) / delivered;
  console.log(
    `result transport=${o.transport} size=${o.size} subs=${o.subs} msgs=${o.msgs} delivered=${delivered} ` +
      `expected=${expected} seconds=${seconds.toFixed(3)} rate=${Math.round(delivered / seconds)} ` +
      `server_ticks=${serverTicks} server_us_per_msg=${serverUs.toFixed(3)} client_us_per_msg=${clientUs.toFixed(3)}`,
  );
  for (const c of [pub, ...subs]) await c.close("done");
  process.exit(0);
}

main().catch((e) => {
  console.error(e?.stack ?? e);
  process.exit(1);
});
