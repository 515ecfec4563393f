//! The real server and clients over turmoil's simulated TCP, TLS on, with faults:
//! seeded scenarios checked by the oracle.
//!
//! `PUSHWIRE_TURMOIL_CASES` sets the number of scenarios (default 200);
//! `PUSHWIRE_TURMOIL_SEED` the first seed. A failure prints the seed and the command
//! that replays exactly that case.

use pushwire_sim::engine_level::Coverage;
use pushwire_sim::oracle::check;
use pushwire_sim::scenario::{generate, Shape};
use pushwire_sim::turmoil_level::run;
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Smaller scenarios than the engine level: every connection is a TLS handshake.
const SHAPE: Shape = Shape {
    max_clients: 4,
    max_groups: 3,
    max_ops: 25,
    faults: true,
};

#[test]
fn turmoil_scenarios_keep_every_guarantee() {
    let cases = env("PUSHWIRE_TURMOIL_CASES", 200);
    let first = env("PUSHWIRE_TURMOIL_SEED", 0x7e57);
    let started = Instant::now();
    let mut coverage = Coverage::default();
    for seed in first..first + cases {
        let scenario = generate(seed, SHAPE);
        let output = run(seed, &scenario);
        let violations = check(&output.record);
        if std::env::var_os("PUSHWIRE_SIM_VERBOSE").is_some() {
            eprintln!("{scenario:#?}");
            for s in &output.record.sessions {
                eprintln!(
                    "{} intact={} crashed={} requests={:?} received={}",
                    s.key,
                    s.intact,
                    s.crashed,
                    s.requests
                        .iter()
                        .map(|r| (r.id, r.outcomes.clone()))
                        .collect::<Vec<_>>(),
                    s.received.len()
                );
            }
        }
        if !violations.is_empty() {
            let list: Vec<String> = violations
                .iter()
                .take(10)
                .map(|v| format!("  {v}"))
                .collect();
            panic!(
                "seed {seed}: {} violation(s):\n{}\nreplay: PUSHWIRE_TURMOIL_SEED={seed} PUSHWIRE_TURMOIL_CASES=1 cargo test -p pushwire-sim --test turmoil_level -- --nocapture",
                violations.len(),
                list.join("\n")
            );
        }
        coverage.add(&output.coverage);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{cases} turmoil scenarios in {:.1} s ({:.1}/s); coverage: {coverage:?}",
        elapsed.as_secs_f64(),
        cases as f64 / elapsed.as_secs_f64()
    );
    if cases >= 50 {
        for (name, count) in [
            ("partition healed", coverage.partitions_healed),
            ("keep-alive timeout", coverage.partition_timeouts),
            (
                "push during a slow request",
                coverage.pushes_during_slow_requests,
            ),
            (
                "server bounce with subscribers",
                coverage.bounces_with_subscribers,
            ),
            ("reconnect", coverage.reconnects),
            ("session resumed", coverage.resumes),
            ("session lost", coverage.sessions_lost),
            ("server-batched batch", coverage.server_batches),
            ("delivery", coverage.deliveries),
        ] {
            assert!(count > 0, "situation never exercised: {name}");
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_turmoil_run() {
    let scenario = generate(11, SHAPE);
    let a = run(11, &scenario);
    let b = run(11, &scenario);
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.record.journal, b.record.journal);
}

#[test]
#[ignore = "debugging aid: prints one seed's journal and histories"]
fn dump_turmoil_seed() {
    let seed = env("PUSHWIRE_TURMOIL_SEED", 0);
    let output = run(seed, &generate(seed, SHAPE));
    for entry in &output.record.journal {
        eprintln!("J {entry:?}");
    }
    for s in &output.record.sessions {
        eprintln!("== {} intact={}", s.key, s.intact);
        for r in &s.received {
            eprintln!("   {r:?}");
        }
    }
}
