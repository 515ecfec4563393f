//! The admin listener over real sockets: a scripted run (N publications to M
//! subscribers, K calls, a garbage TLS handshake, a refused login) and the numbers a
//! scrape of `/metrics` must then show; `/healthz`, `/connz` and the HTTP errors.
//!
//! The exposition is checked two ways: its samples are read here and compared with
//! the run's numbers, and, when `PUSHWIRE_PYTHON` names a Python with the Prometheus
//! project's `prometheus_client` (`.ci/run` installs one), its strict OpenMetrics
//! parser must accept the whole text.

mod common;

use common::cert;

use pushwire_tokio::client::{ClientBuilder, ConnectionContext, Event, EventStream, Trust};
use pushwire_tokio::hello::{hello_world_service, ECHO, HELLO_WORLD_SERVICE};
use pushwire_tokio::server::{AdminServer, AuthAttempt, AuthDecision, Server};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start() -> Server {
    common::dev_tls_server()
        .group(1, "one")
        .group(2, "two")
        .service(HELLO_WORLD_SERVICE, hello_world_service())
        .authenticator(|attempt: &AuthAttempt<'_>| {
            if attempt.password == b"pw" {
                AuthDecision::Permit
            } else {
                AuthDecision::bad_credentials()
            }
        })
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn context(server: &Server, user: &str, password: &str) -> ConnectionContext {
    let addr = server.local_addr().unwrap();
    let mut context = ConnectionContext::new("localhost", addr.port(), user, password);
    context.trust = Trust::CaFiles(vec![cert("ca.cert.pem")]);
    context
}

/// One HTTP/1.1 request; the status line's code, the headers' text and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let code = head[9..12].parse().unwrap();
    (code, head.to_owned(), body.to_owned())
}

/// The samples of an exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("name and value");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no sample {name} in {samples:#?}"))
}

async fn publications(events: &mut EventStream, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = 0;
        while seen < n {
            if let Event::Published { .. } = events.recv().await.expect("events end") {
                seen += 1;
            }
        }
    })
    .await
    .expect("every publication within 10 s");
}

