//! Backplane records: what one node tells the others, and how it is written down.
//!
//! A record is one entry of its node's log (and, for members and groups, the value of
//! one entry of its node's state). It is read back from the backplane, which any
//! process with access to Redis can write, so [`Record::decode`] treats it as hostile
//! input: every length is checked against what is left and against the protocol's
//! limits before anything is sliced, and nothing is allocated from an untrusted count.
//!
//! Layout, big-endian: format `u8` (1) · epoch `u64` · seq `u64` · kind `u8` · body.
//! Bodies: a sender is `u8` 0 (the server) or 1 followed by user id (`u16` length +
//! UTF-8), address (`u8` 4 or 6 + its bytes), port `u16` and service `u32`; a group
//! list is `u16` count + `u32` ids; a payload is `u32` length + bytes; a text is `u16`
//! length + UTF-8.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};
use pushwire_protocol::{
    GroupId, PeerSender, Sender, Text, MAX_GROUPS_PER_MESSAGE, MAX_USER_ID_CHARS,
};

/// The record format this engine writes and reads.
pub const RECORD_FORMAT: u8 = 1;

/// Longest group description a record may carry, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// The node is alive (written when it had nothing else to say for a while).
    Heartbeat,
    /// A session of the node, with every group it is in now (the whole state, not
    /// a change: applying it twice, or after a newer snapshot, changes nothing).
    Member {
        /// The session's id on its node.
        session: u64,
        /// How other clients see it.
        sender: PeerSender,
        /// Its groups, ascending.
        groups: Vec<GroupId>,
    },
    /// A session of the node ended.
    MemberGone {
        /// The session's id on its node.
        session: u64,
    },
    /// A publication accepted on the node (the hooks there let it through).
    Publication {
        /// Who published (never self-flagged).
        sender: Sender,
        /// Its target groups, ascending.
        groups: Vec<GroupId>,
        /// The plain payload.
        payload: Bytes,
    },
    /// A user message accepted on the node.
    UserMessage {
        /// Who sent it.
        sender: Sender,
        /// The receiving user id.
        receiver: Text,
        /// The plain payload.
        payload: Bytes,
    },
    /// A group registered at run time on the node.
    GroupAdded {
        /// The group.
        group: GroupId,
        /// Its description.
        description: Text,
    },
    /// A group removed at run time on the node.
    GroupRemoved {
        /// The group.
        group: GroupId,
    },
}

/// One entry of a node's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The writing node's incarnation.
    pub epoch: u64,
    /// Its position in that incarnation's log: 1, 2, 3… without holes as written.
    pub seq: u64,
    /// What it says.
    pub body: RecordBody,
}

