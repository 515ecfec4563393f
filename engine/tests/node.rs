//! The server node (`pushwire_engine::node`) driven end to end in memory: client
//! engines wired to [`NodeConnection`]s through byte buffers, time advanced by hand,
//! no threads, runtime or sockets.
//!
//! Covered: admission (Welcome contents, unknown service, auto-subscription), fan-out
//! through the mailboxes and the waker, detach and resume with replay, goodbye,
//! session expiry, a resume superseding a connection that is still open, resume
//! refusals and lost sessions, both slow-consumer policies (including a peer that
//! never reads), the configuration check, and one run over TLS. The last two tests
//! pin down how the outbound limit meets frames near its size (both failed before the
//! limit bounded the backlog rather than every frame).

mod common;

use bytes::Bytes;
use pushwire_engine::client::{
    ClientConfig, ClientConnection, ClientEvent, ClientState, ClientTransport,
};
use pushwire_engine::hub::{AllowAll, ConnectionId, HubConfig, SlowConsumerPolicy};
use pushwire_engine::node::{
    ConnectionEvent, FlowControl, Node, NodeConfig, NodeConfigError, NodeConnection, NodeEvent,
    SessionEnd,
};
use pushwire_engine::server::{ServerConfig, ServerTransport};
use pushwire_engine::tls::{server_tls_config, ClientAuth};
use pushwire_engine::CloseReason;
use pushwire_protocol::{
    CloseCode, GroupId, Message, RefuseCode, ResumeRequest, ResumeToken, Sender, Welcome,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

// --- Harness ---------------------------------------------------------------------

/// A waker that counts how often the node woke its connection.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// What the simulated transport between a client and its server connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Bytes flow both ways.
    Up,
    /// The client stops reading: the server side's transport has no room, so its
    /// `poll_transmit` is not called. Client → server still flows.
    Stalled,
    /// Nothing runs for this pair at all (its driver is not scheduled).
    Held,
    /// The transport is gone; whatever either end transmits is lost.
    Cut,
    /// The client reads this many bytes per tick of the clock: the server side
    /// writes into a transport that takes them that slowly.
    Trickle(usize),
}

/// A client engine and its server connection.
struct Pair {
    client: ClientConnection,
    conn: NodeConnection,
    /// `None` for pairs built with `Waker::noop()`.
    wakes: Option<Arc<CountingWaker>>,
    link: Link,
    events: Vec<ClientEvent>,
    eof_to_client: bool,
    eof_to_server: bool,
    /// `handle_connection_closed` was called.
    told_node: bool,
    /// Client bytes the server side has not read (its flow control holds it back).
    unread: Vec<u8>,
    /// Under `Link::Trickle`: server bytes transmitted, not yet taken by the
    /// transport, and the tick they were last taken at.
    backlog: Vec<u8>,
    trickled_at: Option<Instant>,
}

impl Pair {
    fn wakes(&self) -> usize {
        self.wakes
            .as_ref()
            .expect("counting")
            .0
            .load(Ordering::SeqCst)
    }

    fn welcome(&self) -> &Welcome {
        self.client.welcome().expect("the client got a Welcome")
    }

