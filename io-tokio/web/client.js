// The pushwire client for browsers (and Node 22's global WebSocket): pushwire's own
// frames in binary WebSocket messages. It follows the Rust client (engine/src/client.rs
// and io-tokio/src/client/): results in request order, batching, push events with
// sequence numbers, Ack, resume after a reconnect with backoff, resubscription after
// a lost session, keep-alive.
//
// Nothing that arrives from the network throws out of this module: a bad frame ends
// the connection with a Close ProtocolError (or FrameTooLarge) and a `closed` event.

import {
  CloseCode,
  DEFAULT_MAX_FRAME_SIZE,
  ErrorCode,
  FrameDecoder,
  HARD_MAX_FRAME_SIZE,
  MAX_PASSWORD_BYTES,
  MAX_USER_ID_BYTES,
  MAX_USER_ID_CHARS,
  MIN_MAX_FRAME_SIZE,
  MIN_PROTOCOL_VERSION,
  MessageRole,
  PROTOCOL_VERSION,
  RefuseCode,
  RejectCode,
  SessionLostReason,
  codeName,
  encodeMessage,
  payloadText,
  toBytes,
  utf8,
} from "./protocol.js";

/** Acknowledge once this many push events are unacknowledged (as the Rust client). */
const ACK_EVERY = 32n;

/**
 * An error of a client operation. `code` says which:
 * - "NotReady": not connected (yet, or while reconnecting);
 * - "Closed": the client is closed;
 * - "TooLarge": the frame would exceed the server's frame limit;
 * - "TooManyRequests" / "TooManyCommands": a bound on what is outstanding;
 * - "InvalidArgument": a bad argument (group ids, user id, payload type, ...);
 * - "BatchOpen" / "NoBatch": batching misuse;
 * - "ConnectionLost": the connection ended before the answer (`closeReason` says how);
 * - "Cancelled": the request was cancelled;
 * - "BatchAborted": the request or command was in an aborted batch;
 * - "ServerError": the server answered the request with a ServerError
 *   (`serverCode`, `serverCodeName`, `message`);
 * - "Rejected": the server refused the command with PushRejected
 *   (`rejectCode`, `rejectCodeName`, `groups`, `message`);
 * - "Refused": the server refused the Hello (`refuseCode`, `refuseCodeName`).
 */
export class PushwireError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "PushwireError";
    this.code = code;
    Object.assign(this, extra);
  }
}

function invalid(message) {
  return new PushwireError("InvalidArgument", message);
}

function checkGroups(groups, { allowEmpty = false } = {}) {
  if (!Array.isArray(groups)) throw invalid("groups must be an array of group ids");
  if (!allowEmpty && groups.length === 0) throw invalid("the group list is empty");
  if (groups.length > 65535) throw invalid("at most 65535 group ids per command");
  for (const g of groups) {
    if (!Number.isInteger(g) || g < 0 || g > 0xffffffff) throw invalid(`group id ${g} is not a u32`);
  }
  return groups.slice();
}

/** A function that returns a promise rejected with what `fn` throws (API methods never throw). */
function settle(fn) {
  try {
    return Promise.resolve(fn());
  } catch (e) {
    return Promise.reject(e);
  }
}

function defer() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const systemTimers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle),
};

function defaultTransport(url) {
  if (typeof globalThis.WebSocket !== "function") {
    throw new PushwireError("NotReady", "no WebSocket in this environment: pass options.transport");
  }
  return new globalThis.WebSocket(url);
}

/** Normalizes the reconnect option: false/null = never; true/undefined = defaults. */
function reconnectPolicy(option) {
  if (option === false || option === null) return null;
  const o = option === true || option === undefined ? {} : option;
  return {
    initialDelayMs: o.initialDelayMs ?? 100,
    maxDelayMs: o.maxDelayMs ?? 5000,
    // Up to this fraction of the delay is added at random (the Rust client: 0.5), so
    // clients do not stampede a restarted server.
    jitter: o.jitter ?? 0.5,
    // A bound, so a page does not retry forever against a server that is gone.
    maxAttempts: o.maxAttempts ?? 20,
  };
}

/** The delay before reconnect attempt `failures + 1` (doubling, capped, jittered). */
export function backoffDelay(policy, failures, random = Math.random) {
  const base = Math.min(policy.initialDelayMs * 2 ** Math.min(failures, 16), policy.maxDelayMs);
  return Math.round(base + base * policy.jitter * random());
}

/**
 * A pushwire client. Create it with {@link connect} (which waits for the first
 * Welcome) or `new PushwireClient(options)` followed by `client.open()`.
 *
 * Events (`client.on(type, handler)` or `addEventListener(type, e => e.detail)`):
 * connected, reconnecting, closed, published, userMessage, subscribed, unsubscribed,
 * gap, sessionLost, rejected.
 */
