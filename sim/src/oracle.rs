//! The oracle: checks a run's record against the delivery guarantees G1–G8.
//!
//! From the server's journal it computes, for every session, the exact sequence of
//! push events the hub must have sent it (with their sequence numbers), then aligns
//! what the session received against that sequence:
//!
//! - every received event must be the next expected one (possibly after some that
//!   were skipped, which is loss: G5 for messages, G6 for presence), with the expected
//!   sequence number;
//! - an event that matches nothing expected is a stray delivery (G4) or, when its
//!   identity is known but its bytes or sender differ, an integrity failure (G1);
//!   one that matches an earlier expected event is a duplicate (G3) or out of order
//!   (G2);
//! - an intact session (connected at the end, never cut off) must have received all
//!   of its expected sequence (G5, G6);
//! - every request ends exactly once, results in request order, with the right
//!   result (G7); a request ends Cancelled only after a cancel that could end it so,
//!   and each cancel's outcome agrees with how the request ended (`check_requests`
//!   lists the rules); the harness's queue observations must show no breach (G8);
//! - in a run with flow control, what the harness saw of congested receivers and
//!   held publishers follows flow control's rules (G8: a receiver that falls behind
//!   is handled by the policy within the grace, publishers are held back only for
//!   receivers they reach, a slow but steady reader is never cut); see
//!   [`FlowRecord`].

use crate::history::{
    Behaviour, CancelRecord, Ended, FlowRecord, JournalEntry, LeaveCause, MessageId, Observed,
    Origin, Outcome, Received, RequestRecord, RunRecord, SessionHistory, SessionKey, ShedPolicy,
};
use bytes::Bytes;
use pushwire_engine::client::CancelOutcome;
use pushwire_protocol::ErrorCode;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The delivery guarantees of the design brief.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Guarantee {
    /// Integrity.
    G1,
    /// Per-publisher FIFO.
    G2,
    /// No duplicates.
    G3,
    /// No stray delivery.
    G4,
    /// No silent loss.
    G5,
    /// Presence consistency.
    G6,
    /// RPC: exactly once, in order.
    G7,
    /// Bounded memory.
    G8,
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guarantee::G1 => "G1 integrity",
            Guarantee::G2 => "G2 per-publisher order",
            Guarantee::G3 => "G3 no duplicates",
            Guarantee::G4 => "G4 no stray delivery",
            Guarantee::G5 => "G5 no silent loss",
            Guarantee::G6 => "G6 presence consistency",
            Guarantee::G7 => "G7 RPC exactly once, in order",
            Guarantee::G8 => "G8 bounded queues",
        })
    }
}

/// One broken guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which guarantee.
    pub guarantee: Guarantee,
    /// The receiving session, when there is one.
    pub session: Option<SessionKey>,
    /// What happened, naming the messages.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.session {
            Some(s) => write!(f, "{} violated at {s}: {}", self.guarantee, self.detail),
            None => write!(f, "{} violated: {}", self.guarantee, self.detail),
        }
    }
}

/// Checks a run; an empty result means every guarantee held.
pub fn check(run: &RunRecord) -> Vec<Violation> {
    let (expected, recipients) = replay(&run.journal);
    let published: BTreeMap<MessageId, &Bytes> = run
        .journal
        .iter()
        .filter_map(|e| match e {
            JournalEntry::Publish { payload, .. } | JournalEntry::UserMessage { payload, .. } => {
                MessageId::parse(payload).map(|id| (id, payload))
            }
            _ => None,
        })
        .collect();
    let mut violations = Vec::new();
    let empty = Vec::new();
    for history in &run.sessions {
        let want = expected.get(&history.key).unwrap_or(&empty);
        check_session(history, want, &published, &mut violations);
        check_requests(history, run.seed, &mut violations);
    }
    // G3 across a client's sessions: one client never gets a message twice.
    let mut seen: BTreeMap<u32, BTreeSet<MessageId>> = BTreeMap::new();
    for history in &run.sessions {
        let mine = seen.entry(history.key.client).or_default();
        let mut this_session = BTreeSet::new();
        for id in history.received.iter().filter_map(Received::message_id) {
            if mine.contains(&id) && !this_session.contains(&id) {
                violations.push(Violation {
                    guarantee: Guarantee::G3,
                    session: Some(history.key),
                    detail: format!("{id} arrived again after an earlier session got it"),
                });
            }
            this_session.insert(id);
        }
        mine.extend(this_session);
    }
    for breach in &run.rpc_breaches {
        violations.push(Violation {
            guarantee: Guarantee::G7,
            session: None,
            detail: format!("{breach} (seed {})", run.seed),
        });
    }
    for breach in &run.queue_breaches {
        violations.push(Violation {
            guarantee: Guarantee::G8,
            session: None,
            detail: breach.clone(),
        });
    }
    if let Some(flow) = &run.flow {
        check_flow(run, flow, &recipients, &mut violations);
    }
    violations
}