    fn pushes(&self) -> Vec<&Message> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Push(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// (seq, payload) of every Published received.
    fn published(&self) -> Vec<(u64, Bytes)> {
        self.pushes()
            .into_iter()
            .filter_map(|m| match m {
                Message::Published(p) => Some((p.seq, p.payload.clone())),
                _ => None,
            })
            .collect()
    }

    /// User ids of the peers whose Unsubscribed this client received.
    fn unsubscribed_peers(&self) -> Vec<String> {
        self.pushes()
            .into_iter()
            .filter_map(|m| match m {
                Message::Unsubscribed(u) => match &u.sender {
                    Sender::Peer(p) => Some(p.user_id.as_str().to_owned()),
                    Sender::Server => None,
                },
                _ => None,
            })
            .collect()
    }

    fn closed(&self) -> Option<&CloseReason> {
        self.events.iter().find_map(|e| match e {
            ClientEvent::Closed(r) => Some(r),
            _ => None,
        })
    }

    /// The code of the server's Refused, if that is how the connection ended.
    fn refused(&self) -> Option<RefuseCode> {
        match self.closed()? {
            CloseReason::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The code of the server's Close, if that is how the connection ended.
    fn closed_by_server(&self) -> Option<CloseCode> {
        match self.closed()? {
            CloseReason::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn session(&self) -> ConnectionId {
        self.conn.member().expect("authenticated").session
    }

    /// What this client would present to resume its session.
    fn resume(&self) -> ResumeRequest {
        ResumeRequest {
            token: self.welcome().resume_token,
            last_seq: self.client.last_seq(),
        }
    }
}

/// A node, its connections and the clock.
struct World {
    now: Instant,
    config: NodeConfig,
    node: Node<AllowAll>,
    pairs: Vec<Pair>,
    /// Everything `node.poll_event()` returned, in order.
    events: Vec<NodeEvent>,
    /// Resume tokens handed out so far (the next one is `[tokens + 1; 16]`).
    tokens: u8,
    tls: bool,
}

fn plaintext_config() -> NodeConfig {
    NodeConfig::new(ServerConfig::new(ServerTransport::Plaintext))
}

fn tls_config() -> NodeConfig {
    let tls = server_tls_config(common::credentials(), ClientAuth::None).unwrap();
    NodeConfig::new(ServerConfig::new(ServerTransport::Tls(tls)))
}

/// A node with groups 1, 2 and 3.
fn fresh_node(config: &NodeConfig) -> Node<AllowAll> {
    let mut node = Node::new(config.clone(), AllowAll).expect("a valid node config");
    for g in 1..=3 {
        node.add_group(GroupId(g), format!("group {g}")).unwrap();
    }
    node
}

impl World {
    fn new(config: NodeConfig) -> Self {
        let tls = matches!(config.server.transport, ServerTransport::Tls(_));
        Self {
            now: Instant::now(),
            node: fresh_node(&config),
            config,
            pairs: Vec::new(),
            events: Vec::new(),
            tokens: 0,
            tls,
        }
    }

    fn client(&self, user: &str) -> ClientConfig {
        let transport = if self.tls {
            ClientTransport::Tls(common::client_tls())
        } else {
            ClientTransport::Plaintext
        };
        ClientConfig::new(transport, user, b"pw")
    }

    /// `user`'s client config, asking to resume.
    fn resuming(&self, user: &str, resume: ResumeRequest) -> ClientConfig {
        ClientConfig {
            resume: Some(resume),
            ..self.client(user)
        }
    }

    /// Opens a connection (counting waker) and drives it until quiet.
    fn connect(&mut self, config: ClientConfig) -> usize {
        let wakes = Arc::new(CountingWaker::default());
        self.connect_with(config, Waker::from(wakes.clone()), Some(wakes))
    }

    /// Opens a connection whose waker is `Waker::noop()`.
    fn connect_unwoken(&mut self, config: ClientConfig) -> usize {
        self.connect_with(config, Waker::noop().clone(), None)
    }

    fn connect_with(
        &mut self,
        config: ClientConfig,
        waker: Waker,
        wakes: Option<Arc<CountingWaker>>,
    ) -> usize {
        let peer = format!("127.0.0.1:{}", 40_000 + self.pairs.len())
            .parse()
            .unwrap();
        let conn = self.node.connection(peer, self.now, waker).unwrap();
        let client = ClientConnection::new(config, self.now, common::wall_clock()).unwrap();
        self.pairs.push(Pair {
            client,
            conn,
            wakes,
            link: Link::Up,
            events: Vec::new(),
            eof_to_client: false,
            eof_to_server: false,
            told_node: false,
            unread: Vec::new(),
            backlog: Vec::new(),
            trickled_at: None,
        });
        self.step();
        self.pairs.len() - 1
    }

    /// Connects `user` and subscribes it to `groups`.
    fn join(&mut self, user: &str, groups: &[u32]) -> usize {
        let i = self.connect(self.client(user));
        assert_eq!(self.pairs[i].client.state(), ClientState::Ready, "{user}");
        if !groups.is_empty() {
            let groups = groups.iter().copied().map(GroupId).collect();
            self.pairs[i]
                .client
                .push(pushwire_engine::client::PushCommand::Subscribe(groups))
                .unwrap();
            self.step();
        }
        i
    }

    fn publish(&mut self, i: usize, group: u32, payload: &[u8]) {
        self.pairs[i]
            .client
            .publish(&[GroupId(group)], payload)
            .unwrap();
    }

    /// Moves bytes and events until nothing changes.
    fn step(&mut self) {
        for _ in 0..1000 {
            let mut progress = false;
            for i in 0..self.pairs.len() {
                progress |= self.step_pair(i);
            }
            while let Some(event) = self.node.poll_event() {
                self.events.push(event);
                progress = true;
            }
            if !progress {
                return;
            }
        }
        panic!("the world did not settle");
    }

    fn step_pair(&mut self, i: usize) -> bool {
        let now = self.now;
        if self.pairs[i].link == Link::Held {
            return false;
        }
        let mut progress = self.pump_commands(i);
        let p = &mut self.pairs[i];
        // A synchronous driver looks at every connection each step, woken or not.
        p.conn.handle_mailbox(now);
        if let Link::Trickle(per_tick) = p.link {
            if p.backlog.is_empty() {
                p.conn.poll_transmit(now, &mut p.backlog);
            }
            if !p.backlog.is_empty() && p.trickled_at != Some(now) {
                p.trickled_at = Some(now);
                let chunk: Vec<u8> = p.backlog.drain(..per_tick.min(p.backlog.len())).collect();
                p.conn.handle_written(now, chunk.len());
                p.client.handle_input(now, &chunk);
                progress = true;
            }
        } else if p.link != Link::Stalled {
            let mut buf = Vec::new();
            if !p.backlog.is_empty() {
                // Back from a trickle: the transport takes what waited first.
                buf = std::mem::take(&mut p.backlog);
            }
            if p.conn.poll_transmit(now, &mut buf) > 0 || !buf.is_empty() {
                progress = true;
                p.conn.handle_written(now, buf.len());
                if p.link != Link::Cut {
                    p.client.handle_input(now, &buf);
                }
            }
        }
        while let Some(event) = p.client.poll_event() {
            p.events.push(event);
            progress = true;
        }
        // A finished end closes its transport: the other end sees EOF.
        if p.link == Link::Up {
            if p.client.is_finished() && !p.eof_to_server {
                p.eof_to_server = true;
                p.conn.handle_transport_closed();
                progress = true;
            }
            if p.conn.is_finished() && !p.eof_to_client {
                p.eof_to_client = true;
                p.client.handle_transport_closed();
                progress = true;
            }
        }
        if p.conn.is_finished() && !p.told_node {
            p.told_node = true;
            self.node.handle_connection_closed(now, &mut p.conn);
            progress = true;
        }
        progress
    }

    /// Client → server bytes, the server connection's events, then its push
    /// commands to the node.
    fn pump_commands(&mut self, i: usize) -> bool {
        let progress = self.deliver_to_server(i);
        let p = &mut self.pairs[i];
        if p.conn.wants_node() {
            self.node.handle_connection(self.now, &mut p.conn);
            return true;
        }
        progress
    }

    /// Client → server bytes and the server connection's events, without lending
    /// the connection to `handle_connection`.
    fn deliver_to_server(&mut self, i: usize) -> bool {
        let now = self.now;
        let (node, tokens, p) = (&mut self.node, &mut self.tokens, &mut self.pairs[i]);
        let mut progress = false;
        p.client.poll_transmit(now, &mut p.unread);
        if p.link == Link::Cut {
            p.unread.clear();
        } else if !p.unread.is_empty() && p.conn.wants_input() {
            progress = true;
            p.conn.handle_input(now, &p.unread);
            p.unread.clear();
        }
        while let Some(event) = p.conn.poll_event() {
            progress = true;
            match event {
                // Every Hello is permitted; the node decides the rest.
                ConnectionEvent::Authenticate(request) => {
                    *tokens += 1;
                    node.handle_hello(now, &mut p.conn, request, ResumeToken([*tokens; 16]));
                }
                ConnectionEvent::Request {
                    request_id,
                    payload,
                    ..
                } => {
                    p.conn.respond(request_id, Ok(payload));
                }
                // Requests are answered as they come: nothing runs to cancel.
                ConnectionEvent::CancelRequested { .. } | ConnectionEvent::Closed(_) => {}
            }
        }
        progress
    }

    /// Drops the transport under both ends, without a Close.
    fn cut(&mut self, i: usize) {
        let p = &mut self.pairs[i];
        p.link = Link::Cut;
        p.conn.handle_transport_closed();
        p.client.handle_transport_closed();
        self.step();
    }

    /// Advances the clock in steps of at most a second, firing every timer.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end {
            self.now = end.min(self.now + Duration::from_secs(1));
            let now = self.now;
            for p in self.pairs.iter_mut().filter(|p| p.link != Link::Held) {
                p.client.handle_timeout(now);
                p.conn.handle_timeout(now);
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.node.handle_timeout(now);
            }
            self.step();
        }
    }

    fn has_event(&self, wanted: impl Fn(&NodeEvent) -> bool) -> bool {
        self.events.iter().any(wanted)
    }
}

/// Every sequence number from `from` to `to` is covered exactly once by the Gaps and
/// numbered events in `pushes`, in ascending order.
fn assert_covers_exactly(pushes: &[&Message], from: u64, to: u64) {
    let mut next = from;
    for m in pushes {
        let (first, last) = match m {
            Message::Gap(g) => (g.first, g.last),
            Message::Published(p) => (p.seq, p.seq),
            Message::Subscribed(p) => (p.seq, p.seq),
            Message::Unsubscribed(p) => (p.seq, p.seq),
            Message::UserMessage(p) => (p.seq, p.seq),
            _ => continue,
        };
        assert_eq!(first, next, "no hole and no duplicate before {m:?}");
        next = last + 1;
    }
    assert_eq!(next, to + 1, "everything up to {to} covered");
}

// --- Admission ---------------------------------------------------------------------

/// Test 1's body, shared with the TLS run.
fn check_a_permitted_hello_is_welcomed(mut w: World) {
    let i = w.connect(w.client("alice"));
    let tls_seen = w.pairs[i]
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::ServerAuthenticated(_)));
    assert_eq!(tls_seen, w.tls, "TLS exactly when configured");
    let session = w.pairs[i].session();
    let welcome = w.pairs[i].welcome().clone();
    assert_eq!(welcome.session_id, session.0);
    assert_eq!(welcome.resume_token, ResumeToken([1; 16]));
    assert!(!welcome.resumed);
    assert_eq!(welcome.session_timeout_ms, 7_000);
    assert_eq!(welcome.replay_capacity, 100);
    assert_eq!(
        w.events,
        [NodeEvent::SessionStarted {
            session,
            user_id: "alice".into(),
            lost: false,
        }]
    );
    assert_eq!(w.node.stats().sessions_started, 1);
    assert_eq!(w.node.hub().is_attached(session), Some(true));
    // RPC goes through the connection's own half.
    let id = w.pairs[i].client.request(5, "ping".into()).unwrap();
    w.step();
    assert!(w.pairs[i].events.iter().any(|e| matches!(
        e,
        ClientEvent::Response { request_id, payload } if *request_id == id && payload == "ping"
    )));
}

fn welcome_config(mut config: NodeConfig) -> NodeConfig {
    config.hub.session_timeout = Duration::from_secs(7);
    config.hub.replay_events = 100;
    config
}

#[test]
fn a_permitted_hello_gets_a_welcome_with_the_nodes_session_and_limits() {
    check_a_permitted_hello_is_welcomed(World::new(welcome_config(plaintext_config())));
}

#[test]
fn a_hello_for_a_service_the_node_does_not_host_is_refused() {
    let mut config = plaintext_config();
    config.services = [1].into();
    let mut w = World::new(config);
    let mut client = w.client("alice");
    client.service_id = 2;
    let i = w.connect_unwoken(client);
    assert_eq!(w.pairs[i].refused(), Some(RefuseCode::UnknownService));
    assert_eq!(w.node.hub().connection_count(), 0);
    assert_eq!(w.node.stats().sessions_started, 0);
    assert!(w.has_event(|e| matches!(e, NodeEvent::UnknownService { service_id: 2, .. })));
    // The hosted service is still let in.
    let j = w.connect_unwoken(w.client("bob"));
    assert_eq!(w.pairs[j].client.state(), ClientState::Ready);
}

#[test]
fn auto_subscribe_puts_a_new_session_in_its_groups_and_tells_it_first() {
    let mut config = plaintext_config();
    config.auto_subscribe = vec![GroupId(1), GroupId(2)];
    let mut w = World::new(config);
    let a = w.connect(w.client("alice"));
    let session = w.pairs[a].session();
    let groups: Vec<GroupId> = w.node.hub().subscriptions(session).unwrap().collect();
    assert_eq!(groups, [GroupId(1), GroupId(2)]);
    match w.pairs[a].pushes().first() {
        Some(Message::Subscribed(s)) => {
            assert!(s.sender.is_self());
            assert_eq!((s.seq, &s.groups[..]), (1, &[GroupId(1), GroupId(2)][..]));
        }
        other => panic!("first push event: {other:?}"),
    }
    // The next arrival is announced to alice.
    w.connect(w.client("bob"));
    assert!(matches!(
        w.pairs[a].pushes().last(),
        Some(Message::Subscribed(s)) if !s.sender.is_self() && s.groups.len() == 2
    ));
}

// --- Fan-out -------------------------------------------------------------------------

/// Test 4's body, shared with the TLS run.
fn check_a_publication_reaches_the_group(mut w: World) {
    let a = w.join("alice", &[]);
    let b = w.join("bob", &[1]);
    let seen = w.pairs[b].client.last_seq();
    w.publish(a, 1, b"hello group");
    w.deliver_to_server(a);
    assert!(w.pairs[a].conn.wants_node());
    let wakes = w.pairs[b].wakes();
    w.node.handle_connection(w.now, &mut w.pairs[a].conn);
    assert!(
        w.pairs[b].wakes() > wakes,
        "the node woke the receiver during handle_connection"
    );
    assert!(
        w.pairs[b].conn.queued_bytes() > 0,
        "the frame is in bob's mailbox"
    );
    w.step();
    assert_eq!(w.pairs[b].published(), [(seen + 1, "hello group".into())]);
    assert_eq!(w.pairs[b].conn.queued_bytes(), 0);
    // alice is not subscribed: she gets only her echo.
    let echo = w.pairs[a].pushes();
    assert!(matches!(echo[..], [Message::Published(p)] if p.sender.is_self()));
}

#[test]
fn a_publication_reaches_the_members_of_its_group_and_wakes_them() {
    check_a_publication_reaches_the_group(World::new(plaintext_config()));
}

#[test]
fn the_stats_count_n_publications_to_m_receivers_as_n_times_m_deliveries() {
    let mut w = World::new(plaintext_config());
    let publisher = w.join("alice", &[]);
    let receivers: Vec<usize> = (0..3).map(|i| w.join(&format!("r{i}"), &[1, 2])).collect();
    let before_join = *w.node.stats();
    let late = w.join("late", &[1]);
    let base = *w.node.stats();
    assert_eq!(
        base.deliveries_published, before_join.deliveries_published,
        "presence events are not publications"
    );
    // The late joiner's Subscribed went to the three members and itself.
    assert_eq!(base.deliveries_other - before_join.deliveries_other, 4);
    for n in 0..4u8 {
        w.publish(publisher, 1, &[n; 10]);
    }
    w.step();
    w.node
        .publish(
            pushwire_engine::hub::Actor::Server,
            &[GroupId(2)],
            Bytes::from_static(b"from the server"),
        )
        .unwrap();
    w.step();
    let stats = w.node.stats();
    assert_eq!(stats.publications_in - base.publications_in, 5);
    assert_eq!(stats.payload_bytes_in - base.payload_bytes_in, 4 * 10 + 15);
    // 4 client publications to 4 receivers of group 1 plus alice's echoes, and one
    // server publication to the 3 receivers of group 2 (no echo).
    assert_eq!(
        stats.deliveries_published - base.deliveries_published,
        4 * 4 + 4 + 3
    );
    assert_eq!(stats.user_messages_in, 0);
    assert!(stats.bytes_delivered > base.bytes_delivered + (4 * 5 * 10 + 3 * 15));
    assert_eq!(w.pairs[late].published().len(), 4);
    for &r in &receivers {
        assert_eq!(w.pairs[r].published().len(), 5);
    }

    let gauges = w.node.gauges();
    assert_eq!(gauges.connections, 5);
    assert_eq!(gauges.detached_sessions, 0);
    assert_eq!(gauges.groups, 3);
    assert_eq!(gauges.subscriptions, 3 * 2 + 1);
    assert_eq!(gauges.outbound_bytes, 0, "every receiver took its frames");
    assert!(gauges.replay_events >= 5 * 3, "{gauges:?}");

    w.advance(Duration::from_secs(2));
    let reports = w.node.connection_reports(w.now);
    assert_eq!(reports.len(), 5);
    let r0 = reports
        .iter()
        .find(|r| r.user_id.as_str() == "r0")
        .expect("r0 listed");
    assert_eq!(r0.groups, [GroupId(1), GroupId(2)]);
    assert_eq!(r0.session, w.pairs[receivers[0]].session());
    assert_eq!(r0.peer.port(), 40_000 + receivers[0] as u16);
    assert!(r0.connected_for >= Duration::from_secs(2));

    w.cut(receivers[0]);
    let gauges = w.node.gauges();
    assert_eq!(gauges.connections, 4);
    assert_eq!(gauges.detached_sessions, 1);
    assert_eq!(w.node.connection_reports(w.now).len(), 4);
}

// --- Sessions: detach, resume, goodbye, expiry -------------------------------------

#[test]
fn a_dropped_transport_detaches_the_session_and_a_resume_replays_what_was_missed() {
    let mut w = World::new(plaintext_config());
    let a = w.join("alice", &[1]);
    let b = w.join("bob", &[1]);
    let session = w.pairs[b].session();
    w.cut(b);
    assert!(w.has_event(|e| *e
        == NodeEvent::Detached {
            session,
            user_id: "bob".into()
        }));
    assert!(!w.has_event(|e| matches!(e, NodeEvent::Ended { .. })));
    assert_eq!(w.node.hub().is_attached(session), Some(false));
    assert!(
        w.pairs[a].unsubscribed_peers().is_empty(),
        "a detach is silent"
    );

    let resume = w.pairs[b].resume();
    for m in ["m1", "m2", "m3"] {
        w.publish(a, 1, m.as_bytes());
        w.step();
    }
    let b2 = w.connect(w.resuming("bob", resume));
    let welcome = w.pairs[b2].welcome();
    assert!(welcome.resumed);
    assert_eq!(welcome.session_id, session.0);
    assert!(w.has_event(|e| *e
        == NodeEvent::Resumed {
            session,
            user_id: "bob".into(),
            replayed: 3,
            gap: None,
            superseded: false,
        }));
    assert_eq!(w.node.hub().is_attached(session), Some(true));
    w.publish(a, 1, b"m4");
    w.step();
    let s = resume.last_seq;
    let expected: Vec<(u64, Bytes)> = (1..=4).map(|k| (s + k, format!("m{k}").into())).collect();
    assert_eq!(w.pairs[b2].published(), expected, "in order, nothing twice");
    assert_covers_exactly(&w.pairs[b2].pushes(), s + 1, s + 4);
    assert_eq!(w.node.stats().sessions_resumed, 1);
    assert_eq!(w.node.stats().resumes_with_replay, 1);
}

#[test]
fn a_goodbye_ends_the_session_and_the_other_members_are_told() {
    let mut w = World::new(plaintext_config());
    let a = w.join("alice", &[1]);
    let b = w.join("bob", &[1]);
    let session = w.pairs[b].session();
    w.pairs[b].client.close(CloseCode::Normal, "bye");
    w.step();
    assert!(w.pairs[b].told_node);
    assert!(w.has_event(|e| *e
        == NodeEvent::Ended {
            session,
            user_id: "bob".into(),
            end: SessionEnd::Goodbye,
        }));
    assert!(!w.has_event(|e| matches!(e, NodeEvent::Detached { .. })));
    assert_eq!(w.node.hub().is_attached(session), None);
    assert_eq!(w.pairs[a].unsubscribed_peers(), ["bob"]);
}

#[test]
fn a_detached_session_expires_after_the_session_timeout() {
    let mut config = plaintext_config();
    config.hub.session_timeout = Duration::from_secs(5);
    let mut w = World::new(config);
    let a = w.join("alice", &[1]);
    let b = w.join("bob", &[1]);
    let session = w.pairs[b].session();
    w.cut(b);
    let deadline = w.now + Duration::from_secs(5);
    assert_eq!(w.node.poll_timeout(), Some(deadline));

    w.now = deadline - Duration::from_millis(1);
    w.node.handle_timeout(w.now);
    w.step();
    assert!(!w.has_event(|e| matches!(e, NodeEvent::Ended { .. })));
    assert_eq!(w.node.hub().is_attached(session), Some(false));

    w.now = deadline;
    w.node.handle_timeout(w.now);
    w.step();
    assert!(w.has_event(|e| *e
        == NodeEvent::Ended {
            session,
            user_id: "bob".into(),
            end: SessionEnd::Expired,
        }));
    assert_eq!(w.pairs[a].unsubscribed_peers(), ["bob"]);
    assert_eq!(w.node.stats().sessions_expired, 1);
    assert_eq!(w.node.hub().is_attached(session), None);
    assert_eq!(w.node.poll_timeout(), None);
}

#[test]
fn a_resume_while_the_old_connection_is_open_kicks_it_and_ignores_what_it_sends() {
    let mut w = World::new(plaintext_config());
    let a = w.join("alice", &[1]);
    let b1 = w.join("bob", &[1]);
    let session = w.pairs[b1].session();
    let alice_before = w.pairs[a].published().len();

    // The old connection has decoded a publication but not yet taken the node's
    // lock when the resume comes in; then its driver stalls.
    w.publish(b1, 1, b"stale-1");
    w.deliver_to_server(b1);
    assert!(w.pairs[b1].conn.wants_node());
    w.pairs[b1].link = Link::Held;
    let wakes = w.pairs[b1].wakes();

    let b2 = w.connect(w.resuming("bob", w.pairs[b1].resume()));
    assert!(w.pairs[b2].welcome().resumed);
    assert!(w.has_event(|e| matches!(
        e,
        NodeEvent::Resumed { session: s, superseded: true, .. } if *s == session
    )));
    assert_eq!(w.node.stats().superseded, 1);
    assert!(w.pairs[b1].wakes() > wakes, "the old connection was woken");

    // What the old connection still brings is ignored.
    w.node.handle_connection(w.now, &mut w.pairs[b1].conn);
    assert!(!w.pairs[b1].conn.wants_node());
    w.publish(b1, 1, b"stale-2");
    w.pairs[b1].link = Link::Up;
    w.step();
    assert_eq!(w.pairs[b1].closed_by_server(), Some(CloseCode::Kicked));
    assert!(w.pairs[b1].told_node, "the old connection finished");
    let stale = |p: &Pair| p.published().iter().any(|(_, m)| m.starts_with(b"stale"));
    assert!(
        !w.pairs.iter().any(stale),
        "a superseded connection's publication ran"
    );
    assert_eq!(w.pairs[a].published().len(), alice_before);
    // Its end neither ended nor detached the session, which the new one owns.
    assert!(!w.has_event(|e| matches!(e, NodeEvent::Detached { .. } | NodeEvent::Ended { .. })));
    assert_eq!(w.node.hub().is_attached(session), Some(true));
    assert!(w.pairs[a].unsubscribed_peers().is_empty());
    w.publish(a, 1, b"live");
    w.step();
    assert_eq!(w.pairs[b2].published().last().unwrap().1, "live");
}

#[test]
fn a_resume_with_another_users_token_is_refused() {
    let mut w = World::new(plaintext_config());
    let alice = w.join("alice", &[1]);
    let session = w.pairs[alice].session();
    let m = w.connect_unwoken(w.resuming("mallory", w.pairs[alice].resume()));
    assert_eq!(w.pairs[m].refused(), Some(RefuseCode::ResumeNotPermitted));
    assert!(w.has_event(|e| *e
        == NodeEvent::ResumeRefused {
            user_id: "mallory".into()
        }));
    assert_eq!(w.node.hub().connection_count(), 1);
    assert_eq!(w.node.hub().is_attached(session), Some(true));
    assert_eq!(w.pairs[alice].client.state(), ClientState::Ready);
}

#[test]
fn a_resume_the_node_does_not_know_starts_a_new_session_that_begins_with_session_lost() {
    let config = plaintext_config();
    let mut w = World::new(config.clone());
    let b = w.join("bob", &[1]);
    w.pairs[b].client.publish(&[GroupId(1)], b"x").unwrap();
    w.step();
    w.cut(b);
    let resume = w.pairs[b].resume();
    assert!(resume.last_seq >= 2);
    // The server restarts: everything it held is gone.
    w.node = fresh_node(&config);
    let b2 = w.connect(w.resuming("bob", resume));
    let welcome = w.pairs[b2].welcome().clone();
    assert!(!welcome.resumed);
    assert!(matches!(
        w.pairs[b2].pushes().first(),
        Some(Message::SessionLost(_))
    ));
    assert!(w.has_event(|e| matches!(
        e,
        NodeEvent::SessionStarted { lost: true, session, .. } if session.0 == welcome.session_id
    )));
    assert_eq!(w.node.stats().sessions_lost, 1);
    assert_eq!(w.node.stats().sessions_started, 1);
    assert_eq!(
        w.pairs[b2].client.last_seq(),
        0,
        "the new session counts from 1"
    );
}

// --- Slow consumers ------------------------------------------------------------------

const LIMIT: usize = 4 * 1024;

fn slow_consumer_config(policy: SlowConsumerPolicy) -> NodeConfig {
    let mut config = plaintext_config();
    config.max_outbound_bytes = LIMIT;
    config.hub.replay_bytes = LIMIT;
    config.slow_consumer_policy = policy;
    // The hard limit alone, as with flow control off.
    config.flow_control = None;
    config
}

/// alice publishes `count` payloads of 1,000 bytes to group 1, one per step, while
/// bob (a member) does not read. Returns (world, alice, bob, bob's last seq before).
fn flood_a_stalled_reader(policy: SlowConsumerPolicy, count: u8) -> (World, usize, usize, u64) {
    let mut w = World::new(slow_consumer_config(policy));
    let a = w.join("alice", &[]);
    let b = w.join("bob", &[1]);
    let seen = w.pairs[b].client.last_seq();
    w.pairs[b].link = Link::Stalled;
    for k in 0..count {
        w.publish(a, 1, &[k; 1000]);
        w.step();
        if w.has_event(|e| matches!(e, NodeEvent::SlowConsumer { .. })) {
            assert_eq!(
                w.pairs[b].conn.queued_bytes(),
                0,
                "a closed mailbox is cleared and takes nothing more"
            );
        } else {
            // The limit bounds the backlog: at most one frame past it.
            assert!(w.pairs[b].conn.queued_bytes() < LIMIT + 1100);
        }
    }
    (w, a, b, seen)
}

#[test]
fn a_slow_consumer_is_disconnected_its_session_kept_for_a_resume() {
    let (mut w, _, b, seen) = flood_a_stalled_reader(SlowConsumerPolicy::Disconnect, 8);
    let session = w.pairs[b].session();
    assert!(w.has_event(|e| *e == NodeEvent::SlowConsumer { session }));
    assert_eq!(w.node.stats().slow_consumers, 1);
    assert_eq!(w.pairs[b].conn.queued_bytes(), 0);
    assert!(w.pairs[b].published().is_empty(), "bob read nothing");

    w.pairs[b].link = Link::Up;
    w.step();
    assert_eq!(w.pairs[b].closed_by_server(), Some(CloseCode::SlowConsumer));
    assert!(w.pairs[b].published().is_empty(), "the mailbox was cleared");
    assert!(w.has_event(|e| matches!(e, NodeEvent::Detached { session: s, .. } if *s == session)));
    assert!(!w.has_event(|e| matches!(e, NodeEvent::Ended { .. })));
    assert_eq!(w.node.hub().is_attached(session), Some(false));

    let resume = w.pairs[b].resume();
    assert_eq!(resume.last_seq, seen);
    let b2 = w.connect(w.resuming("bob", resume));
    assert!(w.pairs[b2].welcome().resumed);
    let resumed = w.events.iter().find_map(|e| match e {
        NodeEvent::Resumed { replayed, gap, .. } => Some((*replayed, *gap)),
        _ => None,
    });
    let (replayed, gap) = resumed.expect("a Resumed event");
    assert!(
        replayed > 0 && gap.is_some(),
        "{replayed} replayed, gap {gap:?}"
    );
    let pushes = w.pairs[b2].pushes();
    assert!(matches!(pushes.first(), Some(Message::Gap(g)) if g.first == seen + 1));
    assert_covers_exactly(&pushes, seen + 1, seen + 8);
    assert_eq!(w.pairs[b2].published().last().unwrap().1, [7u8; 1000][..]);
}

#[test]
fn a_slow_consumer_that_never_reads_is_abandoned_after_the_close_grace() {
    let (mut w, _, b, _) = flood_a_stalled_reader(SlowConsumerPolicy::Disconnect, 8);
    let session = w.pairs[b].session();
    assert!(w.has_event(|e| *e == NodeEvent::SlowConsumer { session }));
    let read = w.pairs[b].events.len();
    let grace = w.config.close_grace;
    assert_eq!(w.pairs[b].conn.poll_timeout(), Some(w.now + grace));

    w.advance(grace - Duration::from_millis(1));
    assert!(!w.pairs[b].conn.is_abandoned());
    assert!(!w.pairs[b].told_node);
    w.advance(Duration::from_millis(1));
    assert!(w.pairs[b].conn.is_abandoned());
    assert!(w.pairs[b].conn.is_finished());
    assert_eq!(w.pairs[b].conn.poll_timeout(), None);
    assert!(w.pairs[b].told_node);
    assert_eq!(
        w.pairs[b].events.len(),
        read,
        "the transport was never read"
    );
    assert!(w.has_event(|e| matches!(e, NodeEvent::Detached { session: s, .. } if *s == session)));
    assert_eq!(w.node.hub().is_attached(session), Some(false));
}

#[test]
fn drop_oldest_keeps_a_slow_consumer_and_covers_what_it_dropped_with_a_gap() {
    let (mut w, _, b, seen) = flood_a_stalled_reader(SlowConsumerPolicy::DropOldest, 10);
    let dropped = w.pairs[b].conn.dropped_by_policy();
    assert!(dropped > 0);
    assert_eq!(
        w.node.stats().events_dropped,
        dropped,
        "counted for the metrics"
    );
    assert_eq!(w.node.stats().gaps_shed, 1, "one run of drops, one Gap");
    assert!(!w.has_event(|e| matches!(e, NodeEvent::SlowConsumer { .. })));
    assert!(w.pairs[b].conn.queued_bytes() <= LIMIT);

    w.pairs[b].link = Link::Up;
    w.step();
    assert_eq!(w.pairs[b].closed(), None);
    assert_eq!(w.pairs[b].client.state(), ClientState::Ready);
    let pushes = w.pairs[b].pushes();
    let after: Vec<&Message> = pushes
        .into_iter()
        .skip_while(|m| !matches!(m, Message::Gap(_)))
        .collect();
    match after.first() {
        Some(Message::Gap(g)) => {
            assert_eq!(g.first, seen + 1, "the oldest were dropped");
            assert_eq!(g.last - g.first + 1, dropped);
        }
        other => panic!("expected a Gap first, got {other:?}"),
    }
    assert_covers_exactly(&after, seen + 1, seen + 10);
    assert_eq!(w.pairs[b].published().last().unwrap().1, [9u8; 1000][..]);
}

#[test]
fn a_replay_buffer_larger_than_the_outbound_limit_is_refused() {
    let mut config = plaintext_config();
    config.max_outbound_bytes = LIMIT;
    config.flow_control = None;
    config.hub = HubConfig {
        replay_bytes: LIMIT + 1,
        ..HubConfig::default()
    };
    match Node::new(config.clone(), AllowAll) {
        Err(e) => assert_eq!(
            e,
            NodeConfigError::ReplayOverOutbound {
                replay: LIMIT + 1,
                outbound: LIMIT,
            }
        ),
        Ok(_) => panic!("accepted a replay buffer over the outbound limit"),
    }
    config.hub.replay_bytes = LIMIT;
    assert!(Node::new(config, AllowAll).is_ok(), "equal is fine");
}

// --- TLS ---------------------------------------------------------------------------

#[test]
fn the_node_admits_and_fans_out_over_tls_too() {
    check_a_permitted_hello_is_welcomed(World::new(welcome_config(tls_config())));
    check_a_publication_reaches_the_group(World::new(tls_config()));
}

// --- The outbound limit against frames near its size ----------------------------------

/// `Node::new` accepts `hub.replay_bytes == max_outbound_bytes`, and a resume queues
/// the Gap notice *and* up to `replay_bytes` of replay into the fresh mailbox: the
/// resume must not be cut off as a slow consumer (it was, every time, before the
/// limit bounded the backlog instead of each frame).
#[test]
fn a_slow_consumer_can_resume_when_its_replay_buffer_is_exactly_full() {
    // 986-byte payloads make 1,024-byte Published frames for bob: four fill the
    // 4 KiB replay buffer exactly.
    let mut w = World::new(slow_consumer_config(SlowConsumerPolicy::Disconnect));
    let a = w.join("alice", &[]);
    let b = w.join("bob", &[1]);
    let seen = w.pairs[b].client.last_seq();
    w.pairs[b].link = Link::Stalled;
    for k in 0..8 {
        w.publish(a, 1, &[k; 986]);
        w.step();
    }
    let session = w.pairs[b].session();
    assert_eq!(w.node.hub().replay_held(session), Some((4, LIMIT)));
    w.pairs[b].link = Link::Up;
    w.step();
    // Three resumes in a row, each from where the previous one got to.
    let mut resume = w.pairs[b].resume();
    let mut closes = Vec::new();
    for _ in 0..3 {
        let i = w.connect(w.resuming("bob", resume));
        assert!(w.pairs[i].welcome().resumed);
        closes.push(w.pairs[i].closed_by_server());
        resume = w.pairs[i].resume();
        w.cut(i);
    }
    assert_eq!(closes, [None; 3], "resumes cut off; {:?}", w.node.stats());
    assert!(resume.last_seq >= seen + 8, "the client caught up");
}

/// One accepted publication larger than the outbound limit goes to receivers that
/// read (an empty mailbox takes it whole): before, it cut every receiver off during
/// the fan-out, and as the replay buffer keeps the newest event, every resume too.
#[test]
fn one_large_publication_does_not_cut_off_receivers_that_read() {
    let mut w = World::new(slow_consumer_config(SlowConsumerPolicy::Disconnect));
    let a = w.join("alice", &[]);
    let b = w.join("bob", &[1]);
    w.publish(a, 1, &[1; 5000]);
    w.step();
    assert_eq!(w.node.stats().slow_consumers, 0, "events: {:?}", w.events);
    assert_eq!(w.pairs[b].published().len(), 1);
}

// --- Flow control ----------------------------------------------------------------

const HIGH_WATER: usize = 3 * 1024;
const LOW_WATER: usize = 1024;
const FLOW_GRACE: Duration = Duration::from_millis(1500);

fn flow_config(policy: SlowConsumerPolicy) -> NodeConfig {
    let mut config = plaintext_config();
    config.max_outbound_bytes = 64 * 1024;
    config.hub.replay_bytes = 32 * 1024;
    config.slow_consumer_policy = policy;
    config.flow_control = Some(FlowControl {
        high_water: HIGH_WATER,
        low_water: LOW_WATER,
        grace: FLOW_GRACE,
    });
    config
}

/// alice publishes 1,000-byte payloads to group 1, where bob is, and carol to group
/// 2, where dave is; bob stops reading. Returns the world and the four indexes.
fn a_stalled_receiver_among_publishers(policy: SlowConsumerPolicy) -> (World, [usize; 4]) {
    let mut w = World::new(flow_config(policy));
    let alice = w.join("alice", &[]);
    let bob = w.join("bob", &[1]);
    let carol = w.join("carol", &[]);
    let dave = w.join("dave", &[2]);
    w.pairs[bob].link = Link::Stalled;
    for k in 0..6 {
        w.publish(alice, 1, &[k; 1000]);
        w.publish(carol, 2, &[k; 1000]);
        w.step();
    }
    (w, [alice, bob, carol, dave])
}

#[test]
fn a_congested_receiver_holds_its_publisher_back_and_no_one_else() {
    let (mut w, [alice, bob, carol, dave]) =
        a_stalled_receiver_among_publishers(SlowConsumerPolicy::Disconnect);
    assert!(!w.pairs[alice].conn.wants_input(), "alice is held back");
    assert!(w.pairs[carol].conn.wants_input(), "carol's receiver reads");
    assert_eq!(
        w.pairs[dave].published().len(),
        6,
        "dave got all of carol's"
    );
    assert!(w.pairs[bob].conn.queued_bytes() > HIGH_WATER);
    assert!(
        w.pairs[bob].conn.queued_bytes() < HIGH_WATER + 2 * 1100,
        "held before the backlog grew much: {}",
        w.pairs[bob].conn.queued_bytes()
    );
    assert!(
        !w.pairs[alice].unread.is_empty(),
        "alice's last commands wait unread"
    );
    assert_eq!(w.node.stats().congestions, 1);
    assert_eq!(w.node.stats().publishers_held, 1);
    assert_eq!(w.node.stats().slow_consumers, 0);

    // bob reads again: alice is released and everything arrives, nothing cut.
    w.pairs[bob].link = Link::Up;
    w.step();
    assert!(w.pairs[alice].conn.wants_input());
    w.step();
    let got: Vec<u8> = w.pairs[bob].published().iter().map(|(_, p)| p[0]).collect();
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    assert_eq!(w.pairs[bob].closed(), None);
    assert!(!w.pairs[bob]
        .pushes()
        .iter()
        .any(|m| matches!(m, Message::Gap(_))));
    assert_eq!(w.node.stats().slow_consumers, 0);
    assert_eq!(w.node.poll_timeout(), None, "no congestion left to time");
}

#[test]
fn a_receiver_that_stays_congested_is_cut_after_the_grace_and_its_publisher_goes_on() {
    let (mut w, [alice, bob, _, _]) =
        a_stalled_receiver_among_publishers(SlowConsumerPolicy::Disconnect);
    let since = w.now;
    assert_eq!(w.node.poll_timeout(), Some(since + FLOW_GRACE));
    w.advance(FLOW_GRACE - Duration::from_millis(1));
    assert!(
        !w.pairs[alice].conn.wants_input(),
        "held for the whole grace"
    );
    w.advance(Duration::from_millis(1));
    assert!(w.pairs[alice].conn.wants_input(), "released at the grace");
    assert_eq!(w.node.stats().congestions_expired, 1);
    assert_eq!(w.node.stats().slow_consumers, 1);
    let session = w.pairs[bob].session();
    assert!(w.has_event(|e| *e == NodeEvent::SlowConsumer { session }));
    assert_eq!(w.pairs[bob].conn.queued_bytes(), 0);
    w.step();
    // alice's held commands went through: her echo-less publications are all taken.
    assert!(w.pairs[alice].unread.is_empty());
}

#[test]
fn a_receiver_that_reads_slowly_holds_its_publisher_at_its_pace_and_is_never_cut() {
    let mut w = World::new(flow_config(SlowConsumerPolicy::Disconnect));
    let alice = w.join("alice", &[]);
    let bob = w.join("bob", &[1]);
    // 100 bytes per 100 ms tick: a backlog of a few KiB takes longer than the
    // 1.5 s grace to write, but the transport takes something every tick.
    w.pairs[bob].link = Link::Trickle(100);
    for k in 0..20u8 {
        w.publish(alice, 1, &[k; 1000]);
        w.advance(Duration::from_millis(100));
    }
    for _ in 0..300 {
        w.advance(Duration::from_millis(100));
    }
    assert!(w.node.stats().publishers_held >= 1, "{:?}", w.node.stats());
    assert_eq!(
        w.node.stats().congestions_expired,
        0,
        "{:?}",
        w.node.stats()
    );
    assert_eq!(w.node.stats().slow_consumers, 0);
    w.pairs[bob].link = Link::Up;
    w.step();
    assert_eq!(w.pairs[bob].closed(), None);
    let got: Vec<u8> = w.pairs[bob].published().iter().map(|(_, p)| p[0]).collect();
    assert_eq!(got, (0..20).collect::<Vec<u8>>());
    assert!(!w.pairs[bob]
        .pushes()
        .iter()
        .any(|m| matches!(m, Message::Gap(_))));
}

#[test]
fn a_receiver_that_stops_after_some_progress_is_cut_a_grace_after_its_last_progress() {
    let mut w = World::new(flow_config(SlowConsumerPolicy::Disconnect));
    let alice = w.join("alice", &[]);
    let bob = w.join("bob", &[1]);
    w.pairs[bob].link = Link::Trickle(100);
    for k in 0..8u8 {
        w.publish(alice, 1, &[k; 1000]);
    }
    w.step();
    assert!(!w.pairs[alice].conn.wants_input(), "held for bob");
    for _ in 0..10 {
        w.advance(Duration::from_millis(100));
    }
    // bob stops taking anything now: the grace runs from here, not from when he
    // became congested a second ago.
    w.pairs[bob].link = Link::Stalled;
    let stopped = w.now;
    w.advance(FLOW_GRACE - Duration::from_millis(100));
    assert_eq!(w.node.stats().congestions_expired, 0, "not yet");
    assert!(!w.pairs[alice].conn.wants_input());
    w.advance(Duration::from_millis(100));
    assert_eq!(w.now, stopped + FLOW_GRACE);
    assert_eq!(w.node.stats().congestions_expired, 1);
    assert_eq!(w.node.stats().slow_consumers, 1);
    assert!(w.pairs[alice].conn.wants_input(), "released at the grace");
}

#[test]
fn a_receiver_congested_again_before_the_node_heard_it_drained_gets_a_new_grace() {
    let mut w = World::new(flow_config(SlowConsumerPolicy::Disconnect));
    let alice = w.join("alice", &[]);
    let carol = w.join("carol", &[]);
    let bob = w.join("bob", &[1]);
    w.pairs[bob].link = Link::Held;
    for k in 0..4 {
        w.publish(alice, 1, &[k; 1000]);
    }
    w.step();
    assert!(!w.pairs[alice].conn.wants_input(), "held for bob");
    w.advance(FLOW_GRACE - Duration::from_millis(500));
    // bob's transport takes everything, but his driver has not told the node yet
    // (another thread holds the node's lock): carol's publications to him run first.
    let now = w.now;
    let mut out = Vec::new();
    assert!(w.pairs[bob].conn.poll_transmit(now, &mut out) > 0);
    assert!(w.pairs[bob].conn.wants_node(), "drained, to report");
    for k in 0..4 {
        w.publish(carol, 1, &[k; 1000]);
    }
    w.deliver_to_server(carol);
    w.node.handle_connection(now, &mut w.pairs[carol].conn);
    assert_eq!(w.node.poll_timeout(), Some(now + FLOW_GRACE), "a new grace");
    // Now the node hears bob drained; he is congested again, so both stay held.
    w.node.handle_connection(now, &mut w.pairs[bob].conn);
    assert!(!w.pairs[alice].conn.wants_input());
    assert!(!w.pairs[carol].conn.wants_input());
    w.advance(Duration::from_millis(600));
    assert_eq!(
        w.node.stats().congestions_expired,
        0,
        "not at the old grace"
    );
}

#[test]
fn under_drop_oldest_a_receiver_congested_past_the_grace_is_shed_to_the_low_water_mark() {
    let (mut w, [alice, bob, _, _]) =
        a_stalled_receiver_among_publishers(SlowConsumerPolicy::DropOldest);
    w.advance(FLOW_GRACE);
    // Shed, alice went on: her held publications may congest bob again at once
    // (a new grace), but the backlog stays near the high-water mark.
    assert_eq!(w.node.stats().congestions_expired, 1);
    assert_eq!(w.node.stats().slow_consumers, 0);
    assert!(
        w.pairs[alice].unread.is_empty(),
        "alice's held commands were read"
    );
    assert!(w.pairs[bob].conn.queued_bytes() < HIGH_WATER + 2 * 1100);
    assert!(w.pairs[bob].conn.dropped_by_policy() > 0);
    w.pairs[bob].link = Link::Up;
    w.step();
    assert_eq!(w.pairs[bob].closed(), None, "kept connected");
    let pushes = w.pairs[bob].pushes();
    assert!(pushes.iter().any(|m| matches!(m, Message::Gap(_))));
}

/// The last command id each PushTaken confirmed, in order.
fn taken(pair: &Pair) -> Vec<u64> {
    pair.events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Taken { command_id } => Some(*command_id),
            _ => None,
        })
        .collect()
}

