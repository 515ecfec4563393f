// End to end against the real server: `pushwire serve --web` (the binary named by
// PUSHWIRE_BIN), the library in Node over wss:// trusting the development CA, and
// native `pushwire pub` / `sub` / `send` processes on the same port. Skipped, with a
// message saying so, when PUSHWIRE_BIN is not set. From the repository root:
//
//   cargo build -p pushwire-tokio --bin pushwire
//   PUSHWIRE_BIN=$PWD/target/debug/pushwire npm --prefix io-tokio/web test
//
// (test/run.js points NODE_EXTRA_CA_CERTS at certs/ca.cert.pem unless it is set.)
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { test } from "node:test";
import { connect } from "../client.js";
import { sayHello } from "../hello.js";

const BIN = process.env.PUSHWIRE_BIN;
const skip = BIN ? false : "PUSHWIRE_BIN is not set: build the pushwire binary and set it to run this test";
const PASSWORD = "MyPassword"; // the development login of `serve` without --users

/** A child process whose stdout lines can be awaited; killed by `stop`. */
function start(args) {
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
  const lines = [];
  const waiters = [];
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  createInterface({ input: child.stdout }).on("line", (line) => {
    lines.push(line);
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    child,
    exited,
    stderr: () => stderr,
    /** The first line (from now on or already seen) matching `pick`; fails after 10 s. */
    async line(pick, what) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const i = lines.findIndex(pick);
        if (i >= 0) return lines.splice(i, 1)[0];
        if (Date.now() > deadline) throw new Error(`no ${what}; lines ${JSON.stringify(lines)}; stderr ${stderr}`);
        await new Promise((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 200);
        });
      }
    },
    stop() {
      child.kill();
    },
  };
}

test("a Node client on wss:// and native CLI clients talk through pushwire serve --web", { skip, timeout: 60_000 }, async () => {
  const server = start(["serve", "--listen", "127.0.0.1:0", "--web"]);
  let client = null;
  try {
    const listening = await server.line((l) => l.startsWith("listening on "), "listening line");
    const addr = listening.slice("listening on ".length);
    const web = await server.line((l) => l.startsWith("web chat on "), "web chat line");
    const url = web.slice("web chat on ".length);
    assert.match(url, /^https:\/\/localhost:\d+\/$/);

    // The chat page and the library are served on the same port.
    const page = await fetch(url).catch((e) => {
      throw new Error(`fetch ${url}: ${e.cause?.message ?? e.message}`);
    });
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<title>pushwire chat<\/title>/);
    const lib = await fetch(new URL("/pushwire.js", url));
    assert.equal(lib.status, 200);
    assert.match(lib.headers.get("content-type"), /javascript/);

    client = await connect({ url: url.replace(/^https/, "wss"), userId: "webby", password: PASSWORD, reconnect: false });
    const received = [];
    const waiters = [];
    for (const type of ["published", "userMessage", "subscribed"]) {
      client.on(type, (e) => {
        received.push({ type, e });
        for (const w of waiters.splice(0)) w();
      });
    }
    const event = async (pick, what) => {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const found = received.find(({ type, e }) => pick(type, e));
        if (found) return found.e;
        if (Date.now() > deadline) throw new Error(`no ${what}: ${JSON.stringify(received.map((e) => e.type))}`);
        await new Promise((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 200);
        });
      }
    };
    await client.subscribe([1]);

    // browser → native: a sub on group 1 gets the browser's publication.
    const sub = start(["sub", "1", "--count", "1", "--timeout", "15", "--json", "--user", "bob", "--server", addr]);
    const joined = JSON.parse(await sub.line((l) => l.includes('"subscribe"'), "sub's join"));
    assert.equal(joined.sender.user_id, "bob");
    // The browser sees bob join (presence).
    await event((type, e) => type === "subscribed" && e.sender.userId === "bob", "bob's Subscribed");
    await client.publish([1], "hello from the browser");
    const message = JSON.parse(await sub.line((l) => l.includes('"publish"'), "sub's publication"));
    assert.equal(message.message, "hello from the browser");
    assert.equal(message.sender.user_id, "webby");
    assert.equal(await sub.exited, 0, sub.stderr());

    // native → browser: a publication and a user message from CLI processes.
    const pub = start(["pub", "1", "--message", "hello from native", "--user", "alice", "--server", addr]);
    assert.equal(await pub.exited, 0, pub.stderr());
    const published = await event((type, e) => type === "published" && !e.sender.self, "the native publication");
    assert.equal(published.text, "hello from native");
    assert.equal(published.sender.userId, "alice");
    const send = start(["send", "WEBBY", "--message", "psst", "--user", "alice", "--server", addr]);
    assert.equal(await send.exited, 0, send.stderr());
    const dm = await event((type, e) => type === "userMessage" && !e.sender.self, "the user message");
    assert.equal(dm.text, "psst");

    // RPC through the WebSocket.
    assert.equal(await sayHello(client, "Jack", "Smith"), "Hello Jack Smith");
  } finally {
    client?.close("done");
    server.stop();
    await server.exited;
  }
});
