//! Limits that bound what a peer can make us hold.

use thiserror::Error;

/// Largest frame any pushwire endpoint accepts, whatever its configuration: 16 MiB.
///
/// The frame length field is 32 bits wide; this cap keeps a misconfigured endpoint from
/// advertising (and then buffering) gigabyte frames.
pub const HARD_MAX_FRAME_SIZE: u32 = 16 * 1024 * 1024;

/// Default largest frame: 1 MiB of message type and body.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// Smallest value a frame limit may be configured to. Below this a maximal Hello
/// (255-character user id, 1 KiB password) would not fit.
pub const MIN_MAX_FRAME_SIZE: u32 = 4096;

/// A user id is at most 255 Unicode scalar values ...
pub const MAX_USER_ID_CHARS: usize = 255;

/// ... and therefore at most 1,020 bytes of UTF-8.
pub const MAX_USER_ID_BYTES: usize = MAX_USER_ID_CHARS * 4;

/// *Version 5*: largest cluster node id in a sender, in bytes (a node id is 1 to 64
/// characters of `A-Z a-z 0-9 - _ .`; decoders check only the length and UTF-8).
pub const MAX_NODE_ID_BYTES: usize = 64;

/// Largest password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Largest human-readable text: close and refusal reasons, error texts, group
/// descriptions.
pub const MAX_TEXT_BYTES: usize = 4096;

/// Largest number of group ids in one message (the count field is 16 bits wide).
pub const MAX_GROUPS_PER_MESSAGE: usize = u16::MAX as usize;

/// Frame-size limit of one endpoint, validated against [`HARD_MAX_FRAME_SIZE`].
///
/// The limit counts the message-type byte and the body, not the 4-byte length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameLimits {
    max_frame_size: u32,
}

/// A limit outside the range the protocol allows.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitError {
    /// The requested maximum frame size is outside
    /// [`MIN_MAX_FRAME_SIZE`]`..=`[`HARD_MAX_FRAME_SIZE`].
    #[error(
        "maximum frame size {requested} is outside the allowed range \
         {MIN_MAX_FRAME_SIZE}..={HARD_MAX_FRAME_SIZE} bytes"
    )]
    FrameSizeOutOfRange {
        /// The value asked for.
        requested: u32,
    },
}

impl FrameLimits {
    /// A limit of `max_frame_size` bytes per frame (type byte plus body).
    pub fn new(max_frame_size: u32) -> Result<Self, LimitError> {
        if (MIN_MAX_FRAME_SIZE..=HARD_MAX_FRAME_SIZE).contains(&max_frame_size) {
            Ok(Self { max_frame_size })
        } else {
            Err(LimitError::FrameSizeOutOfRange {
                requested: max_frame_size,
            })
        }
    }

    /// Largest accepted frame (type byte plus body), in bytes.
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// The smaller of two limits: what both ends of a connection accept.
    pub fn min(self, other: Self) -> Self {
        Self {
            max_frame_size: self.max_frame_size.min(other.max_frame_size),
        }
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_limit_range_is_enforced() {
        assert!(FrameLimits::new(MIN_MAX_FRAME_SIZE - 1).is_err());
        assert!(FrameLimits::new(HARD_MAX_FRAME_SIZE + 1).is_err());
        assert_eq!(
            FrameLimits::new(HARD_MAX_FRAME_SIZE)
                .unwrap()
                .max_frame_size(),
            HARD_MAX_FRAME_SIZE
        );
        assert_eq!(
            FrameLimits::default().max_frame_size(),
            DEFAULT_MAX_FRAME_SIZE
        );
    }

    #[test]
    fn min_picks_the_smaller_limit() {
        let small = FrameLimits::new(8192).unwrap();
        assert_eq!(FrameLimits::default().min(small), small);
        assert_eq!(small.min(FrameLimits::default()), small);
    }
}
