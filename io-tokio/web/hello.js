// The hello-world service of io-tokio/src/hello.rs (the tutorial's Figures 9 and 10),
// for pages that call it: method ids and argument encodings.

import { payloadText, utf8 } from "./protocol.js";

/** The service id of hello-world. */
export const HELLO_WORLD_SERVICE = 1;
/** `say_hello(first, last)`: "Hello first last"; publishes to groups 2 and 3 too. */
export const SAY_HELLO = 1;
/** `sleep(ms)`: answers after `ms` milliseconds (at most 60 s), or "Cancelled". */
export const SLEEP = 2;
/** `echo(bytes)`: answers its argument. */
export const ECHO = 3;

// Each text: a u16 byte length and UTF-8, cut at 65,535 bytes on a character boundary.
function putText(parts, text) {
  let bytes = utf8(String(text));
  if (bytes.length > 0xffff) {
    let end = 0xffff;
    while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--; // not inside a character
    bytes = bytes.subarray(0, end);
  }
  const len = new Uint8Array([bytes.length >> 8, bytes.length & 0xff]);
  parts.push(len, bytes);
}

/** Encodes say_hello's arguments: two texts, first and last name. */
export function sayHelloArgs(first, last) {
  const parts = [];
  putText(parts, first);
  putText(parts, last);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Encodes sleep's argument: a u32 of milliseconds. */
export function sleepArgs(ms) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, ms >>> 0);
  return out;
}

/** Calls say_hello on a connected client; resolves with the greeting text. */
export async function sayHello(client, first, last) {
  return payloadText(await client.request(SAY_HELLO, sayHelloArgs(first, last)));
}

/** Calls echo; resolves with the bytes sent. */
export function echo(client, payload) {
  return client.request(ECHO, payload);
}

/** Calls sleep; the returned promise can be passed to client.cancel(). */
export function sleep(client, ms) {
  return client.request(SLEEP, sleepArgs(ms));
}
