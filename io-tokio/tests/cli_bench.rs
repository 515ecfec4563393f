//! Runs the built `pushwire bench` against its own in-process server and checks the
//! report.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PUSHWIRE: &str = env!("CARGO_BIN_EXE_pushwire");
/// A debug build delivers 2,000 messages in well under a second; this only catches a
/// hang.
const LIMIT: Duration = Duration::from_secs(60);

struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn bench(args: &[&str]) -> Finished {
    let mut child = Command::new(PUSHWIRE)
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pushwire");
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let stdout = thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pushwire") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pushwire bench {args:?} did not finish within {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Finished {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// The value of `key=` in the `result` line.
fn field(result: &str, key: &str) -> f64 {
    result
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {result:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {result:?}"))
}

#[test]
fn bench_reports_rates_and_latency_for_every_delivery() {
    let run = bench(&["--msgs", "2000", "--subs", "2", "--plaintext"]);
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let out = &run.stdout;
    assert!(
        out.starts_with(
            "pushwire bench: 1 publisher, 2 subscribers, 1 group, 2000 messages of 16 B, plaintext"
        ),
        "{out}"
    );
    for label in ["publish rate:", "delivered:", "bytes:", "latency:"] {
        assert!(out.contains(label), "no {label:?} in:\n{out}");
    }
    for quantile in ["p50 ", "p99 ", "p99.9 ", "max "] {
        assert!(out.contains(quantile), "no {quantile:?} in:\n{out}");
    }
    let result = out
        .lines()
        .find(|l| l.starts_with("result "))
        .unwrap_or_else(|| panic!("no result line in:\n{out}"));
    assert_eq!(field(result, "delivered"), 4000.0, "2 subscribers x 2000");
    assert_eq!(field(result, "expected"), 4000.0);
    assert!(field(result, "publish_rate") > 0.0, "{result}");
    assert!(field(result, "delivered_rate") > 0.0, "{result}");
    // Both are printed rounded to whole units: allow for that.
    let bytes = field(result, "bytes_per_sec");
    assert!(
        (bytes - field(result, "delivered_rate") * 16.0).abs() <= 16.0,
        "{result}"
    );
    let p50 = field(result, "p50_us");
    let p99 = field(result, "p99_us");
    let p999 = field(result, "p999_us");
    let max = field(result, "max_us");
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
        "{result}"
    );
}

#[test]
fn bench_refuses_payloads_without_room_for_the_timestamp() {
    let run = bench(&["--size", "4", "--plaintext"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("at least 8 bytes"), "{}", run.stderr);
}
