//! Runs the built `pushwire` binary: the demo, and the client commands against a
//! `pushwire serve` child on a free loopback port.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const PUSHWIRE: &str = env!("CARGO_BIN_EXE_pushwire");
/// Longest any single command may take before the test fails (and kills it).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

fn cert(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../certs")
        .join(name)
        .display()
        .to_string()
}

/// A finished `pushwire` run.
#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn read_all(mut from: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = from.read_to_string(&mut text);
        text
    })
}

/// Waits for `child` up to [`COMMAND_TIMEOUT`], killing it if it overstays.
fn wait(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for pushwire") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `pushwire ARGS` to completion, with `stdin` as its input.
fn pushwire_with_input(args: &[&str], stdin: &str) -> Finished {
    let mut child = Command::new(PUSHWIRE)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pushwire");
    let mut input = child.stdin.take().expect("piped");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let stdout = read_all(child.stdout.take().expect("piped"));
    let stderr = read_all(child.stderr.take().expect("piped"));
    let status = wait(&mut child, &format!("pushwire {args:?}"));
    Finished {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn pushwire(args: &[&str]) -> Finished {
    pushwire_with_input(args, "")
}

/// Reads a child's stdout line by line on a thread, so a test can wait for one line
/// with a deadline.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(stdout: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line, or `None` at the end of the stream; panics after the timeout.
    fn next(&mut self, what: &str) -> Option<String> {
        match self.rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no line from {what}; so far: {:?}", self.seen)
            }
        }
    }
}

