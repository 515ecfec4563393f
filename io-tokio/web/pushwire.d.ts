// TypeScript declarations for pushwire.js (the browser client) and the modules it
// re-exports: protocol.js (the codec), client.js (the client), hello.js (hello-world).

// ------------------------------------------------------------------ codec

export const PROTOCOL_VERSION: 5;
export const MIN_PROTOCOL_VERSION: 1;
export const DEFAULT_MAX_FRAME_SIZE: number;
export const MIN_MAX_FRAME_SIZE: number;
export const HARD_MAX_FRAME_SIZE: number;
export const MAX_USER_ID_CHARS: number;
export const MAX_USER_ID_BYTES: number;
export const MAX_PASSWORD_BYTES: number;
export const MAX_TEXT_BYTES: number;
export const MAX_GROUPS: number;
export const MAX_NODE_ID_BYTES: number;
export const COMPRESSED_TYPE_BIT: number;

export type MessageTypeName =
  | "hello" | "welcome" | "refused"
  | "request" | "response" | "serverError" | "batchBegin" | "batchCommit" | "cancel"
  | "subscribe" | "unsubscribe" | "publish" | "sendUserMessage" | "listGroups"
  | "subscribed" | "unsubscribed" | "published" | "userMessage" | "gap" | "sessionLost"
  | "pushRejected" | "userMessageDelivered" | "groupList" | "pushTaken"
  | "ping" | "pong" | "close" | "ack";

export const MessageType: Readonly<Record<MessageTypeName, number>>;
export const MessageRole: Readonly<Record<MessageTypeName, "client" | "server" | "either">>;

export const CloseCode: Readonly<{
  Normal: 0; GoingAway: 1; ProtocolError: 2; FrameTooLarge: 3; IdleTimeout: 4; HelloTimeout: 5;
  SlowConsumer: 6; InternalError: 7; TooManyConnections: 8; ServerRejected: 9; Kicked: 10;
  HandshakeTimeout: 11;
}>;
export const RefuseCode: Readonly<{
  BadCredentials: 1; UnknownService: 2; UnsupportedVersion: 3; TooManyConnections: 4;
  ResumeNotPermitted: 5; InvalidHello: 6; GoingAway: 7; NotPermitted: 8;
}>;
export const RejectCode: Readonly<{
  UnknownGroups: 1; EmptyGroupList: 2; NotAuthorized: 3; PayloadTooLarge: 4; InvalidReceiver: 5; Busy: 6;
}>;
export const SessionLostReason: Readonly<{ Unknown: 1; Expired: 2 }>;
export const ErrorCode: Readonly<{
  UnknownMethod: 1; BadRequest: 2; Internal: 3; GoingAway: 4; NoService: 5; Cancelled: 6;
}>;

/** The name of a code in its table, or `Other(n)` for a code the table does not define. */
export function codeName(table: Readonly<Record<string, number>>, value: number): string;

/** u64 fields: a bigint when decoded; encoders also take a non-negative safe integer. */
export type U64 = bigint;
export type U64In = bigint | number;

/** Who caused a push event: the server itself, or a client connection. */
export type Sender = ServerSender | PeerSender;
export interface ServerSender {
  kind: "server";
}
export interface PeerSender {
  kind: "peer";
  /** Set on the copy the event's originator receives (the echo). */
  self: boolean;
  userId: string;
  /** The peer's IP address as the server saw it: dotted IPv4, or IPv6 (RFC 5952). */
  address: string;
  port: number;
  serviceId: number;
  /**
   * Version 5: the cluster node the sender is connected to, when the server is
   * clustered (absent otherwise).
   */
  node?: string;
}

/** How a payload is compressed (version 3); this client refuses such frames. */
export interface Compression {
  algorithm: 1;
  originalLen: number;
}

export interface GroupDescription {
  id: number;
  description: string;
}

