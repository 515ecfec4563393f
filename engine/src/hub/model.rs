//! State-machine test: the hub against a naive reference model.
//!
//! The model keeps plain vectors and answers every question with a linear scan, in
//! the most literal reading of the contract. Random sequences of every operation
//! (connect, disconnect, group registration and removal, subscribe, unsubscribe,
//! unsubscribe-all, publish, user message, list groups), each as a
//! client command and through the server API on the server's own account or on
//! behalf of a connection, run against both; after every step the deliveries (the
//! exact wire messages, receivers and order), the server API outcomes, the hook
//! calls and the visible state must be equal.
//!
//! The case count comes from `PUSHWIRE_PROPTEST_CASES` (default 256).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use proptest::prelude::*;
use pushwire_protocol::{
    GroupDescription, GroupId, GroupList, GroupSelection, ListGroups, Message, Publish, Published,
    PushRejected, SendUserMessage, Sender, Subscribe, Subscribed, Text, Unsubscribe, Unsubscribed,
    UserMessage, UserMessageDelivered, MAX_USER_ID_CHARS,
};

use super::*;

/// Number of cases for the hub's property tests: `PUSHWIRE_PROPTEST_CASES`, or 256.
pub(crate) fn proptest_cases() -> u32 {
    std::env::var("PUSHWIRE_PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

/// User ids that connect; several spell one user in different cases.
const USERS: &[&str] = &["alice", "Alice", "BOB", "bob", "carol", "Émile", "éMILE"];

/// User ids messages are sent to; one more index stands for a 256-character id.
const RECEIVERS: &[&str] = &["ALICE", "bob", "Carol", "émile", "nobody", ""];

/// Groups registered before the first operation. The policy hooks single out 0, 3, 5,
/// 6 and 7; operations name ids 0 to 9, so some are unknown.
const INITIAL_GROUPS: &[u32] = &[0, 1, 2, 3, 5, 6, 7];

const CONFIG: HubConfig = HubConfig {
    max_payload_bytes: 6,
    session_timeout: std::time::Duration::from_secs(30),
    replay_events: 1024,
    replay_bytes: 1024 * 1024,
};

fn group_ids(ids: &[u32]) -> Vec<GroupId> {
    ids.iter().copied().map(GroupId).collect()
}

fn long_receiver() -> String {
    "x".repeat(MAX_USER_ID_CHARS + 1)
}

// --- The policy both sides apply ----------------------------------------------------------

fn subscribe_policy(origin: Origin, groups: &[GroupId]) -> Verdict {
    if origin != Origin::Client {
        Verdict::Allow
    } else if groups.contains(&GroupId(0)) {
        Verdict::refuse("group 0 is by invitation")
    } else {
        // Often concerns none of the groups asked for: then it refuses nothing.
        Verdict::refuse_groups(group_ids(&[3, 7]), "restricted")
    }
}

fn unsubscribe_policy(origin: Origin) -> Verdict {
    // Refuses notifications too, which must not matter.
    if origin == Origin::Server {
        Verdict::Allow
    } else {
        Verdict::refuse_groups(group_ids(&[5]), "mandatory")
    }
}

fn publish_policy(origin: Origin, payload: &[u8]) -> Verdict {
    if payload.first() == Some(&b'!') {
        Verdict::refuse("no shouting")
    } else if origin == Origin::Client {
        Verdict::refuse_groups(group_ids(&[6]), "announcements only")
    } else {
        Verdict::Allow
    }
}

fn user_message_policy(origin: Origin, receiver: &str) -> Verdict {
    if origin == Origin::Client && receiver.to_lowercase() == "carol" {
        Verdict::refuse("carol is busy")
    } else {
        Verdict::Allow
    }
}

/// One hook call, as both sides record it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HookCall {
    hook: &'static str,
    origin: Origin,
    actor: Actor,
    user: Option<Text>,
    groups: Vec<GroupId>,
    receiver: String,
    payload: Bytes,
}

/// The hub's hooks: the policy above, recording every call.
#[derive(Debug, Default)]
struct PolicyHooks {
    calls: Vec<HookCall>,
}

impl PolicyHooks {
    fn record(
        &mut self,
        hook: &'static str,
        context: &HookContext<'_>,
        groups: &[GroupId],
        receiver: &str,
        payload: &Bytes,
    ) {
        self.calls.push(HookCall {
            hook,
            origin: context.origin,
            actor: context.actor,
            user: context.info.map(|info| info.user_id.clone()),
            groups: groups.to_vec(),
            receiver: receiver.to_string(),
            payload: payload.clone(),
        });
    }
}

impl PushHooks for PolicyHooks {
    fn on_subscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        self.record("subscribe", context, groups, "", &Bytes::new());
        subscribe_policy(context.origin, groups)
    }

    fn on_unsubscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        self.record("unsubscribe", context, groups, "", &Bytes::new());
        unsubscribe_policy(context.origin)
    }

    fn on_publish(
        &mut self,
        context: &HookContext<'_>,
        groups: &[GroupId],
        payload: &Bytes,
    ) -> Verdict {
        self.record("publish", context, groups, "", payload);
        publish_policy(context.origin, payload)
    }

    fn on_user_message(
        &mut self,
        context: &HookContext<'_>,
        receiver: &str,
        payload: &Bytes,
    ) -> Verdict {
        self.record("user_message", context, &[], receiver, payload);
        user_message_policy(context.origin, receiver)
    }
}

