//! What the hub hands to the connection layer: deliveries of push events and command
//! answers, built so that a fan-out shares everything but the per-receiver part.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use pushwire_protocol::{
    CompressedPayload, GroupId, GroupList, Message, MessageKind, Published, PushRejected, Sender,
    Subscribed, Unsubscribed, UserMessage, UserMessageDelivered,
};

use super::connections::ConnectionId;

/// Bytes one group id takes in an encoded group list (a `u32`).
pub(crate) const GROUP_ID_WIRE_LEN: usize = 4;

/// Largest list that per-receiver subsets are expressed over as a bit mask.
const MASK_BITS: usize = u64::BITS as usize;

/// The groups an event concerns for its receiver, in ascending order.
///
/// Cloning is a reference-count increment: receivers of one operation share one list
/// (the publication's targets, or the groups joined or left) and a receiver that
/// belongs to only some of them carries a bit mask over the shared list, so a fan-out
/// allocates no group list per receiver. (Only when a receiver belongs to some but not
/// all of more than 64 targets does it get a list of its own.)
#[derive(Clone)]
pub struct EventGroups {
    list: Arc<[GroupId]>,
    /// `None`: all of `list`. `Some(mask)`: the entries whose bit is set; only used
    /// when `list` has at most 64 entries.
    mask: Option<u64>,
}

impl EventGroups {
    /// All of a shared list.
    pub(crate) fn whole(list: Arc<[GroupId]>) -> Self {
        Self { list, mask: None }
    }

    /// The entries of `list` at `positions` (ascending indices into `list`).
    pub(crate) fn subset(list: &Arc<[GroupId]>, positions: &[usize]) -> Self {
        if positions.len() == list.len() {
            Self::whole(list.clone())
        } else if list.len() <= MASK_BITS {
            let mask = positions.iter().fold(0u64, |mask, &i| mask | 1 << i);
            Self {
                list: list.clone(),
                mask: Some(mask),
            }
        } else {
            Self::whole(positions.iter().map(|&i| list[i]).collect())
        }
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        match self.mask {
            None => self.list.len(),
            Some(mask) => mask.count_ones() as usize,
        }
    }

    /// Whether there are no groups (never the case in a delivered event).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The groups, ascending.
    pub fn iter(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.list
            .iter()
            .enumerate()
            .filter(move |&(i, _)| self.mask.is_none_or(|mask| mask & (1 << i) != 0))
            .map(|(_, &group)| group)
    }

    /// Whether `group` is among the groups.
    pub fn contains(&self, group: GroupId) -> bool {
        self.iter().any(|g| g == group)
    }

    /// The groups in a vector of their own.
    pub fn to_vec(&self) -> Vec<GroupId> {
        self.iter().collect()
    }

    /// Calls `f` with the groups as a slice, without allocating (a subset is copied to
    /// the stack). This is the input [`pushwire_protocol::encode_published_prefix`]
    /// wants on the fan-out fast path.
    pub fn with_slice<R>(&self, f: impl FnOnce(&[GroupId]) -> R) -> R {
        match self.mask {
            None => f(&self.list),
            Some(_) => {
                let mut buffer = [GroupId(0); MASK_BITS];
                let mut len = 0;
                for group in self.iter() {
                    buffer[len] = group;
                    len += 1;
                }
                f(&buffer[..len])
            }
        }
    }

    /// Whether `self` and `other` share their underlying list (used by tests to show
    /// that a fan-out did not copy it).
    pub fn shares_list_with(&self, other: &EventGroups) -> bool {
        Arc::ptr_eq(&self.list, &other.list)
    }
}

impl From<Vec<GroupId>> for EventGroups {
    fn from(groups: Vec<GroupId>) -> Self {
        Self::whole(groups.into())
    }
}

