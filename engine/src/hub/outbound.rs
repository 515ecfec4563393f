//! A connection's queue of encoded push frames waiting to be written, with the
//! slow-consumer policy that keeps it bounded whatever the client does.

use super::EventForm;
use bytes::BytesMut;
use pushwire_protocol::{Gap, Message, MessageKind, PushRejected, RejectCode, Text};
use std::collections::VecDeque;

/// Bytes of a frame's length field.
const LENGTH_LEN: usize = pushwire_protocol::FRAME_HEADER_LEN - 1;

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
    /// The backlog was already at the limit with [`SlowConsumerPolicy::Disconnect`]:
    /// close the connection.
    OverLimit,
}

/// A queued frame, tracked only under [`SlowConsumerPolicy::DropOldest`] (which must
/// find the oldest push events to drop).
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The push event's sequence number; `None` for command answers and notices.
    seq: Option<u64>,
    len: usize,
    /// Dropped by policy: its bytes stay in the buffer until the next take or
    /// compaction, and it is not sent.
    dropped: bool,
}

/// Where the Gap notice for dropped events goes, and what it covers. Drops always
/// take the oldest push event still queued, so between two takes the dropped
/// sequence numbers are one contiguous range and one notice covers them.
#[derive(Debug, Clone, Copy)]
struct Placeholder {
    /// Index in `entries` of the first dropped frame: the notice stands in its
    /// place, so notices queued before it (a resume's own Gap, say) still come first.
    at: usize,
    first: u64,
    last: u64,
}

/// Encoded frames for one connection, oldest first, bounded by bytes.
///
/// Frames are encoded back to back into one buffer: queuing a frame is a copy into
/// it (no allocation per frame, no reference counts), and taking everything hands
/// the buffer over without copying when nothing was dropped.
///
/// Calling contract: push every frame for the connection (the hub's deliveries with
/// [`push_delivery`](Self::push_delivery), other messages with
/// [`push_message`](Self::push_message)); when the transport can take more,
/// [`take_frames`](Self::take_frames) everything queued and write it.
#[derive(Debug)]
pub struct OutboundQueue {
    buf: BytesMut,
    /// The frames in `buf`, in order; kept only under the drop-oldest policy.
    entries: VecDeque<Entry>,
    /// No entry before this index is a push event still queued.
    oldest_candidate: usize,
    placeholder: Option<Placeholder>,
    /// Bytes of dropped frames still in `buf`.
    dead: usize,
    /// Bytes of frames queued and not dropped: what the limit applies to.
    bytes: usize,
    limit: usize,
    policy: SlowConsumerPolicy,
    /// Frames dropped in total.
    dropped_total: u64,
    /// Gap notices the drops made (one per run of drops between two takes).
    gaps_total: u64,
    /// The form the connection takes events in: whether deliveries of payloads that
    /// came compressed are queued in the sender's compressed form, whether senders
    /// name their cluster node.
    form: EventForm,
    /// Version 4: the largest frame size the client accepts; `None`: no limit of
    /// its own announced.
    max_frame: Option<usize>,
    /// Frames over `max_frame` replaced by a Gap or a PushRejected.
    replaced_total: u64,
}

impl OutboundQueue {
    /// An empty queue whose backlog is bounded by `limit` bytes: under the disconnect
    /// policy a frame is refused (`OverLimit`) when the queue already holds `limit`
    /// bytes, so it holds at most `limit` plus one frame.
    pub fn new(limit: usize, policy: SlowConsumerPolicy) -> Self {
        Self {
            buf: BytesMut::new(),
            entries: VecDeque::new(),
            oldest_candidate: 0,
            placeholder: None,
            dead: 0,
            bytes: 0,
            limit,
            policy,
            dropped_total: 0,
            gaps_total: 0,
            form: EventForm::PLAIN,
            max_frame: None,
            replaced_total: 0,
        }
    }

