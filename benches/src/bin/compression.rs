//! Compressed payloads (protocol version 3): bytes on the wire and CPU per message,
//! with and without compression, for a 1 KiB English-like text and a 64 KiB JSON
//! document (both generated deterministically), and the figures behind the client's
//! default compression threshold.
//!
//! Three measurements:
//!
//! 1. **Bytes on the wire** per message: the Publish frame the publisher sends and
//!    the Published frame a receiver gets (sender "alice" over IPv4, one group), plain
//!    and compressed, encoded by the protocol crate exactly as the engines send them
//!    (before TLS, which adds the same ~22 bytes per record either way).
//! 2. **CPU per message of each compression step**: the publisher's compression, the
//!    server's one validating decompression, the receiver's decompression (LZ4 block,
//!    `lz4_flex` safe code), each the median of several runs of many iterations.
//! 3. **CPU per message through the engines**, in memory, over plaintext and over TLS
//!    (TLS 1.3, AES-128-GCM, the development certificate): a client engine
//!    publishing, the server node (decode, decompress, hub, the receivers' mailboxes,
//!    encryption) and two receiving client engines (decryption, decode, decompress,
//!    the application's event), all on this thread; without compression, with it and
//!    both receivers accepting it, and with it and one receiver not accepting it (the
//!    server sends that one the plain copy).
//!
//! CPU time is the wall time of this one thread doing all the work without blocking
//! (see `cpu_now`), the median of several runs.
//!
//! ```sh
//! cargo run --release -p pushwire-benches --bin compression
//! ```

use bytes::{Bytes, BytesMut};
use pushwire_benches::{cert_file, dev_server_tls};
use pushwire_engine::client::{
    ClientConfig, ClientConnection, ClientEvent, ClientTransport, CompressionConfig, PushCommand,
};
use pushwire_engine::credentials::load_root_store;
use pushwire_engine::hub::AllowAll;
use pushwire_engine::node::{ConnectionEvent, Node, NodeConfig, NodeConnection};
use pushwire_engine::server::{ServerConfig, ServerTransport};
use pushwire_engine::tls::ClientTls;
use pushwire_engine::KeepAlive;
use pushwire_protocol::{
    compress, compress_into, decompress, CompressionAlgorithm, GroupId, Message, PeerSender,
    Publish, Published, ResumeToken, Sender, Text,
};
use rustls::pki_types::UnixTime;
use std::hint::black_box;
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