// --- The reference model -----------------------------------------------------------------

#[derive(Debug)]
struct ModelConnection {
    id: ConnectionId,
    info: ConnectionInfo,
    /// In the order joined.
    groups: Vec<GroupId>,
    next_seq: u64,
}

#[derive(Debug)]
struct Model {
    last_id: u64,
    /// In ascending id order (appended on connect, never reordered).
    connections: Vec<ModelConnection>,
    /// In the order added.
    groups: Vec<(GroupId, Text)>,
    deliveries: Vec<(ConnectionId, Message)>,
    calls: Vec<HookCall>,
}

impl Model {
    fn new() -> Self {
        Self {
            last_id: 0,
            connections: Vec::new(),
            groups: INITIAL_GROUPS
                .iter()
                .map(|&g| (GroupId(g), Text::from(format!("group {g}"))))
                .collect(),
            deliveries: Vec::new(),
            calls: Vec::new(),
        }
    }

    fn index(&self, id: ConnectionId) -> Result<usize, HubError> {
        self.connections
            .iter()
            .position(|c| c.id == id)
            .ok_or(HubError::UnknownConnection(id))
    }

    fn actor_index(&self, actor: Actor) -> Result<Option<usize>, HubError> {
        match actor {
            Actor::Server => Ok(None),
            Actor::Connection(id) => self.index(id).map(Some),
        }
    }

    fn is_known(&self, group: GroupId) -> bool {
        self.groups.iter().any(|(g, _)| *g == group)
    }

    /// Requested ids split into known and unknown, each ascending without duplicates.
    fn classify(&self, requested: &[GroupId]) -> (Vec<GroupId>, Vec<GroupId>) {
        let mut distinct: Vec<GroupId> = Vec::new();
        for group in requested {
            if !distinct.contains(group) {
                distinct.push(*group);
            }
        }
        distinct.sort();
        distinct
            .into_iter()
            .partition(|group| self.is_known(*group))
    }

    fn sender(&self, index: usize, is_self: bool) -> Sender {
        self.connections[index].info.sender(is_self)
    }

    fn take_seq(&mut self, index: usize) -> u64 {
        let seq = self.connections[index].next_seq;
        self.connections[index].next_seq += 1;
        seq
    }

    fn deliver(&mut self, index: usize, message: Message) {
        self.deliveries.push((self.connections[index].id, message));
    }

    fn call(
        &mut self,
        hook: &'static str,
        origin: Origin,
        actor: Actor,
        groups: &[GroupId],
        receiver: &str,
        payload: &Bytes,
    ) {
        let user = match actor {
            Actor::Server => None,
            Actor::Connection(id) => Some(
                self.connections[self.index(id).unwrap()]
                    .info
                    .user_id
                    .clone(),
            ),
        };
        self.calls.push(HookCall {
            hook,
            origin,
            actor,
            user,
            groups: groups.to_vec(),
            receiver: receiver.to_string(),
            payload: payload.clone(),
        });
    }

    fn apply(verdict: Verdict, groups: Vec<GroupId>, outcome: &mut PushOutcome) -> Vec<GroupId> {
        match verdict {
            Verdict::Allow => groups,
            Verdict::Refuse { reason } => {
                outcome
                    .rejections
                    .push(Rejection::not_authorized(vec![], reason));
                vec![]
            }
            Verdict::RefuseGroups {
                groups: refused_ids,
                reason,
            } => {
                let refused: Vec<GroupId> = groups
                    .iter()
                    .copied()
                    .filter(|g| refused_ids.contains(g))
                    .collect();
                if !refused.is_empty() {
                    outcome
                        .rejections
                        .push(Rejection::not_authorized(refused.clone(), reason));
                }
                groups
                    .into_iter()
                    .filter(|g| !refused.contains(g))
                    .collect()
            }
        }
    }

