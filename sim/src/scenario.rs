//! Scenarios generated from a seed: one `u64` determines every operation, its time,
//! every fault and (through the simulator) every byte boundary.

use crate::engine_level::{Op, Scenario};
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
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            max_clients: 5,
            max_groups: 4,
            max_ops: 40,
            faults: true,
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

/// The scenario for `seed`.
pub fn generate(seed: u64, shape: Shape) -> Scenario {
    let mut rng = SimRng::new(seed ^ 0x5ce4_a210);
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
        ops.push((t, op));
    }
    Scenario {
        clients,
        groups: group_count,
        ops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
