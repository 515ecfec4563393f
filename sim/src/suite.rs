//! Running many seeded scenarios and reporting the first violation with the command
//! that replays it: shared by the engine-level and turmoil-level test suites.

use crate::engine_level::{Coverage, RunOutput};
use crate::oracle::check;
use crate::scenario::{generate, Shape};
use std::time::Instant;

/// A `u64` from the environment, or `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One suite: which scenarios, how to run one, how to replay one.
pub struct Suite<'a> {
    /// Name for the summary line ("engine-level", "turmoil").
    pub name: &'a str,
    /// Environment variables for the case count and the first seed.
    pub cases_var: &'a str,
    /// See `cases_var`.
    pub seed_var: &'a str,
    /// Case count without the variable.
    pub default_cases: u64,
    /// First seed without the variable.
    pub default_seed: u64,
    /// Scenario shape.
    pub shape: Shape,
    /// The test binary, for the replay command.
    pub test: &'a str,
}

impl Suite<'_> {
    /// Runs every case; panics at the first violation with the seed and the replay
    /// command; returns the summed coverage and prints the rate.
    pub fn run(&self, run: impl Fn(u64) -> RunOutput) -> (u64, Coverage) {
        let cases = env(self.cases_var, self.default_cases);
        let first = env(self.seed_var, self.default_seed);
        let verbose = std::env::var_os("PUSHWIRE_SIM_VERBOSE").is_some();
        let started = Instant::now();
        let mut coverage = Coverage::default();
        for seed in first..first + cases {
            let output = run(seed);
            if verbose {
                eprintln!("{:#?}", generate(seed, self.shape));
                for s in &output.record.sessions {
                    eprintln!(
                        "{} intact={} crashed={} requests={:?} received={:?}",
                        s.key, s.intact, s.crashed, s.requests, s.received
                    );
                }
            }
            let violations = check(&output.record);
            if !violations.is_empty() {
                let list: Vec<String> = violations
                    .iter()
                    .take(10)
                    .map(|v| format!("  {v}"))
                    .collect();
                panic!(
                    "seed {seed}: {} violation(s):\n{}\nreplay: {}={seed} {}=1 cargo test -p pushwire-sim --test {} -- --nocapture",
                    violations.len(),
                    list.join("\n"),
                    self.seed_var,
                    self.cases_var,
                    self.test,
                );
            }
            coverage.add(&output.coverage);
        }
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!(
            "{cases} {} scenarios in {elapsed:.1} s ({:.1}/s); coverage: {coverage:?}",
            self.name,
            cases as f64 / elapsed
        );
        (cases, coverage)
    }
}

/// Fails when a situation a suite claims to exercise never happened.
pub fn require_exercised(situations: &[(&str, u64)]) {
    for (name, count) in situations {
        assert!(*count > 0, "situation never exercised: {name}");
    }
}

/// Fails when a situation a suite claims to exercise happened less often than
/// `per_1000` times per thousand cases: a change that makes it rare, not only one
/// that makes it vanish, is caught. Set the rates well under what the suite shows.
pub fn require_rates(cases: u64, situations: &[(&str, u64, u64)]) {
    for (name, count, per_1000) in situations {
        assert!(
            count * 1000 >= per_1000 * cases,
            "situation exercised too rarely: {name}: {count} times in {cases} cases, \
             fewer than {per_1000} per 1,000"
        );
    }
}

/// Prints a run's journal and every session's events (a debugging aid).
pub fn dump(output: &RunOutput) {
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