/// Replays the journal: the exact push events each session must get, in order,
/// with their sequence numbers.
///
/// A session key is used by one session, except when a resume fails: the server then
/// starts a new session under the same user id (which the harnesses stop recording
/// at once). Such a reincarnation is tracked as a separate session internally, so
/// its own membership does not mix with the first one's; other sessions still see it
/// under the same key, as they would.
pub fn expected_events(journal: &[JournalEntry]) -> BTreeMap<SessionKey, Vec<Received>> {
    replay(journal).0
}

/// [`expected_events`], and for each journal entry the sessions it delivered to.
fn replay(
    journal: &[JournalEntry],
) -> (
    BTreeMap<SessionKey, Vec<Received>>,
    Vec<BTreeSet<SessionKey>>,
) {
    type Internal = (SessionKey, u32);
    struct Out {
        events: BTreeMap<Internal, Vec<Received>>,
        /// Who the current entry reached.
        reached: BTreeSet<SessionKey>,
    }
    let mut incarnation: BTreeMap<SessionKey, u32> = BTreeMap::new();
    let mut ended: BTreeSet<SessionKey> = BTreeSet::new();
    let mut online: BTreeMap<Internal, bool> = BTreeMap::new();
    let mut members: BTreeMap<Internal, BTreeSet<u32>> = BTreeMap::new();
    let mut out = Out {
        events: BTreeMap::new(),
        reached: BTreeSet::new(),
    };
    let mut recipients = Vec::with_capacity(journal.len());
    let push = |out: &mut Out, to: Internal, event: Received| {
        out.reached.insert(to.0);
        let list = out.events.entry(to).or_default();
        let seq = list.len() as u64 + 1;
        list.push(event.with_seq(seq));
    };
    let shared = |members: &BTreeMap<Internal, BTreeSet<u32>>, other: &Internal, groups: &[u32]| {
        let mine = members.get(other);
        groups
            .iter()
            .copied()
            .filter(|g| mine.is_some_and(|m| m.contains(g)))
            .collect::<Vec<u32>>()
    };
    let current = |incarnation: &BTreeMap<SessionKey, u32>, key: SessionKey| -> Internal {
        (key, incarnation.get(&key).copied().unwrap_or(0))
    };
    for entry in journal {
        match entry {
            JournalEntry::Connected { session, echo } => {
                if ended.remove(session) {
                    *incarnation.entry(*session).or_default() += 1;
                }
                online.insert(current(&incarnation, *session), *echo);
            }
            JournalEntry::Disconnected { session } => {
                let me = current(&incarnation, *session);
                online.remove(&me);
                members.remove(&me);
                ended.insert(*session);
            }
            JournalEntry::Subscribe { session, groups } => {
                let me = current(&incarnation, *session);
                push(
                    &mut out,
                    me,
                    Received::Subscribed {
                        seq: 0,
                        from: Origin::Session(*session),
                        is_self: true,
                        groups: groups.clone(),
                    },
                );
                for other in online.keys().filter(|o| **o != me) {
                    let common = shared(&members, other, groups);
                    if !common.is_empty() {
                        push(
                            &mut out,
                            *other,
                            Received::Subscribed {
                                seq: 0,
                                from: Origin::Session(*session),
                                is_self: false,
                                groups: common,
                            },
                        );
                    }
                }
                members
                    .entry(me)
                    .or_default()
                    .extend(groups.iter().copied());
            }
            JournalEntry::Unsubscribe {
                session,
                groups,
                cause,
            } => {
                let me = current(&incarnation, *session);
                if *cause != LeaveCause::Disconnect {
                    push(
                        &mut out,
                        me,
                        Received::Unsubscribed {
                            seq: 0,
                            from: Origin::Session(*session),
                            is_self: true,
                            groups: groups.clone(),
                        },
                    );
                }
                if *cause != LeaveCause::GroupRemoved {
                    for other in online.keys().filter(|o| **o != me) {
                        let common = shared(&members, other, groups);
                        if !common.is_empty() {
                            push(
                                &mut out,
                                *other,
                                Received::Unsubscribed {
                                    seq: 0,
                                    from: Origin::Session(*session),
                                    is_self: false,
                                    groups: common,
                                },
                            );
                        }
                    }
                }
                if let Some(m) = members.get_mut(&me) {
                    for g in groups {
                        m.remove(g);
                    }
                }
            }
            JournalEntry::Publish {
                origin,
                groups,
                payload,
            } => {
                let actor = match origin {
                    Origin::Session(s) => Some(current(&incarnation, *s)),
                    Origin::Server => None,
                };
                if let Some(actor) = actor {
                    if online.get(&actor) == Some(&true) {
                        push(
                            &mut out,
                            actor,
                            Received::Published {
                                seq: 0,
                                from: *origin,
                                is_self: true,
                                groups: groups.clone(),
                                payload: payload.clone(),
                            },
                        );
                    }
                }
                for other in online.keys() {
                    if Some(*other) == actor {
                        continue;
                    }
                    let common = shared(&members, other, groups);
                    if !common.is_empty() {
                        push(
                            &mut out,
                            *other,
                            Received::Published {
                                seq: 0,
                                from: *origin,
                                is_self: false,
                                groups: common,
                                payload: payload.clone(),
                            },
                        );
                    }
                }
            }
            JournalEntry::UserMessage {
                origin,
                receiver,
                payload,
            } => {
                let actor = match origin {
                    Origin::Session(s) => Some(current(&incarnation, *s)),
                    Origin::Server => None,
                };
                if let Some(actor) = actor {
                    if online.get(&actor) == Some(&true) {
                        push(
                            &mut out,
                            actor,
                            Received::UserMessage {
                                seq: 0,
                                from: *origin,
                                is_self: true,
                                payload: payload.clone(),
                            },
                        );
                    }
                }
                let receiver = receiver.to_lowercase();
                for other in online.keys() {
                    if Some(*other) == actor || other.0.user_id().to_lowercase() != receiver {
                        continue;
                    }
                    push(
                        &mut out,
                        *other,
                        Received::UserMessage {
                            seq: 0,
                            from: *origin,
                            is_self: false,
                            payload: payload.clone(),
                        },
                    );
                }
            }
        }
        recipients.push(std::mem::take(&mut out.reached));
    }
    // Histories are recorded for first incarnations only.
    let expected = out
        .events
        .into_iter()
        .filter(|((_, incarnation), _)| *incarnation == 0)
        .map(|((key, _), events)| (key, events))
        .collect();
    (expected, recipients)
}

