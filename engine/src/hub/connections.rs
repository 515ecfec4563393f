//! Who is connected: connection ids, sender details, the per-connection push state,
//! and the case-insensitive index of user ids.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use pushwire_protocol::{GroupId, PeerSender, Sender, Text};

/// A connection known to the hub.
///
/// Assigned by [`super::Hub::connect`] in ascending order from 1 and never reused, so
/// ordering by id is ordering by arrival and a stale id cannot name a newer
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection {}", self.0)
    }
}

/// What the hub needs to know about a connection when it joins: how other
/// clients see it as a sender, and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The authenticated user id (from the Hello).
    pub user_id: Text,
    /// The client's address as the server saw it.
    pub addr: IpAddr,
    /// The client's port as the server saw it.
    pub port: u16,
    /// The service the client connected to.
    pub service_id: u32,
    /// Whether the connection gets a self-flagged copy of its own publications and
    /// user messages (the Hello's echo option; on by default in SocketPro).
    pub echo: bool,
}

impl ConnectionInfo {
    /// Details of a connection with echo on.
    pub fn new(user_id: impl Into<Text>, addr: IpAddr, port: u16, service_id: u32) -> Self {
        Self {
            user_id: user_id.into(),
            addr,
            port,
            service_id,
            echo: true,
        }
    }

    /// The same details with echo set to `echo`.
    pub fn with_echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// This connection as the sender of an event on a server that is not
    /// clustered; `is_self` on its own copy.
    pub fn sender(&self, is_self: bool) -> Sender {
        Sender::Peer(self.peer(is_self))
    }

    fn peer(&self, is_self: bool) -> PeerSender {
        PeerSender {
            user_id: self.user_id.clone(),
            addr: self.addr,
            port: self.port,
            service_id: self.service_id,
            is_self,
            node: None,
        }
    }
}

/// The key user ids are compared by: Unicode lowercase (`str::to_lowercase`), so
/// "Alice", "ALICE" and "alice" are one user.
pub(crate) fn user_key(user_id: &str) -> String {
    user_id.to_lowercase()
}

/// Index of a live connection in the slab. Stored in group member lists so fan-out
/// reaches a receiver's state without a search.
pub(crate) type Slot = u32;

/// The hub's state for one live connection.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) id: ConnectionId,
    pub(crate) info: ConnectionInfo,
    /// `info` as a non-self sender, built once: cloning it per receiver is a
    /// reference-count increment (the user id shares its bytes).
    pub(crate) sender: Sender,
    pub(crate) user_key: String,
    pub(crate) groups: BTreeSet<GroupId>,
    /// Sequence number of the next push event to this connection (the first is 1).
    pub(crate) next_seq: u64,
    /// The resume token of a resumable session.
    pub(crate) token: Option<pushwire_protocol::ResumeToken>,
    /// Whether its connection is up (a detached session only fills its replay buffer).
    pub(crate) attached: bool,
    /// When a detached session ends.
    pub(crate) expires: Option<std::time::Instant>,
    /// Events kept for a resume.
    pub(crate) replay: super::session::Replay,
}

impl Connection {
    /// Takes the next sequence number.
    pub(crate) fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The sender as this connection itself sees it (the echo's sender).
    pub(crate) fn self_sender(&self) -> Sender {
        match &self.sender {
            Sender::Peer(peer) => Sender::Peer(PeerSender {
                is_self: true,
                ..peer.clone()
            }),
            Sender::Server => unreachable!("a connection's sender is a peer"),
        }
    }
}

/// Live connections: a slab for constant-time access from member lists, an ordered
/// index from id to slot, and the user index.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    slab: Vec<Option<Connection>>,
    /// Free slots, reused last-freed first (deterministic).
    free: Vec<Slot>,
    by_id: BTreeMap<ConnectionId, Slot>,
    /// Lowercased user id to that user's connections, in ascending id order.
    by_user: BTreeMap<String, BTreeMap<ConnectionId, Slot>>,
    next_id: u64,
}

impl Connections {
    /// Adds a connection; `node`: the cluster node it is on, named in its sender
    /// (version 5), when the hub is clustered.
    pub(crate) fn insert(
        &mut self,
        info: ConnectionInfo,
        node: Option<Text>,
    ) -> (ConnectionId, Slot) {
        self.next_id += 1;
        let id = ConnectionId(self.next_id);
        let user_key = user_key(info.user_id.as_str());
        let connection = Connection {
            id,
            sender: Sender::Peer(PeerSender {
                node,
                ..info.peer(false)
            }),
            info,
            user_key: user_key.clone(),
            groups: BTreeSet::new(),
            next_seq: 1,
            token: None,
            attached: true,
            expires: None,
            replay: Default::default(),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(connection);
                slot
            }
            None => {
                let slot = Slot::try_from(self.slab.len())
                    .expect("more than u32::MAX simultaneous connections");
                self.slab.push(Some(connection));
                slot
            }
        };
        self.by_id.insert(id, slot);
        self.by_user.entry(user_key).or_default().insert(id, slot);
        (id, slot)
    }

    pub(crate) fn remove(&mut self, id: ConnectionId) -> Option<Connection> {
        let slot = self.by_id.remove(&id)?;
        let connection = self.slab[slot as usize]
            .take()
            .expect("indexed slot holds a connection");
        self.free.push(slot);
        if let Some(user) = self.by_user.get_mut(&connection.user_key) {
            user.remove(&id);
            if user.is_empty() {
                self.by_user.remove(&connection.user_key);
            }
        }
        Some(connection)
    }

    pub(crate) fn slot(&self, id: ConnectionId) -> Option<Slot> {
        self.by_id.get(&id).copied()
    }

    pub(crate) fn get(&self, id: ConnectionId) -> Option<&Connection> {
        self.slot(id).map(|slot| self.at(slot))
    }

    pub(crate) fn get_mut(&mut self, id: ConnectionId) -> Option<&mut Connection> {
        let slot = self.slot(id)?;
        Some(self.at_mut(slot))
    }

    /// The connection in a slot taken from an index or member list.
    pub(crate) fn at(&self, slot: Slot) -> &Connection {
        self.slab[slot as usize]
            .as_ref()
            .expect("indexed slot holds a connection")
    }

    /// The connection in a slot taken from an index or member list.
    pub(crate) fn at_mut(&mut self, slot: Slot) -> &mut Connection {
        self.slab[slot as usize]
            .as_mut()
            .expect("indexed slot holds a connection")
    }

    /// The connections of the user whose lowercased id is `key`, ascending.
    pub(crate) fn of_user(&self, key: &str) -> Option<&BTreeMap<ConnectionId, Slot>> {
        self.by_user.get(key)
    }

    /// Calls `f` with every connection of the user whose lowercased id is `key`,
    /// except `skip`, in ascending id order.
    pub(crate) fn for_each_of_user(
        &mut self,
        key: &str,
        skip: Option<ConnectionId>,
        mut f: impl FnMut(&mut Connection),
    ) {
        let Some(connections) = self.by_user.get(key) else {
            return;
        };
        for (&id, &slot) in connections {
            if Some(id) != skip {
                let connection = self.slab[slot as usize]
                    .as_mut()
                    .expect("indexed slot holds a connection");
                f(connection);
            }
        }
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.by_id.keys().copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}
