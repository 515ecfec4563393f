//! Unit tests of the hub contract, one or more per line of it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use pushwire_protocol::{
    GroupDescription, GroupId, GroupList, GroupSelection, ListGroups, Message, Ping, Publish,
    Published, PushRejected, RejectCode, SendUserMessage, Sender, Subscribe, Subscribed, Text,
    Unsubscribe, Unsubscribed, UserMessage, UserMessageDelivered,
};

use super::*;

// --- Harness -------------------------------------------------------------------------

fn ids(ids: &[u32]) -> Vec<GroupId> {
    ids.iter().copied().map(GroupId).collect()
}

fn info(user: &str, port: u16) -> ConnectionInfo {
    ConnectionInfo::new(user, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port, 7)
}

/// A hub with SocketPro's three tutorial groups.
fn hub_with<H: PushHooks>(hooks: H) -> Hub<H> {
    let mut hub = Hub::new(HubConfig::default(), hooks);
    hub.add_group(GroupId(1), "R&D Department").unwrap();
    hub.add_group(GroupId(2), "Sales Department").unwrap();
    hub.add_group(GroupId(3), "Management Department").unwrap();
    hub
}

fn hub() -> Hub {
    hub_with(AllowAll)
}

fn drain<H: PushHooks>(hub: &mut Hub<H>) -> Vec<(ConnectionId, Message)> {
    let mut out = Vec::new();
    while let Some(delivery) = hub.poll_delivery() {
        assert_eq!(
            delivery.frame_len(),
            delivery.event().clone().into_message().encoded_len(),
            "frame_len of {delivery:?}"
        );
        out.push(delivery.into_message());
    }
    out
}

fn sender<H: PushHooks>(hub: &Hub<H>, connection: ConnectionId, is_self: bool) -> Sender {
    hub.connection_info(connection).unwrap().sender(is_self)
}

/// The sequence number the next push event to `connection` will carry.
fn next_seq<H: PushHooks>(hub: &Hub<H>, connection: ConnectionId) -> u64 {
    hub.connections.get(connection).unwrap().next_seq
}

fn subscribe_cmd(command_id: u64, groups: &[u32]) -> Message {
    Message::Subscribe(Subscribe {
        command_id,
        groups: ids(groups),
    })
}

fn unsubscribe_cmd(command_id: u64, groups: &[u32]) -> Message {
    Message::Unsubscribe(Unsubscribe {
        command_id,
        groups: GroupSelection::Groups(ids(groups)),
    })
}

fn publish_cmd(command_id: u64, groups: &[u32], payload: &'static [u8]) -> Message {
    Message::Publish(Publish {
        command_id,
        groups: ids(groups),
        payload: Bytes::from_static(payload),
        compression: None,
    })
}

fn user_message_cmd(command_id: u64, receiver: &str, payload: &'static [u8]) -> Message {
    Message::SendUserMessage(SendUserMessage {
        command_id,
        receiver: Text::from(receiver),
        payload: Bytes::from_static(payload),
        compression: None,
    })
}

fn subscribed(seq: u64, sender: Sender, groups: &[u32]) -> Message {
    Message::Subscribed(Subscribed {
        seq,
        sender,
        groups: ids(groups),
    })
}

fn unsubscribed(seq: u64, sender: Sender, groups: &[u32]) -> Message {
    Message::Unsubscribed(Unsubscribed {
        seq,
        sender,
        groups: ids(groups),
    })
}

fn published(seq: u64, sender: Sender, groups: &[u32], payload: &'static [u8]) -> Message {
    Message::Published(Published {
        seq,
        sender,
        groups: ids(groups),
        payload: Bytes::from_static(payload),
        compression: None,
    })
}

fn user_message(seq: u64, sender: Sender, payload: &'static [u8]) -> Message {
    Message::UserMessage(UserMessage {
        seq,
        sender,
        payload: Bytes::from_static(payload),
        compression: None,
    })
}

fn rejected(command_id: u64, code: RejectCode, groups: &[u32], reason: &Text) -> Message {
    Message::PushRejected(PushRejected {
        command_id,
        code,
        groups: ids(groups),
        reason: reason.clone(),
    })
}

/// The reason text of the only PushRejected among `out` (reasons are prose; tests
/// check codes and groups exactly and take the text from the message).
fn reason_of(out: &[(ConnectionId, Message)], code: RejectCode) -> Text {
    let reasons: Vec<&Text> = out
        .iter()
        .filter_map(|(_, m)| match m {
            Message::PushRejected(r) if r.code == code => Some(&r.reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 1, "one {code:?} rejection in {out:?}");
    reasons[0].clone()
}

/// Connects `users` and subscribes each to its groups through the server API, then
/// drops the events that produced.
fn populate<H: PushHooks>(hub: &mut Hub<H>, users: &[(&str, &[u32])]) -> Vec<ConnectionId> {
    let connections: Vec<ConnectionId> = users
        .iter()
        .enumerate()
        .map(|(i, (user, groups))| {
            let c = hub.connect(info(user, 5000 + i as u16));
            if !groups.is_empty() {
                hub.subscribe(c, &ids(groups)).unwrap();
            }
            c
        })
        .collect();
    drain(hub);
    connections
}

/// What a test hook was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HookCall {
    hook: &'static str,
    origin: Origin,
    actor: Actor,
    groups: Vec<GroupId>,
}

/// Hooks that record every call and answer with preset verdicts.
#[derive(Debug, Default)]
struct Scripted {
    calls: Vec<HookCall>,
    subscribe: Verdict,
    unsubscribe: Verdict,
    publish: Verdict,
    user_message: Verdict,
}

impl Scripted {
    fn record(&mut self, hook: &'static str, context: &HookContext<'_>, groups: &[GroupId]) {
        assert_eq!(
            context.info.is_some(),
            matches!(context.actor, Actor::Connection(_))
        );
        self.calls.push(HookCall {
            hook,
            origin: context.origin,
            actor: context.actor,
            groups: groups.to_vec(),
        });
    }
}

impl PushHooks for Scripted {
    fn on_subscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        self.record("subscribe", context, groups);
        self.subscribe.clone()
    }

    fn on_unsubscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        self.record("unsubscribe", context, groups);
        self.unsubscribe.clone()
    }

    fn on_publish(&mut self, context: &HookContext<'_>, groups: &[GroupId], _: &Bytes) -> Verdict {
        self.record("publish", context, groups);
        self.publish.clone()
    }

    fn on_user_message(&mut self, context: &HookContext<'_>, _: &str, _: &Bytes) -> Verdict {
        self.record("user_message", context, &[]);
        self.user_message.clone()
    }
}

// --- Connections ---------------------------------------------------------------------

#[test]
fn connections_get_ascending_ids_that_are_never_reused() {
    let mut hub = hub();
    let a = hub.connect(info("a", 1));
    let b = hub.connect(info("b", 2));
    assert_eq!((a, b), (ConnectionId(1), ConnectionId(2)));
    hub.disconnect(a).unwrap();
    let c = hub.connect(info("c", 3));
    assert_eq!(c, ConnectionId(3));
    assert_eq!(hub.connections().collect::<Vec<_>>(), vec![b, c]);
    assert_eq!(hub.connection_count(), 2);
    assert_eq!(hub.connection_info(c).unwrap().user_id, "c");
    assert!(hub.connection_info(a).is_none());
    assert!(
        drain(&mut hub).is_empty(),
        "joining and leaving alone is silent"
    );
}