export class PushwireClient extends EventTarget {
  constructor(options = {}) {
    super();
    const o = options;
    if (typeof o.url !== "string") throw invalid("options.url is required");
    if (/^ws:/i.test(o.url) && !o.insecure) {
      // Plaintext is an explicit opt-in of both ends, never a fallback (PROTOCOL.md §1).
      throw invalid("a ws:// URL sends the password in the clear: use wss:// or set insecure: true");
    }
    if (typeof o.userId !== "string" || o.userId.length === 0) throw invalid("options.userId is required");
    if ([...o.userId].length > MAX_USER_ID_CHARS || utf8(o.userId).length > MAX_USER_ID_BYTES) {
      throw invalid(`the user id must have at most ${MAX_USER_ID_CHARS} characters`);
    }
    const password = toBytes(o.password ?? "");
    if (password.length > MAX_PASSWORD_BYTES) throw invalid(`the password has more than ${MAX_PASSWORD_BYTES} bytes`);
    const maxFrameSize = o.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
    if (!Number.isInteger(maxFrameSize) || maxFrameSize < MIN_MAX_FRAME_SIZE || maxFrameSize > HARD_MAX_FRAME_SIZE) {
      throw invalid(`maxFrameSize must be within ${MIN_MAX_FRAME_SIZE}..=${HARD_MAX_FRAME_SIZE}`);
    }
    const maxVersion = o.maxVersion ?? PROTOCOL_VERSION;
    if (!Number.isInteger(maxVersion) || maxVersion < MIN_PROTOCOL_VERSION || maxVersion > PROTOCOL_VERSION) {
      throw invalid(`maxVersion must be within ${MIN_PROTOCOL_VERSION}..=${PROTOCOL_VERSION}`);
    }
    const serviceId = o.serviceId ?? 1;
    if (!Number.isInteger(serviceId) || serviceId < 0 || serviceId > 0xffffffff) throw invalid("serviceId must be a u32");
    this._options = {
      url: o.url,
      userId: o.userId,
      password,
      serviceId,
      echo: Boolean(o.echo ?? true),
      maxVersion,
      maxFrameSize,
      connectTimeoutMs: o.connectTimeoutMs ?? 10000,
      keepalive: { pingIntervalMs: o.keepalive?.pingIntervalMs, idleTimeoutMs: o.keepalive?.idleTimeoutMs },
      maxOutstandingRequests: o.maxOutstandingRequests ?? 4096,
      maxPendingCommands: o.maxPendingCommands ?? 4096,
      queueWhileDisconnected: o.queueWhileDisconnected ?? 1024,
      restoreSubscriptions: o.restoreSubscriptions ?? true,
    };
    this._reconnect = reconnectPolicy(o.reconnect);
    this._transport = o.transport ?? defaultTransport;
    this._timers = o.timers ?? systemTimers;
    this._random = o.random ?? Math.random;

    // Session state: lives across reconnects.
    this._state = "idle"; // idle | connecting | ready | reconnecting | closed
    this._resumeToken = null;
    this._lastSeq = 0n; // highest push-event seq received, or covered by a Gap
    this._acked = 0n;
    this._groups = new Set(); // groups the server confirmed (self-flagged presence)
    this._queued = []; // push commands accepted while reconnecting
    this._welcome = null;
    this._conn = null; // the current connection's state
    this._failures = 0;
    this._retryTimer = null;
    this._firstConnect = null; // the deferred of open()
  }

  // ---------------------------------------------------------------- public API

  /** "idle", "connecting", "ready", "reconnecting" or "closed". */
  get state() {
    return this._state;
  }

  /** The last Welcome (version, sessionId, maxFrameSize, ...), or null. */
  get welcome() {
    return this._welcome;
  }

  /** The negotiated protocol version, or 0 before the first Welcome. */
  get version() {
    return this._welcome?.version ?? 0;
  }

  /** Highest push-event sequence number received in this session (a bigint). */
  get lastSeq() {
    return this._lastSeq;
  }

  /** Groups this connection is in, as the server confirmed them. */
  get groups() {
    return [...this._groups].sort((a, b) => a - b);
  }

  /** Requests sent or batched whose result has not arrived. */
  get outstandingRequests() {
    const c = this._conn;
    if (!c) return 0;
    return c.requests.length + (c.batch ? c.batch.filter((e) => e.request).length : 0);
  }

  /**
   * Registers `handler(detail)` for events of `type`; returns a function that
   * removes it.
   */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /** Opens the first connection; resolves with the client after the Welcome. */
  open() {
    if (this._firstConnect) return this._firstConnect.promise;
    this._firstConnect = defer();
    this._state = "connecting";
    this._startConnection();
    return this._firstConnect.promise;
  }