#[test]
fn a_held_publisher_runs_no_further_command_until_released_and_push_taken_says_how_far_it_got() {
    let mut w = World::new(flow_config(SlowConsumerPolicy::Disconnect));
    let alice = w.join("alice", &[]);
    let bob = w.join("bob", &[1]);
    w.pairs[bob].link = Link::Stalled;
    // Six commands in one read: the third (3 × 1,000 bytes and headers) takes bob
    // over the high-water mark.
    for k in 0..6 {
        w.publish(alice, 1, &[k; 1000]);
    }
    w.step();
    assert!(!w.pairs[alice].conn.wants_input(), "held");
    assert!(
        !w.pairs[alice].conn.wants_node(),
        "its waiting commands do not spin"
    );
    let queued = w.pairs[bob].conn.queued_bytes();
    assert!(
        queued > HIGH_WATER && queued < HIGH_WATER + 1100,
        "one command of overshoot: {queued}"
    );
    assert_eq!(
        taken(&w.pairs[alice]),
        [3],
        "commands 1..=3 ran, 4..=6 wait"
    );

    w.pairs[bob].link = Link::Up;
    w.step();
    assert_eq!(taken(&w.pairs[alice]), [3, 6]);
    let got: Vec<u8> = w.pairs[bob].published().iter().map(|(_, p)| p[0]).collect();
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    assert_eq!(w.node.stats().slow_consumers, 0);
}

