//! Clustered nodes driven end to end in memory: three engine nodes, their clients
//! wired through byte buffers, and the backplane model ([`ModelRedis`]) in between;
//! time advanced by hand. Covered: publications across nodes (one copy per
//! connection, the targets it is in), presence across nodes, user messages and their
//! reach, a node that dies, a node cut off while the others publish past its
//! position (a Gap), a restart of Redis that loses everything, a garbage record, a
//! restarted node.
//!
//! Then randomized runs: 2 to 4 nodes, clients joining, subscribing, leaving groups,
//! publishing to several groups, messaging users; nodes cut off from Redis and back,
//! Redis losing everything, a node killed, reads that deliver a record twice, logs
//! trimmed short, clients moving to another node with their resume token (which must
//! give SessionLost there); time advanced by up to 7 s at once. The cluster oracle
//! ([`check`]) holds every surviving client to G1–G6 across the cluster, and each
//! injected [`ClusterFault`] must be caught. `PUSHWIRE_CLUSTER_CASES` sets the number
//! of runs (default 300; `.ci/run` adds 5,000 in release), `PUSHWIRE_CLUSTER_SEED`
//! the first seed; a failure prints its seed and the command that replays it, and
//! `PUSHWIRE_CLUSTER_VERBOSE=1` prints every client's events.

use bytes::Bytes;
use pushwire_engine::client::{
    ClientConfig, ClientConnection, ClientEvent, ClientState, ClientTransport, PushCommand,
};
use pushwire_engine::cluster::{BackplaneInput, BackplaneRequest, ClusterConfig, ClusterEvent};
use pushwire_engine::hub::AllowAll;
use pushwire_engine::node::{ConnectionEvent, Node, NodeConfig, NodeConnection, NodeEvent};
use pushwire_engine::server::{ServerConfig, ServerTransport};
use pushwire_protocol::{GroupId, Message, ResumeToken, Sender, Text};
use pushwire_sim::backplane::ModelRedis;
use std::task::Waker;
use std::time::{Duration, Instant};

struct Client {
    node: usize,
    client: ClientConnection,
    conn: NodeConnection,
    events: Vec<ClientEvent>,
    /// The node was told the connection finished.
    told_node: bool,
}

struct ClusterNode {
    name: Text,
    epoch: u64,
    node: Node<AllowAll>,
    /// Reaches Redis.
    linked: bool,
    /// Runs at all.
    running: bool,
    events: Vec<NodeEvent>,
}

struct World {
    now: Instant,
    redis: ModelRedis,
    nodes: Vec<ClusterNode>,
    clients: Vec<Client>,
    tokens: u8,
}

fn node(name: &str, epoch: u64, now: Instant) -> ClusterNode {
    node_with(ClusterConfig::new(name, epoch), now)
}

fn node_with(cluster: ClusterConfig, now: Instant) -> ClusterNode {
    let (name, epoch) = (cluster.node.clone(), cluster.epoch);
    let mut config = NodeConfig::new(ServerConfig::new(ServerTransport::Plaintext));
    config.cluster = Some(cluster);
    let mut node = Node::new(config, AllowAll).expect("valid config");
    for g in 1..=3 {
        node.add_group(GroupId(g), format!("group {g}")).unwrap();
    }
    // Groups from the configuration are not news for the other nodes.
    let mut n = ClusterNode {
        name,
        epoch,
        node,
        linked: true,
        running: true,
        events: Vec::new(),
    };
    n.node.handle_backplane(now, BackplaneInput::Up);
    n
}

impl World {
    fn new(nodes: usize, max_log_len: usize) -> Self {
        let now = Instant::now();
        let mut w = World {
            now,
            redis: ModelRedis::new(max_log_len),
            nodes: (0..nodes)
                .map(|i| node(&format!("n{}", i + 1), 100 + i as u64, now))
                .collect(),
            clients: Vec::new(),
            tokens: 0,
        };
        w.settle();
        // Everyone has discovered everyone once the discovery timer ran.
        w.advance(Duration::from_secs(2));
        w
    }