impl PartialEq for EventGroups {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for EventGroups {}

impl fmt::Debug for EventGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// An event for one connection: a sequenced push event or the answer to one of its
/// commands. Converts to a [`Message`] with [`PushEvent::into_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    /// `sender` joined `groups` (the groups it shares with the receiver; all joined
    /// groups on the member's own, self-flagged copy).
    Subscribed {
        /// The receiver's sequence number for this event.
        seq: u64,
        /// The member whose groups changed.
        sender: Sender,
        /// Groups concerned.
        groups: EventGroups,
    },
    /// `sender` left `groups` (the groups it shared with the receiver; all groups
    /// left on the member's own, self-flagged copy).
    Unsubscribed {
        /// The receiver's sequence number for this event.
        seq: u64,
        /// The member whose groups changed.
        sender: Sender,
        /// Groups concerned.
        groups: EventGroups,
    },
    /// A publication to `groups` (the targets the receiver belongs to; all targets
    /// on the publisher's echo).
    Published {
        /// The receiver's sequence number for this event.
        seq: u64,
        /// The publisher.
        sender: Sender,
        /// Groups concerned.
        groups: EventGroups,
        /// The message, shared by every receiver (plain, whatever form it came in).
        payload: Bytes,
        /// The compressed form the publisher sent, if it sent one: forwarded as it is
        /// to receivers that accept compressed payloads.
        compressed: Option<CompressedPayload>,
    },
    /// A one-to-one message (or its echo to the sender).
    UserMessage {
        /// The receiver's sequence number for this event.
        seq: u64,
        /// Who sent it.
        sender: Sender,
        /// The message, shared by every receiver (plain, whatever form it came in).
        payload: Bytes,
        /// The compressed form the sender sent, if it sent one: forwarded as it is to
        /// receivers that accept compressed payloads.
        compressed: Option<CompressedPayload>,
    },
    /// A client command was refused, wholly or for some groups. Not sequenced.
    Rejected(PushRejected),
    /// How many connections a client's user message reached. Not sequenced.
    UserMessageDelivered(UserMessageDelivered),
    /// The answer to a client's ListGroups. Not sequenced.
    GroupList(GroupList),
    /// Events in a range of sequence numbers are lost (sent on resume when the
    /// replay buffer no longer holds them). Takes no sequence number of its own.
    Gap(pushwire_protocol::Gap),
}

impl PushEvent {
    /// The message type this event encodes as.
    pub fn kind(&self) -> MessageKind {
        match self {
            PushEvent::Subscribed { .. } => MessageKind::Subscribed,
            PushEvent::Unsubscribed { .. } => MessageKind::Unsubscribed,
            PushEvent::Published { .. } => MessageKind::Published,
            PushEvent::UserMessage { .. } => MessageKind::UserMessage,
            PushEvent::Rejected(_) => MessageKind::PushRejected,
            PushEvent::UserMessageDelivered(_) => MessageKind::UserMessageDelivered,
            PushEvent::GroupList(_) => MessageKind::GroupList,
            PushEvent::Gap(_) => MessageKind::Gap,
        }
    }

