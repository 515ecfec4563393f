//! Keep-alive, acknowledgement and close.

use crate::codes::CloseCode;
use crate::error::DecodeError;
use crate::frame::Body;
use crate::limits::MAX_TEXT_BYTES;
use crate::text::Text;
use crate::wire::{put_text, text_len, Reader};
use bytes::{BufMut, BytesMut};

/// Keep-alive probe; the peer answers with a Pong carrying the same nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// Echoed back in the Pong.
    pub nonce: u64,
}

/// Keep-alive answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// The Ping's nonce.
    pub nonce: u64,
}

/// The client has received every push event up to `last_seq`; the server may drop
/// them from the session's replay buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Highest sequence number received.
    pub last_seq: u64,
}

macro_rules! single_u64_body {
    ($name:ident, $field:ident) => {
        impl Body for $name {
            fn body_len(&self) -> usize {
                8
            }

            fn encode_body(&self, out: &mut BytesMut) {
                out.put_u64(self.$field);
            }

            fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
                let m = $name {
                    $field: r.u64(stringify!($field))?,
                };
                Ok(m)
            }
        }
    };
}

single_u64_body!(Ping, nonce);
single_u64_body!(Pong, nonce);
single_u64_body!(Ack, last_seq);

/// Orderly close: the sender closes the connection (TLS close_notify, then the
/// transport) after this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// Why.
    pub code: CloseCode,
    /// Human-readable reason.
    pub reason: Text,
}

impl Body for Close {
    fn body_len(&self) -> usize {
        2 + text_len(&self.reason, MAX_TEXT_BYTES)
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u16(self.code.to_wire());
        put_text(out, &self.reason, MAX_TEXT_BYTES);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Close {
            code: CloseCode::from_wire(r.u16("code")?),
            reason: r.text("reason", MAX_TEXT_BYTES)?,
        })
    }
}