    fn connect(&mut self, info: ConnectionInfo) -> ConnectionId {
        self.last_id += 1;
        let id = ConnectionId(self.last_id);
        self.connections.push(ModelConnection {
            id,
            info,
            groups: vec![],
            next_seq: 1,
        });
        id
    }

    fn disconnect(&mut self, id: ConnectionId) -> Result<PushOutcome, HubError> {
        let i = self.index(id)?;
        let mut left = self.connections[i].groups.clone();
        left.sort();
        if !left.is_empty() {
            self.call(
                "unsubscribe",
                Origin::Disconnect,
                Actor::Connection(id),
                &left,
                "",
                &Bytes::new(),
            );
        }
        let sender = self.sender(i, false);
        self.connections.remove(i);
        let mut outcome = PushOutcome::default();
        for j in 0..self.connections.len() {
            let shared: Vec<GroupId> = left
                .iter()
                .copied()
                .filter(|g| self.connections[j].groups.contains(g))
                .collect();
            if !shared.is_empty() {
                let seq = self.take_seq(j);
                self.deliver(
                    j,
                    Message::Unsubscribed(Unsubscribed {
                        seq,
                        sender: sender.clone(),
                        groups: shared,
                    }),
                );
                outcome.reached += 1;
            }
        }
        outcome.groups = left;
        Ok(outcome)
    }

    fn add_group(&mut self, group: GroupId, description: Text) -> Result<(), HubError> {
        if self.is_known(group) {
            return Err(HubError::GroupExists(group));
        }
        self.groups.push((group, description));
        Ok(())
    }

    fn remove_group(&mut self, group: GroupId) -> Result<Vec<ConnectionId>, HubError> {
        if !self.is_known(group) {
            return Err(HubError::UnknownGroup(group));
        }
        let members: Vec<usize> = (0..self.connections.len())
            .filter(|&j| self.connections[j].groups.contains(&group))
            .collect();
        for &j in &members {
            let id = self.connections[j].id;
            self.call(
                "unsubscribe",
                Origin::GroupRemoved,
                Actor::Connection(id),
                &[group],
                "",
                &Bytes::new(),
            );
        }
        self.groups.retain(|(g, _)| *g != group);
        for &j in &members {
            self.connections[j].groups.retain(|g| *g != group);
            let seq = self.take_seq(j);
            let sender = self.sender(j, true);
            self.deliver(
                j,
                Message::Unsubscribed(Unsubscribed {
                    seq,
                    sender,
                    groups: vec![group],
                }),
            );
        }
        Ok(members.iter().map(|&j| self.connections[j].id).collect())
    }

    fn subscribe(
        &mut self,
        origin: Origin,
        id: ConnectionId,
        requested: &[GroupId],
    ) -> Result<PushOutcome, HubError> {
        let i = self.index(id)?;
        let mut outcome = PushOutcome::default();
        if requested.is_empty() {
            outcome.rejections.push(Rejection::empty_group_list());
            return Ok(outcome);
        }
        let (known, unknown) = self.classify(requested);
        if !unknown.is_empty() {
            outcome.rejections.push(Rejection::unknown_groups(unknown));
        }
        let candidates: Vec<GroupId> = known
            .into_iter()
            .filter(|g| !self.connections[i].groups.contains(g))
            .collect();
        if candidates.is_empty() {
            return Ok(outcome);
        }
        let actor = Actor::Connection(id);
        self.call("subscribe", origin, actor, &candidates, "", &Bytes::new());
        let verdict = subscribe_policy(origin, &candidates);
        let joined = Self::apply(verdict, candidates, &mut outcome);
        if joined.is_empty() {
            return Ok(outcome);
        }
        self.connections[i].groups.extend(joined.iter().copied());
        let seq = self.take_seq(i);
        let own = self.sender(i, true);
        self.deliver(
            i,
            Message::Subscribed(Subscribed {
                seq,
                sender: own,
                groups: joined.clone(),
            }),
        );
        let sender = self.sender(i, false);
        for j in 0..self.connections.len() {
            if j == i {
                continue;
            }
            let shared: Vec<GroupId> = joined
                .iter()
                .copied()
                .filter(|g| self.connections[j].groups.contains(g))
                .collect();
            if !shared.is_empty() {
                let seq = self.take_seq(j);
                self.deliver(
                    j,
                    Message::Subscribed(Subscribed {
                        seq,
                        sender: sender.clone(),
                        groups: shared,
                    }),
                );
                outcome.reached += 1;
            }
        }
        outcome.groups = joined;
        Ok(outcome)
    }