#[test]
fn echo_is_on_by_default() {
    assert!(info("a", 1).echo);
    assert!(!info("a", 1).with_echo(false).echo);
}

#[test]
fn unknown_connections_are_errors() {
    let mut hub = hub();
    let gone = ConnectionId(9);
    let err = Err(HubError::UnknownConnection(gone));
    assert_eq!(hub.disconnect(gone), err);
    assert_eq!(hub.subscribe(gone, &ids(&[1])), err);
    assert_eq!(hub.unsubscribe(gone, &ids(&[1])), err);
    assert_eq!(hub.unsubscribe_all(gone), err);
    assert_eq!(
        hub.publish(Actor::Connection(gone), &ids(&[1]), Bytes::new()),
        err
    );
    assert_eq!(
        hub.send_user_message(Actor::Connection(gone), "x", Bytes::new()),
        err
    );
    assert_eq!(
        hub.handle_command(gone, subscribe_cmd(1, &[1])),
        Err(HubError::UnknownConnection(gone))
    );
    assert!(drain(&mut hub).is_empty());
}

#[test]
fn handle_command_refuses_messages_that_are_not_push_commands() {
    let mut hub = hub();
    let a = hub.connect(info("a", 1));
    assert_eq!(
        hub.handle_command(a, Message::Ping(Ping { nonce: 1 })),
        Err(HubError::NotAPushCommand(MessageKind::Ping))
    );
    assert!(drain(&mut hub).is_empty());
}

#[test]
fn user_presence_is_case_insensitive() {
    let mut hub = hub();
    assert!(!hub.is_user_online("Alice"));
    let a1 = hub.connect(info("Alice", 1));
    let a2 = hub.connect(info("ALICE", 2));
    hub.connect(info("bob", 3));
    assert!(hub.is_user_online("alice"));
    assert_eq!(
        hub.user_connections("aLiCe").collect::<Vec<_>>(),
        vec![a1, a2]
    );
    hub.disconnect(a1).unwrap();
    assert!(hub.is_user_online("alice"));
    hub.disconnect(a2).unwrap();
    assert!(!hub.is_user_online("alice"));
    assert_eq!(hub.user_connections("alice").count(), 0);
}

// --- Chat groups -----------------------------------------------------------------------

#[test]
fn groups_are_listed_with_descriptions_and_can_be_added_at_run_time() {
    let mut hub = hub();
    let a = hub.connect(info("a", 1));
    assert_eq!(
        hub.add_group(GroupId(2), "again"),
        Err(HubError::GroupExists(GroupId(2)))
    );
    hub.add_group(GroupId(0), "Lobby").unwrap();
    assert_eq!(
        hub.group_description(GroupId(2)).unwrap(),
        "Sales Department"
    );
    let listed: Vec<(GroupId, String)> = hub
        .groups()
        .map(|(id, description)| (id, description.to_string()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (GroupId(0), "Lobby".to_string()),
            (GroupId(1), "R&D Department".to_string()),
            (GroupId(2), "Sales Department".to_string()),
            (GroupId(3), "Management Department".to_string()),
        ]
    );

    hub.handle_command(a, Message::ListGroups(ListGroups { command_id: 4 }))
        .unwrap();
    let expected = GroupList {
        command_id: 4,
        groups: listed
            .iter()
            .map(|(id, d)| GroupDescription {
                id: *id,
                description: Text::from(d.as_str()),
            })
            .collect(),
    };
    assert_eq!(drain(&mut hub), vec![(a, Message::GroupList(expected))]);

    // A group added at run time can be joined at once.
    hub.subscribe(a, &ids(&[0])).unwrap();
    assert_eq!(
        hub.group_members(GroupId(0)).unwrap().collect::<Vec<_>>(),
        vec![a]
    );
    assert!(hub.group_members(GroupId(9)).is_none());
}

#[test]
fn removing_a_group_unsubscribes_its_members_with_notifications() {
    let mut hub = hub_with(Scripted {
        // Notifications cannot be refused.
        unsubscribe: Verdict::refuse("never"),
        ..Scripted::default()
    });
    let [a, b, c] = populate(&mut hub, &[("a", &[1, 2]), ("b", &[2]), ("c", &[1])])[..] else {
        unreachable!()
    };
    hub.hooks_mut().calls.clear();
    let (seq_a, seq_b) = (next_seq(&hub, a), next_seq(&hub, b));

    assert_eq!(hub.remove_group(GroupId(2)), Ok(vec![a, b]));
    assert_eq!(
        drain(&mut hub),
        vec![
            (a, unsubscribed(seq_a, sender(&hub, a, true), &[2])),
            (b, unsubscribed(seq_b, sender(&hub, b, true), &[2])),
        ]
    );
    assert_eq!(
        hub.hooks().calls,
        vec![
            HookCall {
                hook: "unsubscribe",
                origin: Origin::GroupRemoved,
                actor: Actor::Connection(a),
                groups: ids(&[2]),
            },
            HookCall {
                hook: "unsubscribe",
                origin: Origin::GroupRemoved,
                actor: Actor::Connection(b),
                groups: ids(&[2]),
            },
        ]
    );
    assert_eq!(hub.subscriptions(a).unwrap().collect::<Vec<_>>(), ids(&[1]));
    assert_eq!(hub.subscriptions(b).unwrap().count(), 0);
    assert!(hub.group_description(GroupId(2)).is_none());
    assert_eq!(
        hub.remove_group(GroupId(2)),
        Err(HubError::UnknownGroup(GroupId(2)))
    );

    // The group is now unknown to every operation.
    hub.handle_command(c, subscribe_cmd(5, &[2])).unwrap();
    let out = drain(&mut hub);
    let reason = reason_of(&out, RejectCode::UnknownGroups);
    assert_eq!(
        out,
        vec![(c, rejected(5, RejectCode::UnknownGroups, &[2], &reason))]
    );
}

// --- Subscribe and unsubscribe ---------------------------------------------------------

#[test]
fn subscribe_tells_the_member_and_only_the_connections_sharing_a_group() {
    let mut hub = hub();
    let [a, b, c, d] = populate(
        &mut hub,
        &[("a", &[]), ("b", &[1]), ("c", &[2, 3]), ("d", &[3])],
    )[..] else {
        unreachable!()
    };

    let (seq_b, seq_c) = (next_seq(&hub, b), next_seq(&hub, c));
    hub.handle_command(a, subscribe_cmd(1, &[1, 2])).unwrap();
    let a_peer = sender(&hub, a, false);
    assert_eq!(
        drain(&mut hub),
        vec![
            (a, subscribed(1, sender(&hub, a, true), &[1, 2])),
            (b, subscribed(seq_b, a_peer.clone(), &[1])),
            (c, subscribed(seq_c, a_peer, &[2])),
            // d shares nothing with a: not told.
        ]
    );
    assert_eq!(
        hub.subscriptions(a).unwrap().collect::<Vec<_>>(),
        ids(&[1, 2])
    );
    assert_eq!(
        hub.group_members(GroupId(1)).unwrap().collect::<Vec<_>>(),
        vec![a, b]
    );
    let _ = d;
}

