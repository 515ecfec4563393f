//! The oracle on small hand-written histories, good and bad.

use super::*;
use crate::history::{CancelRecord, Ended, RequestRecord};
use pushwire_engine::client::CancelOutcome;
use pushwire_protocol::ErrorCode;

fn key(client: u32) -> SessionKey {
    SessionKey { client, session: 0 }
}

fn publication(origin: Origin, n: u32) -> Bytes {
    MessageId {
        origin,
        publication: true,
        n,
    }
    .payload(8)
}

/// a and b subscribe to group 1, a publishes twice.
fn journal() -> Vec<JournalEntry> {
    let (a, b) = (key(0), key(1));
    vec![
        JournalEntry::Connected {
            session: a,
            echo: false,
        },
        JournalEntry::Connected {
            session: b,
            echo: true,
        },
        JournalEntry::Subscribe {
            session: a,
            groups: vec![1],
        },
        JournalEntry::Subscribe {
            session: b,
            groups: vec![1],
        },
        JournalEntry::Publish {
            origin: Origin::Session(a),
            groups: vec![1],
            payload: publication(Origin::Session(a), 1),
        },
        JournalEntry::Publish {
            origin: Origin::Session(a),
            groups: vec![1],
            payload: publication(Origin::Session(a), 2),
        },
    ]
}

fn run_with(b_received: Vec<Received>) -> RunRecord {
    let expected = expected_events(&journal());
    let mut a = SessionHistory::new(key(0), false);
    a.received = expected[&key(0)].clone();
    a.intact = true;
    let mut b = SessionHistory::new(key(1), true);
    b.received = b_received;
    b.intact = true;
    RunRecord {
        seed: 1,
        sessions: vec![a, b],
        journal: journal(),
        queue_breaches: vec![],
        flow: None,
        rpc_breaches: vec![],
    }
}

fn guarantees(run: &RunRecord) -> Vec<Guarantee> {
    let mut g: Vec<Guarantee> = check(run).into_iter().map(|v| v.guarantee).collect();
    g.dedup();
    g
}

fn b_expected() -> Vec<Received> {
    expected_events(&journal())[&key(1)].clone()
}

#[test]
fn the_expected_events_follow_the_hub_contract() {
    let b = b_expected();
    // b: its own Subscribed, then two publications from a (a is told b joined).
    assert_eq!(b.len(), 3);
    assert!(matches!(
        &b[0],
        Received::Subscribed {
            seq: 1,
            is_self: true,
            ..
        }
    ));
    assert!(matches!(&b[2], Received::Published { seq: 3, groups, .. } if groups == &[1]));
    let a = &expected_events(&journal())[&key(0)];
    assert!(
        matches!(&a[1], Received::Subscribed { from: Origin::Session(k), is_self: false, .. } if *k == key(1))
    );
    assert_eq!(
        a.len(),
        2,
        "a has echo off: no copies of its own publications"
    );
}

#[test]
fn a_faithful_run_passes() {
    assert_eq!(check(&run_with(b_expected())), vec![]);
}

#[test]
fn a_lost_publication_is_g5_and_a_lost_presence_event_g6() {
    let mut b = b_expected();
    b.remove(1);
    let g = guarantees(&run_with(b.clone()));
    assert!(g.contains(&Guarantee::G5), "{g:?}");

    let mut a_view = expected_events(&journal())[&key(0)].clone();
    a_view.remove(1);
    let mut run = run_with(b_expected());
    run.sessions[0].received = a_view;
    assert!(guarantees(&run).contains(&Guarantee::G6));
}

#[test]
fn loss_in_a_session_that_was_cut_off_is_tolerated_only_at_the_end() {
    let mut b = b_expected();
    b.pop();
    let mut run = run_with(b);
    run.sessions[1].intact = false;
    assert_eq!(check(&run), vec![], "a cut-off session may miss its tail");

    let mut b = b_expected();
    b.remove(1);
    let mut run = run_with(b);
    run.sessions[1].intact = false;
    assert!(
        guarantees(&run).contains(&Guarantee::G5),
        "but never a hole"
    );
}

#[test]
fn a_duplicate_is_g3() {
    let mut b = b_expected();
    b.push(b[2].with_seq(4));
    assert!(guarantees(&run_with(b)).contains(&Guarantee::G3));
}

