//! How the tool prints events: readable lines like the seed's Figure 8, or one JSON
//! object per line (`--json`).
//!
//! JSON objects look like
//! `{"event":"publish","seq":3,"sender":{"user_id":"alice","ip":"127.0.0.1","port":53211,"service_id":1,"self":false,"server":false},"groups":[1,3],"message":"hi"}`
//! (the sender gains `"node":"n2"` from a clustered server);
//! `event` is one of `publish`, `user_message`, `subscribe`, `unsubscribe`, `gap`,
//! `session_lost`, `rejected`, `delivered`, and fields that do not apply are left out.
//! Messages are printed as UTF-8, invalid sequences replaced (lossy).

use crate::client::Event;
use pushwire_protocol::{GroupId, RejectCode, Sender};
use serde::Serialize;
use std::borrow::Cow;
use std::net::SocketAddr;

/// The sender as `alice@127.0.0.1:53211 (service 1)`, with `, node n2` when a
/// clustered server named the sender's node and `, self` on one's own events, or
/// `the server`.
pub fn describe_sender(sender: &Sender) -> String {
    match sender {
        Sender::Server => "the server".to_owned(),
        Sender::Peer(peer) => format!(
            "{}@{} (service {}{}{})",
            peer.user_id,
            SocketAddr::new(peer.addr, peer.port),
            peer.service_id,
            match &peer.node {
                Some(node) => format!(", node {node}"),
                None => String::new(),
            },
            if peer.is_self { ", self" } else { "" }
        ),
    }
}

fn ids(groups: &[GroupId]) -> Vec<u32> {
    groups.iter().map(|g| g.0).collect()
}

fn text(message: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(message)
}

/// One readable line for an event, after the seed's Figure 8, e.g.
/// `Publish to [1, 3] from alice@127.0.0.1:53211 (service 1): message = hi`.
pub fn describe_event(event: &Event) -> String {
    match event {
        Event::Subscribed { sender, groups, .. } => format!(
            "Subscribe for {:?} by {}",
            ids(groups),
            describe_sender(sender)
        ),
        Event::Unsubscribed { sender, groups, .. } => format!(
            "Unsubscribe from {:?} by {}",
            ids(groups),
            describe_sender(sender)
        ),
        Event::Published {
            sender,
            groups,
            message,
            ..
        } => format!(
            "Publish to {:?} from {}: message = {}",
            ids(groups),
            describe_sender(sender),
            text(message)
        ),
        Event::UserMessage {
            sender, message, ..
        } => format!(
            "User message from {}: message = {}",
            describe_sender(sender),
            text(message)
        ),
        Event::Gap { first, last } => {
            format!("Gap: events {first}..={last} were lost")
        }
        Event::SessionLost { reason, text } => format!("Session lost ({reason:?}): {text}"),
        Event::Rejected {
            command_id,
            code: RejectCode::RateLimited,
            reason,
            ..
        } => format!("Rejected: command {command_id}: rate limited: {reason}"),
        Event::Rejected {
            command_id,
            code,
            groups,
            reason,
        } => format!(
            "Rejected: command {command_id} ({code:?}){}: {reason}",
            if groups.is_empty() {
                String::new()
            } else {
                format!(" for groups {:?}", ids(groups))
            }
        ),
        Event::Disconnected(reason) => format!("Disconnected ({reason}); reconnecting"),
        Event::Reconnected { resumed: true } => "Reconnected: session resumed".to_owned(),
        Event::Reconnected { resumed: false } => "Reconnected: new session".to_owned(),
        Event::Closed(reason) => format!("Connection closed: {reason}"),
    }
}

/// The sender in the JSON form of an event.
#[derive(Serialize)]
pub(crate) struct JsonSender {
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_id: Option<u32>,
    /// The cluster node the sender is on, when the server named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(rename = "self")]
    is_self: bool,
    server: bool,
}

impl From<&Sender> for JsonSender {
    fn from(sender: &Sender) -> Self {
        match sender {
            Sender::Server => JsonSender {
                user_id: None,
                ip: None,
                port: None,
                service_id: None,
                node: None,
                is_self: false,
                server: true,
            },
            Sender::Peer(peer) => JsonSender {
                user_id: Some(peer.user_id.to_string()),
                ip: Some(peer.addr.to_string()),
                port: Some(peer.port),
                service_id: Some(peer.service_id),
                node: peer.node.as_ref().map(|n| n.to_string()),
                is_self: peer.is_self,
                server: false,
            },
        }
    }
}