    /// Moves bytes and backplane work until nothing changes.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for i in 0..self.clients.len() {
                progress |= self.step_client(i);
            }
            for n in 0..self.nodes.len() {
                progress |= self.step_backplane(n);
            }
            if !progress {
                return;
            }
        }
        panic!("the cluster did not settle");
    }

    fn step_backplane(&mut self, n: usize) -> bool {
        let now = self.now;
        let node = &mut self.nodes[n];
        if !node.running {
            return false;
        }
        let mut progress = false;
        while let Some(event) = node.node.poll_event() {
            node.events.push(event);
            progress = true;
        }
        if !node.linked {
            return progress;
        }
        while let Some(request) = node.node.poll_backplane() {
            progress = true;
            let answer = match request {
                r @ BackplaneRequest::Append { .. } => {
                    Some(self.redis.serve_append(&node.name, node.epoch, r))
                }
                r => self.redis.serve(r),
            };
            if let Some(answer) = answer {
                node.node.handle_backplane(now, answer);
            }
        }
        for position in node.node.backplane_reads() {
            if let Some(records) = self.redis.read(&position) {
                node.node.handle_backplane(now, records);
                progress = true;
            }
        }
        progress
    }

    fn step_client(&mut self, i: usize) -> bool {
        let now = self.now;
        let c = &mut self.clients[i];
        let node = &mut self.nodes[c.node];
        if !node.running {
            return false;
        }
        let node = &mut node.node;
        let mut progress = false;
        let mut buf = Vec::new();
        c.client.poll_transmit(now, &mut buf);
        if !buf.is_empty() && c.conn.wants_input() {
            c.conn.handle_input(now, &buf);
            progress = true;
        }
        while let Some(event) = c.conn.poll_event() {
            progress = true;
            if let ConnectionEvent::Authenticate(request) = event {
                self.tokens += 1;
                node.handle_hello(now, &mut c.conn, request, ResumeToken([self.tokens; 16]));
            }
        }
        if c.conn.wants_node() {
            node.handle_connection(now, &mut c.conn);
            progress = true;
        }
        c.conn.handle_mailbox(now);
        let mut out = Vec::new();
        if c.conn.poll_transmit(now, &mut out) > 0 || !out.is_empty() {
            c.conn.handle_written(now, out.len());
            c.client.handle_input(now, &out);
            progress = true;
        }
        while let Some(event) = c.client.poll_event() {
            c.events.push(event);
            progress = true;
        }
        if c.conn.is_finished() && !c.told_node {
            c.told_node = true;
            c.client.handle_transport_closed();
            node.handle_connection_closed(now, &mut c.conn);
            progress = true;
        }
        progress
    }

    /// Advances the clock in steps of 250 ms, firing every timer.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end {
            self.now = end.min(self.now + Duration::from_millis(250));
            let now = self.now;
            for n in self.nodes.iter_mut().filter(|n| n.running) {
                if n.node.poll_timeout().is_some_and(|t| t <= now) {
                    n.node.handle_timeout(now);
                }
            }
            for c in &mut self.clients {
                if self.nodes[c.node].running {
                    c.client.handle_timeout(now);
                    c.conn.handle_timeout(now);
                }
            }
            self.settle();
        }
    }

    /// Connects `user` to node `n` and subscribes it to `groups`.
    fn join(&mut self, n: usize, user: &str, groups: &[u32]) -> usize {
        let config = ClientConfig::new(ClientTransport::Plaintext, user, b"pw");
        self.join_with(n, config, groups)
    }

    /// Connects a client with `config` to node `n` and subscribes it to `groups`.
    fn join_with(&mut self, n: usize, config: ClientConfig, groups: &[u32]) -> usize {
        let peer = format!("10.0.{}.{}:4000", n, self.clients.len())
            .parse()
            .unwrap();
        let conn = self.nodes[n]
            .node
            .connection(peer, self.now, Waker::noop().clone())
            .unwrap();
        let client =
            ClientConnection::new(config, self.now, rustls::pki_types::UnixTime::now()).unwrap();
        self.clients.push(Client {
            node: n,
            client,
            conn,
            events: Vec::new(),
            told_node: false,
        });
        let i = self.clients.len() - 1;
        self.settle();
        assert_eq!(self.clients[i].client.state(), ClientState::Ready);
        if !groups.is_empty() {
            self.command(
                i,
                PushCommand::Subscribe(groups.iter().copied().map(GroupId).collect()),
            );
        }
        i
    }

    fn command(&mut self, i: usize, command: PushCommand) {
        self.clients[i].client.push(command).unwrap();
        self.settle();
    }

    fn publish(&mut self, i: usize, groups: &[u32], payload: &str) {
        self.command(
            i,
            PushCommand::Publish {
                groups: groups.iter().copied().map(GroupId).collect(),
                payload: Bytes::copy_from_slice(payload.as_bytes()),
            },
        );
    }

    fn pushes(&self, i: usize) -> Vec<&Message> {
        self.clients[i]
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Push(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// (payload, groups) of every Published client `i` got.
    fn published(&self, i: usize) -> Vec<(String, Vec<u32>)> {
        self.pushes(i)
            .into_iter()
            .filter_map(|m| match m {
                Message::Published(p) if !p.sender.is_self() => Some((
                    String::from_utf8_lossy(&p.payload).into_owned(),
                    p.groups.iter().map(|g| g.0).collect(),
                )),
                _ => None,
            })
            .collect()
    }

    /// The payloads of every Published client `i` got (not its echoes), in order.
    fn payloads(&self, i: usize) -> Vec<String> {
        self.published(i).into_iter().map(|(p, _)| p).collect()
    }

    /// Who client `i` sees in `group`, from its presence events since it last joined
    /// it, sorted.
    fn view(&self, i: usize, group: u32) -> Vec<String> {
        let mut members = std::collections::BTreeSet::new();
        for m in self.pushes(i) {
            let (sender, groups, joined) = match m {
                Message::Subscribed(p) => (&p.sender, &p.groups, true),
                Message::Unsubscribed(p) => (&p.sender, &p.groups, false),
                _ => continue,
            };
            let Sender::Peer(p) = sender else { continue };
            if !groups.contains(&GroupId(group)) {
                continue;
            }
            if p.is_self {
                // Joining starts a fresh view; one who left keeps none.
                members.clear();
                continue;
            }
            let who = p.user_id.as_str().to_owned();
            if joined {
                members.insert(who);
            } else {
                members.remove(&who);
            }
        }
        members.into_iter().collect()
    }

    fn gaps(&self, i: usize) -> usize {
        self.pushes(i)
            .iter()
            .filter(|m| matches!(m, Message::Gap(_)))
            .count()
    }

    /// Every sequence number client `i` got so far is covered once, in order.
    fn assert_sequence_complete(&self, i: usize) {
        let mut next = 1;
        for m in self.pushes(i) {
            let (first, last) = match m {
                Message::Gap(g) => (g.first, g.last),
                Message::Published(p) => (p.seq, p.seq),
                Message::Subscribed(p) => (p.seq, p.seq),
                Message::Unsubscribed(p) => (p.seq, p.seq),
                Message::UserMessage(u) => (u.seq, u.seq),
                _ => continue,
            };
            assert_eq!(first, next, "client {i}: a hole before {first}");
            next = last + 1;
        }
    }

    fn cluster_events(&self, n: usize) -> Vec<&ClusterEvent> {
        self.nodes[n]
            .events
            .iter()
            .filter_map(|e| match e {
                NodeEvent::Cluster(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    fn cut(&mut self, n: usize) {
        self.nodes[n].linked = false;
        let now = self.now;
        self.nodes[n]
            .node
            .handle_backplane(now, BackplaneInput::Down);
        self.settle();
    }

    fn relink(&mut self, n: usize) {
        self.nodes[n].linked = true;
        let now = self.now;
        self.nodes[n].node.handle_backplane(now, BackplaneInput::Up);
        self.settle();
    }
}

/// The node a push names in its sender, for every push from a peer other than
/// the receiver itself.
fn named_nodes(pushes: &[&Message]) -> Vec<(String, Option<String>)> {
    pushes
        .iter()
        .filter_map(|m| {
            let sender = match m {
                Message::Published(p) => &p.sender,
                Message::Subscribed(p) => &p.sender,
                Message::Unsubscribed(p) => &p.sender,
                Message::UserMessage(u) => &u.sender,
                _ => return None,
            };
            match sender {
                Sender::Peer(p) if !p.is_self => Some((
                    p.user_id.to_string(),
                    p.node.as_ref().map(|n| n.to_string()),
                )),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn senders_name_their_node_to_version_5_clients_and_not_to_older_ones() {
    let mut w = World::new(2, 10_000);
    let old = |user: &str| {
        let mut config = ClientConfig::new(ClientTransport::Plaintext, user, b"pw");
        config.max_version = 4;
        config
    };
    let alice = w.join(0, "alice", &[1]);
    let old_here = w.join_with(0, old("olga"), &[1]);
    let carol = w.join(1, "carol", &[1]);
    let old_there = w.join_with(1, old("oscar"), &[1]);
    w.publish(alice, &[1], "hello");
    w.publish(carol, &[1], "back");
    let n = |s: &str| Some(s.to_owned());
    let who = |pushes: Vec<(String, Option<String>)>, user: &str| -> Vec<Option<String>> {
        pushes
            .into_iter()
            .filter(|(u, _)| u == user)
            .map(|(_, node)| node)
            .collect()
    };
    // Presence and publications alike: from this node and through the cluster.
    let at_carol = named_nodes(&w.pushes(carol));
    assert!(!who(at_carol.clone(), "alice").is_empty());
    assert!(who(at_carol.clone(), "alice").iter().all(|x| *x == n("n1")));
    assert!(!who(at_carol.clone(), "oscar").is_empty());
    assert!(who(at_carol, "oscar").iter().all(|x| *x == n("n2")));
    let at_alice = named_nodes(&w.pushes(alice));
    assert!(!who(at_alice.clone(), "olga").is_empty());
    assert!(who(at_alice.clone(), "olga").iter().all(|x| *x == n("n1")));
    assert!(!who(at_alice.clone(), "carol").is_empty());
    assert!(who(at_alice, "carol").iter().all(|x| *x == n("n2")));
    // Olga sees carol and oscar join (through the cluster) and both publications;
    // oscar, the last to join, only the publications.
    for (old, events) in [(old_here, 4), (old_there, 2)] {
        let seen = named_nodes(&w.pushes(old));
        assert_eq!(seen.len(), events, "{seen:?}");
        assert!(seen.iter().all(|(_, node)| node.is_none()), "{seen:?}");
        assert_eq!(w.published(old).len(), 2);
        w.assert_sequence_complete(old);
    }
}

#[test]
fn a_publication_reaches_every_member_on_every_node_once_with_the_targets_it_is_in() {
    let mut w = World::new(3, 10_000);
    let alice = w.join(0, "alice", &[1]);
    let bob = w.join(1, "bob", &[1]);
    let carol = w.join(2, "carol", &[1, 2]);
    let dave = w.join(2, "dave", &[3]);
    w.publish(alice, &[1, 2], "hello");
    assert_eq!(w.published(bob), [("hello".to_owned(), vec![1])]);
    assert_eq!(w.published(carol), [("hello".to_owned(), vec![1, 2])]);
    assert!(w.published(dave).is_empty());
    // The publisher's echo comes from its own node, once.
    let echoes = w
        .pushes(alice)
        .iter()
        .filter(|m| matches!(m, Message::Published(p) if p.sender.is_self()))
        .count();
    assert_eq!(echoes, 1);
    // The sender as the receivers on other nodes see it: alice's user id and address.
    let sender = w.pushes(carol).into_iter().find_map(|m| match m {
        Message::Published(p) => Some(p.sender.clone()),
        _ => None,
    });
    match sender {
        Some(Sender::Peer(p)) => {
            assert_eq!(p.user_id.as_str(), "alice");
            assert_eq!(p.addr.to_string(), "10.0.0.0");
            assert_eq!(p.node.as_ref().map(Text::as_str), Some("n1"));
        }
        other => panic!("{other:?}"),
    }
    for i in [alice, bob, carol, dave] {
        w.assert_sequence_complete(i);
    }
}

#[test]
fn presence_crosses_nodes_both_ways() {
    let mut w = World::new(3, 10_000);
    let alice = w.join(0, "alice", &[1]);
    let bob = w.join(1, "bob", &[1]);
    let carol = w.join(2, "carol", &[1]);
    // As on one node, a member hears of those who join after it.
    assert_eq!(w.view(alice, 1), ["bob", "carol"]);
    assert_eq!(w.view(bob, 1), ["carol"]);
    assert!(w.view(carol, 1).is_empty());
    w.command(
        bob,
        PushCommand::Unsubscribe(pushwire_protocol::GroupSelection::All),
    );
    assert_eq!(w.view(alice, 1), ["carol"]);
    assert_eq!(unsubscribed(&w, carol), ["bob"]);
}

/// User ids of the peers whose Unsubscribed client `i` got.
fn unsubscribed(w: &World, i: usize) -> Vec<String> {
    w.pushes(i)
        .into_iter()
        .filter_map(|m| match m {
            Message::Unsubscribed(u) => match &u.sender {
                Sender::Peer(p) if !p.is_self => Some(p.user_id.as_str().to_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn a_user_message_reaches_every_session_of_the_user_on_every_node_and_counts_them() {
    let mut w = World::new(3, 10_000);
    let alice = w.join(0, "alice", &[]);
    let d1 = w.join(1, "dave", &[]);
    let d2 = w.join(1, "Dave", &[]);
    let d3 = w.join(2, "dave", &[]);
    w.command(
        alice,
        PushCommand::SendUserMessage {
            receiver: "DAVE".into(),
            payload: Bytes::from_static(b"psst"),
        },
    );
    for d in [d1, d2, d3] {
        let got = w
            .pushes(d)
            .iter()
            .filter(|m| matches!(m, Message::UserMessage(u) if &u.payload[..] == b"psst"))
            .count();
        assert_eq!(got, 1, "client {d}");
    }
    let reached = w.pushes(alice).into_iter().find_map(|m| match m {
        Message::UserMessageDelivered(d) => Some(d.connections),
        _ => None,
    });
    assert_eq!(reached, Some(3));
}

#[test]
fn members_of_a_node_that_dies_leave_every_view_after_the_liveness_timeout() {
    let mut w = World::new(3, 10_000);
    let alice = w.join(0, "alice", &[1]);
    let _bob = w.join(1, "bob", &[1]);
    let carol = w.join(2, "carol", &[1]);
    assert_eq!(w.view(alice, 1), ["bob", "carol"]);
    w.nodes[1].running = false;
    w.advance(Duration::from_secs(3));
    assert_eq!(w.view(alice, 1), ["bob", "carol"], "not before the timeout");
    w.advance(Duration::from_secs(4));
    assert_eq!(w.view(alice, 1), ["carol"]);
    assert_eq!(unsubscribed(&w, carol), ["bob"]);
    assert_eq!(
        w.gaps(alice),
        1,
        "what n2 had not written yet is lost for all"
    );
    w.assert_sequence_complete(alice);
    assert!(w
        .cluster_events(0)
        .iter()
        .any(|e| matches!(e, ClusterEvent::PeerLost { node, .. } if node.as_str() == "n2")));
}

#[test]
fn a_node_cut_off_while_the_log_is_trimmed_past_it_gives_its_sessions_a_gap() {
    let mut w = World::new(2, 8);
    let alice = w.join(0, "alice", &[1]);
    let bob = w.join(1, "bob", &[1]);
    w.publish(alice, &[1], "before");
    w.cut(1);
    for i in 0..20 {
        w.publish(alice, &[1], &format!("m{i}"));
    }
    assert_eq!(w.published(bob).len(), 1, "nothing while cut off");
    w.relink(1);
    assert_eq!(w.gaps(bob), 1, "one gap for the trimmed records");
    let got = w.payloads(bob);
    assert_eq!(got.first().map(String::as_str), Some("before"));
    assert!(
        got.len() > 2 && got.last().map(String::as_str) == Some("m19"),
        "{got:?}"
    );
    w.assert_sequence_complete(bob);
    // Service resumes by itself.
    w.publish(alice, &[1], "after");
    assert_eq!(w.payloads(bob).last().map(String::as_str), Some("after"));
}

#[test]
fn a_short_cut_loses_nothing_and_gives_no_gap() {
    let mut w = World::new(2, 10_000);
    let alice = w.join(0, "alice", &[1]);
    let bob = w.join(1, "bob", &[1]);
    w.cut(0);
    for i in 0..5 {
        w.publish(alice, &[1], &format!("m{i}"));
    }
    w.advance(Duration::from_secs(2));
    w.relink(0);
    let got = w.payloads(bob);
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(w.gaps(bob), 0);
    assert_eq!(w.view(alice, 1), ["bob"]);
    assert!(
        unsubscribed(&w, alice).is_empty(),
        "a short cut is not a departure"
    );
}

#[test]
fn a_redis_restart_that_loses_everything_is_a_gap_and_service_resumes() {
    let mut w = World::new(2, 10_000);
    let alice = w.join(0, "alice", &[1]);
    let bob = w.join(1, "bob", &[1]);
    w.publish(alice, &[1], "one");
    // bob's node had not read these when Redis went away with them.
    w.nodes[1].linked = false;
    w.publish(alice, &[1], "two");
    w.redis.lose_everything();
    for n in 0..2 {
        let now = w.now;
        w.nodes[n].node.handle_backplane(now, BackplaneInput::Down);
        w.nodes[n].linked = true;
        w.nodes[n].node.handle_backplane(now, BackplaneInput::Up);
    }
    w.settle();
    w.publish(alice, &[1], "three");
    w.advance(Duration::from_secs(2));
    let got = w.payloads(bob);
    assert_eq!(got, ["one", "three"]);
    assert_eq!(w.gaps(bob), 1, "\"two\" is covered by a gap");
    w.assert_sequence_complete(bob);
    // The directory and the states were written again: presence still holds, and
    // a node that starts now finds everyone.
    assert_eq!(w.view(alice, 1), ["bob"]);
    w.nodes.push(node("n3", 300, w.now));
    w.advance(Duration::from_secs(2));
    let _carol = w.join(2, "carol", &[1]);
    assert_eq!(w.view(alice, 1), ["bob", "carol"]);
    // After the hole, alice was announced to bob again (the lost records might have
    // held her leaving and coming back).
    assert_eq!(w.view(bob, 1), ["alice", "carol"]);
}

#[test]
fn groups_registered_or_removed_at_run_time_are_cluster_wide() {
    let mut w = World::new(2, 10_000);
    let alice = w.join(0, "alice", &[]);
    let bob = w.join(1, "bob", &[]);
    w.nodes[0].node.add_group(GroupId(9), "nine").unwrap();
    w.settle();
    assert_eq!(
        w.nodes[1]
            .node
            .hub()
            .group_description(GroupId(9))
            .map(|d| d.as_str()),
        Some("nine")
    );
    w.command(bob, PushCommand::Subscribe(vec![GroupId(9)]));
    w.publish(alice, &[9], "to nine");
    assert_eq!(w.published(bob), [("to nine".to_owned(), vec![9])]);
    // Removed on n1: bob, on n2, leaves it there too.
    w.nodes[0].node.remove_group(GroupId(9)).unwrap();
    w.settle();
    assert!(w.nodes[1]
        .node
        .hub()
        .group_description(GroupId(9))
        .is_none());
    let left = w.pushes(bob).into_iter().any(
        |m| matches!(m, Message::Unsubscribed(u) if u.sender.is_self() && u.groups == [GroupId(9)]),
    );
    assert!(left, "bob was told he left group 9");
    w.assert_sequence_complete(bob);
}

#[test]
fn a_node_keeps_at_most_its_limit_of_remote_sessions() {
    let mut w = World::new(1, 10_000);
    let mut limited = ClusterConfig::new("n2", 200);
    limited.max_remote_sessions = 2;
    w.nodes.push(node_with(limited, w.now));
    w.advance(Duration::from_secs(2));
    let watcher = w.join(1, "watcher", &[1]);
    for i in 0..4 {
        w.join(0, &format!("m{i}"), &[1]);
    }
    assert_eq!(w.view(watcher, 1).len(), 2, "{:?}", w.view(watcher, 1));
    let cluster = w.nodes[1].node.cluster().unwrap();
    assert_eq!(cluster.remote_sessions(), 2);
    assert!(cluster.stats().remote_sessions_refused >= 2);
}

#[test]
fn a_record_that_does_not_decode_is_a_gap_not_a_crash() {
    let mut w = World::new(2, 10_000);
    let alice = w.join(0, "alice", &[1]);
    let bob = w.join(1, "bob", &[1]);
    w.publish(alice, &[1], "one");
    // A hostile writer puts garbage where alice's node writes next.
    let next = w.nodes[0].node.cluster().unwrap().stats().records_out + 1;
    w.redis
        .inject("n1", 100, next, Bytes::from_static(b"\x01garbage"));
    w.publish(alice, &[1], "two");
    w.advance(Duration::from_secs(2));
    assert_eq!(w.gaps(bob), 1);
    w.assert_sequence_complete(bob);
    w.publish(alice, &[1], "three");
    let got = w.payloads(bob);
    assert_eq!(got.first().map(String::as_str), Some("one"));
    assert_eq!(got.last().map(String::as_str), Some("three"));
}

#[test]
fn a_restarted_node_is_a_new_incarnation_its_old_members_leave() {
    let mut w = World::new(2, 10_000);
    let alice = w.join(0, "alice", &[1]);
    let _bob = w.join(1, "bob", &[1]);
    assert_eq!(w.view(alice, 1), ["bob"]);
    // n2 crashes and comes back at once, with a new epoch and no sessions.
    let now = w.now;
    w.nodes[1] = node("n2", 999, now);
    w.clients.retain(|c| c.node != 1);
    w.advance(Duration::from_secs(2));
    assert!(w.view(alice, 1).is_empty(), "bob's old session left");
    let erin = w.join(1, "erin", &[1]);
    assert_eq!(w.view(alice, 1), ["erin"]);
    w.publish(erin, &[1], "from the new n2");
    assert_eq!(
        w.payloads(alice).last().map(String::as_str),
        Some("from the new n2")
    );
}

#[test]
fn a_node_cut_off_past_the_liveness_timeout_loses_its_peers_and_gets_them_back() {
    let mut w = World::new(2, 10_000);
    let alice = w.join(0, "alice", &[1]);
    let bob = w.join(1, "bob", &[1]);
    w.cut(1);
    w.publish(alice, &[1], "while away");
    w.advance(Duration::from_secs(7));
    // Each side took the other for gone.
    assert!(w.view(alice, 1).is_empty());
    assert_eq!(unsubscribed(&w, bob), ["alice"]);
    w.relink(1);
    w.advance(Duration::from_secs(2));
    // bob is back in alice's view; what alice published meanwhile arrived late, not
    // lost (the log still held it). One gap each when the other went quiet: neither
    // could tell then whether the other had lost anything.
    assert_eq!(w.view(alice, 1), ["bob"]);
    let got = w.payloads(bob);
    assert_eq!(got, ["while away"]);
    assert_eq!(w.gaps(bob), 1);
    assert_eq!(w.gaps(alice), 1);
    let subscribed_again = w
        .pushes(bob)
        .iter()
        .filter(|m| matches!(m, Message::Subscribed(p) if !p.sender.is_self()))
        .count();
    assert_eq!(subscribed_again, 1, "alice came back into bob's view");
    w.assert_sequence_complete(bob);
}

// --- Randomized runs and the cluster oracle ---------------------------------------

use pushwire_engine::cluster::ClusterFault;
use pushwire_sim::rng::SimRng as Rng;
use pushwire_sim::suite::env;
use std::collections::{BTreeMap, BTreeSet};

/// What a randomized run did, for the oracle: per client its user, node and
/// membership changes (step, group, joined); every publication and user message.
#[derive(Default)]
struct Trace {
    members: Vec<Vec<(usize, u32, bool)>>,
    /// id → (step, publisher client, target groups).
    publications: BTreeMap<u64, (usize, usize, Vec<u32>)>,
    /// id → receiver user.
    user_messages: BTreeMap<u64, String>,
    killed: BTreeSet<usize>,
    /// Clients that left their node to come back on another (as a new client).
    moved: BTreeSet<usize>,
    /// The clients that came back so: each must have been told its session is lost.
    failovers: Vec<usize>,
    steps: usize,
}

impl Trace {
    fn member_at(&self, client: usize, group: u32, step: usize) -> bool {
        let mut member = false;
        for &(s, g, joined) in &self.members[client] {
            if s > step {
                break;
            }
            if g == group {
                member = joined;
            }
        }
        member
    }

    /// Member of `group` at every step from `from` to the end.
    fn member_throughout(&self, client: usize, group: u32, from: usize) -> bool {
        (from..=self.steps).all(|s| self.member_at(client, group, s))
    }

    /// Member of `group` at some step from `from` on.
    fn member_since(&self, client: usize, group: u32, from: usize) -> bool {
        (from..=self.steps).any(|s| self.member_at(client, group, s))
    }

    /// The step of the client's last join of `group`.
    fn last_join(&self, client: usize, group: u32) -> Option<usize> {
        self.members[client]
            .iter()
            .rev()
            .find(|(_, g, joined)| *g == group && *joined)
            .map(|(s, _, _)| *s)
    }
}

fn user_of(i: usize) -> String {
    format!("u{i}")
}

/// What the randomized runs exercised, summed over the nodes.
#[derive(Default, Debug)]
struct Coverage {
    remote_deliveries: u64,
    holes: u64,
    duplicates_dropped: u64,
    peers_lost: u64,
    gaps_seen: u64,
    failovers: u64,
}

/// One randomized run of `seed`; returns the oracle's complaints and what it exercised.
fn random_run(seed: u64, fault: Option<ClusterFault>, kills: bool) -> (Vec<String>, Coverage) {
    let mut rng = Rng::new(seed);
    let nodes = rng.range_inclusive(2, 4) as usize;
    let mut w = World::new(nodes, rng.range_inclusive(6, 64) as usize);
    // Slow readers: some runs read a few records at a time.
    w.redis.read_count = rng.range_inclusive(1, 256) as usize;
    if let Some(fault) = fault {
        for n in &mut w.nodes {
            n.node.inject_cluster_fault(fault);
        }
    }
    let mut t = Trace::default();
    let mut next_id = 0u64;
    let mut killed_one = false;
    let steps = rng.range_inclusive(20, 60) as usize;
    let live = |w: &World, t: &Trace, i: usize| {
        !t.killed.contains(&w.clients[i].node) && !t.moved.contains(&i)
    };
    for step in 1..=steps {
        t.steps = step;
        w.redis.repeat_last = rng.chance(1, 4);
        let clients = w.clients.len();
        match rng.range_inclusive(0, 11) {
            0 | 1 if clients < 8 => {
                let running: Vec<usize> =
                    (0..w.nodes.len()).filter(|n| w.nodes[*n].running).collect();
                let n = running[rng.range_inclusive(0, running.len() as u64 - 1) as usize];
                let groups: Vec<u32> = (1..=3).filter(|_| rng.chance(1, 2)).collect();
                let i = w.join(n, &user_of(clients), &groups);
                t.members
                    .push(groups.iter().map(|g| (step, *g, true)).collect());
                assert_eq!(i, t.members.len() - 1);
            }
            2 if clients > 0 => {
                let i = rng.range_inclusive(0, clients as u64 - 1) as usize;
                if live(&w, &t, i) {
                    let g = rng.range_inclusive(1, 3) as u32;
                    let joined = !t.member_at(i, g, step);
                    let command = if joined {
                        PushCommand::Subscribe(vec![GroupId(g)])
                    } else {
                        PushCommand::Unsubscribe(pushwire_protocol::GroupSelection::Groups(vec![
                            GroupId(g),
                        ]))
                    };
                    w.command(i, command);
                    t.members[i].push((step, g, joined));
                }
            }
            3..=6 if clients > 0 => {
                let i = rng.range_inclusive(0, clients as u64 - 1) as usize;
                if live(&w, &t, i) {
                    let mut groups: Vec<u32> = (1..=3).filter(|_| rng.chance(1, 2)).collect();
                    if groups.is_empty() {
                        groups.push(rng.range_inclusive(1, 3) as u32);
                    }
                    let count = rng.range_inclusive(1, 12);
                    for _ in 0..count {
                        next_id += 1;
                        t.publications.insert(next_id, (step, i, groups.clone()));
                        w.publish(i, &groups, &format!("p{next_id}"));
                    }
                }
            }
            7 if clients > 0 => {
                let i = rng.range_inclusive(0, clients as u64 - 1) as usize;
                let to = rng.range_inclusive(0, clients as u64 - 1) as usize;
                if live(&w, &t, i) {
                    next_id += 1;
                    t.user_messages.insert(next_id, user_of(to));
                    w.command(
                        i,
                        PushCommand::SendUserMessage {
                            receiver: user_of(to).into(),
                            payload: Bytes::from(format!("m{next_id}")),
                        },
                    );
                }
            }
            8 => {
                let n = rng.range_inclusive(0, w.nodes.len() as u64 - 1) as usize;
                if w.nodes[n].running {
                    if w.nodes[n].linked {
                        w.cut(n);
                    } else {
                        w.relink(n);
                    }
                }
            }
            9 if rng.chance(1, 3) => {
                // Redis restarts, with its data (a connection blip) or without.
                if rng.chance(1, 2) {
                    w.redis.lose_everything();
                }
                let now = w.now;
                for n in w.nodes.iter_mut().filter(|n| n.running && n.linked) {
                    n.node.handle_backplane(now, BackplaneInput::Down);
                    n.node.handle_backplane(now, BackplaneInput::Up);
                }
                w.settle();
            }
            11 if clients > 0 && rng.chance(1, 2) => {
                // A client moves: it says goodbye to its node and comes back on
                // another with its resume token, which that node does not know.
                let i = rng.range_inclusive(0, clients as u64 - 1) as usize;
                let from = w.clients[i].node;
                let others: Vec<usize> = (0..w.nodes.len())
                    .filter(|&n| n != from && w.nodes[n].running)
                    .collect();
                if live(&w, &t, i) && !w.clients[i].told_node && !others.is_empty() {
                    let to = others[rng.range_inclusive(0, others.len() as u64 - 1) as usize];
                    let resume = pushwire_protocol::ResumeRequest {
                        token: w.clients[i].client.welcome().expect("ready").resume_token,
                        last_seq: w.clients[i].client.last_seq(),
                    };
                    let groups: Vec<u32> = (1..=3).filter(|g| t.member_at(i, *g, step)).collect();
                    w.clients[i]
                        .client
                        .close(pushwire_protocol::CloseCode::Normal, "moving");
                    w.settle();
                    for g in &groups {
                        t.members[i].push((step, *g, false));
                    }
                    t.moved.insert(i);
                    let config = ClientConfig {
                        resume: Some(resume),
                        ..ClientConfig::new(
                            ClientTransport::Plaintext,
                            user_of(w.clients.len()),
                            b"pw",
                        )
                    };
                    // Its groups again, as a client told its session is lost does.
                    let j = w.join_with(to, config, &groups);
                    t.members
                        .push(groups.iter().map(|g| (step, *g, true)).collect());
                    assert_eq!(j, t.members.len() - 1);
                    t.failovers.push(j);
                }
            }
            10 if kills && !killed_one && w.nodes.len() > 2 => {
                let n = rng.range_inclusive(0, w.nodes.len() as u64 - 1) as usize;
                w.nodes[n].running = false;
                t.killed.insert(n);
                killed_one = true;
            }
            _ => {
                let ms = rng.range_inclusive(100, 7000);
                w.advance(Duration::from_millis(ms));
            }
        }
    }
    // Everything heals; liveness and discovery settle.
    w.redis.repeat_last = false;
    for n in 0..w.nodes.len() {
        if w.nodes[n].running && !w.nodes[n].linked {
            w.relink(n);
        }
    }
    w.advance(Duration::from_secs(12));
    t.steps += 1;
    let mut coverage = Coverage::default();
    for n in &w.nodes {
        let stats = n.node.cluster().expect("clustered").stats();
        coverage.remote_deliveries += stats.remote_deliveries;
        coverage.holes += stats.holes;
        coverage.duplicates_dropped += stats.duplicates;
        coverage.peers_lost += n
            .events
            .iter()
            .filter(|e| matches!(e, NodeEvent::Cluster(ClusterEvent::PeerLost { .. })))
            .count() as u64;
    }
    coverage.gaps_seen = (0..w.clients.len()).map(|i| w.gaps(i) as u64).sum();
    coverage.failovers = t.failovers.len() as u64;
    let complaints = check(&w, &t);
    if !complaints.is_empty() && std::env::var_os("PUSHWIRE_CLUSTER_VERBOSE").is_some() {
        eprintln!("nodes {}, killed {:?}", w.nodes.len(), t.killed);
        for (i, c) in w.clients.iter().enumerate() {
            eprintln!(
                "{} on n{}: membership {:?}",
                user_of(i),
                c.node + 1,
                t.members[i]
            );
            for m in w.pushes(i) {
                eprintln!("    {m:?}");
            }
        }
        for (n, node) in w.nodes.iter().enumerate() {
            eprintln!("n{}: {:?}", n + 1, node.events);
        }
    }
    (complaints, coverage)
}

/// The cluster oracle: G1–G6 for every client whose node survived.
fn check(w: &World, t: &Trace) -> Vec<String> {
    let mut complaints = Vec::new();
    for r in 0..w.clients.len() {
        if t.killed.contains(&w.clients[r].node) {
            continue;
        }
        let me = user_of(r);
        let pushes = w.pushes(r);
        if t.failovers.contains(&r) && !matches!(pushes.first(), Some(Message::SessionLost(_))) {
            complaints.push(format!("{me}: failed over without SessionLost first"));
        }
        // G5: the session's sequence numbers, each covered once.
        let mut next = 1;
        for m in &pushes {
            let (first, last) = match m {
                Message::Gap(g) => (g.first, g.last),
                Message::Published(p) => (p.seq, p.seq),
                Message::Subscribed(p) => (p.seq, p.seq),
                Message::Unsubscribed(p) => (p.seq, p.seq),
                Message::UserMessage(u) => (u.seq, u.seq),
                _ => continue,
            };
            if first != next {
                complaints.push(format!("G5 {me}: seq {first} after {}", next - 1));
            }
            next = last + 1;
        }
        let gap_seqs: Vec<u64> = pushes
            .iter()
            .filter_map(|m| match m {
                Message::Gap(g) => Some(g.first),
                _ => None,
            })
            .collect();
        // The seq of the client's own last Subscribed for each group.
        let mut joined_at: BTreeMap<u32, u64> = BTreeMap::new();
        for m in &pushes {
            if let Message::Subscribed(p) = m {
                if p.sender.is_self() {
                    for g in &p.groups {
                        joined_at.insert(g.0, p.seq);
                    }
                }
            }
        }
        let mut seen = BTreeSet::new();
        let mut last_from: BTreeMap<String, u64> = BTreeMap::new();
        for m in &pushes {
            let (id, sender, groups, user_message) = match m {
                Message::Published(p) if !p.sender.is_self() => {
                    (&p.payload, &p.sender, Some(&p.groups), false)
                }
                Message::UserMessage(u) if !u.sender.is_self() => {
                    (&u.payload, &u.sender, None, true)
                }
                _ => continue,
            };
            let text = String::from_utf8_lossy(id);
            let Some(k) = text.get(1..).and_then(|n| n.parse::<u64>().ok()) else {
                complaints.push(format!("G1 {me}: unknown payload {text}"));
                continue;
            };
            if !seen.insert(k) {
                complaints.push(format!("G3 {me}: {text} twice"));
            }
            let from = match sender {
                Sender::Peer(p) => p.user_id.as_str().to_owned(),
                Sender::Server => "<server>".to_owned(),
            };
            if let Some(prev) = last_from.insert(from.clone(), k) {
                if prev > k {
                    complaints.push(format!("G2 {me}: {text} from {from} after #{prev}"));
                }
            }
            if user_message {
                if t.user_messages.get(&k).map(|u| u.as_str()) != Some(me.as_str()) {
                    complaints.push(format!("G4 {me}: user message {text} is not for it"));
                }
                continue;
            }
            let Some((step, publisher, targets)) = t.publications.get(&k) else {
                complaints.push(format!("G1 {me}: {text} was never published"));
                continue;
            };
            if from != user_of(*publisher) {
                complaints.push(format!("G1 {me}: {text} says it is from {from}"));
            }
            // Version 5: the sender names the node its publisher is on.
            let publisher_node = &w.nodes[w.clients[*publisher].node].name;
            if sender.node() != Some(publisher_node) {
                complaints.push(format!(
                    "G1 {me}: {text} names node {:?}, its publisher is on {publisher_node}",
                    sender.node()
                ));
            }
            let listed: Vec<u32> = groups.expect("a publication").iter().map(|g| g.0).collect();
            if listed.is_empty() || listed.iter().any(|g| !targets.contains(g)) {
                complaints.push(format!(
                    "G1 {me}: {text} lists {listed:?}, targets {targets:?}"
                ));
            }
            for g in &listed {
                if !t.member_since(r, *g, *step) {
                    complaints.push(format!(
                        "G4 {me}: {text} for group {g}, never a member since"
                    ));
                }
            }
        }
        // G5: what a member throughout should have got, or a gap.
        for (k, (step, publisher, targets)) in &t.publications {
            if *publisher == r || seen.contains(k) {
                continue;
            }
            if t.killed.contains(&w.clients[*publisher].node) {
                // Its node died: what it had not written is covered by the gap
                // every other node gives then; nothing to expect here.
                continue;
            }
            let Some(g) = targets
                .iter()
                .find(|g| t.member_throughout(r, **g, step.saturating_sub(1)))
            else {
                continue;
            };
            // A gap after it joined the group covers it (the gap stands for an
            // unknown number of events, at an unknown place after that).
            let since = joined_at.get(g).copied().unwrap_or(0);
            if !gap_seqs.iter().any(|&seq| seq > since) {
                complaints.push(format!("G5 {me}: p{k} to {targets:?} silently lost"));
            }
        }
        // G6: no ghosts, and everyone who joined later is seen.
        for g in 1..=3u32 {
            if !t.member_at(r, g, t.steps) {
                continue;
            }
            let view: BTreeSet<String> = w.view(r, g).into_iter().collect();
            let members: BTreeSet<String> = (0..w.clients.len())
                .filter(|&o| o != r && !t.killed.contains(&w.clients[o].node))
                .filter(|&o| t.member_at(o, g, t.steps))
                .map(user_of)
                .collect();
            for ghost in view.difference(&members) {
                complaints.push(format!("G6 {me}: sees {ghost} in group {g}, not a member"));
            }
            let joined = t.last_join(r, g).unwrap_or(0);
            for o in &members {
                let index: usize = o[1..].parse().unwrap();
                if t.last_join(index, g).is_some_and(|s| s > joined) && !view.contains(o) {
                    complaints.push(format!("G6 {me}: never saw {o} join group {g}"));
                }
            }
        }
    }
    complaints
}

#[test]
fn randomized_cluster_runs_keep_every_guarantee() {
    let cases = env("PUSHWIRE_CLUSTER_CASES", 300);
    let first = env("PUSHWIRE_CLUSTER_SEED", 0x0c1u64);
    let mut total = Coverage::default();
    for seed in first..first + cases {
        let (complaints, c) = random_run(seed, None, true);
        total.remote_deliveries += c.remote_deliveries;
        total.holes += c.holes;
        total.duplicates_dropped += c.duplicates_dropped;
        total.peers_lost += c.peers_lost;
        total.gaps_seen += c.gaps_seen;
        total.failovers += c.failovers;
        assert!(
            complaints.is_empty(),
            "seed {seed}: {complaints:#?}\nreplay: PUSHWIRE_CLUSTER_SEED={seed} \
             PUSHWIRE_CLUSTER_CASES=1 cargo test -p pushwire-sim --test cluster randomized"
        );
    }
    eprintln!("{cases} cluster runs: {total:?}");
    if cases >= 100 {
        // The runs prove nothing if the interesting situations never happened.
        assert!(total.remote_deliveries > 0, "{total:?}");
        assert!(total.holes > 0, "no hole in any log: {total:?}");
        assert!(total.duplicates_dropped > 0, "{total:?}");
        assert!(total.peers_lost > 0, "{total:?}");
        assert!(total.gaps_seen > 0, "{total:?}");
        assert!(
            total.failovers > 0,
            "no client moved between nodes: {total:?}"
        );
    }
}

#[cfg(debug_assertions)]
#[test]
fn the_cluster_oracle_catches_each_injected_fault() {
    for fault in [
        ClusterFault::IgnoreHoles,
        ClusterFault::AcceptDuplicates,
        ClusterFault::CopyPerGroup,
    ] {
        let caught = (0..400u64).find_map(|seed| {
            let (complaints, _) = random_run(0xfa17 + seed, Some(fault), false);
            (!complaints.is_empty()).then_some((seed, complaints))
        });
        let (seed, complaints) = caught.unwrap_or_else(|| panic!("{fault:?} was never caught"));
        eprintln!(
            "{fault:?} caught at seed {}: {}",
            0xfa17 + seed,
            complaints[0]
        );
    }
}
