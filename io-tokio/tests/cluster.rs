//! Three `pushwire serve --cluster` processes on a real `redis-server`, clients
//! spread over them through the client library: publications, presence and user
//! messages across nodes; then Redis stopped and restarted without its data in the
//! middle of a stream, and a node killed. Every receiver ends with every message or
//! an explicit Gap, never silence.
//!
//! The test starts `redis-server` itself (from `PUSHWIRE_REDIS_SERVER`, else from
//! `PATH`) on a free loopback port with no persistence, and stops it. `.ci/run`
//! installs Debian's `redis-server` when missing and sets `PUSHWIRE_REDIS_SERVER`,
//! which makes a missing binary a failure; without that variable and without
//! `redis-server` on the `PATH`, the test says so and checks nothing.

use pushwire_protocol::Sender;
use pushwire_tokio::client::{Client, ConnectionContext, Event, EventStream, Trust};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PUSHWIRE: &str = env!("CARGO_BIN_EXE_pushwire");

/// The redis-server binary, or `None` (with a note) when there is none to use.
fn redis_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PUSHWIRE_REDIS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "PUSHWIRE_REDIS_SERVER={} is not a file",
            path.display()
        );
        return Some(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!(
            "NOT RUN: no redis-server (install Debian's redis-server, or set \
             PUSHWIRE_REDIS_SERVER); `bash .ci/run` installs it and runs this test"
        );
    }
    found
}

/// A redis-server on a loopback port, without persistence: a restart loses all.
struct Redis {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start(binary: PathBuf) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis {
            binary,
            port,
            child: None,
        };
        redis.run();
        redis
    }

    fn run(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut pong = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut pong).is_ok()
                    && &pong == b"+PONG\r\n"
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `pushwire serve --cluster` process.
struct Node {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    /// The admin listener's address.
    admin: String,
}

impl Node {
    fn start(redis: &Redis, id: &str) -> Node {
        let mut child = Command::new(PUSHWIRE)
            .args(["serve", "--plaintext", "--listen", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0"])
            .args(["--cluster", &redis.url(), "--node-id", id])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pushwire serve");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(stderr.read_line(&mut line), Ok(n) if n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve said {first:?}: {}", log.lock().unwrap()));
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        let mut second = String::new();
        stdout.read_line(&mut second).unwrap();
        let admin = second
            .trim()
            .strip_prefix("admin on http://")
            .and_then(|a| a.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("serve said {second:?}"))
            .to_owned();
        // Keep reading stdout so the process never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = stdout.read_to_string(&mut sink);
        });
        Node {
            child,
            port,
            log,
            admin,
        }
    }

    /// The node's `/metrics` page.
    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(&self.admin).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        s.read_to_string(&mut page).unwrap();
        page
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn connect(node: &Node, user: &str) -> (Client, EventStream) {
    let mut context = ConnectionContext::new("127.0.0.1", node.port, user, "MyPassword");
    context.trust = Trust::Plaintext;
    Client::connect(context).await.expect("connect")
}

/// Events until `until` accepts one (included), or `within` passes.
async fn collect(
    events: &mut EventStream,
    within: Duration,
    mut until: impl FnMut(&Event) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(within, async {
        while let Some(event) = events.recv().await {
            let done = until(&event);
            seen.push(event);
            if done {
                return;
            }
        }
    })
    .await;
    seen
}

fn peer_name(sender: &Sender) -> Option<String> {
    match sender {
        Sender::Peer(p) if !p.is_self => Some(p.user_id.to_string()),
        _ => None,
    }
}

fn message_text(event: &Event) -> Option<String> {
    match event {
        Event::Published {
            sender, message, ..
        } if !sender.is_self() => Some(String::from_utf8_lossy(message).into_owned()),
        _ => None,
    }
}

