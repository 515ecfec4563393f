//! The golden frames shared with the JavaScript client (`io-tokio/web/test/golden.json`):
//! every entry decodes with this crate to the fields the JS side describes, and
//! re-encodes to the same bytes; every error entry is refused with the same error. The
//! JS tests check the same file against the JS codec, so a drift on either side fails.
//!
//! The JSON form: field names in camelCase as the JS messages have them, `u64` fields
//! as decimal strings, byte fields as hex, senders as `{"kind": "server"}` or
//! `{"kind": "peer", "self", "userId", "address", "port", "serviceId"}` (and `"node"`
//! when a clustered server named it, version 5).

use bytes::BytesMut;
use pushwire_protocol::*;
use serde_json::{json, Value};
use std::net::IpAddr;

const GOLDEN: &str = include_str!("../../io-tokio/web/test/golden.json");

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0, "odd hex: {hex}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn groups(gs: &[GroupId]) -> Value {
    gs.iter().map(|g| g.0).collect()
}

fn sender(s: &Sender) -> Value {
    match s {
        Sender::Server => json!({ "kind": "server" }),
        Sender::Peer(p) => {
            let mut peer = json!({
                "kind": "peer",
                "self": p.is_self,
                "userId": p.user_id.as_str(),
                // Compared as addresses, not text (see `same_address`).
                "address": p.addr.to_string(),
                "port": p.port,
                "serviceId": p.service_id,
            });
            // Version 5: present only when the server named the node, as in JS.
            if let Some(node) = &p.node {
                peer["node"] = json!(node.as_str());
            }
            peer
        }
    }
}

fn compression(c: &Option<Compression>) -> Value {
    match c {
        None => Value::Null,
        Some(c) => json!({ "algorithm": c.algorithm.to_wire(), "originalLen": c.original_len }),
    }
}

/// A decoded message in the JSON form of golden.json.
fn describe(m: &Message) -> Value {
    let s = |n: u64| Value::String(n.to_string());
    match m {
        Message::Hello(h) => json!({
            "type": "hello",
            "minVersion": h.min_version,
            "maxVersion": h.max_version,
            "serviceId": h.service_id,
            "options": { "echo": h.options.echo, "compression": h.options.compression },
            "userId": h.user_id.as_str(),
            "password": hex(&h.password),
            "resume": h.resume.map(|r| json!({ "token": hex(&r.token.0), "lastSeq": s(r.last_seq) })),
            "maxFrameSize": h.max_frame_size,
        }),
        Message::Welcome(w) => json!({
            "type": "welcome",
            "version": w.version,
            "sessionId": s(w.session_id),
            "resumeToken": hex(&w.resume_token.0),
            "resumed": w.resumed,
            "maxFrameSize": w.max_frame_size,
            "pingIntervalMs": w.ping_interval_ms,
            "sessionTimeoutMs": w.session_timeout_ms,
            "replayCapacity": w.replay_capacity,
            "idleTimeoutMs": w.idle_timeout_ms,
        }),
        Message::Refused(r) => {
            json!({ "type": "refused", "code": r.code.to_wire(), "reason": r.reason.as_str() })
        }
        Message::Request(r) => json!({
            "type": "request",
            "requestId": s(r.request_id),
            "methodId": r.method_id,
            "payload": hex(&r.payload),
        }),
        Message::Response(r) => {
            json!({ "type": "response", "requestId": s(r.request_id), "payload": hex(&r.payload) })
        }
        Message::ServerError(e) => json!({
            "type": "serverError",
            "requestId": s(e.request_id),
            "code": e.code.to_wire(),
            "message": e.message.as_str(),
        }),
        Message::BatchBegin(_) => json!({ "type": "batchBegin" }),
        Message::BatchCommit(c) => {
            json!({ "type": "batchCommit", "serverBatching": c.server_batching })
        }
        Message::Cancel(c) => json!({ "type": "cancel", "requestId": s(c.request_id) }),
        Message::Subscribe(c) => json!({
            "type": "subscribe",
            "commandId": s(c.command_id),
            "groups": groups(&c.groups),
        }),
        Message::Unsubscribe(c) => {
            let (all, gs) = match &c.groups {
                GroupSelection::All => (true, json!([])),
                GroupSelection::Groups(gs) => (false, groups(gs)),
            };
            json!({ "type": "unsubscribe", "commandId": s(c.command_id), "all": all, "groups": gs })
        }
        Message::Publish(p) => json!({
            "type": "publish",
            "commandId": s(p.command_id),
            "groups": groups(&p.groups),
            "compression": compression(&p.compression),
            "payload": hex(&p.payload),
        }),
        Message::SendUserMessage(p) => json!({
            "type": "sendUserMessage",
            "commandId": s(p.command_id),
            "receiver": p.receiver.as_str(),
            "compression": compression(&p.compression),
            "payload": hex(&p.payload),
        }),
        Message::ListGroups(l) => json!({ "type": "listGroups", "commandId": s(l.command_id) }),
        Message::Subscribed(e) => json!({
            "type": "subscribed",
            "seq": s(e.seq),
            "sender": sender(&e.sender),
            "groups": groups(&e.groups),
        }),
        Message::Unsubscribed(e) => json!({
            "type": "unsubscribed",
            "seq": s(e.seq),
            "sender": sender(&e.sender),
            "groups": groups(&e.groups),
        }),
        Message::Published(e) => json!({
            "type": "published",
            "seq": s(e.seq),
            "sender": sender(&e.sender),
            "groups": groups(&e.groups),
            "compression": compression(&e.compression),
            "payload": hex(&e.payload),
        }),
        Message::UserMessage(e) => json!({
            "type": "userMessage",
            "seq": s(e.seq),
            "sender": sender(&e.sender),
            "compression": compression(&e.compression),
            "payload": hex(&e.payload),
        }),
        Message::Gap(g) => json!({ "type": "gap", "first": s(g.first), "last": s(g.last) }),
        Message::SessionLost(l) => json!({
            "type": "sessionLost",
            "reason": l.reason.to_wire(),
            "text": l.text.as_str(),
        }),
        Message::PushRejected(r) => json!({
            "type": "pushRejected",
            "commandId": s(r.command_id),
            "code": r.code.to_wire(),
            "groups": groups(&r.groups),
            "reason": r.reason.as_str(),
        }),
        Message::UserMessageDelivered(d) => json!({
            "type": "userMessageDelivered",
            "commandId": s(d.command_id),
            "connections": d.connections,
        }),
        Message::GroupList(l) => json!({
            "type": "groupList",
            "commandId": s(l.command_id),
            "groups": l.groups.iter()
                .map(|g| json!({ "id": g.id.0, "description": g.description.as_str() }))
                .collect::<Vec<_>>(),
        }),
        Message::PushTaken(t) => json!({ "type": "pushTaken", "commandId": s(t.command_id) }),
        Message::Ping(p) => json!({ "type": "ping", "nonce": s(p.nonce) }),
        Message::Pong(p) => json!({ "type": "pong", "nonce": s(p.nonce) }),
        Message::Close(c) => {
            json!({ "type": "close", "code": c.code.to_wire(), "reason": c.reason.as_str() })
        }
        Message::Ack(a) => json!({ "type": "ack", "lastSeq": s(a.last_seq) }),
    }
}