export type Message =
  | { type: "hello"; minVersion: number; maxVersion: number; serviceId: number; options: { echo: boolean; compression: boolean }; userId: string; password: Uint8Array; resume: { token: Uint8Array; lastSeq: U64 } | null; maxFrameSize: number | null }
  | { type: "welcome"; version: number; sessionId: U64; resumeToken: Uint8Array; resumed: boolean; maxFrameSize: number; pingIntervalMs: number; sessionTimeoutMs: number; replayCapacity: number; idleTimeoutMs: number }
  | { type: "refused"; code: number; reason: string }
  | { type: "request"; requestId: U64; methodId: number; payload: Uint8Array }
  | { type: "response"; requestId: U64; payload: Uint8Array }
  | { type: "serverError"; requestId: U64; code: number; message: string }
  | { type: "batchBegin" }
  | { type: "batchCommit"; serverBatching: boolean }
  | { type: "cancel"; requestId: U64 }
  | { type: "subscribe"; commandId: U64; groups: number[] }
  | { type: "unsubscribe"; commandId: U64; all: boolean; groups: number[] }
  | { type: "publish"; commandId: U64; groups: number[]; payload: Uint8Array; compression: Compression | null }
  | { type: "sendUserMessage"; commandId: U64; receiver: string; payload: Uint8Array; compression: Compression | null }
  | { type: "listGroups"; commandId: U64 }
  | { type: "subscribed"; seq: U64; sender: Sender; groups: number[] }
  | { type: "unsubscribed"; seq: U64; sender: Sender; groups: number[] }
  | { type: "published"; seq: U64; sender: Sender; groups: number[]; payload: Uint8Array; compression: Compression | null }
  | { type: "userMessage"; seq: U64; sender: Sender; payload: Uint8Array; compression: Compression | null }
  | { type: "gap"; first: U64; last: U64 }
  | { type: "sessionLost"; reason: number; text: string }
  | { type: "pushRejected"; commandId: U64; code: number; groups: number[]; reason: string }
  | { type: "userMessageDelivered"; commandId: U64; connections: number }
  | { type: "groupList"; commandId: U64; groups: GroupDescription[] }
  | { type: "pushTaken"; commandId: U64 }
  | { type: "ping"; nonce: U64 }
  | { type: "pong"; nonce: U64 }
  | { type: "close"; code: number; reason: string }
  | { type: "ack"; lastSeq: U64 };

export type DecodeErrorKind =
  | "FrameTooLarge" | "EmptyFrame" | "UnknownMessageType" | "Truncated"
  | "InvalidUtf8" | "TooLong" | "InvalidValue" | "TrailingBytes";

/** Bytes that are not a valid frame (PROTOCOL.md §10.3); fatal to the connection. */
export class PushwireDecodeError extends Error {
  readonly kind: DecodeErrorKind;
  readonly messageType: MessageTypeName | null;
  readonly field: string | null;
  /** The Close code to send: FrameTooLarge (3) or ProtocolError (2). */
  readonly closeCode: number;
}

/** A message that cannot be encoded as given (a field over its limit, a wrong type). */
export class PushwireEncodeError extends RangeError {}

/** Encodes one message as a complete frame. Throws PushwireEncodeError. */
export function encodeMessage(message: Message | (Record<string, unknown> & { type: MessageTypeName })): Uint8Array;
/** The frame size (type byte plus body) of a message. */
export function frameSize(message: Message): number;
/** Decodes a frame body given its type byte. Throws PushwireDecodeError. */
export function decodeBody(typeByte: number, body: Uint8Array): Message;
/** Decodes exactly one complete frame. Throws PushwireDecodeError. */
export function decodeFrame(bytes: Uint8Array, maxFrameSize?: number): Message;
export function typeFromByte(byte: number): { type: MessageTypeName; compressed: boolean } | null;

/** Streaming frame decoder: bounded by its frame limit, poisoned after an error; never throws. */
export class FrameDecoder {
  constructor(maxFrameSize?: number);
  readonly maxFrameSize: number;
  /** Bytes held of a frame not complete yet. */
  readonly buffered: number;
  push(chunk: Uint8Array | ArrayBuffer | ArrayBufferView): { messages: Message[]; error: PushwireDecodeError | null };
}

export function utf8(text: string): Uint8Array;
/** A payload as text (UTF-8; invalid sequences become U+FFFD). */
export function payloadText(bytes: Uint8Array): string;
export function toBytes(payload: Payload | null | undefined): Uint8Array;
export function formatAddress(bytes: Uint8Array): string;
export function parseAddress(text: string): Uint8Array | null;
export function toHex(bytes: Uint8Array): string;
export function fromHex(dump: string): Uint8Array;

// ------------------------------------------------------------------ client

/** Bytes, or a string sent as UTF-8. */
export type Payload = Uint8Array | ArrayBuffer | ArrayBufferView | string;