fn is_presence(e: &Received) -> bool {
    matches!(
        e,
        Received::Subscribed { .. } | Received::Unsubscribed { .. }
    )
}

fn describe(e: &Received) -> String {
    match e {
        Received::Subscribed {
            seq, from, groups, ..
        } => format!("Subscribed #{seq} ({from} joins {groups:?})"),
        Received::Unsubscribed {
            seq, from, groups, ..
        } => format!("Unsubscribed #{seq} ({from} leaves {groups:?})"),
        Received::Published {
            seq,
            groups,
            payload,
            ..
        } => match MessageId::parse(payload) {
            Some(id) => format!("Published #{seq} ({id} to {groups:?})"),
            None => format!(
                "Published #{seq} (unidentifiable payload of {} bytes)",
                payload.len()
            ),
        },
        Received::UserMessage { seq, payload, .. } => match MessageId::parse(payload) {
            Some(id) => format!("UserMessage #{seq} ({id})"),
            None => format!("UserMessage #{seq} (unidentifiable payload)"),
        },
        Received::Gap { first, last } => format!("Gap {first}..={last}"),
        Received::SessionLost => "SessionLost".to_owned(),
    }
}

fn loss_guarantee(e: &Received) -> Guarantee {
    if is_presence(e) {
        Guarantee::G6
    } else {
        Guarantee::G5
    }
}

