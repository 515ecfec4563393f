//! What the node holds now, for an operator: gauges for a metrics scrape and a
//! listing of the connections (the `/connz` of NATS).
//!
//! Both are computed when asked, by walking the node's tables under the caller's
//! hold of the node: a scrape every few seconds pays for it, a message never does.
//! The running totals are in [`NodeStats`](super::NodeStats).

use super::Node;
use crate::hub::{ConnectionId, PushHooks};
use pushwire_protocol::{GroupId, Text};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// When and from where a session's current connection joined.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attachment {
    since: Instant,
    peer: SocketAddr,
}

impl Attachment {
    pub(super) fn new(since: Instant, peer: SocketAddr) -> Self {
        Self { since, peer }
    }
}

/// Levels the node holds now (see [`Node::gauges`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeGauges {
    /// Sessions with a connection up.
    pub connections: usize,
    /// Sessions kept for a resume, without a connection.
    pub detached_sessions: usize,
    /// Registered chat groups.
    pub groups: usize,
    /// Group memberships of all sessions (a session in three groups counts three).
    pub subscriptions: usize,
    /// Push events held in the sessions' replay buffers.
    pub replay_events: usize,
    /// Bytes of those events.
    pub replay_bytes: usize,
    /// Frame bytes queued in the connections' mailboxes that their drivers have not
    /// taken yet (what a driver took and has not written is its own).
    pub outbound_bytes: usize,
    /// Receivers over the flow control's high-water mark.
    pub congested: usize,
}

/// One attached session, for the operator's listing (see
/// [`Node::connection_reports`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionReport {
    /// The session (its id is the Welcome's `session_id`).
    pub session: ConnectionId,
    /// The authenticated user id.
    pub user_id: Text,
    /// The address and port of the session's current connection.
    pub peer: SocketAddr,
    /// The service it connected to.
    pub service_id: u32,
    /// Its groups, ascending.
    pub groups: Vec<GroupId>,
    /// Frame bytes queued for it in its mailbox.
    pub queued_bytes: usize,
    /// Push events its replay buffer holds, and their bytes.
    pub replay: (usize, usize),
    /// How long its current connection has been up.
    pub connected_for: Duration,
    /// Whether it is over the flow control's high-water mark.
    pub congested: bool,
}

impl<H: PushHooks> Node<H> {
    /// The levels the node holds now. Walks every session and locks every mailbox
    /// once: for a scrape, not for a message path.
    pub fn gauges(&self) -> NodeGauges {
        let hub = &self.hub;
        let mut gauges = NodeGauges {
            connections: self.mailboxes.len(),
            groups: hub.groups().count(),
            congested: self.congestion.len(),
            ..NodeGauges::default()
        };
        for session in hub.connections() {
            if hub.is_attached(session) == Some(false) {
                gauges.detached_sessions += 1;
            }
            gauges.subscriptions += hub.subscriptions(session).map_or(0, Iterator::count);
            let (events, bytes) = hub.replay_held(session).unwrap_or_default();
            gauges.replay_events += events;
            gauges.replay_bytes += bytes;
        }
        gauges.outbound_bytes = self
            .mailboxes
            .values()
            .map(|mailbox| mailbox.lock().queue().bytes())
            .sum();
        gauges
    }

    /// Every attached session, ascending by id, as of `now`.
    pub fn connection_reports(&self, now: Instant) -> Vec<ConnectionReport> {
        let hub = &self.hub;
        self.mailboxes
            .iter()
            .filter_map(|(&session, mailbox)| {
                let info = hub.connection_info(session)?;
                let attachment = self.attachments.get(&session)?;
                Some(ConnectionReport {
                    session,
                    user_id: info.user_id.clone(),
                    peer: attachment.peer,
                    service_id: info.service_id,
                    groups: hub
                        .subscriptions(session)
                        .map(Iterator::collect)
                        .unwrap_or_default(),
                    queued_bytes: mailbox.lock().queue().bytes(),
                    replay: hub.replay_held(session).unwrap_or_default(),
                    connected_for: now.saturating_duration_since(attachment.since),
                    congested: self.congestion.contains_key(&session),
                })
            })
            .collect()
    }
}
