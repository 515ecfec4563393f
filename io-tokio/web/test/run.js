// `npm test`: runs every test file under node --test. On a runtime without a global
// WebSocket whose node still has the flag that enables it (Node 20 and 21), the flag
// is passed, so the real-WebSocket test (test/websocket.test.js) runs there too.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
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
const result = spawnSync(process.execPath, [...flags, "--test", ...files], { stdio: "inherit" });
process.exit(result.status ?? 1);
