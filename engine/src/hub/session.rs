//! Sessions that outlive their connection: the replay buffer, detaching, resuming
//! with replay (or a gap), acknowledgements, and expiry.
//!
//! A hub member is a session. While its connection is up the session is *attached*:
//! its events are delivered as usual and also kept, bounded, in its replay buffer
//! until the client acknowledges them. When the connection drops the shell
//! *detaches* the session: it keeps its groups (nobody is told anything), its events
//! go only to the replay buffer, and it expires after the session timeout; only then
//! do the other members get its Unsubscribed notifications. A client that comes back
//! in time *resumes* with its token and the last sequence number it saw: the hub
//! re-delivers every later event it still holds, in order, preceded by a Gap if the
//! buffer no longer reaches back far enough.

use super::connections::{user_key, Connection};
use super::events::{Delivery, PushEvent, StoredEvent};
use super::{ConnectionId, Hub, HubError, PushHooks, PushOutcome};
use pushwire_protocol::{Gap, ResumeToken};
use std::collections::VecDeque;
use std::time::Instant;

/// Bounds of a session's replay buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplayLimits {
    pub events: usize,
    pub bytes: usize,
}

/// Events kept for a possible resume, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    events: VecDeque<(u64, StoredEvent, usize)>,
    bytes: usize,
}

impl Replay {
    /// Keeps a sequenced event, evicting the oldest beyond the limits.
    pub(crate) fn record(
        &mut self,
        seq: u64,
        event: &StoredEvent,
        frame_len: usize,
        limits: ReplayLimits,
    ) {
        if limits.events == 0 {
            return;
        }
        self.events.push_back((seq, event.clone(), frame_len));
        self.bytes += frame_len;
        while self.events.len() > limits.events
            || (self.bytes > limits.bytes && self.events.len() > 1)
        {
            if let Some((_, _, len)) = self.events.pop_front() {
                self.bytes -= len;
            }
        }
    }

    /// Forgets events up to `seq`: the client has them.
    fn acknowledge(&mut self, seq: u64) {
        while self.events.front().is_some_and(|(s, _, _)| *s <= seq) {
            if let Some((_, _, len)) = self.events.pop_front() {
                self.bytes -= len;
            }
        }
    }

    /// The oldest sequence number still held, if any.
    fn first(&self) -> Option<u64> {
        self.events.front().map(|(s, _, _)| *s)
    }

    /// Events held.
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// Frame bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Why a session could not be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// No session has this token (never existed, expired, or the server restarted).
    #[error("no session with this resume token")]
    Unknown,
    /// The token belongs to another user's session.
    #[error("the resume token belongs to another user")]
    NotYours,
}

/// A successful resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// The session, now attached again.
    pub session: ConnectionId,
    /// Events re-delivered from the replay buffer.
    pub replayed: usize,
    /// The range announced as lost, when the buffer did not reach back far enough.
    pub gap: Option<(u64, u64)>,
    /// Whether the session was still attached (its old connection had not been
    /// noticed gone): the shell must close that connection.
    pub was_attached: bool,
}

impl Connection {
    fn first_available(&self) -> u64 {
        self.replay.first().unwrap_or(self.next_seq)
    }
}

impl<H: PushHooks> Hub<H> {
    /// A connection joins as a resumable session identified by `token` (from a
    /// CSPRNG the caller owns). See [`Hub::connect`].
    pub fn connect_session(
        &mut self,
        info: super::ConnectionInfo,
        token: ResumeToken,
    ) -> ConnectionId {
        let id = self.connect(info);
        if let Some(c) = self.connections.get_mut(id) {
            c.token = Some(token);
        }
        self.tokens.insert(token.0, id);
        id
    }

