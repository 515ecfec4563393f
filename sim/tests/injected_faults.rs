//! Proof that the oracle can fail: the engine misbehaves on purpose, one way at a time,
//! and the oracle must name the matching guarantee within the CI case budget.
#![cfg(debug_assertions)]

use pushwire_sim::engine_level::{EngineSim, InjectedFault};
use pushwire_sim::oracle::{check, Guarantee};
use pushwire_sim::scenario::{generate, Shape};

/// Runs fault-free-network scenarios with `fault` armed until the oracle reports
/// `expected`; returns the seed that showed it.
fn caught(fault: InjectedFault, expected: Guarantee) -> u64 {
    let calm = Shape {
        faults: false,
        ..Shape::default()
    };
    caught_in(fault, expected, calm)
}

/// As [`caught`], with scenarios of the given shape.
fn caught_in(fault: InjectedFault, expected: Guarantee, shape: Shape) -> u64 {
    for seed in 0..300 {
        let scenario = generate(seed, shape);
        let mut sim = EngineSim::new(seed, scenario.clients, scenario.groups);
        sim.inject(fault);
        let output = sim.run(seed, &scenario);
        let violations = check(&output.record);
        if violations.iter().any(|v| v.guarantee == expected) {
            return seed;
        }
    }
    panic!("{fault:?} was never reported as {expected} in 300 scenarios");
}

#[test]
fn a_dropped_delivery_is_silent_loss() {
    caught(InjectedFault::DropDelivery(3), Guarantee::G5);
}

#[test]
fn a_duplicated_delivery_is_a_duplicate() {
    caught(InjectedFault::DuplicateDelivery(3), Guarantee::G3);
}

#[test]
fn swapped_deliveries_break_order() {
    caught(InjectedFault::SwapDeliveries(3), Guarantee::G2);
}

#[test]
fn a_delivery_to_a_non_member_is_stray() {
    caught(InjectedFault::Misdeliver(3), Guarantee::G4);
}

#[test]
fn a_skipped_presence_notice_breaks_presence() {
    caught(InjectedFault::SkipPresence(1), Guarantee::G6);
}

#[test]
fn an_rpc_answered_twice_breaks_exactly_once() {
    caught(InjectedFault::AnswerTwice(1), Guarantee::G7);
}

#[test]
fn a_request_answered_cancelled_though_never_cancelled_breaks_g7() {
    // The simulated service, not the engine, misbehaves: the oracle must see an end
    // Cancelled that no cancel explains.
    caught(InjectedFault::CancelledUnasked(1), Guarantee::G7);
}

#[test]
fn an_event_replayed_twice_on_resume_is_a_duplicate() {
    // Network faults are needed for resumes.
    caught_in(
        InjectedFault::ReplayTwice(1),
        Guarantee::G3,
        Shape::default(),
    );
}

#[test]
fn an_event_left_out_of_a_replay_without_a_gap_is_silent_loss() {
    caught_in(
        InjectedFault::ReplaySkip(1),
        Guarantee::G5,
        Shape::default(),
    );
}

#[test]
fn without_a_fault_the_same_scenarios_pass() {
    let shape = Shape {
        faults: false,
        ..Shape::default()
    };
    for seed in 0..50 {
        let scenario = generate(seed, shape);
        let output = EngineSim::new(seed, scenario.clients, scenario.groups).run(seed, &scenario);
        assert_eq!(check(&output.record), vec![], "seed {seed}");
    }
}
