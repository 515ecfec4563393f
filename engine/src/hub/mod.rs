//! The push hub: who is connected, which chat groups exist and who is in each, and
//! what every push operation delivers to whom.
//!
//! [`Hub`] is a pure state machine. The connection layer feeds it connections, client
//! push commands ([`Hub::handle_command`]) and write progress; the server application
//! calls its server API (publish, user messages, subscribe and unsubscribe on its own
//! or on behalf of a connection, group registration); every call queues
//! [`Delivery`]s — (connection, event) pairs ready to encode — that the caller drains
//! with [`Hub::poll_delivery`].
//!
//! The contract (SocketPro's, with pushwire's improvements):
//!
//! - `subscribe(groups)` joins known groups; unknown ids are refused and reported,
//!   duplicates and groups already joined are ignored, an empty list is refused. The
//!   member gets a self-flagged Subscribed with the groups joined; every other
//!   connection sharing at least one of them gets Subscribed(member, the shared
//!   groups). Unsubscribing mirrors it; a disconnect is an implicit unsubscribe-all
//!   (others are told, the hooks are notified); removing a group unsubscribes its
//!   members, each of which gets a self-flagged Unsubscribed.
//! - `publish(payload, groups)`: every member of a target group gets exactly one
//!   Published, listing the targets it belongs to; the publisher gets a self-flagged
//!   echo with every target when its echo is on, member or not, and never a member's
//!   copy (with echo off it gets nothing). Unknown targets are reported.
//! - `send_user_message(receiver, payload)`: every connection of the user (compared by
//!   Unicode lowercase, `str::to_lowercase`) gets it; the sender gets its echo when its echo is on and
//!   learns how many connections were reached (0 when the user is offline). The
//!   sender's own connection is never counted: it gets the echo, not a copy.
//! - Every push event carries the receiving connection's next sequence number,
//!   starting at 1, with no reuse and no holes. Command answers (PushRejected,
//!   UserMessageDelivered, GroupList) carry none.
//! - The application's [`PushHooks`] run before each change, after the hub's own
//!   checks, and may refuse it wholly or for some groups (the rest goes ahead); a
//!   refusal is answered with `RejectCode::NotAuthorized`. Disconnects and group
//!   removals only notify them.
//!
//! Order of the deliveries of one operation: the actor's own event first (its
//! Subscribed or Unsubscribed, or its echo), then every other receiver in ascending
//! [`ConnectionId`], then, for a client command, the answers to that client
//! (rejections, then UserMessageDelivered). Deliveries of successive operations come
//! out in operation order, so each receiver sees events in the order they happened.

mod cluster;
mod connections;
mod events;
#[cfg(all(feature = "fault-injection", debug_assertions))]
mod fault;
mod groups;
mod hooks;
mod outbound;
mod session;

#[cfg(test)]
pub(crate) mod model;
#[cfg(test)]
mod tests;

use std::collections::btree_map::Entry;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use pushwire_protocol::{
    CompressedPayload, Compression, CompressionError, GroupDescription, GroupId, GroupList,
    GroupSelection, ListGroups, Message, MessageKind, Publish, PushRejected, RejectCode,
    SendUserMessage, Sender, Subscribe, Text, Unsubscribe, UserMessageDelivered,
    MAX_GROUPS_PER_MESSAGE, MAX_USER_ID_CHARS,
};

pub use cluster::JournalEntry;
pub(crate) use connections::user_key as user_key_of;
pub use connections::{ConnectionId, ConnectionInfo};
pub use events::{Delivery, EventForm, EventGroups, PushEvent};
pub use hooks::{Actor, AllowAll, HookContext, Origin, PushHooks, Verdict};
pub use outbound::{OutboundQueue, Queued, SlowConsumerPolicy};
pub use session::{ResumeError, Resumed};

use connections::{user_key, Connection, Connections, Slot};
use events::{frame_len, SharedEvent, SharedKind, StoredEvent, GROUP_ID_WIRE_LEN};
use groups::{for_each_member_of_any, Group, Groups};

/// Limits of a [`Hub`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Largest payload of a publication or user message; larger ones are refused
    /// with `RejectCode::PayloadTooLarge`. For a compressed payload this is the
    /// decompressed size, checked from its header before anything is decompressed.
    /// Default 512 KiB, so that a Published frame with the longest sender and group
    /// list still fits the protocol's default 1 MiB frame limit.
    pub max_payload_bytes: usize,
    /// How long a detached session is kept for a resume. Default 30 s; zero gives
    /// SocketPro's behaviour (a disconnect ends the session at once).
    pub session_timeout: std::time::Duration,
    /// Most events a session keeps for replay (default 1,024; zero disables resume).
    pub replay_events: usize,
    /// Most frame bytes a session keeps for replay (default 1 MiB; always at least
    /// the newest event).
    pub replay_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 512 * 1024,
            session_timeout: std::time::Duration::from_secs(30),
            replay_events: 1024,
            replay_bytes: 1024 * 1024,
        }
    }
}

/// Part of an operation that was refused: the body of a PushRejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub code: RejectCode,
    /// The groups concerned, ascending (empty when the whole operation was refused
    /// for a reason not tied to groups).
    pub groups: Vec<GroupId>,
    /// Human-readable detail.
    pub reason: Text,
}

impl Rejection {
    fn empty_group_list() -> Self {
        Self {
            code: RejectCode::EmptyGroupList,
            groups: Vec::new(),
            reason: Text::from_static("the group list is empty"),
        }
    }

