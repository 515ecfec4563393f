//! The turmoil-level simulator: the real `pushwire-tokio` server and clients, TLS on
//! with the development certificates, over turmoil's simulated TCP, with partitions,
//! holds, client crashes and server bounces. Everything runs on one thread under
//! simulated time; the seed fixes turmoil's randomness and the scenario.

use crate::engine_level::{Coverage, Op, RunOutput, Scenario};
use crate::history::{
    Ended, JournalEntry, MessageId, Origin, Outcome, Received, RequestRecord, RunRecord,
    SessionHistory, SessionKey,
};
use crate::recorder::{Journal, RecordingHooks};
use bytes::Bytes;
use pushwire_engine::credentials::load_root_store;
use pushwire_engine::tls::ClientTls;
use pushwire_engine::{CloseReason, KeepAlive};
use pushwire_protocol::GroupId;
use pushwire_tokio::client::{ClientBuilder, ConnectionContext, Event, Reconnect, Trust};
use pushwire_tokio::hello::{self, hello_world_service, HELLO_WORLD_SERVICE};
use pushwire_tokio::server::{AuthDecision, ServerBuilder};
use pushwire_tokio::transport::{Connector, Listener};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const PORT: u16 = 20901;
const KEEPALIVE: KeepAlive = KeepAlive {
    ping_interval: Some(Duration::from_millis(300)),
    idle_timeout: Some(Duration::from_millis(1000)),
};
const SETTLE_MS: u64 = 4000;

/// turmoil's listener as a pushwire [`Listener`].
pub struct TurmoilListener(pub turmoil::net::TcpListener);

impl Listener for TurmoilListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        self.0.accept().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Connects over turmoil's TCP.
#[derive(Debug, Clone, Copy)]
pub struct TurmoilConnector;

impl Connector for TurmoilConnector {
    type Stream = turmoil::net::TcpStream;

    async fn connect(&self, host: &str, port: u16) -> io::Result<(Self::Stream, SocketAddr)> {
        let stream = turmoil::net::TcpStream::connect((host, port)).await?;
        let peer = stream.peer_addr()?;
        Ok((stream, peer))
    }
}

fn cert(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../certs")
        .join(name)
}

fn now_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

async fn sleep_until_ms(t: u64) {
    let now = now_ms();
    if t > now {
        tokio::time::sleep(Duration::from_millis(t - now)).await;
    }
}

/// What survives a client host's crash: its place in the script and its counters.
#[derive(Default)]
struct ClientState {
    sessions: u32,
    next_op: usize,
    publications: u32,
    messages: u32,
    current: Option<usize>,
}