    /// Version 4: the largest frame size (type byte plus body) the connection's
    /// client accepts, from its Hello (`None`: unlimited, as before). From then on a
    /// frame over it is never queued: a push event (Published, UserMessage,
    /// Subscribed, Unsubscribed) is replaced by a Gap covering its sequence number,
    /// so the receiver knows it missed it (never silent loss) and stays connected;
    /// a command answer (GroupList, PushRejected) by a short PushRejected with
    /// `RejectCode::AnswerTooLarge` for the same command.
    pub fn set_max_frame_size(&mut self, max: Option<u32>) {
        self.max_frame = max.map(|m| m as usize);
    }

    /// Frames replaced because they exceeded the client's frame limit.
    pub fn replaced_total(&self) -> u64 {
        self.replaced_total
    }

    /// Sets the form the connection takes events in, from its Hello and version
    /// ([`EventForm::for_connection`]; [`EventForm::PLAIN`] until set): from then on,
    /// deliveries of payloads that came compressed are queued compressed, as the
    /// sender sent them, if the form says so, and senders keep their cluster node
    /// only if it says so.
    pub fn set_event_form(&mut self, form: EventForm) {
        self.form = form;
    }

    /// The form deliveries are queued in.
    pub fn event_form(&self) -> EventForm {
        self.form
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of buffer capacity held, in use or not (memory accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity() + self.entries.capacity() * std::mem::size_of::<Entry>()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0 && self.placeholder.is_none()
    }

    /// Push events dropped so far under [`SlowConsumerPolicy::DropOldest`].
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Gap notices those drops made: one per run of dropped events between two
    /// takes, each telling the receiver the range it lost.
    pub fn gaps_total(&self) -> u64 {
        self.gaps_total
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
        self.encode(seq, message.encoded_len(), |out| message.encode(out))
    }

    /// Encodes and queues a hub event.
    pub fn push_event(&mut self, event: &super::PushEvent, frame_len: usize) -> Queued {
        self.encode(event.seq(), frame_len, |out| event.encode(out))
    }

    /// Encodes and queues one of the hub's deliveries: the fan-out path (a
    /// publication is a copy of its shared frame, no intermediate event), in the
    /// payload form the connection accepts.
    pub fn push_delivery(&mut self, delivery: &super::Delivery) -> Queued {
        let form = self.form;
        self.encode(delivery.seq(), delivery.frame_len_for(form), |out| {
            delivery.encode_for(out, form)
        })
    }

    /// Queues an encoded frame; `seq` is its push-event sequence number, if any.
    pub fn push(&mut self, seq: Option<u64>, frame: &[u8]) -> Queued {
        self.encode(seq, frame.len(), |out| out.extend_from_slice(frame))
    }

    fn encode(
        &mut self,
        seq: Option<u64>,
        len_hint: usize,
        write: impl FnOnce(&mut BytesMut),
    ) -> Queued {
        // Grow in chunks: a burst of small frames allocates rarely.
        if self.buf.capacity() - self.buf.len() < len_hint {
            self.buf.reserve(len_hint.max(16 * 1024));
        }
        let backlog = self.bytes;
        let before = self.buf.len();
        write(&mut self.buf);
        let len = self.buf.len() - before;
        if self.max_frame.is_some_and(|max| len > max + LENGTH_LEN) {
            return self.replace_oversized(seq, before);
        }
        self.bytes += len;
        if self.policy == SlowConsumerPolicy::DropOldest {
            self.entries.push_back(Entry {
                seq,
                len,
                dropped: false,
            });
        }
        if self.bytes <= self.limit {
            return Queued::Ok;
        }
        match self.policy {
            // The limit bounds the backlog: a frame that finds room is taken whole
            // even if it ends past the limit (one publication larger than the limit,
            // or a resume's Gap on top of a full replay buffer, must not cut off a
            // client that reads); the next one is not.
            SlowConsumerPolicy::Disconnect if backlog < self.limit => Queued::Ok,
            SlowConsumerPolicy::Disconnect => Queued::OverLimit,
            SlowConsumerPolicy::DropOldest => {
                self.drop_oldest_to(self.limit);
                Queued::Ok
            }
        }
    }

    /// The frame written at `before` is over the client's limit: takes it back and
    /// queues what stands for it (see [`set_max_frame_size`](Self::set_max_frame_size)).
    fn replace_oversized(&mut self, seq: Option<u64>, before: usize) -> Queued {
        let header = LENGTH_LEN;
        let frame = &self.buf[before..];
        let kind = frame.get(header).copied();
        // Every command answer starts its body with the command id.
        let command_id = frame
            .get(header + 1..header + 9)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
        let size = frame.len() - header;
        self.buf.truncate(before);
        self.replaced_total += 1;
        let limit = self.max_frame.unwrap_or_default();
        let substitute = match (seq, kind, command_id) {
            // The push event's entry keeps its sequence number: drop-oldest may
            // still shed it, and its Gap then covers this one.
            (Some(seq), _, _) => Message::Gap(Gap {
                first: seq,
                last: seq,
            }),
            (None, Some(kind), Some(command_id))
                if matches!(
                    MessageKind::from_wire(kind),
                    Some(
                        MessageKind::PushRejected
                            | MessageKind::GroupList
                            | MessageKind::UserMessageDelivered
                            | MessageKind::PushTaken
                    )
                ) =>
            {
                Message::PushRejected(PushRejected {
                    command_id,
                    code: RejectCode::AnswerTooLarge,
                    groups: Vec::new(),
                    reason: Text::from(format!(
                        "the answer ({size} bytes) exceeds your frame limit of {limit} bytes"
                    )),
                })
            }
            // Nothing else the node queues (Gap, SessionLost) comes near the least
            // frame limit; should one, it is not sent rather than break the client.
            _ => {
                debug_assert!(
                    false,
                    "a notice of {size} bytes over a frame limit of {limit}"
                );
                return Queued::Ok;
            }
        };
        self.encode(seq, 64, |out| substitute.encode(out))
    }

    /// Under [`SlowConsumerPolicy::DropOldest`], drops the oldest push events until at
    /// most `target` bytes are queued, replacing them with a Gap notice (the flow
    /// control's way to shed a receiver that made no progress). Does nothing under
    /// the disconnect policy, which keeps no frame index.
    pub fn shed_to(&mut self, target: usize) {
        if self.policy == SlowConsumerPolicy::DropOldest {
            self.drop_oldest_to(target.min(self.limit));
        }
    }

    /// Drops the oldest push events until at most `target` bytes are queued (command
    /// answers, small and owed to a request of the client, and notices stay).
    fn drop_oldest_to(&mut self, target: usize) {
        while self.bytes > target {
            let Some(i) = (self.oldest_candidate..self.entries.len())
                .find(|&i| !self.entries[i].dropped && self.entries[i].seq.is_some())
            else {
                break;
            };
            self.oldest_candidate = i + 1;
            let entry = &mut self.entries[i];
            let seq = entry.seq.expect("searched for a sequenced frame");
            entry.dropped = true;
            self.bytes -= entry.len;
            self.dead += entry.len;
            self.dropped_total += 1;
            match &mut self.placeholder {
                Some(placeholder) => placeholder.last = seq,
                None => {
                    self.gaps_total += 1;
                    self.placeholder = Some(Placeholder {
                        at: i,
                        first: seq,
                        last: seq,
                    })
                }
            }
        }
        // Dropped bytes stay in the buffer until a take; a reader that takes nothing
        // for long must not make the buffer grow past about twice the limit.
        if self.dead > self.limit {
            let live = self.collect();
            self.reset();
            self.buf = live.buf;
            self.entries = live.entries;
            self.placeholder = live.placeholder;
            self.bytes = self.buf.len();
            self.oldest_candidate = 0;
        }
    }

    /// The frames not dropped, in order, and where the Gap notice goes among them.
    fn collect(&self) -> Collected {
        let mut buf = BytesMut::with_capacity(self.bytes + 32);
        let mut entries = VecDeque::with_capacity(self.entries.len());
        let mut placeholder = None;
        let mut offset = 0;
        for (i, entry) in self.entries.iter().enumerate() {
            if let Some(p) = self.placeholder.filter(|p| p.at == i) {
                placeholder = Some(Placeholder {
                    at: entries.len(),
                    ..p
                });
            }
            if !entry.dropped {
                buf.extend_from_slice(&self.buf[offset..offset + entry.len]);
                entries.push_back(*entry);
            }
            offset += entry.len;
        }
        Collected {
            buf,
            entries,
            placeholder,
        }
    }

    /// Takes everything queued, in order, dropped events as one Gap notice. Without
    /// drops this is the queue's own buffer, handed over without a copy.
    pub fn take_frames(&mut self) -> BytesMut {
        let out = if self.placeholder.is_none() {
            // The buffer itself, not a split of it: unshared, it can become the
            // transmit buffer without a copy (plaintext mode).
            std::mem::take(&mut self.buf)
        } else {
            let live = self.collect();
            let p = live.placeholder.expect("a placeholder was set");
            let mut out = BytesMut::with_capacity(live.buf.len() + 32);
            let split_at: usize = live.entries.iter().take(p.at).map(|e| e.len).sum();
            out.extend_from_slice(&live.buf[..split_at]);
            Message::Gap(Gap {
                first: p.first,
                last: p.last,
            })
            .encode(&mut out);
            out.extend_from_slice(&live.buf[split_at..]);
            self.buf.clear();
            out
        };
        self.reset();
        out
    }

    /// Moves everything queued into `out`, in order, dropped events as a Gap notice.
    /// Returns the bytes taken (not counting the notice).
    pub fn take(&mut self, out: &mut Vec<u8>) -> usize {
        let taken = self.bytes;
        out.extend_from_slice(&self.take_frames());
        taken
    }

    /// Gives back the memory of an empty queue: the buffer's chunk (16 KiB once a
    /// frame was queued) and the frame index. For connections found idle; a busy one
    /// would only allocate them again.
    pub fn release_idle_capacity(&mut self) {
        if self.is_empty() {
            self.entries = VecDeque::new();
            self.buf = BytesMut::new();
        }
    }

    /// Forgets everything queued (the connection is gone; its session's replay
    /// buffer still holds the events).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.reset();
    }

