// `npm test`: runs every test file under node --test. On a runtime without a global
// WebSocket whose node still has the flag that enables it (Node 20 and 21), the flag
// is passed, so the real-WebSocket test (test/websocket.test.js) runs there too.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const flags = [];
if (typeof globalThis.WebSocket !== "function" && process.allowedNodeEnvironmentFlags.has("--experimental-websocket")) {
  flags.push("--experimental-websocket");
}
// The test files by name: given a folder, node --test would also run the helpers
// (and this runner) as tests.
const dir = fileURLToPath(new URL(".", import.meta.url));
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".test.js"))
  .sort()
  .map((f) => join(dir, f));
// test/server.test.js (with PUSHWIRE_BIN) talks wss:// to `pushwire serve` with the
// development certificate: the child trusts its CA. NODE_EXTRA_CA_CERTS names one
// file and is read only at start, so a bundle of the file already named there (if
// any) and the development CA is written for the child.
const env = { ...process.env };
if (env.PUSHWIRE_BIN) {
  const devCa = fileURLToPath(new URL("../../../certs/ca.cert.pem", import.meta.url));
  let bundle = readFileSync(devCa, "utf8");
  if (env.NODE_EXTRA_CA_CERTS && existsSync(env.NODE_EXTRA_CA_CERTS)) {
    bundle = `${readFileSync(env.NODE_EXTRA_CA_CERTS, "utf8")}\n${bundle}`;
  }
  const path = join(mkdtempSync(join(tmpdir(), "pushwire-ca-")), "ca-bundle.pem");
  writeFileSync(path, bundle);
  env.NODE_EXTRA_CA_CERTS = path;
}
const result = spawnSync(process.execPath, [...flags, "--test", ...files], { stdio: "inherit", env });
process.exit(result.status ?? 1);