/** The part of the WebSocket interface the client uses; inject your own for tests. */
export interface SocketLike {
  binaryType: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: ArrayBuffer | ArrayBufferView | string }) => void) | null;
  onclose: ((event: { code?: number; reason?: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/** The clock and timers the client uses (default: Date.now and the global timers). */
export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface ReconnectOptions {
  /** First delay, ms (default 100). */
  initialDelayMs?: number;
  /** Longest delay, ms (default 5000); the delay doubles per failed attempt up to it. */
  maxDelayMs?: number;
  /** Up to this fraction of the delay is added at random (default 0.5). */
  jitter?: number;
  /** Attempts before giving up with `closed` (default 20). */
  maxAttempts?: number;
}

export interface ClientOptions {
  /** wss:// URL of the server's WebSocket endpoint (ws:// only with `insecure`). */
  url: string;
  userId: string;
  password?: string | Uint8Array;
  /** Default 1 (hello-world). */
  serviceId?: number;
  /** Receive one's own publications and user messages back, self-flagged (default true). */
  echo?: boolean;
  /** Allow a ws:// URL: the password then travels in the clear. */
  insecure?: boolean;
  /** Highest protocol version offered (default 3); the Hello offers 1..=maxVersion. */
  maxVersion?: 1 | 2 | 3;
  /** Largest frame accepted from the server (default 1 MiB; 4096..=16 MiB). */
  maxFrameSize?: number;
  /** Limit on opening the socket plus Hello/Welcome, ms (default 10000). */
  connectTimeoutMs?: number;
  /** Default: ping after the Welcome's ping interval (15 s if 0) of silence; idle timeout 3 intervals. */
  keepalive?: { pingIntervalMs?: number; idleTimeoutMs?: number };
  /** Reconnect and resume after a drop (default on); false: the first drop closes the client. */
  reconnect?: boolean | ReconnectOptions;
  /** Re-subscribe to the groups one was in when the server lost the session (default true). */
  restoreSubscriptions?: boolean;
  /** Default 4096. */
  maxOutstandingRequests?: number;
  /** Push commands waiting for the server's answer or PushTaken (default 4096). */
  maxPendingCommands?: number;
  /** Push commands accepted while reconnecting, sent once back (default 1024). */
  queueWhileDisconnected?: number;
  /** Opens a socket (default: `new WebSocket(url)`). */
  transport?: (url: string) => SocketLike;
  timers?: Timers;
  /** Random numbers in [0, 1) for the jitter (default Math.random). */
  random?: () => number;
}

export type PushwireErrorCode =
  | "NotReady" | "Closed" | "TooLarge" | "TooManyRequests" | "TooManyCommands" | "InvalidArgument"
  | "BatchOpen" | "NoBatch" | "ConnectionLost" | "Cancelled" | "BatchAborted" | "ServerError"
  | "Rejected" | "Refused";

export class PushwireError extends Error {
  readonly code: PushwireErrorCode;
  /** ServerError: the ErrorCode and its name. */
  readonly serverCode?: number;
  readonly serverCodeName?: string;
  /** Rejected: the RejectCode, its name and the groups concerned. */
  readonly rejectCode?: number;
  readonly rejectCodeName?: string;
  readonly groups?: number[];
  /** Refused: the RefuseCode and its name. */
  readonly refuseCode?: number;
  readonly refuseCodeName?: string;
  /** ConnectionLost / Refused: how the connection ended. */
  readonly closeReason?: CloseInfo;
}

/** How a connection ended. */
export interface CloseInfo {
  /** local: close(); remote: the server's Close; refused: the server's Refused;
   * protocol: the server broke the protocol (the client sent Close); timeout:
   * handshake or idle timeout; transport: the socket ended without a Close. */
  source: "local" | "remote" | "refused" | "protocol" | "timeout" | "transport";
  /** CloseCode (RefuseCode for "refused"); null for "transport". */
  code: number | null;
  codeName: string | null;
  reason: string;
  remote: boolean;
}

export interface ConnectedEvent {
  version: number;
  sessionId: bigint;
  /** The server continued the session (after a reconnect). */
  resumed: boolean;
  /** This Welcome follows a reconnect. */
  reconnected: boolean;
  maxFrameSize: number;
  pingIntervalMs: number;
  sessionTimeoutMs: number;
  replayCapacity: number;
}

export interface PublishedEvent {
  seq: bigint;
  sender: Sender;
  /** The target groups this connection belongs to (all of them on the echo). */
  groups: number[];
  payload: Uint8Array;
  /** The payload as UTF-8 text (decoded on first access). */
  readonly text: string;
}

export interface UserMessageEvent {
  seq: bigint;
  sender: Sender;
  payload: Uint8Array;
  readonly text: string;
}

export interface PresenceEvent {
  seq: bigint;
  sender: Sender;
  groups: number[];
}

export interface GapEvent {
  /** Push events first..=last were lost. */
  first: bigint;
  last: bigint;
}

export interface SessionLostEvent {
  reason: number;
  reasonName: string;
  text: string;
  /** The groups the client subscribes to again. */
  resubscribing: number[];
}

export interface RejectedEvent {
  commandId: number;
  code: number;
  codeName: string;
  groups: number[];
  reason: string;
}

export interface ReconnectingEvent {
  /** 1 for the first attempt after a drop. */
  attempt: number;
  delayMs: number;
  reason: CloseInfo;
}

export interface ClientEvents {
  connected: ConnectedEvent;
  reconnecting: ReconnectingEvent;
  closed: CloseInfo;
  published: PublishedEvent;
  userMessage: UserMessageEvent;
  subscribed: PresenceEvent;
  unsubscribed: PresenceEvent;
  gap: GapEvent;
  sessionLost: SessionLostEvent;
  rejected: RejectedEvent;
}

/** The promise of a request; keep it to cancel the request. */
export interface RequestPromise extends Promise<Uint8Array> {
  /** The request's id on its connection (null if it was refused locally). */
  readonly requestId: number | null;
}

export type CancelOutcome = "removedFromBatch" | "sentToServer" | "endedLocally" | "alreadySent" | "notOutstanding";

export class PushwireClient extends EventTarget {
  constructor(options: ClientOptions);
  readonly state: "idle" | "connecting" | "ready" | "reconnecting" | "closed";
  readonly welcome: (Message & { type: "welcome" }) | null;
  /** Negotiated protocol version (0 before the first Welcome). */
  readonly version: number;
  /** Highest push-event sequence number of the session (presented when resuming). */
  readonly lastSeq: bigint;
  /** Groups this connection is in, as the server confirmed them. */
  readonly groups: number[];
  readonly outstandingRequests: number;
  readonly batching: boolean;

  /** Registers a handler; returns a function that removes it. Events are also
   * dispatched as CustomEvents (`addEventListener(type, e => e.detail)`). */
  on<K extends keyof ClientEvents>(type: K, handler: (detail: ClientEvents[K]) => void): () => void;

  /** Opens the first connection; resolves after the Welcome. */
  open(): Promise<this>;
  /** Calls a method; results come in request order. */
  request(methodId: number, payload?: Payload): RequestPromise;
  cancel(request: RequestPromise): CancelOutcome;
  /** Resolve with the command id once the server ran the command (version 2+; at once on
   * version 1). Refusals come as `rejected` events. */
  subscribe(groups: number[]): Promise<number>;
  unsubscribe(groups?: number[] | "all"): Promise<number>;
  publish(groups: number[], payload: Payload): Promise<number>;
  /** Resolves with the number of the receiver's connections that got it; rejects
   * with code "Rejected" when the server refuses it. */
  sendUserMessage(userId: string, payload: Payload): Promise<number>;
  listGroups(): Promise<GroupDescription[]>;
  /** Throw PushwireError (NotReady, BatchOpen, NoBatch) on misuse. */
  startBatching(): void;
  commitBatching(serverBatching?: boolean): void;
  abortBatching(): void;
  close(reason?: string): Promise<void>;
}

/** Connects; resolves with a ready client after the first Welcome. */
export function connect(options: ClientOptions): Promise<PushwireClient>;

/** The delay before reconnect attempt failures + 1. */
export function backoffDelay(policy: Required<ReconnectOptions>, failures: number, random?: () => number): number;

// ------------------------------------------------------------------ hello-world

export const HELLO_WORLD_SERVICE: 1;
export const SAY_HELLO: 1;
export const SLEEP: 2;
export const ECHO: 3;
export function sayHelloArgs(first: string, last: string): Uint8Array;
export function sleepArgs(ms: number): Uint8Array;
export function sayHello(client: PushwireClient, first: string, last: string): Promise<string>;
export function echo(client: PushwireClient, payload: Payload): RequestPromise;
export function sleep(client: PushwireClient, ms: number): RequestPromise;