#[test]
fn swapped_publications_are_g2() {
    let mut b = b_expected();
    b.swap(1, 2);
    let (first, second) = (b[1].with_seq(2), b[2].with_seq(3));
    b[1] = first;
    b[2] = second;
    assert!(guarantees(&run_with(b)).contains(&Guarantee::G2));
}

#[test]
fn a_delivery_to_a_non_member_is_g4() {
    let mut run = run_with(b_expected());
    let c = key(2);
    run.journal.insert(
        0,
        JournalEntry::Connected {
            session: c,
            echo: true,
        },
    );
    let mut history = SessionHistory::new(c, true);
    history.received.push(b_expected()[1].with_seq(1));
    run.sessions.push(history);
    assert!(guarantees(&run).contains(&Guarantee::G4));
}

#[test]
fn corrupted_bytes_are_g1() {
    let mut b = b_expected();
    if let Received::Published { payload, .. } = &mut b[2] {
        let mut bytes = payload.to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        *payload = Bytes::from(bytes);
    }
    assert!(guarantees(&run_with(b)).contains(&Guarantee::G1));
}

fn end(ms: u64, outcome: Outcome) -> Ended {
    Ended { ms, outcome }
}

fn result(ms: u64) -> Ended {
    end(ms, Outcome::Result(Bytes::from_static(b"x")))
}

fn request(id: u64, outcomes: Vec<Ended>) -> RequestRecord {
    RequestRecord {
        outcomes,
        ..RequestRecord::new(id, Bytes::from_static(b"x"))
    }
}

fn cancelled(ms: u64, outcome: CancelOutcome, ended_before: usize) -> CancelRecord {
    CancelRecord {
        ms,
        outcome,
        ended_before,
    }
}

#[test]
fn requests_end_exactly_once_and_in_order() {
    let mut run = run_with(b_expected());
    run.sessions[0].requests = vec![request(1, vec![result(10)]), request(2, vec![result(11)])];
    run.sessions[0].result_order = vec![1, 2];
    assert_eq!(check(&run), vec![]);

    run.sessions[0].result_order = vec![2, 1];
    assert_eq!(guarantees(&run), vec![Guarantee::G7]);

    run.sessions[0].result_order = vec![1, 2];
    run.sessions[0].requests[1]
        .outcomes
        .push(end(12, Outcome::Aborted));
    assert_eq!(guarantees(&run), vec![Guarantee::G7]);

    run.sessions[0].requests[1].outcomes.clear();
    assert_eq!(guarantees(&run), vec![Guarantee::G7]);
}

// --- Cancels --------------------------------------------------------------------------

/// A session of protocol `version` whose requests are `requests` (results of
/// requests with a result are in request order).
fn with_requests(version: u16, requests: Vec<RequestRecord>) -> RunRecord {
    let mut run = run_with(b_expected());
    let history = &mut run.sessions[0];
    history.version = Some(version);
    history.result_order = requests
        .iter()
        .filter(|r| {
            r.outcomes
                .iter()
                .any(|e| matches!(e.outcome, Outcome::Result(_) | Outcome::ServerError(_)))
        })
        .map(|r| r.id)
        .collect();
    history.requests = requests;
    run
}

/// The G7 violations' details.
fn rpc_violations(run: &RunRecord) -> Vec<String> {
    check(run)
        .into_iter()
        .filter(|v| v.guarantee == Guarantee::G7)
        .map(|v| v.detail)
        .collect()
}

/// Asserts that G7 is reported, by `rule`, naming request `id` and the seed.
fn assert_rule(run: &RunRecord, rule: &str, id: u64) {
    let found = rpc_violations(run);
    let tag = format!("[{rule}]");
    let request = format!("request {id}");
    let seed = format!("(seed {})", run.seed);
    assert!(
        found
            .iter()
            .any(|d| d.contains(&tag) && d.contains(&request) && d.ends_with(&seed)),
        "expected a G7 violation of {tag} naming {request} and the seed, got {found:?}"
    );
}

/// Request 1 with `outcomes` and `cancels`; request 2 ended with its result.
fn cancel_story(version: u16, outcomes: Vec<Ended>, cancels: Vec<CancelRecord>) -> RunRecord {
    let mut first = request(1, outcomes);
    first.cancels = cancels;
    with_requests(version, vec![first, request(2, vec![result(300)])])
}

