//! Sessions that outlive their connection: detach, resume with replay or a gap,
//! acknowledgements, expiry, and SocketPro's behaviour with a zero timeout.

use pushwire_engine::hub::{
    Actor, AllowAll, ConnectionId, ConnectionInfo, Hub, HubConfig, ResumeError,
};
use pushwire_protocol::{GroupId, Message, ResumeToken};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

fn hub(config: HubConfig) -> Hub<AllowAll> {
    let mut hub = Hub::new(config, AllowAll);
    hub.add_group(GroupId(1), "one").unwrap();
    hub
}

fn join(hub: &mut Hub<AllowAll>, user: &str, token: u8) -> ConnectionId {
    let info = ConnectionInfo::new(
        user,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        1000 + u16::from(token),
        1,
    );
    let id = hub.connect_session(info, ResumeToken([token; 16]));
    hub.subscribe(id, &[GroupId(1)]).unwrap();
    id
}

/// Drains every delivery: (receiver, message).
fn drain(hub: &mut Hub<AllowAll>) -> Vec<(ConnectionId, Message)> {
    std::iter::from_fn(|| hub.poll_delivery())
        .map(|d| d.into_message())
        .collect()
}

fn seqs(deliveries: &[(ConnectionId, Message)], to: ConnectionId) -> Vec<u64> {
    deliveries
        .iter()
        .filter(|(c, _)| *c == to)
        .filter_map(|(_, m)| match m {
            Message::Published(p) => Some(p.seq),
            Message::Subscribed(p) => Some(p.seq),
            Message::Unsubscribed(p) => Some(p.seq),
            Message::UserMessage(p) => Some(p.seq),
            _ => None,
        })
        .collect()
}

#[test]
fn a_detached_session_keeps_its_groups_and_replays_what_it_missed_on_resume() {
    let now = Instant::now();
    let mut hub = hub(HubConfig::default());
    let alice = join(&mut hub, "alice", 1);
    let bob = join(&mut hub, "bob", 2);
    drain(&mut hub);
    hub.publish(Actor::Server, &[GroupId(1)], "one".into())
        .unwrap();
    let before = drain(&mut hub);
    let alice_seen = *seqs(&before, alice).last().unwrap();

    hub.detach(alice, now).unwrap();
    for _ in 0..3 {
        hub.publish(Actor::Server, &[GroupId(1)], "while away".into())
            .unwrap();
    }
    let during = drain(&mut hub);
    assert!(
        seqs(&during, alice).is_empty(),
        "nothing is delivered to a detached session"
    );
    assert!(
        !during
            .iter()
            .any(|(c, m)| *c == bob && matches!(m, Message::Unsubscribed(_))),
        "nobody is told of a detach"
    );

    let resumed = hub
        .resume(&ResumeToken([1; 16]), "ALICE", alice_seen)
        .unwrap();
    assert_eq!(
        (resumed.session, resumed.replayed, resumed.gap),
        (alice, 3, None)
    );
    let replay = drain(&mut hub);
    assert_eq!(
        seqs(&replay, alice),
        [alice_seen + 1, alice_seen + 2, alice_seen + 3]
    );
    hub.publish(Actor::Server, &[GroupId(1)], "live".into())
        .unwrap();
    assert_eq!(
        seqs(&drain(&mut hub), alice),
        [alice_seen + 4],
        "then live, no holes"
    );
}

#[test]
fn an_overflowing_replay_buffer_resumes_with_a_gap() {
    let now = Instant::now();
    let mut hub = hub(HubConfig {
        replay_events: 2,
        ..HubConfig::default()
    });
    let alice = join(&mut hub, "alice", 1);
    drain(&mut hub);
    hub.detach(alice, now).unwrap();
    for _ in 0..5 {
        hub.publish(Actor::Server, &[GroupId(1)], "x".into())
            .unwrap();
    }
    // alice saw #1 (her Subscribed); #2..=#6 are publications; #5 and #6 are held.
    let resumed = hub.resume(&ResumeToken([1; 16]), "alice", 1).unwrap();
    assert_eq!(resumed.gap, Some((2, 4)));
    let replay = drain(&mut hub);
    assert!(matches!(&replay[0].1, Message::Gap(g) if (g.first, g.last) == (2, 4)));
    assert_eq!(seqs(&replay, alice), [5, 6]);
}

#[test]
fn acknowledged_events_leave_the_buffer() {
    let mut hub = hub(HubConfig::default());
    let alice = join(&mut hub, "alice", 1);
    for _ in 0..4 {
        hub.publish(Actor::Server, &[GroupId(1)], "x".into())
            .unwrap();
    }
    drain(&mut hub);
    assert_eq!(hub.replay_held(alice).unwrap().0, 5);
    hub.acknowledge(alice, 3);
    assert_eq!(hub.replay_held(alice).unwrap().0, 2);
}

#[test]
fn an_expired_session_ends_with_notifications_and_cannot_be_resumed() {
    let now = Instant::now();
    let mut hub = hub(HubConfig {
        session_timeout: Duration::from_secs(30),
        ..HubConfig::default()
    });
    let alice = join(&mut hub, "alice", 1);
    let bob = join(&mut hub, "bob", 2);
    drain(&mut hub);
    hub.detach(alice, now).unwrap();
    assert_eq!(hub.poll_timeout(), Some(now + Duration::from_secs(30)));
    assert!(hub.handle_timeout(now + Duration::from_secs(29)).is_empty());
    let ended = hub.handle_timeout(now + Duration::from_secs(30));
    assert_eq!(ended.len(), 1);
    assert_eq!((ended[0].0, ended[0].1.user_id.as_str()), (alice, "alice"));
    let after = drain(&mut hub);
    assert!(after
        .iter()
        .any(|(c, m)| *c == bob && matches!(m, Message::Unsubscribed(_))));
    assert_eq!(
        hub.resume(&ResumeToken([1; 16]), "alice", 0),
        Err(ResumeError::Unknown)
    );
    assert_eq!(hub.poll_timeout(), None);
}

#[test]
fn unknown_tokens_and_other_users_tokens_are_refused() {
    let mut hub = hub(HubConfig::default());
    join(&mut hub, "alice", 1);
    assert_eq!(
        hub.resume(&ResumeToken([9; 16]), "alice", 0),
        Err(ResumeError::Unknown)
    );
    assert_eq!(
        hub.resume(&ResumeToken([1; 16]), "mallory", 0),
        Err(ResumeError::NotYours)
    );
}

#[test]
fn a_zero_timeout_ends_the_session_at_the_disconnect_as_socketpro_does() {
    let mut hub = hub(HubConfig {
        session_timeout: Duration::ZERO,
        ..HubConfig::default()
    });
    let alice = join(&mut hub, "alice", 1);
    let bob = join(&mut hub, "bob", 2);
    drain(&mut hub);
    assert!(hub.detach(alice, Instant::now()).unwrap().is_some());
    assert!(drain(&mut hub)
        .iter()
        .any(|(c, m)| *c == bob && matches!(m, Message::Unsubscribed(_))));
    assert_eq!(
        hub.resume(&ResumeToken([1; 16]), "alice", 0),
        Err(ResumeError::Unknown)
    );
}

#[test]
fn resuming_an_attached_session_takes_it_over() {
    let mut hub = hub(HubConfig::default());
    let alice = join(&mut hub, "alice", 1);
    drain(&mut hub);
    let resumed = hub.resume(&ResumeToken([1; 16]), "alice", 1).unwrap();
    assert!(resumed.was_attached);
    assert_eq!(resumed.session, alice);
}