/// Waits until `events` shows `who` joining `group`.
async fn sees_join(events: &mut EventStream, who: &str, nodes: &[&Node]) {
    let seen = collect(events, Duration::from_secs(10), |e| {
        matches!(e, Event::Subscribed { sender, .. } if peer_name(sender).as_deref() == Some(who))
    })
    .await;
    assert!(
        seen.iter().any(
            |e| matches!(e, Event::Subscribed { sender, .. } if peer_name(sender).as_deref() == Some(who))
        ),
        "{who} never joined: {seen:?}\nnode logs:\n{}",
        nodes
            .iter()
            .map(|n| n.log.lock().unwrap().clone())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
}

/// The sequence numbers in `events` from the first on: every number covered once,
/// by an event or a Gap, in order.
fn assert_no_silent_hole(who: &str, events: &[Event]) {
    let mut next: Option<u64> = None;
    for event in events {
        let (first, last) = match event {
            Event::Subscribed { seq, .. }
            | Event::Unsubscribed { seq, .. }
            | Event::Published { seq, .. }
            | Event::UserMessage { seq, .. } => (*seq, *seq),
            Event::Gap { first, last } => (*first, *last),
            _ => continue,
        };
        if let Some(next) = next {
            assert_eq!(
                first, next,
                "{who}: sequence jumps to {first} without a gap"
            );
        }
        next = Some(last + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_groups_presence_and_users_and_survive_redis_and_node_failures() {
    let Some(binary) = redis_binary() else {
        return;
    };
    let mut redis = Redis::start(binary);
    let n1 = Node::start(&redis, "n1");
    let n2 = Node::start(&redis, "n2");
    let mut n3 = Node::start(&redis, "n3");
    // Discovery runs every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Presence across nodes.
    let (alice, mut alice_events) = connect(&n1, "alice").await;
    alice.subscribe(&[1]).await.unwrap();
    let (bob, mut bob_events) = connect(&n2, "bob").await;
    bob.subscribe(&[1]).await.unwrap();
    let (carol, mut carol_events) = connect(&n3, "carol").await;
    carol.subscribe(&[1, 2]).await.unwrap();
    // On failure the nodes' logs say who found whom when.
    let nodes = [&n1, &n2, &n3];
    sees_join(&mut alice_events, "bob", &nodes).await;
    sees_join(&mut alice_events, "carol", &nodes).await;
    sees_join(&mut bob_events, "carol", &nodes).await;

    // One publication to two groups: one copy per receiver, with the groups it is in.
    alice.publish(&[1, 2], &b"to both"[..]).await.unwrap();
    let pick = |e: &Event| match e {
        Event::Published {
            sender,
            groups,
            message,
            ..
        } if !sender.is_self() => Some((
            peer_name(sender).unwrap_or_default(),
            groups.iter().map(|g| g.0).collect::<Vec<_>>(),
            String::from_utf8_lossy(message).into_owned(),
        )),
        _ => None,
    };
    let at_bob = collect(&mut bob_events, Duration::from_secs(5), |e| {
        pick(e).is_some()
    })
    .await;
    let at_carol = collect(&mut carol_events, Duration::from_secs(5), |e| {
        pick(e).is_some()
    })
    .await;
    assert_eq!(
        at_bob.iter().filter_map(pick).collect::<Vec<_>>(),
        [("alice".to_owned(), vec![1], "to both".to_owned())]
    );
    assert_eq!(
        at_carol.iter().filter_map(pick).collect::<Vec<_>>(),
        [("alice".to_owned(), vec![1, 2], "to both".to_owned())]
    );
    // Protocol version 5: the sender names the node the publisher is on.
    let nodes = |events: &[Event]| {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Published { sender, .. } if !sender.is_self() => {
                    Some(sender.node().map(|n| n.to_string()))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(nodes(&at_bob), [Some("n1".to_owned())]);
    assert_eq!(nodes(&at_carol), [Some("n1".to_owned())]);

    // A user message reaches every session of the user on every node, counted.
    let (_d1, mut d1_events) = connect(&n2, "dave").await;
    let (_d2, mut d2_events) = connect(&n3, "Dave").await;
    let (_d3, mut d3_events) = connect(&n3, "dave").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reached = alice.send_user_message("DAVE", &b"psst"[..]).await.unwrap();
    assert_eq!(reached, 3, "dave's sessions on n2 and n3");
    for events in [&mut d1_events, &mut d2_events, &mut d3_events] {
        let got = collect(
            events,
            Duration::from_secs(5),
            |e| matches!(e, Event::UserMessage { message, .. } if &message[..] == b"psst"),
        )
        .await;
        assert!(
            got.iter().any(
                |e| matches!(e, Event::UserMessage { message, .. } if &message[..] == b"psst")
            ),
            "{got:?}"
        );
    }

    // A stream from alice; Redis dies after 50 messages and comes back empty after
    // 100; then a marker until every receiver has it.
    let mut bob_seen = Vec::new();
    let mut carol_seen = Vec::new();
    for i in 0..150 {
        if i == 50 {
            redis.stop();
        }
        if i == 100 {
            redis.run();
        }
        alice
            .publish(&[1], format!("m{i}").into_bytes())
            .await
            .unwrap();
        if (50..100).contains(&i) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut bob_done, mut carol_done) = (false, false);
    while !(bob_done && carol_done) && Instant::now() < deadline {
        alice.publish(&[1], &b"end"[..]).await.unwrap();
        for (events, seen, done) in [
            (&mut bob_events, &mut bob_seen, &mut bob_done),
            (&mut carol_events, &mut carol_seen, &mut carol_done),
        ] {
            if *done {
                continue;
            }
            let got = collect(events, Duration::from_millis(500), |e| {
                message_text(e).as_deref() == Some("end")
            })
            .await;
            *done = got
                .iter()
                .any(|e| message_text(e).as_deref() == Some("end"));
            seen.extend(got);
        }
    }
    for (who, seen, done) in [
        ("bob", &bob_seen, bob_done),
        ("carol", &carol_seen, carol_done),
    ] {
        assert!(
            done,
            "{who} never got the marker after Redis came back: {:?}\nn1: {}",
            seen.iter().filter_map(message_text).collect::<Vec<_>>(),
            n1.log.lock().unwrap()
        );
        assert_no_silent_hole(who, seen);
        let got: Vec<usize> = seen
            .iter()
            .filter_map(message_text)
            .filter_map(|m| m.strip_prefix('m')?.parse().ok())
            .collect();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{who}: out of order or duplicated: {got:?}"
        );
        let gaps = seen
            .iter()
            .filter(|e| matches!(e, Event::Gap { .. }))
            .count();
        if got.len() < 150 {
            assert!(
                gaps > 0,
                "{who} lost {} messages without a gap",
                150 - got.len()
            );
        }
        eprintln!("{who}: {} of 150 messages, {gaps} gaps", got.len());
    }

    // The operator sees the cluster in /metrics: both peers alive, the holes the
    // Redis restart made.
    let page = n1.metrics();
    assert!(page.contains("pushwire_cluster_peers_alive 2"), "{page}");
    assert!(page.contains("pushwire_cluster_backplane_up 1"), "{page}");
    let holes: u64 = n2
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("pushwire_cluster_holes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("n2 reports its holes");
    if bob_seen.iter().any(|e| matches!(e, Event::Gap { .. })) {
        assert!(holes > 0, "bob got a gap, so n2 found a hole");
    }

    // n3 dies without a word: after the liveness timeout carol leaves alice's view.
    n3.kill();
    let seen = collect(&mut alice_events, Duration::from_secs(15), |e| {
        matches!(e, Event::Unsubscribed { sender, .. } if peer_name(sender).as_deref() == Some("carol"))
    })
    .await;
    assert!(
        seen.iter().any(|e| matches!(e, Event::Unsubscribed { sender, .. } if peer_name(sender).as_deref() == Some("carol"))),
        "carol never left alice's view: {seen:?}"
    );
    drop((bob, carol));
    drop(n2);
}
