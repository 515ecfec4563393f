//! Scenarios generated from a seed: one `u64` determines every operation, its time,
//! every fault and (through the simulator) every byte boundary.

use crate::engine_level::{Op, Reader, ReaderKind, Scenario};
use crate::rng::SimRng;

/// Bounds of generated scenarios.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Most clients.
    pub max_clients: usize,
    /// Most groups.
    pub max_groups: u32,
    /// Most operations.
    pub max_ops: usize,
    /// Whether to include faults (cuts, partitions, crashes, bounces).
    pub faults: bool,
    /// Whether to add scripted readers (engine level only): now and then a slow
    /// reader and a stopped one, each with a group and a publisher of its own.
    pub readers: bool,
    /// Whether to add cancels (engine level only): requests cancelled while they
    /// wait, run or sit in an open batch, or after they ended, and short pipelines
    /// of requests behind a sleep for them to hit. Drawn from a generator of their
    /// own: without them the scenario is what it was.
    pub cancels: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            max_clients: 5,
            max_groups: 4,
            max_ops: 40,
            faults: true,
            readers: true,
            cancels: true,
        }
    }
}

fn groups(rng: &mut SimRng, max: u32) -> Vec<u32> {
    let mut out: Vec<u32> = (1..=max).filter(|_| rng.chance(1, 2)).collect();
    if out.is_empty() {
        out.push(rng.range_inclusive(1, u64::from(max)) as u32);
    }
    // Now and then an unknown group, which the server must report, not drop.
    if rng.chance(1, 15) {
        out.push(max + 7);
    }
    out
}

fn size(rng: &mut SimRng) -> usize {
    if rng.chance(1, 20) {
        rng.range_inclusive(2_000, 40_000) as usize
    } else {
        rng.range_inclusive(0, 120) as usize
    }
}

/// A slow reader reads at least this many bytes per millisecond: with flow control
/// holding its publisher back one command past the high-water mark, its link's
/// backlog over the socket window (at most the high-water mark plus a publication)
/// then drains in well under the grace, so it is never cut for being slow.
pub const SLOW_READER_MIN_RATE: usize = 150;

/// A scripted reader's setting: its client, its publisher's and their group.
struct Episode {
    reader: usize,
    publisher: usize,
    group: u32,
}

/// Adds a scripted reader to the scenario: a client of its own (after every other
/// client), subscribed to a group of its own (after every other group), with a
/// publisher of its own. No random operation names them (those pick among the
/// first clients and groups), so nothing but a server restart disturbs them.
fn episode(scenario: &mut Scenario, kind: ReaderKind) -> Episode {
    let reader = scenario.clients;
    let publisher = scenario.clients + 1;
    scenario.clients += 2;
    scenario.groups += 1;
    let group = scenario.groups;
    // It subscribes to its group as soon as it is connected.
    scenario.readers.push(Reader {
        client: reader,
        kind,
        group,
    });
    Episode {
        reader,
        publisher,
        group,
    }
}

/// The episode's publisher publishes `count` publications of `size` bytes to its
/// group, one every `every` milliseconds from `start`.
fn stream(scenario: &mut Scenario, e: &Episode, start: u64, count: u64, every: u64, size: usize) {
    for k in 0..count {
        scenario.ops.push((
            start + k * every,
            Op::Publish {
                client: e.publisher,
                groups: vec![e.group],
                size,
            },
        ));
    }
}

