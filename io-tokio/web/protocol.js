// The pushwire wire format (protocol/PROTOCOL.md, versions 1 to 3): frames, every
// message, the streaming frame decoder and the code tables. No I/O and no state
// beyond the decoder's buffer, like the Rust crate `pushwire-protocol`.
//
// Representation: a message is a plain object `{ type: "publish", ... }` with the
// fields of PROTOCOL.md in camelCase. Every `u64` field (ids, sequence numbers,
// nonces, session ids) is a `bigint`, so no value is ever rounded; encoders also
// accept a non-negative safe-integer `number` there. Payloads, passwords and resume
// tokens are `Uint8Array`s; texts are strings.

/** Highest protocol version this module speaks. */
export const PROTOCOL_VERSION = 5;
/** Lowest protocol version this module speaks. */
export const MIN_PROTOCOL_VERSION = 1;

/** Default frame size limit (type byte plus body): 1 MiB. */
export const DEFAULT_MAX_FRAME_SIZE = 1024 * 1024;
/** Least frame limit an endpoint may configure. */
export const MIN_MAX_FRAME_SIZE = 4096;
/** Frame limit that no configuration may exceed: 16 MiB. */
export const HARD_MAX_FRAME_SIZE = 16 * 1024 * 1024;
/** Longest user id in characters (Unicode scalar values). */
export const MAX_USER_ID_CHARS = 255;
/** Longest user id in UTF-8 bytes. */
export const MAX_USER_ID_BYTES = 1020;
/** Longest password in bytes. */
export const MAX_PASSWORD_BYTES = 1024;
/** Longest reason, error message, description or SessionLost text, in bytes. */
export const MAX_TEXT_BYTES = 4096;
/** Most group ids in one `groups` list (the width of its count). */
export const MAX_GROUPS = 65535;
/** Version 5: largest cluster node id in a sender, in bytes. */
export const MAX_NODE_ID_BYTES = 64;
/** Bit of the type byte that marks a compressed payload (version 3). */
export const COMPRESSED_TYPE_BIT = 0x80;

/** Message type codes, by message name. */
export const MessageType = Object.freeze({
  hello: 0x01,
  welcome: 0x02,
  refused: 0x03,
  request: 0x10,
  response: 0x11,
  serverError: 0x12,
  batchBegin: 0x13,
  batchCommit: 0x14,
  cancel: 0x15,
  subscribe: 0x20,
  unsubscribe: 0x21,
  publish: 0x22,
  sendUserMessage: 0x23,
  listGroups: 0x24,
  subscribed: 0x30,
  unsubscribed: 0x31,
  published: 0x32,
  userMessage: 0x33,
  gap: 0x34,
  sessionLost: 0x35,
  pushRejected: 0x36,
  userMessageDelivered: 0x37,
  groupList: 0x38,
  pushTaken: 0x39,
  ping: 0x40,
  pong: 0x41,
  close: 0x42,
  ack: 0x43,
});

const TYPE_NAMES = new Map(Object.entries(MessageType).map(([name, code]) => [code, name]));

/** Which end may send each message: "client", "server" or "either". */
export const MessageRole = Object.freeze({
  hello: "client",
  welcome: "server",
  refused: "server",
  request: "client",
  response: "server",
  serverError: "server",
  batchBegin: "client",
  batchCommit: "client",
  cancel: "client",
  subscribe: "client",
  unsubscribe: "client",
  publish: "client",
  sendUserMessage: "client",
  listGroups: "client",
  subscribed: "server",
  unsubscribed: "server",
  published: "server",
  userMessage: "server",
  gap: "server",
  sessionLost: "server",
  pushRejected: "server",
  userMessageDelivered: "server",
  groupList: "server",
  pushTaken: "server",
  ping: "either",
  pong: "either",
  close: "either",
  ack: "client",
});

// The four messages whose payload may come compressed (section 3.1).
const COMPRESSIBLE = new Set(["publish", "sendUserMessage", "published", "userMessage"]);

/** Close codes (section 10.1). */
export const CloseCode = Object.freeze({
  Normal: 0,
  GoingAway: 1,
  ProtocolError: 2,
  FrameTooLarge: 3,
  IdleTimeout: 4,
  HelloTimeout: 5,
  SlowConsumer: 6,
  InternalError: 7,
  TooManyConnections: 8,
  ServerRejected: 9,
  Kicked: 10,
  HandshakeTimeout: 11,
});