#[test]
fn presence_lists_every_shared_group_once_per_receiver() {
    let mut hub = hub();
    let [a, b] = populate(&mut hub, &[("a", &[]), ("b", &[1, 2, 3])])[..] else {
        unreachable!()
    };
    let outcome = hub.subscribe(a, &ids(&[3, 1, 2])).unwrap();
    assert_eq!(
        outcome,
        PushOutcome {
            groups: ids(&[1, 2, 3]),
            reached: 1,
            rejections: vec![],
            ..PushOutcome::default()
        }
    );
    let deliveries: Vec<Delivery> = std::iter::from_fn(|| hub.poll_delivery()).collect();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[1].connection(), b);
    let (own, other) = (deliveries[0].event(), deliveries[1].event());
    let (own, other) = (own.groups().unwrap(), other.groups().unwrap());
    assert_eq!(other.to_vec(), ids(&[1, 2, 3]));
    assert!(
        own.shares_list_with(other),
        "a receiver in every group shares the member's list"
    );
}

#[test]
fn subscribe_refuses_an_empty_list() {
    let mut hub = hub();
    let a = hub.connect(info("a", 1));
    hub.handle_command(a, subscribe_cmd(3, &[])).unwrap();
    let out = drain(&mut hub);
    let reason = reason_of(&out, RejectCode::EmptyGroupList);
    assert_eq!(
        out,
        vec![(a, rejected(3, RejectCode::EmptyGroupList, &[], &reason))]
    );

    let outcome = hub.subscribe(a, &[]).unwrap();
    assert_eq!(outcome.rejections[0].code, RejectCode::EmptyGroupList);
    assert!(
        drain(&mut hub).is_empty(),
        "the server API answers in the outcome"
    );
}

#[test]
fn subscribe_reports_unknown_groups_and_joins_the_known_ones() {
    let mut hub = hub();
    let a = hub.connect(info("a", 1));
    hub.handle_command(a, subscribe_cmd(8, &[99, 1, 42, 99]))
        .unwrap();
    let out = drain(&mut hub);
    let reason = reason_of(&out, RejectCode::UnknownGroups);
    assert_eq!(
        out,
        vec![
            (a, subscribed(1, sender(&hub, a, true), &[1])),
            (
                a,
                rejected(8, RejectCode::UnknownGroups, &[42, 99], &reason)
            ),
        ]
    );

    // Only unknown groups: nothing joined, still reported.
    let outcome = hub.subscribe(a, &ids(&[77])).unwrap();
    assert_eq!(outcome.groups, vec![]);
    assert_eq!(outcome.rejections[0].code, RejectCode::UnknownGroups);
    assert_eq!(outcome.rejections[0].groups, ids(&[77]));
    assert!(drain(&mut hub).is_empty());
}

#[test]
fn subscribe_ignores_duplicates_and_groups_already_joined() {
    let mut hub = hub();
    let [a, b] = populate(&mut hub, &[("a", &[1]), ("b", &[1, 2])])[..] else {
        unreachable!()
    };
    // a: its own Subscribed, then Subscribed(b); b: its own Subscribed.
    assert_eq!((next_seq(&hub, a), next_seq(&hub, b)), (3, 2));
    hub.handle_command(a, subscribe_cmd(1, &[2, 1, 2])).unwrap();
    assert_eq!(
        drain(&mut hub),
        vec![
            (a, subscribed(3, sender(&hub, a, true), &[2])),
            (b, subscribed(2, sender(&hub, a, false), &[2])),
        ]
    );
    // Nothing new: no event at all.
    hub.handle_command(a, subscribe_cmd(2, &[1, 2])).unwrap();
    assert!(drain(&mut hub).is_empty());
}

#[test]
fn unsubscribe_mirrors_subscribe() {
    let mut hub = hub();
    let [a, b, c] = populate(&mut hub, &[("a", &[1, 2]), ("b", &[1]), ("c", &[3])])[..] else {
        unreachable!()
    };
    let (seq_a, seq_b) = (next_seq(&hub, a), next_seq(&hub, b));
    hub.handle_command(a, unsubscribe_cmd(1, &[1, 3, 50]))
        .unwrap();
    let out = drain(&mut hub);
    let reason = reason_of(&out, RejectCode::UnknownGroups);
    assert_eq!(
        out,
        vec![
            // 3 is known but a is not in it: ignored. 50 is unknown: reported.
            (a, unsubscribed(seq_a, sender(&hub, a, true), &[1])),
            (b, unsubscribed(seq_b, sender(&hub, a, false), &[1])),
            (a, rejected(1, RejectCode::UnknownGroups, &[50], &reason)),
        ]
    );
    hub.handle_command(a, unsubscribe_cmd(2, &[])).unwrap();
    let out = drain(&mut hub);
    let reason = reason_of(&out, RejectCode::EmptyGroupList);
    assert_eq!(
        out,
        vec![(a, rejected(2, RejectCode::EmptyGroupList, &[], &reason))]
    );
    let _ = c;
}