/// The scripted readers: in about half the scenarios a slow reader, in about half a
/// stopped one (from a generator of their own, so the rest of the scenario is the same
/// with or without them).
fn add_readers(seed: u64, scenario: &mut Scenario) {
    let mut rng = SimRng::new(seed ^ 0x510e_4ead);
    let last = scenario.ops.last().map_or(0, |(t, _)| *t);
    if rng.chance(1, 2) {
        // A stream of 60 to 210 KB at 0.5 to 3 MB/s, read at a tenth to a third of
        // that: behind by the socket window and the high-water mark within a few
        // dozen publications, then held back and released in turns.
        let size = rng.range_inclusive(1_500, 3_000);
        let every = rng.range_inclusive(1, 3);
        let count = rng.range_inclusive(40, 70);
        let rate = (size / every) as usize;
        let bytes_per_ms =
            (rate * rng.range_inclusive(10, 33) as usize / 100).max(SLOW_READER_MIN_RATE);
        let e = episode(scenario, ReaderKind::Slow { bytes_per_ms });
        let start = rng.range_inclusive(40, last.max(40));
        stream(scenario, &e, start, count, every, size as usize);
    }
    if rng.chance(1, 2) {
        // A stream of 40 to 180 KB that the reader stops reading just before it
        // starts, for two to four and a half graces (now and then longer than the
        // client's own keep-alive timeout, which then ends the connection).
        let size = rng.range_inclusive(2_000, 4_000);
        let every = rng.range_inclusive(1, 4);
        let count = rng.range_inclusive(20, 45);
        let e = episode(scenario, ReaderKind::Stops);
        let start = rng.range_inclusive(40, last.max(40));
        let ms = if rng.chance(1, 5) {
            rng.range_inclusive(900, 2_500)
        } else {
            rng.range_inclusive(400, 900)
        };
        scenario.ops.push((
            start - rng.range_inclusive(0, 30),
            Op::Stall {
                client: e.reader,
                ms,
            },
        ));
        stream(scenario, &e, start, count, every, size as usize);
    }
    // Stable: operations at the same time keep their order.
    scenario.ops.sort_by_key(|(t, _)| *t);
}

/// A cancel of the client's request `back` places before its last one, `delay`
/// milliseconds after `t`: mostly at once or while the request may still run, now
/// and then long after it ended.
fn cancel_at(rng: &mut SimRng, t: u64, client: usize, back: usize) -> (u64, Op) {
    let delay = match rng.range_inclusive(0, 7) {
        0..=1 => 0,
        2..=5 => rng.range_inclusive(1, 250),
        _ => rng.range_inclusive(300, 1_200),
    };
    (t + delay, Op::Cancel { client, back })
}

/// The cancels that go with the operation `op` at `t` (see [`Shape::cancels`]): it
/// may set the cancel of a batch, and adds operations to `extra`.
fn add_cancels(rng: &mut SimRng, t: u64, op: &mut Op, extra: &mut Vec<(u64, Op)>) {
    match op {
        Op::Sleep { client, .. } | Op::Echo { client, .. } => {
            let client = *client;
            let sleep = matches!(op, Op::Sleep { .. });
            // Behind a sleep, a short pipeline of requests: with few calls running
            // at once, they wait, and a cancel drops one before it starts.
            let mut queued = 0;
            if sleep && rng.chance(1, 2) {
                queued = rng.range_inclusive(1, 3) as usize;
                for _ in 0..queued {
                    let request = if rng.chance(1, 2) {
                        Op::Sleep {
                            client,
                            ms: rng.range_inclusive(20, 300) as u32,
                        }
                    } else {
                        Op::Echo {
                            client,
                            size: rng.range_inclusive(0, 64) as usize,
                        }
                    };
                    extra.push((t, request));
                }
            }
            if rng.chance(if sleep { 2 } else { 1 }, 3) {
                let back = rng.range_inclusive(0, queued as u64) as usize;
                let cancel = cancel_at(rng, t, client, back);
                // Now and then the same request again: the second cancel must find
                // it cancelled already.
                if rng.chance(1, 8) {
                    let again = cancel.0 + rng.range_inclusive(0, 50);
                    extra.push((again, Op::Cancel { client, back }));
                }
                extra.push(cancel);
            }
        }
        Op::Batch {
            client,
            requests,
            abort,
            cancel,
            ..
        } if *requests > 0 => {
            if rng.chance(1, 3) {
                *cancel = Some(rng.range_inclusive(0, *requests as u64 - 1) as usize);
            }
            // A committed batch's requests cancelled once sent.
            if !*abort && rng.chance(1, 4) {
                let back = rng.range_inclusive(0, *requests as u64 - 1) as usize;
                extra.push((
                    t + rng.range_inclusive(0, 20),
                    Op::Cancel {
                        client: *client,
                        back,
                    },
                ));
            }
        }
        Op::Subscribe { client, .. }
        | Op::Unsubscribe { client, .. }
        | Op::Publish { client, .. }
        | Op::UserMessage { client, .. }
        | Op::Cut { client }
        | Op::Partition { client, .. }
        | Op::Crash { client, .. }
            if rng.chance(1, 30) =>
        {
            // Any request of the client, most likely ended already.
            let back = rng.range_inclusive(0, 5) as usize;
            extra.push((
                t,
                Op::Cancel {
                    client: *client,
                    back,
                },
            ));
        }
        _ => {}
    }
}