#[test]
fn push_taken_follows_the_refusal_of_the_command_it_covers() {
    let mut w = World::new(plaintext_config());
    let alice = w.join("alice", &[]);
    let before = w.pairs[alice].events.len();
    w.publish(alice, 9, b"nobody");
    w.step();
    let after: Vec<&ClientEvent> = w.pairs[alice].events[before..].iter().collect();
    let rejected = after
        .iter()
        .position(|e| matches!(e, ClientEvent::Push(Message::PushRejected(_))))
        .expect("group 9 is unknown");
    let confirmed = after
        .iter()
        .position(|e| matches!(e, ClientEvent::Taken { .. }))
        .expect("a PushTaken");
    assert!(rejected < confirmed, "{after:?}");
    assert_eq!(taken(&w.pairs[alice]), [1], "alice's first command");
}

/// Frames a NodeConnection wrote, decoded.
fn written_messages(conn: &mut NodeConnection, now: Instant) -> Vec<Message> {
    let mut out = Vec::new();
    while conn.poll_transmit(now, &mut out) > 0 {}
    let mut decoder =
        pushwire_protocol::FrameDecoder::new(pushwire_protocol::FrameLimits::default());
    let mut rest = &out[..];
    let mut messages = Vec::new();
    loop {
        let taken = decoder.feed(rest);
        rest = &rest[taken..];
        match decoder
            .next_message()
            .expect("the node writes valid frames")
        {
            Some(message) => messages.push(message),
            None if rest.is_empty() => return messages,
            None => {}
        }
    }
}