    /// The sequence number, for push events (command answers have none).
    pub fn seq(&self) -> Option<u64> {
        match self {
            PushEvent::Subscribed { seq, .. }
            | PushEvent::Unsubscribed { seq, .. }
            | PushEvent::Published { seq, .. }
            | PushEvent::UserMessage { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// The sender, for push events.
    pub fn sender(&self) -> Option<&Sender> {
        match self {
            PushEvent::Subscribed { sender, .. }
            | PushEvent::Unsubscribed { sender, .. }
            | PushEvent::Published { sender, .. }
            | PushEvent::UserMessage { sender, .. } => Some(sender),
            _ => None,
        }
    }

    fn sender_mut(&mut self) -> Option<&mut Sender> {
        match self {
            PushEvent::Subscribed { sender, .. }
            | PushEvent::Unsubscribed { sender, .. }
            | PushEvent::Published { sender, .. }
            | PushEvent::UserMessage { sender, .. } => Some(sender),
            _ => None,
        }
    }

    /// The groups, for presence events and publications.
    pub fn groups(&self) -> Option<&EventGroups> {
        match self {
            PushEvent::Subscribed { groups, .. }
            | PushEvent::Unsubscribed { groups, .. }
            | PushEvent::Published { groups, .. } => Some(groups),
            _ => None,
        }
    }

    /// The payload, for publications and user messages.
    pub fn payload(&self) -> Option<&Bytes> {
        match self {
            PushEvent::Published { payload, .. } | PushEvent::UserMessage { payload, .. } => {
                Some(payload)
            }
            _ => None,
        }
    }

    /// The compressed form the sender sent, for publications and user messages that
    /// came compressed.
    pub fn compressed(&self) -> Option<&CompressedPayload> {
        match self {
            PushEvent::Published { compressed, .. } | PushEvent::UserMessage { compressed, .. } => {
                compressed.as_ref()
            }
            _ => None,
        }
    }

    /// Appends the encoded frame to `out`, with the plain payload. A publication, the
    /// fan-out fast path, is written without building a [`Message`] (no group list
    /// allocated); the other events go through [`PushEvent::into_message`].
    pub fn encode(&self, out: &mut bytes::BytesMut) {
        self.encode_for(out, EventForm::PLAIN);
    }

    /// Appends the encoded frame to `out` in the receiver's `form`: an event that
    /// came compressed goes to a receiver that accepts compressed payloads in the
    /// sender's compressed form, untouched; a receiver that does not take senders'
    /// nodes (below version 5) gets the sender without it; everything else is
    /// encoded as by [`PushEvent::encode`].
    pub fn encode_for(&self, out: &mut bytes::BytesMut, form: EventForm) {
        if !form.sender_node && self.sender().is_some_and(|s| s.node().is_some()) {
            let mut event = self.clone();
            if let Some(sender) = event.sender_mut() {
                *sender = sender.without_node();
            }
            return event.encode_for(out, form);
        }
        let accepts_compressed = form.compressed;
        match self {
            PushEvent::Published {
                seq,
                sender,
                groups,
                payload,
                compressed,
            } => {
                let (compression, data) = payload_form(payload, compressed, accepts_compressed);
                groups.with_slice(|groups| {
                    pushwire_protocol::encode_published_prefix(
                        out,
                        *seq,
                        sender,
                        groups,
                        compression,
                        data.len(),
                    )
                });
                out.extend_from_slice(data);
            }
            PushEvent::UserMessage {
                seq,
                sender,
                payload,
                compressed,
            } => {
                let (compression, data) = payload_form(payload, compressed, accepts_compressed);
                Message::UserMessage(UserMessage {
                    seq: *seq,
                    sender: sender.clone(),
                    payload: data.clone(),
                    compression,
                })
                .encode(out)
            }
            other => other.clone().into_message().encode(out),
        }
    }

    /// The wire message, with the plain payload. Allocates the group list of presence
    /// events and publications; the payload stays shared.
    pub fn into_message(self) -> Message {
        match self {
            PushEvent::Subscribed {
                seq,
                sender,
                groups,
            } => Message::Subscribed(Subscribed {
                seq,
                sender,
                groups: groups.to_vec(),
            }),
            PushEvent::Unsubscribed {
                seq,
                sender,
                groups,
            } => Message::Unsubscribed(Unsubscribed {
                seq,
                sender,
                groups: groups.to_vec(),
            }),
            PushEvent::Published {
                seq,
                sender,
                groups,
                payload,
                compressed: _,
            } => Message::Published(Published {
                seq,
                sender,
                groups: groups.to_vec(),
                payload,
                compression: None,
            }),
            PushEvent::UserMessage {
                seq,
                sender,
                payload,
                compressed: _,
            } => Message::UserMessage(UserMessage {
                seq,
                sender,
                payload,
                compression: None,
            }),
            PushEvent::Rejected(m) => Message::PushRejected(m),
            PushEvent::UserMessageDelivered(m) => Message::UserMessageDelivered(m),
            PushEvent::GroupList(m) => Message::GroupList(m),
            PushEvent::Gap(m) => Message::Gap(m),
        }
    }
}

/// The payload field a receiver gets: the sender's compressed form when there is one
/// and the receiver accepts it, the plain payload otherwise.
fn payload_form<'a>(
    payload: &'a Bytes,
    compressed: &'a Option<CompressedPayload>,
    accepts_compressed: bool,
) -> (Option<pushwire_protocol::Compression>, &'a Bytes) {
    match compressed {
        Some(c) if accepts_compressed => (Some(c.compression), &c.data),
        _ => (None, payload),
    }
}

impl From<PushEvent> for Message {
    fn from(event: PushEvent) -> Message {
        event.into_message()
    }
}

/// Which event a [`SharedEvent`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedKind {
    Subscribed,
    Unsubscribed,
    Published,
}

/// The frame a receiver of every target of a [`SharedEvent`] gets, in one payload
/// form, with sequence number 0: such a receiver's frame is this copy with its own
/// number patched in. Encoded with the second such frame: an event with one receiver
/// is encoded directly.
#[derive(Debug, Default)]
struct FrameCache {
    frame: std::sync::OnceLock<Box<[u8]>>,
    /// A receiver's frame was encoded without the shared copy.
    encoded_once: std::sync::atomic::AtomicBool,
}

/// The form a receiving connection takes events in, from its Hello and negotiated
/// version. The hub keeps one copy of each event and writes it per receiver, so a
/// session resumed on a connection with other settings gets its replay in the form
/// that connection takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventForm {
    /// Payloads that came compressed stay compressed (the Hello asked for it, on
    /// version 3 or later); otherwise receivers get them plain.
    pub compressed: bool,
    /// Senders name their cluster node (version 5 or later); otherwise it is left
    /// out.
    pub sender_node: bool,
}

