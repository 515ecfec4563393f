//! Push commands (client to server) and push events (server to client): chat groups,
//! presence, publications and one-to-one user messages.

use crate::codes::{RejectCode, SessionLostReason};
use crate::compression::Compression;
use crate::error::DecodeError;
use crate::frame::{put_header_byte, Body, MessageKind};
use crate::limits::{MAX_NODE_ID_BYTES, MAX_TEXT_BYTES, MAX_USER_ID_BYTES, MAX_USER_ID_CHARS};
use crate::text::Text;
use crate::wire::{
    compression_bits, groups_len, payload_len, put_compression_header, put_groups, put_payload,
    put_text, text_len, Reader,
};
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use std::net::IpAddr;

/// A chat group's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u32);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who caused a push event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sender {
    /// The server itself, not acting for any connection.
    Server,
    /// A client connection (or the server acting on its behalf).
    Peer(PeerSender),
}

/// A client connection as other clients see it (SocketPro's message sender).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerSender {
    /// The sender's user id.
    pub user_id: Text,
    /// The sender's address as the server saw it.
    pub addr: IpAddr,
    /// The sender's port as the server saw it.
    pub port: u16,
    /// The service the sender is connected to.
    pub service_id: u32,
    /// Set on the copy an event's own originator receives (the echo).
    pub is_self: bool,
    /// *Version 5*: the id of the cluster node the sender is connected to, on events
    /// from a clustered server (at most [`MAX_NODE_ID_BYTES`] bytes). `None` from a
    /// server that is not clustered, and always on connections below version 5 (the
    /// server leaves it out for them: see [`PeerSender::without_node`]).
    pub node: Option<Text>,
}

impl PeerSender {
    /// The same sender without its node, as receivers below version 5 see it.
    pub fn without_node(&self) -> PeerSender {
        PeerSender {
            node: None,
            ..self.clone()
        }
    }
}

impl Sender {
    const TAG_SERVER: u8 = 0;
    const TAG_PEER_V4: u8 = 4;
    const TAG_PEER_V6: u8 = 6;
    const FLAG_SELF: u8 = 0b0000_0001;
    const FLAG_NODE: u8 = 0b0000_0010;

    /// Whether the receiver is the event's originator.
    pub fn is_self(&self) -> bool {
        matches!(self, Sender::Peer(p) if p.is_self)
    }

    /// The cluster node of a peer sender, when the server named it (version 5).
    pub fn node(&self) -> Option<&Text> {
        match self {
            Sender::Peer(p) => p.node.as_ref(),
            Sender::Server => None,
        }
    }

    /// Bytes the node adds to this sender's encoding (0 without one): what a
    /// receiver below version 5, which gets the sender without it, saves.
    pub fn node_len(&self) -> usize {
        self.node()
            .map_or(0, |node| text_len(node, MAX_NODE_ID_BYTES))
    }