    fn unsubscribe(
        &mut self,
        origin: Origin,
        id: ConnectionId,
        requested: Option<&[GroupId]>,
    ) -> Result<PushOutcome, HubError> {
        let i = self.index(id)?;
        let mut outcome = PushOutcome::default();
        let candidates: Vec<GroupId> = match requested {
            None => {
                let mut all = self.connections[i].groups.clone();
                all.sort();
                all
            }
            Some([]) => {
                outcome.rejections.push(Rejection::empty_group_list());
                return Ok(outcome);
            }
            Some(requested) => {
                let (known, unknown) = self.classify(requested);
                if !unknown.is_empty() {
                    outcome.rejections.push(Rejection::unknown_groups(unknown));
                }
                known
                    .into_iter()
                    .filter(|g| self.connections[i].groups.contains(g))
                    .collect()
            }
        };
        if candidates.is_empty() {
            return Ok(outcome);
        }
        let actor = Actor::Connection(id);
        self.call("unsubscribe", origin, actor, &candidates, "", &Bytes::new());
        let left = Self::apply(unsubscribe_policy(origin), candidates, &mut outcome);
        if left.is_empty() {
            return Ok(outcome);
        }
        self.connections[i].groups.retain(|g| !left.contains(g));
        let seq = self.take_seq(i);
        let own = self.sender(i, true);
        self.deliver(
            i,
            Message::Unsubscribed(Unsubscribed {
                seq,
                sender: own,
                groups: left.clone(),
            }),
        );
        let sender = self.sender(i, false);
        for j in 0..self.connections.len() {
            if j == i {
                continue;
            }
            let shared: Vec<GroupId> = left
                .iter()
                .copied()
                .filter(|g| self.connections[j].groups.contains(g))
                .collect();
            if !shared.is_empty() {
                let seq = self.take_seq(j);
                self.deliver(
                    j,
                    Message::Unsubscribed(Unsubscribed {
                        seq,
                        sender: sender.clone(),
                        groups: shared,
                    }),
                );
                outcome.reached += 1;
            }
        }
        outcome.groups = left;
        Ok(outcome)
    }

    fn publish(
        &mut self,
        origin: Origin,
        actor: Actor,
        requested: &[GroupId],
        payload: Bytes,
    ) -> Result<PushOutcome, HubError> {
        let publisher = self.actor_index(actor)?;
        let mut outcome = PushOutcome::default();
        if requested.is_empty() {
            outcome.rejections.push(Rejection::empty_group_list());
            return Ok(outcome);
        }
        if payload.len() > CONFIG.max_payload_bytes {
            outcome.rejections.push(Rejection::payload_too_large(
                payload.len(),
                CONFIG.max_payload_bytes,
            ));
            return Ok(outcome);
        }
        let (known, unknown) = self.classify(requested);
        if !unknown.is_empty() {
            outcome.rejections.push(Rejection::unknown_groups(unknown));
        }
        if known.is_empty() {
            return Ok(outcome);
        }
        self.call("publish", origin, actor, &known, "", &payload);
        let targets = Self::apply(publish_policy(origin, &payload), known, &mut outcome);
        if targets.is_empty() {
            return Ok(outcome);
        }
        let sender = match publisher {
            Some(i) => self.sender(i, false),
            None => Sender::Server,
        };
        if let Some(i) = publisher {
            if self.connections[i].info.echo {
                let seq = self.take_seq(i);
                let own = self.sender(i, true);
                self.deliver(
                    i,
                    Message::Published(Published {
                        seq,
                        sender: own,
                        groups: targets.clone(),
                        payload: payload.clone(),
                        compression: None,
                    }),
                );
            }
        }
        for j in 0..self.connections.len() {
            if Some(j) == publisher {
                continue;
            }
            let theirs: Vec<GroupId> = targets
                .iter()
                .copied()
                .filter(|g| self.connections[j].groups.contains(g))
                .collect();
            if !theirs.is_empty() {
                let seq = self.take_seq(j);
                self.deliver(
                    j,
                    Message::Published(Published {
                        seq,
                        sender: sender.clone(),
                        groups: theirs,
                        payload: payload.clone(),
                        compression: None,
                    }),
                );
                outcome.reached += 1;
            }
        }
        outcome.groups = targets;
        Ok(outcome)
    }