#[test]
fn a_version_1_client_gets_no_push_taken() {
    use pushwire_protocol::{ClientOptions, Hello, Publish, Text};
    let config = plaintext_config();
    let mut node = fresh_node(&config);
    let now = Instant::now();
    for max_version in [1u16, 2] {
        let mut conn = node
            .connection(
                "127.0.0.1:4000".parse().unwrap(),
                now,
                Waker::noop().clone(),
            )
            .unwrap();
        let mut bytes = bytes::BytesMut::new();
        Message::Hello(Hello {
            min_version: 1,
            max_version,
            service_id: 1,
            options: ClientOptions::default(),
            user_id: Text::from("old"),
            password: Bytes::from_static(b"pw"),
            resume: None,
            max_frame_size: None,
        })
        .encode(&mut bytes);
        conn.handle_input(now, &bytes);
        let Some(ConnectionEvent::Authenticate(request)) = conn.poll_event() else {
            panic!("a Hello to authenticate");
        };
        node.handle_hello(
            now,
            &mut conn,
            request,
            ResumeToken([max_version as u8; 16]),
        );
        let welcome = written_messages(&mut conn, now);
        assert!(
            matches!(&welcome[..], [Message::Welcome(w)] if w.version == max_version),
            "{welcome:?}"
        );
        let mut bytes = bytes::BytesMut::new();
        Message::Publish(Publish {
            command_id: 1,
            groups: vec![GroupId(1)],
            payload: Bytes::from_static(b"hi"),
            compression: None,
        })
        .encode(&mut bytes);
        conn.handle_input(now, &bytes);
        while conn.poll_event().is_some() {}
        assert!(conn.wants_node());
        node.handle_connection(now, &mut conn);
        let after = written_messages(&mut conn, now);
        let taken: Vec<&Message> = after
            .iter()
            .filter(|m| matches!(m, Message::PushTaken(_)))
            .collect();
        if max_version == 1 {
            assert!(taken.is_empty(), "version 1 has no PushTaken: {after:?}");
        } else {
            assert_eq!(
                taken,
                [&Message::PushTaken(pushwire_protocol::PushTaken {
                    command_id: 1
                })]
            );
        }
    }
}