  /** Calls method `methodId` of the service; resolves with the result's bytes. */
  request(methodId, payload) {
    let entry = null;
    const promise = settle(() => {
      if (!Number.isInteger(methodId) || methodId < 0 || methodId > 0xffffffff) {
        throw invalid("methodId must be a u32");
      }
      const c = this._readyConnection();
      if (this.outstandingRequests >= this._options.maxOutstandingRequests) {
        throw new PushwireError("TooManyRequests", `${this.outstandingRequests} requests are already outstanding`);
      }
      const requestId = ++c.nextRequestId;
      const frame = this._frame(c, { type: "request", requestId, methodId, payload: this._payload(payload) });
      const d = defer();
      entry = { id: requestId, deferred: d, ended: false, cancelSent: false, conn: c };
      if (c.batch) {
        c.batch.push({ frame, request: entry });
      } else {
        c.requests.push(entry);
        this._send(c, frame);
      }
      return d.promise;
    });
    // The promise names its request, for cancel(); its then() results do not.
    Object.defineProperty(promise, "requestId", { get: () => entry?.id ?? null });
    Object.defineProperty(promise, "_entry", { value: () => entry });
    return promise;
  }

  /**
   * Cancels a request (the promise request() returned). Returns what it did:
   * "removedFromBatch", "sentToServer" (version 3: the request ends with its result
   * or a "Cancelled" error, from the server), "endedLocally" (older servers: it
   * rejects now, its result is dropped when it comes), "alreadySent" or
   * "notOutstanding". Either way the request's promise settles exactly once.
   */
  cancel(request) {
    const entry = typeof request?._entry === "function" ? request._entry() : null;
    const c = this._conn;
    if (!entry || !c || entry.conn !== c || entry.ended) return "notOutstanding";
    if (c.batch) {
      const index = c.batch.findIndex((e) => e.request === entry);
      if (index >= 0) {
        c.batch.splice(index, 1);
        entry.ended = true;
        entry.deferred.reject(new PushwireError("Cancelled", "cancelled before the batch was sent"));
        return "removedFromBatch";
      }
    }
    if (!c.requests.includes(entry)) return "notOutstanding";
    if (c.welcome.version >= 3) {
      if (entry.cancelSent) return "alreadySent";
      entry.cancelSent = true;
      this._send(c, encodeMessage({ type: "cancel", requestId: entry.id }));
      return "sentToServer";
    }
    // The server cannot be told: end it now; it keeps its place in the order.
    entry.ended = true;
    entry.deferred.reject(new PushwireError("Cancelled", "cancelled (the server cannot be told before version 3)"));
    return "endedLocally";
  }

  /** Joins groups. Resolves with the command id once the server ran it (version 2+). */
  subscribe(groups) {
    return settle(() => this._command({ type: "subscribe", groups: checkGroups(groups) }, "taken"));
  }

  /** Leaves groups; with no argument (or "all"), every group. */
  unsubscribe(groups = "all") {
    return settle(() => {
      const message =
        groups === "all"
          ? { type: "unsubscribe", all: true, groups: [] }
          : { type: "unsubscribe", all: false, groups: checkGroups(groups) };
      return this._command(message, "taken");
    });
  }

  /** Publishes a payload (bytes, or a string sent as UTF-8) to groups. */
  publish(groups, payload) {
    return settle(() =>
      this._command(
        { type: "publish", groups: checkGroups(groups), payload: this._payload(payload), compression: null },
        "taken",
      ),
    );
  }

  /** Sends a payload to every connection of one user; resolves with how many got it. */
  sendUserMessage(userId, payload) {
    return settle(() => {
      if (typeof userId !== "string") throw invalid("the receiver must be a user id string");
      if (utf8(userId).length > MAX_USER_ID_BYTES) throw invalid("the receiver is too long");
      return this._command(
        { type: "sendUserMessage", receiver: userId, payload: this._payload(payload), compression: null },
        "delivered",
      );
    });
  }

  /** The server's chat groups: resolves with `[{ id, description }]` in id order. */
  listGroups() {
    return settle(() => this._command({ type: "listGroups" }, "groups"));
  }

  /** Holds requests and push commands until commitBatching(). Throws on misuse. */
  startBatching() {
    const c = this._readyConnection();
    if (c.batch) throw new PushwireError("BatchOpen", "a batch is already open");
    c.batch = [];
  }

  /** Whether a batch is open. */
  get batching() {
    return Boolean(this._conn?.batch);
  }

  /**
   * Sends the batch in one WebSocket message. With `serverBatching` the server
   * returns the batch's results together. Throws on misuse.
   */
  commitBatching(serverBatching = false) {
    const c = this._readyConnection();
    if (!c.batch) throw new PushwireError("NoBatch", "no batch is open");
    const batch = c.batch;
    c.batch = null;
    const frames = [encodeMessage({ type: "batchBegin" })];
    for (const e of batch) {
      frames.push(e.frame);
      if (e.request) c.requests.push(e.request);
      if (e.command) this._sentCommand(c, e.command);
    }
    frames.push(encodeMessage({ type: "batchCommit", serverBatching: Boolean(serverBatching) }));
    this._send(c, ...frames);
  }