fn check_session(
    history: &SessionHistory,
    expected: &[Received],
    published: &BTreeMap<MessageId, &Bytes>,
    violations: &mut Vec<Violation>,
) {
    let key = history.key;
    let mut report = |guarantee: Guarantee, detail: String| {
        violations.push(Violation {
            guarantee,
            session: Some(key),
            detail,
        });
    };
    // Sequence numbers: each event takes the next, gaps excepted (G5).
    let mut last_seq = 0u64;
    for event in &history.received {
        match event {
            Received::Gap { first, last } => {
                if *first != last_seq + 1 {
                    report(
                        Guarantee::G5,
                        format!("Gap {first}..={last} does not follow #{last_seq}"),
                    );
                }
                last_seq = last_seq.max(*last);
            }
            Received::SessionLost => {}
            e => {
                let seq = e.seq().expect("sequenced event");
                if seq == last_seq {
                    report(
                        Guarantee::G3,
                        format!("sequence number {seq} used twice ({})", describe(e)),
                    );
                } else if seq != last_seq + 1 {
                    report(
                        Guarantee::G5,
                        format!("{} after #{last_seq}: an unexplained hole", describe(e)),
                    );
                }
                last_seq = last_seq.max(seq);
            }
        }
    }

    // Alignment against the expected sequence.
    let content_eq = |a: &Received, b: &Received| a.with_seq(0) == b.with_seq(0);
    let received_ids: BTreeSet<MessageId> = history
        .received
        .iter()
        .filter_map(Received::message_id)
        .collect();
    let mut matched_ids: BTreeSet<MessageId> = BTreeSet::new();
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let mut next = 0usize;
    for event in &history.received {
        if let Received::Gap { first, last } = event {
            gaps.push((*first, *last));
            continue;
        }
        if matches!(event, Received::SessionLost) {
            continue;
        }
        let covered = |seq: u64| gaps.iter().any(|(f, l)| (*f..=*l).contains(&seq));
        // The sequence number says where the event belongs; when the event there
        // matches, that is the alignment (identical presence events can repeat, and
        // a Gap may cover the first of them). Otherwise find the next match.
        let by_seq = event
            .seq()
            .and_then(|q| usize::try_from(q).ok()?.checked_sub(1))
            .filter(|&i| i >= next && i < expected.len() && content_eq(&expected[i], event));
        let found = by_seq.or_else(|| {
            expected[next.min(expected.len())..]
                .iter()
                .position(|x| content_eq(x, event))
                .map(|offset| next + offset)
        });
        if let Some(k) = found {
            for skipped in &expected[next..k] {
                if covered(skipped.seq().unwrap_or(0)) {
                    continue;
                }
                let id = skipped.message_id();
                if id.is_some_and(|id| received_ids.contains(&id)) {
                    report(
                        Guarantee::G2,
                        format!("{} arrived after {}", describe(skipped), describe(event)),
                    );
                } else {
                    report(
                        loss_guarantee(skipped),
                        format!(
                            "{} never arrived, yet the later {} did",
                            describe(skipped),
                            describe(event)
                        ),
                    );
                }
            }
            if event.seq() != expected[k].seq() {
                report(
                    Guarantee::G5,
                    format!(
                        "{} carries the wrong sequence number: expected #{}",
                        describe(event),
                        expected[k].seq().unwrap_or(0)
                    ),
                );
            }
            if let Some(id) = event.message_id() {
                matched_ids.insert(id);
            }
            next = k + 1;
            continue;
        }
        // Not expected from here on: classify.
        let earlier = expected[..next.min(expected.len())]
            .iter()
            .any(|x| content_eq(x, event));
        let id = event.message_id();
        if earlier {
            if id.is_some_and(|id| matched_ids.contains(&id)) || is_presence(event) {
                report(
                    Guarantee::G3,
                    format!("{} delivered again", describe(event)),
                );
            } else {
                report(
                    Guarantee::G2,
                    format!("{} arrived out of order", describe(event)),
                );
            }
            continue;
        }
        match id {
            Some(id) => match published.get(&id) {
                None => report(
                    Guarantee::G1,
                    format!("{} was never sent by anyone", describe(event)),
                ),
                Some(sent) => {
                    let payload = match event {
                        Received::Published { payload, .. }
                        | Received::UserMessage { payload, .. } => payload,
                        _ => unreachable!("message ids come from payload events"),
                    };
                    if payload != *sent {
                        report(
                            Guarantee::G1,
                            format!("{} arrived with different bytes", describe(event)),
                        );
                    } else if expected.iter().any(|x| x.message_id() == Some(id)) {
                        report(
                            Guarantee::G1,
                            format!(
                                "{} arrived with the wrong sender or groups",
                                describe(event)
                            ),
                        );
                    } else {
                        report(
                            Guarantee::G4,
                            format!(
                                "{} delivered to a session that was not a receiver",
                                describe(event)
                            ),
                        );
                    }
                }
            },
            None if is_presence(event) => report(
                Guarantee::G6,
                format!("{} matches no membership change", describe(event)),
            ),
            None => report(
                Guarantee::G1,
                format!("{} is not a message anyone sent", describe(event)),
            ),
        }
    }
    if history.intact {
        let covered = |seq: u64| gaps.iter().any(|(f, l)| (*f..=*l).contains(&seq));
        for missing in &expected[next.min(expected.len())..] {
            if !covered(missing.seq().unwrap_or(0)) {
                report(
                    loss_guarantee(missing),
                    format!("{} never arrived", describe(missing)),
                );
            }
        }
    }
}