    fn unknown_groups(groups: Vec<GroupId>) -> Self {
        Self {
            code: RejectCode::UnknownGroups,
            groups,
            reason: Text::from_static("no such chat groups"),
        }
    }

    fn payload_too_large(len: usize, max: usize) -> Self {
        Self {
            code: RejectCode::PayloadTooLarge,
            groups: Vec::new(),
            reason: format!("the payload of {len} bytes exceeds the limit of {max} bytes").into(),
        }
    }

    fn compressed_payload_too_large(compressed: usize, original_len: u32, max: usize) -> Self {
        Self {
            code: RejectCode::PayloadTooLarge,
            groups: Vec::new(),
            reason: format!(
                "the compressed payload ({compressed} bytes) would decompress to \
                 {original_len} bytes, over the limit of {max} bytes"
            )
            .into(),
        }
    }

    fn invalid_receiver() -> Self {
        Self {
            code: RejectCode::InvalidReceiver,
            groups: Vec::new(),
            reason: Text::from_static("the receiver user id must have 1 to 255 characters"),
        }
    }

    /// Over the publish rate limit of `per_second` with bursts of `burst`.
    pub(crate) fn rate_limited(per_second: u32, burst: u32) -> Self {
        Self {
            code: RejectCode::RateLimited,
            groups: Vec::new(),
            reason: format!(
                "over the publish rate limit of {per_second} per second (bursts of {burst}); \
                 not delivered, retry later"
            )
            .into(),
        }
    }

    fn not_authorized(groups: Vec<GroupId>, reason: Text) -> Self {
        Self {
            code: RejectCode::NotAuthorized,
            groups,
            reason,
        }
    }

    /// The PushRejected answering the client command `command_id`.
    pub fn into_push_rejected(self, command_id: u64) -> PushRejected {
        PushRejected {
            command_id,
            code: self.code,
            groups: self.groups,
            reason: self.reason,
        }
    }
}

/// What an operation did, returned to the server API (client commands get the same
/// information as events).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushOutcome {
    /// The groups the operation applied to, ascending: joined, left or published to.
    /// Empty for user messages.
    pub groups: Vec<GroupId>,
    /// Connections that got an event from it, not counting the actor's own copy:
    /// other members told of the membership change, receivers of the publication, or
    /// connections of the user the message was for.
    pub reached: u32,
    /// What was refused, in this order: empty group list, too large a payload or an
    /// invalid receiver (each refuses the whole operation), unknown groups, then the
    /// hook's refusal.
    pub rejections: Vec<Rejection>,
    /// Flow control, filled in by the [node](crate::node::Node) (0 from the hub
    /// alone): receivers that this operation found over the high-water mark. Their
    /// backlog grows with every further publication to them; a server publisher
    /// should slow down, as the node makes a client publisher do by not reading it.
    pub congested: u32,
    /// Receivers this operation took over the outbound limit and cut off as slow
    /// consumers (filled in by the node).
    pub cut: u32,
}

impl PushOutcome {
    /// Whether nothing was refused.
    pub fn is_complete(&self) -> bool {
        self.rejections.is_empty()
    }
}

/// Calls the hub refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The connection is not (or no longer) connected.
    #[error("{0} is not connected")]
    UnknownConnection(ConnectionId),
    /// `add_group` for an id that is already registered.
    #[error("chat group {0} already exists")]
    GroupExists(GroupId),
    /// `remove_group` for an id that is not registered.
    #[error("chat group {0} does not exist")]
    UnknownGroup(GroupId),
    /// A server call named more groups than one message can carry.
    #[error("{count} groups exceed the limit of {MAX_GROUPS_PER_MESSAGE} per operation")]
    TooManyGroups {
        /// How many were named.
        count: usize,
    },
    /// `handle_command` was given a message that is not a client push command.
    #[error("{0} is not a push command")]
    NotAPushCommand(MessageKind),
    /// `handle_command` was given a compressed payload that does not decompress to
    /// its declared size: the client broke the protocol, and its connection should be
    /// closed. Nothing was done.
    #[error("compressed payload: {0}")]
    CorruptPayload(CompressionError),
}

#[cfg(feature = "fault-injection")]
/// One misbehaviour, triggered on the n-th sequenced delivery (counting from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubFault {
    /// Lose the n-th delivery after it took its sequence number.
    DropDelivery(u64),
    /// Hand out the n-th delivery twice.
    DuplicateDelivery(u64),
    /// Hand out the n-th delivery after the next one to the same connection.
    SwapDeliveries(u64),
    /// Hand the n-th delivery to a connection that is not one of its receivers.
    Misdeliver(u64),
    /// Do not tell another member about the n-th membership change it should hear of.
    SkipPresence(u64),
    /// On the n-th resume that replays anything, replay one event twice.
    ReplayTwice(u64),
    /// On the n-th resume that replays anything, leave one event out, without a gap.
    ReplaySkip(u64),
}

/// Deliveries waiting to be drained.
#[derive(Debug)]
struct Outbox {
    deliveries: VecDeque<Delivery>,
    replay: session::ReplayLimits,
}

impl Outbox {
    /// The one way an event reaches a connection: kept for replay when sequenced and
    /// resumable, delivered when attached.
    fn deliver(
        &mut self,
        connection: &mut Connection,
        event: impl Into<StoredEvent>,
        frame_len: usize,
    ) {
        let event = event.into();
        if let (Some(seq), Some(_)) = (event.seq(), connection.token) {
            connection
                .replay
                .record(seq, &event, frame_len, self.replay);
        }
        if !connection.attached {
            return;
        }
        self.deliveries.push_back(Delivery {
            connection: connection.id,
            event,
            frame_len,
        });
    }
}