    /// The sender as a receiver below version 5 sees it: without the node.
    pub fn without_node(&self) -> Sender {
        match self {
            Sender::Peer(p) if p.node.is_some() => Sender::Peer(p.without_node()),
            other => other.clone(),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Sender::Server => 1,
            Sender::Peer(p) => {
                let addr = match p.addr {
                    IpAddr::V4(_) => 4,
                    IpAddr::V6(_) => 16,
                };
                1 + 1 + text_len(&p.user_id, MAX_USER_ID_BYTES) + addr + 2 + 4 + self.node_len()
            }
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        match self {
            Sender::Server => out.put_u8(Self::TAG_SERVER),
            Sender::Peer(p) => {
                out.put_u8(match p.addr {
                    IpAddr::V4(_) => Self::TAG_PEER_V4,
                    IpAddr::V6(_) => Self::TAG_PEER_V6,
                });
                debug_assert!(
                    p.user_id.as_str().chars().count() <= MAX_USER_ID_CHARS,
                    "sender user id over {MAX_USER_ID_CHARS} characters"
                );
                let mut flags = 0;
                if p.is_self {
                    flags |= Self::FLAG_SELF;
                }
                if p.node.is_some() {
                    flags |= Self::FLAG_NODE;
                }
                out.put_u8(flags);
                put_text(out, &p.user_id, MAX_USER_ID_BYTES);
                match p.addr {
                    IpAddr::V4(a) => out.put_slice(&a.octets()),
                    IpAddr::V6(a) => out.put_slice(&a.octets()),
                }
                out.put_u16(p.port);
                out.put_u32(p.service_id);
                if let Some(node) = &p.node {
                    put_text(out, node, MAX_NODE_ID_BYTES);
                }
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let tag = r.u8("sender")?;
        if tag == Self::TAG_SERVER {
            return Ok(Sender::Server);
        }
        if tag != Self::TAG_PEER_V4 && tag != Self::TAG_PEER_V6 {
            return Err(r.invalid("sender", tag.into()));
        }
        let flags = r.u8("sender flags")?;
        if flags & !(Self::FLAG_SELF | Self::FLAG_NODE) != 0 {
            return Err(r.invalid("sender flags", flags.into()));
        }
        let user_id = r.text("sender user_id", MAX_USER_ID_BYTES)?;
        // A text has no more characters than bytes: only long ids need counting (every
        // push event carries a sender, so this runs per message).
        if user_id.len() > MAX_USER_ID_CHARS {
            let chars = user_id.as_str().chars().count();
            if chars > MAX_USER_ID_CHARS {
                return Err(DecodeError::TooLong {
                    kind: r.kind(),
                    field: "sender user_id",
                    actual: chars,
                    max: MAX_USER_ID_CHARS,
                });
            }
        }
        let addr = if tag == Self::TAG_PEER_V4 {
            IpAddr::from(r.array::<4>("sender address")?)
        } else {
            IpAddr::from(r.array::<16>("sender address")?)
        };
        let port = r.u16("sender port")?;
        let service_id = r.u32("sender service_id")?;
        let node = if flags & Self::FLAG_NODE != 0 {
            Some(r.text("sender node", MAX_NODE_ID_BYTES)?)
        } else {
            None
        };
        Ok(Sender::Peer(PeerSender {
            user_id,
            addr,
            port,
            service_id,
            is_self: flags & Self::FLAG_SELF != 0,
            node,
        }))
    }
}

/// Join groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Echoed in a PushRejected about this command.
    pub command_id: u64,
    /// Groups to join; must not be empty.
    pub groups: Vec<GroupId>,
}

impl Body for Subscribe {
    fn body_len(&self) -> usize {
        8 + groups_len(&self.groups)
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.command_id);
        put_groups(out, &self.groups);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Subscribe {
            command_id: r.u64("command_id")?,
            groups: r.groups("groups")?,
        })
    }
}

/// Which groups an Unsubscribe leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSelection {
    /// These groups.
    Groups(Vec<GroupId>),
    /// Every group the connection is in.
    All,
}

/// Leave groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Echoed in a PushRejected about this command.
    pub command_id: u64,
    /// Groups to leave.
    pub groups: GroupSelection,
}

impl Body for Unsubscribe {
    fn body_len(&self) -> usize {
        8 + 1
            + match &self.groups {
                GroupSelection::Groups(g) => groups_len(g),
                GroupSelection::All => 0,
            }
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.command_id);
        match &self.groups {
            GroupSelection::Groups(g) => {
                out.put_u8(0);
                put_groups(out, g);
            }
            GroupSelection::All => out.put_u8(1),
        }
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let command_id = r.u64("command_id")?;
        let groups = if r.bool("all")? {
            GroupSelection::All
        } else {
            GroupSelection::Groups(r.groups("groups")?)
        };
        Ok(Unsubscribe { command_id, groups })
    }
}

/// Publish a payload to groups. The payload is the rest of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Echoed in a PushRejected about this command.
    pub command_id: u64,
    /// Target groups; the publisher need not belong to them.
    pub groups: Vec<GroupId>,
    /// The message, opaque to the protocol (the compressed bytes when
    /// `compression` is set).
    pub payload: Bytes,
    /// Version 3: how `payload` is compressed; `None` for a plain payload.
    pub compression: Option<Compression>,
}

impl Body for Publish {
    fn body_len(&self) -> usize {
        8 + groups_len(&self.groups) + payload_len(self.compression, &self.payload)
    }

    fn encode_body(&self, out: &mut BytesMut) {
        write_publish_fields(out, self.command_id, &self.groups);
        put_payload(out, self.compression, &self.payload);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let command_id = r.u64("command_id")?;
        let groups = r.groups("groups")?;
        let (payload, compression) = r.payload()?;
        Ok(Publish {
            command_id,
            groups,
            payload,
            compression,
        })
    }