/// Flow control (G8: a receiver that falls behind is handled by an explicit policy,
/// and publishers are held back for it, and only for it, while it catches up):
///
/// 1. every congestion the node counted ends within the grace and one tick: the
///    receiver drained, or the policy cut or shed it (or its connection ended). (The
///    engine-level harness's transport takes all of a transmit or nothing, so a
///    receiver's progress is always a take of its whole mailbox, which drains it:
///    the grace runs from the start of the congestion);
/// 2. a connection is held back only by a call that ran its own push commands and
///    reached a congested receiver other than itself, and
/// 3. it is read again within a tick once every receiver it was held for is no
///    longer congested;
/// 4. a fair slow reader (reading at a fraction of its publisher's rate, nothing
///    else disturbing it) is never cut as a slow consumer, never gets a Gap and is
///    connected at the end (so, with the checks above, it got every event);
/// 5. a fair stopped reader whose transport was full when it became congested is
///    cut (disconnect policy: closed as a slow consumer) or shed to the low-water
///    mark (drop-oldest) within the grace and one tick, and a shed one that is
///    connected at the end got a Gap.
fn check_flow(
    run: &RunRecord,
    flow: &FlowRecord,
    recipients: &[BTreeSet<SessionKey>],
    violations: &mut Vec<Violation>,
) {
    let mut report = |session: SessionKey, detail: String| {
        violations.push(Violation {
            guarantee: Guarantee::G8,
            session: Some(session),
            detail: format!("flow control: {detail}"),
        });
    };
    let deadline = flow.grace_ms + flow.tick_ms;
    let tick = flow.tick_ms;

    /// A connection held back.
    struct Hold {
        since: u64,
        /// The receivers it is held for.
        by: BTreeSet<SessionKey>,
        /// Since when none of them is congested.
        free_since: Option<u64>,
    }
    #[derive(Default)]
    struct Conn {
        /// Congested since (ms), and whether the node counted it.
        congested: Option<(u64, bool)>,
        held: Option<Hold>,
    }
    let mut conns: BTreeMap<u64, Conn> = BTreeMap::new();
    // How many connections of each session are congested.
    let mut congested_sessions: BTreeMap<SessionKey, u32> = BTreeMap::new();
    let late_release = |hold: &Hold, at: u64| {
        hold.free_since.filter(|free| at > free + tick).map(|free| {
            format!(
                "held back since {} ms for {}, none of them congested since {free} ms, \
                 still held at {at} ms",
                hold.since,
                list(&hold.by)
            )
        })
    };
    for o in &flow.observations {
        let conn = conns.entry(o.conn).or_default();
        match &o.what {
            Observed::Congested { counted, .. } => {
                if conn.congested.is_none() {
                    *congested_sessions.entry(o.session).or_default() += 1;
                }
                conn.congested = Some((o.ms, *counted));
            }
            Observed::Drained | Observed::Gone => {
                if let Some((since, counted)) = conn.congested.take() {
                    if let Some(n) = congested_sessions.get_mut(&o.session) {
                        *n = n.saturating_sub(1);
                    }
                    if counted && o.ms > since + deadline {
                        report(
                            o.session,
                            format!(
                                "congested from {since} ms to {} ms, longer than the grace \
                                 ({} ms) and a tick",
                                o.ms, flow.grace_ms
                            ),
                        );
                    }
                }
                if o.what == Observed::Gone {
                    if let Some(detail) = conn.held.as_ref().and_then(|h| late_release(h, o.ms)) {
                        report(o.session, detail);
                    }
                    conns.remove(&o.conn);
                }
            }
            Observed::Held { journal, congested } => {
                let (start, end) = (
                    journal.0.min(recipients.len()),
                    journal.1.min(recipients.len()),
                );
                let reached: BTreeSet<SessionKey> = recipients[start..end.max(start)]
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|s| *s != o.session)
                    .collect();
                let by: BTreeSet<SessionKey> = congested
                    .iter()
                    .copied()
                    .filter(|s| reached.contains(s))
                    .collect();
                match &mut conn.held {
                    Some(hold) => {
                        if !by.is_empty() {
                            hold.by.extend(by);
                            hold.free_since = None;
                        }
                    }
                    None if by.is_empty() => report(
                        o.session,
                        format!(
                            "held back at {} ms though its push commands in that call \
                             reached no congested receiver (they reached {}; congested: {})",
                            o.ms,
                            list(&reached),
                            list(&congested.iter().copied().collect())
                        ),
                    ),
                    None => {
                        conn.held = Some(Hold {
                            since: o.ms,
                            by,
                            free_since: None,
                        })
                    }
                }
            }
            Observed::Released => {
                if let Some(hold) = conn.held.take() {
                    if let Some(detail) = late_release(&hold, o.ms) {
                        report(o.session, detail);
                    }
                }
            }
            Observed::Shed { .. } | Observed::CutSlowConsumer => {}
        }
        for conn in conns.values_mut() {
            if let Some(hold) = &mut conn.held {
                if hold.free_since.is_none()
                    && hold
                        .by
                        .iter()
                        .all(|s| congested_sessions.get(s).is_none_or(|n| *n == 0))
                {
                    hold.free_since = Some(o.ms);
                }
            }
        }
    }
    // What is still going on at the end.
    let session_of = |id: u64| {
        flow.observations
            .iter()
            .rev()
            .find(|o| o.conn == id)
            .map(|o| o.session)
    };
    for (id, conn) in &conns {
        let Some(session) = session_of(*id) else {
            continue;
        };
        if let Some((since, true)) = conn.congested {
            if flow.end_ms > since + deadline {
                report(
                    session,
                    format!(
                        "congested from {since} ms to the end of the run ({} ms)",
                        flow.end_ms
                    ),
                );
            }
        }
        if let Some(detail) = conn
            .held
            .as_ref()
            .and_then(|h| late_release(h, flow.end_ms))
        {
            report(session, detail);
        }
    }

    for reader in flow.readers.iter().filter(|r| r.fair) {
        let key = reader.session;
        let history = run.sessions.iter().find(|h| h.key == key);
        let gap = history.and_then(|h| {
            h.received
                .iter()
                .find(|e| matches!(e, Received::Gap { .. }))
        });
        match reader.behaviour {
            Behaviour::Slow { bytes_per_ms } => {
                let kept = format!("a reader that kept reading ({bytes_per_ms} bytes/ms)");
                if let Some(o) = flow
                    .observations
                    .iter()
                    .find(|o| o.session == key && o.what == Observed::CutSlowConsumer)
                {
                    report(
                        key,
                        format!("{kept} was cut as a slow consumer at {} ms", o.ms),
                    );
                }
                if let Some(gap) = gap {
                    report(key, format!("{kept} got {}", describe(gap)));
                }
                if history.is_some_and(|h| !h.intact) {
                    report(key, format!("{kept} was not connected at the end"));
                }
            }
            Behaviour::Stopped { from_ms, until_ms } => {
                let mut shed = false;
                for (i, o) in flow.observations.iter().enumerate() {
                    if o.session != key || !(from_ms..=until_ms).contains(&o.ms) {
                        continue;
                    }
                    if matches!(o.what, Observed::Shed { queued } if queued <= flow.low_water) {
                        shed = true;
                    }
                    let Observed::Congested {
                        queued,
                        transport_full: true,
                        ..
                    } = o.what
                    else {
                        continue;
                    };
                    let by = o.ms + deadline;
                    if by > until_ms {
                        continue;
                    }
                    let acted = flow.observations[i + 1..]
                        .iter()
                        .take_while(|x| x.ms <= by)
                        .filter(|x| x.conn == o.conn)
                        .any(|x| match x.what {
                            Observed::CutSlowConsumer => flow.policy == ShedPolicy::Disconnect,
                            Observed::Shed { queued } => {
                                flow.policy == ShedPolicy::DropOldest && queued <= flow.low_water
                            }
                            Observed::Gone => true,
                            _ => false,
                        });
                    if !acted {
                        let action = match flow.policy {
                            ShedPolicy::Disconnect => "closed as a slow consumer",
                            ShedPolicy::DropOldest => "shed to the low-water mark",
                        };
                        report(
                            key,
                            format!(
                                "a reader that stopped reading at {from_ms} ms was congested at \
                                 {} ms ({queued} bytes queued, its transport full) and not {action} \
                                 by {by} ms",
                                o.ms
                            ),
                        );
                    }
                }
                if shed && gap.is_none() && history.is_some_and(|h| h.intact) {
                    report(
                        key,
                        format!(
                            "a reader shed while it stopped reading ({from_ms} to {until_ms} ms) \
                             never got a Gap"
                        ),
                    );
                }
            }
        }
    }
}