    fn send_user_message(
        &mut self,
        origin: Origin,
        actor: Actor,
        receiver: &str,
        payload: Bytes,
    ) -> Result<PushOutcome, HubError> {
        let from = self.actor_index(actor)?;
        let mut outcome = PushOutcome::default();
        if receiver.is_empty() || receiver.chars().count() > MAX_USER_ID_CHARS {
            outcome.rejections.push(Rejection::invalid_receiver());
            return Ok(outcome);
        }
        if payload.len() > CONFIG.max_payload_bytes {
            outcome.rejections.push(Rejection::payload_too_large(
                payload.len(),
                CONFIG.max_payload_bytes,
            ));
            return Ok(outcome);
        }
        self.call("user_message", origin, actor, &[], receiver, &payload);
        if let Verdict::Refuse { reason } = user_message_policy(origin, receiver) {
            outcome
                .rejections
                .push(Rejection::not_authorized(vec![], reason));
            return Ok(outcome);
        }
        let sender = match from {
            Some(i) => self.sender(i, false),
            None => Sender::Server,
        };
        if let Some(i) = from {
            if self.connections[i].info.echo {
                let seq = self.take_seq(i);
                let own = self.sender(i, true);
                self.deliver(
                    i,
                    Message::UserMessage(UserMessage {
                        seq,
                        sender: own,
                        payload: payload.clone(),
                        compression: None,
                    }),
                );
            }
        }
        for j in 0..self.connections.len() {
            let same_user =
                self.connections[j].info.user_id.as_str().to_lowercase() == receiver.to_lowercase();
            if Some(j) != from && same_user {
                let seq = self.take_seq(j);
                self.deliver(
                    j,
                    Message::UserMessage(UserMessage {
                        seq,
                        sender: sender.clone(),
                        payload: payload.clone(),
                        compression: None,
                    }),
                );
                outcome.reached += 1;
            }
        }
        Ok(outcome)
    }

    fn handle_command(&mut self, id: ConnectionId, command: Message) -> Result<(), HubError> {
        let i = self.index(id)?;
        let (command_id, outcome) = match command {
            Message::Subscribe(s) => (s.command_id, self.subscribe(Origin::Client, id, &s.groups)?),
            Message::Unsubscribe(u) => {
                let groups = match &u.groups {
                    GroupSelection::Groups(g) => Some(g.as_slice()),
                    GroupSelection::All => None,
                };
                (u.command_id, self.unsubscribe(Origin::Client, id, groups)?)
            }
            Message::Publish(p) => (
                p.command_id,
                self.publish(Origin::Client, Actor::Connection(id), &p.groups, p.payload)?,
            ),
            Message::SendUserMessage(m) => {
                let outcome = self.send_user_message(
                    Origin::Client,
                    Actor::Connection(id),
                    m.receiver.as_str(),
                    m.payload,
                )?;
                if outcome.rejections.is_empty() {
                    self.deliver(
                        i,
                        Message::UserMessageDelivered(UserMessageDelivered {
                            command_id: m.command_id,
                            connections: outcome.reached,
                        }),
                    );
                }
                (m.command_id, outcome)
            }
            Message::ListGroups(l) => {
                let mut groups: Vec<GroupDescription> = self
                    .groups
                    .iter()
                    .map(|(id, description)| GroupDescription {
                        id: *id,
                        description: description.clone(),
                    })
                    .collect();
                groups.sort_by_key(|g| g.id);
                self.deliver(
                    i,
                    Message::GroupList(GroupList {
                        command_id: l.command_id,
                        groups,
                    }),
                );
                return Ok(());
            }
            other => return Err(HubError::NotAPushCommand(other.kind())),
        };
        for r in outcome.rejections {
            self.deliver(
                i,
                Message::PushRejected(PushRejected {
                    command_id,
                    code: r.code,
                    groups: r.groups,
                    reason: r.reason,
                }),
            );
        }
        Ok(())
    }
}

// --- Operations ----------------------------------------------------------------------------

/// How an operation reaches the hub.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A client command on the acting connection.
    Client,
    /// The server API (on behalf of the acting connection, if there is one).
    Server,
}

