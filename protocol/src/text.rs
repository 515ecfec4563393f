//! UTF-8 text that shares its bytes with the frame it was decoded from.

use bytes::Bytes;
use std::fmt;
use thiserror::Error;

/// An immutable UTF-8 string backed by [`Bytes`].
///
/// Decoding a user id or a reason text from a frame slices the frame's buffer instead
/// of allocating, and cloning a `Text` (for example the sender of a publication that
/// fans out to thousands of receivers) is a reference-count increment.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Text(Bytes);

/// Bytes that are not valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid UTF-8 at byte {valid_up_to}")]
pub struct TextError {
    /// Length of the valid prefix.
    pub valid_up_to: usize,
}

impl Text {
    /// The empty text.
    pub const fn new() -> Self {
        Self(Bytes::new())
    }

    /// Text from a `'static` string, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Validates `bytes` as UTF-8 and wraps them without copying.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, TextError> {
        // Every push event carries a sender id, usually short and ASCII: checked in a
        // fraction of the general validator's instructions.
        if bytes.is_ascii() {
            return Ok(Self(bytes));
        }
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(Self(bytes)),
            Err(e) => Err(TextError {
                valid_up_to: e.valid_up_to(),
            }),
        }
    }

    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        debug_assert!(std::str::from_utf8(&self.0).is_ok());
        // SAFETY: every constructor either validates the bytes (`from_utf8`) or takes
        // them from a `str`/`String`, and the bytes are never mutated afterwards.
        // Validating again here cost a UTF-8 pass per received sender id and per
        // encoded text, on every message.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The UTF-8 bytes, shared.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_invalid_utf8_and_keeps_valid_text() {
        assert_eq!(
            Text::from_utf8(Bytes::from_static(b"ab\xffc")),
            Err(TextError { valid_up_to: 2 })
        );
        let t = Text::from_utf8(Bytes::from_static("grüße".as_bytes())).unwrap();
        assert_eq!(t, "grüße");
        assert_eq!(t.len(), 7);
        assert_eq!(Text::from("x").to_string(), "x");
    }
}
