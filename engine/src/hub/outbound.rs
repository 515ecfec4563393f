//! A connection's queue of encoded push frames waiting to be written, with the
//! slow-consumer policy that keeps it bounded whatever the client does.

use bytes::{Bytes, BytesMut};
use pushwire_protocol::{Gap, Message};
use std::collections::VecDeque;

/// What to do when a connection's unwritten push frames exceed their limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Close the connection with `CloseCode::SlowConsumer` and keep its session: a
    /// client that catches up resumes with replay or a gap.
    #[default]
    Disconnect,
    /// Keep the connection and drop the oldest queued push events, replacing them
    /// with a Gap notice.
    DropOldest,
}

/// The result of queuing a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Within the limit (possibly after dropping old events, by policy).
    Ok,
    /// Over the limit with [`SlowConsumerPolicy::Disconnect`]: close the connection.
    OverLimit,
}

#[derive(Debug)]
struct Frame {
    seq: Option<u64>,
    bytes: Bytes,
    /// A placeholder for dropped events `first..=last`, encoded as a Gap when taken.
    /// It stands where the first of them stood, so notices queued before them
    /// (a resume's own Gap, say) still come first.
    gap: Option<(u64, u64)>,
}

/// Encoded frames for one connection, oldest first, bounded by bytes.
///
/// Calling contract: [`push`](Self::push) every frame for the connection (the hub's
/// deliveries, encoded); when the transport can take more, [`take`](Self::take)
/// everything queued into one buffer and write it.
#[derive(Debug)]
pub struct OutboundQueue {
    frames: VecDeque<Frame>,
    /// Frames are encoded here and split off, so queuing a frame allocates only when
    /// a chunk is used up.
    arena: BytesMut,
    bytes: usize,
    limit: usize,
    policy: SlowConsumerPolicy,
    /// Frames dropped in total.
    dropped_total: u64,
}

impl OutboundQueue {
    /// An empty queue holding at most `limit` bytes.
    pub fn new(limit: usize, policy: SlowConsumerPolicy) -> Self {
        Self {
            frames: VecDeque::new(),
            arena: BytesMut::new(),
            bytes: 0,
            limit,
            policy,
            dropped_total: 0,
        }
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Push events dropped so far under [`SlowConsumerPolicy::DropOldest`].
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Encodes and queues a message.
    pub fn push_message(&mut self, message: &Message) -> Queued {
        let seq = match message {
            Message::Subscribed(m) => Some(m.seq),
            Message::Unsubscribed(m) => Some(m.seq),
            Message::Published(m) => Some(m.seq),
            Message::UserMessage(m) => Some(m.seq),
            _ => None,
        };
        self.reserve(message.encoded_len());
        message.encode(&mut self.arena);
        let frame = self.arena.split().freeze();
        self.push(seq, frame)
    }

    /// Encodes and queues a hub event (the fan-out path: no intermediate message).
    pub fn push_event(&mut self, event: &super::PushEvent, frame_len: usize) -> Queued {
        self.reserve(frame_len);
        event.encode(&mut self.arena);
        let frame = self.arena.split().freeze();
        self.push(event.seq(), frame)
    }

    /// Room for a frame of `len` bytes in the arena, in chunks of at least 16 KiB.
    fn reserve(&mut self, len: usize) {
        if self.arena.capacity() < len {
            self.arena.reserve(len.max(16 * 1024));
        }
    }

    /// Queues an encoded frame; `seq` is its push-event sequence number, if any.
    pub fn push(&mut self, seq: Option<u64>, bytes: Bytes) -> Queued {
        self.bytes += bytes.len();
        self.frames.push_back(Frame {
            seq,
            bytes,
            gap: None,
        });
        if self.bytes <= self.limit {
            return Queued::Ok;
        }
        match self.policy {
            SlowConsumerPolicy::Disconnect => Queued::OverLimit,
            SlowConsumerPolicy::DropOldest => {
                while self.bytes > self.limit {
                    // The oldest push event goes; command answers (small, and owed to
                    // a request of the client) and notices stay.
                    let Some(i) = self.frames.iter().position(|f| f.seq.is_some()) else {
                        break;
                    };
                    let seq = self.frames[i].seq.expect("searched for a sequenced frame");
                    self.bytes -= self.frames[i].bytes.len();
                    self.dropped_total += 1;
                    // Extend the placeholder for the events dropped just before this
                    // one (nothing sequenced stands between), or put one in its place.
                    let previous = self.frames.iter().take(i).rposition(|f| f.gap.is_some());
                    let extends =
                        previous.filter(|&p| self.frames.range(p + 1..i).all(|f| f.seq.is_none()));
                    match extends {
                        Some(p) => {
                            let gap = self.frames[p].gap.as_mut().expect("found by gap");
                            gap.1 = seq;
                            self.frames.remove(i);
                        }
                        None => {
                            self.frames[i] = Frame {
                                seq: None,
                                bytes: Bytes::new(),
                                gap: Some((seq, seq)),
                            };
                        }
                    }
                }
                Queued::Ok
            }
        }
    }

    /// Moves everything queued into `out`, in order, dropped events as Gap notices.
    /// Returns the bytes taken.
    pub fn take(&mut self, out: &mut Vec<u8>) -> usize {
        let taken = self.bytes;
        for frame in self.frames.drain(..) {
            match frame.gap {
                Some((first, last)) => {
                    let mut gap = BytesMut::new();
                    Message::Gap(Gap { first, last }).encode(&mut gap);
                    out.extend_from_slice(&gap);
                }
                None => out.extend_from_slice(&frame.bytes),
            }
        }
        self.bytes = 0;
        taken
    }

    /// Gives back the memory of an empty queue: the arena's chunk (16 KiB once a
    /// frame was queued) and the frame list. For connections found idle; a busy one
    /// would only allocate them again.
    pub fn release_idle_capacity(&mut self) {
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
            self.arena = BytesMut::new();
        }
    }