impl EventForm {
    /// Plain payloads, senders with their node: what [`Delivery::encode`] writes.
    pub const PLAIN: EventForm = EventForm {
        compressed: false,
        sender_node: true,
    };

    /// The form of a connection that negotiated `version` and asked for compressed
    /// payloads (`compression`) or not.
    pub fn for_connection(version: u16, compression: bool) -> EventForm {
        EventForm {
            compressed: compression && version >= 3,
            sender_node: version >= 5,
        }
    }
}

/// What every receiver of one fan-out (a publication, or the presence events of a
/// membership change) shares, built once per operation.
#[derive(Debug)]
pub(crate) struct SharedEvent {
    kind: SharedKind,
    sender: Sender,
    targets: Arc<[GroupId]>,
    /// The publication's payload, plain (empty for presence events).
    payload: Bytes,
    /// The compressed form the publisher sent, if it did.
    compressed: Option<CompressedPayload>,
    /// The frame in each form receivers take, indexed by [`SharedEvent::form_index`]:
    /// plain or compressed payload (compressed only when `compressed` is set), and
    /// the sender with or without its node (without only for a clustered sender and
    /// receivers below version 5). Each form is encoded at most once, however many
    /// receivers take it.
    frames: [FrameCache; 4],
}

impl SharedEvent {
    /// A publication of `payload` to `targets`; `compressed` is the form the
    /// publisher sent it in, if compressed.
    pub(crate) fn publication(
        sender: Sender,
        targets: Arc<[GroupId]>,
        payload: Bytes,
        compressed: Option<CompressedPayload>,
    ) -> Self {
        let mut event = Self::new(SharedKind::Published, sender, targets, payload);
        event.compressed = compressed;
        event
    }

    /// `sender` joined or left `groups`.
    pub(crate) fn presence(kind: SharedKind, sender: Sender, groups: Arc<[GroupId]>) -> Self {
        Self::new(kind, sender, groups, Bytes::new())
    }

    fn new(kind: SharedKind, sender: Sender, targets: Arc<[GroupId]>, payload: Bytes) -> Self {
        Self {
            kind,
            sender,
            targets,
            payload,
            compressed: None,
            frames: Default::default(),
        }
    }

