//! Field-level reading and writing shared by every message.
//!
//! All integers are big-endian. Texts are a `u16` byte length and UTF-8; byte strings
//! likewise; group lists are a `u16` count and `u32` ids. Every length read from the
//! wire is checked against what remains in the frame (already bounded by the frame
//! limit) and against the field's own limit before anything is allocated.

use crate::compression::{
    Compression, CompressionAlgorithm, COMPRESSED_TYPE_BIT, COMPRESSION_HEADER_LEN,
};
use crate::error::DecodeError;
use crate::frame::MessageKind;
use crate::push::GroupId;
use crate::text::Text;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Cursor over one frame's body.
pub(crate) struct Reader {
    buf: Bytes,
    kind: MessageKind,
    /// Storage for the group list, if the message has one.
    spare: Vec<GroupId>,
    /// The type byte marked a compressed payload.
    compressed: bool,
}

impl Reader {
    /// A reader whose group list, if any, reuses `spare`'s allocation; `compressed`
    /// when the frame's type byte marked a compressed payload.
    pub(crate) fn with_spare(
        kind: MessageKind,
        body: Bytes,
        spare: Vec<GroupId>,
        compressed: bool,
    ) -> Self {
        Self {
            buf: body,
            kind,
            spare,
            compressed,
        }
    }

    /// The spare storage, unless a group list took it.
    pub(crate) fn take_spare(&mut self) -> Vec<GroupId> {
        std::mem::take(&mut self.spare)
    }

    pub(crate) fn kind(&self) -> MessageKind {
        self.kind
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated {
                kind: self.kind,
                field,
            })
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64())
    }

    /// A 0/1 byte.
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.invalid(field, v.into())),
        }
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        self.need(N, field)?;
        let mut out = [0u8; N];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }

    /// `n` bytes, sharing the frame's buffer.
    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }

    /// A `u16`-length byte string of at most `max` bytes.
    pub(crate) fn short_bytes(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::TooLong {
                kind: self.kind,
                field,
                actual: len,
                max,
            });
        }
        self.bytes(len, field)
    }

    /// A `u16`-length UTF-8 text of at most `max` bytes.
    pub(crate) fn text(&mut self, field: &'static str, max: usize) -> Result<Text, DecodeError> {
        let bytes = self.short_bytes(field, max)?;
        Text::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 {
            kind: self.kind,
            field,
        })
    }

    /// A `u16` count followed by that many `u32` group ids.
    pub(crate) fn groups(&mut self, field: &'static str) -> Result<Vec<GroupId>, DecodeError> {
        let count = usize::from(self.u16(field)?);
        // Check before allocating: the count must be backed by bytes in this frame.
        self.need(count * 4, field)?;
        let mut groups = std::mem::take(&mut self.spare);
        groups.clear();
        groups.reserve_exact(count);
        for _ in 0..count {
            groups.push(GroupId(self.buf.get_u32()));
        }
        Ok(groups)
    }

    /// Everything left in the frame (the trailing payload of a message).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// A `payload` field: the rest of the frame, after the compression header when
    /// the type byte marked a compressed payload.
    pub(crate) fn payload(&mut self) -> Result<(Bytes, Option<Compression>), DecodeError> {
        if !self.compressed {
            return Ok((self.rest(), None));
        }
        let code = self.u8("compression algorithm")?;
        let algorithm = CompressionAlgorithm::from_wire(code)
            .ok_or_else(|| self.invalid("compression algorithm", code.into()))?;
        let original_len = self.u32("original_len")?;
        Ok((
            self.rest(),
            Some(Compression {
                algorithm,
                original_len,
            }),
        ))
    }

    /// Bytes left unread.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    pub(crate) fn invalid(&self, field: &'static str, value: u64) -> DecodeError {
        DecodeError::InvalidValue {
            kind: self.kind,
            field,
            value,
        }
    }

    /// Fails when bytes remain after the last field.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                kind: self.kind,
                extra: self.buf.len(),
            })
        }
    }
}

/// Largest prefix of `s` that fits in `max` bytes without splitting a character.
pub(crate) fn clamp_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Encoded size of a text clamped to `max` bytes.
pub(crate) fn text_len(t: &Text, max: usize) -> usize {
    2 + clamp_str(t.as_str(), max).len()
}

/// Writes a text clamped to `max` bytes (a caller bug caught in debug builds).
pub(crate) fn put_text(out: &mut BytesMut, t: &Text, max: usize) {
    debug_assert!(
        t.len() <= max,
        "text of {} bytes over its {max}-byte limit",
        t.len()
    );
    let s = clamp_str(t.as_str(), max);
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// Writes a byte string clamped to `max` bytes (a caller bug caught in debug builds).
pub(crate) fn put_short_bytes(out: &mut BytesMut, b: &[u8], max: usize) {
    debug_assert!(
        b.len() <= max,
        "field of {} bytes over its {max}-byte limit",
        b.len()
    );
    let b = &b[..b.len().min(max)];
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

/// Encoded size of a `payload` field holding `payload`, compressed as `compression`
/// says (its header first) or plain.
pub(crate) fn payload_len(compression: Option<Compression>, payload: &[u8]) -> usize {
    compression.map_or(0, |_| COMPRESSION_HEADER_LEN) + payload.len()
}

/// Writes a `payload` field: the compression header, if any, then the bytes.
pub(crate) fn put_payload(out: &mut BytesMut, compression: Option<Compression>, payload: &[u8]) {
    put_compression_header(out, compression);
    out.put_slice(payload);
}

/// Writes the compression header of a compressed payload (nothing for a plain one).
pub(crate) fn put_compression_header(out: &mut BytesMut, compression: Option<Compression>) {
    if let Some(c) = compression {
        out.put_u8(c.algorithm.to_wire());
        out.put_u32(c.original_len);
    }
}

/// The type byte bits of a payload compressed as `compression` says.
pub(crate) fn compression_bits(compression: Option<Compression>) -> u8 {
    compression.map_or(0, |_| COMPRESSED_TYPE_BIT)
}

/// Encoded size of a group list.
pub(crate) fn groups_len(groups: &[GroupId]) -> usize {
    2 + 4 * groups.len().min(crate::limits::MAX_GROUPS_PER_MESSAGE)
}

/// Writes a group list, at most [`crate::limits::MAX_GROUPS_PER_MESSAGE`] entries.
pub(crate) fn put_groups(out: &mut BytesMut, groups: &[GroupId]) {
    debug_assert!(groups.len() <= crate::limits::MAX_GROUPS_PER_MESSAGE);
    let groups = &groups[..groups.len().min(crate::limits::MAX_GROUPS_PER_MESSAGE)];
    out.put_u16(groups.len() as u16);
    for g in groups {
        out.put_u32(g.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_never_splits_a_character() {
        assert_eq!(clamp_str("aé", 2), "a");
        assert_eq!(clamp_str("aé", 3), "aé");
        assert_eq!(clamp_str("", 0), "");
    }

    #[test]
    fn group_count_is_checked_before_allocation() {
        // Claims 65,535 groups but carries one.
        let mut r = Reader::with_spare(
            MessageKind::Subscribe,
            Bytes::from_static(&[0xff, 0xff, 0, 0, 0, 1]),
            Vec::new(),
            false,
        );
        assert!(matches!(
            r.groups("groups"),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