/** Refusal codes of a Refused. */
export const RefuseCode = Object.freeze({
  BadCredentials: 1,
  UnknownService: 2,
  UnsupportedVersion: 3,
  TooManyConnections: 4,
  ResumeNotPermitted: 5,
  InvalidHello: 6,
  GoingAway: 7,
  NotPermitted: 8,
});

/** Rejection codes of a PushRejected. */
export const RejectCode = Object.freeze({
  UnknownGroups: 1,
  EmptyGroupList: 2,
  NotAuthorized: 3,
  PayloadTooLarge: 4,
  InvalidReceiver: 5,
  Busy: 6,
});

/** Reasons of a SessionLost. */
export const SessionLostReason = Object.freeze({
  Unknown: 1,
  Expired: 2,
});

/** Error codes of a ServerError; applications use values from 1000 up. */
export const ErrorCode = Object.freeze({
  UnknownMethod: 1,
  BadRequest: 2,
  Internal: 3,
  GoingAway: 4,
  NoService: 5,
  Cancelled: 6,
});

/**
 * The name of `value` in a code table, or `Other(n)` for a value the table does not
 * define: every code table is open (section 10.1), so an unknown code is not an error.
 */
export function codeName(table, value) {
  for (const [name, v] of Object.entries(table)) {
    if (v === value) return name;
  }
  return `Other(${value})`;
}

/**
 * A decode error (section 10.3). `kind` is one of FrameTooLarge, EmptyFrame,
 * UnknownMessageType, Truncated, InvalidUtf8, TooLong, InvalidValue, TrailingBytes:
 * the names of the Rust crate's `DecodeError` variants. Every one ends the connection
 * with a Close carrying `closeCode`.
 */
export class PushwireDecodeError extends Error {
  constructor(kind, message, { messageType = null, field = null } = {}) {
    super(message);
    this.name = "PushwireDecodeError";
    this.kind = kind;
    this.messageType = messageType;
    this.field = field;
    this.closeCode = kind === "FrameTooLarge" ? CloseCode.FrameTooLarge : CloseCode.ProtocolError;
  }
}

/** A message that cannot be encoded as given (a caller bug, never network input). */
export class PushwireEncodeError extends RangeError {
  constructor(message) {
    super(message);
    this.name = "PushwireEncodeError";
  }
}

const utf8Encoder = new TextEncoder();
// fatal: invalid UTF-8 is an error, not replacement characters. ignoreBOM: a leading
// U+FEFF is part of the text, as in the Rust decoder (the wire format has no BOM).
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const lenientUtf8 = new TextDecoder("utf-8", { ignoreBOM: true });

/** UTF-8 bytes of a string. */
export function utf8(text) {
  return utf8Encoder.encode(text);
}

/** A payload as text: UTF-8, invalid sequences shown as U+FFFD (payloads are opaque). */
export function payloadText(bytes) {
  return lenientUtf8.decode(bytes);
}

/** A payload given as a Uint8Array, an ArrayBuffer, a typed-array view or a string. */
export function toBytes(payload) {
  if (payload instanceof Uint8Array) return payload;
  if (typeof payload === "string") return utf8Encoder.encode(payload);
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  if (ArrayBuffer.isView(payload)) {
    return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  }
  if (payload === undefined || payload === null) return new Uint8Array(0);
  throw new PushwireEncodeError("a payload must be a Uint8Array, an ArrayBuffer or a string");
}

function countChars(text) {
  let n = 0;
  // for..of iterates code points, i.e. Unicode scalar values of well-formed strings.
  for (const _ of text) n++;
  return n;
}

// ---------------------------------------------------------------------------------
// IP addresses of the sender field, as strings.
// ---------------------------------------------------------------------------------