#[test]
fn a_server_publication_is_never_held_and_its_outcome_counts_congested_receivers() {
    let (mut w, [alice, _, _, dave]) =
        a_stalled_receiver_among_publishers(SlowConsumerPolicy::Disconnect);
    assert!(!w.pairs[alice].conn.wants_input());
    let outcome = w
        .node
        .publish(
            pushwire_engine::hub::Actor::Server,
            &[GroupId(1), GroupId(2)],
            Bytes::from_static(b"from the server"),
        )
        .unwrap();
    assert_eq!(outcome.reached, 2);
    assert_eq!(outcome.congested, 1, "bob");
    assert_eq!(outcome.cut, 0);
    w.step();
    assert!(w.pairs[dave]
        .published()
        .iter()
        .any(|(_, p)| &p[..] == b"from the server"));
}

#[test]
fn flow_control_is_on_by_default_and_fitted_marks_suit_small_limits() {
    let config = plaintext_config();
    assert_eq!(config.flow_control, Some(FlowControl::default()));
    assert!(Node::new(config, AllowAll).is_ok());
    let fitted = FlowControl::fitted(64 * 1024, Some(Duration::from_secs(1)));
    assert_eq!(
        fitted,
        FlowControl {
            high_water: 8 * 1024,
            low_water: 2 * 1024,
            grace: Duration::from_millis(500),
        }
    );
    let mut config = plaintext_config();
    config.max_outbound_bytes = 64 * 1024;
    config.hub.replay_bytes = 32 * 1024;
    config.flow_control = Some(fitted);
    assert!(Node::new(config, AllowAll).is_ok());
    assert_eq!(
        FlowControl::fitted(usize::MAX, None),
        FlowControl::default(),
        "never larger than the defaults"
    );
}