#[test]
fn unsubscribe_all_leaves_every_group_and_tells_each_sharer_its_groups() {
    let mut hub = hub();
    let [a, b, c] = populate(&mut hub, &[("a", &[1, 2, 3]), ("b", &[1, 3]), ("c", &[2])])[..]
    else {
        unreachable!()
    };
    hub.handle_command(
        a,
        Message::Unsubscribe(Unsubscribe {
            command_id: 1,
            groups: GroupSelection::All,
        }),
    )
    .unwrap();
    let out = drain(&mut hub);
    let a_peer = sender(&hub, a, false);
    let shapes: Vec<(ConnectionId, Vec<GroupId>, bool)> = out
        .iter()
        .map(|(to, m)| match m {
            Message::Unsubscribed(u) => (*to, u.groups.clone(), u.sender.is_self()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        shapes,
        vec![
            (a, ids(&[1, 2, 3]), true),
            (b, ids(&[1, 3]), false),
            (c, ids(&[2]), false),
        ]
    );
    assert!(out.iter().skip(1).all(|(_, m)| match m {
        Message::Unsubscribed(u) => u.sender == a_peer,
        _ => false,
    }));
    assert_eq!(hub.subscriptions(a).unwrap().count(), 0);

    // Nothing left to leave: silent.
    assert_eq!(hub.unsubscribe_all(a).unwrap(), PushOutcome::default());
    assert!(drain(&mut hub).is_empty());
}

#[test]
fn disconnect_is_an_unsubscribe_all_that_notifies_the_hooks() {
    let mut hub = hub_with(Scripted {
        unsubscribe: Verdict::refuse("notifications cannot refuse"),
        ..Scripted::default()
    });
    let [a, b, c] = populate(&mut hub, &[("a", &[1, 2]), ("b", &[2, 3]), ("c", &[3])])[..] else {
        unreachable!()
    };
    hub.hooks_mut().calls.clear();
    let a_peer = sender(&hub, a, false);
    let outcome = hub.disconnect(a).unwrap();
    assert_eq!(outcome.groups, ids(&[1, 2]));
    assert_eq!(outcome.reached, 1);
    let out = drain(&mut hub);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, b);
    assert!(
        matches!(&out[0].1, Message::Unsubscribed(u) if u.sender == a_peer && u.groups == ids(&[2]))
    );
    assert_eq!(
        hub.hooks().calls,
        vec![HookCall {
            hook: "unsubscribe",
            origin: Origin::Disconnect,
            actor: Actor::Connection(a),
            groups: ids(&[1, 2]),
        }]
    );
    assert_eq!(
        hub.group_members(GroupId(2)).unwrap().collect::<Vec<_>>(),
        vec![b]
    );
    let _ = c;
}

// --- Publish ---------------------------------------------------------------------------

#[test]
fn publish_sends_one_copy_per_receiver_with_the_targets_it_belongs_to() {
    let mut hub = hub();
    let [p, a, b, c, d] = populate(
        &mut hub,
        &[
            ("p", &[]),
            ("a", &[1]),
            ("b", &[1, 2, 3]),
            ("c", &[2]),
            ("d", &[3]),
        ],
    )[..] else {
        unreachable!()
    };
    let seqs: Vec<u64> = [a, b, c].iter().map(|&x| next_seq(&hub, x)).collect();
    hub.handle_command(p, publish_cmd(1, &[2, 1], b"hi"))
        .unwrap();
    let p_peer = sender(&hub, p, false);
    assert_eq!(
        drain(&mut hub),
        vec![
            (p, published(1, sender(&hub, p, true), &[1, 2], b"hi")),
            (a, published(seqs[0], p_peer.clone(), &[1], b"hi")),
            (b, published(seqs[1], p_peer.clone(), &[1, 2], b"hi")),
            (c, published(seqs[2], p_peer, &[2], b"hi")),
            // d is only in 3: not a target.
        ]
    );
    let _ = d;
}

#[test]
fn publish_shares_the_payload_and_the_target_list_among_receivers() {
    let mut hub = hub();
    let [p, _a, _b, _c] = populate(
        &mut hub,
        &[("p", &[]), ("a", &[1, 2]), ("b", &[1, 2]), ("c", &[2])],
    )[..] else {
        unreachable!()
    };
    let payload = Bytes::from(vec![7u8; 100]);
    hub.publish(Actor::Connection(p), &ids(&[1, 2]), payload.clone())
        .unwrap();
    let deliveries: Vec<Delivery> = std::iter::from_fn(|| hub.poll_delivery()).collect();
    assert_eq!(deliveries.len(), 4);
    for delivery in &deliveries {
        assert_eq!(
            delivery.event().payload().unwrap().as_ptr(),
            payload.as_ptr()
        );
    }
    let echo = deliveries[0].event();
    let echo = echo.groups().unwrap();
    // a and b are in every target: they share the echo's list.
    assert!(deliveries[1]
        .event()
        .groups()
        .unwrap()
        .shares_list_with(echo));
    assert!(deliveries[2]
        .event()
        .groups()
        .unwrap()
        .shares_list_with(echo));
    // c is in one of them: a subset over the same list, no list of its own.
    let c_event = deliveries[3].event();
    let c_groups = c_event.groups().unwrap();
    assert!(c_groups.shares_list_with(echo));
    assert_eq!(c_groups.to_vec(), ids(&[2]));
    c_groups.with_slice(|slice| assert_eq!(slice, &ids(&[2])[..]));
}

#[test]
fn publish_to_more_than_64_targets_gives_partial_members_their_own_list() {
    let mut hub = Hub::new(HubConfig::default(), AllowAll);
    let all: Vec<GroupId> = (0..70).map(GroupId).collect();
    for &g in &all {
        hub.add_group(g, "g").unwrap();
    }
    let p = hub.connect(info("p", 1));
    let full = hub.connect(info("full", 2));
    let some = hub.connect(info("some", 3));
    hub.subscribe(full, &all).unwrap();
    hub.subscribe(some, &ids(&[0, 65, 69])).unwrap();
    drain(&mut hub);
    let outcome = hub
        .publish(Actor::Connection(p), &all, Bytes::from_static(b"x"))
        .unwrap();
    assert_eq!(outcome.reached, 2);
    let deliveries: Vec<Delivery> = std::iter::from_fn(|| hub.poll_delivery()).collect();
    let groups: Vec<Vec<GroupId>> = deliveries
        .iter()
        .map(|d| d.event().groups().unwrap().to_vec())
        .collect();
    assert_eq!(groups, vec![all.clone(), all, ids(&[0, 65, 69])]);
    for d in &deliveries {
        assert_eq!(
            d.frame_len(),
            d.event().clone().into_message().encoded_len()
        );
    }
}

#[test]
fn publish_echo_follows_the_publishers_option_and_ignores_membership() {
    let mut hub = hub();
    let on_member = hub.connect(info("on", 1));
    let off_member = hub.connect(info("off", 2).with_echo(false));
    let on_outsider = hub.connect(info("out", 3));
    hub.subscribe(on_member, &ids(&[1])).unwrap();
    hub.subscribe(off_member, &ids(&[1])).unwrap();
    drain(&mut hub);

    // Echo on, member: one self-flagged copy, not a second member copy.
    hub.publish(
        Actor::Connection(on_member),
        &ids(&[1]),
        Bytes::from_static(b"1"),
    )
    .unwrap();
    let out = drain(&mut hub);
    assert_eq!(
        out.iter().map(|(c, m)| (*c, m.kind())).collect::<Vec<_>>(),
        vec![
            (on_member, MessageKind::Published),
            (off_member, MessageKind::Published),
        ]
    );
    assert!(matches!(&out[0].1, Message::Published(p) if p.sender.is_self()));
    assert!(matches!(&out[1].1, Message::Published(p) if !p.sender.is_self()));

    // Echo off, member: nothing for the publisher.
    hub.publish(
        Actor::Connection(off_member),
        &ids(&[1]),
        Bytes::from_static(b"2"),
    )
    .unwrap();
    let out = drain(&mut hub);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, on_member);

    // Echo on, not a member: the echo with every target.
    hub.publish(
        Actor::Connection(on_outsider),
        &ids(&[1, 2]),
        Bytes::from_static(b"3"),
    )
    .unwrap();
    let out = drain(&mut hub);
    assert_eq!(
        out[0],
        (
            on_outsider,
            published(1, sender(&hub, on_outsider, true), &[1, 2], b"3")
        )
    );
    assert_eq!(out.len(), 3);
}

#[test]
fn publish_reports_unknown_targets_and_publishes_to_the_known_ones() {
    let mut hub = hub();
    let [p, a] = populate(&mut hub, &[("p", &[]), ("a", &[1])])[..] else {
        unreachable!()
    };
    hub.handle_command(p, publish_cmd(6, &[1, 9], b"x"))
        .unwrap();
    let out = drain(&mut hub);
    let reason = reason_of(&out, RejectCode::UnknownGroups);
    assert_eq!(
        out,
        vec![
            (p, published(1, sender(&hub, p, true), &[1], b"x")),
            (a, published(2, sender(&hub, p, false), &[1], b"x")),
            (p, rejected(6, RejectCode::UnknownGroups, &[9], &reason)),
        ]
    );
    // No known target: not published at all, not even echoed.
    hub.handle_command(p, publish_cmd(7, &[9], b"x")).unwrap();
    let out = drain(&mut hub);
    let reason = reason_of(&out, RejectCode::UnknownGroups);
    assert_eq!(
        out,
        vec![(p, rejected(7, RejectCode::UnknownGroups, &[9], &reason))]
    );
}