    /// The session's connection dropped without the client saying goodbye. A
    /// resumable session is kept (groups, sequence numbers, events into its replay
    /// buffer) until `now` plus the session timeout; a session without a token, or
    /// a zero timeout, ends now as by [`Hub::disconnect`].
    pub fn detach(
        &mut self,
        session: ConnectionId,
        now: Instant,
    ) -> Result<Option<PushOutcome>, HubError> {
        let timeout = self.config.session_timeout;
        let connection = self
            .connections
            .get_mut(session)
            .ok_or(HubError::UnknownConnection(session))?;
        if connection.token.is_none() || timeout.is_zero() || self.config.replay_events == 0 {
            return self.disconnect(session).map(Some);
        }
        connection.attached = false;
        let expires = now + timeout;
        connection.expires = Some(expires);
        self.expiries.insert((expires, session));
        // Deliveries not yet drained for it have no connection to go to; they are in
        // the replay buffer.
        self.outbox.deliveries.retain(|d| d.connection != session);
        Ok(None)
    }

    /// The session `token` resumes, if the hub has it (attached or detached).
    pub fn session_of_token(&self, token: &ResumeToken) -> Option<ConnectionId> {
        self.tokens.get(&token.0).copied()
    }

    /// A client presents `token` and the last sequence number it saw. On success the
    /// session is attached again and every later event still held is queued for
    /// delivery, in order, after a Gap for what is no longer held.
    pub fn resume(
        &mut self,
        token: &ResumeToken,
        user_id: &str,
        last_seq: u64,
    ) -> Result<Resumed, ResumeError> {
        let &session = self.tokens.get(&token.0).ok_or(ResumeError::Unknown)?;
        let connection = self
            .connections
            .get_mut(session)
            .ok_or(ResumeError::Unknown)?;
        if connection.user_key != user_key(user_id) {
            return Err(ResumeError::NotYours);
        }
        let was_attached = connection.attached;
        if let Some(expires) = connection.expires.take() {
            self.expiries.remove(&(expires, session));
        }
        connection.attached = true;
        // A client cannot have seen more than was sent.
        let last_seq = last_seq.min(connection.next_seq - 1);
        let first_available = connection.first_available();
        let gap = (last_seq + 1 < first_available).then(|| (last_seq + 1, first_available - 1));
        if was_attached {
            self.outbox.deliveries.retain(|d| d.connection != session);
        }
        let connection = self.connections.get_mut(session).expect("looked up above");
        if let Some((first, last)) = gap {
            let event = PushEvent::Gap(Gap { first, last });
            self.outbox.deliveries.push_back(Delivery {
                connection: session,
                event: event.into(),
                frame_len: pushwire_protocol::FRAME_HEADER_LEN + 16,
            });
        }
        let mut replayed = 0;
        for (seq, event, frame_len) in &connection.replay.events {
            if *seq > last_seq {
                self.outbox.deliveries.push_back(Delivery {
                    connection: session,
                    event: event.clone(),
                    frame_len: *frame_len,
                });
                replayed += 1;
            }
        }
        #[cfg(all(feature = "fault-injection", debug_assertions))]
        self.fault_on_replay(session, replayed);
        Ok(Resumed {
            session,
            replayed,
            gap,
            was_attached,
        })
    }

    /// The client has every event up to `seq`: they leave the replay buffer.
    pub fn acknowledge(&mut self, session: ConnectionId, seq: u64) {
        if let Some(c) = self.connections.get_mut(session) {
            c.replay.acknowledge(seq);
        }
    }

    /// Whether a session's connection is up.
    pub fn is_attached(&self, session: ConnectionId) -> Option<bool> {
        self.connections.get(session).map(|c| c.attached)
    }

    /// Events and bytes a session holds for replay.
    pub fn replay_held(&self, session: ConnectionId) -> Option<(usize, usize)> {
        self.connections
            .get(session)
            .map(|c| (c.replay.len(), c.replay.bytes()))
    }

    /// When [`Hub::handle_timeout`] must next be called: the earliest expiry of a
    /// detached session.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// Ends every detached session whose timeout has passed, as by
    /// [`Hub::disconnect`] (the other members are told now). Returns them, with
    /// their details.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(ConnectionId, super::ConnectionInfo)> {
        let mut ended = Vec::new();
        while let Some(&(expires, session)) = self.expiries.first() {
            if expires > now {
                break;
            }
            self.expiries.remove(&(expires, session));
            let info = self.connection_info(session).cloned();
            let _ = self.disconnect(session);
            if let Some(info) = info {
                ended.push((session, info));
            }
        }
        ended
    }
}