    /// Forgets everything queued (the connection is gone; its session's replay
    /// buffer still holds the events).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushwire_protocol::{FrameDecoder, FrameLimits, Published, Sender};

    fn event(seq: u64) -> Message {
        Message::Published(Published {
            seq,
            sender: Sender::Server,
            groups: vec![],
            payload: Bytes::from(vec![0u8; 100]),
        })
    }

    fn decode(bytes: &[u8]) -> Vec<Message> {
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = decoder.feed(rest);
            rest = &rest[n..];
            while let Some(m) = decoder.next_message().unwrap() {
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn the_disconnect_policy_reports_going_over_the_limit() {
        let mut q = OutboundQueue::new(300, SlowConsumerPolicy::Disconnect);
        assert_eq!(q.push_message(&event(1)), Queued::Ok);
        assert_eq!(q.push_message(&event(2)), Queued::Ok);
        assert_eq!(q.push_message(&event(3)), Queued::OverLimit);
    }

    #[test]
    fn the_drop_oldest_policy_stays_bounded_and_announces_a_gap() {
        let mut q = OutboundQueue::new(300, SlowConsumerPolicy::DropOldest);
        for seq in 1..=10 {
            assert_eq!(q.push_message(&event(seq)), Queued::Ok);
            assert!(q.bytes() <= 300);
        }
        let mut out = Vec::new();
        q.take(&mut out);
        let messages = decode(&out);
        assert!(
            matches!(&messages[0], Message::Gap(g) if (g.first, g.last) == (1, 8)),
            "{messages:?}"
        );
        let seqs: Vec<u64> = messages[1..]
            .iter()
            .map(|m| match m {
                Message::Published(p) => p.seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [9, 10]);
        assert_eq!(q.dropped_total(), 8);
        assert!(q.is_empty());
    }

    #[test]
    fn an_idle_queue_gives_back_its_arena_and_a_busy_one_keeps_it() {
        let mut q = OutboundQueue::new(1 << 20, SlowConsumerPolicy::Disconnect);
        q.push_message(&event(1));
        assert!(q.arena.capacity() > 0);
        q.release_idle_capacity();
        assert!(q.arena.capacity() > 0, "a frame is still queued");
        let mut out = Vec::new();
        q.take(&mut out);
        q.release_idle_capacity();
        assert_eq!((q.arena.capacity(), q.frames.capacity()), (0, 0));
        // And the queue still works.
        q.push_message(&event(2));
        out.clear();
        q.take(&mut out);
        assert_eq!(decode(&out), [event(2)]);
    }

    #[test]
    fn a_notice_queued_before_dropped_events_stays_before_their_gap() {
        let mut q = OutboundQueue::new(250, SlowConsumerPolicy::DropOldest);
        q.push_message(&Message::Gap(Gap { first: 1, last: 2 }));
        for seq in 3..=6 {
            q.push_message(&event(seq));
        }
        let mut out = Vec::new();
        q.take(&mut out);
        let gaps: Vec<(u64, u64)> = decode(&out)
            .iter()
            .filter_map(|m| match m {
                Message::Gap(g) => Some((g.first, g.last)),
                _ => None,
            })
            .collect();
        assert_eq!(gaps.len(), 2);
        assert_eq!(gaps[0], (1, 2), "the earlier notice first");
        assert_eq!(gaps[1].0, 3, "then the dropped events, from the oldest");
    }
}
