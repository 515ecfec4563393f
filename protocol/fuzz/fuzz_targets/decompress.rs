//! Fuzzes decompression of compressed payloads (PROTOCOL.md section 3.1) as a
//! receiver meets them: a declared size and arbitrary data. Checks that:
//! - nothing panics;
//! - a declared size over the limit is always refused as too large;
//! - a success gives exactly the declared number of bytes, and those bytes compress
//!   and decompress back to themselves.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pushwire_protocol::{compress, decompress, Compression, CompressionAlgorithm, CompressionError};

/// A receiver's limit, small enough that the fuzzer reaches both sides of it.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((header, data)) = data.split_first_chunk::<4>() else {
        return;
    };
    let compression = Compression {
        algorithm: CompressionAlgorithm::Lz4Block,
        original_len: u32::from_be_bytes(*header),
    };
    match decompress(compression, data, LIMIT) {
        Ok(plain) => {
            assert_eq!(plain.len(), compression.original_len as usize);
            let again = compress(CompressionAlgorithm::Lz4Block, &plain).unwrap();
            assert_eq!(decompress(again.compression, &again.data, LIMIT).unwrap(), plain);
        }
        Err(CompressionError::TooLarge { .. }) => {
            assert!(compression.original_len as usize > LIMIT);
        }
        Err(CompressionError::Corrupt { .. }) => {
            assert!(compression.original_len as usize <= LIMIT);
        }
    }
});