#[test]
fn publish_refuses_an_empty_list_and_a_payload_over_the_limit() {
    let mut hub = Hub::new(
        HubConfig {
            max_payload_bytes: 4,
            ..HubConfig::default()
        },
        AllowAll,
    );
    hub.add_group(GroupId(1), "g").unwrap();
    let p = hub.connect(info("p", 1));
    hub.handle_command(p, publish_cmd(1, &[], b"x")).unwrap();
    hub.handle_command(p, publish_cmd(2, &[1], b"12345"))
        .unwrap();
    hub.handle_command(p, user_message_cmd(3, "p", b"12345"))
        .unwrap();
    let codes: Vec<(u64, RejectCode)> = drain(&mut hub)
        .into_iter()
        .map(|(_, m)| match m {
            Message::PushRejected(r) => (r.command_id, r.code),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (1, RejectCode::EmptyGroupList),
            (2, RejectCode::PayloadTooLarge),
            (3, RejectCode::PayloadTooLarge),
        ]
    );
    // At the limit is fine.
    let outcome = hub
        .publish(Actor::Server, &ids(&[1]), Bytes::from_static(b"1234"))
        .unwrap();
    assert!(outcome.is_complete());
}

#[test]
fn server_publishes_on_its_own_with_the_server_sender_and_no_echo() {
    let mut hub = hub();
    let [a, b] = populate(&mut hub, &[("a", &[1]), ("b", &[2])])[..] else {
        unreachable!()
    };
    let outcome = hub
        .publish(Actor::Server, &ids(&[2, 3]), Bytes::from_static(b"hello"))
        .unwrap();
    assert_eq!(
        outcome,
        PushOutcome {
            groups: ids(&[2, 3]),
            reached: 1,
            rejections: vec![],
            ..PushOutcome::default()
        }
    );
    assert_eq!(
        drain(&mut hub),
        vec![(b, published(2, Sender::Server, &[2], b"hello"))]
    );
    let _ = a;
}

#[test]
fn server_publishes_on_behalf_of_a_connection() {
    let mut hub = hub();
    let [a, b] = populate(&mut hub, &[("a", &[]), ("b", &[1])])[..] else {
        unreachable!()
    };
    let outcome = hub
        .publish(Actor::Connection(a), &ids(&[1]), Bytes::from_static(b"m"))
        .unwrap();
    assert_eq!(outcome.reached, 1);
    assert_eq!(
        drain(&mut hub),
        vec![
            (a, published(1, sender(&hub, a, true), &[1], b"m")),
            (b, published(2, sender(&hub, a, false), &[1], b"m")),
        ]
    );
}

#[test]
fn server_subscribes_and_unsubscribes_on_behalf_of_a_connection() {
    let mut hub = hub_with(Scripted::default());
    let [a, b] = populate(&mut hub, &[("a", &[]), ("b", &[1])])[..] else {
        unreachable!()
    };
    hub.hooks_mut().calls.clear();
    let outcome = hub.subscribe(a, &ids(&[1, 2, 8])).unwrap();
    assert_eq!(outcome.groups, ids(&[1, 2]));
    assert_eq!(outcome.reached, 1);
    assert_eq!(outcome.rejections.len(), 1);
    assert_eq!(outcome.rejections[0].code, RejectCode::UnknownGroups);
    assert_eq!(outcome.rejections[0].groups, ids(&[8]));
    assert_eq!(
        drain(&mut hub),
        vec![
            (a, subscribed(1, sender(&hub, a, true), &[1, 2])),
            (b, subscribed(2, sender(&hub, a, false), &[1])),
        ]
    );
    let outcome = hub.unsubscribe(a, &ids(&[1])).unwrap();
    assert_eq!((outcome.groups, outcome.reached), (ids(&[1]), 1));
    assert_eq!(
        drain(&mut hub),
        vec![
            (a, unsubscribed(2, sender(&hub, a, true), &[1])),
            (b, unsubscribed(3, sender(&hub, a, false), &[1])),
        ]
    );
    assert_eq!(
        hub.hooks().calls,
        vec![
            HookCall {
                hook: "subscribe",
                origin: Origin::Server,
                actor: Actor::Connection(a),
                groups: ids(&[1, 2]),
            },
            HookCall {
                hook: "unsubscribe",
                origin: Origin::Server,
                actor: Actor::Connection(a),
                groups: ids(&[1]),
            },
        ]
    );
    assert_eq!(
        hub.subscribe(a, &vec![GroupId(1); MAX_GROUPS_PER_MESSAGE + 1]),
        Err(HubError::TooManyGroups {
            count: MAX_GROUPS_PER_MESSAGE + 1
        })
    );
}

// --- User messages ---------------------------------------------------------------------

#[test]
fn user_messages_reach_every_connection_of_the_user_case_insensitively() {
    let mut hub = hub();
    let s = hub.connect(info("sender", 1));
    let b1 = hub.connect(info("Björn", 2));
    let other = hub.connect(info("carl", 3));
    let b2 = hub.connect(info("BJÖRN", 4));
    hub.handle_command(s, user_message_cmd(11, "björn", b"hej"))
        .unwrap();
    let s_peer = sender(&hub, s, false);
    assert_eq!(
        drain(&mut hub),
        vec![
            (s, user_message(1, sender(&hub, s, true), b"hej")),
            (b1, user_message(1, s_peer.clone(), b"hej")),
            (b2, user_message(1, s_peer, b"hej")),
            (
                s,
                Message::UserMessageDelivered(UserMessageDelivered {
                    command_id: 11,
                    connections: 2,
                })
            ),
        ]
    );
    let _ = other;
}

#[test]
fn a_user_message_to_an_offline_user_reaches_no_one() {
    let mut hub = hub();
    let s = hub.connect(info("sender", 1).with_echo(false));
    hub.handle_command(s, user_message_cmd(2, "nobody", b"?"))
        .unwrap();
    assert_eq!(
        drain(&mut hub),
        vec![(
            s,
            Message::UserMessageDelivered(UserMessageDelivered {
                command_id: 2,
                connections: 0,
            })
        )]
    );
    let outcome = hub
        .send_user_message(Actor::Server, "nobody", Bytes::new())
        .unwrap();
    assert_eq!(outcome.reached, 0);
    assert!(outcome.is_complete());
}

#[test]
fn a_user_message_to_ones_own_user_counts_the_other_connections_only() {
    let mut hub = hub();
    let me1 = hub.connect(info("me", 1));
    let me2 = hub.connect(info("ME", 2));
    hub.handle_command(me1, user_message_cmd(1, "Me", b"note"))
        .unwrap();
    assert_eq!(
        drain(&mut hub),
        vec![
            (me1, user_message(1, sender(&hub, me1, true), b"note")),
            (me2, user_message(1, sender(&hub, me1, false), b"note")),
            (
                me1,
                Message::UserMessageDelivered(UserMessageDelivered {
                    command_id: 1,
                    connections: 1,
                })
            ),
        ]
    );
}

#[test]
fn a_user_message_needs_a_valid_receiver() {
    let mut hub = hub();
    let s = hub.connect(info("s", 1));
    hub.handle_command(s, user_message_cmd(1, "", b"x"))
        .unwrap();
    let long = "é".repeat(MAX_USER_ID_CHARS + 1);
    hub.handle_command(s, user_message_cmd(2, &long, b"x"))
        .unwrap();
    let codes: Vec<(u64, RejectCode)> = drain(&mut hub)
        .into_iter()
        .map(|(_, m)| match m {
            Message::PushRejected(r) => (r.command_id, r.code),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (1, RejectCode::InvalidReceiver),
            (2, RejectCode::InvalidReceiver)
        ]
    );
    let at_limit = "é".repeat(MAX_USER_ID_CHARS);
    assert!(hub
        .send_user_message(Actor::Server, &at_limit, Bytes::new())
        .unwrap()
        .is_complete());
}

