//! The hub's side of a cluster: the journal of what happened here that the other
//! nodes must hear, and the deliveries of what happened there.
//!
//! The [cluster](crate::cluster) turns journal entries into backplane records and
//! applies the records of other nodes through the `remote_*` methods. Those run no
//! hooks (the hooks ran on the node where the action happened), give no echo (the
//! sender is elsewhere) and journal nothing (the other nodes heard it already).

use std::sync::Arc;

use bytes::Bytes;
use pushwire_protocol::{Gap, GroupId, PeerSender, Sender, Text};

use super::connections::user_key;
use super::events::{frame_len, Delivery, PushEvent, SharedEvent, StoredEvent};
use super::{ConnectionId, Hub, Presence, PushHooks};

/// Something that happened on this node that the other nodes of its cluster must
/// hear, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// A session joined, or its groups changed: its state now goes out.
    Member(ConnectionId),
    /// A session ended.
    MemberGone(ConnectionId),
    /// A publication went ahead (after the hooks), to these targets.
    Publication {
        /// Its sender (never self-flagged).
        sender: Sender,
        /// The targets the hooks let through, ascending.
        groups: Arc<[GroupId]>,
        /// The plain payload.
        payload: Bytes,
    },
    /// A user message went ahead.
    UserMessage {
        /// Its sender.
        sender: Sender,
        /// The receiving user id.
        receiver: Text,
        /// The plain payload.
        payload: Bytes,
    },
    /// A group was registered at run time.
    GroupAdded(GroupId, Text),
    /// A group was removed at run time.
    GroupRemoved(GroupId),
}

impl<H: PushHooks> Hub<H> {
    /// Starts keeping the journal (a clustered node, `node` its id, named from now on
    /// in the sender of every event its connections cause); without it the hub keeps
    /// none and pays nothing.
    pub fn enable_journal(&mut self, node: Text) {
        self.journal.get_or_insert_with(Vec::new);
        self.node = Some(node);
    }

    /// Takes the entries journaled since the last call, oldest first.
    pub fn take_journal(&mut self) -> Vec<JournalEntry> {
        match self.journal.as_mut() {
            Some(journal) => std::mem::take(journal),
            None => Vec::new(),
        }
    }

    pub(super) fn journal(&mut self, entry: impl FnOnce() -> JournalEntry) {
        if let Some(journal) = self.journal.as_mut() {
            journal.push(entry());
        }
    }

    /// A session as the other nodes see it: its sender and its groups, ascending.
    pub fn member_state(&self, session: ConnectionId) -> Option<(PeerSender, Vec<GroupId>)> {
        let connection = self.connections.get(session)?;
        let Sender::Peer(sender) = connection.sender.clone() else {
            unreachable!("a connection's sender is a peer")
        };
        Some((sender, connection.groups.iter().copied().collect()))
    }

    /// The user whose id lowercases (Unicode) to `user_key` has
    /// `delta` more sessions on the other nodes, as this node knows them: added to
    /// the reach of every user message to that user.
    pub fn add_remote_user_sessions(&mut self, user_key: &str, delta: i32) {
        let count = self.remote_users.entry(user_key.to_owned()).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.remote_users.remove(user_key);
        }
    }

    pub(super) fn remote_user_sessions(&self, receiver: &str) -> u32 {
        if self.remote_users.is_empty() {
            return 0;
        }
        self.remote_users
            .get(&user_key(receiver))
            .copied()
            .unwrap_or(0)
    }

    /// A publication from another node: one Published to each local member of any
    /// of `groups` this node knows, listing the ones it is in. Returns how many.
    pub fn remote_publication(
        &mut self,
        sender: Sender,
        groups: &[GroupId],
        payload: Bytes,
    ) -> u32 {
        let targets: Arc<[GroupId]> = self.known_only(groups).into();
        if targets.is_empty() {
            return 0;
        }
        let base_len = frame_len::published_base(&sender, payload.len());
        let shared = Arc::new(SharedEvent::publication(
            sender,
            targets.clone(),
            payload,
            None,
        ));
        self.fan_out(&targets, None, &shared, base_len, false)
    }

    /// A user message from another node, to every local session of `receiver`.
    /// Returns how many.
    pub fn remote_user_message(&mut self, sender: Sender, receiver: &str, payload: Bytes) -> u32 {
        let len = frame_len::user_message(&sender, &payload);
        let outbox = &mut self.outbox;
        let mut reached = 0;
        self.connections
            .for_each_of_user(&user_key(receiver), None, |to| {
                let event = PushEvent::UserMessage {
                    seq: to.take_seq(),
                    sender: sender.clone(),
                    payload: payload.clone(),
                    compressed: None,
                };
                outbox.deliver(to, event, len);
                reached += 1;
            });
        reached
    }

    /// A member of another node joined (`joined`) or left `groups`: Subscribed or
    /// Unsubscribed to each local member of any of them this node knows, listing
    /// the ones they share. Returns how many were told.
    pub fn remote_presence(&mut self, joined: bool, sender: Sender, groups: &[GroupId]) -> u32 {
        let groups: Arc<[GroupId]> = self.known_only(groups).into();
        if groups.is_empty() {
            return 0;
        }
        let presence = if joined {
            Presence::Joined
        } else {
            Presence::Left
        };
        self.tell_members(presence, &sender, None, &groups)
    }

    /// Events from another node may have been lost: every session here gets a Gap
    /// over one fresh sequence number, standing for whatever the hole held (kept in
    /// its replay buffer like an event, so a resume replays the notice too).
    /// Returns how many sessions were told.
    pub fn cluster_gap(&mut self) -> u32 {
        let ids: Vec<ConnectionId> = self.connections.ids().collect();
        let limits = self.outbox.replay;
        let len = pushwire_protocol::FRAME_HEADER_LEN + 16;
        for &id in &ids {
            let connection = self.connections.get_mut(id).expect("listed");
            let seq = connection.take_seq();
            let event: StoredEvent = PushEvent::Gap(Gap {
                first: seq,
                last: seq,
            })
            .into();
            if connection.token.is_some() {
                connection.replay.record(seq, &event, len, limits);
            }
            if connection.attached {
                self.outbox.deliveries.push_back(Delivery {
                    connection: id,
                    event,
                    frame_len: len,
                });
            }
        }
        ids.len() as u32
    }

    /// A group registered on another node: registered here too, unless known.
    pub fn remote_group_added(&mut self, group: GroupId, description: Text) {
        self.groups
            .entry(group)
            .or_insert_with(|| super::groups::Group::new(description));
    }

    /// A group removed on another node: removed here too (its local members leave
    /// it, each told, as by [`Hub::remove_group`]), without journaling the removal.
    pub fn remote_group_removed(&mut self, group: GroupId) {
        if self.groups.contains_key(&group) {
            let _ = self.remove_group_as(group, false);
        }
    }

    fn known_only(&self, groups: &[GroupId]) -> Vec<GroupId> {
        let mut known: Vec<GroupId> = groups
            .iter()
            .copied()
            .filter(|g| self.groups.contains_key(g))
            .collect();
        known.sort_unstable();
        known.dedup();
        known
    }
}