/// Which presence event a membership change produces.
#[derive(Debug, Clone, Copy)]
pub(super) enum Presence {
    Joined,
    Left,
}

impl Presence {
    fn kind(self) -> SharedKind {
        match self {
            Presence::Joined => SharedKind::Subscribed,
            Presence::Left => SharedKind::Unsubscribed,
        }
    }

    /// The shared record of this change's presence events.
    fn shared(self, sender: Sender, groups: Arc<[GroupId]>) -> Arc<SharedEvent> {
        Arc::new(SharedEvent::presence(self.kind(), sender, groups))
    }
}

/// The push hub.
///
/// # Calling contract
///
/// Feed it with [`connect`](Hub::connect), [`disconnect`](Hub::disconnect),
/// [`handle_command`](Hub::handle_command) and the server API. After any call, drain
/// [`poll_delivery`](Hub::poll_delivery) until it returns `None` and send each
/// delivery to its connection. Deliveries queued for a connection that has left since
/// may still come out; discard them.
///
/// The hub does not bound what a connection has not written yet: that is the
/// [server node](crate::node::Node)'s job (each connection's
/// [`OutboundQueue`] and the slow-consumer policy). A server normally drives the hub
/// through the node rather than directly.
///
/// # Determinism and cost
///
/// The same calls give the same deliveries in the same order (see the module
/// documentation for the order). A publication costs time proportional to its
/// receivers' memberships in its targets (times the log of the number of targets), not
/// to the number of groups or connections; it shares the payload, the sender's user
/// id and the target list among its receivers. Subscribing and user lookup are
/// logarithmic.
#[derive(Debug)]
pub struct Hub<H = AllowAll> {
    config: HubConfig,
    hooks: H,
    connections: Connections,
    groups: Groups,
    outbox: Outbox,
    /// Resume tokens of resumable sessions.
    tokens: std::collections::BTreeMap<[u8; 16], ConnectionId>,
    /// Detached sessions by expiry.
    expiries: std::collections::BTreeSet<(std::time::Instant, ConnectionId)>,
    /// What the other nodes of a cluster must hear; `None` when not clustered.
    journal: Option<Vec<JournalEntry>>,
    /// This node's cluster id, named in its connections' senders (clustered only).
    node: Option<Text>,
    /// Sessions per user (by [`user_key`]) on the other nodes of a cluster.
    remote_users: std::collections::BTreeMap<String, u32>,
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    fault: fault::FaultState,
}

impl<H: PushHooks> Hub<H> {
    /// A hub with no connections and no groups.
    pub fn new(config: HubConfig, hooks: H) -> Self {
        let outbox = Outbox {
            deliveries: VecDeque::new(),
            replay: session::ReplayLimits {
                events: config.replay_events,
                bytes: config.replay_bytes,
            },
        };
        Self {
            config,
            hooks,
            connections: Connections::default(),
            groups: Groups::new(),
            outbox,
            tokens: Default::default(),
            expiries: Default::default(),
            journal: None,
            node: None,
            remote_users: Default::default(),
            #[cfg(all(feature = "fault-injection", debug_assertions))]
            fault: fault::FaultState::default(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The application's hooks.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// The application's hooks, mutably.
    pub fn hooks_mut(&mut self) -> &mut H {
        &mut self.hooks
    }

    /// Arms a deliberate misbehaviour (the simulator's oracle tests). Works only in
    /// debug builds; panics in others, where the engine compiles no fault code.
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&mut self, fault: HubFault) {
        #[cfg(debug_assertions)]
        self.arm_fault(fault);
        #[cfg(not(debug_assertions))]
        panic!("fault injection ({fault:?}) works only in debug builds");
    }

    // --- Connections ------------------------------------------------------------

    /// A connection joins (after its Hello was accepted). It is in no group yet.
    pub fn connect(&mut self, info: ConnectionInfo) -> ConnectionId {
        let (id, slot) = self.connections.insert(info, self.node.clone());
        self.hooks.on_join(id, &self.connections.at(slot).info);
        self.journal(|| JournalEntry::Member(id));
        id
    }

    /// A connection leaves: an implicit unsubscribe-all. The unsubscribe hook is
    /// notified (it cannot refuse) and every other member of its groups gets
    /// Unsubscribed(it, the groups they shared). The outcome lists the groups left.
    pub fn disconnect(&mut self, connection: ConnectionId) -> Result<PushOutcome, HubError> {
        let leaving = self
            .connections
            .get(connection)
            .ok_or(HubError::UnknownConnection(connection))?;
        let left: Vec<GroupId> = leaving.groups.iter().copied().collect();
        if !left.is_empty() {
            let context = HookContext {
                origin: Origin::Disconnect,
                actor: Actor::Connection(connection),
                info: Some(&leaving.info),
            };
            // A notification: the connection is gone whatever the hook says.
            let _ = self.hooks.on_unsubscribe(&context, &left);
        }
        let leaving = self.connections.remove(connection).expect("checked above");
        if let Some(token) = leaving.token {
            self.tokens.remove(&token.0);
        }
        if let Some(expires) = leaving.expires {
            self.expiries.remove(&(expires, connection));
        }
        for group in &left {
            self.group_mut(*group).members.remove(&connection);
        }
        let mut outcome = PushOutcome::default();
        if !left.is_empty() {
            let left: Arc<[GroupId]> = left.into();
            outcome.reached =
                self.tell_members(Presence::Left, &leaving.sender, Some(connection), &left);
            outcome.groups = left.to_vec();
        }
        self.hooks.on_leave(connection, &leaving.info);
        self.journal(|| JournalEntry::MemberGone(connection));
        Ok(outcome)
    }

    /// The details a connection joined with.
    pub fn connection_info(&self, connection: ConnectionId) -> Option<&ConnectionInfo> {
        self.connections.get(connection).map(|c| &c.info)
    }

    /// Every connection, ascending.
    pub fn connections(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.connections.ids()
    }

    /// Number of connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// The groups a connection is in, ascending; `None` for an unknown connection.
    pub fn subscriptions(
        &self,
        connection: ConnectionId,
    ) -> Option<impl Iterator<Item = GroupId> + '_> {
        self.connections
            .get(connection)
            .map(|c| c.groups.iter().copied())
    }

    /// Whether the user (compared by Unicode lowercase) has at least one connection.
    pub fn is_user_online(&self, user_id: &str) -> bool {
        self.connections.of_user(&user_key(user_id)).is_some()
    }

    /// The connections of a user (compared by Unicode lowercase), ascending.
    pub fn user_connections(&self, user_id: &str) -> impl Iterator<Item = ConnectionId> + '_ {
        self.connections
            .of_user(&user_key(user_id))
            .into_iter()
            .flat_map(|connections| connections.keys().copied())
    }