fn list(sessions: &BTreeSet<SessionKey>) -> String {
    if sessions.is_empty() {
        return "nobody".to_owned();
    }
    let names: Vec<String> = sessions.iter().map(|s| s.to_string()).collect();
    names.join(", ")
}

fn describe_end(end: &Ended) -> String {
    let how = match &end.outcome {
        Outcome::Result(payload) => format!("a result ({} bytes)", payload.len()),
        Outcome::ServerError(code) => format!("ServerError {code:?}"),
        Outcome::Aborted => "an abort (batch aborted or connection lost)".to_owned(),
        Outcome::Cancelled => "RequestAborted Cancelled".to_owned(),
    };
    format!("{how} at {} ms", end.ms)
}

fn describe_all(ends: &[Ended]) -> String {
    let all: Vec<String> = ends.iter().map(describe_end).collect();
    all.join(", then ")
}

/// G7 for one session's requests. Every violation names its rule, the request and
/// the seed. The rules:
///
/// - `exactly-once`: every request ends exactly once (a crashed client's pending
///   requests may never end: nobody is left to tell);
/// - `right-result`: a result is the request's own (an echo's bytes, byte for byte);
/// - `cancelled-only-if-cancelled`: an end `Cancelled` needs a cancel before it that
///   can end a request so: `RequestAborted Cancelled` one that returned
///   `RemovedFromBatch` or `EndedLocally`, `ServerError Cancelled` one that
///   returned `SentToServer`;
/// - `local-cancel-ends-at-once`: after `RemovedFromBatch` or `EndedLocally` the
///   request, outstanding until then, ends `Cancelled` in the same millisecond and
///   never again (no result after it);
/// - `sent-cancel-ends-by-the-server`: after `SentToServer` the request, outstanding
///   until then, ends with its result, `ServerError Cancelled`, or a lost
///   connection, never `RequestAborted Cancelled`;
/// - `cancel-fits-the-version`: `SentToServer` only on protocol version 3 or later,
///   `EndedLocally` only before;
/// - `not-outstanding`: a cancel returns `NotOutstanding` exactly when the request
///   had ended already, and `AlreadySent` exactly when it had not and an earlier
///   cancel returned `SentToServer`;
/// - `result-order`: results (and server errors) come back in request order.
fn check_requests(history: &SessionHistory, seed: u64, violations: &mut Vec<Violation>) {
    let mut report = |rule: &str, detail: String| {
        violations.push(Violation {
            guarantee: Guarantee::G7,
            session: Some(history.key),
            detail: format!("[{rule}] {detail} (seed {seed})"),
        });
    };
    if let Some(error) = &history.protocol_error {
        // The client engine enforces "once, in request order" and closes on a breach;
        // the server broke G7 even though the application never saw it.
        if error.contains("result for request") {
            report(
                "result-order",
                format!("the server's results broke request order: {error}"),
            );
        }
    }
    let position: BTreeMap<u64, usize> = history
        .requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, i))
        .collect();
    for request in &history.requests {
        let id = request.id;
        match request.outcomes.as_slice() {
            [] if history.crashed => {}
            [] => report("exactly-once", format!("request {id} never ended")),
            [_] => {}
            many => report(
                "exactly-once",
                format!(
                    "request {id} ended {} times: {}",
                    many.len(),
                    describe_all(many)
                ),
            ),
        }
        for end in &request.outcomes {
            if let Outcome::Result(payload) = &end.outcome {
                if payload != &request.expected_result {
                    report(
                        "right-result",
                        format!(
                            "request {id} got another request's result ({})",
                            describe_end(end)
                        ),
                    );
                }
            }
        }
        check_cancels(history, request, &mut report);
    }
    let mut last: Option<usize> = None;
    for id in &history.result_order {
        let Some(&p) = position.get(id) else {
            report(
                "result-order",
                format!("a result for request {id}, which was never sent"),
            );
            continue;
        };
        if last.is_some_and(|l| p <= l) {
            report(
                "result-order",
                format!("the result of request {id} came out of request order"),
            );
        }
        last = Some(p);
    }
}

