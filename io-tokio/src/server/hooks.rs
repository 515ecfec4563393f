//! The application's push hooks, logged like the seed's Figure 7.

use super::{ConnectionEvent, Observer};
use bytes::Bytes;
use pushwire_engine::hub::{ConnectionId, ConnectionInfo, HookContext, Origin, PushHooks, Verdict};
use pushwire_protocol::GroupId;

/// Wraps the application's hooks: logs every push operation (the seed's
/// OnSubscribe, OnUnsubscribe, OnPublish, OnSendUserMessage) and asks the
/// application. Membership changes are logged at info level; messages at debug
/// level (`RUST_LOG=pushwire_tokio::server::hooks=debug`), because a line per
/// message costs a busy server most of its throughput and writes payloads to the
/// log. Joins and leaves also go to the builder's observer.
pub(crate) struct LoggedHooks {
    pub app: Box<dyn PushHooks + Send>,
    pub observer: Option<Observer>,
}

impl LoggedHooks {
    fn observe(&self, event: ConnectionEvent) {
        if let Some(observer) = &self.observer {
            observer(&event);
        }
    }
}

fn who(context: &HookContext<'_>) -> String {
    match context.info {
        Some(info) => info.user_id.to_string(),
        None => "server".to_owned(),
    }
}

/// How an operation came about, as a suffix to its log line ("" for the client's own).
pub(crate) fn origin(context: &HookContext<'_>) -> &'static str {
    match context.origin {
        Origin::Client => "",
        Origin::Server => " (by the server)",
        Origin::Disconnect => " (disconnected)",
        Origin::GroupRemoved => " (group removed)",
    }
}

impl PushHooks for LoggedHooks {
    fn on_join(&mut self, connection: ConnectionId, info: &ConnectionInfo) {
        self.app.on_join(connection, info);
        self.observe(ConnectionEvent::Joined {
            connection,
            user_id: info.user_id.clone(),
            echo: info.echo,
        });
    }

    fn on_leave(&mut self, connection: ConnectionId, info: &ConnectionInfo) {
        self.app.on_leave(connection, info);
        self.observe(ConnectionEvent::Left {
            connection,
            user_id: info.user_id.clone(),
        });
    }

    fn on_subscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        tracing::info!(
            "{} subscribes for groups {:?}{}",
            who(context),
            ids(groups),
            origin(context)
        );
        self.app.on_subscribe(context, groups)
    }

    fn on_unsubscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        tracing::info!(
            "{} unsubscribes from groups {:?}{}",
            who(context),
            ids(groups),
            origin(context)
        );
        self.app.on_unsubscribe(context, groups)
    }

    fn on_publish(
        &mut self,
        context: &HookContext<'_>,
        groups: &[GroupId],
        payload: &Bytes,
    ) -> Verdict {
        tracing::debug!(
            "{} publishes a message ({}) to groups {:?}{}",
            who(context),
            String::from_utf8_lossy(&payload[..payload.len().min(200)]),
            ids(groups),
            origin(context)
        );
        self.app.on_publish(context, groups, payload)
    }

    fn on_user_message(
        &mut self,
        context: &HookContext<'_>,
        receiver: &str,
        payload: &Bytes,
    ) -> Verdict {
        tracing::debug!(
            "{} sends a message ({}) to {}{}",
            who(context),
            String::from_utf8_lossy(&payload[..payload.len().min(200)]),
            receiver,
            origin(context)
        );
        self.app.on_user_message(context, receiver, payload)
    }
}

fn ids(groups: &[GroupId]) -> Vec<u32> {
    groups.iter().map(|g| g.0).collect()
}