/// Median CPU time per call of `f`, over 7 runs of `n` calls.
fn per_call(n: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..n / 10 + 1 {
        f();
    }
    let mut runs: Vec<Duration> = (0..7)
        .map(|_| {
            let start = cpu_now();
            for _ in 0..n {
                f();
            }
            (cpu_now() - start) / n
        })
        .collect();
    runs.sort();
    runs[3]
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

// --- 1 and 2: frames and steps -------------------------------------------------------

fn alice() -> Sender {
    Sender::Peer(PeerSender {
        user_id: Text::from("alice"),
        addr: [127, 0, 0, 1].into(),
        port: 50_000,
        service_id: 1,
        is_self: false,
        node: None,
    })
}

struct Frames {
    publish: usize,
    published: usize,
}

fn frames(payload: &[u8], compressed: bool) -> Frames {
    let (payload, compression) = if compressed {
        let c = compress(CompressionAlgorithm::Lz4Block, payload).unwrap();
        (c.data, Some(c.compression))
    } else {
        (Bytes::copy_from_slice(payload), None)
    };
    let publish = Message::Publish(Publish {
        command_id: 1,
        groups: vec![GroupId(1)],
        payload: payload.clone(),
        compression,
    });
    let published = Message::Published(Published {
        seq: 1,
        sender: alice(),
        groups: vec![GroupId(1)],
        payload,
        compression,
    });
    let mut wire = BytesMut::new();
    publish.encode(&mut wire);
    let publish = wire.len();
    wire.clear();
    published.encode(&mut wire);
    Frames {
        publish,
        published: wire.len(),
    }
}

struct Steps {
    compressed_len: usize,
    compress: Duration,
    decompress: Duration,
}

fn steps(payload: &[u8], iterations: u32) -> Steps {
    let mut out = Vec::new();
    let c = compress(CompressionAlgorithm::Lz4Block, payload).unwrap();
    let compress = per_call(iterations, || {
        black_box(compress_into(
            CompressionAlgorithm::Lz4Block,
            black_box(payload),
            &mut out,
        ));
    });
    let decompress = per_call(iterations, || {
        black_box(decompress(c.compression, black_box(&c.data), 512 * 1024).unwrap());
    });
    Steps {
        compressed_len: c.data.len(),
        compress,
        decompress,
    }
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
    /// `compress`: the publisher compresses; `accepts[i]`: receiver `i` accepts
    /// compressed payloads; `tls`: over TLS rather than plaintext.
    fn new(compress: bool, accepts: [bool; 2], tls: bool) -> Self {
        let quiet = KeepAlive {
            ping_interval: None,
            idle_timeout: None,
        };
        let transport = if tls {
            ServerTransport::Tls(dev_server_tls())
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
        publisher.compression = CompressionConfig {
            enabled: compress,
            ..CompressionConfig::default()
        };
        engines.connect(publisher);
        for (i, accepts) in accepts.into_iter().enumerate() {
            let mut receiver =
                ClientConfig::new(client_transport(), format!("r{i}").as_str(), b"pw");
            receiver.keepalive = quiet;
            receiver.options.compression = accepts;
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

// --- Report ----------------------------------------------------------------------------

fn main() {
    let cases = [
        (
            "1 KiB English-like text",
            text(1024, 1),
            20_000u32,
            5_000u32,
        ),
        ("64 KiB JSON", json(64 * 1024, 2), 2_000, 300),
    ];
    for (name, payload, step_iterations, engine_iterations) in &cases {
        assert_eq!(payload.len() % 1024, 0);
        let plain = frames(payload, false);
        let packed = frames(payload, true);
        let s = steps(payload, *step_iterations);
        println!("## {name} ({} bytes)\n", payload.len());
        println!(
            "compressed: {} bytes of LZ4 + 5 of header = {:.1} % of the payload\n",
            s.compressed_len,
            100.0 * (s.compressed_len + 5) as f64 / payload.len() as f64
        );
        println!("| bytes on the wire per message | plain | compressed |");
        println!("| --- | ---: | ---: |");
        println!(
            "| Publish, publisher → server | {} | {} |",
            plain.publish, packed.publish
        );
        println!(
            "| Published, server → each receiver that accepts compression | {} | {} |",
            plain.published, packed.published
        );
        println!(
            "| Published, server → a receiver that does not | {} | {} |\n",
            plain.published, plain.published
        );
        println!("| CPU per message, each step | time |");
        println!("| --- | ---: |");
        println!("| publisher: compress | {} |", us(s.compress));
        println!(
            "| server: decompress once (validation, hooks, plain copies) | {} |",
            us(s.decompress)
        );
        println!(
            "| each receiver that accepts compression: decompress | {} |",
            us(s.decompress)
        );
        println!();
        println!(
            "| CPU per message through the engines (publisher, server, 2 receivers) | \
             plaintext | TLS |"
        );
        println!("| --- | ---: | ---: |");
        for (what, compress, accepts) in [
            ("without compression", false, [true, true]),
            ("compressed, both receivers accept it", true, [true, true]),
            (
                "compressed, one receiver does not accept it",
                true,
                [true, false],
            ),
        ] {
            let plain =
                Engines::new(compress, accepts, false).per_message(payload, *engine_iterations);
            let tls =
                Engines::new(compress, accepts, true).per_message(payload, *engine_iterations);
            println!("| {what} | {} | {} |", us(plain), us(tls));
        }
        println!();
    }

    println!("## The threshold: small text payloads\n");
    println!("| payload | LZ4 + header | saved | compress + 2 decompressions | saved per µs |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for len in [64, 128, 256, 384, 512, 768, 1024, 2048] {
        let payload = text(len, 3);
        let s = steps(&payload, 50_000);
        let packed = s.compressed_len + 5;
        let cost = s.compress + 2 * s.decompress;
        let saved = len as i64 - packed as i64;
        println!(
            "| {len} | {packed} | {saved} | {} | {:.0} B |",
            us(cost),
            saved as f64 / (cost.as_secs_f64() * 1e6)
        );
    }
}
