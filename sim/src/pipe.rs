//! A one-way byte pipe that delivers what was written in seeded, arbitrary chunks.
//!
//! Real networks cut streams anywhere; the simulator uses this pipe between engines so
//! that every boundary case (one byte at a time, a frame split across records, many
//! frames at once) comes up, reproducibly from the seed.

use crate::rng::SimRng;

/// Bytes in flight from one endpoint to another.
#[derive(Debug)]
pub struct ChunkedPipe {
    /// Bytes written; those before `read` were delivered already. Whole-slice copies
    /// only: the simulator's own crate is not optimised in debug builds, and a
    /// byte-by-byte queue was a good part of a run's time.
    buf: Vec<u8>,
    read: usize,
    rng: SimRng,
    max_chunk: usize,
}

impl ChunkedPipe {
    /// A pipe whose chunk sizes (1 to `max_chunk`) come from `seed`.
    pub fn new(seed: u64, max_chunk: usize) -> Self {
        assert!(max_chunk > 0, "chunks must hold at least one byte");
        Self {
            buf: Vec::new(),
            read: 0,
            rng: SimRng::new(seed),
            max_chunk,
        }
    }

    /// Queues bytes for delivery.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.read == self.buf.len() {
            self.buf.clear();
            self.read = 0;
        } else if self.read > self.buf.len() / 2 {
            self.buf.drain(..self.read);
            self.read = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes written and not yet read.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.read
    }

    /// The next chunk, or `None` when nothing is in flight.
    pub fn read_chunk(&mut self) -> Option<Vec<u8>> {
        self.read_chunk_at_most(usize::MAX)
    }

    /// The next chunk, of at most `limit` bytes (a reader with a budget), or `None`
    /// when nothing is in flight or `limit` is zero.
    pub fn read_chunk_at_most(&mut self, limit: usize) -> Option<Vec<u8>> {
        if self.pending() == 0 || limit == 0 {
            return None;
        }
        let size = self.rng.range_inclusive(1, self.max_chunk as u64) as usize;
        let size = size.min(self.pending()).min(limit);
        let chunk = self.buf[self.read..self.read + size].to_vec();
        self.read += size;
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use pushwire_protocol::{FrameDecoder, FrameLimits, GroupId, Message, Ping, Publish};

    fn messages() -> Vec<Message> {
        (0..50u64)
            .map(|i| {
                if i % 3 == 0 {
                    Message::Ping(Ping { nonce: i })
                } else {
                    Message::Publish(Publish {
                        command_id: i,
                        groups: vec![GroupId(i as u32 % 4)],
                        payload: vec![i as u8; i as usize * 7].into(),
                        compression: None,
                    })
                }
            })
            .collect()
    }

    fn deliver(seed: u64) -> (Vec<Message>, Vec<usize>) {
        let mut pipe = ChunkedPipe::new(seed, 40);
        let mut wire = BytesMut::new();
        for m in messages() {
            m.encode(&mut wire);
        }
        pipe.write(&wire);
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let (mut got, mut sizes) = (Vec::new(), Vec::new());
        while let Some(chunk) = pipe.read_chunk() {
            sizes.push(chunk.len());
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let n = decoder.feed(rest);
                rest = &rest[n..];
                while let Some(m) = decoder.next_message().unwrap() {
                    got.push(m);
                }
            }
        }
        (got, sizes)
    }

    #[test]
    fn frames_survive_seeded_chunking_and_the_seed_fixes_the_cuts() {
        let (got, sizes) = deliver(42);
        assert_eq!(got, messages());
        assert!(sizes.iter().all(|&s| (1..=40).contains(&s)));
        assert!(
            sizes.contains(&1) || sizes.len() > 20,
            "chunking too coarse: {sizes:?}"
        );
        assert_eq!(deliver(42).1, sizes, "same seed, same cuts");
        assert_ne!(deliver(43).1, sizes, "another seed, other cuts");
    }
}
