//! Clustered nodes driven end to end in memory: three engine nodes, their clients
//! wired through byte buffers, and the backplane model ([`ModelRedis`]) in between;
//! time advanced by hand. Covered: publications across nodes (one copy per
//! connection, the targets it is in), presence across nodes, user messages and their
//! reach, a node that dies, a node cut off while the others publish past its
//! position (a Gap), a restart of Redis that loses everything, a garbage record, a
//! restarted node.

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
    let mut config = NodeConfig::new(ServerConfig::new(ServerTransport::Plaintext));
    config.cluster = Some(ClusterConfig::new(name, epoch));
    let mut node = Node::new(config, AllowAll).expect("valid config");
    for g in 1..=3 {
        node.add_group(GroupId(g), format!("group {g}")).unwrap();
    }
    // Groups from the configuration are not news for the other nodes.
    let mut n = ClusterNode {
        name: name.into(),
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
        let peer = format!("10.0.{}.{}:4000", n, self.clients.len())
            .parse()
            .unwrap();
        let conn = self.nodes[n]
            .node
            .connection(peer, self.now, Waker::noop().clone())
            .unwrap();
        let config = ClientConfig::new(ClientTransport::Plaintext, user, b"pw");
        let client =
            ClientConnection::new(config, self.now, rustls::pki_types::UnixTime::now()).unwrap();
        self.clients.push(Client {
            node: n,
            client,
            conn,
            events: Vec::new(),
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

    /// Who client `i` sees in `group`, from its presence events, sorted.
    fn view(&self, i: usize, group: u32) -> Vec<String> {
        let mut members = std::collections::BTreeSet::new();
        for m in self.pushes(i) {
            let (sender, groups, joined) = match m {
                Message::Subscribed(p) => (&p.sender, &p.groups, true),
                Message::Unsubscribed(p) => (&p.sender, &p.groups, false),
                _ => continue,
            };
            let Sender::Peer(p) = sender else { continue };
            if p.is_self || !groups.contains(&GroupId(group)) {
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
    let got: Vec<String> = w.published(bob).into_iter().map(|(p, _)| p).collect();
    assert_eq!(got.first().map(String::as_str), Some("before"));
    assert!(
        got.len() > 2 && got.last().map(String::as_str) == Some("m19"),
        "{got:?}"
    );
    w.assert_sequence_complete(bob);
    // Service resumes by itself.
    w.publish(alice, &[1], "after");
    assert_eq!(
        w.published(bob).last().map(|(p, _)| p.as_str()),
        Some("after")
    );
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
    let got: Vec<String> = w.published(bob).into_iter().map(|(p, _)| p).collect();
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
    let got: Vec<String> = w.published(bob).into_iter().map(|(p, _)| p).collect();
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
    assert_eq!(w.view(bob, 1), ["carol"]);
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
    let got: Vec<String> = w.published(bob).into_iter().map(|(p, _)| p).collect();
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
        w.published(alice).last().map(|(p, _)| p.as_str()),
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
    // lost (the log still held it), so no gap.
    assert_eq!(w.view(alice, 1), ["bob"]);
    let got: Vec<String> = w.published(bob).into_iter().map(|(p, _)| p).collect();
    assert_eq!(got, ["while away"]);
    assert_eq!(w.gaps(bob), 0);
    let subscribed_again = w
        .pushes(bob)
        .iter()
        .filter(|m| matches!(m, Message::Subscribed(p) if !p.sender.is_self()))
        .count();
    assert_eq!(subscribed_again, 1, "alice came back into bob's view");
    w.assert_sequence_complete(bob);
}