/// The cancel rules of [`check_requests`] for one request.
fn check_cancels(
    history: &SessionHistory,
    request: &RequestRecord,
    report: &mut impl FnMut(&str, String),
) {
    let id = request.id;
    let ends = &request.outcomes;
    // Each end Cancelled needs a cancel before it that can end a request so.
    for (k, end) in ends.iter().enumerate() {
        let allowed: &[CancelOutcome] = match end.outcome {
            Outcome::Cancelled => &[CancelOutcome::RemovedFromBatch, CancelOutcome::EndedLocally],
            Outcome::ServerError(ErrorCode::Cancelled) => &[CancelOutcome::SentToServer],
            _ => continue,
        };
        let before = |c: &&CancelRecord| c.ended_before <= k;
        if !request
            .cancels
            .iter()
            .filter(before)
            .any(|c| allowed.contains(&c.outcome))
        {
            let cancels: Vec<String> = request
                .cancels
                .iter()
                .filter(before)
                .map(|c| format!("{:?} at {} ms", c.outcome, c.ms))
                .collect();
            let cancels = if request.cancels.is_empty() {
                "it was never cancelled".to_owned()
            } else if cancels.is_empty() {
                "no cancel came before it".to_owned()
            } else {
                format!("its cancels before that returned {}", cancels.join(", "))
            };
            report(
                "cancelled-only-if-cancelled",
                format!(
                    "request {id} ended with {}, but {cancels}",
                    describe_end(end)
                ),
            );
        }
    }
    let mut effective: Option<&CancelRecord> = None;
    for cancel in &request.cancels {
        let what = format!(
            "request {id}'s cancel at {} ms returned {:?}",
            cancel.ms, cancel.outcome
        );
        let ended = cancel.ended_before > 0;
        if cancel.outcome == CancelOutcome::NotOutstanding {
            if !ended {
                report("not-outstanding", format!("{what}, but it had not ended"));
            }
            continue;
        }
        if cancel.outcome == CancelOutcome::AlreadySent {
            let sent_before =
                effective.is_some_and(|first| first.outcome == CancelOutcome::SentToServer);
            if ended || !sent_before {
                report(
                    "not-outstanding",
                    format!(
                        "{what}, but it {}",
                        if ended {
                            "had ended already"
                        } else {
                            "had no Cancel sent before"
                        }
                    ),
                );
            }
            continue;
        }
        if ended {
            report(
                "not-outstanding",
                format!(
                    "{what}, but it had ended already ({})",
                    describe_all(&ends[..cancel.ended_before.min(ends.len())])
                ),
            );
        } else if let Some(first) = effective {
            report(
                "not-outstanding",
                format!(
                    "{what}, but it was cancelled before (at {} ms: {:?})",
                    first.ms, first.outcome
                ),
            );
        }
        let version = history.version;
        let fits = match cancel.outcome {
            CancelOutcome::SentToServer => version.is_some_and(|v| v >= 3),
            CancelOutcome::EndedLocally => version.is_some_and(|v| v < 3),
            _ => true,
        };
        if !fits {
            report(
                "cancel-fits-the-version",
                format!("{what} on a connection of protocol version {version:?}"),
            );
        }
        let after = ends.get(cancel.ended_before..).unwrap_or(&[]);
        match cancel.outcome {
            CancelOutcome::RemovedFromBatch | CancelOutcome::EndedLocally => match after {
                [] if history.crashed => {}
                [first, ..] if first.outcome == Outcome::Cancelled && first.ms == cancel.ms => {
                    if after.len() > 1 {
                        report(
                            "local-cancel-ends-at-once",
                            format!(
                                "{what} and it ended Cancelled, but then also with {}",
                                describe_all(&after[1..])
                            ),
                        );
                    }
                }
                [] => report(
                    "local-cancel-ends-at-once",
                    format!("{what}, but it never ended"),
                ),
                _ => report(
                    "local-cancel-ends-at-once",
                    format!(
                        "{what}, but it did not end Cancelled at once: {}",
                        describe_all(after)
                    ),
                ),
            },
            CancelOutcome::SentToServer => {
                for end in after {
                    if end.outcome == Outcome::Cancelled {
                        report(
                            "sent-cancel-ends-by-the-server",
                            format!(
                                "{what}, but the client engine ended it itself ({})",
                                describe_end(end)
                            ),
                        );
                    }
                }
            }
            CancelOutcome::NotOutstanding | CancelOutcome::AlreadySent => {}
        }
        effective.get_or_insert(cancel);
    }
}

#[cfg(test)]
mod tests;