/// A random operation. `who` picks a live connection, or now and then a stale or
/// never-issued id.
#[derive(Debug, Clone)]
enum Op {
    Connect {
        user: usize,
        echo: bool,
        v6: bool,
    },
    Disconnect {
        who: u8,
    },
    AddGroup {
        group: u32,
        description: u8,
    },
    RemoveGroup {
        group: u32,
    },
    Subscribe {
        via: Via,
        who: u8,
        groups: Vec<u32>,
    },
    Unsubscribe {
        via: Via,
        who: u8,
        groups: Vec<u32>,
    },
    UnsubscribeAll {
        via: Via,
        who: u8,
    },
    Publish {
        via: Via,
        by: Option<u8>,
        groups: Vec<u32>,
        payload: Vec<u8>,
    },
    UserMessage {
        via: Via,
        by: Option<u8>,
        receiver: usize,
        payload: Vec<u8>,
    },
    ListGroups {
        who: u8,
    },
}

fn via() -> impl Strategy<Value = Via> {
    prop_oneof![Just(Via::Client), Just(Via::Server)]
}

fn groups() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..10, 0..5)
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![b'!', b'a', b'b']), 0..8)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..USERS.len(), prop::bool::weighted(0.8), any::<bool>())
            .prop_map(|(user, echo, v6)| Op::Connect { user, echo, v6 }),
        1 => any::<u8>().prop_map(|who| Op::Disconnect { who }),
        1 => (0u32..10, any::<u8>())
            .prop_map(|(group, description)| Op::AddGroup { group, description }),
        1 => (0u32..10).prop_map(|group| Op::RemoveGroup { group }),
        5 => (via(), any::<u8>(), groups())
            .prop_map(|(via, who, groups)| Op::Subscribe { via, who, groups }),
        2 => (via(), any::<u8>(), groups())
            .prop_map(|(via, who, groups)| Op::Unsubscribe { via, who, groups }),
        1 => (via(), any::<u8>()).prop_map(|(via, who)| Op::UnsubscribeAll { via, who }),
        5 => (via(), prop::option::weighted(0.8, any::<u8>()), groups(), payload())
            .prop_map(|(via, by, groups, payload)| Op::Publish { via, by, groups, payload }),
        3 => (via(), prop::option::weighted(0.8, any::<u8>()), 0..=RECEIVERS.len(), payload())
            .prop_map(|(via, by, receiver, payload)| Op::UserMessage {
                via,
                by,
                receiver,
                payload,
            }),
        1 => any::<u8>().prop_map(|who| Op::ListGroups { who }),
    ]
}

// --- The run -----------------------------------------------------------------------------

struct Run {
    hub: Hub<PolicyHooks>,
    model: Model,
    next_command_id: u64,
    /// What the run produced, by kind, to check the generator's reach.
    seen: BTreeSet<String>,
}

impl Run {
    fn new() -> Self {
        let mut hub = Hub::new(CONFIG, PolicyHooks::default());
        let model = Model::new();
        for (group, description) in &model.groups {
            hub.add_group(*group, description.clone()).unwrap();
        }
        Self {
            hub,
            model,
            next_command_id: 1,
            seen: BTreeSet::new(),
        }
    }

    fn pick(&self, who: u8) -> ConnectionId {
        let live = &self.model.connections;
        let k = usize::from(who) % (live.len() + 1);
        match live.get(k) {
            Some(c) => c.id,
            // A stale, live or never-issued id.
            None => ConnectionId(u64::from(who) % (self.model.last_id + 2)),
        }
    }

    fn command_id(&mut self) -> u64 {
        self.next_command_id += 1;
        self.next_command_id
    }