/// The JSON form of an event or a command's answer; fields that do not apply stay
/// `None` and are left out.
#[derive(Serialize, Default)]
pub(crate) struct JsonEvent<'a> {
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<JsonSender>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
}

impl JsonEvent<'_> {
    /// The object as one line of JSON.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }
}

/// One line of JSON for an event; `None` for [`Event::Closed`], which the tool
/// reports on stderr instead.
pub fn event_json(event: &Event) -> Option<String> {
    let json = match event {
        Event::Subscribed {
            seq,
            sender,
            groups,
        }
        | Event::Unsubscribed {
            seq,
            sender,
            groups,
        } => JsonEvent {
            event: if matches!(event, Event::Subscribed { .. }) {
                "subscribe"
            } else {
                "unsubscribe"
            },
            seq: Some(*seq),
            sender: Some(sender.into()),
            groups: Some(ids(groups)),
            ..JsonEvent::default()
        },
        Event::Published {
            seq,
            sender,
            groups,
            message,
        } => JsonEvent {
            event: "publish",
            seq: Some(*seq),
            sender: Some(sender.into()),
            groups: Some(ids(groups)),
            message: Some(text(message)),
            ..JsonEvent::default()
        },
        Event::UserMessage {
            seq,
            sender,
            message,
        } => JsonEvent {
            event: "user_message",
            seq: Some(*seq),
            sender: Some(sender.into()),
            message: Some(text(message)),
            ..JsonEvent::default()
        },
        Event::Gap { first, last } => JsonEvent {
            event: "gap",
            first: Some(*first),
            last: Some(*last),
            ..JsonEvent::default()
        },
        Event::SessionLost { reason, text } => JsonEvent {
            event: "session_lost",
            code: Some(format!("{reason:?}")),
            reason: Some(text.to_string()),
            ..JsonEvent::default()
        },
        Event::Rejected {
            command_id,
            code,
            groups,
            reason,
        } => JsonEvent {
            event: "rejected",
            command_id: Some(*command_id),
            code: Some(format!("{code:?}")),
            groups: Some(ids(groups)),
            reason: Some(reason.to_string()),
            ..JsonEvent::default()
        },
        Event::Disconnected(reason) => JsonEvent {
            event: "disconnected",
            reason: Some(reason.to_string()),
            ..JsonEvent::default()
        },
        Event::Reconnected { resumed } => JsonEvent {
            event: if *resumed { "resumed" } else { "reconnected" },
            ..JsonEvent::default()
        },
        Event::Closed(_) => return None,
    };
    Some(json.to_line())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pushwire_protocol::PeerSender;

    fn alice(is_self: bool) -> Sender {
        Sender::Peer(PeerSender {
            user_id: "alice".into(),
            addr: "127.0.0.1".parse().unwrap(),
            port: 53211,
            service_id: 1,
            is_self,
            node: None,
        })
    }

    fn publication(sender: Sender) -> Event {
        Event::Published {
            seq: 7,
            sender,
            groups: vec![GroupId(1), GroupId(3)],
            message: Bytes::from_static(b"hi \xff"),
        }
    }

    #[test]
    fn a_publication_reads_like_figure_8() {
        assert_eq!(
            describe_event(&publication(alice(false))),
            "Publish to [1, 3] from alice@127.0.0.1:53211 (service 1): message = hi \u{fffd}"
        );
        assert!(describe_event(&publication(alice(true))).contains("(service 1, self)"));
        assert!(describe_event(&publication(Sender::Server)).contains("from the server:"));
    }

    #[test]
    fn json_has_the_documented_fields_and_omits_the_rest() {
        let line = event_json(&publication(alice(false))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "event": "publish",
                "seq": 7,
                "sender": {
                    "user_id": "alice", "ip": "127.0.0.1", "port": 53211,
                    "service_id": 1, "self": false, "server": false
                },
                "groups": [1, 3],
                "message": "hi \u{fffd}",
            })
        );
        let line = event_json(&publication(Sender::Server)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value["sender"],
            serde_json::json!({"self": false, "server": true})
        );
    }

    #[test]
    fn notices_have_their_own_event_names() {
        let gap = event_json(&Event::Gap { first: 4, last: 9 }).unwrap();
        assert_eq!(gap, r#"{"event":"gap","first":4,"last":9}"#);
        let closed = Event::Closed(pushwire_engine::CloseReason::PeerClosed);
        assert_eq!(event_json(&closed), None);
    }
}
