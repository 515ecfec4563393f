//! Records the server's journal from inside the hub: push hooks that allow every
//! operation and write down what the hub is about to apply — joins and leaves
//! included — in the hub's own order.

use crate::history::{JournalEntry, LeaveCause, Origin, SessionKey};
use bytes::Bytes;
use pushwire_engine::hub::{
    Actor, ConnectionId, ConnectionInfo, HookContext, Origin as HubOrigin, PushHooks, Verdict,
};
use pushwire_protocol::GroupId;
use std::sync::{Arc, Mutex};

/// A shared, append-only journal.
#[derive(Debug, Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<JournalEntry>>>);

impl Journal {
    /// Appends an entry.
    pub fn push(&self, entry: JournalEntry) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }

    /// How many entries were recorded so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything recorded so far.
    pub fn snapshot(&self) -> Vec<JournalEntry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Push hooks that allow everything and journal it.
#[derive(Debug, Clone)]
pub struct RecordingHooks {
    journal: Journal,
}

impl RecordingHooks {
    /// Hooks writing into `journal`.
    pub fn new(journal: Journal) -> Self {
        Self { journal }
    }
}

fn session(context: &HookContext<'_>) -> Option<SessionKey> {
    context
        .info
        .and_then(|info| SessionKey::parse(info.user_id.as_str()))
}

fn origin(context: &HookContext<'_>) -> Origin {
    match (context.actor, session(context)) {
        (Actor::Connection(_), Some(s)) => Origin::Session(s),
        _ => Origin::Server,
    }
}

fn ids(groups: &[GroupId]) -> Vec<u32> {
    groups.iter().map(|g| g.0).collect()
}

impl PushHooks for RecordingHooks {
    fn on_join(&mut self, _: ConnectionId, info: &ConnectionInfo) {
        if let Some(session) = SessionKey::parse(info.user_id.as_str()) {
            self.journal.push(JournalEntry::Connected {
                session,
                echo: info.echo,
            });
        }
    }

    fn on_leave(&mut self, _: ConnectionId, info: &ConnectionInfo) {
        if let Some(session) = SessionKey::parse(info.user_id.as_str()) {
            self.journal.push(JournalEntry::Disconnected { session });
        }
    }

    fn on_subscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        if let Some(session) = session(context) {
            self.journal.push(JournalEntry::Subscribe {
                session,
                groups: ids(groups),
            });
        }
        Verdict::Allow
    }

    fn on_unsubscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        if let Some(session) = session(context) {
            let cause = match context.origin {
                HubOrigin::Disconnect => LeaveCause::Disconnect,
                HubOrigin::GroupRemoved => LeaveCause::GroupRemoved,
                HubOrigin::Client | HubOrigin::Server => LeaveCause::Request,
            };
            self.journal.push(JournalEntry::Unsubscribe {
                session,
                groups: ids(groups),
                cause,
            });
        }
        Verdict::Allow
    }

    fn on_publish(
        &mut self,
        context: &HookContext<'_>,
        groups: &[GroupId],
        payload: &Bytes,
    ) -> Verdict {
        self.journal.push(JournalEntry::Publish {
            origin: origin(context),
            groups: ids(groups),
            payload: payload.clone(),
        });
        Verdict::Allow
    }

    fn on_user_message(
        &mut self,
        context: &HookContext<'_>,
        receiver: &str,
        payload: &Bytes,
    ) -> Verdict {
        self.journal.push(JournalEntry::UserMessage {
            origin: origin(context),
            receiver: receiver.to_owned(),
            payload: payload.clone(),
        });
        Verdict::Allow
    }
}
