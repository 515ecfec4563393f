//! The pushwire wire format.
//!
//! A connection carries a stream of length-prefixed frames; each frame holds one
//! [`Message`]. This crate defines every message, their exact byte layout (specified in
//! `PROTOCOL.md` beside this crate), the limits that keep hostile input harmless, and a
//! streaming [`FrameDecoder`] that turns arbitrarily chunked bytes into messages without
//! copying payloads.
//!
//! The crate holds no connection state and performs no I/O: it is shared by the
//! engine, the tokio shell, the simulator and third-party clients.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use pushwire_protocol::{FrameDecoder, FrameLimits, GroupId, Message, Publish};
//!
//! let message = Message::Publish(Publish {
//!     command_id: 7,
//!     groups: vec![GroupId(1), GroupId(2)],
//!     payload: Bytes::from_static(b"hello"),
//!     compression: None,
//! });
//! let mut wire = BytesMut::new();
//! message.encode(&mut wire);
//!
//! let mut decoder = FrameDecoder::new(FrameLimits::default());
//! let mut input = &wire[..];
//! let mut decoded = Vec::new();
//! // Feed one byte at a time: a partial frame simply waits for more.
//! while !input.is_empty() {
//!     let taken = decoder.feed(&input[..1]);
//!     input = &input[taken..];
//!     while let Some(m) = decoder.next_message().unwrap() {
//!         decoded.push(m);
//!     }
//! }
//! assert_eq!(decoded, vec![message]);
//! ```

#![warn(missing_docs)]

mod codes;
mod compression;
mod control;
mod decoder;
mod error;
mod frame;
mod handshake;
mod limits;
mod push;
mod rpc;
mod text;
mod wire;

pub use codes::{CloseCode, ErrorCode, RefuseCode, RejectCode, SessionLostReason};
pub use compression::{
    compress, compress_into, decompress, CompressedPayload, Compression, CompressionAlgorithm,
    CompressionError, COMPRESSED_TYPE_BIT, COMPRESSION_HEADER_LEN,
};
pub use control::{Ack, Close, Ping, Pong};
pub use decoder::{FrameDecoder, RawFrame};
pub use error::DecodeError;
pub use frame::{Message, MessageKind, Role, FRAME_HEADER_LEN};
pub use handshake::{
    negotiate_version, ClientOptions, Hello, Refused, ResumeRequest, ResumeToken, Welcome,
    PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
pub use limits::{
    FrameLimits, LimitError, DEFAULT_MAX_FRAME_SIZE, HARD_MAX_FRAME_SIZE, MAX_GROUPS_PER_MESSAGE,
    MAX_NODE_ID_BYTES, MAX_PASSWORD_BYTES, MAX_TEXT_BYTES, MAX_USER_ID_BYTES, MAX_USER_ID_CHARS,
    MIN_MAX_FRAME_SIZE,
};
pub use push::{
    encode_publish_prefix, encode_published_prefix, patch_seq, Gap, GroupDescription, GroupId,
    GroupList, GroupSelection, ListGroups, PeerSender, Publish, Published, PushRejected, PushTaken,
    SendUserMessage, Sender, SessionLost, Subscribe, Subscribed, Unsubscribe, Unsubscribed,
    UserMessage, UserMessageDelivered,
};
pub use rpc::{BatchBegin, BatchCommit, Cancel, Request, Response, ServerError};
pub use text::{Text, TextError};