/// Runs the Prometheus project's OpenMetrics parser over `text`, if `PUSHWIRE_PYTHON`
/// names a Python that has it.
fn strict_parse(text: &str) {
    let Ok(python) = std::env::var("PUSHWIRE_PYTHON") else {
        eprintln!(
            "PUSHWIRE_PYTHON is not set: the exposition was checked here, not by the \
             prometheus_client parser (.ci/run sets it)"
        );
        return;
    };
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        families = list(text_string_to_metric_families(sys.stdin.read()))\n\
        print(len(families))\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("PUSHWIRE_PYTHON runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: usize = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(families > 30, "only {families} metric families parsed");
}

#[tokio::test]
async fn a_scrape_counts_what_a_scripted_run_did() {
    const N: usize = 25;
    const M: usize = 3;
    const CALLS: usize = 4;
    let server = start().await;
    let admin = AdminServer::bind(server.handle(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let mut receivers = Vec::new();
    for i in 0..M {
        let (client, events) = ClientBuilder::new(context(&server, &format!("r{i}"), "pw"))
            .connect()
            .await
            .unwrap();
        client.subscribe(&[1, 2]).await.unwrap();
        receivers.push((client, events));
    }
    let mut alice = context(&server, "alice", "pw");
    alice.echo = false;
    let (publisher, _publisher_events) = ClientBuilder::new(alice).connect().await.unwrap();
    for n in 0..N {
        publisher
            .publish(&[1], format!("message {n:04}"))
            .await
            .unwrap();
    }
    for (_, events) in &mut receivers {
        publications(events, N).await;
    }
    for _ in 0..CALLS {
        publisher.request(ECHO, &b"echo"[..]).await.unwrap();
    }
    // A refused publication (received, counted in, delivered to nobody).
    let _ = publisher.publish(&[9], "x").await;
    // A refused login and a peer that is no TLS client.
    assert!(ClientBuilder::new(context(&server, "mallory", "wrong"))
        .connect()
        .await
        .is_err());
    let mut garbage = TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut sink)).await;

    let (code, head, text) = http(admin.local_addr(), "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let s = samples(&text);
    let payload_bytes = (N * "message 0000".len()) as f64;
    assert_eq!(
        sample(&s, "pushwire_in_msgs_total{kind=\"publication\"}"),
        (N + 1) as f64
    );
    assert_eq!(
        sample(&s, "pushwire_in_payload_bytes_total"),
        payload_bytes + 1.0
    );
    assert_eq!(
        sample(&s, "pushwire_push_rejected_total{code=\"UnknownGroups\"}"),
        1.0
    );
    assert_eq!(
        sample(&s, "pushwire_push_rejected_total{code=\"NotAuthorized\"}"),
        0.0
    );
    assert_eq!(
        sample(&s, "pushwire_out_msgs_total{kind=\"publication\"}"),
        (N * M) as f64,
        "N publications to M subscribers, no echo"
    );
    assert!(sample(&s, "pushwire_out_bytes_total") > payload_bytes * M as f64);
    assert_eq!(sample(&s, "pushwire_connections"), (M + 1) as f64);
    assert_eq!(sample(&s, "pushwire_subscriptions"), (M * 2) as f64);
    assert_eq!(sample(&s, "pushwire_groups"), 2.0);
    assert_eq!(sample(&s, "pushwire_auth_permitted_total"), (M + 1) as f64);
    assert_eq!(sample(&s, "pushwire_auth_refused_total"), 1.0);
    assert_eq!(sample(&s, "pushwire_tls_handshake_failures_total"), 1.0);
    assert_eq!(
        sample(&s, "pushwire_connections_accepted_total"),
        (M + 3) as f64
    );
    assert_eq!(
        sample(
            &s,
            "pushwire_request_duration_seconds_count{service=\"1\",method=\"3\"}"
        ),
        CALLS as f64
    );
    assert_eq!(
        sample(
            &s,
            "pushwire_request_duration_seconds_bucket{le=\"+Inf\",service=\"1\",method=\"3\"}"
        ),
        CALLS as f64
    );
    assert_eq!(sample(&s, "pushwire_slow_consumers_total"), 0.0);
    assert_eq!(sample(&s, "pushwire_gaps_total{cause=\"resume\"}"), 0.0);
    assert!(sample(&s, "pushwire_replay_buffer_events") >= (N * M) as f64);
    assert!(sample(&s, "pushwire_socket_written_bytes_total") > payload_bytes * M as f64);
    strict_parse(&text);

    let (code, _, health) = http(admin.local_addr(), "GET", "/healthz").await;
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["connections"], M + 1);

    let (code, _, connz) = http(admin.local_addr(), "GET", "/connz").await;
    assert_eq!(code, 200);
    let connz: serde_json::Value = serde_json::from_str(&connz).unwrap();
    assert_eq!(connz["total"], M + 1);
    let listed = connz["connections"].as_array().unwrap();
    let r1 = listed
        .iter()
        .find(|c| c["user"] == "r1")
        .expect("r1 is listed");
    assert_eq!(r1["groups"], serde_json::json!([1, 2]));
    assert_eq!(r1["ip"], "127.0.0.1");
    assert!(r1["uptime_seconds"].as_f64().unwrap() > 0.0);
    let (_, _, alice) = http(admin.local_addr(), "GET", "/connz?user=ALICE&limit=5").await;
    let alice: serde_json::Value = serde_json::from_str(&alice).unwrap();
    assert_eq!(alice["total"], 1);
    assert_eq!(alice["connections"][0]["groups"], serde_json::json!([]));

    assert_eq!(http(admin.local_addr(), "GET", "/nope").await.0, 404);
    assert_eq!(
        http(admin.local_addr(), "GET", "/connz?limit=x").await.0,
        400
    );
    let (code, head, body) = http(admin.local_addr(), "POST", "/metrics").await;
    assert_eq!(code, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    assert!(!body.is_empty());
    let (code, head, body) = http(admin.local_addr(), "HEAD", "/healthz").await;
    assert_eq!(code, 200);
    assert!(head.contains("Content-Length: "), "{head}");
    assert!(body.is_empty(), "HEAD has no body");

    drop(receivers);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_and_malformed_admin_requests_get_http_errors() {
    let server = start().await;
    let admin = AdminServer::bind(server.handle(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = admin.local_addr();
    let exchange = |request: Vec<u8>| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before it read everything.
        let _ = stream.write_all(&request).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .expect("an answer within 5 s");
        String::from_utf8_lossy(&response).into_owned()
    };
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert!(exchange(huge.into_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    assert!(exchange(b"\x00\x01garbage\r\n\r\n".to_vec())
        .await
        .starts_with("HTTP/1.1 400"));
    // The listener still answers.
    assert!(exchange(b"GET /healthz HTTP/1.1\r\n\r\n".to_vec())
        .await
        .starts_with("HTTP/1.1 200"));
    drop(admin);
    server.shutdown().await;
}
