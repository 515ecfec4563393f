//! What a node knows of one peer: where it is in the peer's log, whether a snapshot
//! of the peer's state is being read, and the peer's sessions with their groups.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use pushwire_protocol::{GroupId, Sender};

use crate::hub::user_key_of;

/// A peer session as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RemoteMember {
    pub sender: Sender,
    pub user_key: String,
    /// Ascending.
    pub groups: Vec<GroupId>,
}

/// What changed for one remote session: local members are told `left` and
/// `joined`; the user's remote session count moves by `sessions_delta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    pub sender: Sender,
    pub user_key: String,
    pub joined: Vec<GroupId>,
    pub left: Vec<GroupId>,
    pub sessions_delta: i32,
}

#[derive(Debug)]
enum SnapshotState {
    /// None needed, or one was applied.
    Idle,
    /// Needed; asked for at the next discovery.
    Wanted,
    /// Asked for; the peer's records that arrive meanwhile wait here.
    Pending(Vec<(u64, Bytes)>),
}

#[derive(Debug)]
pub(super) struct Peer {
    pub epoch: u64,
    pub alive: bool,
    /// Its members were dropped (taken for gone); its state must be read again
    /// before its member records mean anything.
    pub stale_view: bool,
    pub last_heard: Instant,
    /// The seq expected next; `None` until a snapshot says where to start.
    next: Option<u64>,
    snapshot: SnapshotState,
    /// Member and group records up to this seq are in the applied snapshot.
    floor: u64,
    pub members: BTreeMap<u64, RemoteMember>,
}

impl Peer {
    /// A peer found in the directory. One found at this node's start (`initial`) is
    /// read from its snapshot on; a later one from the start of its log.
    pub fn new(epoch: u64, now: Instant, initial: bool) -> Self {
        Self {
            epoch,
            alive: true,
            stale_view: false,
            last_heard: now,
            next: (!initial).then_some(1),
            snapshot: SnapshotState::Idle,
            floor: 0,
            members: BTreeMap::new(),
        }
    }

    pub fn next(&self) -> Option<u64> {
        self.next
    }

    pub fn skip_to(&mut self, next: u64) {
        self.next = Some(next);
    }

    /// Where the shell reads from; `None` while a snapshot is awaited or before
    /// the first.
    pub fn read_after(&self) -> Option<u64> {
        match self.snapshot {
            SnapshotState::Pending(_) => None,
            _ => self.next.map(|n| n - 1),
        }
    }

    pub fn is_snapshotting(&self) -> bool {
        matches!(self.snapshot, SnapshotState::Pending(_))
    }

    pub fn wants_snapshot(&self) -> bool {
        matches!(self.snapshot, SnapshotState::Wanted)
    }

    /// Starts waiting for a snapshot; false if one is awaited already.
    pub fn begin_snapshot(&mut self) -> bool {
        if self.is_snapshotting() {
            return false;
        }
        self.snapshot = SnapshotState::Pending(Vec::new());
        true
    }

    /// The snapshot came: what was held meanwhile. `None` if none was awaited.
    pub fn end_snapshot(&mut self) -> Option<Vec<(u64, Bytes)>> {
        match std::mem::replace(&mut self.snapshot, SnapshotState::Idle) {
            SnapshotState::Pending(held) => Some(held),
            other => {
                self.snapshot = other;
                None
            }
        }
    }

    /// The backplane went away with a snapshot awaited: ask again later. What was
    /// held is read again (the position did not move past it).
    pub fn abandon_snapshot(&mut self) {
        if self.is_snapshotting() {
            self.snapshot = SnapshotState::Wanted;
        }
    }

    /// The peer had no state to read: asked again at the next discovery.
    pub fn snapshot_missing(&mut self) {
        self.snapshot = SnapshotState::Wanted;
    }

    /// Keeps records that arrived during a snapshot, up to `max`; beyond, they are
    /// not kept, and are read again afterwards (the position is still before them).
    pub fn hold(&mut self, records: Vec<(u64, Bytes)>, max: usize) {
        if let SnapshotState::Pending(held) = &mut self.snapshot {
            let room = max.saturating_sub(held.len());
            held.extend(records.into_iter().take(room));
        }
    }

    pub fn covered_by_snapshot(&self, seq: u64) -> bool {
        seq <= self.floor
    }

    /// The peer's whole view as of `seq`: what changed against the current one.
    pub fn apply_snapshot(
        &mut self,
        seq: u64,
        members: BTreeMap<u64, (Sender, Vec<GroupId>)>,
    ) -> Vec<Change> {
        if self.next.is_none() {
            self.next = Some(seq + 1);
        }
        self.floor = self.floor.max(seq);
        let mut changes = Vec::new();
        let gone: Vec<u64> = self
            .members
            .keys()
            .filter(|s| !members.contains_key(s))
            .copied()
            .collect();
        for session in gone {
            changes.extend(self.set_member(session, None));
        }
        for (session, state) in members {
            let known = self.members.contains_key(&session);
            // One change for a known member, even when nothing differs.
            let mut session_changes = self.set_member(session, Some(state));
            if known {
                // A snapshot follows a hole (or a return): what the lost records
                // said is unknown (a leave and a join again, say), so a member seen
                // before is announced again with all its groups, changed or not,
                // for the views built from presence to be whole.
                let groups = self.members[&session].groups.clone();
                for change in &mut session_changes {
                    change.joined = groups.clone();
                }
            }
            changes.extend(session_changes);
        }
        changes
    }

    /// Sets (or, with `None`, removes) one session.
    pub fn set_member(
        &mut self,
        session: u64,
        state: Option<(Sender, Vec<GroupId>)>,
    ) -> Vec<Change> {
        let old = self.members.remove(&session);
        let change = match (old, state) {
            (None, None) => return Vec::new(),
            (Some(old), None) => Change {
                sender: old.sender,
                user_key: old.user_key,
                joined: Vec::new(),
                left: old.groups,
                sessions_delta: -1,
            },
            (old, Some((sender, mut groups))) => {
                groups.sort_unstable();
                groups.dedup();
                let user_key = match &sender {
                    Sender::Peer(p) => user_key_of(p.user_id.as_str()),
                    Sender::Server => String::new(),
                };
                let (before, delta) = match old {
                    Some(old) => (old.groups, 0),
                    None => (Vec::new(), 1),
                };
                let joined = groups
                    .iter()
                    .filter(|g| before.binary_search(g).is_err())
                    .copied()
                    .collect();
                let left = before
                    .iter()
                    .filter(|g| groups.binary_search(g).is_err())
                    .copied()
                    .collect();
                self.members.insert(
                    session,
                    RemoteMember {
                        sender: sender.clone(),
                        user_key: user_key.clone(),
                        groups,
                    },
                );
                Change {
                    sender,
                    user_key,
                    joined,
                    left,
                    sessions_delta: delta,
                }
            }
        };
        vec![change]
    }

    /// Every session leaves (the peer is taken for gone).
    pub fn drop_view(&mut self) -> Vec<Change> {
        let sessions: Vec<u64> = self.members.keys().copied().collect();
        let mut changes = Vec::new();
        for session in sessions {
            changes.extend(self.set_member(session, None));
        }
        self.floor = 0;
        changes
    }
}