    /// The event for one receiver.
    fn event(&self, seq: u64, groups: EventGroups) -> PushEvent {
        let sender = self.sender.clone();
        match self.kind {
            SharedKind::Subscribed => PushEvent::Subscribed {
                seq,
                sender,
                groups,
            },
            SharedKind::Unsubscribed => PushEvent::Unsubscribed {
                seq,
                sender,
                groups,
            },
            SharedKind::Published => PushEvent::Published {
                seq,
                sender,
                groups,
                payload: self.payload.clone(),
                compressed: self.compressed.clone(),
            },
        }
    }

    /// Appends the frame of a receiver of every target, in the compressed form when
    /// the publication has one and the receiver accepts it.
    fn encode_whole(&self, seq: u64, out: &mut bytes::BytesMut, form: EventForm) {
        use std::sync::atomic::Ordering::Relaxed;
        let (packed, strip_node) = self.form_of(form);
        let cache = &self.frames[usize::from(packed) | usize::from(strip_node) << 1];
        if cache.frame.get().is_none() && !cache.encoded_once.swap(true, Relaxed) {
            self.encode_direct(seq, out, packed, strip_node);
            return;
        }
        let frame = cache.frame.get_or_init(|| {
            let mut frame = bytes::BytesMut::new();
            self.encode_direct(0, &mut frame, packed, strip_node);
            Vec::from(frame).into_boxed_slice()
        });
        let start = out.len();
        out.extend_from_slice(frame);
        pushwire_protocol::patch_seq(&mut out[start..], seq);
    }

    /// What `form` means for this event: (the compressed payload, the sender
    /// without its node). One branch each; the plain path of a server that is not
    /// clustered stays what it was.
    fn form_of(&self, form: EventForm) -> (bool, bool) {
        (
            form.compressed && self.compressed.is_some(),
            !form.sender_node && self.sender.node().is_some(),
        )
    }

    /// Encodes the frame of a receiver of every target; `packed`: with the
    /// compressed payload (which the caller checked exists); `strip_node`: the
    /// sender without its node.
    fn encode_direct(&self, seq: u64, out: &mut bytes::BytesMut, packed: bool, strip_node: bool) {
        let stripped;
        let sender = if strip_node {
            stripped = self.sender.without_node();
            &stripped
        } else {
            &self.sender
        };
        if self.kind == SharedKind::Published {
            let (compression, data) = payload_form(&self.payload, &self.compressed, packed);
            pushwire_protocol::encode_published_prefix(
                out,
                seq,
                sender,
                &self.targets,
                compression,
                data.len(),
            );
            out.extend_from_slice(data);
        } else {
            let mut event = self.event(seq, EventGroups::whole(self.targets.clone()));
            if let Some(s) = event.sender_mut() {
                *s = sender.clone();
            }
            event.encode(out);
        }
    }
}

impl PartialEq for SharedEvent {
    fn eq(&self, other: &Self) -> bool {
        (
            self.kind,
            &self.sender,
            &self.targets,
            &self.payload,
            &self.compressed,
        ) == (
            other.kind,
            &other.sender,
            &other.targets,
            &other.payload,
            &other.compressed,
        )
    }
}

impl Eq for SharedEvent {}

/// A push event as the hub keeps and hands it out. An event of a fan-out (a
/// publication or a presence event, the paths that reach many receivers) is the
/// receiver's sequence number, the shared part and the receiver's subset of the
/// targets: 32 bytes and one reference count, whatever the sender and payload, so
/// queuing, replay and delivery move little. Other events are rarer and shared
/// behind a reference count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoredEvent {
    Shared {
        seq: u64,
        shared: Arc<SharedEvent>,
        /// Bit `i` set: the receiver gets `targets[i]`; [`StoredEvent::WHOLE`]: all of
        /// them (the only value used with more than 64 targets).
        mask: u64,
    },
    Other(Arc<PushEvent>),
}

impl StoredEvent {
    /// The mask of a receiver that belongs to every target.
    pub(crate) const WHOLE: u64 = u64::MAX;