    fn type_bits(&self) -> u8 {
        compression_bits(self.compression)
    }
}

fn write_publish_fields(out: &mut BytesMut, command_id: u64, groups: &[GroupId]) {
    out.put_u64(command_id);
    put_groups(out, groups);
}

/// Writes a Publish frame up to, not including, its payload of `payload_len` bytes
/// (the compressed bytes, when `compression` is set: the compression header is part
/// of the prefix); the caller appends the payload. Returns the number of bytes
/// written.
///
/// With the payload appended, the bytes are those of encoding a [`Publish`] with the
/// same fields, without building one (a client publishing from a borrowed group list).
pub fn encode_publish_prefix(
    out: &mut BytesMut,
    command_id: u64,
    groups: &[GroupId],
    compression: Option<Compression>,
    payload_len: usize,
) -> usize {
    let fields = 8 + groups_len(groups) + payload_len_prefix(compression);
    out.reserve(crate::frame::FRAME_HEADER_LEN + fields);
    put_header_byte(
        out,
        MessageKind::Publish as u8 | compression_bits(compression),
        fields + payload_len,
    );
    write_publish_fields(out, command_id, groups);
    put_compression_header(out, compression);
    crate::frame::FRAME_HEADER_LEN + fields
}

/// Bytes of the `payload` field before the payload bytes themselves: the
/// compression header, if any.
fn payload_len_prefix(compression: Option<Compression>) -> usize {
    payload_len(compression, &[])
}

/// Send a payload to every connection of one user. The payload is the rest of the
/// frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendUserMessage {
    /// Echoed in the UserMessageDelivered (or PushRejected) answer.
    pub command_id: u64,
    /// Receiver's user id, compared case-insensitively by the server.
    pub receiver: Text,
    /// The message, opaque to the protocol (the compressed bytes when
    /// `compression` is set).
    pub payload: Bytes,
    /// Version 3: how `payload` is compressed; `None` for a plain payload.
    pub compression: Option<Compression>,
}

impl Body for SendUserMessage {
    fn body_len(&self) -> usize {
        8 + text_len(&self.receiver, MAX_USER_ID_BYTES)
            + payload_len(self.compression, &self.payload)
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.command_id);
        put_text(out, &self.receiver, MAX_USER_ID_BYTES);
        put_payload(out, self.compression, &self.payload);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let command_id = r.u64("command_id")?;
        let receiver = r.text("receiver", MAX_USER_ID_BYTES)?;
        let (payload, compression) = r.payload()?;
        Ok(SendUserMessage {
            command_id,
            receiver,
            payload,
            compression,
        })
    }

    fn type_bits(&self) -> u8 {
        compression_bits(self.compression)
    }
}

/// Ask for the server's chat groups; answered by GroupList.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListGroups {
    /// Echoed in the GroupList.
    pub command_id: u64,
}

impl Body for ListGroups {
    fn body_len(&self) -> usize {
        8
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.command_id);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListGroups {
            command_id: r.u64("command_id")?,
        })
    }
}

/// Version 2 and later: the server has run every push command of this connection up
/// to `command_id` (taken it into the hub: published, delivered or refused). Sent
/// after each run of commands, not per command; a client that waits for it before
/// sending more is paced by the server's flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushTaken {
    /// The highest command id run so far on this connection.
    pub command_id: u64,
}

impl Body for PushTaken {
    fn body_len(&self) -> usize {
        8
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.command_id);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PushTaken {
            command_id: r.u64("command_id")?,
        })
    }
}

/// Declares a presence event: sequence number, sender, groups.
macro_rules! presence_event {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// The receiving session's sequence number for this event.
            pub seq: u64,
            /// The connection whose membership changed.
            pub sender: Sender,
            /// The groups concerned that the receiver shares with the sender (all of
            /// them, for the sender's own copy).
            pub groups: Vec<GroupId>,
        }

        impl Body for $name {
            fn body_len(&self) -> usize {
                8 + self.sender.encoded_len() + groups_len(&self.groups)
            }

            fn encode_body(&self, out: &mut BytesMut) {
                out.put_u64(self.seq);
                self.sender.encode(out);
                put_groups(out, &self.groups);
            }

            fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
                Ok($name {
                    seq: r.u64("seq")?,
                    sender: Sender::decode(r)?,
                    groups: r.groups("groups")?,
                })
            }
        }
    };
}

