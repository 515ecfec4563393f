//! A model of the Redis a cluster shares, for the simulator and the engine-level
//! cluster tests: per-log order, explicit ids (a repeated append is ignored),
//! trimming to a length, a directory, states current at a seq, restarts that lose
//! everything, and nodes cut off from it. It answers the engine's
//! [`BackplaneRequest`]s the way `pushwire-tokio`'s Redis adapter does, without
//! sockets or time.

use std::collections::BTreeMap;

use bytes::Bytes;
use pushwire_engine::cluster::{BackplaneInput, BackplaneRequest, ReadPosition, Snapshot};
use pushwire_protocol::Text;

/// One node incarnation's keys.
#[derive(Debug, Default, Clone)]
struct Incarnation {
    /// id → record.
    log: BTreeMap<u64, Bytes>,
    /// The highest id ever appended (a trimmed log still refuses it again).
    last_id: u64,
    /// The state's seq and entries.
    state_seq: u64,
    state: BTreeMap<String, Bytes>,
}

/// The shared store.
#[derive(Debug, Clone)]
pub struct ModelRedis {
    keys: BTreeMap<(Text, u64), Incarnation>,
    directory: BTreeMap<Text, u64>,
    /// Longest a log may grow; older entries are trimmed (`MAXLEN`).
    pub max_log_len: usize,
    /// Most records one read returns (`COUNT`).
    pub read_count: usize,
    /// Reads return the entry at the reader's position again (at-least-once
    /// delivery, as after a retried read): the reader must drop the duplicate.
    pub repeat_last: bool,
    /// Appends, reads and snapshots served (what one Redis would do, for the cost
    /// estimates).
    pub commands: u64,
}

impl ModelRedis {
    /// An empty store keeping `max_log_len` entries per log.
    pub fn new(max_log_len: usize) -> Self {
        Self {
            keys: BTreeMap::new(),
            directory: BTreeMap::new(),
            max_log_len,
            read_count: 256,
            repeat_last: false,
            commands: 0,
        }
    }

    /// A restart without persistence: everything is gone.
    pub fn lose_everything(&mut self) {
        self.keys.clear();
        self.directory.clear();
    }

    /// Writes `bytes` as entry `id` of `node`'s log (a hostile writer's record).
    pub fn inject(&mut self, node: &str, epoch: u64, id: u64, bytes: Bytes) {
        let inc = self.keys.entry((node.into(), epoch)).or_default();
        inc.log.insert(id, bytes);
        inc.last_id = inc.last_id.max(id);
    }

    /// Serves one request from `node`; returns the answer to feed back, if any.
    pub fn serve(&mut self, request: BackplaneRequest) -> Option<BackplaneInput> {
        self.commands += 1;
        match request {
            BackplaneRequest::Register {
                node,
                epoch,
                seq,
                state,
            } => {
                let inc = self.keys.entry((node.clone(), epoch)).or_default();
                inc.state_seq = seq;
                inc.state = state
                    .into_iter()
                    .filter_map(|e| e.value.map(|v| (e.key, v)))
                    .collect();
                self.directory.insert(node, epoch);
                None
            }
            BackplaneRequest::Append { .. } => {
                unreachable!("appends are served by serve_append, which knows the writer")
            }
            BackplaneRequest::Discover => Some(BackplaneInput::Directory(
                self.directory
                    .iter()
                    .map(|(n, e)| (n.clone(), *e))
                    .collect(),
            )),
            BackplaneRequest::Snapshot { node, epoch } => {
                let snapshot = self.keys.get(&(node.clone(), epoch)).and_then(|inc| {
                    // A registered incarnation has a directory entry; keys without one
                    // (after a restart that lost everything) have no state.
                    (self.directory.get(&node) == Some(&epoch)).then(|| Snapshot {
                        seq: inc.state_seq,
                        entries: inc.state.values().cloned().collect(),
                    })
                });
                Some(BackplaneInput::Snapshot {
                    node,
                    epoch,
                    snapshot,
                })
            }
            BackplaneRequest::Forget { node, epoch } => {
                if self.directory.get(&node) == Some(&epoch) {
                    self.directory.remove(&node);
                    self.keys.remove(&(node, epoch));
                }
                None
            }
        }
    }

    /// Serves an append of `node`'s incarnation `epoch`.
    pub fn serve_append(
        &mut self,
        node: &Text,
        epoch: u64,
        request: BackplaneRequest,
    ) -> BackplaneInput {
        self.commands += 1;
        let BackplaneRequest::Append { seq, record, state } = request else {
            panic!("not an append: {request:?}");
        };
        let max = self.max_log_len;
        let inc = self.keys.entry((node.clone(), epoch)).or_default();
        // XADD with an id not above the last is refused: written before.
        if seq > inc.last_id {
            inc.log.insert(seq, record);
            inc.last_id = seq;
            while inc.log.len() > max {
                inc.log.pop_first();
            }
        }
        if seq > inc.state_seq {
            inc.state_seq = seq;
            if let Some(entry) = state {
                match entry.value {
                    Some(value) => inc.state.insert(entry.key, value),
                    None => inc.state.remove(&entry.key),
                };
            }
        }
        BackplaneInput::Appended { seq }
    }

    /// What a blocking read at `position` returns now (`None`: nothing new).
    pub fn read(&mut self, position: &ReadPosition) -> Option<BackplaneInput> {
        let inc = self.keys.get(&(position.node.clone(), position.epoch))?;
        let from = if self.repeat_last {
            position.after.max(1)
        } else {
            position.after + 1
        };
        let records: Vec<(u64, Bytes)> = inc
            .log
            .range(from..)
            .take(self.read_count)
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        if records.iter().all(|(id, _)| *id <= position.after) {
            return None;
        }
        self.commands += 1;
        Some(BackplaneInput::Records {
            node: position.node.clone(),
            epoch: position.epoch,
            records,
        })
    }
}