    /// Runs a group operation as a client command or through the server API.
    fn either(
        &mut self,
        via: Via,
        who: ConnectionId,
        command: impl FnOnce(u64) -> Message,
        server: impl FnOnce(&mut Hub<PolicyHooks>) -> Result<PushOutcome, HubError>,
        model: impl FnOnce(&mut Model, Origin) -> Result<PushOutcome, HubError>,
    ) {
        match via {
            Via::Client => {
                let command = command(self.command_id());
                let expected = self.model.handle_command(who, command.clone());
                assert_eq!(self.hub.handle_command(who, command), expected);
            }
            Via::Server => {
                let expected = model(&mut self.model, Origin::Server);
                assert_eq!(server(&mut self.hub), expected);
            }
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Connect { user, echo, v6 } => {
                let addr = if v6 {
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, user as u16))
                } else {
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, user as u8))
                };
                let info =
                    ConnectionInfo::new(USERS[user], addr, 40_000 + user as u16, 3).with_echo(echo);
                assert_eq!(self.hub.connect(info.clone()), self.model.connect(info));
            }
            Op::Disconnect { who } => {
                let who = self.pick(who);
                let expected = self.model.disconnect(who);
                assert_eq!(self.hub.disconnect(who), expected);
            }
            Op::AddGroup { group, description } => {
                let description = Text::from(format!("added {description}"));
                let expected = self.model.add_group(GroupId(group), description.clone());
                assert_eq!(self.hub.add_group(GroupId(group), description), expected);
            }
            Op::RemoveGroup { group } => {
                let expected = self.model.remove_group(GroupId(group));
                assert_eq!(self.hub.remove_group(GroupId(group)), expected);
            }
            Op::Subscribe { via, who, groups } => {
                let who = self.pick(who);
                let groups = group_ids(&groups);
                let command = |command_id| {
                    Message::Subscribe(Subscribe {
                        command_id,
                        groups: groups.clone(),
                    })
                };
                self.either(
                    via,
                    who,
                    command,
                    |hub| hub.subscribe(who, &groups),
                    |model, origin| model.subscribe(origin, who, &groups),
                );
            }
            Op::Unsubscribe { via, who, groups } => {
                let who = self.pick(who);
                let groups = group_ids(&groups);
                let command = |command_id| {
                    Message::Unsubscribe(Unsubscribe {
                        command_id,
                        groups: GroupSelection::Groups(groups.clone()),
                    })
                };
                self.either(
                    via,
                    who,
                    command,
                    |hub| hub.unsubscribe(who, &groups),
                    |model, origin| model.unsubscribe(origin, who, Some(&groups)),
                );
            }
            Op::UnsubscribeAll { via, who } => {
                let who = self.pick(who);
                let command = |command_id| {
                    Message::Unsubscribe(Unsubscribe {
                        command_id,
                        groups: GroupSelection::All,
                    })
                };
                self.either(
                    via,
                    who,
                    command,
                    |hub| hub.unsubscribe_all(who),
                    |model, origin| model.unsubscribe(origin, who, None),
                );
            }
            Op::Publish {
                via,
                by,
                groups,
                payload,
            } => {
                let groups = group_ids(&groups);
                let payload = Bytes::from(payload);
                match by.map(|who| self.pick(who)) {
                    Some(who) => {
                        let command = |command_id| {
                            Message::Publish(Publish {
                                command_id,
                                groups: groups.clone(),
                                payload: payload.clone(),
                                compression: None,
                            })
                        };
                        let actor = Actor::Connection(who);
                        self.either(
                            via,
                            who,
                            command,
                            |hub| hub.publish(actor, &groups, payload.clone()),
                            |model, origin| model.publish(origin, actor, &groups, payload.clone()),
                        );
                    }
                    None => {
                        let expected = self.model.publish(
                            Origin::Server,
                            Actor::Server,
                            &groups,
                            payload.clone(),
                        );
                        let actual = self.hub.publish(Actor::Server, &groups, payload);
                        assert_eq!(actual, expected);
                    }
                }
            }
            Op::UserMessage {
                via,
                by,
                receiver,
                payload,
            } => {
                let receiver = RECEIVERS
                    .get(receiver)
                    .map_or_else(long_receiver, |r| r.to_string());
                let payload = Bytes::from(payload);
                match by.map(|who| self.pick(who)) {
                    Some(who) => {
                        let command = |command_id| {
                            Message::SendUserMessage(SendUserMessage {
                                command_id,
                                receiver: Text::from(receiver.as_str()),
                                payload: payload.clone(),
                                compression: None,
                            })
                        };
                        let actor = Actor::Connection(who);
                        self.either(
                            via,
                            who,
                            command,
                            |hub| hub.send_user_message(actor, &receiver, payload.clone()),
                            |model, origin| {
                                model.send_user_message(origin, actor, &receiver, payload.clone())
                            },
                        );
                    }
                    None => {
                        let expected = self.model.send_user_message(
                            Origin::Server,
                            Actor::Server,
                            &receiver,
                            payload.clone(),
                        );
                        let actual = self
                            .hub
                            .send_user_message(Actor::Server, &receiver, payload);
                        assert_eq!(actual, expected);
                    }
                }
            }
            Op::ListGroups { who } => {
                let who = self.pick(who);
                let command_id = self.command_id();
                let command = Message::ListGroups(ListGroups { command_id });
                let expected = self.model.handle_command(who, command.clone());
                assert_eq!(self.hub.handle_command(who, command), expected);
            }
        }
    }

    /// Everything observable must agree after every step.
    fn compare(&mut self) {
        let mut delivered = Vec::new();
        while let Some(delivery) = self.hub.poll_delivery() {
            let (to, message) = delivery.clone().into_message();
            assert_eq!(
                delivery.frame_len(),
                message.encoded_len(),
                "frame length of {message:?}"
            );
            self.seen.insert(describe(&message));
            delivered.push((to, message));
        }
        let expected = std::mem::take(&mut self.model.deliveries);
        assert_eq!(delivered, expected, "deliveries");

        let calls: Vec<HookCall> = self.hub.hooks_mut().calls.drain(..).collect();
        assert_eq!(calls, std::mem::take(&mut self.model.calls), "hook calls");

        let model = &self.model;
        assert_eq!(
            self.hub.connections().collect::<Vec<_>>(),
            model.connections.iter().map(|c| c.id).collect::<Vec<_>>()
        );
        for c in &model.connections {
            let mut groups = c.groups.clone();
            groups.sort();
            assert_eq!(
                self.hub.subscriptions(c.id).unwrap().collect::<Vec<_>>(),
                groups
            );
        }
        let mut groups: Vec<(GroupId, Text)> = model.groups.clone();
        groups.sort_by_key(|(g, _)| *g);
        assert_eq!(
            self.hub
                .groups()
                .map(|(g, d)| (g, d.clone()))
                .collect::<Vec<_>>(),
            groups
        );
        for (group, _) in &groups {
            let members: Vec<ConnectionId> = model
                .connections
                .iter()
                .filter(|c| c.groups.contains(group))
                .map(|c| c.id)
                .collect();
            assert_eq!(
                self.hub.group_members(*group).unwrap().collect::<Vec<_>>(),
                members
            );
        }
        for user in USERS.iter().chain(RECEIVERS) {
            let online = model
                .connections
                .iter()
                .any(|c| c.info.user_id.as_str().to_lowercase() == user.to_lowercase());
            assert_eq!(self.hub.is_user_online(user), online, "{user} online");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases()))]

    #[test]
    fn hub_matches_the_reference_model(ops in prop::collection::vec(op(), 1..150)) {
        let mut run = Run::new();
        run.compare();
        for op in ops {
            run.step(op);
            run.compare();
        }
    }
}