presence_event! {
    /// A connection joined groups.
    Subscribed
}

presence_event! {
    /// A connection left groups.
    Unsubscribed
}

/// A publication, as one receiver gets it. The payload is the rest of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The receiving session's sequence number for this event.
    pub seq: u64,
    /// The publisher.
    pub sender: Sender,
    /// The publication's target groups that the receiver belongs to (all targets for
    /// the publisher's echo).
    pub groups: Vec<GroupId>,
    /// The message, shared among receivers (the compressed bytes, as the publisher
    /// sent them, when `compression` is set).
    pub payload: Bytes,
    /// Version 3: how `payload` is compressed; `None` for a plain payload.
    pub compression: Option<Compression>,
}

impl Body for Published {
    fn body_len(&self) -> usize {
        8 + self.sender.encoded_len()
            + groups_len(&self.groups)
            + payload_len(self.compression, &self.payload)
    }

    fn encode_body(&self, out: &mut BytesMut) {
        write_published_fields(out, self.seq, &self.sender, &self.groups);
        put_payload(out, self.compression, &self.payload);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let seq = r.u64("seq")?;
        let sender = Sender::decode(r)?;
        let groups = r.groups("groups")?;
        let (payload, compression) = r.payload()?;
        Ok(Published {
            seq,
            sender,
            groups,
            payload,
            compression,
        })
    }

    fn type_bits(&self) -> u8 {
        compression_bits(self.compression)
    }
}

fn write_published_fields(out: &mut BytesMut, seq: u64, sender: &Sender, groups: &[GroupId]) {
    out.put_u64(seq);
    sender.encode(out);
    put_groups(out, groups);
}

/// Writes a Published frame up to, not including, its payload of `payload_len` bytes
/// (the compressed bytes, when `compression` is set: the compression header is part
/// of the prefix); the caller appends the payload (or sends it from a shared buffer
/// with a vectored write). Returns the number of bytes written.
///
/// This is the fan-out fast path: a publication's payload is encoded once however many
/// receivers it has; only this prefix is written per receiver.
pub fn encode_published_prefix(
    out: &mut BytesMut,
    seq: u64,
    sender: &Sender,
    groups: &[GroupId],
    compression: Option<Compression>,
    payload_len: usize,
) -> usize {
    let fields = 8 + sender.encoded_len() + groups_len(groups) + payload_len_prefix(compression);
    out.reserve(crate::frame::FRAME_HEADER_LEN + fields);
    put_header_byte(
        out,
        MessageKind::Published as u8 | compression_bits(compression),
        fields + payload_len,
    );
    write_published_fields(out, seq, sender, groups);
    put_compression_header(out, compression);
    crate::frame::FRAME_HEADER_LEN + fields
}

/// Overwrites the sequence number of an encoded push event frame (Subscribed,
/// Unsubscribed, Published or UserMessage: each body starts with it), so a frame
/// encoded once can be sent to many receivers, each with its own number.
///
/// # Panics
/// If `frame` is shorter than a header and a sequence number (a caller bug: the
/// frame is one the caller encoded).
pub fn patch_seq(frame: &mut [u8], seq: u64) {
    let at = crate::frame::FRAME_HEADER_LEN;
    frame[at..at + 8].copy_from_slice(&seq.to_be_bytes());
}

/// A one-to-one message. The payload is the rest of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMessage {
    /// The receiving session's sequence number for this event.
    pub seq: u64,
    /// Who sent it.
    pub sender: Sender,
    /// The message (the compressed bytes, as the sender sent them, when
    /// `compression` is set).
    pub payload: Bytes,
    /// Version 3: how `payload` is compressed; `None` for a plain payload.
    pub compression: Option<Compression>,
}

impl Body for UserMessage {
    fn body_len(&self) -> usize {
        8 + self.sender.encoded_len() + payload_len(self.compression, &self.payload)
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.seq);
        self.sender.encode(out);
        put_payload(out, self.compression, &self.payload);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let seq = r.u64("seq")?;
        let sender = Sender::decode(r)?;
        let (payload, compression) = r.payload()?;
        Ok(UserMessage {
            seq,
            sender,
            payload,
            compression,
        })
    }

    fn type_bits(&self) -> u8 {
        compression_bits(self.compression)
    }
}

