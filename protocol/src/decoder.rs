//! Streaming frame decoder.

use crate::error::DecodeError;
use crate::frame::{Message, MessageKind, FRAME_HEADER_LEN};
use crate::limits::FrameLimits;
use crate::push::GroupId;
use bytes::{Buf, BytesMut};

/// Most capacity [`FrameDecoder::feed`] reserves ahead of a frame's needs.
const MAX_CHUNK_RESERVE: usize = 64 * 1024;

/// Turns a byte stream, cut anywhere, into [`Message`]s.
///
/// Calling contract:
/// 1. [`feed`](Self::feed) a chunk; it accepts as many bytes as it may buffer and
///    returns that count.
/// 2. Call [`next_message`](Self::next_message) until it returns `Ok(None)`.
/// 3. Feed the rest of the chunk, if any, and repeat.
///
/// The decoder never holds more than the 4-byte length prefix plus the frame limit,
/// whatever the peer sends: the length prefix is checked against the limit as soon as
/// its four bytes arrive, before the frame's body is buffered. Decoded payloads and texts
/// are views into the decoder's buffer: nothing is copied after `feed`.
///
/// After an error the stream has lost its framing: the same error is returned on every
/// later call, and the connection must be closed (see [`DecodeError::close_code`]).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    limits: FrameLimits,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    /// A decoder that accepts frames up to `limits`.
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            buf: BytesMut::new(),
            limits,
            failed: None,
        }
    }

    /// The decoder's limits.
    pub fn limits(&self) -> FrameLimits {
        self.limits
    }

    /// Bytes buffered and not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Largest number of bytes the decoder ever buffers.
    pub fn capacity_limit(&self) -> usize {
        4 + self.limits.max_frame_size() as usize
    }

    /// Gives back the buffer's memory when no partial frame is held (a burst may
    /// have grown it to 64 KiB). For connections found idle; a busy one would
    /// only allocate it again.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Bytes of buffer capacity held, however much of it is in use.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Buffers `data` up to the end of the current frame; returns how many bytes it
    /// took. It takes nothing while a complete frame is waiting to be drained, after a
    /// header over the limit, or after an error.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        // Room for the whole chunk at once: it is usually many small frames, which
        // the caller feeds one by one. Growing per frame instead cost an allocation
        // (and a copy) every few frames, since split-off frames pin the old buffer.
        let wanted = data.len().min(MAX_CHUNK_RESERVE);
        if self.buf.capacity() - self.buf.len() < wanted {
            self.buf.reserve(wanted);
        }
        // The common case, a frame starting at a frame boundary: one copy, sized from
        // the length prefix in `data` (the same bytes `room` would allow, in one go).
        if self.buf.is_empty() && data.len() >= 4 {
            let declared = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let frame = if declared == 0 || declared > self.limits.max_frame_size() {
                FRAME_HEADER_LEN
            } else {
                4 + declared as usize
            };
            let take = frame.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            return take;
        }
        let mut taken = 0;
        // Two rounds at most: the rest of the header, then the rest of the frame it
        // announces (if the announced length is acceptable).
        loop {
            let take = self.room().min(data.len() - taken);
            if take == 0 {
                return taken;
            }
            self.buf.extend_from_slice(&data[taken..taken + take]);
            taken += take;
        }
    }

    /// How many more bytes `feed` would accept now.
    ///
    /// Until the current frame's header is complete the decoder takes only the header;
    /// then exactly the rest of that frame. A peer therefore cannot make it buffer more
    /// than one frame, and a frame over the limit is refused before its body arrives.
    fn room(&self) -> usize {
        if self.buf.len() < 4 {
            return FRAME_HEADER_LEN - self.buf.len();
        }
        let declared = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if declared == 0 || declared > self.limits.max_frame_size() {
            // The next call to next_message reports the error.
            return 0;
        }
        (4 + declared as usize).saturating_sub(self.buf.len())
    }

    /// The next complete message, `Ok(None)` when more bytes are needed, or the error
    /// that ends the connection.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        let Some(frame) = self.next_frame()? else {
            return Ok(None);
        };
        frame.decode().map(Some).map_err(|e| self.fail(e))
    }

    /// The next complete frame, undecoded. Its body is uniquely owned, so a caller can
    /// decode it from a buffer of its choosing and wipe the original (the server does
    /// this for the Hello, which carries a password). A body that then fails to decode
    /// is the caller's to handle: the decoder itself stays usable, but the connection
    /// should be closed as for any [`DecodeError`].
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.try_split().map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.failed = Some(e.clone());
        self.buf = BytesMut::new();
        e
    }

    fn try_split(&mut self) -> Result<Option<RawFrame>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if length == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        let max = self.limits.max_frame_size();
        if length > max {
            return Err(DecodeError::FrameTooLarge { length, max });
        }
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let code = self.buf[4];
        let (kind, compressed) =
            MessageKind::from_type_byte(code).ok_or(DecodeError::UnknownMessageType(code))?;
        let total = 4 + length as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let mut body = self.buf.split_to(total);
        body.advance(FRAME_HEADER_LEN);
        Ok(Some(RawFrame {
            kind,
            compressed,
            body,
        }))
    }
}

/// One complete frame whose body has not been decoded yet.
#[derive(Debug)]
pub struct RawFrame {
    /// The message type.
    pub kind: MessageKind,
    /// The type byte carried [`COMPRESSED_TYPE_BIT`](crate::COMPRESSED_TYPE_BIT): the
    /// payload is compressed (only ever set for the kinds that
    /// [allow it](MessageKind::allows_compression)).
    pub compressed: bool,
    /// The body, after the header; decode it with [`RawFrame::decode`].
    pub body: BytesMut,
}

impl RawFrame {
    /// Decodes the frame as its message.
    pub fn decode(self) -> Result<Message, DecodeError> {
        self.decode_reusing(&mut Vec::new())
    }

    /// Decodes the frame as its message, a group list taking its storage from
    /// `spare` (see [`Message::decode_reusing`]).
    pub fn decode_reusing(self, spare: &mut Vec<GroupId>) -> Result<Message, DecodeError> {
        Message::decode_frame(self.kind, self.compressed, self.body.freeze(), spare)
    }
}