/// A `pushwire serve` child on a free port, killed when dropped.
struct Serve {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
    /// The rest of its stdout (kept open: the server prints more lines with `--admin`).
    lines: Lines,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let mut child = Command::new(PUSHWIRE)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pushwire serve");
        // Keep draining the log so the server never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(String::new()));
        let log = stderr.clone();
        let mut pipe = BufReader::new(child.stderr.take().expect("piped"));
        thread::spawn(move || {
            let mut line = String::new();
            while matches!(pipe.read_line(&mut line), Ok(n) if n > 0) {
                log.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let lines = Lines::new(child.stdout.take().expect("piped"));
        let mut serve = Serve {
            child,
            addr: String::new(),
            stderr,
            lines,
        };
        let first = serve.lines.next("pushwire serve");
        match first
            .as_deref()
            .and_then(|l| l.strip_prefix("listening on "))
        {
            Some(addr) => serve.addr = addr.to_owned(),
            None => {
                // Let the log catch up with the exit before showing it.
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "serve did not print its address: {first:?}\n{}",
                    serve.stderr.lock().unwrap()
                );
            }
        }
        serve
    }

    /// `pushwire ARGS --server ADDR`.
    fn run(&self, args: &[&str]) -> Finished {
        let mut all = args.to_vec();
        all.extend(["--server", &self.addr]);
        pushwire(&all)
    }

    /// Starts `pushwire ARGS --server ADDR` without waiting for it.
    fn spawn(&self, args: &[&str]) -> (Child, Lines) {
        let mut child = Command::new(PUSHWIRE)
            .args(args)
            .args(["--server", &self.addr])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pushwire");
        let lines = Lines::new(child.stdout.take().expect("piped"));
        (child, lines)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn mask_ports(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("127.0.0.1:") {
        let (head, tail) = rest.split_at(at + "127.0.0.1:".len());
        out.push_str(head);
        out.push_str("PORT");
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

#[test]
fn the_demo_runs_the_tutorial_identically_every_time() {
    let first = pushwire(&["demo"]);
    assert_eq!(first.code, Some(0), "{first:?}");
    let out = &first.stdout;
    for expected in [
        // Figure 2: the SessionInfo, the verdict, and the decision.
        "alice  |   subject:      CN=localhost,O=pushwire",
        "alice  |   verdict:      verified",
        "alice  | verified: accepting the server",
        // Figure 6 and presence: bob sees carol arrive in the groups they share.
        "bob    | Subscribe for [1, 3] by carol@127.0.0.1:",
        // One copy per member, listing its own target groups.
        "bob    | Publish to [1] from alice@127.0.0.1:",
        // Figure 10.
        "bob    | say_hello returned: Hello Jack Smith",
        "bob    | the user message to ALICE reached 1 connection",
        "carol  | Publish to [2, 3] from bob@127.0.0.1:",
        // The user message to "ALICE" reaches alice.
        "alice  | User message from bob@127.0.0.1:",
        "message = A message from bob",
        "carol  | closed: closed locally (Normal)",
        "bob    | Unsubscribe from [1, 3] by carol@",
        "alice  | closed: closed by peer (GoingAway): server shutting down",
        "server | stopped; 0 connections left open",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let second = pushwire(&["demo"]);
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(
        mask_ports(&first.stdout),
        mask_ports(&second.stdout),
        "two demo runs differ beyond their ports"
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = pushwire(&["no-such-command"]);
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn protocol_prints_the_catalogue() {
    let out = pushwire(&["protocol"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.starts_with("pushwire protocol version "),
        "{out:?}"
    );
}

#[test]
fn a_publication_reaches_a_json_subscriber() {
    let server = Serve::start(&[]);
    let (mut sub, mut lines) = server.spawn(&[
        "sub",
        "2",
        "--count",
        "1",
        "--json",
        "--timeout",
        "15",
        "--user",
        "bob",
    ]);
    // The subscriber's own Subscribed event says it has joined: now publish.
    let joined = json(&lines.next("sub").expect("sub printed nothing"));
    assert_eq!(joined["event"], "subscribe");
    assert_eq!(joined["groups"], serde_json::json!([2]));
    assert_eq!(joined["sender"]["self"], true);
    assert_eq!(joined["sender"]["user_id"], "bob");

    let published = server.run(&[
        "pub",
        "2",
        "3",
        "--message",
        "hello over TLS",
        "--user",
        "alice",
    ]);
    assert_eq!(published.code, Some(0), "{published:?}");
    assert!(
        published.stdout.contains("Published to [2, 3]"),
        "{published:?}"
    );
    assert!(
        published.stderr.contains("trusting the development CA"),
        "{published:?}"
    );

    let status = wait(&mut sub, "sub --count 1");
    let message = json(&lines.next("sub").expect("sub printed no publication"));
    assert_eq!(status.code(), Some(0), "{:?}", lines.seen);
    assert_eq!(message["event"], "publish");
    assert_eq!(message["message"], "hello over TLS");
    assert_eq!(
        message["groups"],
        serde_json::json!([2]),
        "bob is only in 2"
    );
    assert_eq!(message["sender"]["user_id"], "alice");
    assert_eq!(message["sender"]["ip"], "127.0.0.1");
    assert_eq!(message["sender"]["self"], false);
    assert_eq!(message["sender"]["server"], false);
    assert!(
        message["seq"].as_u64().is_some_and(|seq| seq > 1),
        "{message}"
    );
}

#[test]
fn send_call_and_groups_work_against_serve() {
    let server = Serve::start(&["--auto-subscribe", "3"]);
    let (mut sub, mut lines) =
        server.spawn(&["sub", "--count", "1", "--timeout", "15", "--user", "carol"]);
    let joined = lines.next("sub").expect("sub printed nothing");
    assert!(
        joined.starts_with("Subscribe for [3] by carol@127.0.0.1:"),
        "{joined}"
    );

    let sent = server.run(&["send", "CAROL", "--message", "psst", "--user", "alice"]);
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(sent.stdout.trim(), "Delivered to 1 connection of CAROL");
    assert_eq!(wait(&mut sub, "sub").code(), Some(0), "{:?}", lines.seen);
    // Before it: alice's arrival in group 3 (presence); then the message.
    while lines.next("sub").is_some() {}
    let received = lines.seen.last().expect("no user message");
    assert!(
        received.starts_with("User message from alice@127.0.0.1:")
            && received.ends_with("(service 1): message = psst"),
        "{:?}",
        lines.seen
    );

    let sent = server.run(&["send", "nobody", "--message", "x", "--json"]);
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(
        json(sent.stdout.trim()),
        serde_json::json!({"event": "delivered", "receiver": "nobody", "connections": 0})
    );

    let hello = server.run(&["call", "say-hello", "Jack", "Smith"]);
    assert_eq!(hello.code, Some(0), "{hello:?}");
    assert_eq!(hello.stdout, "Hello Jack Smith\n");
    let echo = server.run(&["call", "echo", "round trip", "--json"]);
    assert_eq!(
        json(echo.stdout.trim()),
        serde_json::json!({"method": "echo", "result": "round trip"})
    );
    let slept = server.run(&["call", "sleep", "20"]);
    assert_eq!(slept.stdout, "Slept 20 ms\n", "{slept:?}");

    let groups = server.run(&["groups"]);
    assert_eq!(groups.code, Some(0), "{groups:?}");
    assert_eq!(
        groups.stdout,
        "   1  R&D Department\n   2  Sales Department\n   3  Management Department\n"
    );
    let refused = server.run(&["pub", "9", "--message", "x"]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stdout.contains("UnknownGroups"), "{refused:?}");
}

#[test]
fn call_cancel_after_stops_a_slow_call_on_the_server() {
    let server = Serve::start(&[]);
    let began = std::time::Instant::now();
    let cancelled = server.run(&["call", "sleep", "5000", "--cancel-after", "100"]);
    assert_eq!(cancelled.code, Some(0), "{cancelled:?}");
    let after: u64 = cancelled
        .stdout
        .strip_prefix("Cancelled sleep after ")
        .and_then(|rest| rest.strip_suffix(" ms: the server stopped it\n"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{cancelled:?}"));
    assert!((100..4000).contains(&after), "{cancelled:?}");
    assert!(
        began.elapsed() < std::time::Duration::from_secs(4),
        "the 5 s sleep was stopped"
    );
    let json_line = server.run(&["call", "sleep", "5000", "--cancel-after", "50", "--json"]);
    let value = json(json_line.stdout.trim());
    assert_eq!(value["cancelled"], true, "{json_line:?}");
    assert_eq!(value["method"], "sleep");
    // A call that finishes first is not affected.
    let quick = server.run(&["call", "sleep", "10", "--cancel-after", "2000"]);
    assert_eq!(quick.stdout, "Slept 10 ms\n", "{quick:?}");
}

#[test]
fn a_wrong_password_exits_4_with_the_reason() {
    let server = Serve::start(&[]);
    let out = server.run(&["groups", "--user", "alice", "--password", "wrong"]);
    assert_eq!(out.code, Some(4), "{out:?}");
    assert!(
        out.stderr
            .contains("pushwire: error: the server refused the login (BadCredentials)"),
        "{out:?}"
    );
    assert_eq!(
        out.stderr.lines().filter(|l| l.contains("error")).count(),
        1
    );
}

#[test]
fn a_users_file_decides_who_logs_in() {
    let hashed = pushwire_with_input(&["hash-password"], "s3cret pass\n");
    assert_eq!(hashed.code, Some(0), "{hashed:?}");
    let hash = hashed.stdout.trim();
    assert!(hash.starts_with("pbkdf2-sha256$100000$"), "{hash}");
    let users = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pushwire-users-{}.toml", std::process::id()));
    std::fs::write(&users, format!("[users]\nAlice = \"{hash}\"\n")).unwrap();

    let server = Serve::start(&["--users", users.to_str().unwrap()]);
    let ok = server.run(&["groups", "--user", "alice", "--password", "s3cret pass"]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    let wrong = server.run(&["groups", "--user", "ALICE", "--password", "s3cret"]);
    assert_eq!(wrong.code, Some(4), "{wrong:?}");
    let unknown = server.run(&["groups", "--user", "mallory", "--password", "s3cret pass"]);
    assert_eq!(unknown.code, Some(4), "{unknown:?}");
    let _ = std::fs::remove_file(users);
}

#[test]
fn an_untrusted_server_exits_3_before_sending_credentials() {
    let server = Serve::start(&[
        "--cert",
        &cert("other-server.cert.pem"),
        "--key",
        &cert("other-server.key.pem"),
    ]);
    let out = server.run(&["groups", "--user", "alice"]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("is not trusted"), "{out:?}");
    assert!(out.stderr.contains("no credentials were sent"), "{out:?}");
    assert!(
        !server.stderr.lock().unwrap().contains("authenticated"),
        "the server saw a login"
    );
}

#[test]
fn a_subscriber_without_messages_times_out_with_5() {
    let server = Serve::start(&[]);
    let started = Instant::now();
    let out = server.run(&["sub", "1", "--count", "1", "--timeout", "1"]);
    assert_eq!(out.code, Some(5), "{out:?}");
    assert!(out.stderr.contains("timed out: 0 of 1 messages"), "{out:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[test]
fn an_unreachable_server_exits_3() {
    // Bind then drop: a loopback port with nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = pushwire(&["groups", "--server", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("cannot connect"), "{out:?}");
}

#[test]
fn serve_refuses_all_interfaces_without_a_users_file() {
    let out = pushwire(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("without --users"), "{out:?}");
    assert!(!out.stdout.contains("listening"), "{out:?}");
}

#[test]
fn a_compressed_publication_reaches_subscribers_identically_in_both_forms() {
    let server = Serve::start(&[]);
    // One subscriber takes compressed payloads (the default), one asks the server
    // to decompress them for it.
    let (mut packed, mut packed_lines) = server.spawn(&[
        "sub",
        "2",
        "--count",
        "1",
        "--json",
        "--timeout",
        "15",
        "--user",
        "bob",
    ]);
    let (mut plain, mut plain_lines) = server.spawn(&[
        "sub",
        "2",
        "--count",
        "1",
        "--json",
        "--timeout",
        "15",
        "--user",
        "carol",
        "--no-accept-compressed",
    ]);
    for lines in [&mut packed_lines, &mut plain_lines] {
        let joined = json(&lines.next("sub").expect("sub printed nothing"));
        assert_eq!(joined["event"], "subscribe");
    }
    // A large, repetitive payload: a JSON-like log line repeated.
    let message: String = (0..400)
        .map(|i| format!("{{\"seq\":{i},\"level\":\"info\",\"msg\":\"payload compressed\"}} "))
        .collect();
    assert!(message.len() > 20_000);
    let published = server.run(&[
        "pub",
        "2",
        "--compress",
        "--message",
        &message,
        "--user",
        "alice",
    ]);
    assert_eq!(published.code, Some(0), "{published:?}");
    assert!(
        published
            .stderr
            .contains(&format!("note: --compress: {} bytes go as", message.len())),
        "{}",
        published.stderr
    );
    for (child, lines, who) in [
        (&mut packed, &mut packed_lines, "bob"),
        (&mut plain, &mut plain_lines, "carol"),
    ] {
        let status = wait(child, "sub --count 1");
        // The other subscriber's arrival may come first.
        let got = loop {
            let line = json(&lines.next("sub").expect("sub printed no publication"));
            if line["event"] != "subscribe" {
                break line;
            }
        };
        assert_eq!(status.code(), Some(0), "{who}: {:?}", lines.seen);
        assert_eq!(got["event"], "publish", "{who}");
        assert_eq!(got["message"].as_str(), Some(message.as_str()), "{who}");
        assert_eq!(got["sender"]["user_id"], "alice");
    }
}

/// A users file in the test's temporary folder, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pushwire-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The hash of `password`, from `pushwire hash-password`.
fn hash_password(password: &str) -> String {
    let hashed = pushwire_with_input(&["hash-password"], &format!("{password}\n"));
    assert_eq!(hashed.code, Some(0), "{hashed:?}");
    hashed.stdout.trim().to_owned()
}

/// alice may do everything (old form); bob publishes to 1 and 10-20, subscribes to
/// 1 and 2, sends no user messages and has at most two connections.
fn permissions_file(hash: &str, bob_publish: &str) -> String {
    format!(
        "[users]\nalice = \"{hash}\"\n\n\
         [users.bob]\npassword = \"{hash}\"\npublish = {bob_publish}\nsubscribe = [\"1-2\"]\n\
         user_messages = false\nmax_connections = 2\n"
    )
}

impl Serve {
    /// Waits until the server's log contains `text`.
    fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while !self.stderr.lock().unwrap().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -HUP` to the server.
    fn hang_up(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

#[test]
fn permissions_in_the_users_file_refuse_and_allow_from_the_cli() {
    let hash = hash_password("pw");
    let users = TempFile::new("perm-users.toml", &permissions_file(&hash, "[1, \"3-20\"]"));
    let server = Serve::start(&["--users", users.path()]);
    server.wait_for_log("2 users, 1 with restricted permissions");
    let bob = ["--user", "bob", "--password", "pw"];
    let alice = ["--user", "alice", "--password", "pw"];
    let with = |args: &[&str], who: &[&str]| -> Finished {
        let mut all = args.to_vec();
        all.extend_from_slice(who);
        server.run(&all)
    };

    // A subscriber of bob's in group 1 gets what bob may publish.
    let (mut sub, mut lines) = server.spawn(&[
        "sub",
        "1",
        "--count",
        "1",
        "--json",
        "--timeout",
        "15",
        "--user",
        "bob",
        "--password",
        "pw",
    ]);
    let joined = json(&lines.next("sub").expect("sub printed nothing"));
    assert_eq!(joined["event"], "subscribe", "{joined}");

    // Group 2 is not bob's to publish to: the rejection is printed, exit 1.
    let refused = with(&["pub", "2", "--message", "no"], &bob);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stdout.contains("NotAuthorized") && refused.stdout.contains("[2]"),
        "{refused:?}"
    );
    // 1 and 3 are; group 2 in the same publication is refused alone.
    let partly = with(&["pub", "1", "2", "--message", "first"], &bob);
    assert_eq!(partly.code, Some(1), "{partly:?}");
    assert!(
        partly.stdout.contains("NotAuthorized") && partly.stdout.contains("[2]"),
        "{partly:?}"
    );
    assert_eq!(
        wait(&mut sub, "sub --count 1").code(),
        Some(0),
        "{:?}",
        lines.seen
    );
    let message = json(&lines.next("sub").expect("no publication"));
    assert_eq!(message["message"], "first", "{message}");
    assert_eq!(message["groups"], serde_json::json!([1]));
    let allowed = with(&["pub", "3", "--message", "ok"], &bob);
    assert_eq!(allowed.code, Some(0), "{allowed:?}");

    // Subscribing outside 1-2 is refused.
    let sub3 = with(&["sub", "3", "--count", "1", "--timeout", "5"], &bob);
    assert_eq!(sub3.code, Some(1), "{sub3:?}");
    assert!(
        sub3.stdout.contains("NotAuthorized") && sub3.stderr.contains("refused the subscription"),
        "{sub3:?}"
    );

    // bob may not send user messages; alice (a bare hash) may do all of it.
    let send = with(&["send", "alice", "--message", "psst"], &bob);
    assert_eq!(send.code, Some(1), "{send:?}");
    assert!(
        send.stderr.contains("NotAuthorized") && send.stderr.contains("may not send user messages"),
        "{send:?}"
    );
    assert_eq!(
        with(&["send", "bob", "--message", "hi"], &alice).code,
        Some(0)
    );
    assert_eq!(with(&["pub", "3", "--message", "hi"], &alice).code, Some(0));

    // Two connections of bob are open; the third login is refused, another user's
    // is not.
    let (mut first, mut first_lines) = server.spawn(&[
        "sub",
        "1",
        "--timeout",
        "30",
        "--count",
        "1000",
        "--user",
        "bob",
        "--password",
        "pw",
    ]);
    first_lines.next("first bob").expect("first bob subscribed");
    let (mut second, mut second_lines) = server.spawn(&[
        "sub",
        "2",
        "--timeout",
        "30",
        "--count",
        "1000",
        "--user",
        "BOB",
        "--password",
        "pw",
    ]);
    second_lines
        .next("second bob")
        .expect("second bob subscribed");
    let third = with(&["groups"], &bob);
    assert_eq!(third.code, Some(4), "{third:?}");
    assert!(third.stderr.contains("TooManyConnections"), "{third:?}");
    assert_eq!(with(&["groups"], &alice).code, Some(0));
    // When one goes, bob may log in again.
    let _ = first.kill();
    let _ = first.wait();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        let again = with(&["groups"], &bob);
        if again.code == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "{again:?}");
        thread::sleep(Duration::from_millis(100));
    }
    let _ = second.kill();
    let _ = second.wait();
}

#[test]
fn sighup_reloads_the_users_file_and_keeps_the_old_one_when_the_new_is_broken() {
    let hash = hash_password("pw");
    let users = TempFile::new("hup-users.toml", &permissions_file(&hash, "[1]"));
    let server = Serve::start(&["--users", users.path()]);
    let bob = ["--user", "bob", "--password", "pw"];
    let publish = |group: &str| {
        server.run(&[
            "pub",
            group,
            "--message",
            "x",
            bob[0],
            bob[1],
            bob[2],
            bob[3],
        ])
    };
    assert_eq!(publish("3").code, Some(1), "3 is not bob's yet");

    // The server applies the new file without a restart (connections open across
    // the reload get it too: see the unit tests of `cli::users`).
    std::fs::write(&users.0, permissions_file(&hash, "[1, 3]")).unwrap();
    server.hang_up();
    server.wait_for_log("reloaded");
    assert_eq!(
        publish("3").code,
        Some(0),
        "{}",
        server.stderr.lock().unwrap()
    );
    // The certificate is reread too (the development one here).
    server.wait_for_log("reloaded certificate");

    // A broken file is reported and changes nothing.
    std::fs::write(
        &users.0,
        "[users.bob]\npassword = \"x\"\npublish = [\"3-1\"]\n",
    )
    .unwrap();
    server.hang_up();
    server.wait_for_log("the users loaded before stay in force");
    assert_eq!(publish("3").code, Some(0), "still the previous file");
    assert_eq!(publish("2").code, Some(1));
}

#[test]
fn sighup_swaps_the_certificate_for_new_connections_and_old_ones_stay() {
    let copy = |from: &str, to: &TempFile| std::fs::copy(cert(from), &to.0).unwrap();
    let cert_file = TempFile::new("hup-cert.pem", "");
    let key_file = TempFile::new("hup-key.pem", "");
    copy("server.cert.pem", &cert_file);
    copy("server.key.pem", &key_file);
    let server = Serve::start(&[
        "--cert",
        cert_file.path(),
        "--key",
        key_file.path(),
        "--key-password",
        "mypassword",
    ]);
    // A subscriber that trusts the development CA connects before the swap.
    let (mut sub, mut lines) = server.spawn(&["sub", "1", "--count", "1", "--timeout", "20"]);
    let joined = lines.next("sub").expect("sub printed nothing");
    assert!(joined.starts_with("Subscribe for [1]"), "{joined}");

    // The certificate of the unrelated CA (its key is not encrypted: the password
    // is not needed and does no harm).
    copy("other-server.cert.pem", &cert_file);
    copy("other-server.key.pem", &key_file);
    server.hang_up();
    server.wait_for_log("reloaded certificate");
    let other_ca = cert("other-ca.cert.pem");
    let old_trust = server.run(&["groups"]);
    assert_eq!(old_trust.code, Some(3), "{old_trust:?}");
    let published = server.run(&["pub", "1", "--message", "after the swap", "--ca", &other_ca]);
    assert_eq!(published.code, Some(0), "{published:?}");
    // The connection made before the swap still receives.
    assert_eq!(wait(&mut sub, "sub").code(), Some(0), "{:?}", lines.seen);
    while lines.next("sub").is_some() {}
    assert!(
        lines
            .seen
            .iter()
            .any(|l| l.ends_with("message = after the swap")),
        "{:?}",
        lines.seen
    );

    // A certificate that does not fit the key is refused, and the one in force
    // stays.
    copy("server.cert.pem", &cert_file);
    server.hang_up();
    server.wait_for_log("the certificate loaded before stays in force");
    assert_eq!(server.run(&["groups", "--ca", &other_ca]).code, Some(0));
}

/// `GET path` on an admin listener: status code and body.
fn admin_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the admin pages");
    stream
        .set_read_timeout(Some(COMMAND_TIMEOUT))
        .expect("a timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    (head[9..12].parse().unwrap(), body.to_owned())
}

#[test]
fn serve_admin_with_a_users_file_serves_metrics_that_count_the_run() {
    // The command: `pushwire serve --admin ADDR --users users.toml`.
    let hash = hash_password("pw");
    let users = TempFile::new("admin-users.toml", &permissions_file(&hash, "[1]"));
    let mut server = Serve::start(&["--admin", "127.0.0.1:0", "--users", users.path()]);
    let admin_line = server.lines.next("pushwire serve").expect("the admin line");
    let admin = admin_line
        .strip_prefix("admin on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected line {admin_line:?}"))
        .to_owned();
    let (mut sub, mut lines) = server.spawn(&[
        "sub",
        "1",
        "--count",
        "3",
        "--timeout",
        "15",
        "--json",
        "--user",
        "bob",
        "--password",
        "pw",
    ]);
    lines.next("sub").expect("sub joined");
    let (code, connz) = admin_get(&admin, "/connz?user=bob");
    assert_eq!(code, 200);
    let connz = json(&connz);
    assert_eq!(connz["total"], 1, "{connz}");
    assert_eq!(connz["connections"][0]["groups"], serde_json::json!([1]));
    for n in 0..3 {
        let published = server.run(&[
            "pub",
            "1",
            "--message",
            &format!("m{n}"),
            "--no-echo",
            "--user",
            "alice",
            "--password",
            "pw",
        ]);
        assert_eq!(published.code, Some(0), "{published:?}");
    }
    assert_eq!(wait(&mut sub, "sub").code(), Some(0), "{:?}", lines.seen);
    // bob may publish to group 1 only, and has a wrong password once.
    let refused = server.run(&[
        "pub",
        "2",
        "--message",
        "x",
        "--user",
        "bob",
        "--password",
        "pw",
    ]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    let wrong = server.run(&["groups", "--user", "bob", "--password", "nope"]);
    assert_eq!(wrong.code, Some(4), "{wrong:?}");

    let (code, text) = admin_get(&admin, "/metrics");
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(value("pushwire_in_msgs_total{kind=\"publication\"}"), 4.0);
    assert_eq!(value("pushwire_out_msgs_total{kind=\"publication\"}"), 3.0);
    assert_eq!(
        value("pushwire_push_rejected_total{code=\"NotAuthorized\"}"),
        1.0
    );
    assert_eq!(
        value("pushwire_auth_permitted_total"),
        5.0,
        "bob twice and three alices"
    );
    assert_eq!(value("pushwire_auth_refused_total"), 1.0);
    assert!(text.ends_with("# EOF\n"));
    let (code, health) = admin_get(&admin, "/healthz");
    assert_eq!(code, 200);
    assert_eq!(json(&health)["status"], "ok");
}

#[test]
fn a_publisher_over_the_servers_rate_limit_is_told_rate_limited() {
    // One token a second, bursts of 3: of 10 publications sent at once, 3 go (a few
    // more only on a machine that stalls for seconds) and the rest are refused.
    let server = Serve::start(&["--publish-rate", "1", "--publish-burst", "3"]);
    let published = server.run(&["pub", "1", "--message", "x", "--repeat", "10"]);
    assert_eq!(published.code, Some(1), "{published:?}");
    let limited = published
        .stdout
        .lines()
        .filter(|l| l.contains(": rate limited: over the publish rate limit of 1 per second"))
        .count();
    assert!((4..=7).contains(&limited), "{published:?}");
    assert!(
        published.stderr.contains("rate limited (not delivered"),
        "{published:?}"
    );
    // Invalid settings are usage errors.
    let zero = pushwire(&["serve", "--listen", "127.0.0.1:0", "--publish-rate", "0"]);
    assert_eq!(zero.code, Some(2), "{zero:?}");
    let burst_alone = pushwire(&["serve", "--listen", "127.0.0.1:0", "--publish-burst", "5"]);
    assert_eq!(burst_alone.code, Some(2), "{burst_alone:?}");
}

#[test]
fn serve_web_prints_the_chat_url_and_origins_need_web() {
    let mut server = Serve::start(&["--web", "--allowed-origin", "https://chat.example"]);
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let line = server.lines.next("pushwire serve").expect("the web line");
    assert_eq!(line, format!("web chat on https://localhost:{port}/"));
    // Native clients still use the same port.
    let published = server.run(&["pub", "1", "--message", "hi", "--user", "alice"]);
    assert_eq!(published.code, Some(0), "{published:?}");

    let refused = pushwire(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--allowed-origin",
        "https://chat.example",
    ]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
}