#[test]
fn flow_control_marks_are_checked() {
    let mut config = flow_config(SlowConsumerPolicy::Disconnect);
    config.flow_control = Some(FlowControl {
        high_water: 1024,
        low_water: 2048,
        grace: FLOW_GRACE,
    });
    assert!(matches!(
        Node::new(config, AllowAll),
        Err(NodeConfigError::WaterMarks { .. })
    ));
    let mut config = flow_config(SlowConsumerPolicy::Disconnect);
    let mut server = (*config.server).clone();
    server.keepalive.idle_timeout = Some(Duration::from_secs(1));
    config.server = Arc::new(server);
    assert!(matches!(
        Node::new(config, AllowAll),
        Err(NodeConfigError::GraceOverIdleTimeout { .. })
    ));
}

/// A connection of `user` that sent its Hello (resuming `resume`, if given) and was
/// handed to the node with `permit`; returns it and what it was answered.
fn hello_with_permit(
    node: &mut Node<AllowAll>,
    now: Instant,
    user: &str,
    resume: Option<ResumeRequest>,
    permit: pushwire_engine::node::Permit,
    token: u8,
) -> (NodeConnection, Vec<Message>) {
    use pushwire_protocol::{ClientOptions, Hello, Text};
    let mut conn = node
        .connection(
            "127.0.0.1:4000".parse().unwrap(),
            now,
            Waker::noop().clone(),
        )
        .unwrap();
    let mut bytes = bytes::BytesMut::new();
    Message::Hello(Hello {
        min_version: 1,
        max_version: pushwire_protocol::PROTOCOL_VERSION,
        service_id: 1,
        options: ClientOptions::default(),
        user_id: Text::from(user.to_owned()),
        password: Bytes::from_static(b"pw"),
        resume,
        max_frame_size: None,
    })
    .encode(&mut bytes);
    conn.handle_input(now, &bytes);
    let Some(ConnectionEvent::Authenticate(request)) = conn.poll_event() else {
        panic!("a Hello to authenticate");
    };
    node.handle_permitted_hello(now, &mut conn, request, ResumeToken([token; 16]), permit);
    let answer = written_messages(&mut conn, now);
    (conn, answer)
}

fn refused_code(answer: &[Message]) -> Option<RefuseCode> {
    answer.iter().find_map(|m| match m {
        Message::Refused(r) => Some(r.code),
        _ => None,
    })
}