#[test]
fn faithful_cancels_pass() {
    use CancelOutcome::*;
    let server_cancelled = end(120, Outcome::ServerError(ErrorCode::Cancelled));
    let stories = [
        // Dropped before it started, or its handler stopped.
        (
            3,
            vec![server_cancelled.clone()],
            vec![cancelled(100, SentToServer, 0)],
        ),
        // Too late: its result came anyway.
        (3, vec![result(120)], vec![cancelled(100, SentToServer, 0)]),
        // The connection ended first.
        (
            3,
            vec![end(120, Outcome::Aborted)],
            vec![cancelled(100, SentToServer, 0)],
        ),
        // A second cancel finds it cancelled already; a third one, after the end.
        (
            3,
            vec![server_cancelled],
            vec![
                cancelled(100, SentToServer, 0),
                cancelled(101, AlreadySent, 0),
                cancelled(200, NotOutstanding, 1),
            ],
        ),
        // Taken out of an open batch (any version), ended locally (version 2).
        (
            3,
            vec![end(100, Outcome::Cancelled)],
            vec![cancelled(100, RemovedFromBatch, 0)],
        ),
        (
            2,
            vec![end(100, Outcome::Cancelled)],
            vec![cancelled(100, EndedLocally, 0)],
        ),
        // Cancelled after it ended.
        (3, vec![result(90)], vec![cancelled(100, NotOutstanding, 1)]),
    ];
    for (version, outcomes, cancels) in stories {
        let run = cancel_story(version, outcomes.clone(), cancels.clone());
        assert_eq!(check(&run), vec![], "{outcomes:?} {cancels:?}");
    }
}

#[test]
fn a_request_reported_cancelled_that_was_never_cancelled_is_g7() {
    for outcome in [
        Outcome::Cancelled,
        Outcome::ServerError(ErrorCode::Cancelled),
    ] {
        let run = cancel_story(3, vec![end(100, outcome)], vec![]);
        assert_rule(&run, "cancelled-only-if-cancelled", 1);
        assert!(rpc_violations(&run)[0].contains("never cancelled"));
    }
    // Cancelled after it ended Cancelled: the cancel came too late to explain it.
    let run = cancel_story(
        3,
        vec![end(100, Outcome::ServerError(ErrorCode::Cancelled))],
        vec![cancelled(150, CancelOutcome::NotOutstanding, 1)],
    );
    assert_rule(&run, "cancelled-only-if-cancelled", 1);
    // A local end Cancelled after a cancel that went to the server.
    let run = cancel_story(
        3,
        vec![end(100, Outcome::Cancelled)],
        vec![cancelled(100, CancelOutcome::SentToServer, 0)],
    );
    assert_rule(&run, "cancelled-only-if-cancelled", 1);
    assert_rule(&run, "sent-cancel-ends-by-the-server", 1);
    // A server's Cancelled after a cancel that ended it locally (and twice).
    let run = cancel_story(
        2,
        vec![
            end(100, Outcome::Cancelled),
            end(150, Outcome::ServerError(ErrorCode::Cancelled)),
        ],
        vec![cancelled(100, CancelOutcome::EndedLocally, 0)],
    );
    assert_rule(&run, "cancelled-only-if-cancelled", 1);
}

#[test]
fn a_result_after_a_local_cancel_is_g7() {
    for (version, outcome) in [
        (2, CancelOutcome::EndedLocally),
        (3, CancelOutcome::RemovedFromBatch),
    ] {
        // Ended Cancelled, then its result too: twice.
        let run = cancel_story(
            version,
            vec![end(100, Outcome::Cancelled), result(140)],
            vec![cancelled(100, outcome, 0)],
        );
        assert_rule(&run, "exactly-once", 1);
        assert_rule(&run, "local-cancel-ends-at-once", 1);
        // Only its result: the cancel said it ended.
        let run = cancel_story(version, vec![result(140)], vec![cancelled(100, outcome, 0)]);
        assert_rule(&run, "local-cancel-ends-at-once", 1);
        // Ended Cancelled, but later, not at once.
        let run = cancel_story(
            version,
            vec![end(101, Outcome::Cancelled)],
            vec![cancelled(100, outcome, 0)],
        );
        assert_rule(&run, "local-cancel-ends-at-once", 1);
        // Never ended.
        let run = cancel_story(version, vec![], vec![cancelled(100, outcome, 0)]);
        assert_rule(&run, "local-cancel-ends-at-once", 1);
        assert_rule(&run, "exactly-once", 1);
    }
}