    fn reset(&mut self) {
        self.entries.clear();
        self.oldest_candidate = 0;
        self.placeholder = None;
        self.dead = 0;
        self.bytes = 0;
    }
}

struct Collected {
    buf: BytesMut,
    entries: VecDeque<Entry>,
    placeholder: Option<Placeholder>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pushwire_protocol::{FrameDecoder, FrameLimits, Published, Sender};

    fn event(seq: u64) -> Message {
        Message::Published(Published {
            seq,
            sender: Sender::Server,
            groups: vec![],
            payload: Bytes::from(vec![0u8; 100]),
            compression: None,
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
    fn the_disconnect_policy_reports_a_frame_that_finds_the_backlog_full() {
        let len = event(1).encoded_len();
        // Room for one and a half frames: the second frame still finds room and is
        // taken whole, past the limit; the third finds the backlog full.
        let mut q = OutboundQueue::new(len + len / 2, SlowConsumerPolicy::Disconnect);
        assert_eq!(q.push_message(&event(1)), Queued::Ok);
        assert_eq!(q.push_message(&event(2)), Queued::Ok);
        assert_eq!(q.bytes(), 2 * len);
        assert_eq!(q.push_message(&event(3)), Queued::OverLimit);

        // A frame larger than the whole limit is taken by an empty queue.
        let mut q = OutboundQueue::new(len / 2, SlowConsumerPolicy::Disconnect);
        assert_eq!(q.push_message(&event(1)), Queued::Ok);
        assert_eq!(q.push_message(&event(2)), Queued::OverLimit);
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
        assert!(q.buf.capacity() > 0);
        q.release_idle_capacity();
        assert!(q.buf.capacity() > 0, "a frame is still queued");
        let mut out = Vec::new();
        q.take(&mut out);
        q.release_idle_capacity();
        assert_eq!((q.buf.capacity(), q.entries.capacity()), (0, 0));
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

    /// A frame of the model: sequence number, bytes, and the dropped range when it
    /// is a placeholder.
    type ModelFrame = (Option<u64>, Vec<u8>, Option<(u64, u64)>);

    /// The queue as first written: a list of frames, dropped events replaced by a
    /// placeholder in place of the first of them.
    #[derive(Default)]
    struct Model {
        frames: Vec<ModelFrame>,
        bytes: usize,
        dropped: u64,
    }

    impl Model {
        fn push(
            &mut self,
            seq: Option<u64>,
            frame: Vec<u8>,
            limit: usize,
            policy: SlowConsumerPolicy,
        ) -> Queued {
            let backlog = self.bytes;
            self.bytes += frame.len();
            self.frames.push((seq, frame, None));
            if self.bytes <= limit {
                return Queued::Ok;
            }
            if policy == SlowConsumerPolicy::Disconnect {
                return if backlog < limit {
                    Queued::Ok
                } else {
                    Queued::OverLimit
                };
            }
            while self.bytes > limit {
                let Some(i) = self.frames.iter().position(|f| f.0.is_some()) else {
                    break;
                };
                let seq = self.frames[i].0.unwrap();
                self.bytes -= self.frames[i].1.len();
                self.dropped += 1;
                match self.frames[..i].iter().rposition(|f| f.2.is_some()) {
                    Some(p) => {
                        self.frames[p].2.as_mut().unwrap().1 = seq;
                        self.frames.remove(i);
                    }
                    None => self.frames[i] = (None, Vec::new(), Some((seq, seq))),
                }
            }
            Queued::Ok
        }

        fn take(&mut self) -> Vec<u8> {
            let mut out = BytesMut::new();
            for (_, frame, gap) in self.frames.drain(..) {
                match gap {
                    Some((first, last)) => Message::Gap(Gap { first, last }).encode(&mut out),
                    None => out.extend_from_slice(&frame),
                }
            }
            self.bytes = 0;
            out.to_vec()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Event(usize),
        Notice(usize),
        Take,
        Clear,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (1usize..3000).prop_map(Op::Event),
            2 => (1usize..200).prop_map(Op::Notice),
            1 => Just(Op::Take),
            1 => Just(Op::Clear),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            crate::hub::model::proptest_cases(),
        ))]

        /// Same bytes out, same accounting, as the frame-list model, with drops and
        /// compaction of the buffer (frames up to 3 KB against an 8 KB limit).
        #[test]
        fn the_queue_behaves_like_a_list_of_frames(
            drop_oldest in proptest::bool::ANY,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let policy = if drop_oldest { SlowConsumerPolicy::DropOldest } else { SlowConsumerPolicy::Disconnect };
            let limit = 8 * 1024;
            let mut queue = OutboundQueue::new(limit, policy);
            let mut model = Model::default();
            let mut seq = 0u64;
            for op in ops {
                match op {
                    Op::Event(len) | Op::Notice(len) => {
                        let sequenced = matches!(op, Op::Event(_)).then(|| { seq += 1; seq });
                        let frame: Vec<u8> = (0..len).map(|i| (i as u64 ^ seq) as u8).collect();
                        let expected = model.push(sequenced, frame.clone(), limit, policy);
                        proptest::prop_assert_eq!(queue.push(sequenced, &frame), expected);
                        if expected == Queued::OverLimit {
                            queue.clear();
                            model.frames.clear();
                            model.bytes = 0;
                        }
                    }
                    Op::Take => {
                        let mut out = Vec::new();
                        queue.take(&mut out);
                        proptest::prop_assert_eq!(out, model.take());
                    }
                    Op::Clear => {
                        queue.clear();
                        model.frames.clear();
                        model.bytes = 0;
                    }
                }
                proptest::prop_assert_eq!(queue.bytes(), model.bytes);
                proptest::prop_assert_eq!(queue.dropped_total(), model.dropped);
                proptest::prop_assert!(queue.buf.len() <= 2 * limit + 3000);
            }
            proptest::prop_assert_eq!(queue.take_frames().to_vec(), model.take());
        }
    }
}