    /// The shared event for a receiver of every target.
    pub(crate) fn whole(seq: u64, shared: Arc<SharedEvent>) -> Self {
        StoredEvent::Shared {
            seq,
            shared,
            mask: Self::WHOLE,
        }
    }

    /// The shared event for a receiver of `targets[i]` for every `i` in `positions`.
    pub(crate) fn shared(seq: u64, shared: &Arc<SharedEvent>, positions: &[usize]) -> Self {
        if positions.len() == shared.targets.len() {
            return Self::whole(seq, shared.clone());
        }
        if shared.targets.len() <= MASK_BITS {
            return StoredEvent::Shared {
                seq,
                shared: shared.clone(),
                mask: positions.iter().fold(0u64, |mask, &i| mask | 1 << i),
            };
        }
        let groups = EventGroups::subset(&shared.targets, positions);
        StoredEvent::Other(Arc::new(shared.event(seq, groups)))
    }

    /// The sequence number, for push events.
    pub(crate) fn seq(&self) -> Option<u64> {
        match self {
            StoredEvent::Shared { seq, .. } => Some(*seq),
            StoredEvent::Other(event) => event.seq(),
        }
    }

    /// The event as the public type.
    pub(crate) fn to_event(&self) -> PushEvent {
        match self {
            StoredEvent::Shared { seq, shared, mask } => shared.event(
                *seq,
                EventGroups {
                    list: shared.targets.clone(),
                    mask: (*mask != Self::WHOLE).then_some(*mask),
                },
            ),
            StoredEvent::Other(event) => PushEvent::clone(event),
        }
    }

    /// Appends the encoded frame to `out`, in the receiver's `form`.
    pub(crate) fn encode(&self, out: &mut bytes::BytesMut, form: EventForm) {
        match self {
            StoredEvent::Shared {
                seq,
                shared,
                mask: Self::WHOLE,
            } => shared.encode_whole(*seq, out, form),
            StoredEvent::Shared { .. } => self.to_event().encode_for(out, form),
            StoredEvent::Other(event) => event.encode_for(out, form),
        }
    }

    /// Bytes the sender's node takes in the frame (0 without one).
    fn sender_node_len(&self) -> usize {
        match self {
            StoredEvent::Shared { shared, .. } => shared.sender.node_len(),
            StoredEvent::Other(event) => event.sender().map_or(0, Sender::node_len),
        }
    }

    /// The compressed form of a publication or user message that came compressed.
    pub(crate) fn compressed(&self) -> Option<(&CompressedPayload, usize)> {
        match self {
            StoredEvent::Shared { shared, .. } => shared
                .compressed
                .as_ref()
                .map(|c| (c, shared.payload.len())),
            StoredEvent::Other(event) => event
                .compressed()
                .zip(event.payload())
                .map(|(c, payload)| (c, payload.len())),
        }
    }

    /// Whether this is a user message (fault injection leaves those alone).
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    pub(crate) fn is_user_message(&self) -> bool {
        matches!(self, StoredEvent::Other(e) if matches!(**e, PushEvent::UserMessage { .. }))
    }
}

impl From<PushEvent> for StoredEvent {
    fn from(event: PushEvent) -> Self {
        StoredEvent::Other(Arc::new(event))
    }
}

/// One event for one connection, drained from [`super::Hub::poll_delivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub(crate) connection: ConnectionId,
    pub(crate) event: StoredEvent,
    pub(crate) frame_len: usize,
}

impl Delivery {
    /// The receiving connection.
    pub fn connection(&self) -> ConnectionId {
        self.connection
    }

    /// The event (built from the hub's compact form: a fan-out's receivers share
    /// sender, groups and payload).
    pub fn event(&self) -> PushEvent {
        self.event.to_event()
    }

    /// The event's sequence number, for push events (cheaper than `event().seq()`).
    pub fn seq(&self) -> Option<u64> {
        self.event.seq()
    }