#[test]
fn a_cancel_outcome_that_contradicts_the_request_is_g7() {
    use CancelOutcome::*;
    // NotOutstanding for a request that had not ended and was not cancelled before.
    let run = cancel_story(
        3,
        vec![result(140)],
        vec![cancelled(100, NotOutstanding, 0)],
    );
    assert_rule(&run, "not-outstanding", 1);
    // AlreadySent without a Cancel sent before.
    let run = cancel_story(3, vec![result(140)], vec![cancelled(100, AlreadySent, 0)]);
    assert_rule(&run, "not-outstanding", 1);
    // Anything else for one that had ended, or was cancelled before.
    let run = cancel_story(3, vec![result(90)], vec![cancelled(100, SentToServer, 1)]);
    assert_rule(&run, "not-outstanding", 1);
    let run = cancel_story(
        3,
        vec![result(140)],
        vec![
            cancelled(100, SentToServer, 0),
            cancelled(101, SentToServer, 0),
        ],
    );
    assert_rule(&run, "not-outstanding", 1);
    // A cancel sent on version 2, or ended locally on version 3.
    let run = cancel_story(2, vec![result(140)], vec![cancelled(100, SentToServer, 0)]);
    assert_rule(&run, "cancel-fits-the-version", 1);
    let run = cancel_story(
        3,
        vec![end(100, Outcome::Cancelled)],
        vec![cancelled(100, EndedLocally, 0)],
    );
    assert_rule(&run, "cancel-fits-the-version", 1);
}

#[test]
fn rpc_breaches_seen_by_the_harness_are_g7() {
    let mut run = run_with(b_expected());
    run.rpc_breaches
        .push("c0s0: request 3 was handed to the application while 2 calls ran".into());
    assert_eq!(guarantees(&run), vec![Guarantee::G7]);
    assert!(rpc_violations(&run)[0].ends_with("(seed 1)"));
}

#[test]
fn queue_breaches_are_g8_and_violations_name_the_session() {
    let mut run = run_with(b_expected());
    run.queue_breaches.push("c0s0 held 9 MiB".into());
    assert_eq!(guarantees(&run), vec![Guarantee::G8]);
    let mut b = b_expected();
    b.remove(1);
    let text = check(&run_with(b))[0].to_string();
    assert!(text.contains("c1s0") && text.contains("G5"), "{text}");
}

// --- Flow control --------------------------------------------------------------------

use crate::history::{Behaviour, FlowObservation, FlowRecord, Observed, ReaderRecord, ShedPolicy};

/// Connection ids of a and b in the flow records below.
const A: u64 = 0;
const B: u64 = 1;

fn observation(ms: u64, conn: u64, what: Observed) -> FlowObservation {
    FlowObservation {
        ms,
        conn,
        session: key(conn as u32),
        what,
    }
}

fn congested(ms: u64, conn: u64) -> FlowObservation {
    observation(
        ms,
        conn,
        Observed::Congested {
            queued: 9_000,
            transport_full: true,
            counted: true,
        },
    )
}

/// a's second publication (journal entry 5) reached b, congested: a is held.
fn held_for_b(ms: u64) -> FlowObservation {
    observation(
        ms,
        A,
        Observed::Held {
            journal: (5, 6),
            congested: vec![key(1)],
        },
    )
}

/// The faithful story: b falls behind at 100 ms, which holds a back; b catches up
/// at 150 ms and a is read again at once.
fn faithful_flow() -> Vec<FlowObservation> {
    vec![
        congested(100, B),
        held_for_b(100),
        observation(150, B, Observed::Drained),
        observation(150, A, Observed::Released),
    ]
}

fn with_flow(policy: ShedPolicy, observations: Vec<FlowObservation>) -> RunRecord {
    let mut run = run_with(b_expected());
    run.flow = Some(FlowRecord {
        high_water: 8_192,
        low_water: 4_096,
        grace_ms: 200,
        tick_ms: 1,
        policy,
        readers: Vec::new(),
        observations,
        end_ms: 1_000,
    });
    run
}

fn with_reader(mut run: RunRecord, behaviour: Behaviour, fair: bool) -> RunRecord {
    run.flow
        .as_mut()
        .expect("a flow record")
        .readers
        .push(ReaderRecord {
            session: key(1),
            behaviour,
            fair,
        });
    run
}

/// The flow-control violations' details.
fn flow_violations(run: &RunRecord) -> Vec<String> {
    check(run)
        .into_iter()
        .filter(|v| v.guarantee == Guarantee::G8 && v.detail.starts_with("flow control"))
        .map(|v| v.detail)
        .collect()
}