  /** Drops the open batch: its requests and commands reject with "BatchAborted". */
  abortBatching() {
    const c = this._conn;
    if (!c?.batch) throw new PushwireError("NoBatch", "no batch is open");
    const batch = c.batch;
    c.batch = null;
    for (const e of batch) {
      const error = new PushwireError("BatchAborted", "the batch was aborted");
      if (e.request) {
        e.request.ended = true;
        e.request.deferred.reject(error);
      }
      if (e.command) e.command.deferred.reject(error);
    }
  }

  /** Closes the client (Close Normal) and stops reconnecting. */
  close(reason = "") {
    if (this._state === "closed") return Promise.resolve();
    const c = this._conn;
    const info = { source: "local", code: CloseCode.Normal, codeName: "Normal", reason: String(reason), remote: false };
    if (c && !c.finished) {
      this._sendClose(c, CloseCode.Normal, String(reason));
      this._endConnection(c, info, { reconnect: false });
    } else {
      this._finish(info);
    }
    return Promise.resolve();
  }

  // ---------------------------------------------------------------- internals

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _readyConnection() {
    if (this._state === "closed") throw new PushwireError("Closed", "the client is closed");
    const c = this._conn;
    if (this._state !== "ready" || !c || c.state !== "ready") {
      throw new PushwireError("NotReady", "the connection is not ready");
    }
    return c;
  }

  _payload(payload) {
    try {
      return toBytes(payload);
    } catch (e) {
      throw invalid(e.message);
    }
  }

  // Encodes a message for connection `c`, refusing one over the server's frame limit.
  _frame(c, message) {
    let frame;
    try {
      frame = encodeMessage(message);
    } catch (e) {
      throw invalid(e.message);
    }
    const size = frame.length - 4;
    if (size > c.welcome.maxFrameSize) {
      throw new PushwireError(
        "TooLarge",
        `message of ${size} bytes exceeds the server's frame limit of ${c.welcome.maxFrameSize} bytes`,
      );
    }
    return frame;
  }

  // A push command: sent now, held in the batch, or queued while reconnecting.
  // `answer` says what settles it: "taken" (PushTaken; at once before version 2),
  // "delivered" (UserMessageDelivered) or "groups" (GroupList).
  _command(message, answer) {
    if (this._state === "closed") throw new PushwireError("Closed", "the client is closed");
    const d = defer();
    if (answer === "taken") {
      // Subscribe, unsubscribe and publish are often fire-and-forget: a lost
      // connection (reported by `reconnecting` / `closed`) must not also raise an
      // unhandled rejection for each of them. Awaiting callers still see the error.
      d.promise.catch(() => {});
    }
    const command = { message, answer, deferred: d, id: 0 };
    if (this._state === "reconnecting" || this._state === "connecting") {
      if (this._queued.length >= this._options.queueWhileDisconnected) {
        throw new PushwireError("NotReady", "the connection is down and the queue of commands is full");
      }
      this._queued.push(command);
      return d.promise;
    }
    const c = this._readyConnection();
    this._issue(c, command);
    return d.promise;
  }

  _issue(c, command) {
    if (c.pending.size + c.untaken.length >= this._options.maxPendingCommands) {
      throw new PushwireError("TooManyCommands", "too many push commands wait for the server");
    }
    const commandId = c.nextCommandId + 1;
    const frame = this._frame(c, { ...command.message, commandId });
    c.nextCommandId = commandId;
    command.id = commandId;
    if (c.batch) {
      c.batch.push({ frame, command });
    } else {
      this._send(c, frame);
      this._sentCommand(c, command);
    }
  }

  // A command went out: note what will settle it.
  _sentCommand(c, command) {
    if (command.answer === "taken") {
      if (c.welcome.version >= 2) c.untaken.push(command);
      else command.deferred.resolve(command.id); // nothing will confirm it
    } else {
      c.pending.set(command.id, command);
    }
  }

  // Queues frames; they leave together, in one WebSocket message, at the end of the
  // current task (many publishes in a loop make one message, not one each). A server
  // takes messages of at most its frame limit plus 4 bytes (PROTOCOL.md section 12):
  // more is cut into several messages, which the server reads as one byte stream.
  _send(c, ...frames) {
    if (c.finished) return;
    for (const f of frames) {
      c.outbound.push(f);
      c.outboundBytes += f.length;
    }
    c.lastTx = this._timers.now();
    if (!c.flushQueued) {
      c.flushQueued = true;
      queueMicrotask(() => this._flush(c));
    }
  }

