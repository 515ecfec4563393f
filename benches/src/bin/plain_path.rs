//! The plain (uncompressed) push path, before and after compressed payloads: the
//! server's fan-out into outbound queues alone, and a publication through the engines
//! (one publisher, the node, two receivers; plaintext and TLS), for plain payloads
//! only. It uses nothing that compressed payloads added, so the same file builds
//! unchanged at the commit before them (`85eed62`) for a side-by-side run;
//! `benches/RESULTS.md` section 10 has the figures. Payload generators and the engine
//! harness are those of `compression.rs`, without the compression settings.
//!
//! ```sh
//! cargo run --release -p pushwire-benches --bin plain_path
//! ```

use bytes::Bytes;
use pushwire_benches::{cert_file, pinned_provider, DEV_KEY_PASSWORD};
use pushwire_engine::client::{
    ClientConfig, ClientConnection, ClientEvent, ClientTransport, PushCommand,
};
use pushwire_engine::credentials::{load_root_store, ServerCredentials};
use pushwire_engine::hub::AllowAll;
use pushwire_engine::node::{ConnectionEvent, Node, NodeConfig, NodeConnection};
use pushwire_engine::server::{ServerConfig, ServerTransport};
use pushwire_engine::tls::ClientTls;
use pushwire_engine::KeepAlive;
use pushwire_protocol::{GroupId, Message, ResumeToken};
use rustls::pki_types::UnixTime;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

// --- Payloads ----------------------------------------------------------------------

/// xorshift64*: deterministic and good enough to pick words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

/// English-like prose: common words in random order, sentences of 6 to 17 words.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "a",
        "in",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
        "which",
        "but",
        "have",
        "an",
        "had",
        "they",
        "you",
        "were",
        "their",
        "one",
        "all",
        "we",
        "can",
        "her",
        "has",
        "there",
        "been",
        "if",
        "more",
        "when",
        "will",
        "would",
        "who",
        "so",
        "no",
        "server",
        "message",
        "group",
        "client",
        "publish",
        "connection",
        "session",
        "network",
        "morning",
        "question",
        "answer",
        "people",
        "market",
        "report",
        "weather",
        "important",
        "different",
        "following",
        "between",
        "another",
    ];
    let mut rng = Rng(seed);
    let mut out = String::with_capacity(len + 32);
    while out.len() < len {
        let words = 6 + rng.next() % 12;
        for i in 0..words {
            let word = rng.pick(WORDS);
            if i == 0 {
                let mut chars = word.chars();
                let first = chars.next().unwrap().to_ascii_uppercase();
                out.push(first);
                out.push_str(chars.as_str());
            } else {
                out.push(' ');
                out.push_str(word);
            }
        }
        out.push_str(if rng.next() % 5 == 0 { "? " } else { ". " });
    }
    out.truncate(len);
    out.into_bytes()
}

/// A JSON array of user records, as an API returns them: ids, names, e-mail
/// addresses, timestamps, booleans, numbers and a nested list of tags.
fn json(len: usize, seed: u64) -> Vec<u8> {
    const FIRST: &[&str] = &[
        "Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy",
        "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor",
    ];
    const LAST: &[&str] = &[
        "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Martinez",
        "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
    ];
    const TAGS: &[&str] = &[
        "admin", "beta", "premium", "trial", "support", "sales", "europe", "asia", "americas",
        "mobile", "desktop",
    ];
    const CITIES: &[&str] = &[
        "Berlin", "Lisbon", "Osaka", "Toronto", "Nairobi", "Lima", "Oslo", "Perth",
    ];
    let mut rng = Rng(seed);
    let mut out = String::with_capacity(len + 512);
    out.push('[');
    let mut id = 10_000;
    loop {
        let first = rng.pick(FIRST);
        let last = rng.pick(LAST);
        let tags: Vec<String> = (0..1 + rng.next() % 3)
            .map(|_| format!("\"{}\"", rng.pick(TAGS)))
            .collect();
        let record = format!(
            "{{\"id\":{id},\"name\":\"{first} {last}\",\"email\":\"{}.{}{}@example.com\",\
             \"active\":{},\"balance\":{}.{:02},\"city\":\"{}\",\
             \"created_at\":\"2024-{:02}-{:02}T{:02}:{:02}:{:02}Z\",\"tags\":[{}]}}",
            first.to_lowercase(),
            last.to_lowercase(),
            rng.next() % 100,
            rng.next() % 3 != 0,
            rng.next() % 100_000,
            rng.next() % 100,
            rng.pick(CITIES),
            1 + rng.next() % 12,
            1 + rng.next() % 28,
            rng.next() % 24,
            rng.next() % 60,
            rng.next() % 60,
            tags.join(","),
        );
        if out.len() + record.len() + 2 > len {
            break;
        }
        if id > 10_000 {
            out.push(',');
        }
        out.push_str(&record);
        id += 1;
    }
    // Pad with whitespace to the exact size, as pretty-printers do.
    while out.len() < len - 1 {
        out.push(' ');
    }
    out.push(']');
    out.into_bytes()
}