/** Formats 4 or 16 address bytes: dotted IPv4, or IPv6 as RFC 5952 (like Rust's Display). */
export function formatAddress(bytes) {
  if (bytes.length === 4) return Array.from(bytes).join(".");
  const words = [];
  for (let i = 0; i < 16; i += 2) words.push((bytes[i] << 8) | bytes[i + 1]);
  // IPv4-mapped (::ffff:a.b.c.d) is shown with a dotted tail, as Rust does.
  if (words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff) {
    return `::ffff:${Array.from(bytes.subarray(12)).join(".")}`;
  }
  // The longest run of at least two zero words becomes "::" (the first such run).
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (ws) => ws.map((w) => w.toString(16)).join(":");
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`;
}

/** Parses a dotted IPv4 or an IPv6 address into 4 or 16 bytes; null when invalid. */
export function parseAddress(text) {
  if (typeof text !== "string") return null;
  const v4 = parseIpv4(text);
  if (v4) return v4;
  return parseIpv6(text);
}

function parseIpv4(text) {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    if (!/^\d{1,3}$/.test(parts[i])) return null;
    const n = Number(parts[i]);
    if (n > 255) return null;
    out[i] = n;
  }
  return out;
}

function parseIpv6(text) {
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const words = (s) => {
    if (s === "") return [];
    const out = [];
    const parts = s.split(":");
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      if (i === parts.length - 1 && p.includes(".")) {
        const v4 = parseIpv4(p);
        if (!v4) return null;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(p)) {
        out.push(parseInt(p, 16));
      } else {
        return null;
      }
    }
    return out;
  };
  const head = words(halves[0]);
  const tail = halves.length === 2 ? words(halves[1]) : [];
  if (!head || !tail) return null;
  let all;
  if (halves.length === 2) {
    if (head.length + tail.length > 7) return null;
    all = [...head, ...new Array(8 - head.length - tail.length).fill(0), ...tail];
  } else {
    if (head.length !== 8) return null;
    all = head;
  }
  const out = new Uint8Array(16);
  all.forEach((w, i) => {
    out[2 * i] = w >> 8;
    out[2 * i + 1] = w & 0xff;
  });
  return out;
}

// ---------------------------------------------------------------------------------
// Encoding.
// ---------------------------------------------------------------------------------

const U64_MAX = (1n << 64n) - 1n;

class Writer {
  constructor(capacity = 64) {
    this.buf = new Uint8Array(capacity);
    this.view = new DataView(this.buf.buffer);
    this.len = 0;
  }

  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.buf.subarray(0, this.len));
    this.buf = bigger;
    this.view = new DataView(bigger.buffer);
  }

  u8(v, field) {
    checkUint(v, 0xff, field);
    this.reserve(1);
    this.view.setUint8(this.len, v);
    this.len += 1;
  }

  u16(v, field) {
    checkUint(v, 0xffff, field);
    this.reserve(2);
    this.view.setUint16(this.len, v);
    this.len += 2;
  }

  u32(v, field) {
    checkUint(v, 0xffffffff, field);
    this.reserve(4);
    this.view.setUint32(this.len, v);
    this.len += 4;
  }

  u64(v, field) {
    let big;
    if (typeof v === "bigint") big = v;
    else if (Number.isSafeInteger(v) && v >= 0) big = BigInt(v);
    else throw new PushwireEncodeError(`${field} must be a u64 (bigint or safe integer)`);
    if (big < 0n || big > U64_MAX) throw new PushwireEncodeError(`${field} is out of the u64 range`);
    this.reserve(8);
    this.view.setBigUint64(this.len, big);
    this.len += 8;
  }

  bool(v) {
    this.u8(v ? 1 : 0);
  }

  raw(bytes) {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }

  shortBytes(bytes, max, field) {
    if (bytes.length > max) {
      throw new PushwireEncodeError(`${field} has ${bytes.length} bytes; at most ${max} allowed`);
    }
    this.u16(bytes.length, field);
    this.raw(bytes);
  }

  text(s, max, field) {
    if (typeof s !== "string") throw new PushwireEncodeError(`${field} must be a string`);
    this.shortBytes(utf8Encoder.encode(s), max, field);
  }

  groups(groups, field = "groups") {
    if (!Array.isArray(groups)) throw new PushwireEncodeError(`${field} must be an array of group ids`);
    if (groups.length > MAX_GROUPS) {
      throw new PushwireEncodeError(`${field} has ${groups.length} ids; at most ${MAX_GROUPS} allowed`);
    }
    this.u16(groups.length, field);
    for (const g of groups) this.u32(g, "group id");
  }

  payload(m) {
    const payload = toBytes(m.payload);
    if (m.compression) {
      // Encoding a compressed message is only for tests of receivers (fake servers):
      // this module never compresses, so it never sends one itself.
      this.u8(m.compression.algorithm, "compression algorithm");
      this.u32(m.compression.originalLen, "originalLen");
    }
    this.raw(payload);
  }
}

function checkUint(v, max, field) {
  if (!Number.isInteger(v) || v < 0 || v > max) {
    throw new PushwireEncodeError(`${field ?? "field"} must be an integer in 0..=${max}, not ${v}`);
  }
}

function writeSender(w, sender) {
  if (!sender || sender.kind === "server") {
    w.u8(0);
    return;
  }
  const addr = sender.addressBytes ?? parseAddress(sender.address);
  if (!addr || (addr.length !== 4 && addr.length !== 16)) {
    throw new PushwireEncodeError(`sender address ${sender.address} is not an IP address`);
  }
  if (countChars(sender.userId) > MAX_USER_ID_CHARS) {
    throw new PushwireEncodeError(`sender user id over ${MAX_USER_ID_CHARS} characters`);
  }
  const hasNode = sender.node != null;
  w.u8(addr.length === 4 ? 4 : 6);
  w.u8((sender.self ? 0x01 : 0) | (hasNode ? 0x02 : 0));
  w.text(sender.userId, MAX_USER_ID_BYTES, "sender user_id");
  w.raw(addr);
  w.u16(sender.port, "sender port");
  w.u32(sender.serviceId, "sender service_id");
  if (hasNode) w.text(sender.node, MAX_NODE_ID_BYTES, "sender node");
}

const ENCODERS = {
  hello(w, m) {
    w.u16(m.minVersion, "minVersion");
    w.u16(m.maxVersion, "maxVersion");
    w.u32(m.serviceId, "serviceId");
    const o = m.options ?? {};
    w.u8((o.echo ? 0x01 : 0) | (o.compression ? 0x02 : 0), "options");
    if (countChars(m.userId) > MAX_USER_ID_CHARS) {
      throw new PushwireEncodeError(`user id over ${MAX_USER_ID_CHARS} characters`);
    }
    w.text(m.userId, MAX_USER_ID_BYTES, "userId");
    w.shortBytes(toBytes(m.password), MAX_PASSWORD_BYTES, "password");
    if (m.resume) {
      w.bool(true);
      if (!(m.resume.token instanceof Uint8Array) || m.resume.token.length !== 16) {
        throw new PushwireEncodeError("resume token must be 16 bytes");
      }
      w.raw(m.resume.token);
      w.u64(m.resume.lastSeq, "lastSeq");
    } else {
      w.bool(false);
    }
    // Version 4: the client's frame limit, when it speaks version 4 or later.
    if (m.maxVersion >= 4 && m.maxFrameSize != null) w.u32(m.maxFrameSize, "maxFrameSize");
  },
  welcome(w, m) {
    w.u16(m.version, "version");
    w.u64(m.sessionId, "sessionId");
    if (!(m.resumeToken instanceof Uint8Array) || m.resumeToken.length !== 16) {
      throw new PushwireEncodeError("resumeToken must be 16 bytes");
    }
    w.raw(m.resumeToken);
    w.bool(m.resumed);
    w.u32(m.maxFrameSize, "maxFrameSize");
    w.u32(m.pingIntervalMs, "pingIntervalMs");
    w.u32(m.sessionTimeoutMs, "sessionTimeoutMs");
    w.u32(m.replayCapacity, "replayCapacity");
    // Version 4: the server's idle timeout; earlier Welcomes end here.
    if (m.version >= 4) w.u32(m.idleTimeoutMs ?? 0, "idleTimeoutMs");
  },
  refused(w, m) {
    w.u16(m.code, "code");
    w.text(m.reason, MAX_TEXT_BYTES, "reason");
  },
  request(w, m) {
    w.u64(m.requestId, "requestId");
    w.u32(m.methodId, "methodId");
    w.payload(m);
  },
  response(w, m) {
    w.u64(m.requestId, "requestId");
    w.payload(m);
  },
  serverError(w, m) {
    w.u64(m.requestId, "requestId");
    w.u32(m.code, "code");
    w.text(m.message, MAX_TEXT_BYTES, "message");
  },
  batchBegin() {},
  batchCommit(w, m) {
    w.bool(m.serverBatching);
  },
  cancel(w, m) {
    w.u64(m.requestId, "requestId");
  },
  subscribe(w, m) {
    w.u64(m.commandId, "commandId");
    w.groups(m.groups);
  },
  unsubscribe(w, m) {
    w.u64(m.commandId, "commandId");
    w.bool(m.all);
    if (!m.all) w.groups(m.groups);
  },
  publish(w, m) {
    w.u64(m.commandId, "commandId");
    w.groups(m.groups);
    w.payload(m);
  },
  sendUserMessage(w, m) {
    w.u64(m.commandId, "commandId");
    w.text(m.receiver, MAX_USER_ID_BYTES, "receiver");
    w.payload(m);
  },
  listGroups(w, m) {
    w.u64(m.commandId, "commandId");
  },
  subscribed(w, m) {
    w.u64(m.seq, "seq");
    writeSender(w, m.sender);
    w.groups(m.groups);
  },
  unsubscribed(w, m) {
    ENCODERS.subscribed(w, m);
  },
  published(w, m) {
    w.u64(m.seq, "seq");
    writeSender(w, m.sender);
    w.groups(m.groups);
    w.payload(m);
  },
  userMessage(w, m) {
    w.u64(m.seq, "seq");
    writeSender(w, m.sender);
    w.payload(m);
  },
  gap(w, m) {
    w.u64(m.first, "first");
    w.u64(m.last, "last");
  },
  sessionLost(w, m) {
    w.u16(m.reason, "reason");
    w.text(m.text, MAX_TEXT_BYTES, "text");
  },
  pushRejected(w, m) {
    w.u64(m.commandId, "commandId");
    w.u16(m.code, "code");
    w.groups(m.groups);
    w.text(m.reason, MAX_TEXT_BYTES, "reason");
  },
  userMessageDelivered(w, m) {
    w.u64(m.commandId, "commandId");
    w.u32(m.connections, "connections");
  },
  groupList(w, m) {
    w.u64(m.commandId, "commandId");
    w.u32(m.groups.length, "count");
    for (const g of m.groups) {
      w.u32(g.id, "group id");
      w.text(g.description, MAX_TEXT_BYTES, "description");
    }
  },
  pushTaken(w, m) {
    w.u64(m.commandId, "commandId");
  },
  ping(w, m) {
    w.u64(m.nonce, "nonce");
  },
  pong(w, m) {
    w.u64(m.nonce, "nonce");
  },
  close(w, m) {
    w.u16(m.code, "code");
    w.text(m.reason ?? "", MAX_TEXT_BYTES, "reason");
  },
  ack(w, m) {
    w.u64(m.lastSeq, "lastSeq");
  },
};

/**
 * Encodes one message as a complete frame (length, type, body). Throws a
 * PushwireEncodeError for a field over its limit or of the wrong type: unlike the
 * Rust encoder, which clamps, this one refuses, so a caller's mistake is seen.
 */
export function encodeMessage(message) {
  const encode = ENCODERS[message?.type];
  if (!encode) throw new PushwireEncodeError(`unknown message type ${message?.type}`);
  let typeByte = MessageType[message.type];
  if (message.compression) {
    if (!COMPRESSIBLE.has(message.type)) {
      throw new PushwireEncodeError(`${message.type} has no compressed form`);
    }
    typeByte |= COMPRESSED_TYPE_BIT;
  }
  const w = new Writer();
  w.len = 5; // the header is written once the body's length is known
  w.reserve(0);
  encode(w, message);
  const frameSize = w.len - 4;
  w.view.setUint32(0, frameSize);
  w.view.setUint8(4, typeByte);
  return w.buf.slice(0, w.len);
}

/** The frame size (type byte plus body) of a message: what the Welcome's limit bounds. */
export function frameSize(message) {
  return encodeMessage(message).length - 4;
}

// ---------------------------------------------------------------------------------
// Decoding.
// ---------------------------------------------------------------------------------

class Reader {
  constructor(type, body, compressed) {
    this.type = type;
    this.body = body;
    this.view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    this.pos = 0;
    this.compressed = compressed;
  }

  fail(kind, field, detail) {
    return new PushwireDecodeError(kind, `${this.type}: ${detail}`, { messageType: this.type, field });
  }

  need(n, field) {
    if (this.body.length - this.pos < n) {
      throw this.fail("Truncated", field, `frame truncated: it ends inside ${field}`);
    }
  }

  u8(field) {
    this.need(1, field);
    return this.view.getUint8(this.pos++);
  }

  u16(field) {
    this.need(2, field);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }

  u32(field) {
    this.need(4, field);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  u64(field) {
    this.need(8, field);
    const v = this.view.getBigUint64(this.pos);
    this.pos += 8;
    return v;
  }

  bool(field) {
    const v = this.u8(field);
    if (v > 1) throw this.fail("InvalidValue", field, `${field} has invalid value ${v}`);
    return v === 1;
  }

  bytes(n, field) {
    this.need(n, field);
    // A copy: decoded values must not pin, or alias, the receive buffer.
    const out = this.body.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  shortBytes(field, max) {
    const len = this.u16(field);
    // The limit is checked before the bytes are read, as section 2 says.
    if (len > max) throw this.fail("TooLong", field, `${field} has length ${len}, at most ${max} allowed`);
    return this.bytes(len, field);
  }

  text(field, max) {
    const bytes = this.shortBytes(field, max);
    try {
      return strictUtf8.decode(bytes);
    } catch {
      throw this.fail("InvalidUtf8", field, `${field} is not valid UTF-8`);
    }
  }

  userId(field) {
    const id = this.text(field, MAX_USER_ID_BYTES);
    if (id.length > MAX_USER_ID_CHARS) {
      // A string has no more code points than UTF-16 units: only long ids need counting.
      const chars = countChars(id);
      if (chars > MAX_USER_ID_CHARS) {
        throw this.fail("TooLong", field, `${field} has length ${chars}, at most ${MAX_USER_ID_CHARS} allowed`);
      }
    }
    return id;
  }

  groups(field = "groups") {
    const count = this.u16(field);
    // The count must be backed by bytes in this frame before anything is allocated.
    this.need(count * 4, field);
    const out = new Array(count);
    for (let i = 0; i < count; i++) {
      out[i] = this.view.getUint32(this.pos);
      this.pos += 4;
    }
    return out;
  }

  sender() {
    const tag = this.u8("sender");
    if (tag === 0) return { kind: "server" };
    if (tag !== 4 && tag !== 6) throw this.fail("InvalidValue", "sender", `sender has invalid value ${tag}`);
    const flags = this.u8("sender flags");
    if (flags & ~0x03) throw this.fail("InvalidValue", "sender flags", `sender flags has invalid value ${flags}`);
    const userId = this.userId("sender user_id");
    const address = formatAddress(this.bytes(tag === 4 ? 4 : 16, "sender address"));
    const port = this.u16("sender port");
    const serviceId = this.u32("sender service_id");
    const sender = { kind: "peer", self: (flags & 0x01) !== 0, userId, address, port, serviceId };
    // Version 5: the cluster node the sender is on (present only when named).
    if (flags & 0x02) sender.node = this.text("sender node", MAX_NODE_ID_BYTES);
    return sender;
  }

  // The rest of the frame, after the compression header when the type byte marks one.
  payload(m) {
    if (this.compressed) {
      const algorithm = this.u8("compression algorithm");
      if (algorithm !== 1) {
        throw this.fail("InvalidValue", "compression algorithm", `compression algorithm has invalid value ${algorithm}`);
      }
      m.compression = { algorithm, originalLen: this.u32("original_len") };
    } else if (COMPRESSIBLE.has(this.type)) {
      m.compression = null;
    }
    m.payload = this.bytes(this.body.length - this.pos, "payload");
    return m;
  }

  finish() {
    const extra = this.body.length - this.pos;
    if (extra !== 0) throw this.fail("TrailingBytes", null, `${extra} unexpected bytes after the last field`);
  }
}

const DECODERS = {
  hello(r) {
    const minVersion = r.u16("min_version");
    const maxVersion = r.u16("max_version");
    if (minVersion > maxVersion) {
      throw r.fail("InvalidValue", "min_version", `min_version has invalid value ${minVersion}`);
    }
    const serviceId = r.u32("service_id");
    const bits = r.u8("options");
    const userId = r.userId("user_id");
    const password = r.shortBytes("password", MAX_PASSWORD_BYTES);
    let resume = null;
    if (r.bool("resume")) {
      resume = { token: r.bytes(16, "resume_token"), lastSeq: r.u64("last_seq") };
    }
    // Version 4's field, from a client of version 4 or later, when anything follows
    // the resume request (a started but cut field is Truncated).
    const maxFrameSize = maxVersion >= 4 && r.pos < r.body.length ? r.u32("max_frame_size") : null;
    // Extension bytes of later versions are ignored, in the Hello only (section 4).
    r.pos = r.body.length;
    return {
      minVersion,
      maxVersion,
      serviceId,
      options: { echo: (bits & 0x01) !== 0, compression: (bits & 0x02) !== 0 },
      userId,
      password,
      resume,
      maxFrameSize,
    };
  },
  welcome(r) {
    const version = r.u16("version");
    return {
      version,
      sessionId: r.u64("session_id"),
      resumeToken: r.bytes(16, "resume_token"),
      resumed: r.bool("resumed"),
      maxFrameSize: r.u32("max_frame_size"),
      pingIntervalMs: r.u32("ping_interval_ms"),
      sessionTimeoutMs: r.u32("session_timeout_ms"),
      replayCapacity: r.u32("replay_capacity"),
      // Version 4 appends the idle timeout; 0 (none announced) before.
      idleTimeoutMs: version >= 4 ? r.u32("idle_timeout_ms") : 0,
    };
  },
  refused: (r) => ({ code: r.u16("code"), reason: r.text("reason", MAX_TEXT_BYTES) }),
  request: (r) => r.payload({ requestId: r.u64("request_id"), methodId: r.u32("method_id") }),
  response: (r) => r.payload({ requestId: r.u64("request_id") }),
  serverError: (r) => ({
    requestId: r.u64("request_id"),
    code: r.u32("code"),
    message: r.text("message", MAX_TEXT_BYTES),
  }),
  batchBegin: () => ({}),
  batchCommit: (r) => ({ serverBatching: r.bool("server_batching") }),
  cancel: (r) => ({ requestId: r.u64("request_id") }),
  subscribe: (r) => ({ commandId: r.u64("command_id"), groups: r.groups() }),
  unsubscribe(r) {
    const commandId = r.u64("command_id");
    const all = r.bool("all");
    return { commandId, all, groups: all ? [] : r.groups() };
  },
  publish: (r) => r.payload({ commandId: r.u64("command_id"), groups: r.groups() }),
  sendUserMessage: (r) =>
    r.payload({ commandId: r.u64("command_id"), receiver: r.text("receiver", MAX_USER_ID_BYTES) }),
  listGroups: (r) => ({ commandId: r.u64("command_id") }),
  subscribed: (r) => ({ seq: r.u64("seq"), sender: r.sender(), groups: r.groups() }),
  unsubscribed: (r) => ({ seq: r.u64("seq"), sender: r.sender(), groups: r.groups() }),
  published: (r) => r.payload({ seq: r.u64("seq"), sender: r.sender(), groups: r.groups() }),
  userMessage: (r) => r.payload({ seq: r.u64("seq"), sender: r.sender() }),
  gap(r) {
    const first = r.u64("first");
    const last = r.u64("last");
    if (first === 0n) throw r.fail("InvalidValue", "first", "first has invalid value 0");
    if (last < first) throw r.fail("InvalidValue", "last", `last has invalid value ${last}`);
    return { first, last };
  },
  sessionLost: (r) => ({ reason: r.u16("reason"), text: r.text("text", MAX_TEXT_BYTES) }),
  pushRejected: (r) => ({
    commandId: r.u64("command_id"),
    code: r.u16("code"),
    groups: r.groups(),
    reason: r.text("reason", MAX_TEXT_BYTES),
  }),
  userMessageDelivered: (r) => ({ commandId: r.u64("command_id"), connections: r.u32("connections") }),
  groupList(r) {
    const commandId = r.u64("command_id");
    const count = r.u32("count");
    // Each entry takes at least 6 bytes: a larger count is refused before allocating.
    if (count > Math.floor((r.body.length - r.pos) / 6)) {
      throw r.fail("Truncated", "count", "frame truncated: it ends inside the group entries");
    }
    const groups = [];
    for (let i = 0; i < count; i++) {
      groups.push({ id: r.u32("group id"), description: r.text("description", MAX_TEXT_BYTES) });
    }
    return { commandId, groups };
  },
  pushTaken: (r) => ({ commandId: r.u64("command_id") }),
  ping: (r) => ({ nonce: r.u64("nonce") }),
  pong: (r) => ({ nonce: r.u64("nonce") }),
  close: (r) => ({ code: r.u16("code"), reason: r.text("reason", MAX_TEXT_BYTES) }),
  ack: (r) => ({ lastSeq: r.u64("last_seq") }),
};

/**
 * What a type byte names: `{ type, compressed }`, or null for a byte that is not in
 * the catalogue (including bit 0x80 on a message without a compressed form).
 */
export function typeFromByte(byte) {
  const plain = TYPE_NAMES.get(byte);
  if (plain) return { type: plain, compressed: false };
  if (byte & COMPRESSED_TYPE_BIT) {
    const name = TYPE_NAMES.get(byte & ~COMPRESSED_TYPE_BIT);
    if (name && COMPRESSIBLE.has(name)) return { type: name, compressed: true };
  }
  return null;
}

function unknownType(byte) {
  return new PushwireDecodeError("UnknownMessageType", `unknown message type 0x${byte.toString(16).padStart(2, "0")}`);
}

/**
 * Decodes the body of a frame whose type byte is `typeByte`. Throws a
 * PushwireDecodeError for bytes that are not a valid message.
 */
export function decodeBody(typeByte, body) {
  const t = typeFromByte(typeByte);
  if (!t) throw unknownType(typeByte);
  const r = new Reader(t.type, body, t.compressed);
  const fields = DECODERS[t.type](r);
  r.finish();
  return { type: t.type, ...fields };
}

/**
 * Decodes exactly one complete frame (tests and tools). Throws a PushwireDecodeError
 * when the bytes are not exactly one valid frame within `maxFrameSize`.
 */
export function decodeFrame(bytes, maxFrameSize = DEFAULT_MAX_FRAME_SIZE) {
  const decoder = new FrameDecoder(maxFrameSize);
  const { messages, error } = decoder.push(bytes);
  if (error) throw error;
  if (messages.length !== 1 || decoder.buffered !== 0) {
    throw new PushwireDecodeError("Truncated", `expected one complete frame, got ${messages.length}`);
  }
  return messages[0];
}

/**
 * Turns a byte stream, cut anywhere, into messages (section 3, "Receiving frames").
 * The length is checked against the limit as soon as its 4 bytes are in, before
 * anything is buffered for the body, and the type byte before the body arrives, so
 * the decoder never holds more than 4 + maxFrameSize bytes of one frame. After an
 * error the decoder is poisoned: the stream has lost its framing and nothing more is
 * read (the caller closes the connection).
 */
export class FrameDecoder {
  constructor(maxFrameSize = DEFAULT_MAX_FRAME_SIZE) {
    if (!Number.isInteger(maxFrameSize) || maxFrameSize < MIN_MAX_FRAME_SIZE || maxFrameSize > HARD_MAX_FRAME_SIZE) {
      throw new RangeError(`frame limit must be within ${MIN_MAX_FRAME_SIZE}..=${HARD_MAX_FRAME_SIZE}`);
    }
    this.maxFrameSize = maxFrameSize;
    this.header = new Uint8Array(5);
    this.headerLen = 0;
    this.body = null; // the frame being filled, once its header checked out
    this.bodyLen = 0;
    this.error = null;
  }

  /** Bytes held of a frame not complete yet. */
  get buffered() {
    return this.headerLen + this.bodyLen;
  }

  /**
   * Feeds received bytes. Returns the messages completed by them and, if the bytes
   * went wrong, the error (messages before the bad frame are still returned, in
   * order). Never throws on any input.
   */
  push(chunk) {
    const messages = [];
    if (this.error) return { messages, error: this.error };
    let bytes;
    try {
      bytes = toBytes(chunk);
    } catch {
      bytes = new Uint8Array(0);
    }
    let pos = 0;
    try {
      while (pos < bytes.length) {
        if (this.body === null) {
          // Header: the 4 length bytes, then the type byte, each checked on arrival.
          this.header[this.headerLen++] = bytes[pos++];
          if (this.headerLen === 4) {
            const length = new DataView(this.header.buffer).getUint32(0);
            if (length === 0) {
              throw new PushwireDecodeError("EmptyFrame", "empty frame: the length prefix is 0, but every frame carries a message type");
            }
            if (length > this.maxFrameSize) {
              throw new PushwireDecodeError("FrameTooLarge", `frame of ${length} bytes exceeds the limit of ${this.maxFrameSize} bytes`);
            }
          } else if (this.headerLen === 5) {
            const typeByte = this.header[4];
            if (!typeFromByte(typeByte)) throw unknownType(typeByte);
            const bodySize = new DataView(this.header.buffer).getUint32(0) - 1;
            if (bodySize <= bytes.length - pos) {
              // The whole body is in this chunk: decode from a view, no copy.
              const body = bytes.subarray(pos, pos + bodySize);
              pos += bodySize;
              this.headerLen = 0;
              messages.push(decodeBody(typeByte, body));
            } else {
              this.body = new Uint8Array(bodySize);
              this.bodyLen = 0;
            }
          }
        } else {
          const take = Math.min(this.body.length - this.bodyLen, bytes.length - pos);
          this.body.set(bytes.subarray(pos, pos + take), this.bodyLen);
          this.bodyLen += take;
          pos += take;
          if (this.bodyLen === this.body.length) {
            const body = this.body;
            this.body = null;
            this.bodyLen = 0;
            this.headerLen = 0;
            messages.push(decodeBody(this.header[4], body));
          }
        }
      }
    } catch (e) {
      this.error =
        e instanceof PushwireDecodeError ? e : new PushwireDecodeError("InvalidValue", `undecodable input: ${e?.message ?? e}`);
      this.body = null;
      this.bodyLen = 0;
      this.headerLen = 0;
    }
    return { messages, error: this.error };
  }
}

// ---------------------------------------------------------------------------------
// Helpers for tests and tools.
// ---------------------------------------------------------------------------------

/** Bytes as lowercase hex without separators. */
export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Hex (whitespace and `#` comments allowed, as in PROTOCOL.md's dumps) as bytes. */
export function fromHex(dump) {
  const digits = dump
    .split("\n")
    .map((line) => line.split("#")[0])
    .join("")
    .replace(/\s+/g, "");
  if (digits.length % 2 !== 0 || /[^0-9a-fA-F]/.test(digits)) throw new RangeError("not a hex dump");
  const out = new Uint8Array(digits.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(digits.slice(2 * i, 2 * i + 2), 16);
  return out;
}
