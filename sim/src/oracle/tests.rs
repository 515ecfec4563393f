//! The oracle on small hand-written histories, good and bad.

use super::*;
use crate::history::RequestRecord;

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

#[test]
fn requests_end_exactly_once_and_in_order() {
    let mut run = run_with(b_expected());
    let request = |id, outcomes| RequestRecord {
        id,
        expected_result: Bytes::from_static(b"x"),
        outcomes,
    };
    run.sessions[0].requests = vec![
        request(1, vec![Outcome::Result(Bytes::from_static(b"x"))]),
        request(2, vec![Outcome::Result(Bytes::from_static(b"x"))]),
    ];
    run.sessions[0].result_order = vec![1, 2];
    assert_eq!(check(&run), vec![]);

    run.sessions[0].result_order = vec![2, 1];
    assert_eq!(guarantees(&run), vec![Guarantee::G7]);

    run.sessions[0].result_order = vec![1, 2];
    run.sessions[0].requests[1].outcomes.push(Outcome::Aborted);
    assert_eq!(guarantees(&run), vec![Guarantee::G7]);

    run.sessions[0].requests[1].outcomes.clear();
    assert_eq!(guarantees(&run), vec![Guarantee::G7]);
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