fn assert_flagged(run: &RunRecord, phrase: &str) {
    let found = flow_violations(run);
    assert!(
        found.iter().any(|d| d.contains(phrase)),
        "expected a flow-control violation mentioning {phrase:?}, got {found:?}"
    );
}

#[test]
fn a_faithful_flow_record_passes() {
    for policy in [ShedPolicy::Disconnect, ShedPolicy::DropOldest] {
        assert_eq!(check(&with_flow(policy, faithful_flow())), vec![]);
    }
}

#[test]
fn a_congestion_that_outlasts_the_grace_is_g8() {
    let late = vec![congested(100, B), observation(302, B, Observed::Drained)];
    assert_flagged(
        &with_flow(ShedPolicy::Disconnect, late),
        "congested from 100 ms to 302 ms",
    );
    // Within the grace and a tick: fine.
    let in_time = vec![congested(100, B), observation(301, B, Observed::Drained)];
    assert_eq!(
        flow_violations(&with_flow(ShedPolicy::Disconnect, in_time)),
        Vec::<String>::new()
    );
    // Never ending at all.
    assert_flagged(
        &with_flow(ShedPolicy::DropOldest, vec![congested(100, B)]),
        "to the end of the run",
    );
    // A mailbox over the mark that the node did not count (a notice took it over)
    // is not a congestion the node answers for.
    let uncounted = vec![observation(
        100,
        B,
        Observed::Congested {
            queued: 8_200,
            transport_full: true,
            counted: false,
        },
    )];
    assert_eq!(
        flow_violations(&with_flow(ShedPolicy::DropOldest, uncounted)),
        Vec::<String>::new()
    );
}

#[test]
fn a_publisher_held_without_reaching_a_congested_receiver_is_g8() {
    let phrase = "reached no congested receiver";
    // Its publication reached b, but b was not congested.
    let mut flow = faithful_flow();
    flow[1] = observation(
        100,
        A,
        Observed::Held {
            journal: (5, 6),
            congested: vec![],
        },
    );
    assert_flagged(&with_flow(ShedPolicy::Disconnect, flow), phrase);
    // Held by a call that ran none of its commands.
    let mut flow = faithful_flow();
    flow[1] = observation(
        100,
        A,
        Observed::Held {
            journal: (6, 6),
            congested: vec![key(1)],
        },
    );
    assert_flagged(&with_flow(ShedPolicy::Disconnect, flow), phrase);
    // Held for itself alone (its own echo is no reason).
    let flow = vec![
        congested(100, A),
        observation(
            100,
            A,
            Observed::Held {
                journal: (4, 6),
                congested: vec![key(0)],
            },
        ),
    ];
    assert_flagged(&with_flow(ShedPolicy::Disconnect, flow), phrase);
    // a's subscription (entry 2) came before b's: it reached no one else.
    let flow = vec![
        congested(100, B),
        observation(
            100,
            A,
            Observed::Held {
                journal: (2, 3),
                congested: vec![key(1)],
            },
        ),
    ];
    assert_flagged(&with_flow(ShedPolicy::Disconnect, flow), phrase);
}

#[test]
fn a_publisher_still_held_after_its_receivers_drained_is_g8() {
    let phrase = "none of them congested since 150 ms";
    let mut flow = faithful_flow();
    flow[3].ms = 152;
    assert_flagged(&with_flow(ShedPolicy::Disconnect, flow), phrase);
    // One tick later is allowed.
    let mut flow = faithful_flow();
    flow[3].ms = 151;
    assert_eq!(
        flow_violations(&with_flow(ShedPolicy::Disconnect, flow)),
        Vec::<String>::new()
    );
    // Never released, or only when its connection ended.
    let mut flow = faithful_flow();
    flow.pop();
    assert_flagged(&with_flow(ShedPolicy::Disconnect, flow.clone()), phrase);
    flow.push(observation(400, A, Observed::Gone));
    assert_flagged(&with_flow(ShedPolicy::Disconnect, flow), phrase);
}