#[test]
fn a_user_connection_limit_refuses_the_connection_over_it_and_counts_a_resume_once() {
    use pushwire_engine::node::Permit;
    let config = plaintext_config();
    let mut node = fresh_node(&config);
    let now = Instant::now();
    let two = Permit {
        max_user_connections: Some(2),
    };
    let (mut first, answer) = hello_with_permit(&mut node, now, "alice", None, two, 1);
    let Some(Message::Welcome(welcome)) = answer.first() else {
        panic!("the first connection is let in: {answer:?}");
    };
    let first_token = welcome.resume_token;
    let (_second, answer) = hello_with_permit(&mut node, now, "ALICE", None, two, 2);
    assert!(
        matches!(answer.first(), Some(Message::Welcome(_))),
        "{answer:?}"
    );

    // The third, in any case of the id, is over the limit; another user is not.
    let (_third, answer) = hello_with_permit(&mut node, now, "Alice", None, two, 3);
    assert_eq!(
        refused_code(&answer),
        Some(RefuseCode::TooManyConnections),
        "{answer:?}"
    );
    assert!(std::iter::from_fn(|| node.poll_event()).any(|e| matches!(
        e,
        NodeEvent::UserAtLimit {
            max_connections: 2,
            ..
        }
    )));
    let (_bob, answer) = hello_with_permit(&mut node, now, "bob", None, two, 4);
    assert!(
        matches!(answer.first(), Some(Message::Welcome(_))),
        "{answer:?}"
    );

    // A resume of the first session supersedes its connection: it replaces it, so
    // alice at her limit may resume.
    let resume = ResumeRequest {
        token: first_token,
        last_seq: 0,
    };
    let (_resumed, answer) = hello_with_permit(&mut node, now, "alice", Some(resume), two, 6);
    assert!(
        matches!(answer.first(), Some(Message::Welcome(w)) if w.resumed),
        "{answer:?}"
    );
    first.handle_transport_closed();
    node.handle_connection_closed(now, &mut first);
    // A permit without a limit is not held to one.
    let (_free, answer) = hello_with_permit(&mut node, now, "alice", None, Permit::UNLIMITED, 5);
    assert!(
        matches!(answer.first(), Some(Message::Welcome(_))),
        "{answer:?}"
    );

    // A detached session holds no connection: with one of two open, one more fits.
    let mut node = fresh_node(&config);
    let (mut a, _) = hello_with_permit(&mut node, now, "carol", None, two, 7);
    let (_b, _) = hello_with_permit(&mut node, now, "carol", None, two, 8);
    a.handle_transport_closed();
    node.handle_connection_closed(now, &mut a);
    assert_eq!(
        node.hub().connection_count(),
        2,
        "one detached, one attached"
    );
    let (_c, answer) = hello_with_permit(&mut node, now, "carol", None, two, 9);
    assert!(
        matches!(answer.first(), Some(Message::Welcome(_))),
        "{answer:?}"
    );
    let (_d, answer) = hello_with_permit(&mut node, now, "carol", None, two, 10);
    assert_eq!(refused_code(&answer), Some(RefuseCode::TooManyConnections));

    // Zero lets nobody of the user in.
    let zero = Permit {
        max_user_connections: Some(0),
    };
    let (_e, answer) = hello_with_permit(&mut node, now, "dave", None, zero, 11);
    assert_eq!(refused_code(&answer), Some(RefuseCode::TooManyConnections));
}

// --- Publish rate limit ------------------------------------------------------------

/// The PushRejected codes `pair` received, by command id.
fn rejections(pair: &Pair) -> Vec<(u64, pushwire_protocol::RejectCode)> {
    pair.pushes()
        .into_iter()
        .filter_map(|m| match m {
            Message::PushRejected(r) => Some((r.command_id, r.code)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_publisher_over_its_rate_limit_is_refused_with_rate_limited_and_others_are_not() {
    use pushwire_engine::client::PushCommand;
    use pushwire_engine::node::RateLimit;
    use pushwire_protocol::RejectCode;
    let mut config = plaintext_config();
    config.publish_rate = Some(RateLimit::new(10, 3).unwrap());
    let mut w = World::new(config);
    let a = w.join("alice", &[]);
    let c = w.join("carol", &[]);
    let b = w.join("bob", &[1]);
    // A burst of 3 passes, the 4th and 5th are refused, all at the same instant; a
    // user message counts too.
    let ids: Vec<u64> = (0..4)
        .map(|i| {
            w.pairs[a]
                .client
                .publish(&[GroupId(1)], format!("a{i}").as_bytes())
                .unwrap()
        })
        .collect();
    let dm = w.pairs[a]
        .client
        .push(PushCommand::SendUserMessage {
            receiver: "bob".into(),
            payload: Bytes::from_static(b"dm"),
        })
        .unwrap();
    // carol, on her own bucket, is not affected.
    for i in 0..3 {
        w.publish(c, 1, format!("c{i}").as_bytes());
    }
    w.step();
    assert_eq!(
        rejections(&w.pairs[a]),
        [
            (ids[3], RejectCode::RateLimited),
            (dm, RejectCode::RateLimited)
        ]
    );
    assert!(rejections(&w.pairs[c]).is_empty());
    assert_eq!(w.node.stats().rate_limited, 2);
    let got: Vec<Bytes> = w.pairs[b].published().into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, ["a0", "a1", "a2", "c0", "c1", "c2"].map(Bytes::from));
    // The connection stays; 100 ms at 10/s refills one token.
    assert_eq!(w.pairs[a].client.state(), ClientState::Ready);
    w.now += Duration::from_millis(100);
    w.publish(a, 1, b"again");
    w.publish(a, 1, b"too soon");
    w.step();
    assert_eq!(rejections(&w.pairs[a]).len(), 3);
    let got: Vec<Bytes> = w.pairs[b].published().into_iter().map(|(_, p)| p).collect();
    assert_eq!(got.last().map(|p| &p[..]), Some(&b"again"[..]));
    assert_eq!(got.len(), 7);
    assert_eq!(w.node.stats().rate_limited, 3);
    // Subscribing is not counted.
    w.pairs[a]
        .client
        .push(PushCommand::Subscribe(vec![GroupId(2)]))
        .unwrap();
    w.step();
    assert_eq!(rejections(&w.pairs[a]).len(), 3);
}

// --- The client's frame limit (protocol version 4) ------------------------------

/// `user` with a frame limit of 4 KiB, speaking at most `version`, subscribed to 1.
fn small_framed(w: &mut World, user: &str, version: u16) -> usize {
    let mut config = w.client(user);
    config.limits = pushwire_protocol::FrameLimits::new(4096).unwrap();
    config.max_version = version;
    let i = w.connect(config);
    w.pairs[i]
        .client
        .push(pushwire_engine::client::PushCommand::Subscribe(vec![
            GroupId(1),
        ]))
        .unwrap();
    w.step();
    i
}

#[test]
fn a_delivery_over_the_receivers_frame_limit_becomes_a_gap_and_the_receiver_stays() {
    let mut w = World::new(plaintext_config());
    let a = w.join("alice", &[]);
    let small = small_framed(&mut w, "small", 4);
    let big = w.join("big", &[1]);
    let before = w.pairs[small].client.last_seq();
    w.publish(a, 1, &[7u8; 5000]);
    w.publish(a, 1, b"fits");
    w.step();
    // The receiver with the default limit gets both.
    let got: Vec<usize> = w.pairs[big]
        .published()
        .iter()
        .map(|(_, p)| p.len())
        .collect();
    assert_eq!(got, [5000, 4]);
    // The small one: a Gap for exactly the publication it could not take, then the
    // next one; still connected, every sequence number covered once.
    let pushes = w.pairs[small].pushes();
    let tail: Vec<&Message> = pushes
        .iter()
        .copied()
        .filter(|m| matches!(m, Message::Gap(_) | Message::Published(_)))
        .collect();
    assert!(
        matches!(tail[..], [Message::Gap(g), Message::Published(p)]
            if g.first == before + 1 && g.last == before + 1 && p.seq == before + 2
                && &p.payload[..] == b"fits"),
        "{tail:?}"
    );
    assert_eq!(w.pairs[small].client.state(), ClientState::Ready);
    assert_eq!(w.pairs[small].closed(), None);
    assert_eq!(w.node.stats().replaced_over_client_limit, 1);
}

#[test]
fn on_version_3_the_limit_is_not_announced_and_the_receiver_closes_on_its_own() {
    // Today's behaviour without the field: the server sends the frame, the client
    // refuses it. A version 3 client does not send it; a version 3 server ignores it.
    for (client_version, server_version) in [(3, 4), (4, 3)] {
        let mut config = plaintext_config();
        let mut server = (*config.server).clone();
        server.max_version = server_version;
        config.server = Arc::new(server);
        let mut w = World::new(config);
        let a = w.join("alice", &[]);
        let small = small_framed(&mut w, "small", client_version);
        assert_eq!(w.pairs[small].welcome().version, 3);
        w.publish(a, 1, &[7u8; 5000]);
        w.step();
        assert!(
            matches!(w.pairs[small].closed(), Some(CloseReason::Protocol(_))),
            "{:?}",
            w.pairs[small].closed()
        );
    }
}

#[test]
fn an_answer_over_the_clients_frame_limit_is_refused_with_answer_too_large() {
    let mut w = World::new(plaintext_config());
    for g in 10..20 {
        w.node.add_group(GroupId(g), "d".repeat(1000)).unwrap();
    }
    let small = small_framed(&mut w, "small", 4);
    let id = w.pairs[small]
        .client
        .push(pushwire_engine::client::PushCommand::ListGroups)
        .unwrap();
    w.step();
    let answer = w.pairs[small].pushes().into_iter().find_map(|m| match m {
        Message::PushRejected(r) if r.command_id == id => Some(r.code),
        Message::GroupList(g) if g.command_id == id => {
            panic!("a GroupList of {} groups", g.groups.len())
        }
        _ => None,
    });
    assert_eq!(answer, Some(pushwire_protocol::RejectCode::AnswerTooLarge));
    assert_eq!(w.pairs[small].closed(), None);
}
