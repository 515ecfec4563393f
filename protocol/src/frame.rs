//! Frames and the catalogue of messages.
//!
//! A frame is `length: u32` (bytes that follow: the type byte and the body), `type:
//! u8`, then the body. The length and type layout is frozen across protocol versions,
//! so any version can find frame boundaries; an unknown message type is fatal.

use crate::compression::COMPRESSED_TYPE_BIT;
use crate::control::{Ack, Close, Ping, Pong};
use crate::error::DecodeError;
use crate::handshake::{Hello, Refused, Welcome};
use crate::push::{
    Gap, GroupId, GroupList, ListGroups, Publish, Published, PushRejected, PushTaken,
    SendUserMessage, SessionLost, Subscribe, Subscribed, Unsubscribe, Unsubscribed, UserMessage,
    UserMessageDelivered,
};
use crate::rpc::{BatchBegin, BatchCommit, Cancel, Request, Response, ServerError};
use crate::wire::Reader;
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// Bytes before a frame's body: the `u32` length and the `u8` message type.
pub const FRAME_HEADER_LEN: usize = 5;

/// Which end of a connection may send a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Only clients send it.
    Client,
    /// Only servers send it.
    Server,
    /// Either end sends it.
    Either,
}

/// The body of one message type: its layout on the wire.
pub(crate) trait Body: Sized {
    /// Exact encoded size of the body (without the frame header).
    fn body_len(&self) -> usize;
    /// Appends the body.
    fn encode_body(&self, out: &mut BytesMut);
    /// Reads the body; the reader holds exactly the frame's body bytes (and knows
    /// whether the type byte marked a compressed payload).
    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError>;
    /// Bits this message sets in the type byte besides its code: the
    /// [`COMPRESSED_TYPE_BIT`] of a compressed payload, nothing for the others.
    fn type_bits(&self) -> u8 {
        0
    }
}

/// Writes a frame header with type byte `type_byte` for a body of `body_len` bytes.
pub(crate) fn put_header_byte(out: &mut BytesMut, type_byte: u8, body_len: usize) {
    // The frame limit (at most 16 MiB) is enforced by the receiver; a body this large
    // is a caller bug, checked here in debug builds.
    debug_assert!(body_len < u32::MAX as usize);
    out.put_u32((body_len + 1) as u32);
    out.put_u8(type_byte);
}