    /// The code, when the delivery is a PushRejected answer.
    pub fn rejection(&self) -> Option<pushwire_protocol::RejectCode> {
        match &self.event {
            StoredEvent::Other(event) => match &**event {
                PushEvent::Rejected(rejected) => Some(rejected.code),
                _ => None,
            },
            StoredEvent::Shared { .. } => None,
        }
    }

    /// The message type the delivery encodes as (cheaper than `event().kind()`).
    pub fn kind(&self) -> MessageKind {
        match &self.event {
            StoredEvent::Shared { shared, .. } => match shared.kind {
                SharedKind::Subscribed => MessageKind::Subscribed,
                SharedKind::Unsubscribed => MessageKind::Unsubscribed,
                SharedKind::Published => MessageKind::Published,
            },
            StoredEvent::Other(event) => event.kind(),
        }
    }

    /// Appends the encoded frame ([`frame_len`](Self::frame_len) bytes) to `out`, with
    /// the plain payload. A publication to a receiver of all its targets is a copy of
    /// a frame encoded once for the whole fan-out, with the receiver's sequence number
    /// patched in.
    pub fn encode(&self, out: &mut bytes::BytesMut) {
        self.event.encode(out, EventForm::PLAIN);
    }

    /// Like [`encode`](Self::encode), in the receiver's `form`: a publication or
    /// user message that came compressed goes to a receiver that accepts compressed
    /// payloads (its Hello asked for them, on protocol version 3) in the sender's
    /// compressed form, untouched (encoded once for all such receivers); a receiver
    /// below version 5 gets the sender without its cluster node. The form is chosen
    /// here, per receiver, so a session resumed on a connection with other settings
    /// gets its replay in the form that connection takes.
    /// [`frame_len_for`](Self::frame_len_for) bytes.
    pub fn encode_for(&self, out: &mut bytes::BytesMut, form: EventForm) {
        self.event.encode(out, form);
    }

    /// Size of the encoded frame with the plain payload, header included.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Size of the frame [`encode_for`](Self::encode_for) writes.
    pub fn frame_len_for(&self, form: EventForm) -> usize {
        let node = if form.sender_node {
            0
        } else {
            self.event.sender_node_len()
        };
        let len = self.frame_len - node;
        match self.event.compressed() {
            Some((compressed, plain_len)) if form.compressed => {
                len - plain_len + compressed.wire_len()
            }
            _ => len,
        }
    }

    /// For a publication or user message that came compressed: its compressed form
    /// and the plain payload's length.
    pub fn compressed(&self) -> Option<(&CompressedPayload, usize)> {
        self.event.compressed()
    }

    /// The receiving connection and the event.
    pub fn into_parts(self) -> (ConnectionId, PushEvent) {
        (self.connection, self.event.to_event())
    }

    /// The receiving connection and the wire message.
    pub fn into_message(self) -> (ConnectionId, Message) {
        (self.connection, self.event.to_event().into_message())
    }
}

/// Frame sizes, computed once per operation so that a fan-out adds per receiver only
/// what differs: the length of its group list.
pub(crate) mod frame_len {
    use super::*;

    /// Frame length of a presence event from `sender`, without its group ids.
    pub(crate) fn presence_base(sender: &Sender) -> usize {
        Message::Subscribed(Subscribed {
            seq: 0,
            sender: sender.clone(),
            groups: Vec::new(),
        })
        .encoded_len()
    }

    /// Frame length of a publication from `sender` with `payload_len` bytes, without
    /// its group ids.
    pub(crate) fn published_base(sender: &Sender, payload_len: usize) -> usize {
        Message::Published(Published {
            seq: 0,
            sender: sender.clone(),
            groups: Vec::new(),
            payload: Bytes::new(),
            compression: None,
        })
        .encoded_len()
            + payload_len
    }

    /// Frame length of a user message from `sender`.
    pub(crate) fn user_message(sender: &Sender, payload: &Bytes) -> usize {
        Message::UserMessage(UserMessage {
            seq: 0,
            sender: sender.clone(),
            payload: payload.clone(),
            compression: None,
        })
        .encoded_len()
    }
}