  _flush(c) {
    c.flushQueued = false;
    if (c.finished || c.outbound.length === 0) return;
    let data;
    if (c.outbound.length === 1) {
      data = c.outbound[0];
    } else {
      data = new Uint8Array(c.outboundBytes);
      let at = 0;
      for (const f of c.outbound) {
        data.set(f, at);
        at += f.length;
      }
    }
    c.outbound = [];
    c.outboundBytes = 0;
    // Before the Welcome only the Hello leaves, far below the least limit.
    const max = (c.welcome?.maxFrameSize ?? MIN_MAX_FRAME_SIZE) + 4;
    try {
      for (let at = 0; at < data.length; at += max) {
        c.socket.send(data.length <= max ? data : data.subarray(at, at + max));
      }
    } catch (e) {
      this._transportLost(c, `send failed: ${e?.message ?? e}`);
    }
  }

  _startConnection() {
    const c = {
      socket: null,
      state: "opening", // opening | helloSent | ready
      decoder: new FrameDecoder(this._options.maxFrameSize),
      welcome: null,
      requests: [], // sent, in order; results must come in this order
      pending: new Map(), // commandId → command waiting for its answer
      untaken: [], // commands waiting for PushTaken, in order
      batch: null,
      nextRequestId: 0,
      nextCommandId: 0,
      nextPingNonce: 1n,
      outbound: [],
      outboundBytes: 0,
      flushQueued: false,
      lastRx: this._timers.now(),
      lastTx: this._timers.now(),
      timer: null,
      finished: false,
      resuming: this._resumeToken !== null,
    };
    this._conn = c;
    let socket;
    try {
      socket = this._transport(this._options.url);
      socket.binaryType = "arraybuffer";
    } catch (e) {
      c.finished = true;
      this._conn = null;
      this._connectionFailed(c, {
        source: "transport",
        code: null,
        codeName: null,
        reason: `cannot open ${this._options.url}: ${e?.message ?? e}`,
        remote: false,
      });
      return;
    }
    c.socket = socket;
    socket.onopen = () => this._guard(c, () => this._opened(c));
    socket.onmessage = (event) => this._guard(c, () => this._received(c, event.data));
    socket.onerror = () => {}; // followed by onclose, which carries what is known
    socket.onclose = (event) =>
      this._guard(c, () =>
        this._transportLost(c, `WebSocket closed (${event?.code ?? "no code"}${event?.reason ? `: ${event.reason}` : ""})`),
      );
    this._armTimer(c);
  }

  // Runs a socket callback for connection `c` only while it is current, and keeps
  // any internal failure inside the library (reported as a closed connection).
  _guard(c, fn) {
    if (c.finished || this._conn !== c) return;
    try {
      fn();
    } catch (e) {
      this._protocolError(c, CloseCode.InternalError, `internal error: ${e?.message ?? e}`);
    }
  }

  _opened(c) {
    // The browser verified the server's certificate before the socket opened: only
    // now does the Hello, with the credentials, go out.
    const o = this._options;
    const resume = this._resumeToken ? { token: this._resumeToken, lastSeq: this._lastSeq } : null;
    this._send(
      c,
      encodeMessage({
        type: "hello",
        minVersion: MIN_PROTOCOL_VERSION,
        maxVersion: o.maxVersion,
        serviceId: o.serviceId,
        // No compression bit: this client has no LZ4 decoder (README, "Not supported").
        options: { echo: o.echo, compression: false },
        userId: o.userId,
        password: o.password,
        resume,
        // Version 4: the frames this client accepts (its decoder's limit).
        maxFrameSize: o.maxFrameSize,
      }),
    );
    c.state = "helloSent";
  }

  _received(c, data) {
    let bytes;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else {
      // Text WebSocket messages have no meaning in this protocol.
      this._protocolError(c, CloseCode.ProtocolError, "a text WebSocket message: pushwire frames travel in binary messages");
      return;
    }
    const { messages, error } = c.decoder.push(bytes);
    for (const m of messages) {
      if (c.finished) return;
      c.lastRx = this._timers.now();
      this._handle(c, m);
    }
    if (c.finished) return;
    if (error) {
      this._protocolError(c, error.closeCode, error.message);
      return;
    }
    this._acknowledge(c, ACK_EVERY);
    this._armTimer(c);
  }