struct World {
    histories: Mutex<Vec<SessionHistory>>,
    /// Slow (sleep) requests outstanding, per history.
    sleeping: Mutex<BTreeMap<usize, u32>>,
    clients: Mutex<Vec<ClientState>>,
    server_next_op: Mutex<usize>,
    server_publications: Mutex<u32>,
    journal: Journal,
    coverage: Mutex<Coverage>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ids(groups: &[GroupId]) -> Vec<u32> {
    groups.iter().map(|g| g.0).collect()
}

fn to_received(event: &Event) -> Option<Received> {
    Some(match event {
        Event::Subscribed {
            seq,
            sender,
            groups,
        } => Received::Subscribed {
            seq: *seq,
            from: Origin::of(sender),
            is_self: sender.is_self(),
            groups: ids(groups),
        },
        Event::Unsubscribed {
            seq,
            sender,
            groups,
        } => Received::Unsubscribed {
            seq: *seq,
            from: Origin::of(sender),
            is_self: sender.is_self(),
            groups: ids(groups),
        },
        Event::Published {
            seq,
            sender,
            groups,
            message,
        } => Received::Published {
            seq: *seq,
            from: Origin::of(sender),
            is_self: sender.is_self(),
            groups: ids(groups),
            payload: message.clone(),
        },
        Event::UserMessage {
            seq,
            sender,
            message,
        } => Received::UserMessage {
            seq: *seq,
            from: Origin::of(sender),
            is_self: sender.is_self(),
            payload: message.clone(),
        },
        Event::Gap { first, last } => Received::Gap {
            first: *first,
            last: *last,
        },
        Event::SessionLost { .. } => Received::SessionLost,
        _ => return None,
    })
}

async fn server_host(world: Arc<World>, scenario: Arc<Scenario>) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let mut builder = ServerBuilder::new()
        .tls_from_pem(
            &cert("server.cert.pem"),
            &cert("server.key.pem"),
            Some("mypassword"),
        )?
        .service(HELLO_WORLD_SERVICE, hello_world_service())
        .authenticator(|_: &pushwire_tokio::server::AuthAttempt<'_>| AuthDecision::Permit)
        .hooks(RecordingHooks::new(world.journal.clone()))
        .keepalive(KEEPALIVE)
        .hello_timeout(Duration::from_millis(2000));
    for g in 1..=scenario.groups {
        builder = builder.group(g, format!("group {g}"));
    }
    let server = builder.serve(TurmoilListener(listener))?;
    let handle = server.handle();
    loop {
        let next = {
            let mut next_op = lock(&world.server_next_op);
            loop {
                match scenario.ops.get(*next_op) {
                    None => break None,
                    Some((t, Op::ServerPublish { groups, size })) => {
                        *next_op += 1;
                        break Some((*t, groups.clone(), *size));
                    }
                    Some(_) => *next_op += 1,
                }
            }
        };
        let Some((t, groups, size)) = next else { break };
        sleep_until_ms(t).await;
        let n = {
            let mut count = lock(&world.server_publications);
            *count += 1;
            *count
        };
        let payload = MessageId {
            origin: Origin::Server,
            publication: true,
            n,
        }
        .payload(size);
        let _ = handle.publish(&groups, payload);
        lock(&world.coverage).publications += 1;
    }
    std::future::pending::<()>().await;
    Ok(())
}

fn record_outcome(world: &World, history: usize, request: usize, outcome: Outcome) {
    lock(&world.histories)[history].requests[request]
        .outcomes
        .push(Ended {
            ms: now_ms(),
            outcome,
        });
}

async fn client_host(
    world: Arc<World>,
    scenario: Arc<Scenario>,
    index: usize,
    echo: bool,
    tls: ClientTls,
) -> turmoil::Result {
    loop {
        let key = {
            let mut clients = lock(&world.clients);
            let state = &mut clients[index];
            state.sessions += 1;
            if state.sessions > 1 {
                lock(&world.coverage).reconnects += 1;
            }
            SessionKey {
                client: index as u32,
                session: state.sessions - 1,
            }
        };
        let mut context = ConnectionContext::new("server", PORT, key.user_id(), "pw");
        context.trust = Trust::Tls(tls.clone());
        context.server_name = Some("localhost".to_owned());
        context.service_id = HELLO_WORLD_SERVICE;
        context.echo = echo;
        context.keepalive = KEEPALIVE;
        context.connect_timeout = Duration::from_millis(2000);
        // The client library reconnects and resumes by itself; when the server has
        // lost the session, the harness ends that history and starts a new session
        // under a fresh user id.
        context.reconnect = Some(Reconnect {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
            jitter_seed: index as u64,
        });
        // Compressed payloads on some clients (the sim's payloads compress well);
        // whether a client accepts them changes from one session to the next.
        let (client, mut events) = match ClientBuilder::new(context)
            .compression(index % 2 == 0)
            .compression_threshold(64)
            .accept_compressed((index + key.session as usize) % 3 != 0)
            .connect_with(&TurmoilConnector)
            .await
        {
            Ok(connected) => connected,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let history = {
            let mut histories = lock(&world.histories);
            histories.push(SessionHistory::new(key, echo));
            histories.len() - 1
        };
        lock(&world.clients)[index].current = Some(history);
        let recorder_world = world.clone();
        let lost = Arc::new(tokio::sync::Notify::new());
        let lost_signal = lost.clone();
        let recorder = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match &event {
                    Event::Reconnected { resumed: false } => {
                        // The server lost the session: this history ends here.
                        lock(&recorder_world.coverage).sessions_lost += 1;
                        lost_signal.notify_one();
                        return;
                    }
                    Event::Reconnected { resumed: true } => {
                        lock(&recorder_world.coverage).resumes += 1;
                    }
                    Event::Gap { .. } => lock(&recorder_world.coverage).gaps += 1,
                    Event::Disconnected(CloseReason::Timeout(_)) => {
                        lock(&recorder_world.coverage).partition_timeouts += 1;
                    }
                    _ => {}
                }
                if let Event::Closed(reason) = &event {
                    if matches!(reason, CloseReason::Timeout(_)) {
                        lock(&recorder_world.coverage).partition_timeouts += 1;
                    }
                    let mut histories = lock(&recorder_world.histories);
                    if let CloseReason::Protocol(e) = reason {
                        histories[history].protocol_error = Some(e.to_string());
                    }
                    return;
                }
                if let Some(received) = to_received(&event) {
                    let sleeping = lock(&recorder_world.sleeping)
                        .get(&history)
                        .copied()
                        .unwrap_or(0);
                    let mut coverage = lock(&recorder_world.coverage);
                    coverage.deliveries += 1;
                    if sleeping > 0 {
                        coverage.pushes_during_slow_requests += 1;
                    }
                    drop(coverage);
                    lock(&recorder_world.histories)[history]
                        .received
                        .push(received);
                }
            }
        });
        // Play this client's part of the script from where it stopped.
        loop {
            let next = {
                let mut clients = lock(&world.clients);
                let state = &mut clients[index];
                loop {
                    match scenario.ops.get(state.next_op) {
                        None => break None,
                        Some((t, op)) if op_client(op) == Some(index) => {
                            state.next_op += 1;
                            break Some((*t, op.clone()));
                        }
                        Some(_) => state.next_op += 1,
                    }
                }
            };
            let Some((t, op)) = next else { break };
            tokio::select! {
                biased;
                _ = client.closed() => break,
                () = lost.notified() => {
                    lost.notify_one();
                    break;
                }
                () = sleep_until_ms(t) => {}
            }
            perform(&world, &client, index, key, history, op);
        }
        tokio::select! {
            _ = client.closed() => {}
            () = lost.notified() => client.close(),
        }
        let _ = recorder.await;
        lock(&world.clients)[index].current = None;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn op_client(op: &Op) -> Option<usize> {
    match op {
        Op::Subscribe { client, .. }
        | Op::Unsubscribe { client, .. }
        | Op::Publish { client, .. }
        | Op::UserMessage { client, .. }
        | Op::Echo { client, .. }
        | Op::Sleep { client, .. }
        | Op::Batch { client, .. }
        | Op::Flood { client, .. } => Some(*client),
        _ => None,
    }
}

fn next_message(
    world: &World,
    index: usize,
    key: SessionKey,
    publication: bool,
    size: usize,
) -> Bytes {
    let mut clients = lock(&world.clients);
    let state = &mut clients[index];
    let n = if publication {
        state.publications += 1;
        state.publications
    } else {
        state.messages += 1;
        state.messages
    };
    MessageId {
        origin: Origin::Session(key),
        publication,
        n,
    }
    .payload(size)
}

fn request(
    world: &Arc<World>,
    client: &pushwire_tokio::client::Client,
    history: usize,
    method: u32,
    payload: Bytes,
    expected: Bytes,
) {
    let reply = client.request(method, payload);
    let slow = method == hello::SLEEP;
    if slow {
        *lock(&world.sleeping).entry(history).or_default() += 1;
    }
    let position = {
        let mut histories = lock(&world.histories);
        let requests = &mut histories[history].requests;
        requests.push(RequestRecord::new(requests.len() as u64 + 1, expected));
        requests.len() - 1
    };
    let world = world.clone();
    tokio::spawn(async move {
        let outcome = match reply.await {
            Ok(result) => Outcome::Result(result),
            Err(pushwire_tokio::client::RequestError::Server { code, .. }) => {
                Outcome::ServerError(code)
            }
            // These scenarios cancel nothing: an end Cancelled is a violation.
            Err(pushwire_tokio::client::RequestError::Cancelled) => Outcome::Cancelled,
            Err(_) => Outcome::Aborted,
        };
        record_outcome(&world, history, position, outcome);
        if slow {
            *lock(&world.sleeping).entry(history).or_default() -= 1;
        }
    });
}

fn perform(
    world: &Arc<World>,
    client: &pushwire_tokio::client::Client,
    index: usize,
    key: SessionKey,
    history: usize,
    op: Op,
) {
    match op {
        Op::Subscribe { groups, .. } => drop(client.subscribe(&groups)),
        Op::Unsubscribe {
            groups: Some(groups),
            ..
        } => drop(client.unsubscribe(&groups)),
        Op::Unsubscribe { groups: None, .. } => drop(client.unsubscribe_all()),
        Op::Publish { groups, size, .. } => {
            let payload = next_message(world, index, key, true, size);
            lock(&world.coverage).publications += 1;
            drop(client.publish(&groups, payload));
        }
        Op::UserMessage {
            to, upper, size, ..
        } => {
            let session = lock(&world.clients)[to].sessions.saturating_sub(1);
            let receiver = SessionKey {
                client: to as u32,
                session,
            }
            .user_id();
            let receiver = if upper {
                receiver.to_uppercase()
            } else {
                receiver
            };
            let payload = next_message(world, index, key, false, size);
            drop(client.send_user_message(&receiver, payload));
        }
        Op::Echo { size, .. } => {
            let payload = Bytes::from(vec![b'e'; size]);
            request(
                world,
                client,
                history,
                hello::ECHO,
                payload.clone(),
                payload,
            );
        }
        Op::Flood {
            groups,
            count,
            size,
            ..
        } => {
            for _ in 0..count {
                let payload = next_message(world, index, key, true, size);
                lock(&world.coverage).publications += 1;
                drop(client.publish(&groups, payload));
            }
        }
        Op::Sleep { ms, .. } => request(
            world,
            client,
            history,
            hello::SLEEP,
            hello::sleep_args(ms),
            Bytes::new(),
        ),
        Op::Batch {
            requests,
            publish,
            server_batching,
            abort,
            ..
        } => {
            drop(client.start_batching());
            for _ in 0..requests {
                let payload = Bytes::from_static(b"batched");
                request(
                    world,
                    client,
                    history,
                    hello::ECHO,
                    payload.clone(),
                    payload,
                );
            }
            if !publish.is_empty() {
                let payload = next_message(world, index, key, true, 16);
                drop(client.publish(&publish, payload));
            }
            if abort {
                drop(client.abort_batching());
                lock(&world.coverage).aborted_batches += 1;
            } else {
                drop(client.commit_batching(server_batching));
                if server_batching {
                    lock(&world.coverage).server_batches += 1;
                }
            }
        }
        _ => {}
    }
}

/// Runs `scenario` on turmoil with `seed`.
pub fn run(seed: u64, scenario: &Scenario) -> RunOutput {
    let scenario = Arc::new(scenario.clone());
    let world = Arc::new(World {
        histories: Mutex::new(Vec::new()),
        sleeping: Mutex::new(BTreeMap::new()),
        clients: Mutex::new(
            (0..scenario.clients)
                .map(|_| ClientState::default())
                .collect(),
        ),
        server_next_op: Mutex::new(0),
        server_publications: Mutex::new(0),
        journal: Journal::default(),
        coverage: Mutex::new(Coverage::default()),
    });
    let end = scenario.ops.last().map_or(0, |(t, _)| *t) + SETTLE_MS;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        .simulation_duration(Duration::from_millis(end + 60_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .tcp_capacity(1024)
        .build();
    {
        let (world, scenario) = (world.clone(), scenario.clone());
        sim.host("server", move || {
            server_host(world.clone(), scenario.clone())
        });
    }
    let roots = load_root_store(&[cert("ca.cert.pem")]).expect("development CA");
    let tls = ClientTls::new(roots, "localhost").expect("client TLS");
    let mut rng = crate::rng::SimRng::new(seed);
    for index in 0..scenario.clients {
        let (world, scenario, tls) = (world.clone(), scenario.clone(), tls.clone());
        let echo = rng.chance(3, 4);
        sim.host(format!("client{index}"), move || {
            client_host(world.clone(), scenario.clone(), index, echo, tls.clone())
        });
    }

    // Faults, from the script: (time, action).
    let mut faults: BTreeMap<(u64, u64), Fault> = BTreeMap::new();
    for (order, (t, op)) in scenario.ops.iter().enumerate() {
        let order = order as u64 * 4;
        match op {
            Op::Partition { client, ms } => {
                faults.insert((*t, order), Fault::Partition(*client));
                faults.insert((t + ms, order + 1), Fault::Repair(*client));
            }
            Op::Cut { client } => {
                faults.insert((*t, order), Fault::Hold(*client));
                faults.insert((t + 300, order + 1), Fault::Release(*client));
            }
            Op::Crash { client, down_ms } => {
                faults.insert((*t, order), Fault::Crash(*client));
                faults.insert((t + down_ms.max(&1), order + 1), Fault::Restart(*client));
            }
            Op::ServerBounce => {
                faults.insert((*t, order), Fault::BounceServer);
            }
            _ => {}
        }
    }
    let mut digest = 0xcbf2_9ce4_8422_2325u64;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        while let Some((&(t, order), _)) = faults.first_key_value() {
            if t > now {
                break;
            }
            let fault = faults.remove(&(t, order)).expect("present");
            apply(&mut sim, &world, fault);
        }
        if now >= end {
            break;
        }
        sim.step().expect("simulation step");
    }
    let histories = {
        let mut histories = lock(&world.histories).clone();
        let clients = lock(&world.clients);
        for state in clients.iter() {
            if let Some(h) = state.current {
                histories[h].intact =
                    !histories[h].crashed && histories[h].protocol_error.is_none();
            }
        }
        histories
    };
    for h in &histories {
        digest = (digest ^ h.received.len() as u64).wrapping_mul(0x100_0000_01b3);
        for r in &h.received {
            digest = (digest ^ r.seq().unwrap_or(0)).wrapping_mul(0x100_0000_01b3);
        }
    }
    let journal = world.journal.snapshot();
    digest = (digest ^ journal.len() as u64).wrapping_mul(0x100_0000_01b3);
    let coverage = lock(&world.coverage).clone();
    RunOutput {
        record: RunRecord {
            seed,
            sessions: histories,
            journal,
            queue_breaches: Vec::new(),
            flow: None,
            rpc_breaches: Vec::new(),
        },
        coverage,
        digest,
    }
}

fn mark_crashed(world: &World, client: usize) {
    if let Some(h) = lock(&world.clients)[client].current.take() {
        lock(&world.histories)[h].crashed = true;
    }
}

enum Fault {
    Partition(usize),
    Repair(usize),
    Hold(usize),
    Release(usize),
    Crash(usize),
    Restart(usize),
    BounceServer,
}

fn apply(sim: &mut turmoil::Sim<'_>, world: &World, fault: Fault) {
    let host = |c: usize| format!("client{c}");
    match fault {
        Fault::Partition(c) => sim.partition(host(c), "server"),
        Fault::Repair(c) => {
            sim.repair(host(c), "server");
            lock(&world.coverage).partitions_healed += 1;
        }
        Fault::Hold(c) => sim.hold(host(c), "server"),
        Fault::Release(c) => sim.release(host(c), "server"),
        Fault::Crash(c) => {
            mark_crashed(world, c);
            sim.crash(host(c));
        }
        Fault::Restart(c) => {
            // Restarting a host that already came back (overlapping crashes) kills
            // its current session too.
            mark_crashed(world, c);
            sim.bounce(host(c));
        }
        Fault::BounceServer => {
            // The server's memory is gone: its sessions end without notifications.
            let journal = world.journal.snapshot();
            let mut online = std::collections::BTreeSet::new();
            for entry in &journal {
                match entry {
                    JournalEntry::Connected { session, .. } => {
                        online.insert(*session);
                    }
                    JournalEntry::Disconnected { session } => {
                        online.remove(session);
                    }
                    _ => {}
                }
            }
            if !online.is_empty() {
                lock(&world.coverage).bounces_with_subscribers += 1;
            }
            for session in online {
                world.journal.push(JournalEntry::Disconnected { session });
            }
            sim.bounce("server");
        }
    }
}
