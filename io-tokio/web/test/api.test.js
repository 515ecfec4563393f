// The TypeScript declarations name exactly what the module exports.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import * as pushwire from "../pushwire.js";

test("pushwire.d.ts declares every export of pushwire.js, and nothing else", () => {
  const dts = readFileSync(new URL("../pushwire.d.ts", import.meta.url), "utf8");
  const declared = [...dts.matchAll(/^export (?:const|function|class) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual([...new Set(declared)].sort(), Object.keys(pushwire).sort());
});
