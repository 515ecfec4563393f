//! Decoding errors: each names what is wrong and where.

use crate::codes::CloseCode;
use crate::frame::MessageKind;
use thiserror::Error;

/// Why bytes from a peer could not be decoded.
///
/// Any of these ends the connection: the stream has lost framing or the peer is
/// broken or hostile. [`DecodeError::close_code`] gives the code to send in the Close
/// message before closing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The length prefix announces a frame larger than the limit. Nothing was
    /// allocated for it.
    #[error("frame of {length} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length (type byte plus body).
        length: u32,
        /// The decoder's limit.
        max: u32,
    },
    /// The length prefix is zero: a frame must at least carry its message type.
    #[error("empty frame: the length prefix is 0, but every frame carries a message type")]
    EmptyFrame,
    /// The message type byte is not one this version defines.
    #[error("unknown message type 0x{0:02x}")]
    UnknownMessageType(u8),
    /// The frame ended before a field was complete.
    #[error("{kind} frame truncated: it ends inside {field}")]
    Truncated {
        /// Message being decoded.
        kind: MessageKind,
        /// Field that did not fit.
        field: &'static str,
    },
    /// A text field is not valid UTF-8.
    #[error("{kind}: {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Message being decoded.
        kind: MessageKind,
        /// The text field.
        field: &'static str,
    },
    /// A field is longer than its limit.
    #[error("{kind}: {field} has length {actual}, at most {max} allowed")]
    TooLong {
        /// Message being decoded.
        kind: MessageKind,
        /// The field.
        field: &'static str,
        /// Its length (bytes, characters or entries, as the field counts).
        actual: usize,
        /// The limit.
        max: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("{kind}: {field} has invalid value {value}")]
    InvalidValue {
        /// Message being decoded.
        kind: MessageKind,
        /// The field.
        field: &'static str,
        /// The offending value.
        value: u64,
    },
    /// Bytes remain in the frame after its last field.
    #[error("{kind}: {extra} unexpected bytes after the last field")]
    TrailingBytes {
        /// Message being decoded.
        kind: MessageKind,
        /// How many bytes remain.
        extra: usize,
    },
}

impl DecodeError {
    /// The close code to report to the peer for this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            DecodeError::FrameTooLarge { .. } => CloseCode::FrameTooLarge,
            _ => CloseCode::ProtocolError,
        }
    }
}