  _handle(c, m) {
    // Direction: a message only a client sends must not come from the server.
    if (MessageRole[m.type] === "client") {
      return this._protocolError(c, CloseCode.ProtocolError, `${m.type} from the server`);
    }
    switch (m.type) {
      case "ping":
        return this._send(c, encodeMessage({ type: "pong", nonce: m.nonce }));
      case "pong":
        return undefined;
      case "close":
        return this._endConnection(
          c,
          { source: "remote", code: m.code, codeName: codeName(CloseCode, m.code), reason: m.reason, remote: true },
          { reconnect: true },
        );
      default:
        break;
    }
    if (c.state === "helloSent") {
      if (m.type === "welcome") return this._welcomed(c, m);
      if (m.type === "refused") {
        return this._endConnection(
          c,
          {
            source: "refused",
            code: m.code,
            codeName: codeName(RefuseCode, m.code),
            reason: m.reason,
            remote: true,
          },
          { reconnect: false },
        );
      }
      return this._protocolError(c, CloseCode.ProtocolError, `${m.type} from the server before Welcome`);
    }
    if (c.state !== "ready") {
      return this._protocolError(c, CloseCode.ProtocolError, `${m.type} before the Hello`);
    }
    if (m.compression) {
      return this._protocolError(
        c,
        CloseCode.ProtocolError,
        `a compressed ${m.type} although the Hello did not ask for compressed payloads`,
      );
    }
    switch (m.type) {
      case "response":
        return this._result(c, m.requestId, (entry) => entry.deferred.resolve(m.payload));
      case "serverError":
        return this._result(c, m.requestId, (entry) => {
          const cancelled = m.code === ErrorCode.Cancelled;
          entry.deferred.reject(
            new PushwireError(cancelled ? "Cancelled" : "ServerError", m.message, {
              serverCode: m.code,
              serverCodeName: codeName(ErrorCode, m.code),
            }),
          );
        });
      case "subscribed":
      case "unsubscribed":
        this._seq(m.seq);
        if (m.sender.kind === "peer" && m.sender.self) {
          for (const g of m.groups) {
            if (m.type === "subscribed") this._groups.add(g);
            else this._groups.delete(g);
          }
        }
        return this._emit(m.type, { seq: m.seq, sender: m.sender, groups: m.groups });
      case "published":
        this._seq(m.seq);
        return this._emit("published", withText({ seq: m.seq, sender: m.sender, groups: m.groups, payload: m.payload }));
      case "userMessage":
        this._seq(m.seq);
        return this._emit("userMessage", withText({ seq: m.seq, sender: m.sender, payload: m.payload }));
      case "gap":
        this._seq(m.last);
        return this._emit("gap", { first: m.first, last: m.last });
      case "sessionLost":
        return this._sessionLost(c, m);
      case "pushRejected": {
        const detail = {
          commandId: Number(m.commandId),
          code: m.code,
          codeName: codeName(RejectCode, m.code),
          groups: m.groups,
          reason: m.reason,
        };
        const command = c.pending.get(Number(m.commandId));
        if (command && m.commandId <= BigInt(Number.MAX_SAFE_INTEGER)) {
          c.pending.delete(command.id);
          command.deferred.reject(
            new PushwireError("Rejected", m.reason, {
              rejectCode: m.code,
              rejectCodeName: detail.codeName,
              groups: m.groups,
            }),
          );
        }
        return this._emit("rejected", detail);
      }
      case "userMessageDelivered":
        return this._answer(c, m.commandId, "delivered", m.connections);
      case "groupList":
        return this._answer(c, m.commandId, "groups", m.groups);
      case "pushTaken":
        if (c.welcome.version < 2) {
          return this._protocolError(c, CloseCode.ProtocolError, "PushTaken on a connection of protocol version 1");
        }
        return this._taken(c, m.commandId);
      default:
        // welcome or refused again.
        return this._protocolError(c, CloseCode.ProtocolError, `${m.type} from the server after Welcome`);
    }
  }

  _welcomed(c, w) {
    if (w.version < MIN_PROTOCOL_VERSION || w.version > this._options.maxVersion) {
      return this._protocolError(c, CloseCode.ProtocolError, `Welcome with version ${w.version}, which the client did not offer`);
    }
    if (w.maxFrameSize < MIN_MAX_FRAME_SIZE || w.maxFrameSize > HARD_MAX_FRAME_SIZE) {
      return this._protocolError(c, CloseCode.ProtocolError, "Welcome with a frame limit outside the protocol's range");
    }
    const reconnected = this._welcome !== null;
    c.state = "ready";
    c.welcome = w;
    this._welcome = w;
    this._resumeToken = w.resumeToken;
    this._failures = 0;
    if (!w.resumed) {
      // A new session numbers its events from 1 again.
      this._lastSeq = 0n;
      this._acked = 0n;
    }
    this._state = "ready";
    // Version 4 (PROTOCOL.md, Ping): follow the server's timing, so that it never
    // takes an idle but healthy page for dead: ping at least every third of its idle
    // timeout, and wait for it at least three of its ping intervals.
    let ping = this._options.keepalive.pingIntervalMs ?? (w.pingIntervalMs || 15000);
    if (w.version >= 4 && w.idleTimeoutMs > 0) ping = Math.min(ping, Math.floor(w.idleTimeoutMs / 3));
    let idle = this._options.keepalive.idleTimeoutMs ?? 3 * ping;
    if (w.version >= 4 && w.pingIntervalMs > 0) idle = Math.max(idle, 3 * w.pingIntervalMs);
    c.pingIntervalMs = ping;
    c.idleTimeoutMs = idle;
    c.lastRx = this._timers.now();
    this._armTimer(c);
    const detail = {
      version: w.version,
      sessionId: w.sessionId,
      resumed: w.resumed,
      reconnected,
      maxFrameSize: w.maxFrameSize,
      pingIntervalMs: w.pingIntervalMs,
      sessionTimeoutMs: w.sessionTimeoutMs,
      replayCapacity: w.replayCapacity,
    };
    // Commands accepted while the connection was down go out first, in order.
    const queued = this._queued;
    this._queued = [];
    for (const command of queued) {
      try {
        this._issue(c, command);
      } catch (e) {
        command.deferred.reject(e);
      }
    }
    if (this._firstConnect && !reconnected) this._firstConnect.resolve(this);
    this._emit("connected", detail);
  }