#[test]
fn server_sends_user_messages_on_its_own_and_on_behalf_of_a_connection() {
    let mut hub = hub();
    let a = hub.connect(info("a", 1));
    let b = hub.connect(info("b", 2));
    let outcome = hub
        .send_user_message(Actor::Server, "B", Bytes::from_static(b"1"))
        .unwrap();
    assert_eq!(outcome.reached, 1);
    assert_eq!(
        drain(&mut hub),
        vec![(b, user_message(1, Sender::Server, b"1"))]
    );
    let outcome = hub
        .send_user_message(Actor::Connection(a), "b", Bytes::from_static(b"2"))
        .unwrap();
    assert_eq!(outcome.reached, 1);
    assert_eq!(
        drain(&mut hub),
        vec![
            (a, user_message(1, sender(&hub, a, true), b"2")),
            (b, user_message(2, sender(&hub, a, false), b"2")),
        ],
        "on behalf: the connection is the sender and gets its echo"
    );
}

// --- Hooks -----------------------------------------------------------------------------

#[test]
fn a_hook_refuses_a_whole_subscribe() {
    let mut hub = hub_with(Scripted {
        subscribe: Verdict::refuse("members only"),
        ..Scripted::default()
    });
    let a = hub.connect(info("a", 1));
    hub.handle_command(a, subscribe_cmd(4, &[1, 2])).unwrap();
    assert_eq!(
        drain(&mut hub),
        vec![(
            a,
            rejected(
                4,
                RejectCode::NotAuthorized,
                &[],
                &Text::from("members only")
            )
        )]
    );
    assert_eq!(hub.subscriptions(a).unwrap().count(), 0);
    assert_eq!(
        hub.hooks().calls,
        vec![HookCall {
            hook: "subscribe",
            origin: Origin::Client,
            actor: Actor::Connection(a),
            groups: ids(&[1, 2]),
        }]
    );
}

#[test]
fn a_hook_refusing_some_groups_lets_the_rest_of_a_subscribe_through() {
    let mut hub = hub_with(Scripted {
        // 7 is not asked for: ignored.
        subscribe: Verdict::refuse_groups(ids(&[3, 7]), "management only"),
        ..Scripted::default()
    });
    let [a, b] = populate(&mut hub, &[("a", &[]), ("b", &[1, 3])])[..] else {
        unreachable!()
    };
    // b's own subscribe to 3 was refused by the same hook during populate.
    assert_eq!(hub.subscriptions(b).unwrap().collect::<Vec<_>>(), ids(&[1]));
    hub.handle_command(a, subscribe_cmd(5, &[1, 3, 9])).unwrap();
    let out = drain(&mut hub);
    let unknown = reason_of(&out, RejectCode::UnknownGroups);
    assert_eq!(
        out,
        vec![
            (a, subscribed(1, sender(&hub, a, true), &[1])),
            (b, subscribed(2, sender(&hub, a, false), &[1])),
            (a, rejected(5, RejectCode::UnknownGroups, &[9], &unknown)),
            (
                a,
                rejected(
                    5,
                    RejectCode::NotAuthorized,
                    &[3],
                    &Text::from("management only")
                )
            ),
        ]
    );
    // Every group refused: only the report.
    hub.handle_command(a, subscribe_cmd(6, &[3])).unwrap();
    assert_eq!(
        drain(&mut hub),
        vec![(
            a,
            rejected(
                6,
                RejectCode::NotAuthorized,
                &[3],
                &Text::from("management only")
            )
        )]
    );
}

#[test]
fn a_hook_refuses_a_publish_wholly_or_for_some_groups() {
    let mut hub = hub_with(Scripted {
        publish: Verdict::refuse("read-only"),
        ..Scripted::default()
    });
    let [p, a] = populate(&mut hub, &[("p", &[]), ("a", &[1, 2])])[..] else {
        unreachable!()
    };
    hub.handle_command(p, publish_cmd(1, &[1, 2], b"x"))
        .unwrap();
    assert_eq!(
        drain(&mut hub),
        vec![(
            p,
            rejected(1, RejectCode::NotAuthorized, &[], &Text::from("read-only"))
        )]
    );
    let outcome = hub
        .publish(Actor::Server, &ids(&[1]), Bytes::from_static(b"y"))
        .unwrap();
    assert_eq!(outcome.rejections[0].code, RejectCode::NotAuthorized);
    assert!(drain(&mut hub).is_empty());

    hub.hooks_mut().publish = Verdict::refuse_groups(ids(&[2]), "no sales");
    hub.handle_command(p, publish_cmd(2, &[1, 2], b"z"))
        .unwrap();
    assert_eq!(
        drain(&mut hub),
        vec![
            (p, published(1, sender(&hub, p, true), &[1], b"z")),
            // a's only earlier event is its own Subscribed: refused publications
            // took no sequence number.
            (a, published(2, sender(&hub, p, false), &[1], b"z")),
            (
                p,
                rejected(2, RejectCode::NotAuthorized, &[2], &Text::from("no sales"))
            ),
        ]
    );
    let origins: Vec<Origin> = hub
        .hooks()
        .calls
        .iter()
        .filter(|c| c.hook == "publish")
        .map(|c| c.origin)
        .collect();
    assert_eq!(
        origins,
        vec![Origin::Client, Origin::Server, Origin::Client]
    );
}

#[test]
fn a_hook_refuses_an_unsubscribe_and_a_user_message() {
    let mut hub = hub_with(Scripted {
        unsubscribe: Verdict::refuse_groups(ids(&[1]), "mandatory"),
        user_message: Verdict::refuse_groups(ids(&[1]), "no private messages"),
        ..Scripted::default()
    });
    let [a, b] = populate(&mut hub, &[("a", &[1, 2]), ("b", &[])])[..] else {
        unreachable!()
    };
    hub.handle_command(a, unsubscribe_cmd(1, &[1, 2])).unwrap();
    hub.handle_command(a, user_message_cmd(2, "b", b"psst"))
        .unwrap();
    assert_eq!(
        drain(&mut hub),
        vec![
            (a, unsubscribed(2, sender(&hub, a, true), &[2])),
            (
                a,
                rejected(1, RejectCode::NotAuthorized, &[1], &Text::from("mandatory"))
            ),
            (
                a,
                rejected(
                    2,
                    RejectCode::NotAuthorized,
                    &[],
                    &Text::from("no private messages")
                )
            ),
        ]
    );
    assert_eq!(hub.subscriptions(a).unwrap().collect::<Vec<_>>(), ids(&[1]));
    let _ = b;
}

#[test]
fn hooks_see_what_would_change_and_are_skipped_when_nothing_would() {
    let mut hub = hub_with(Scripted::default());
    let [a] = populate(&mut hub, &[("a", &[1])])[..] else {
        unreachable!()
    };
    hub.hooks_mut().calls.clear();
    hub.handle_command(a, subscribe_cmd(1, &[1, 2, 2, 9]))
        .unwrap();
    hub.handle_command(a, subscribe_cmd(2, &[1])).unwrap();
    hub.handle_command(a, unsubscribe_cmd(3, &[3])).unwrap();
    hub.handle_command(a, publish_cmd(4, &[9], b"")).unwrap();
    hub.handle_command(a, publish_cmd(5, &[3, 3, 9, 1], b""))
        .unwrap();
    assert_eq!(
        hub.hooks().calls,
        vec![
            HookCall {
                hook: "subscribe",
                origin: Origin::Client,
                actor: Actor::Connection(a),
                groups: ids(&[2]),
            },
            HookCall {
                hook: "publish",
                origin: Origin::Client,
                actor: Actor::Connection(a),
                groups: ids(&[1, 3]),
            },
        ]
    );
}

