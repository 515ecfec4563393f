//! Chat groups, their members, and the walk over the members of several groups that
//! every fan-out is built on.

use std::cmp::Reverse;
use std::collections::{btree_map, BTreeMap, BinaryHeap};

use pushwire_protocol::{GroupId, Text};

use super::connections::{ConnectionId, Slot};

/// One chat group.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) description: Text,
    /// Members in ascending id order, with their slots for constant-time access.
    pub(crate) members: BTreeMap<ConnectionId, Slot>,
}

impl Group {
    pub(crate) fn new(description: Text) -> Self {
        Self {
            description,
            members: BTreeMap::new(),
        }
    }
}

/// Every registered group, by id.
pub(crate) type Groups = BTreeMap<GroupId, Group>;

/// Calls `visit(member, slot, positions)` once for every connection other than `skip`
/// that belongs to at least one of `targets`, in ascending id order. `positions` are
/// the indices into `targets` of the groups it belongs to, ascending.
///
/// Every target must be registered. The cost is proportional to the memberships
/// visited (times log of the number of targets), never to the number of groups or
/// connections on the server.
pub(crate) fn for_each_member_of_any(
    groups: &Groups,
    targets: &[GroupId],
    skip: Option<ConnectionId>,
    mut visit: impl FnMut(ConnectionId, Slot, &[usize]),
) {
    let members = |group: &GroupId| {
        &groups
            .get(group)
            .expect("fan-out targets are registered groups")
            .members
    };

    // One group, the common case: its member list already is the answer.
    if let [only] = targets {
        for (&id, &slot) in members(only) {
            if Some(id) != skip {
                visit(id, slot, &[0]);
            }
        }
        return;
    }

    // Several groups: merge their ascending member lists, so each connection comes
    // up once with every group it is in.
    let mut cursors: Vec<btree_map::Iter<'_, ConnectionId, Slot>> =
        targets.iter().map(|g| members(g).iter()).collect();
    let mut heads = BinaryHeap::with_capacity(cursors.len());
    for (position, cursor) in cursors.iter_mut().enumerate() {
        if let Some((&id, &slot)) = cursor.next() {
            heads.push(Reverse((id, position, slot)));
        }
    }
    let mut positions = Vec::with_capacity(targets.len());
    while let Some(Reverse((id, position, slot))) = heads.pop() {
        positions.clear();
        positions.push(position);
        advance(&mut cursors, &mut heads, position);
        while let Some(&Reverse((next_id, next_position, _))) = heads.peek() {
            if next_id != id {
                break;
            }
            heads.pop();
            positions.push(next_position);
            advance(&mut cursors, &mut heads, next_position);
        }
        if Some(id) != skip {
            visit(id, slot, &positions);
        }
    }
}

fn advance(
    cursors: &mut [btree_map::Iter<'_, ConnectionId, Slot>],
    heads: &mut BinaryHeap<Reverse<(ConnectionId, usize, Slot)>>,
    position: usize,
) {
    if let Some((&id, &slot)) = cursors[position].next() {
        heads.push(Reverse((id, position, slot)));
    }
}
