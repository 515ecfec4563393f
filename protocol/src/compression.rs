//! Compressed payloads (protocol version 3, `PROTOCOL.md` section 3.1).
//!
//! A publisher may compress the payload of a Publish or SendUserMessage; the server
//! forwards the compressed bytes untouched in the Published or UserMessage frames of
//! the receivers that accept them, so a publication is still encoded once for all of
//! them. On the wire, bit [`COMPRESSED_TYPE_BIT`] of the frame's type byte marks such
//! a frame, and its `payload` field starts with a 5-byte header (algorithm, original
//! length) before the compressed bytes. In the message structs this is the
//! `compression` field, with `payload` holding the compressed bytes.
//!
//! The functions here are pure. [`decompress`] checks the declared size against the
//! caller's limit before it allocates anything, so a small frame cannot make a
//! receiver allocate a large buffer (a "compression bomb").

use bytes::Bytes;
use std::fmt;
use thiserror::Error;

/// Bit of the frame's type byte that marks a compressed payload. Allowed only on
/// Publish, SendUserMessage, Published and UserMessage.
pub const COMPRESSED_TYPE_BIT: u8 = 0x80;

/// Bytes of the header a compressed payload starts with: `algorithm: u8`, then
/// `original_len: u32`.
pub const COMPRESSION_HEADER_LEN: usize = 5;

/// A compression algorithm, as its code on the wire. Unlike the code tables of
/// section 10.1 this table is closed: a frame naming another algorithm cannot be
/// understood and is refused (`InvalidValue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CompressionAlgorithm {
    /// Code 1: one LZ4 block (the LZ4 block format, no frame header, no checksum).
    Lz4Block,
}

impl CompressionAlgorithm {
    /// The algorithm's code on the wire.
    pub fn to_wire(self) -> u8 {
        match self {
            CompressionAlgorithm::Lz4Block => 1,
        }
    }

    /// The algorithm a wire code names, if any.
    pub fn from_wire(code: u8) -> Option<Self> {
        match code {
            1 => Some(CompressionAlgorithm::Lz4Block),
            _ => None,
        }
    }
}

impl fmt::Display for CompressionAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompressionAlgorithm::Lz4Block => "LZ4 block",
        })
    }
}

/// How a message's payload is compressed: the header in front of the compressed
/// bytes. With it, the message's `payload` holds the compressed bytes (without this
/// header) and decompresses to exactly `original_len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Compression {
    /// The algorithm.
    pub algorithm: CompressionAlgorithm,
    /// Size of the payload once decompressed, in bytes.
    pub original_len: u32,
}

/// A payload in compressed form: its header and the compressed bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompressedPayload {
    /// Algorithm and decompressed size.
    pub compression: Compression,
    /// The compressed bytes.
    pub data: Bytes,
}

impl CompressedPayload {
    /// Bytes this form takes in a frame's `payload` field, header included.
    pub fn wire_len(&self) -> usize {
        COMPRESSION_HEADER_LEN + self.data.len()
    }
}

