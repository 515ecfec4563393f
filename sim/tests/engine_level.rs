//! Engine-level simulation: thousands of seeded scenarios, each checked by the oracle.
//!
//! `PUSHWIRE_SIM_CASES` sets the number of scenarios (default 10,000);
//! `PUSHWIRE_SIM_SEED` the first seed (default fixed, so CI is reproducible). A
//! failure prints the seed and the command that replays exactly that case.

use pushwire_sim::engine_level::{run_seed, Coverage};
use pushwire_sim::oracle::check;
use pushwire_sim::scenario::Shape;
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn replay_command(seed: u64) -> String {
    format!("PUSHWIRE_SIM_SEED={seed} PUSHWIRE_SIM_CASES=1 cargo test -p pushwire-sim --test engine_level -- --nocapture")
}

#[test]
fn scenarios_keep_every_guarantee() {
    let cases = env("PUSHWIRE_SIM_CASES", 10_000);
    let first = env("PUSHWIRE_SIM_SEED", 0x00c0_ffee);
    let started = Instant::now();
    let mut coverage = Coverage::default();
    for seed in first..first + cases {
        let output = run_seed(seed, Shape::default());
        let violations = check(&output.record);
        if std::env::var_os("PUSHWIRE_SIM_VERBOSE").is_some() {
            eprintln!(
                "{:#?}",
                pushwire_sim::scenario::generate(seed, Shape::default())
            );
            for s in &output.record.sessions {
                eprintln!(
                    "{} intact={} requests={:?} received={}",
                    s.key,
                    s.intact,
                    s.requests
                        .iter()
                        .map(|r| (r.id, r.outcomes.len()))
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
                "seed {seed}: {} violation(s):\n{}\nreplay: {}",
                violations.len(),
                list.join("\n"),
                replay_command(seed)
            );
        }
        coverage.add(&output.coverage);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{cases} engine-level scenarios in {:.1} s ({:.0}/s); coverage: {coverage:?}",
        elapsed.as_secs_f64(),
        cases as f64 / elapsed.as_secs_f64()
    );
    if cases >= 200 {
        // The suite proves nothing if the interesting situations never happened.
        let c = &coverage;
        for (name, count) in [
            ("cut with events in flight", c.cut_with_events_in_flight),
            ("partition healed", c.partitions_healed),
            ("keep-alive timeout", c.partition_timeouts),
            ("server bounce with subscribers", c.bounces_with_subscribers),
            ("push during a slow request", c.pushes_during_slow_requests),
            ("server-batched batch", c.server_batches),
            ("aborted batch", c.aborted_batches),
            ("reconnect", c.reconnects),
            ("resume with replay", c.resumes_with_replay),
            (
                "gap after a replay-buffer overflow or dropped events",
                c.gaps,
            ),
            ("session lost", c.sessions_lost),
            ("slow consumer closed", c.slow_consumers),
            (
                "events dropped by the drop-oldest policy",
                c.dropped_by_policy,
            ),
        ] {
            assert!(count > 0, "situation never exercised: {name}");
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    for seed in [1, 2, 3, 0xdead_beef] {
        let a = run_seed(seed, Shape::default());
        let b = run_seed(seed, Shape::default());
        assert_eq!(a.digest, b.digest, "seed {seed}");
        assert_eq!(a.record.journal, b.record.journal, "seed {seed}");
    }
    assert_ne!(
        run_seed(1, Shape::default()).digest,
        run_seed(2, Shape::default()).digest
    );
}

#[test]
#[ignore = "debugging aid: prints one seed's histories"]
fn dump_seed() {
    let seed = env("PUSHWIRE_SIM_SEED", 0);
    let output = run_seed(seed, Shape::default());
    for s in &output.record.sessions {
        eprintln!("== {} intact={}", s.key, s.intact);
        for r in &s.received {
            eprintln!("   {r:?}");
        }
    }
}