  _sessionLost(c, m) {
    // The server kept nothing: join the groups again, by ourselves (as pool.rs does).
    const groups = [...this._groups].sort((a, b) => a - b);
    this._groups.clear();
    const detail = {
      reason: m.reason,
      reasonName: codeName(SessionLostReason, m.reason),
      text: m.text,
      resubscribing: this._options.restoreSubscriptions ? groups : [],
    };
    this._emit("sessionLost", detail);
    if (this._options.restoreSubscriptions && groups.length > 0 && !c.finished) {
      const command = { message: { type: "subscribe", groups }, answer: "taken", deferred: defer(), id: 0 };
      command.deferred.promise.catch(() => {}); // nobody awaits the restoration
      try {
        this._issue(c, command);
      } catch (e) {
        command.deferred.reject(e);
      }
    }
  }

  // A request's result: it must be for the oldest outstanding request (results come
  // in request order); anything else is a protocol violation.
  _result(c, requestId, settleEntry) {
    const front = c.requests[0];
    if (!front || BigInt(front.id) !== requestId) {
      return this._protocolError(
        c,
        CloseCode.ProtocolError,
        `result for request ${requestId} out of order (expected ${front ? front.id : "none"})`,
      );
    }
    c.requests.shift();
    if (!front.ended) {
      front.ended = true;
      settleEntry(front);
    }
    return undefined;
  }

  _answer(c, commandId, kind, value) {
    const command = c.pending.get(Number(commandId));
    if (command && command.answer === kind && commandId <= BigInt(Number.MAX_SAFE_INTEGER)) {
      c.pending.delete(command.id);
      command.deferred.resolve(value);
    }
  }

  _taken(c, commandId) {
    while (c.untaken.length > 0 && BigInt(c.untaken[0].id) <= commandId) {
      const command = c.untaken.shift();
      command.deferred.resolve(command.id);
    }
  }

  _seq(seq) {
    if (seq > this._lastSeq) this._lastSeq = seq;
  }

  // Tells the server the events up to lastSeq arrived, once `every` are unacknowledged.
  _acknowledge(c, every) {
    if (c.state === "ready" && !c.finished && this._lastSeq >= this._acked + every && this._lastSeq > this._acked) {
      this._send(c, encodeMessage({ type: "ack", lastSeq: this._lastSeq }));
      this._acked = this._lastSeq;
    }
  }

  // One timer per connection: the handshake deadline before the Welcome; after it,
  // the next Ping (nothing sent for a ping interval) or the idle timeout (no complete
  // frame received for that long), whichever comes first.
  _armTimer(c) {
    if (c.timer !== null) this._timers.clearTimeout(c.timer);
    c.timer = null;
    if (c.finished) return;
    const now = this._timers.now();
    let due;
    if (c.state !== "ready") {
      c.handshakeDeadline ??= now + this._options.connectTimeoutMs;
      due = c.handshakeDeadline;
    } else {
      due = Math.min(c.lastTx + c.pingIntervalMs, c.lastRx + c.idleTimeoutMs);
    }
    c.timer = this._timers.setTimeout(() => this._guard(c, () => this._timerFired(c)), Math.max(0, due - now));
  }

  _timerFired(c) {
    c.timer = null;
    const now = this._timers.now();
    if (c.state !== "ready") {
      if (now >= c.handshakeDeadline) {
        this._sendClose(c, CloseCode.HandshakeTimeout, "no Welcome in time");
        return this._endConnection(
          c,
          { source: "timeout", code: CloseCode.HandshakeTimeout, codeName: "HandshakeTimeout", reason: "no Welcome in time", remote: false },
          { reconnect: true },
        );
      }
      return this._armTimer(c);
    }
    if (now >= c.lastRx + c.idleTimeoutMs) {
      this._sendClose(c, CloseCode.IdleTimeout, "nothing received within the idle timeout");
      return this._endConnection(
        c,
        { source: "timeout", code: CloseCode.IdleTimeout, codeName: "IdleTimeout", reason: "nothing received within the idle timeout", remote: false },
        { reconnect: true },
      );
    }
    // A quiet link: a good moment to acknowledge the rest.
    this._acknowledge(c, 1n);
    if (now >= c.lastTx + c.pingIntervalMs) {
      if (c.outbound.length === 0) {
        this._send(c, encodeMessage({ type: "ping", nonce: c.nextPingNonce++ }));
      }
      c.lastTx = now;
    }
    return this._armTimer(c);
  }