// --- Sequence numbers ------------------------------------------------------------------

#[test]
fn every_push_event_takes_the_receivers_next_sequence_number() {
    let mut hub = hub();
    let a = hub.connect(info("a", 1));
    let b = hub.connect(info("b", 2));
    let mut seen: Vec<(ConnectionId, Option<u64>)> = Vec::new();
    let mut record = |hub: &mut Hub| {
        while let Some(d) = hub.poll_delivery() {
            seen.push((d.connection(), d.event().seq()));
        }
    };
    hub.handle_command(a, subscribe_cmd(1, &[1])).unwrap(); // a:1
    record(&mut hub);
    hub.handle_command(b, subscribe_cmd(2, &[1, 99])).unwrap(); // b:1 a:2 b:reject
    record(&mut hub);
    hub.publish(Actor::Server, &ids(&[1]), Bytes::new())
        .unwrap(); // a:3 b:2
    record(&mut hub);
    hub.handle_command(a, user_message_cmd(3, "B", b""))
        .unwrap(); // a:4 b:3 a:delivered
    record(&mut hub);
    hub.handle_command(a, Message::ListGroups(ListGroups { command_id: 4 }))
        .unwrap();
    record(&mut hub);
    hub.remove_group(GroupId(1)).unwrap(); // a:5 b:4
    record(&mut hub);
    assert_eq!(
        seen,
        vec![
            (a, Some(1)),
            (b, Some(1)),
            (a, Some(2)),
            (b, None),
            (a, Some(3)),
            (b, Some(2)),
            (a, Some(4)),
            (b, Some(3)),
            (a, None),
            (a, None),
            (a, Some(5)),
            (b, Some(4)),
        ]
    );
    // A new connection starts at 1 again.
    let c = hub.connect(info("c", 3));
    hub.send_user_message(Actor::Server, "c", Bytes::new())
        .unwrap();
    assert_eq!(hub.poll_delivery().unwrap().event().seq(), Some(1));
    let _ = c;
}

#[test]
fn default_limits_are_sane() {
    let config = HubConfig::default();
    assert!(config.max_payload_bytes < pushwire_protocol::DEFAULT_MAX_FRAME_SIZE as usize);
}

#[test]
fn event_groups_of_a_v6_sender_encode_with_the_right_length() {
    let mut hub = hub();
    let v6 = hub.connect(ConnectionInfo::new(
        "six",
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        443,
        1,
    ));
    let other = hub.connect(info("four", 1));
    hub.subscribe(other, &ids(&[1, 2])).unwrap();
    hub.subscribe(v6, &ids(&[2, 3])).unwrap();
    hub.publish(
        Actor::Connection(v6),
        &ids(&[1, 2, 3]),
        Bytes::from_static(b"p"),
    )
    .unwrap();
    hub.disconnect(v6).unwrap();
    // other: own Subscribed, Subscribed(v6), Published, Unsubscribed(v6); v6: own
    // Subscribed, echo. drain() checks every frame length against the real encoding.
    assert_eq!(drain(&mut hub).len(), 6);
}

#[test]
fn direct_encoding_of_events_matches_the_message_encoding() {
    let mut hub = hub();
    for g in 1..=70 {
        let _ = hub.add_group(GroupId(g), "g");
    }
    let a = hub.connect(info("a", 1));
    let b = hub.connect(info("b", 2));
    hub.subscribe(a, &ids(&[1, 2, 3])).unwrap();
    hub.subscribe(b, &ids(&[2, 65, 66])).unwrap();
    // c, like a, is in every target of the server's publication: both copies come
    // from one shared frame, each with its own sequence number.
    let c = hub.connect(info("c", 3));
    hub.subscribe(c, &ids(&[2, 3])).unwrap();
    let all: Vec<u32> = (1..=70).collect();
    hub.publish(
        Actor::Connection(a),
        &ids(&all),
        Bytes::from_static(b"many groups"),
    )
    .unwrap();
    hub.publish(Actor::Server, &ids(&[2, 3]), Bytes::from_static(b"few"))
        .unwrap();
    hub.send_user_message(Actor::Connection(b), "A", Bytes::from_static(b"hi"))
        .unwrap();
    hub.unsubscribe(b, &ids(&[2])).unwrap();
    let mut seen = 0;
    while let Some(delivery) = hub.poll_delivery() {
        let mut direct = bytes::BytesMut::new();
        delivery.event().encode(&mut direct);
        assert_eq!(direct.len(), delivery.frame_len());
        let mut fast = bytes::BytesMut::from(&b"before"[..]);
        delivery.encode(&mut fast);
        assert_eq!(&fast[6..], &direct[..], "{delivery:?}");
        let mut via_message = bytes::BytesMut::new();
        delivery.into_message().1.encode(&mut via_message);
        assert_eq!(direct, via_message);
        seen += 1;
    }
    assert!(seen >= 8, "{seen} deliveries");
}

// --- Compressed payloads ---------------------------------------------------------------