// --- Timing ------------------------------------------------------------------------

/// A point in time for the measurements. Wall time, on purpose: the kernel's
/// per-thread CPU counters readable without `unsafe` (`/proc/thread-self/schedstat`)
/// advance in scheduler ticks, too coarse for runs of a few milliseconds. Everything
/// measured runs on this one thread without blocking, so its wall time is its CPU time
/// unless another process preempts it: each figure is the median of several runs.
fn cpu_now() -> Instant {
    Instant::now()
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

// --- 3: through the engines ----------------------------------------------------------

struct Pair {
    client: ClientConnection,
    conn: NodeConnection,
}

/// A node, a publisher and two receivers, in memory over plaintext.
struct Engines {
    now: Instant,
    node: Node<AllowAll>,
    pairs: Vec<Pair>,
    tokens: u8,
    received: usize,
    buf: Vec<u8>,
}

impl Engines {
    /// Over TLS when `tls`, plaintext otherwise.
    fn new(tls: bool) -> Self {
        let quiet = KeepAlive {
            ping_interval: None,
            idle_timeout: None,
        };
        let transport = if tls {
            ServerTransport::Tls(server_tls())
        } else {
            ServerTransport::Plaintext
        };
        let mut server = ServerConfig::new(transport);
        server.keepalive = quiet;
        let mut config = NodeConfig::new(server);
        config.flow_control = None;
        config.hub.replay_events = 0;
        let mut node = Node::new(config, AllowAll).unwrap();
        node.add_group(GroupId(1), "bench").unwrap();
        let mut engines = Self {
            now: Instant::now(),
            node,
            pairs: Vec::new(),
            tokens: 0,
            received: 0,
            buf: Vec::with_capacity(1 << 20),
        };
        let client_transport = || {
            if tls {
                let roots = load_root_store(&[cert_file("ca.cert.pem")]).unwrap();
                ClientTransport::Tls(ClientTls::new(roots, "localhost").unwrap())
            } else {
                ClientTransport::Plaintext
            }
        };
        let mut publisher = ClientConfig::new(client_transport(), "alice", b"pw");
        publisher.keepalive = quiet;
        publisher.options.echo = false;
        engines.connect(publisher);
        for i in 0..2 {
            let mut receiver =
                ClientConfig::new(client_transport(), format!("r{i}").as_str(), b"pw");
            receiver.keepalive = quiet;
            let at = engines.connect(receiver);
            engines.pairs[at]
                .client
                .push(PushCommand::Subscribe(vec![GroupId(1)]))
                .unwrap();
        }
        engines.step();
        engines.received = 0;
        engines
    }

    fn connect(&mut self, config: ClientConfig) -> usize {
        let peer = format!("127.0.0.1:{}", 40_000 + self.pairs.len())
            .parse()
            .unwrap();
        let conn = self
            .node
            .connection(peer, self.now, std::task::Waker::noop().clone())
            .unwrap();
        let client = ClientConnection::new(config, self.now, UnixTime::now()).unwrap();
        self.pairs.push(Pair { client, conn });
        self.step();
        self.pairs.len() - 1
    }

    fn step(&mut self) {
        loop {
            let mut progress = false;
            for i in 0..self.pairs.len() {
                progress |= self.step_pair(i);
            }
            if !progress {
                return;
            }
        }
    }

    fn step_pair(&mut self, i: usize) -> bool {
        let now = self.now;
        let Self {
            node,
            pairs,
            tokens,
            received,
            buf,
            ..
        } = self;
        let p = &mut pairs[i];
        let mut progress = false;
        buf.clear();
        if p.client.poll_transmit(now, buf) > 0 {
            progress = true;
            p.conn.handle_input(now, buf);
        }
        while let Some(event) = p.conn.poll_event() {
            progress = true;
            if let ConnectionEvent::Authenticate(request) = event {
                *tokens += 1;
                node.handle_hello(now, &mut p.conn, request, ResumeToken([*tokens; 16]));
            }
        }
        if p.conn.wants_node() {
            node.handle_connection(now, &mut p.conn);
            progress = true;
        }
        buf.clear();
        if p.conn.poll_transmit(now, buf) > 0 {
            progress = true;
            p.client.handle_input(now, buf);
        }
        while let Some(event) = p.client.poll_event() {
            progress = true;
            if let ClientEvent::Push(Message::Published(m)) = event {
                black_box(&m.payload);
                *received += 1;
                p.client.recycle_groups(m.groups);
            }
        }
        progress
    }

    /// CPU per message published (and received by both receivers).
    fn per_message(&mut self, payload: &[u8], n: u32) -> Duration {
        let run = |engines: &mut Self| {
            for _ in 0..n {
                engines.pairs[0]
                    .client
                    .publish(&[GroupId(1)], payload)
                    .unwrap();
                engines.step();
            }
        };
        run(self);
        let mut runs: Vec<Duration> = (0..7)
            .map(|_| {
                let start = cpu_now();
                run(self);
                (cpu_now() - start) / n
            })
            .collect();
        assert_eq!(self.received, 2 * 8 * n as usize, "every message arrived");
        runs.sort();
        runs[3]
    }
}

/// The development certificate, TLS 1.3 with AES-128-GCM only (as the TLS
/// benchmarks pin it).
fn server_tls() -> Arc<rustls::ServerConfig> {
    let credentials = ServerCredentials::from_pem_files(
        &cert_file("server.cert.pem"),
        &cert_file("server.key.pem"),
        Some(DEV_KEY_PASSWORD),
    )
    .expect("development credentials");
    let config = rustls::ServerConfig::builder_with_provider(pinned_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(credentials.chain.clone(), credentials.key.clone_key())
        .expect("server certificate");
    Arc::new(config)
}

// --- Report ----------------------------------------------------------------------------

/// The server's hot path alone: a publication to `n` subscribers, every delivery
/// encoded into its receiver's outbound queue (what the node does under its lock).
fn hub_queue(n: u64, payload: &[u8], iterations: u32) -> Duration {
    use pushwire_engine::hub::{
        Actor, ConnectionInfo, Hub, HubConfig, OutboundQueue, SlowConsumerPolicy,
    };
    let mut hub = Hub::new(
        HubConfig {
            replay_events: 0,
            ..HubConfig::default()
        },
        AllowAll,
    );
    hub.add_group(GroupId(1), "g").unwrap();
    let mut queues = Vec::new();
    for i in 0..n {
        let id = hub.connect(ConnectionInfo::new(
            format!("u{i}"),
            [10, 0, 0, 1].into(),
            1000,
            1,
        ));
        hub.subscribe(id, &[GroupId(1)]).unwrap();
        queues.push(OutboundQueue::new(
            usize::MAX / 2,
            SlowConsumerPolicy::Disconnect,
        ));
    }
    while hub.poll_delivery().is_some() {}
    let payload = Bytes::copy_from_slice(payload);
    let mut once = || {
        hub.publish(Actor::Server, &[GroupId(1)], payload.clone())
            .unwrap();
        while let Some(d) = hub.poll_delivery() {
            let q = &mut queues[(d.connection().0 - 1) as usize];
            black_box(q.push_delivery(&d));
        }
        for q in queues.iter_mut() {
            q.clear();
        }
    };
    for _ in 0..iterations / 10 {
        once();
    }
    let mut runs: Vec<Duration> = (0..9)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                once();
            }
            start.elapsed() / iterations
        })
        .collect();
    runs.sort();
    runs[4]
}

fn main() {
    for (name, payload) in [("16 B", vec![b'x'; 16]), ("1 KiB text", text(1024, 1))] {
        println!(
            "hub_queue 100 subscribers {name}: {}",
            us(hub_queue(100, &payload, 20_000))
        );
    }
    for (name, payload, n) in [
        ("1 KiB text", text(1024, 1), 10_000u32),
        ("64 KiB JSON", json(64 * 1024, 2), 1_000),
    ] {
        for tls in [false, true] {
            let t = Engines::new(tls).per_message(&payload, n);
            println!("{name} tls={tls}: {}", us(t));
        }
    }
}
