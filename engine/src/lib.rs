//! Sans-I/O state machines of pushwire.
//!
//! Nothing in this crate reads a clock, the OS random number generator or a socket,
//! and nothing spawns threads: time and randomness are arguments, bytes go in and out
//! through caller-owned buffers.
//!
//! # Where things live
//!
//! - [`client`]: the client end of a connection (TLS, server authentication before
//!   credentials, Hello, RPC and batching, push commands, resume).
//! - [`server`]: the server end of one connection ([`server::ServerConnection`]:
//!   TLS, the Hello under a deadline, RPC ordering, keep-alive).
//! - [`hub`]: the push hub — groups, membership, presence, fan-out, user messages,
//!   sequence numbers, sessions and their replay buffers.
//! - [`node`]: the server node, the one implementation of a pushwire server's
//!   policy: [`node::Node`] (shared: the hub, admission and resume, mailboxes under
//!   the slow-consumer policy, session expiry) and [`node::NodeConnection`] (per
//!   connection: a `ServerConnection` and its mailbox). The tokio server and the
//!   simulator both drive it.
//! - [`cluster`]: several nodes as one server through a backplane (Redis): the
//!   records nodes exchange, holes turned into Gaps, presence and users across nodes.
//! - [`web`]: the WebSocket transport for browsers, on the same port (an HTTP
//!   upgrade told from a Hello by the first byte, then pushwire in binary messages).
//!
//! # How a publication travels
//!
//! socket read → the publisher's [`node::NodeConnection::handle_input`] (decrypt,
//! decode a Publish) → [`node::Node::handle_connection`] (under the node's lock: the
//! hooks, the hub's fan-out, each receiver's frame — encoded once for the
//! publication, its sequence number patched in — appended to that receiver's mailbox,
//! the receiver woken) → each receiver's [`node::NodeConnection::poll_transmit`] (on
//! its own task: the mailbox's frames coalesced and encrypted into TLS records) →
//! socket write.

#![warn(missing_docs)]

mod channel;
pub mod client;
mod close;
pub mod cluster;
pub mod credentials;
pub mod hub;
pub mod node;
mod rpc;
pub mod server;
pub mod tls;
pub mod web;

pub use channel::KeepAlive;
pub use close::{CloseReason, ProtocolError, TimeoutKind};
pub use rpc::{RequestResult, DEFAULT_MAX_OUTSTANDING_REQUESTS, DEFAULT_MAX_RUNNING_REQUESTS};
