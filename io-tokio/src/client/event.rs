//! Events delivered to the client application.

use bytes::Bytes;
use futures_core::Stream;
use pushwire_engine::CloseReason;
use pushwire_protocol::{GroupId, Message, RejectCode, Sender, SessionLostReason, Text};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A push event, a notice from the server, or the end of the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection joined groups (`sender.is_self()` for one's own subscription).
    Subscribed {
        /// Per-session sequence number.
        seq: u64,
        /// Who joined.
        sender: Sender,
        /// The groups concerned.
        groups: Vec<GroupId>,
    },
    /// A connection left groups.
    Unsubscribed {
        /// Per-session sequence number.
        seq: u64,
        /// Who left.
        sender: Sender,
        /// The groups concerned.
        groups: Vec<GroupId>,
    },
    /// A publication to groups this connection is in (or its own echo).
    Published {
        /// Per-session sequence number.
        seq: u64,
        /// The publisher.
        sender: Sender,
        /// Target groups this connection belongs to.
        groups: Vec<GroupId>,
        /// The message.
        message: Bytes,
    },
    /// A one-to-one message (or its echo).
    UserMessage {
        /// Per-session sequence number.
        seq: u64,
        /// Who sent it.
        sender: Sender,
        /// The message.
        message: Bytes,
    },
    /// Events `first..=last` were lost.
    Gap {
        /// First lost sequence number.
        first: u64,
        /// Last lost sequence number.
        last: u64,
    },
    /// The session could not be resumed.
    SessionLost {
        /// Why.
        reason: SessionLostReason,
        /// Detail.
        text: Text,
    },
    /// A push command was refused, wholly or partly.
    Rejected {
        /// The command.
        command_id: u64,
        /// Why.
        code: RejectCode,
        /// Offending groups.
        groups: Vec<GroupId>,
        /// The server's text.
        reason: Text,
    },
    /// The connection dropped; the client is reconnecting. Requests in flight ended
    /// with a connection-lost error.
    Disconnected(CloseReason),
    /// The connection is back. `resumed`: the session continued (missed events are
    /// replayed, or announced by a Gap); otherwise a SessionLost event follows and the
    /// client re-joins its groups by itself.
    Reconnected {
        /// Whether the server resumed the session.
        resumed: bool,
    },
    /// The client ended for good. The last event.
    Closed(CloseReason),
}

impl Event {
    pub(crate) fn from_message(message: Message) -> Option<Event> {
        Some(match message {
            Message::Subscribed(m) => Event::Subscribed {
                seq: m.seq,
                sender: m.sender,
                groups: m.groups,
            },
            Message::Unsubscribed(m) => Event::Unsubscribed {
                seq: m.seq,
                sender: m.sender,
                groups: m.groups,
            },
            Message::Published(m) => Event::Published {
                seq: m.seq,
                sender: m.sender,
                groups: m.groups,
                message: m.payload,
            },
            Message::UserMessage(m) => Event::UserMessage {
                seq: m.seq,
                sender: m.sender,
                message: m.payload,
            },
            Message::Gap(g) => Event::Gap {
                first: g.first,
                last: g.last,
            },
            Message::SessionLost(s) => Event::SessionLost {
                reason: s.reason,
                text: s.text,
            },
            Message::PushRejected(r) => Event::Rejected {
                command_id: r.command_id,
                code: r.code,
                groups: r.groups,
                reason: r.reason,
            },
            _ => return None,
        })
    }
}

/// The client's events as a `Stream` (also usable with [`EventStream::recv`]).
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
}

impl EventStream {
    pub(crate) fn new(rx: mpsc::Receiver<Event>) -> Self {
        Self { rx }
    }

    /// The next event; `None` after the connection's task has ended.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
