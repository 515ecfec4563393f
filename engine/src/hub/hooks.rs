//! Application hooks: the server's say over every push operation.

use bytes::Bytes;
use pushwire_protocol::{GroupId, Text};

use super::connections::{ConnectionId, ConnectionInfo};

/// Who performs a push operation, which decides the sender its events carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Actor {
    /// The server on its own: events carry [`pushwire_protocol::Sender::Server`] and
    /// nobody gets an echo.
    Server,
    /// A connection: its own command, or the server acting on its behalf. Events carry
    /// this connection as their sender, and it gets the echo (when its echo is on).
    Connection(ConnectionId),
}

/// What started an operation a hook is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A push command the client sent on its connection.
    Client,
    /// A call of the hub's server API, on the server's own account or on behalf of a
    /// connection.
    Server,
    /// The connection left; the hook is told which groups it leaves and cannot refuse.
    Disconnect,
    /// The server removed a chat group; each member is told it leaves that group and
    /// cannot refuse.
    GroupRemoved,
}

impl Origin {
    /// Whether the hook is only being informed: its verdict is ignored because the
    /// change happens anyway (a disconnect or a group removal).
    pub fn is_notification(self) -> bool {
        matches!(self, Origin::Disconnect | Origin::GroupRemoved)
    }
}

/// Who asks, and on whose account, passed to every hook.
#[derive(Debug, Clone, Copy)]
pub struct HookContext<'a> {
    /// What started the operation. Authorization hooks usually check only
    /// [`Origin::Client`] operations and trust the server's own calls.
    pub origin: Origin,
    /// The connection the operation is done as: the member whose groups change (for
    /// subscribe and unsubscribe) or the sender (for publish and user messages).
    pub actor: Actor,
    /// The actor's connection details; `Some` exactly when `actor` is a connection.
    pub info: Option<&'a ConnectionInfo>,
}

/// A hook's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Go ahead.
    #[default]
    Allow,
    /// Refuse the whole operation. A client command is answered with a PushRejected
    /// carrying `RejectCode::NotAuthorized`, no groups and this reason.
    Refuse {
        /// Sent back to the caller.
        reason: Text,
    },
    /// Refuse these groups only and go ahead with the rest (per-group
    /// authorization). Groups the operation does not concern are ignored. The refused
    /// ones are reported in a PushRejected with `RejectCode::NotAuthorized`; when every
    /// group is refused nothing happens besides that report. For a user message,
    /// which has no groups, this is the same as [`Verdict::Refuse`].
    RefuseGroups {
        /// The groups refused.
        groups: Vec<GroupId>,
        /// Sent back to the caller.
        reason: Text,
    },
}

impl Verdict {
    /// Refuses the whole operation with `reason`.
    pub fn refuse(reason: impl Into<Text>) -> Self {
        Verdict::Refuse {
            reason: reason.into(),
        }
    }

    /// Refuses `groups` only, with `reason`.
    pub fn refuse_groups(groups: impl Into<Vec<GroupId>>, reason: impl Into<Text>) -> Self {
        Verdict::RefuseGroups {
            groups: groups.into(),
            reason: reason.into(),
        }
    }
}

/// The application's hooks into push operations (SocketPro's `OnSubscribe`,
/// `OnUnsubscribe`, `OnPublish` and `OnSendUserMessage`).
///
/// Each hook runs before the change is applied, after the hub's own checks (empty
/// group list, unknown groups, payload size, receiver id), and sees only what would
/// actually happen: the known groups the member would newly join or leave, or the
/// publication's known target groups, in ascending order and without duplicates. A
/// hook is not called when nothing would change (for example a subscribe to groups
/// the connection is already in).
///
/// Hooks run for client commands and for the server API alike; `context.origin` tells
/// them apart. Disconnects and group removals call [`PushHooks::on_unsubscribe`] as a
/// notification: its verdict is ignored.
///
/// [`on_join`](PushHooks::on_join) and [`on_leave`](PushHooks::on_leave) are
/// notifications: they run in the hub's order with the others, so a recorder of hook
/// calls sees a session's whole life in sequence.
///
/// Every method defaults to [`Verdict::Allow`] (or to doing nothing).
pub trait PushHooks {
    /// A session joined the hub (a connection was let in; a resume is not a join). It
    /// is in no group yet.
    fn on_join(&mut self, connection: ConnectionId, info: &ConnectionInfo) {
        let _ = (connection, info);
    }

    /// A session left the hub: its client said goodbye, its detached session
    /// expired, or the server ended it. Runs after its implicit unsubscribe-all (the
    /// [`on_unsubscribe`](PushHooks::on_unsubscribe) notification).
    fn on_leave(&mut self, connection: ConnectionId, info: &ConnectionInfo) {
        let _ = (connection, info);
    }

    /// `context.actor` is about to join `groups`.
    fn on_subscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        let _ = (context, groups);
        Verdict::Allow
    }

    /// `context.actor` is about to leave `groups`.
    fn on_unsubscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        let _ = (context, groups);
        Verdict::Allow
    }

    /// `context.actor` is about to publish `payload` to `groups`.
    fn on_publish(
        &mut self,
        context: &HookContext<'_>,
        groups: &[GroupId],
        payload: &Bytes,
    ) -> Verdict {
        let _ = (context, groups, payload);
        Verdict::Allow
    }

    /// `context.actor` is about to send `payload` to every connection of the user
    /// `receiver` (as given by the sender, before case folding).
    fn on_user_message(
        &mut self,
        context: &HookContext<'_>,
        receiver: &str,
        payload: &Bytes,
    ) -> Verdict {
        let _ = (context, receiver, payload);
        Verdict::Allow
    }
}

/// Hooks that permit everything: the hub's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllowAll;

impl PushHooks for AllowAll {}
