// pushwire for browsers: the entry point. `import { connect } from "/pushwire.js"`.
// The codec is in protocol.js, the client in client.js, hello-world helpers in hello.js.

export * from "./protocol.js";
export { PushwireClient, PushwireError, backoffDelay, connect } from "./client.js";
export * from "./hello.js";
