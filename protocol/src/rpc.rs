//! Requests, their results, and batches (SocketPro's SendRequest, StartBatching and
//! CommitBatching).

use crate::codes::ErrorCode;
use crate::error::DecodeError;
use crate::frame::Body;
use crate::limits::MAX_TEXT_BYTES;
use crate::text::Text;
use crate::wire::{put_text, text_len, Reader};
use bytes::{BufMut, Bytes, BytesMut};

/// An RPC call. The payload is the rest of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the client, unique among its outstanding requests.
    pub request_id: u64,
    /// Method of the connection's service.
    pub method_id: u32,
    /// Arguments, opaque to the protocol.
    pub payload: Bytes,
}

impl Body for Request {
    fn body_len(&self) -> usize {
        8 + 4 + self.payload.len()
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.request_id);
        out.put_u32(self.method_id);
        out.put_slice(&self.payload);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Request {
            request_id: r.u64("request_id")?,
            method_id: r.u32("method_id")?,
            payload: r.rest(),
        })
    }
}

/// A successful result. The payload is the rest of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The request this answers.
    pub request_id: u64,
    /// Result, opaque to the protocol.
    pub payload: Bytes,
}

impl Body for Response {
    fn body_len(&self) -> usize {
        8 + self.payload.len()
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.request_id);
        out.put_slice(&self.payload);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Response {
            request_id: r.u64("request_id")?,
            payload: r.rest(),
        })
    }
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The request this answers.
    pub request_id: u64,
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: Text,
}

impl Body for ServerError {
    fn body_len(&self) -> usize {
        8 + 4 + text_len(&self.message, MAX_TEXT_BYTES)
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.request_id);
        out.put_u32(self.code.to_wire());
        put_text(out, &self.message, MAX_TEXT_BYTES);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ServerError {
            request_id: r.u64("request_id")?,
            code: ErrorCode::from_wire(r.u32("code")?),
            message: r.text("message", MAX_TEXT_BYTES)?,
        })
    }
}

/// Opens a batch: the requests up to the next BatchCommit belong to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchBegin;

impl Body for BatchBegin {
    fn body_len(&self) -> usize {
        0
    }

    fn encode_body(&self, _out: &mut BytesMut) {}

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let _ = r;
        Ok(BatchBegin)
    }
}

/// Closes a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchCommit {
    /// Ask the server to hold the batch's results and return them together, in one
    /// transmit (SocketPro's `CommitBatching(true)`).
    pub server_batching: bool,
}

impl Body for BatchCommit {
    fn body_len(&self) -> usize {
        1
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.server_batching.into());
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(BatchCommit {
            server_batching: r.bool("server_batching")?,
        })
    }
}

/// Version 3: asks the server to drop a request that has not started, or to signal
/// a running one that the client no longer wants its result. The request still ends
/// exactly once: with a ServerError `Cancelled`, or with its result when the cancel
/// came too late (or the handler did not stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancel {
    /// The request concerned.
    pub request_id: u64,
}

impl Body for Cancel {
    fn body_len(&self) -> usize {
        8
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.request_id);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Cancel {
            request_id: r.u64("request_id")?,
        })
    }
}
