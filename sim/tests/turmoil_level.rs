//! The real server and clients over turmoil's simulated TCP, TLS on, with faults:
//! seeded scenarios checked by the oracle.
//!
//! `PUSHWIRE_TURMOIL_CASES` sets the number of scenarios (default 200);
//! `PUSHWIRE_TURMOIL_SEED` the first seed. A failure prints the seed and the command
//! that replays exactly that case.

use pushwire_sim::scenario::{generate, Shape};
use pushwire_sim::suite::{dump, env, require_exercised, Suite};
use pushwire_sim::turmoil_level::run;

/// Smaller scenarios than the engine level: every connection is a TLS handshake.
const SHAPE: Shape = Shape {
    max_clients: 4,
    max_groups: 3,
    max_ops: 25,
    faults: true,
    // Scripted readers need the engine level's control of each read.
    readers: false,
    // Cancels are checked at the engine level (the turmoil scenarios stay as they
    // were).
    cancels: false,
};

#[test]
fn turmoil_scenarios_keep_every_guarantee() {
    let suite = Suite {
        name: "turmoil",
        cases_var: "PUSHWIRE_TURMOIL_CASES",
        seed_var: "PUSHWIRE_TURMOIL_SEED",
        default_cases: 200,
        default_seed: 0x7e57,
        shape: SHAPE,
        test: "turmoil_level",
    };
    let (cases, c) = suite.run(|seed| run(seed, &generate(seed, SHAPE)));
    if cases >= 50 {
        require_exercised(&[
            ("partition healed", c.partitions_healed),
            ("keep-alive timeout", c.partition_timeouts),
            ("push during a slow request", c.pushes_during_slow_requests),
            ("server bounce with subscribers", c.bounces_with_subscribers),
            ("reconnect", c.reconnects),
            ("session resumed", c.resumes),
            ("session lost", c.sessions_lost),
            ("server-batched batch", c.server_batches),
            ("delivery", c.deliveries),
        ]);
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
    dump(&output);
}