  _sendClose(c, code, reason) {
    if (c.finished || !c.socket || c.state === "opening") return;
    this._send(c, encodeMessage({ type: "close", code, reason: truncateText(reason) }));
    this._flush(c);
  }

  _protocolError(c, code, reason) {
    this._sendClose(c, code, reason);
    this._endConnection(
      c,
      { source: "protocol", code, codeName: codeName(CloseCode, code), reason, remote: false },
      { reconnect: false },
    );
  }

  _transportLost(c, reason) {
    this._endConnection(c, { source: "transport", code: null, codeName: null, reason, remote: false }, { reconnect: true });
  }

  // The connection is over: settle what it carried, then reconnect or finish.
  _endConnection(c, info, { reconnect }) {
    if (c.finished) return;
    this._flush(c);
    c.finished = true;
    if (c.timer !== null) this._timers.clearTimeout(c.timer);
    c.timer = null;
    try {
      c.socket?.close(1000);
    } catch {
      // Already closed: nothing to do.
    }
    const lost = () => new PushwireError("ConnectionLost", `connection lost: ${info.reason}`, { closeReason: info });
    for (const entry of c.requests) {
      if (!entry.ended) {
        entry.ended = true;
        entry.deferred.reject(lost());
      }
    }
    for (const e of c.batch ?? []) {
      if (e.request && !e.request.ended) {
        e.request.ended = true;
        e.request.deferred.reject(lost());
      }
      if (e.command) e.command.deferred.reject(lost());
    }
    // Commands the server did not confirm may or may not have run.
    for (const command of [...c.pending.values(), ...c.untaken]) command.deferred.reject(lost());
    c.requests = [];
    c.batch = null;
    c.pending.clear();
    c.untaken = [];
    if (this._conn === c) this._conn = null;

    const wasReady = c.state === "ready";
    if (!wasReady && this._welcome === null) {
      // The first connection never got going: open() fails, nothing reconnects
      // (as the Rust client's connect).
      return this._finish(info);
    }
    if (!wasReady) return this._connectionFailed(c, info, reconnect);
    if (!reconnect || !this._reconnect) return this._finish(info);
    this._scheduleReconnect(info);
  }

  // An attempt that had not reached its Welcome failed.
  _connectionFailed(c, info, reconnect = true) {
    if (this._welcome === null || !reconnect || !this._reconnect) return this._finish(info);
    this._failures += 1;
    this._scheduleReconnect(info);
  }

  _scheduleReconnect(info) {
    if (this._failures >= this._reconnect.maxAttempts) {
      return this._finish({ ...info, reason: `${info.reason} (gave up after ${this._failures} reconnect attempts)` });
    }
    this._state = "reconnecting";
    const delayMs = backoffDelay(this._reconnect, this._failures, this._random);
    this._emit("reconnecting", { attempt: this._failures + 1, delayMs, reason: info });
    this._retryTimer = this._timers.setTimeout(() => {
      this._retryTimer = null;
      if (this._state !== "reconnecting") return;
      this._startConnection();
    }, delayMs);
    return undefined;
  }

  _finish(info) {
    if (this._state === "closed") return;
    this._state = "closed";
    if (this._retryTimer !== null) this._timers.clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const error =
      info.source === "refused"
        ? new PushwireError("Refused", `the server refused the Hello (${info.codeName}): ${info.reason}`, {
            refuseCode: info.code,
            refuseCodeName: info.codeName,
            closeReason: info,
          })
        : new PushwireError("ConnectionLost", `connection ended: ${info.reason}`, { closeReason: info });
    for (const command of this._queued) command.deferred.reject(error);
    this._queued = [];
    if (this._firstConnect && this._welcome === null) this._firstConnect.reject(error);
    this._emit("closed", info);
  }
}

// Texts sent in a Close are at most 4,096 bytes: cut a long reason at a character.
function truncateText(text) {
  let s = String(text);
  while (utf8(s).length > 4096) s = s.slice(0, Math.floor(s.length * 0.9));
  return s;
}

// A payload event with a lazily decoded `text` (UTF-8; invalid bytes as U+FFFD).
function withText(detail) {
  let text;
  Object.defineProperty(detail, "text", {
    enumerable: false,
    get: () => (text ??= payloadText(detail.payload)),
  });
  return detail;
}

/**
 * Connects and resolves with a ready client after the first Welcome; rejects with a
 * PushwireError ("Refused", "ConnectionLost") when the first connection fails.
 */
export function connect(options) {
  return settle(() => new PushwireClient(options).open());
}