macro_rules! messages {
    ( $( $(#[$meta:meta])* $name:ident = $code:literal, $role:ident; )+ ) => {
        /// Every message type, with its wire code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum MessageKind {
            $( $(#[$meta])* $name = $code, )+
        }

        impl MessageKind {
            /// Every message kind, in wire-code order.
            pub const ALL: &'static [MessageKind] = &[ $( MessageKind::$name, )+ ];

            /// The kind for a wire code.
            pub fn from_wire(code: u8) -> Option<Self> {
                match code {
                    $( $code => Some(Self::$name), )+
                    _ => None,
                }
            }

            /// The kind a frame's type byte names, and whether the byte marks a
            /// compressed payload ([`COMPRESSED_TYPE_BIT`], allowed only on the kinds
            /// for which [`allows_compression`](Self::allows_compression) holds).
            /// `None` for a byte this version does not define.
            pub fn from_type_byte(byte: u8) -> Option<(Self, bool)> {
                if let Some(kind) = Self::from_wire(byte) {
                    return Some((kind, false));
                }
                Self::from_wire(byte & !COMPRESSED_TYPE_BIT)
                    .filter(|kind| byte & COMPRESSED_TYPE_BIT != 0 && kind.allows_compression())
                    .map(|kind| (kind, true))
            }

            /// Which end may send this message.
            pub fn sender(self) -> Role {
                match self {
                    $( Self::$name => Role::$role, )+
                }
            }

            /// The message's name, as used in `PROTOCOL.md` and error texts.
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$name => stringify!($name), )+
                }
            }
        }

        /// One pushwire message: the content of one frame.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message {
            $( $(#[$meta])* $name($name), )+
        }

        impl Message {
            /// The message's kind.
            pub fn kind(&self) -> MessageKind {
                match self {
                    $( Message::$name(_) => MessageKind::$name, )+
                }
            }

            /// Size of the whole frame this message encodes to, header included.
            pub fn encoded_len(&self) -> usize {
                FRAME_HEADER_LEN + match self {
                    $( Message::$name(m) => m.body_len(), )+
                }
            }

            /// Size of the frame minus the 4-byte length prefix: the value compared
            /// with a peer's frame limit.
            pub fn frame_size(&self) -> usize {
                self.encoded_len() - 4
            }

            /// The frame's type byte: the kind's code, with [`COMPRESSED_TYPE_BIT`] for
            /// a compressed payload.
            pub fn type_byte(&self) -> u8 {
                match self {
                    $( Message::$name(m) => MessageKind::$name as u8 | m.type_bits(), )+
                }
            }

            /// Whether the message carries a compressed payload.
            pub fn is_compressed(&self) -> bool {
                self.type_byte() & COMPRESSED_TYPE_BIT != 0
            }

            /// Appends the whole frame (header and body) to `out`.
            ///
            /// Encoding never fails: texts and lists over their limits are a caller bug,
            /// caught by assertions in debug builds and clamped in release builds so
            /// the frame stays decodable. Check [`Message::frame_size`] against the
            /// peer's frame limit before sending a large payload.
            pub fn encode(&self, out: &mut BytesMut) {
                out.reserve(self.encoded_len());
                match self {
                    $( Message::$name(m) => {
                        put_header_byte(out, MessageKind::$name as u8 | m.type_bits(), m.body_len());
                        m.encode_body(out);
                    } )+
                }
            }

            /// Decodes a message from a frame's type byte and body (a type byte without
            /// [`COMPRESSED_TYPE_BIT`]; see [`Message::decode_frame`] for the others).
            pub fn decode(kind: MessageKind, body: Bytes) -> Result<Message, DecodeError> {
                Self::decode_reusing(kind, body, &mut Vec::new())
            }

            /// Like [`Message::decode`], but a group list in the message takes its
            /// storage from `spare`, which is then left empty without capacity (as it
            /// may be after an error); a message without a group list leaves `spare`
            /// as it was. A receiver that hands each list back as the next `spare`
            /// decodes group lists without allocating.
            pub fn decode_reusing(
                kind: MessageKind,
                body: Bytes,
                spare: &mut Vec<GroupId>,
            ) -> Result<Message, DecodeError> {
                Self::decode_frame(kind, false, body, spare)
            }

            /// Like [`Message::decode_reusing`], for a type byte that may carry
            /// [`COMPRESSED_TYPE_BIT`] (`compressed`, as
            /// [`MessageKind::from_type_byte`] splits it): the payload field then
            /// starts with the compression header. Only the kinds that
            /// [`allow compression`](MessageKind::allows_compression) read it; for the
            /// others the flag is ignored (the frame decoder never sets it for them).
            pub fn decode_frame(
                kind: MessageKind,
                compressed: bool,
                body: Bytes,
                spare: &mut Vec<GroupId>,
            ) -> Result<Message, DecodeError> {
                let compressed = compressed && kind.allows_compression();
                let mut r = Reader::with_spare(kind, body, std::mem::take(spare), compressed);
                let message = match kind {
                    $( MessageKind::$name => Message::$name($name::decode_body(&mut r)?), )+
                };
                *spare = r.take_spare();
                r.finish()?;
                Ok(message)
            }
        }

        $(
            impl From<$name> for Message {
                fn from(m: $name) -> Message {
                    Message::$name(m)
                }
            }
        )+
    };
}

messages! {
    /// Client greeting: versions, credentials, options, optional resume.
    Hello = 0x01, Client;
    /// Server accepts the Hello.
    Welcome = 0x02, Server;
    /// Server refuses the Hello; the connection closes after it.
    Refused = 0x03, Server;
    /// An RPC call.
    Request = 0x10, Client;
    /// The result of an RPC call.
    Response = 0x11, Server;
    /// An RPC call failed on the server.
    ServerError = 0x12, Server;
    /// The requests that follow, up to BatchCommit, form a batch.
    BatchBegin = 0x13, Client;
    /// Ends a batch.
    BatchCommit = 0x14, Client;
    /// Version 3: drop or stop a request.
    Cancel = 0x15, Client;
    /// Join chat groups.
    Subscribe = 0x20, Client;
    /// Leave chat groups, or all of them.
    Unsubscribe = 0x21, Client;
    /// Publish a payload to chat groups.
    Publish = 0x22, Client;
    /// Send a payload to every connection of one user.
    SendUserMessage = 0x23, Client;
    /// Ask for the server's chat groups.
    ListGroups = 0x24, Client;
    /// A connection joined groups (presence).
    Subscribed = 0x30, Server;
    /// A connection left groups (presence).
    Unsubscribed = 0x31, Server;
    /// A publication to groups the receiver belongs to.
    Published = 0x32, Server;
    /// A one-to-one message.
    UserMessage = 0x33, Server;
    /// Push events in a range of sequence numbers were lost.
    Gap = 0x34, Server;
    /// The session the client asked to resume does not exist any more.
    SessionLost = 0x35, Server;
    /// A push command was refused, wholly or partly.
    PushRejected = 0x36, Server;
    /// How many connections a user message reached.
    UserMessageDelivered = 0x37, Server;
    /// The server's chat groups.
    GroupList = 0x38, Server;
    /// Version 2: the server ran the connection's push commands up to an id.
    PushTaken = 0x39, Server;
    /// Keep-alive probe.
    Ping = 0x40, Either;
    /// Keep-alive answer.
    Pong = 0x41, Either;
    /// Orderly close with a reason.
    Close = 0x42, Either;
    /// The client has received every push event up to a sequence number.
    Ack = 0x43, Client;
}

impl MessageKind {
    /// Whether a frame of this kind may carry a compressed payload (protocol version
    /// 3): Publish, SendUserMessage, Published and UserMessage.
    pub fn allows_compression(self) -> bool {
        matches!(
            self,
            MessageKind::Publish
                | MessageKind::SendUserMessage
                | MessageKind::Published
                | MessageKind::UserMessage
        )
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for &kind in MessageKind::ALL {
            assert!(seen.insert(kind as u8), "duplicate code for {kind}");
            assert_eq!(MessageKind::from_wire(kind as u8), Some(kind));
        }
        assert_eq!(MessageKind::from_wire(0x00), None);
        assert_eq!(MessageKind::from_wire(0xff), None);
    }

    #[test]
    fn only_the_four_payload_messages_take_the_compressed_bit() {
        for &kind in MessageKind::ALL {
            let flagged = kind as u8 | COMPRESSED_TYPE_BIT;
            let expected = kind.allows_compression().then_some((kind, true));
            assert_eq!(MessageKind::from_type_byte(flagged), expected, "{kind}");
            assert_eq!(MessageKind::from_type_byte(kind as u8), Some((kind, false)));
        }
        let compressible: Vec<u8> = MessageKind::ALL
            .iter()
            .filter(|k| k.allows_compression())
            .map(|&k| k as u8 | COMPRESSED_TYPE_BIT)
            .collect();
        assert_eq!(compressible, [0xa2, 0xa3, 0xb2, 0xb3]);
    }
}