#[test]
fn a_slow_reader_cut_or_given_a_gap_is_g8() {
    let slow = Behaviour::Slow { bytes_per_ms: 150 };
    let phrase = "a reader that kept reading (150 bytes/ms)";
    let good = with_reader(
        with_flow(ShedPolicy::Disconnect, faithful_flow()),
        slow,
        true,
    );
    assert_eq!(check(&good), vec![]);

    let mut flow = faithful_flow();
    flow.push(observation(300, B, Observed::CutSlowConsumer));
    let cut = with_reader(with_flow(ShedPolicy::Disconnect, flow), slow, true);
    assert_flagged(
        &cut,
        &format!("{phrase} was cut as a slow consumer at 300 ms"),
    );

    let mut gap = good.clone();
    let b = &mut gap.sessions[1].received;
    b[2] = Received::Gap { first: 3, last: 3 };
    assert_flagged(&gap, &format!("{phrase} got Gap 3..=3"));

    let mut gone = good.clone();
    gone.sessions[1].intact = false;
    assert_flagged(&gone, &format!("{phrase} was not connected at the end"));

    // No claim where the simulator's conditions were not fair (say, a server
    // restart cut it off).
    let mut flow = faithful_flow();
    flow.push(observation(300, B, Observed::CutSlowConsumer));
    let unfair = with_reader(with_flow(ShedPolicy::Disconnect, flow), slow, false);
    assert_eq!(flow_violations(&unfair), Vec::<String>::new());
}

#[test]
fn a_stopped_reader_neither_cut_nor_shed_within_the_grace_is_g8() {
    let stopped = Behaviour::Stopped {
        from_ms: 50,
        until_ms: 900,
    };
    let phrase = "a reader that stopped reading at 50 ms was congested at 100 ms";
    // It becomes congested, its transport full: the policy must act by 301 ms.
    let story = |tail: Vec<FlowObservation>| {
        let mut flow = vec![congested(100, B), held_for_b(100)];
        flow.extend(tail);
        flow
    };
    let cut = story(vec![
        observation(300, B, Observed::CutSlowConsumer),
        observation(300, B, Observed::Drained),
        observation(300, A, Observed::Released),
    ]);
    let run = with_reader(
        with_flow(ShedPolicy::Disconnect, cut.clone()),
        stopped,
        true,
    );
    assert_eq!(flow_violations(&run), Vec::<String>::new());
    // Cut one tick too late (and its congestion outlasted the grace).
    let mut late = cut.clone();
    for o in &mut late[2..] {
        o.ms = 302;
    }
    let run = with_reader(with_flow(ShedPolicy::Disconnect, late), stopped, true);
    assert_flagged(&run, &format!("{phrase} (9000 bytes queued, its transport full) and not closed as a slow consumer by 301 ms"));
    // Released without the policy acting: the congestion ended in time, but a
    // reader that takes nothing cannot have drained.
    let drained = story(vec![
        observation(300, B, Observed::Drained),
        observation(300, A, Observed::Released),
    ]);
    let run = with_reader(
        with_flow(ShedPolicy::Disconnect, drained.clone()),
        stopped,
        true,
    );
    assert_flagged(&run, "not closed as a slow consumer");
    // Under drop-oldest, a shed to the low-water mark is the policy; the reader,
    // connected at the end, must have got a Gap for it.
    let shed = story(vec![
        observation(300, B, Observed::Shed { queued: 3_000 }),
        observation(300, B, Observed::Drained),
        observation(300, A, Observed::Released),
    ]);
    let mut run = with_reader(
        with_flow(ShedPolicy::DropOldest, shed.clone()),
        stopped,
        true,
    );
    assert_flagged(&run, "never got a Gap");
    run.sessions[1].received[2] = Received::Gap { first: 3, last: 3 };
    assert_eq!(flow_violations(&run), Vec::<String>::new());
    // Dropping a little at the hard limit is not the shed the grace calls for.
    let mut partial = shed.clone();
    partial[2].what = Observed::Shed { queued: 60_000 };
    let run = with_reader(with_flow(ShedPolicy::DropOldest, partial), stopped, true);
    assert_flagged(&run, "not shed to the low-water mark by 301 ms");
    // Nothing is claimed for a congestion too close to the end of the stop, nor
    // when the transport could still take frames.
    let short = Behaviour::Stopped {
        from_ms: 50,
        until_ms: 250,
    };
    let run = with_reader(
        with_flow(ShedPolicy::Disconnect, drained.clone()),
        short,
        true,
    );
    assert_eq!(flow_violations(&run), Vec::<String>::new());
    let mut open = drained;
    open[0].what = Observed::Congested {
        queued: 9_000,
        transport_full: false,
        counted: true,
    };
    let run = with_reader(with_flow(ShedPolicy::Disconnect, open), stopped, true);
    assert_eq!(flow_violations(&run), Vec::<String>::new());
}