/// A text that LZ4 shrinks, of `len` bytes.
fn compressible(len: usize) -> Vec<u8> {
    b"compressed payloads are forwarded untouched; "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn compressed_publish(command_id: u64, groups: &[u32], plain: &[u8]) -> Message {
    let c = pushwire_protocol::compress(pushwire_protocol::CompressionAlgorithm::Lz4Block, plain)
        .unwrap();
    Message::Publish(Publish {
        command_id,
        groups: ids(groups),
        payload: c.data,
        compression: Some(c.compression),
    })
}

/// Decodes one whole frame.
fn decode_one(frame: &[u8]) -> Message {
    let mut decoder = pushwire_protocol::FrameDecoder::new(Default::default());
    assert_eq!(decoder.feed(frame), frame.len());
    let m = decoder.next_message().unwrap().expect("a whole frame");
    assert_eq!(decoder.buffered(), 0);
    m
}

#[test]
fn a_compressed_command_is_delivered_in_both_forms_from_one_publication() {
    let mut hub = hub();
    for g in 4..=70 {
        hub.add_group(GroupId(g), "g").unwrap();
    }
    let a = hub.connect(info("a", 1));
    let b = hub.connect(info("b", 2));
    let c = hub.connect(info("c", 3));
    let d = hub.connect(info("d", 4));
    hub.subscribe(b, &ids(&[1, 2])).unwrap();
    hub.subscribe(c, &ids(&[1, 2])).unwrap();
    // d takes a subset of more than 64 targets: a list of its own.
    hub.subscribe(d, &ids(&[2, 65])).unwrap();
    drain(&mut hub);
    let plain = compressible(3000);
    let targets: Vec<u32> = (1..=70).filter(|g| *g != 66).collect();
    hub.handle_command(a, compressed_publish(5, &targets, &plain))
        .unwrap();
    hub.handle_command(
        a,
        Message::SendUserMessage(SendUserMessage {
            command_id: 6,
            receiver: Text::from("B"),
            payload: pushwire_protocol::compress(
                pushwire_protocol::CompressionAlgorithm::Lz4Block,
                &plain,
            )
            .unwrap()
            .data,
            compression: Some(pushwire_protocol::Compression {
                algorithm: pushwire_protocol::CompressionAlgorithm::Lz4Block,
                original_len: 3000,
            }),
        }),
    )
    .unwrap();
    let mut forms = 0;
    while let Some(delivery) = hub.poll_delivery() {
        let Some((compressed, plain_len)) = delivery.compressed() else {
            continue;
        };
        assert_eq!(plain_len, plain.len());
        for accepts in [false, true, true, false] {
            // Twice each: the second copy of a shared frame comes from its cache.
            let mut out = bytes::BytesMut::new();
            let form = EventForm {
                compressed: accepts,
                ..EventForm::PLAIN
            };
            delivery.encode_for(&mut out, form);
            assert_eq!(out.len(), delivery.frame_len_for(form), "{delivery:?}");
            let m = decode_one(&out);
            assert_eq!(m.is_compressed(), accepts);
            let (payload, compression) = match &m {
                Message::Published(p) => (&p.payload, p.compression),
                Message::UserMessage(u) => (&u.payload, u.compression),
                other => panic!("{other:?}"),
            };
            if accepts {
                // The sender's bytes, untouched.
                assert_eq!(payload, &compressed.data);
                assert_eq!(compression, Some(compressed.compression));
            } else {
                assert_eq!(payload, &plain);
            }
            forms += 1;
        }
        // The plain form is the event as the application sees it.
        let mut out = bytes::BytesMut::new();
        delivery.encode(&mut out);
        let mut expected = bytes::BytesMut::new();
        delivery.event().into_message().encode(&mut expected);
        assert_eq!(out, expected);
    }
    // a's echo, b, c and d for the publication; a's echo and b for the message.
    assert_eq!(forms, 6 * 4);
}

#[test]
fn a_compressed_command_over_the_limit_is_refused_before_decompressing() {
    let mut hub = Hub::new(
        HubConfig {
            max_payload_bytes: 1000,
            ..HubConfig::default()
        },
        AllowAll,
    );
    hub.add_group(GroupId(1), "g").unwrap();
    let a = hub.connect(info("a", 1));
    // Garbage data: it would not decompress, but its declared size is refused first.
    let bomb = Message::Publish(Publish {
        command_id: 9,
        groups: ids(&[1]),
        payload: Bytes::from_static(&[0xff; 8]),
        compression: Some(pushwire_protocol::Compression {
            algorithm: pushwire_protocol::CompressionAlgorithm::Lz4Block,
            original_len: 1001,
        }),
    });
    hub.handle_command(a, bomb).unwrap();
    let out = drain(&mut hub);
    assert_eq!(out.len(), 1);
    let reason = reason_of(&out, RejectCode::PayloadTooLarge);
    assert_eq!(
        reason.as_str(),
        "the compressed payload (8 bytes) would decompress to 1001 bytes, over the limit of 1000 bytes"
    );
}

#[test]
fn a_corrupt_compressed_command_is_an_error_without_effect() {
    let mut hub = hub();
    let a = hub.connect(info("a", 1));
    let b = hub.connect(info("b", 2));
    hub.subscribe(b, &ids(&[1])).unwrap();
    drain(&mut hub);
    let Message::Publish(mut publish) = compressed_publish(1, &[1], &compressible(500)) else {
        unreachable!()
    };
    publish.compression.as_mut().unwrap().original_len = 499;
    let seq = next_seq(&hub, b);
    assert!(matches!(
        hub.handle_command(a, Message::Publish(publish)),
        Err(HubError::CorruptPayload(
            pushwire_protocol::CompressionError::Corrupt {
                original_len: 499,
                ..
            }
        ))
    ));
    assert!(drain(&mut hub).is_empty());
    assert_eq!(next_seq(&hub, b), seq, "no sequence number was taken");
}

/// Every kind of event a clustered hub's connection causes, as receivers of each
/// version see it.
fn message_sender(m: &Message) -> &Sender {
    match m {
        Message::Subscribed(e) => &e.sender,
        Message::Unsubscribed(e) => &e.sender,
        Message::Published(e) => &e.sender,
        Message::UserMessage(e) => &e.sender,
        other => panic!("no sender in {other:?}"),
    }
}

#[test]
fn a_clustered_hub_names_the_senders_node_only_to_version_5_receivers() {
    let mut hub = hub();
    hub.enable_journal(Text::from("node-7"));
    let a = hub.connect(info("A", 1));
    let b = hub.connect(info("B", 2));
    hub.subscribe(b, &ids(&[1, 2])).unwrap();
    // A joins 1 and 2 (presence to B), publishes to both (B gets the whole frame),
    // to 1 and 3 (B gets a subset), and sends B a user message.
    hub.subscribe(a, &ids(&[1, 2])).unwrap();
    hub.publish(
        Actor::Connection(a),
        &ids(&[1, 2]),
        Bytes::from_static(b"whole"),
    )
    .unwrap();
    hub.subscribe(a, &ids(&[3])).unwrap();
    hub.publish(
        Actor::Connection(a),
        &ids(&[1, 3]),
        Bytes::from_static(b"part"),
    )
    .unwrap();
    hub.send_user_message(Actor::Connection(a), "b", Bytes::from_static(b"hi"))
        .unwrap();
    hub.publish(Actor::Server, &ids(&[1]), Bytes::from_static(b"sys"))
        .unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    while let Some(delivery) = hub.poll_delivery() {
        if delivery.connection() != b || delivery.seq().is_none() {
            continue;
        }
        kinds.insert(format!("{:?}", delivery.kind()));
        let server = delivery.event().sender() == Some(&Sender::Server);
        for sender_node in [true, false, true, false] {
            // Twice each: the second copy of a shared frame comes from its cache.
            let form = EventForm {
                compressed: false,
                sender_node,
            };
            let mut out = bytes::BytesMut::new();
            delivery.encode_for(&mut out, form);
            assert_eq!(out.len(), delivery.frame_len_for(form), "{delivery:?}");
            let m = decode_one(&out);
            let expected = match (server, sender_node) {
                (true, _) => None,
                (false, true) => Some(Text::from("node-7")),
                (false, false) => None,
            };
            assert_eq!(message_sender(&m).node(), expected.as_ref(), "{m:?}");
            if !server {
                // B's own Subscribed echo, or A's events.
                let is_self = message_sender(&m).is_self();
                let from = if is_self { b } else { a };
                assert_eq!(
                    message_sender(&m).without_node(),
                    sender(&hub, from, is_self),
                    "{m:?}"
                );
            }
        }
    }
    let kinds: Vec<_> = kinds.into_iter().collect();
    assert_eq!(kinds, ["Published", "Subscribed", "UserMessage"]);
}

#[test]
fn a_hub_that_is_not_clustered_names_no_node() {
    let mut hub = hub();
    let a = hub.connect(info("A", 1));
    let b = hub.connect(info("B", 2));
    hub.subscribe(b, &ids(&[1])).unwrap();
    hub.publish(Actor::Connection(a), &ids(&[1]), Bytes::from_static(b"x"))
        .unwrap();
    let delivery = hub.poll_delivery().expect("a publication to B");
    assert_eq!(delivery.event().sender().and_then(Sender::node), None);
    assert_eq!(
        delivery.frame_len_for(EventForm::PLAIN),
        delivery.frame_len_for(EventForm {
            compressed: false,
            sender_node: false
        })
    );
}