/// Push events with sequence numbers `first..=last` were lost (the replay buffer
/// overflowed, or a slow consumer's queue was trimmed). A Gap takes no sequence number
/// of its own: together, delivered events and gaps cover every number exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// First lost sequence number (at least 1).
    pub first: u64,
    /// Last lost sequence number (at least `first`).
    pub last: u64,
}

impl Body for Gap {
    fn body_len(&self) -> usize {
        16
    }

    fn encode_body(&self, out: &mut BytesMut) {
        debug_assert!(
            self.first >= 1 && self.last >= self.first,
            "invalid gap range"
        );
        out.put_u64(self.first);
        out.put_u64(self.last);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let first = r.u64("first")?;
        let last = r.u64("last")?;
        if first == 0 {
            return Err(r.invalid("first", 0));
        }
        if last < first {
            return Err(r.invalid("last", last));
        }
        Ok(Gap { first, last })
    }
}

/// The session named in the Hello's resume request is gone; this connection runs a
/// new session (see the Welcome) with no subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLost {
    /// Why.
    pub reason: SessionLostReason,
    /// Human-readable detail.
    pub text: Text,
}

impl Body for SessionLost {
    fn body_len(&self) -> usize {
        2 + text_len(&self.text, MAX_TEXT_BYTES)
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u16(self.reason.to_wire());
        put_text(out, &self.text, MAX_TEXT_BYTES);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(SessionLost {
            reason: SessionLostReason::from_wire(r.u16("reason")?),
            text: r.text("text", MAX_TEXT_BYTES)?,
        })
    }
}

/// A push command was refused, wholly or for the listed groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRejected {
    /// The command concerned.
    pub command_id: u64,
    /// Why.
    pub code: RejectCode,
    /// The offending group ids (empty when the whole command was refused for a reason
    /// not tied to groups).
    pub groups: Vec<GroupId>,
    /// Human-readable detail.
    pub reason: Text,
}

impl Body for PushRejected {
    fn body_len(&self) -> usize {
        8 + 2 + groups_len(&self.groups) + text_len(&self.reason, MAX_TEXT_BYTES)
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.command_id);
        out.put_u16(self.code.to_wire());
        put_groups(out, &self.groups);
        put_text(out, &self.reason, MAX_TEXT_BYTES);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PushRejected {
            command_id: r.u64("command_id")?,
            code: RejectCode::from_wire(r.u16("code")?),
            groups: r.groups("groups")?,
            reason: r.text("reason", MAX_TEXT_BYTES)?,
        })
    }
}

/// How many connections a SendUserMessage reached (0 when the user is offline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserMessageDelivered {
    /// The SendUserMessage concerned.
    pub command_id: u64,
    /// Connections of the receiver that got the message.
    pub connections: u32,
}

impl Body for UserMessageDelivered {
    fn body_len(&self) -> usize {
        12
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.command_id);
        out.put_u32(self.connections);
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(UserMessageDelivered {
            command_id: r.u64("command_id")?,
            connections: r.u32("connections")?,
        })
    }
}

/// One chat group in a GroupList.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group's id.
    pub id: GroupId,
    /// What the group is for.
    pub description: Text,
}

/// The server's chat groups, in ascending id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupList {
    /// The ListGroups this answers.
    pub command_id: u64,
    /// The groups.
    pub groups: Vec<GroupDescription>,
}

impl Body for GroupList {
    fn body_len(&self) -> usize {
        8 + 4
            + self
                .groups
                .iter()
                .map(|g| 4 + text_len(&g.description, MAX_TEXT_BYTES))
                .sum::<usize>()
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64(self.command_id);
        out.put_u32(self.groups.len() as u32);
        for g in &self.groups {
            out.put_u32(g.id.0);
            put_text(out, &g.description, MAX_TEXT_BYTES);
        }
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let command_id = r.u64("command_id")?;
        let count = r.u32("count")? as usize;
        // Each entry takes at least 6 bytes: refuse counts the frame cannot back
        // before allocating for them.
        if count > r.remaining() / 6 {
            return Err(DecodeError::Truncated {
                kind: r.kind(),
                field: "groups",
            });
        }
        let mut groups = Vec::with_capacity(count);
        for _ in 0..count {
            groups.push(GroupDescription {
                id: GroupId(r.u32("group id")?),
                description: r.text("group description", MAX_TEXT_BYTES)?,
            });
        }
        Ok(GroupList { command_id, groups })
    }
}