/// Why a compressed payload could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompressionError {
    /// The declared decompressed size is over the receiver's limit: refused before
    /// anything was allocated or decompressed (a compression bomb, or just too large).
    #[error(
        "the payload would decompress to {original_len} bytes, over the limit of {limit} bytes"
    )]
    TooLarge {
        /// The declared decompressed size.
        original_len: u32,
        /// The receiver's limit.
        limit: usize,
    },
    /// The compressed bytes are not valid for the algorithm, or do not decompress to
    /// exactly the declared size.
    #[error("corrupt {algorithm} payload: {problem} (declared {original_len} bytes decompressed)")]
    Corrupt {
        /// The algorithm named in the header.
        algorithm: CompressionAlgorithm,
        /// The declared decompressed size.
        original_len: u32,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Compresses `payload` with `algorithm`. `None` when the payload is longer than a
/// `u32` can declare (no frame carries that much). The result may be larger than
/// the payload (incompressible data): callers that send it should check.
pub fn compress(algorithm: CompressionAlgorithm, payload: &[u8]) -> Option<CompressedPayload> {
    let mut data = Vec::new();
    let compression = compress_into(algorithm, payload, &mut data)?;
    Some(CompressedPayload {
        compression,
        data: Bytes::from(data),
    })
}

/// Compresses `payload` with `algorithm` into `out` (cleared first, then holding the
/// compressed bytes), so a sender can reuse one buffer. `None` when the payload is
/// longer than a `u32` can declare.
pub fn compress_into(
    algorithm: CompressionAlgorithm,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Option<Compression> {
    let original_len = u32::try_from(payload.len()).ok()?;
    match algorithm {
        CompressionAlgorithm::Lz4Block => {
            out.clear();
            out.resize(lz4_flex::block::get_maximum_output_size(payload.len()), 0);
            let written = lz4_flex::block::compress_into(payload, out)
                .expect("the output has the maximum compressed size");
            out.truncate(written);
        }
    }
    Some(Compression {
        algorithm,
        original_len,
    })
}

/// Decompresses `data`, which `compression` describes, refusing a declared size over
/// `limit` bytes before allocating. Succeeds only if the data decompresses to
/// exactly the declared size.
pub fn decompress(
    compression: Compression,
    data: &[u8],
    limit: usize,
) -> Result<Bytes, CompressionError> {
    let Compression {
        algorithm,
        original_len,
    } = compression;
    let len = usize::try_from(original_len).unwrap_or(usize::MAX);
    if len > limit {
        return Err(CompressionError::TooLarge {
            original_len,
            limit,
        });
    }
    let corrupt = |problem| CompressionError::Corrupt {
        algorithm,
        original_len,
        problem,
    };
    match algorithm {
        CompressionAlgorithm::Lz4Block => {
            let mut out = vec![0u8; len];
            // The output slice is exactly the declared size: data that would produce
            // more fails inside the decoder instead of growing the buffer.
            let written = lz4_flex::block::decompress_into(data, &mut out).map_err(|e| {
                corrupt(match e {
                    lz4_flex::block::DecompressError::OutputTooSmall { .. } => {
                        "it decompresses to more than the declared size"
                    }
                    lz4_flex::block::DecompressError::OffsetZero
                    | lz4_flex::block::DecompressError::OffsetOutOfBounds => {
                        "a match refers outside the data decompressed so far"
                    }
                    _ => "the LZ4 block ends in the middle of a sequence",
                })
            })?;
            if written != len {
                return Err(corrupt("it decompresses to fewer bytes than declared"));
            }
            Ok(Bytes::from(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_gives_the_payload_back() {
        let payload = b"hello hello hello hello hello hello hello".repeat(20);
        let c = compress(CompressionAlgorithm::Lz4Block, &payload).unwrap();
        assert!(c.data.len() < payload.len());
        assert_eq!(c.compression.original_len as usize, payload.len());
        assert_eq!(
            decompress(c.compression, &c.data, payload.len()).unwrap(),
            payload
        );
    }

    #[test]
    fn an_empty_payload_round_trips() {
        let c = compress(CompressionAlgorithm::Lz4Block, b"").unwrap();
        assert_eq!(decompress(c.compression, &c.data, 0).unwrap(), Bytes::new());
    }

    #[test]
    fn a_declared_size_over_the_limit_is_refused_before_decompressing() {
        let compression = Compression {
            algorithm: CompressionAlgorithm::Lz4Block,
            original_len: u32::MAX,
        };
        assert_eq!(
            decompress(compression, &[0xff; 3], 1 << 20),
            Err(CompressionError::TooLarge {
                original_len: u32::MAX,
                limit: 1 << 20
            })
        );
    }

    #[test]
    fn a_wrong_declared_size_is_corrupt() {
        let payload = vec![7u8; 1000];
        let c = compress(CompressionAlgorithm::Lz4Block, &payload).unwrap();
        for declared in [999, 1001, 0] {
            let compression = Compression {
                original_len: declared,
                ..c.compression
            };
            assert!(
                matches!(
                    decompress(compression, &c.data, 1 << 20),
                    Err(CompressionError::Corrupt { .. })
                ),
                "declared {declared}"
            );
        }
    }

    #[test]
    fn algorithm_codes_are_frozen() {
        assert_eq!(CompressionAlgorithm::Lz4Block.to_wire(), 1);
        assert_eq!(
            CompressionAlgorithm::from_wire(1),
            Some(CompressionAlgorithm::Lz4Block)
        );
        for code in [0, 2, 0x80, 0xff] {
            assert_eq!(CompressionAlgorithm::from_wire(code), None);
        }
    }
}