/// A delivery's kind, with what distinguishes interesting cases.
fn describe(message: &Message) -> String {
    match message {
        Message::PushRejected(r) => format!("PushRejected {:?}", r.code),
        Message::Published(p) if p.sender == Sender::Server => "Published by server".into(),
        Message::Published(p) if p.sender.is_self() => "Published echo".into(),
        Message::Published(p) if p.groups.len() > 1 => "Published to several".into(),
        Message::UserMessage(m) if m.sender.is_self() => "UserMessage echo".into(),
        Message::UserMessageDelivered(d) if d.connections > 1 => "Delivered to several".into(),
        Message::UserMessageDelivered(d) if d.connections == 0 => "Delivered to none".into(),
        Message::Unsubscribed(u) if u.sender.is_self() => "Unsubscribed self".into(),
        other => other.kind().to_string(),
    }
}

/// Guards the generator: a fixed-seed batch of runs must reach every kind of
/// outcome, so the model comparison is not vacuous.
#[test]
fn the_operation_generator_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    for _ in 0..64 {
        let ops = prop::collection::vec(op(), 1..150)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut run = Run::new();
        for op in ops {
            run.step(op);
            run.compare();
        }
        seen.append(&mut run.seen);
    }
    let expected = [
        "Subscribed",
        "Unsubscribed",
        "Unsubscribed self",
        "Published",
        "Published by server",
        "Published echo",
        "Published to several",
        "UserMessage",
        "UserMessage echo",
        "UserMessageDelivered",
        "Delivered to several",
        "Delivered to none",
        "GroupList",
        "PushRejected EmptyGroupList",
        "PushRejected UnknownGroups",
        "PushRejected NotAuthorized",
        "PushRejected PayloadTooLarge",
        "PushRejected InvalidReceiver",
    ];
    for kind in expected {
        assert!(seen.contains(kind), "never produced: {kind}; saw {seen:?}");
    }
}

#[test]
fn proptest_cases_default_to_256() {
    if std::env::var_os("PUSHWIRE_PROPTEST_CASES").is_none() {
        assert_eq!(proptest_cases(), 256);
    }
}