/// A record that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// It ended before a field was complete.
    #[error("record truncated reading {0}")]
    Truncated(&'static str),
    /// A format this engine does not know.
    #[error("unknown record format {0}")]
    Format(u8),
    /// A kind this engine does not know.
    #[error("unknown record kind {0}")]
    Kind(u8),
    /// A field's value is out of range or not valid UTF-8.
    #[error("invalid {0} in record")]
    Invalid(&'static str),
    /// Bytes left over after the body.
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

const KIND_HEARTBEAT: u8 = 1;
const KIND_MEMBER: u8 = 2;
const KIND_MEMBER_GONE: u8 = 3;
const KIND_PUBLICATION: u8 = 4;
const KIND_USER_MESSAGE: u8 = 5;
const KIND_GROUP_ADDED: u8 = 6;
const KIND_GROUP_REMOVED: u8 = 7;

impl Record {
    /// The record's bytes.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(32 + self.body_hint());
        out.put_u8(RECORD_FORMAT);
        out.put_u64(self.epoch);
        out.put_u64(self.seq);
        match &self.body {
            RecordBody::Heartbeat => out.put_u8(KIND_HEARTBEAT),
            RecordBody::Member {
                session,
                sender,
                groups,
            } => {
                out.put_u8(KIND_MEMBER);
                out.put_u64(*session);
                put_peer(&mut out, sender);
                put_groups(&mut out, groups);
            }
            RecordBody::MemberGone { session } => {
                out.put_u8(KIND_MEMBER_GONE);
                out.put_u64(*session);
            }
            RecordBody::Publication {
                sender,
                groups,
                payload,
            } => {
                out.put_u8(KIND_PUBLICATION);
                put_sender(&mut out, sender);
                put_groups(&mut out, groups);
                put_payload(&mut out, payload);
            }
            RecordBody::UserMessage {
                sender,
                receiver,
                payload,
            } => {
                out.put_u8(KIND_USER_MESSAGE);
                put_sender(&mut out, sender);
                put_text(&mut out, receiver);
                put_payload(&mut out, payload);
            }
            RecordBody::GroupAdded { group, description } => {
                out.put_u8(KIND_GROUP_ADDED);
                out.put_u32(group.0);
                put_text(&mut out, description);
            }
            RecordBody::GroupRemoved { group } => {
                out.put_u8(KIND_GROUP_REMOVED);
                out.put_u32(group.0);
            }
        }
        out.freeze()
    }

    fn body_hint(&self) -> usize {
        match &self.body {
            RecordBody::Publication {
                payload, groups, ..
            } => payload.len() + 4 * groups.len(),
            RecordBody::UserMessage { payload, .. } => payload.len(),
            _ => 0,
        }
    }

    /// The record as read from `node`'s log: every client sender in it names that
    /// node (a record does not carry its writer's id; the log it is in does).
    pub fn from_node(mut self, node: &Text) -> Record {
        let peer = match &mut self.body {
            RecordBody::Member { sender, .. } => Some(sender),
            RecordBody::Publication { sender, .. } | RecordBody::UserMessage { sender, .. } => {
                match sender {
                    Sender::Peer(peer) => Some(peer),
                    Sender::Server => None,
                }
            }
            _ => None,
        };
        if let Some(peer) = peer {
            peer.node = Some(node.clone());
        }
        self
    }

    /// Reads a record; `max_payload` bounds publications and user messages.
    pub fn decode(bytes: &Bytes, max_payload: usize) -> Result<Record, RecordError> {
        let mut r = Reader { bytes, at: 0 };
        let format = r.u8("format")?;
        if format != RECORD_FORMAT {
            return Err(RecordError::Format(format));
        }
        let epoch = r.u64("epoch")?;
        let seq = r.u64("seq")?;
        let body = match r.u8("kind")? {
            KIND_HEARTBEAT => RecordBody::Heartbeat,
            KIND_MEMBER => RecordBody::Member {
                session: r.u64("session")?,
                sender: r.peer()?,
                groups: r.groups()?,
            },
            KIND_MEMBER_GONE => RecordBody::MemberGone {
                session: r.u64("session")?,
            },
            KIND_PUBLICATION => RecordBody::Publication {
                sender: r.sender()?,
                groups: r.groups()?,
                payload: r.payload(max_payload)?,
            },
            KIND_USER_MESSAGE => RecordBody::UserMessage {
                sender: r.sender()?,
                receiver: r.user_id("receiver")?,
                payload: r.payload(max_payload)?,
            },
            KIND_GROUP_ADDED => RecordBody::GroupAdded {
                group: GroupId(r.u32("group")?),
                description: r.text("description", MAX_DESCRIPTION_BYTES)?,
            },
            KIND_GROUP_REMOVED => RecordBody::GroupRemoved {
                group: GroupId(r.u32("group")?),
            },
            other => return Err(RecordError::Kind(other)),
        };
        let left = bytes.len() - r.at;
        if left != 0 {
            return Err(RecordError::Trailing(left));
        }
        Ok(Record { epoch, seq, body })
    }
}

fn put_text(out: &mut BytesMut, text: &Text) {
    out.put_u16(text.len() as u16);
    out.put_slice(text.as_bytes());
}

fn put_peer(out: &mut BytesMut, peer: &PeerSender) {
    put_text(out, &peer.user_id);
    match peer.addr {
        IpAddr::V4(a) => {
            out.put_u8(4);
            out.put_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.put_u8(6);
            out.put_slice(&a.octets());
        }
    }
    out.put_u16(peer.port);
    out.put_u32(peer.service_id);
}

fn put_sender(out: &mut BytesMut, sender: &Sender) {
    match sender {
        Sender::Server => out.put_u8(0),
        Sender::Peer(peer) => {
            out.put_u8(1);
            put_peer(out, peer);
        }
    }
}

fn put_groups(out: &mut BytesMut, groups: &[GroupId]) {
    out.put_u16(groups.len() as u16);
    for g in groups {
        out.put_u32(g.0);
    }
}

fn put_payload(out: &mut BytesMut, payload: &Bytes) {
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, RecordError> {
        if self.bytes.len() - self.at < n {
            return Err(RecordError::Truncated(field));
        }
        let out = self.bytes.slice(self.at..self.at + n);
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], RecordError> {
        let bytes = self.take(N, field)?;
        Ok(bytes[..].try_into().expect("took N bytes"))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, RecordError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn text(&mut self, field: &'static str, max_bytes: usize) -> Result<Text, RecordError> {
        let len = usize::from(self.u16(field)?);
        if len > max_bytes {
            return Err(RecordError::Invalid(field));
        }
        let bytes = self.take(len, field)?;
        Text::from_utf8(bytes).map_err(|_| RecordError::Invalid(field))
    }

    fn user_id(&mut self, field: &'static str) -> Result<Text, RecordError> {
        // A user id has at most MAX_USER_ID_CHARS characters of at most 4 bytes.
        let text = self.text(field, MAX_USER_ID_CHARS * 4)?;
        if text.is_empty() || text.as_str().chars().count() > MAX_USER_ID_CHARS {
            return Err(RecordError::Invalid(field));
        }
        Ok(text)
    }

    fn peer(&mut self) -> Result<PeerSender, RecordError> {
        let user_id = self.user_id("sender user id")?;
        let addr = match self.u8("address family")? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>("address")?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>("address")?)),
            _ => return Err(RecordError::Invalid("address family")),
        };
        Ok(PeerSender {
            user_id,
            addr,
            port: self.u16("port")?,
            service_id: self.u32("service")?,
            is_self: false,
            // The log's owner: named by `Record::from_node`, not by the record.
            node: None,
        })
    }

    fn sender(&mut self) -> Result<Sender, RecordError> {
        match self.u8("sender")? {
            0 => Ok(Sender::Server),
            1 => Ok(Sender::Peer(self.peer()?)),
            _ => Err(RecordError::Invalid("sender")),
        }
    }

    fn groups(&mut self) -> Result<Vec<GroupId>, RecordError> {
        let count = usize::from(self.u16("group count")?);
        debug_assert!(count <= MAX_GROUPS_PER_MESSAGE);
        // Checked against what is left before anything is allocated.
        if (self.bytes.len() - self.at) / 4 < count {
            return Err(RecordError::Truncated("groups"));
        }
        let mut groups = Vec::with_capacity(count);
        for _ in 0..count {
            groups.push(GroupId(self.u32("group")?));
        }
        if groups.windows(2).any(|w| w[0] >= w[1]) {
            return Err(RecordError::Invalid("groups (not ascending)"));
        }
        Ok(groups)
    }

    fn payload(&mut self, max: usize) -> Result<Bytes, RecordError> {
        let len = self.u32("payload length")? as usize;
        if len > max {
            return Err(RecordError::Invalid("payload length"));
        }
        self.take(len, "payload")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(user: &str, v6: bool) -> PeerSender {
        PeerSender {
            user_id: user.into(),
            addr: if v6 {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))
            },
            port: 40_001,
            service_id: 0x1000_0001,
            is_self: false,
            node: None,
        }
    }

    fn body_strategy() -> impl Strategy<Value = RecordBody> {
        let groups = proptest::collection::btree_set(any::<u32>(), 0..8)
            .prop_map(|s| s.into_iter().map(GroupId).collect::<Vec<_>>());
        let user = "[a-zA-Z0-9é]{1,12}";
        let payload = proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        let sender = (user, any::<bool>(), any::<bool>()).prop_map(|(u, v6, server)| {
            if server {
                Sender::Server
            } else {
                Sender::Peer(peer(&u, v6))
            }
        });
        prop_oneof![
            Just(RecordBody::Heartbeat),
            (any::<u64>(), user, any::<bool>(), groups.clone()).prop_map(|(s, u, v6, groups)| {
                RecordBody::Member {
                    session: s,
                    sender: peer(&u, v6),
                    groups,
                }
            }),
            any::<u64>().prop_map(|session| RecordBody::MemberGone { session }),
            (sender.clone(), groups, payload.clone()).prop_map(|(sender, groups, payload)| {
                RecordBody::Publication {
                    sender,
                    groups,
                    payload,
                }
            }),
            (sender, user, payload).prop_map(|(sender, r, payload)| RecordBody::UserMessage {
                sender,
                receiver: r.as_str().into(),
                payload,
            }),
            (any::<u32>(), ".{0,20}").prop_map(|(g, d)| RecordBody::GroupAdded {
                group: GroupId(g),
                description: d.as_str().into(),
            }),
            any::<u32>().prop_map(|g| RecordBody::GroupRemoved { group: GroupId(g) }),
        ]
    }

    proptest! {
        #[test]
        fn every_record_reads_back_as_written(epoch: u64, seq: u64, body in body_strategy()) {
            let record = Record { epoch, seq, body };
            prop_assert_eq!(Record::decode(&record.encode(), 64), Ok(record));
        }

        #[test]
        fn any_truncation_or_garbage_is_an_error_never_a_panic(
            body in body_strategy(),
            cut in any::<prop::sample::Index>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let bytes = Record { epoch: 1, seq: 2, body }.encode();
            let cut = cut.index(bytes.len());
            prop_assert!(Record::decode(&bytes.slice(..cut), 64).is_err());
            let _ = Record::decode(&Bytes::from(garbage), 64);
        }
    }

    #[test]
    fn a_payload_over_the_limit_is_refused_before_it_is_sliced() {
        let record = Record {
            epoch: 1,
            seq: 1,
            body: RecordBody::Publication {
                sender: Sender::Server,
                groups: vec![GroupId(1)],
                payload: Bytes::from(vec![0; 100]),
            },
        };
        assert_eq!(
            Record::decode(&record.encode(), 99),
            Err(RecordError::Invalid("payload length"))
        );
        let mut bytes = record.encode().to_vec();
        bytes.push(0);
        assert_eq!(
            Record::decode(&Bytes::from(bytes), 100),
            Err(RecordError::Trailing(1))
        );
    }

    #[test]
    fn a_huge_group_count_in_a_short_record_is_truncation_not_an_allocation() {
        let mut bytes = BytesMut::new();
        bytes.put_u8(RECORD_FORMAT);
        bytes.put_u64(1);
        bytes.put_u64(1);
        bytes.put_u8(KIND_PUBLICATION);
        bytes.put_u8(0);
        bytes.put_u16(u16::MAX);
        assert_eq!(
            Record::decode(&bytes.freeze(), 10),
            Err(RecordError::Truncated("groups"))
        );
    }
}