/// Replaces every sender address by its parsed form, so "2001:db8::7" and a JS
/// spelling of the same address compare equal (the JS tests check the spelling).
fn normalize_addresses(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("kind").and_then(Value::as_str) == Some("peer") {
                if let Some(Value::String(a)) = map.get_mut("address") {
                    let parsed: IpAddr = a.parse().unwrap_or_else(|_| panic!("address {a}"));
                    *a = parsed.to_string();
                }
            }
            map.values_mut().for_each(normalize_addresses);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_addresses),
        _ => {}
    }
}

fn decode_one(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    assert_eq!(decoder.feed(bytes), bytes.len());
    let message = decoder.next_message()?.expect("a complete frame");
    assert_eq!(decoder.next_message(), Ok(None));
    assert_eq!(decoder.buffered(), 0);
    Ok(message)
}

fn error_name(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::FrameTooLarge { .. } => "FrameTooLarge",
        DecodeError::EmptyFrame => "EmptyFrame",
        DecodeError::UnknownMessageType(_) => "UnknownMessageType",
        DecodeError::Truncated { .. } => "Truncated",
        DecodeError::InvalidUtf8 { .. } => "InvalidUtf8",
        DecodeError::TooLong { .. } => "TooLong",
        DecodeError::InvalidValue { .. } => "InvalidValue",
        DecodeError::TrailingBytes { .. } => "TrailingBytes",
    }
}

fn golden() -> Value {
    serde_json::from_str(GOLDEN).expect("golden.json is JSON")
}

#[test]
fn js_golden_messages_decode_and_reencode() {
    let golden = golden();
    let entries = golden["messages"].as_array().expect("messages");
    assert!(entries.len() >= 30);
    let mut kinds = std::collections::BTreeSet::new();
    for entry in entries {
        let name = entry["name"].as_str().expect("name");
        let bytes = unhex(entry["hex"].as_str().expect("hex"));
        let message = decode_one(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        kinds.insert(message.kind());
        let mut got = describe(&message);
        let mut want = entry["message"].clone();
        normalize_addresses(&mut got);
        normalize_addresses(&mut want);
        assert_eq!(
            got, want,
            "{name}: the JS description differs from the Rust decoding"
        );
        if entry["canonical"].as_bool().expect("canonical") {
            let mut wire = BytesMut::new();
            message.encode(&mut wire);
            assert_eq!(hex(&wire), hex(&bytes), "{name}: the Rust encoding differs");
        }
    }
    assert_eq!(
        kinds.len(),
        MessageKind::ALL.len(),
        "every message type has a golden frame"
    );
}

#[test]
fn js_golden_errors_are_refused_alike() {
    let golden = golden();
    for entry in golden["errors"].as_array().expect("errors") {
        let name = entry["name"].as_str().expect("name");
        let bytes = unhex(entry["hex"].as_str().expect("hex"));
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.feed(&bytes);
        let error = match decoder.next_message() {
            Err(e) => e,
            Ok(m) => panic!("{name}: decoded as {m:?}"),
        };
        assert_eq!(
            error_name(&error),
            entry["error"].as_str().expect("error"),
            "{name}: {error}"
        );
    }
}