/// The scenario for `seed`.
pub fn generate(seed: u64, shape: Shape) -> Scenario {
    let mut rng = SimRng::new(seed ^ 0x5ce4_a210);
    let mut cancel_rng = SimRng::new(seed ^ 0x0ca9_ce11);
    let mut extra = Vec::new();
    let clients = rng.range_inclusive(2, shape.max_clients as u64) as usize;
    let group_count = rng.range_inclusive(1, u64::from(shape.max_groups)) as u32;
    let ops_count = rng.range_inclusive(5, shape.max_ops as u64) as usize;
    let mut t = 20;
    let mut ops = Vec::with_capacity(ops_count);
    for _ in 0..ops_count {
        t += rng.range_inclusive(0, 150);
        let client = rng.range_inclusive(0, clients as u64 - 1) as usize;
        let roll = rng.range_inclusive(0, 99);
        let op = match roll {
            0..=19 => Op::Subscribe {
                client,
                groups: groups(&mut rng, group_count),
            },
            20..=26 => Op::Unsubscribe {
                client,
                groups: (!rng.chance(1, 4)).then(|| groups(&mut rng, group_count)),
            },
            27..=49 => Op::Publish {
                client,
                groups: groups(&mut rng, group_count),
                size: size(&mut rng),
            },
            50..=54 => Op::ServerPublish {
                groups: groups(&mut rng, group_count),
                size: size(&mut rng),
            },
            55..=64 => Op::UserMessage {
                client,
                to: rng.range_inclusive(0, clients as u64 - 1) as usize,
                upper: rng.chance(1, 3),
                size: size(&mut rng),
            },
            65..=72 => Op::Echo {
                client,
                size: size(&mut rng),
            },
            73..=77 => Op::Sleep {
                client,
                ms: rng.range_inclusive(1, 400) as u32,
            },
            78..=83 => Op::Batch {
                client,
                requests: rng.range_inclusive(0, 4) as usize,
                publish: if rng.chance(1, 2) {
                    groups(&mut rng, group_count)
                } else {
                    Vec::new()
                },
                server_batching: rng.chance(1, 2),
                abort: rng.chance(1, 5),
                cancel: None,
            },
            84..=88 if shape.faults => Op::Cut { client },
            89..=93 if shape.faults => Op::Partition {
                client,
                ms: rng.range_inclusive(10, 2_000),
            },
            94..=95 if shape.faults => Op::Crash {
                client,
                down_ms: rng.range_inclusive(0, 500),
            },
            96 if shape.faults => Op::Stall {
                client,
                ms: rng.range_inclusive(100, 3_000),
            },
            97 => Op::Flood {
                client,
                groups: groups(&mut rng, group_count),
                count: rng.range_inclusive(10, 40) as usize,
                size: rng.range_inclusive(1_000, 8_000) as usize,
            },
            98..=99 if shape.faults => Op::ServerBounce,
            _ => Op::Publish {
                client,
                groups: groups(&mut rng, group_count),
                size: size(&mut rng),
            },
        };
        let mut op = op;
        if shape.cancels {
            add_cancels(&mut cancel_rng, t, &mut op, &mut extra);
        }
        ops.push((t, op));
    }
    let mut scenario = Scenario {
        clients,
        groups: group_count,
        ops,
        readers: Vec::new(),
    };
    if shape.readers {
        add_readers(seed, &mut scenario);
    }
    // The cancels' operations come after the rest of the same millisecond (stable
    // sort), so the readers' timing does not depend on them.
    scenario.ops.append(&mut extra);
    scenario.ops.sort_by_key(|(t, _)| *t);
    scenario
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_of(op: &Op) -> Option<usize> {
        match op {
            Op::Subscribe { client, .. }
            | Op::Unsubscribe { client, .. }
            | Op::Publish { client, .. }
            | Op::UserMessage { client, .. }
            | Op::Echo { client, .. }
            | Op::Sleep { client, .. }
            | Op::Batch { client, .. }
            | Op::Cancel { client, .. }
            | Op::Cut { client }
            | Op::Partition { client, .. }
            | Op::Crash { client, .. }
            | Op::Flood { client, .. }
            | Op::Stall { client, .. } => Some(*client),
            Op::ServerPublish { .. } | Op::ServerBounce => None,
        }
    }

    #[test]
    fn scripted_readers_keep_to_themselves() {
        let mut slow = 0;
        let mut stopped = 0;
        for seed in 0..200 {
            let plain = generate(
                seed,
                Shape {
                    readers: false,
                    ..Shape::default()
                },
            );
            let scripted = generate(seed, Shape::default());
            // Readers and their publishers come after every other client, and their
            // groups after every other group.
            let own = |op: &Op| client_of(op).is_some_and(|c| c >= plain.clients);
            let rest: Vec<_> = scripted.ops.iter().filter(|(_, op)| !own(op)).collect();
            assert_eq!(rest, plain.ops.iter().collect::<Vec<_>>(), "seed {seed}");
            assert_eq!(
                scripted.clients - plain.clients,
                2 * scripted.readers.len(),
                "seed {seed}"
            );
            for (_, op) in scripted.ops.iter().filter(|(_, op)| own(op)) {
                match op {
                    Op::Publish { groups, .. } => {
                        assert!(groups.iter().all(|g| *g > plain.groups), "seed {seed}")
                    }
                    Op::Stall { ms, .. } => assert!(*ms >= 400, "seed {seed}"),
                    other => panic!("seed {seed}: unexpected {other:?}"),
                }
            }
            for r in &scripted.readers {
                assert!(r.group > plain.groups && r.group <= scripted.groups);
                match r.kind {
                    ReaderKind::Slow { bytes_per_ms } => {
                        assert!(bytes_per_ms >= SLOW_READER_MIN_RATE);
                        slow += 1;
                    }
                    ReaderKind::Stops => stopped += 1,
                }
            }
            assert!(scripted.ops.windows(2).all(|w| w[0].0 <= w[1].0));
        }
        assert!(slow > 60 && stopped > 60, "{slow} slow, {stopped} stopped");
    }

    #[test]
    fn cancels_only_add_operations() {
        let (mut cancels, mut in_batch) = (0, 0);
        for seed in 0..200 {
            let plain = generate(
                seed,
                Shape {
                    cancels: false,
                    ..Shape::default()
                },
            );
            let with = generate(seed, Shape::default());
            assert_eq!(
                (plain.clients, plain.groups, &plain.readers),
                (with.clients, with.groups, &with.readers),
                "seed {seed}"
            );
            // Every operation of the scenario without cancels is there, in order (a
            // batch may cancel one of its requests).
            let mut rest = with.ops.iter().map(|(t, op)| match op {
                Op::Batch { .. } => {
                    let mut op = op.clone();
                    if let Op::Batch { cancel, .. } = &mut op {
                        *cancel = None;
                    }
                    (*t, op)
                }
                _ => (*t, op.clone()),
            });
            for (t, op) in &plain.ops {
                assert!(
                    rest.any(|(u, o)| u == *t && o == *op),
                    "seed {seed}: {op:?} at {t} ms is missing"
                );
            }
            for (_, op) in &with.ops {
                match op {
                    Op::Cancel { client, .. } => {
                        // Never a scripted reader or its publisher.
                        assert!(*client < plain.clients - 2 * plain.readers.len());
                        cancels += 1;
                    }
                    Op::Batch {
                        cancel: Some(k),
                        requests,
                        ..
                    } => {
                        assert!(k < requests, "seed {seed}");
                        in_batch += 1;
                    }
                    _ => {}
                }
            }
            assert!(with.ops.windows(2).all(|w| w[0].0 <= w[1].0));
        }
        assert!(
            cancels > 300 && in_batch > 20,
            "{cancels} cancels, {in_batch} in batches"
        );
    }

    #[test]
    fn the_seed_determines_the_scenario() {
        assert_eq!(generate(9, Shape::default()), generate(9, Shape::default()));
        assert_ne!(
            generate(9, Shape::default()),
            generate(10, Shape::default())
        );
        let calm = generate(
            9,
            Shape {
                faults: false,
                ..Shape::default()
            },
        );
        assert!(!calm.ops.iter().any(|(_, op)| matches!(
            op,
            Op::Cut { .. } | Op::Partition { .. } | Op::Crash { .. } | Op::ServerBounce
        )));
    }
}