    // --- Chat groups -------------------------------------------------------------

    /// Registers a chat group, at start or at run time.
    pub fn add_group(
        &mut self,
        group: GroupId,
        description: impl Into<Text>,
    ) -> Result<(), HubError> {
        match self.groups.entry(group) {
            Entry::Occupied(_) => Err(HubError::GroupExists(group)),
            Entry::Vacant(entry) => {
                let description = description.into();
                entry.insert(Group::new(description.clone()));
                self.journal(|| JournalEntry::GroupAdded(group, description));
                Ok(())
            }
        }
    }

    /// Removes a chat group at run time. Each member, in ascending order, is
    /// unsubscribed from it: the unsubscribe hook is notified (it cannot refuse) and
    /// the member gets a self-flagged Unsubscribed for the group. Nobody else is told:
    /// everyone who shared the group leaves it at the same moment, and a connection
    /// that has left a group keeps no view of its members. Returns the former
    /// members, ascending.
    pub fn remove_group(&mut self, group: GroupId) -> Result<Vec<ConnectionId>, HubError> {
        self.remove_group_as(group, true)
    }

    /// [`remove_group`](Self::remove_group); `journaled`: the removal itself goes to
    /// the journal (not when another node removed it).
    fn remove_group_as(
        &mut self,
        group: GroupId,
        journaled: bool,
    ) -> Result<Vec<ConnectionId>, HubError> {
        let members: Vec<(ConnectionId, Slot)> = self
            .groups
            .get(&group)
            .ok_or(HubError::UnknownGroup(group))?
            .members
            .iter()
            .map(|(&id, &slot)| (id, slot))
            .collect();
        for &(id, slot) in &members {
            let context = HookContext {
                origin: Origin::GroupRemoved,
                actor: Actor::Connection(id),
                info: Some(&self.connections.at(slot).info),
            };
            let _ = self.hooks.on_unsubscribe(&context, &[group]);
        }
        self.groups.remove(&group);
        let list: Arc<[GroupId]> = Arc::new([group]);
        for &(_, slot) in &members {
            let member = self.connections.at_mut(slot);
            member.groups.remove(&group);
            let sender = member.self_sender();
            let frame_len = frame_len::presence_base(&sender) + GROUP_ID_WIRE_LEN;
            let shared = Presence::Left.shared(sender, list.clone());
            let event = StoredEvent::whole(member.take_seq(), shared);
            self.outbox.deliver(member, event, frame_len);
        }
        if journaled {
            self.journal(|| JournalEntry::GroupRemoved(group));
        }
        for &(id, _) in &members {
            self.journal(|| JournalEntry::Member(id));
        }
        Ok(members.into_iter().map(|(id, _)| id).collect())
    }

