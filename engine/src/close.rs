//! Why a connection ended.

use crate::tls::{TlsError, Verdict};
use crate::web::WebError;
use pushwire_protocol::{CloseCode, CompressionError, DecodeError, RefuseCode, Text};
use std::fmt;
use thiserror::Error;

/// Which timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The TLS handshake and Hello/Welcome exchange took too long.
    Handshake,
    /// The client did not send its Hello in time (server side).
    Hello,
    /// Nothing arrived within the keep-alive timeout.
    Idle,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Handshake => "handshake",
            TimeoutKind::Hello => "Hello",
            TimeoutKind::Idle => "keep-alive",
        })
    }
}

/// Why a connection closed. Every connection ends with exactly one.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CloseReason {
    /// This end closed on purpose, telling the peer `code` and `reason`.
    #[error("closed locally ({code:?}): {reason}")]
    Local {
        /// The code sent.
        code: CloseCode,
        /// The text sent.
        reason: Text,
    },
    /// The peer closed with a Close message.
    #[error("closed by peer ({code:?}): {reason}")]
    Remote {
        /// The peer's code.
        code: CloseCode,
        /// The peer's text.
        reason: Text,
    },
    /// The server refused the client's Hello.
    #[error("refused by server ({code:?}): {reason}")]
    Refused {
        /// The server's code.
        code: RefuseCode,
        /// The server's text.
        reason: Text,
    },
    /// The client rejected the server's certificate; no credential was sent.
    #[error("server certificate rejected: {verdict:?}")]
    ServerRejected {
        /// The verifier's verdict at the time.
        verdict: Verdict,
    },
    /// The TLS layer failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// A timer expired.
    #[error("{0} timeout")]
    Timeout(TimeoutKind),
    /// The transport ended (or TLS close_notify arrived) without a Close message.
    #[error("the peer closed the connection")]
    PeerClosed,
}

impl CloseReason {
    /// The code to send to the peer for a close this end initiates.
    pub fn code(&self) -> CloseCode {
        match self {
            CloseReason::Local { code, .. } | CloseReason::Remote { code, .. } => *code,
            CloseReason::Refused { .. } => CloseCode::Normal,
            CloseReason::ServerRejected { .. } => CloseCode::ServerRejected,
            CloseReason::Tls(_) => CloseCode::ProtocolError,
            CloseReason::Protocol(p) => p.close_code(),
            CloseReason::Timeout(TimeoutKind::Hello) => CloseCode::HelloTimeout,
            CloseReason::Timeout(TimeoutKind::Handshake) => CloseCode::HandshakeTimeout,
            CloseReason::Timeout(TimeoutKind::Idle) => CloseCode::IdleTimeout,
            CloseReason::PeerClosed => CloseCode::Normal,
        }
    }
}

/// A protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// Undecodable bytes.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A compressed payload that the receiver refused: over its size limit (the
    /// receiving client's), or not decompressing to its declared size.
    #[error("compressed payload refused: {0}")]
    Compression(#[from] CompressionError),
    /// A message that is not allowed in the current state or from this side.
    #[error("unexpected {message} {context}")]
    Unexpected {
        /// The message's name.
        message: &'static str,
        /// When it arrived.
        context: &'static str,
    },
    /// A result for a request that is not the oldest outstanding one.
    #[error("result for request {got} while request {expected:?} is the oldest outstanding")]
    ResultOutOfOrder {
        /// Id in the result.
        got: u64,
        /// The oldest outstanding request, if any.
        expected: Option<u64>,
    },
    /// A request id already outstanding.
    #[error("request id {0} is already outstanding")]
    DuplicateRequest(u64),
    /// More outstanding requests than the server allows.
    #[error("more than {0} outstanding requests")]
    TooManyRequests(usize),
    /// A BatchBegin while a batch is open.
    #[error("batch nesting: BatchBegin inside an open batch")]
    NestedBatch,
    /// A browser connection's HTTP request or WebSocket framing was refused.
    #[error(transparent)]
    Web(#[from] WebError),
}

impl ProtocolError {
    /// The close code for this violation.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::Decode(d) => d.close_code(),
            ProtocolError::Web(WebError::MessageTooLarge { .. }) => CloseCode::FrameTooLarge,
            _ => CloseCode::ProtocolError,
        }
    }
}