    /// Every chat group with its description, ascending.
    pub fn groups(&self) -> impl Iterator<Item = (GroupId, &Text)> + '_ {
        self.groups
            .iter()
            .map(|(&id, group)| (id, &group.description))
    }

    /// A group's description; `None` for an unknown group.
    pub fn group_description(&self, group: GroupId) -> Option<&Text> {
        self.groups.get(&group).map(|g| &g.description)
    }

    /// A group's members, ascending; `None` for an unknown group.
    pub fn group_members(&self, group: GroupId) -> Option<impl Iterator<Item = ConnectionId> + '_> {
        self.groups.get(&group).map(|g| g.members.keys().copied())
    }

    // --- Client commands -----------------------------------------------------------

    /// Runs a push command a client sent on `connection`: Subscribe, Unsubscribe,
    /// Publish, SendUserMessage or ListGroups. Refusals are answered with
    /// PushRejected events carrying the command id; a SendUserMessage that went
    /// ahead is answered with UserMessageDelivered, a ListGroups with GroupList.
    ///
    /// A Publish or SendUserMessage with a compressed payload (protocol version 3)
    /// is refused with `PayloadTooLarge` when its declared decompressed size is over
    /// [`HubConfig::max_payload_bytes`], before anything is decompressed; otherwise
    /// it is decompressed once, so that the hooks and the receivers that do not
    /// accept compressed payloads get it plain, while the others get the sender's
    /// compressed bytes untouched.
    ///
    /// Fails, without effect, for an unknown connection, a message that is not a
    /// push command (the connection layer handles those), or a compressed payload
    /// that does not decompress to its declared size ([`HubError::CorruptPayload`]:
    /// close the connection).
    pub fn handle_command(
        &mut self,
        connection: ConnectionId,
        command: Message,
    ) -> Result<(), HubError> {
        self.handle_opened_command(connection, command, None)
    }

    /// [`handle_command`](Self::handle_command) for a command whose compressed
    /// payload the connection layer already decompressed (outside the node's lock,
    /// on the connection's own task): `opened` is the plain payload, checked to be
    /// within the limit and of the declared size.
    pub(crate) fn handle_opened_command(
        &mut self,
        connection: ConnectionId,
        command: Message,
        opened: Option<Bytes>,
    ) -> Result<(), HubError> {
        let slot = self
            .connections
            .slot(connection)
            .ok_or(HubError::UnknownConnection(connection))?;
        let (command_id, outcome) = match command {
            Message::Subscribe(Subscribe { command_id, groups }) => (
                command_id,
                self.subscribe_as(Origin::Client, connection, &groups)?,
            ),
            Message::Unsubscribe(Unsubscribe { command_id, groups }) => {
                let groups = match &groups {
                    GroupSelection::Groups(groups) => Some(groups.as_slice()),
                    GroupSelection::All => None,
                };
                (
                    command_id,
                    self.unsubscribe_as(Origin::Client, connection, groups)?,
                )
            }
            Message::Publish(Publish {
                command_id,
                groups,
                payload,
                compression,
            }) => (
                command_id,
                match self.open_payload(payload, compression, opened)? {
                    Ok((payload, compressed)) => self.publish_as(
                        Origin::Client,
                        Actor::Connection(connection),
                        &groups,
                        payload,
                        compressed,
                    )?,
                    Err(rejected) => rejected,
                },
            ),
            Message::SendUserMessage(SendUserMessage {
                command_id,
                receiver,
                payload,
                compression,
            }) => {
                let outcome = match self.open_payload(payload, compression, opened)? {
                    Ok((payload, compressed)) => self.send_user_message_as(
                        Origin::Client,
                        Actor::Connection(connection),
                        receiver.as_str(),
                        payload,
                        compressed,
                    )?,
                    Err(rejected) => rejected,
                };
                if outcome.is_complete() {
                    self.answer(
                        slot,
                        Message::UserMessageDelivered(UserMessageDelivered {
                            command_id,
                            connections: outcome.reached,
                        }),
                    );
                }
                (command_id, outcome)
            }
            Message::ListGroups(ListGroups { command_id }) => {
                let list = GroupList {
                    command_id,
                    groups: self.group_list(),
                };
                self.answer(slot, Message::GroupList(list));
                return Ok(());
            }
            other => return Err(HubError::NotAPushCommand(other.kind())),
        };
        for rejection in outcome.rejections {
            self.answer(
                slot,
                Message::PushRejected(rejection.into_push_rejected(command_id)),
            );
        }
        Ok(())
    }

    /// Answers the client command `command_id` of `connection` with `rejection`
    /// without running it (the node's publish rate limit).
    pub(crate) fn reject_command(
        &mut self,
        connection: ConnectionId,
        command_id: u64,
        rejection: Rejection,
    ) -> Result<(), HubError> {
        let slot = self
            .connections
            .slot(connection)
            .ok_or(HubError::UnknownConnection(connection))?;
        self.answer(
            slot,
            Message::PushRejected(rejection.into_push_rejected(command_id)),
        );
        Ok(())
    }

    /// The plain payload of a command, and the compressed form it came in, if it
    /// came compressed (`payload` then holds the compressed bytes). A declared size
    /// over the limit is refused (the inner `Err`, an outcome to answer with) before
    /// decompressing; `opened`, when given, is the payload the connection layer
    /// already decompressed.
    #[allow(clippy::type_complexity)]
    fn open_payload(
        &self,
        payload: Bytes,
        compression: Option<Compression>,
        opened: Option<Bytes>,
    ) -> Result<Result<(Bytes, Option<CompressedPayload>), PushOutcome>, HubError> {
        let Some(compression) = compression else {
            return Ok(Ok((payload, None)));
        };
        let max = self.config.max_payload_bytes;
        if compression.original_len as usize > max {
            return Ok(Err(PushOutcome {
                rejections: vec![Rejection::compressed_payload_too_large(
                    payload.len(),
                    compression.original_len,
                    max,
                )],
                ..PushOutcome::default()
            }));
        }
        let plain = match opened {
            Some(plain) => plain,
            None => pushwire_protocol::decompress(compression, &payload, max)
                .map_err(HubError::CorruptPayload)?,
        };
        debug_assert_eq!(plain.len(), compression.original_len as usize);
        Ok(Ok((
            plain,
            Some(CompressedPayload {
                compression,
                data: payload,
            }),
        )))
    }

    /// The chat groups as a GroupList carries them, ascending.
    pub fn group_list(&self) -> Vec<GroupDescription> {
        self.groups
            .iter()
            .map(|(&id, group)| GroupDescription {
                id,
                description: group.description.clone(),
            })
            .collect()
    }

    // --- Server API ----------------------------------------------------------------

    /// The server subscribes `member` to `groups`, as if the member had asked
    /// (events name the member as sender: presence says who joined) except that the
    /// hooks see [`Origin::Server`] and refusals come back in the outcome.
    pub fn subscribe(
        &mut self,
        member: ConnectionId,
        groups: &[GroupId],
    ) -> Result<PushOutcome, HubError> {
        check_group_count(groups)?;
        self.subscribe_as(Origin::Server, member, groups)
    }

    /// The server unsubscribes `member` from `groups`; see [`Hub::subscribe`].
    pub fn unsubscribe(
        &mut self,
        member: ConnectionId,
        groups: &[GroupId],
    ) -> Result<PushOutcome, HubError> {
        check_group_count(groups)?;
        self.unsubscribe_as(Origin::Server, member, Some(groups))
    }

    /// The server unsubscribes `member` from every group it is in; see
    /// [`Hub::subscribe`].
    pub fn unsubscribe_all(&mut self, member: ConnectionId) -> Result<PushOutcome, HubError> {
        self.unsubscribe_as(Origin::Server, member, None)
    }

    /// The server publishes `payload` to `groups`, on its own ([`Actor::Server`]:
    /// the sender is the server, nobody gets an echo) or on behalf of a connection
    /// (which is then the sender and gets the echo if its echo is on).
    pub fn publish(
        &mut self,
        actor: Actor,
        groups: &[GroupId],
        payload: Bytes,
    ) -> Result<PushOutcome, HubError> {
        check_group_count(groups)?;
        self.publish_as(Origin::Server, actor, groups, payload, None)
    }

    /// The server sends `payload` to every connection of the user `receiver`, on its
    /// own or on behalf of a connection (see [`Hub::publish`]). `reached` in the
    /// outcome counts the connections that got it.
    pub fn send_user_message(
        &mut self,
        actor: Actor,
        receiver: &str,
        payload: Bytes,
    ) -> Result<PushOutcome, HubError> {
        self.send_user_message_as(Origin::Server, actor, receiver, payload, None)
    }

    // --- Outputs -------------------------------------------------------------------

    /// The next event to send, if any.
    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        #[cfg(all(feature = "fault-injection", debug_assertions))]
        return self.faulty_delivery();
        #[cfg(not(all(feature = "fault-injection", debug_assertions)))]
        self.outbox.deliveries.pop_front()
    }

    /// Number of deliveries waiting to be drained.
    pub fn pending_deliveries(&self) -> usize {
        self.outbox.deliveries.len()
    }

    // --- Operations ------------------------------------------------------------------

    fn subscribe_as(
        &mut self,
        origin: Origin,
        member: ConnectionId,
        requested: &[GroupId],
    ) -> Result<PushOutcome, HubError> {
        let slot = self
            .connections
            .slot(member)
            .ok_or(HubError::UnknownConnection(member))?;
        let mut outcome = PushOutcome::default();
        if requested.is_empty() {
            outcome.rejections.push(Rejection::empty_group_list());
            return Ok(outcome);
        }
        let known = self.known_groups(requested, &mut outcome);
        let connection = self.connections.at(slot);
        let candidates: Vec<GroupId> = known
            .into_iter()
            .filter(|group| !connection.groups.contains(group))
            .collect();
        if candidates.is_empty() {
            return Ok(outcome);
        }
        let context = HookContext {
            origin,
            actor: Actor::Connection(member),
            info: Some(&connection.info),
        };
        let verdict = self.hooks.on_subscribe(&context, &candidates);
        let joined = apply_verdict(verdict, candidates, &mut outcome);
        if joined.is_empty() {
            return Ok(outcome);
        }

        for group in &joined {
            self.group_mut(*group).members.insert(member, slot);
        }
        let connection = self.connections.at_mut(slot);
        connection.groups.extend(joined.iter().copied());
        let joined: Arc<[GroupId]> = joined.into();
        let sender = connection.sender.clone();
        self.tell_member(Presence::Joined, slot, &joined);
        outcome.reached = self.tell_members(Presence::Joined, &sender, Some(member), &joined);
        self.journal(|| JournalEntry::Member(member));
        outcome.groups = joined.to_vec();
        Ok(outcome)
    }

    /// `requested: None` leaves every group.
    fn unsubscribe_as(
        &mut self,
        origin: Origin,
        member: ConnectionId,
        requested: Option<&[GroupId]>,
    ) -> Result<PushOutcome, HubError> {
        let slot = self
            .connections
            .slot(member)
            .ok_or(HubError::UnknownConnection(member))?;
        let mut outcome = PushOutcome::default();
        let candidates: Vec<GroupId> = match requested {
            None => self.connections.at(slot).groups.iter().copied().collect(),
            Some([]) => {
                outcome.rejections.push(Rejection::empty_group_list());
                return Ok(outcome);
            }
            Some(requested) => {
                let known = self.known_groups(requested, &mut outcome);
                let connection = self.connections.at(slot);
                known
                    .into_iter()
                    .filter(|group| connection.groups.contains(group))
                    .collect()
            }
        };
        if candidates.is_empty() {
            return Ok(outcome);
        }
        let connection = self.connections.at(slot);
        let context = HookContext {
            origin,
            actor: Actor::Connection(member),
            info: Some(&connection.info),
        };
        let verdict = self.hooks.on_unsubscribe(&context, &candidates);
        let left = apply_verdict(verdict, candidates, &mut outcome);
        if left.is_empty() {
            return Ok(outcome);
        }

        for group in &left {
            self.group_mut(*group).members.remove(&member);
        }
        let connection = self.connections.at_mut(slot);
        for group in &left {
            connection.groups.remove(group);
        }
        let left: Arc<[GroupId]> = left.into();
        let sender = connection.sender.clone();
        self.tell_member(Presence::Left, slot, &left);
        outcome.reached = self.tell_members(Presence::Left, &sender, Some(member), &left);
        self.journal(|| JournalEntry::Member(member));
        outcome.groups = left.to_vec();
        Ok(outcome)
    }

    /// `payload` is plain; `compressed`, the form the client sent it in, if
    /// compressed.
    fn publish_as(
        &mut self,
        origin: Origin,
        actor: Actor,
        requested: &[GroupId],
        payload: Bytes,
        compressed: Option<CompressedPayload>,
    ) -> Result<PushOutcome, HubError> {
        let actor_slot = self.actor_slot(actor)?;
        let mut outcome = PushOutcome::default();
        if requested.is_empty() {
            outcome.rejections.push(Rejection::empty_group_list());
            return Ok(outcome);
        }
        if payload.len() > self.config.max_payload_bytes {
            outcome.rejections.push(Rejection::payload_too_large(
                payload.len(),
                self.config.max_payload_bytes,
            ));
            return Ok(outcome);
        }
        let known = self.known_groups(requested, &mut outcome);
        if known.is_empty() {
            return Ok(outcome);
        }
        let context = HookContext {
            origin,
            actor,
            info: actor_slot.map(|slot| &self.connections.at(slot).info),
        };
        let verdict = self.hooks.on_publish(&context, &known, &payload);
        let targets = apply_verdict(verdict, known, &mut outcome);
        if targets.is_empty() {
            return Ok(outcome);
        }

        let targets: Arc<[GroupId]> = targets.into();
        let sender = match actor_slot {
            Some(slot) => self.connections.at(slot).sender.clone(),
            None => Sender::Server,
        };
        let base_len = frame_len::published_base(&sender, payload.len());
        if let Some(slot) = actor_slot {
            let publisher = self.connections.at_mut(slot);
            if publisher.info.echo {
                let echo = PushEvent::Published {
                    seq: publisher.take_seq(),
                    sender: publisher.self_sender(),
                    groups: EventGroups::whole(targets.clone()),
                    payload: payload.clone(),
                    compressed: compressed.clone(),
                };
                let len = base_len + GROUP_ID_WIRE_LEN * targets.len();
                self.outbox.deliver(publisher, echo, len);
            }
        }
        let skip = match actor {
            Actor::Connection(id) => Some(id),
            Actor::Server => None,
        };
        if let Some(journal) = self.journal.as_mut() {
            journal.push(JournalEntry::Publication {
                sender: sender.clone(),
                groups: targets.clone(),
                payload: payload.clone(),
            });
        }
        // Encoded once; every receiver's copy shares it.
        let shared = Arc::new(SharedEvent::publication(
            sender,
            targets.clone(),
            payload,
            compressed,
        ));
        outcome.reached = self.fan_out(&targets, skip, &shared, base_len, false);
        outcome.groups = targets.to_vec();
        Ok(outcome)
    }

    /// `payload` is plain; `compressed`, the form the client sent it in, if
    /// compressed.
    fn send_user_message_as(
        &mut self,
        origin: Origin,
        actor: Actor,
        receiver: &str,
        payload: Bytes,
        compressed: Option<CompressedPayload>,
    ) -> Result<PushOutcome, HubError> {
        let actor_slot = self.actor_slot(actor)?;
        let mut outcome = PushOutcome::default();
        if receiver.is_empty() || receiver.chars().count() > MAX_USER_ID_CHARS {
            outcome.rejections.push(Rejection::invalid_receiver());
            return Ok(outcome);
        }
        if payload.len() > self.config.max_payload_bytes {
            outcome.rejections.push(Rejection::payload_too_large(
                payload.len(),
                self.config.max_payload_bytes,
            ));
            return Ok(outcome);
        }
        let context = HookContext {
            origin,
            actor,
            info: actor_slot.map(|slot| &self.connections.at(slot).info),
        };
        match self.hooks.on_user_message(&context, receiver, &payload) {
            Verdict::Allow => {}
            Verdict::Refuse { reason } | Verdict::RefuseGroups { reason, .. } => {
                outcome
                    .rejections
                    .push(Rejection::not_authorized(Vec::new(), reason));
                return Ok(outcome);
            }
        }

        let sender = match actor_slot {
            Some(slot) => self.connections.at(slot).sender.clone(),
            None => Sender::Server,
        };
        let len = frame_len::user_message(&sender, &payload);
        if let Some(slot) = actor_slot {
            let from = self.connections.at_mut(slot);
            if from.info.echo {
                let echo = PushEvent::UserMessage {
                    seq: from.take_seq(),
                    sender: from.self_sender(),
                    payload: payload.clone(),
                    compressed: compressed.clone(),
                };
                self.outbox.deliver(from, echo, len);
            }
        }
        let skip = match actor {
            Actor::Connection(id) => Some(id),
            Actor::Server => None,
        };
        let outbox = &mut self.outbox;
        let mut reached = 0;
        self.connections
            .for_each_of_user(&user_key(receiver), skip, |to| {
                let event = PushEvent::UserMessage {
                    seq: to.take_seq(),
                    sender: sender.clone(),
                    payload: payload.clone(),
                    compressed: compressed.clone(),
                };
                outbox.deliver(to, event, len);
                reached += 1;
            });
        outcome.reached = reached + self.remote_user_sessions(receiver);
        if let Some(journal) = self.journal.as_mut() {
            journal.push(JournalEntry::UserMessage {
                sender,
                receiver: receiver.into(),
                payload,
            });
        }
        Ok(outcome)
    }

    // --- Helpers ---------------------------------------------------------------------

    /// The member's own, self-flagged presence event.
    fn tell_member(&mut self, presence: Presence, slot: Slot, groups: &Arc<[GroupId]>) {
        let member = self.connections.at_mut(slot);
        let sender = member.self_sender();
        let len = frame_len::presence_base(&sender) + GROUP_ID_WIRE_LEN * groups.len();
        let event = StoredEvent::whole(member.take_seq(), presence.shared(sender, groups.clone()));
        self.outbox.deliver(member, event, len);
    }

    /// Presence events to every member of `groups` but `member`, each listing the
    /// groups it shares with the sender. Returns how many were told.
    pub(super) fn tell_members(
        &mut self,
        presence: Presence,
        sender: &Sender,
        member: Option<ConnectionId>,
        groups: &Arc<[GroupId]>,
    ) -> u32 {
        let base_len = frame_len::presence_base(sender);
        // Encoded once; every receiver's copy shares it.
        let shared = presence.shared(sender.clone(), groups.clone());
        self.fan_out(groups, member, &shared, base_len, true)
    }

    /// Queues `shared` to every member of any of `targets` (registered groups) but
    /// `skip`: each once, with the targets it is in and its next sequence number.
    /// `base_len` is the frame's length without the group list. Returns how many.
    pub(super) fn fan_out(
        &mut self,
        targets: &Arc<[GroupId]>,
        skip: Option<ConnectionId>,
        shared: &Arc<SharedEvent>,
        base_len: usize,
        presence: bool,
    ) -> u32 {
        let connections = &mut self.connections;
        let outbox = &mut self.outbox;
        let mut reached = 0;
        #[cfg(all(feature = "fault-injection", debug_assertions))]
        let fault = &mut self.fault;
        for_each_member_of_any(&self.groups, targets, skip, |_, slot, positions| {
            #[cfg(all(feature = "fault-injection", debug_assertions))]
            if presence && fault.skip_presence() {
                return;
            }
            let receiver = connections.at_mut(slot);
            let len = base_len + GROUP_ID_WIRE_LEN * positions.len();
            let event = StoredEvent::shared(receiver.take_seq(), shared, positions);
            outbox.deliver(receiver, event, len);
            reached += 1;
        });
        #[cfg(not(all(feature = "fault-injection", debug_assertions)))]
        let _ = presence;
        reached
    }

    /// Queues a command answer (not sequenced) for the connection in `slot`.
    fn answer(&mut self, slot: Slot, message: Message) {
        let len = message.encoded_len();
        let event = match message {
            Message::PushRejected(m) => PushEvent::Rejected(m),
            Message::UserMessageDelivered(m) => PushEvent::UserMessageDelivered(m),
            Message::GroupList(m) => PushEvent::GroupList(m),
            other => unreachable!("{} is not a push command answer", other.kind()),
        };
        self.outbox
            .deliver(self.connections.at_mut(slot), event, len);
    }

    /// The registered groups among `requested`, ascending and without duplicates;
    /// the others are added to the outcome as unknown.
    fn known_groups(&self, requested: &[GroupId], outcome: &mut PushOutcome) -> Vec<GroupId> {
        let mut groups = requested.to_vec();
        groups.sort_unstable();
        groups.dedup();
        // The usual case, on every publication: no second list.
        if groups.iter().all(|group| self.groups.contains_key(group)) {
            return groups;
        }
        let (known, unknown): (Vec<GroupId>, Vec<GroupId>) = groups
            .into_iter()
            .partition(|group| self.groups.contains_key(group));
        if !unknown.is_empty() {
            outcome.rejections.push(Rejection::unknown_groups(unknown));
        }
        known
    }

    fn actor_slot(&self, actor: Actor) -> Result<Option<Slot>, HubError> {
        match actor {
            Actor::Server => Ok(None),
            Actor::Connection(id) => self
                .connections
                .slot(id)
                .map(Some)
                .ok_or(HubError::UnknownConnection(id)),
        }
    }

    fn group_mut(&mut self, group: GroupId) -> &mut Group {
        self.groups
            .get_mut(&group)
            .expect("member groups are registered")
    }
}

/// The groups left to act on after a hook's verdict; refusals go to the outcome.
fn apply_verdict(
    verdict: Verdict,
    groups: Vec<GroupId>,
    outcome: &mut PushOutcome,
) -> Vec<GroupId> {
    match verdict {
        Verdict::Allow => groups,
        Verdict::Refuse { reason } => {
            outcome
                .rejections
                .push(Rejection::not_authorized(Vec::new(), reason));
            Vec::new()
        }
        Verdict::RefuseGroups {
            groups: mut refused,
            reason,
        } => {
            refused.sort_unstable();
            let (refused, allowed): (Vec<GroupId>, Vec<GroupId>) = groups
                .into_iter()
                .partition(|group| refused.binary_search(group).is_ok());
            if !refused.is_empty() {
                outcome
                    .rejections
                    .push(Rejection::not_authorized(refused, reason));
            }
            allowed
        }
    }
}

fn check_group_count(groups: &[GroupId]) -> Result<(), HubError> {
    if groups.len() > MAX_GROUPS_PER_MESSAGE {
        Err(HubError::TooManyGroups {
            count: groups.len(),
        })
    } else {
        Ok(())
    }
}
