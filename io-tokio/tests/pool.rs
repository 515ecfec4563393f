//! The connection pool against a real server that restarts.

use pushwire_protocol::GroupId;
use pushwire_tokio::client::{ConnectionContext, Event, Trust};
use pushwire_tokio::pool::{Pool, PoolConfig, PoolEvent, PoolEvents};
use pushwire_tokio::server::{AuthDecision, Server, ServerBuilder};
use std::net::SocketAddr;
use std::time::Duration;

async fn serve(addr: SocketAddr) -> Server {
    ServerBuilder::new()
        .plaintext()
        .group(1, "one")
        .group(2, "two")
        .authenticator(|_: &pushwire_tokio::server::AuthAttempt<'_>| AuthDecision::Permit)
        .shutdown_grace(Duration::from_secs(2))
        .bind(addr)
        .await
        .unwrap()
}

async fn until<T>(events: &mut PoolEvents, mut pick: impl FnMut(&PoolEvent) -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.recv().await.expect("pool events ended");
            if let Some(t) = pick(&event) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for a pool event")
}

#[tokio::test]
async fn the_pool_reconnects_after_a_server_restart_and_restores_subscriptions() {
    let server = serve("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.local_addr().unwrap();
    let mut context = ConnectionContext::new("127.0.0.1", addr.port(), "pooled", "any");
    context.trust = Trust::Plaintext;
    let config = PoolConfig {
        size: 2,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..PoolConfig::default()
    };
    let (pool, mut events) = Pool::start(context, config);
    pool.wait_connected(2).await;

    // Seek the least busy connection and subscribe it to group 2.
    let client = pool.seek().expect("a connected client");
    client.subscribe(&[2]).await.unwrap();
    let slot = until(&mut events, |e| match e {
        PoolEvent::Event {
            slot,
            event: Event::Subscribed { sender, groups, .. },
        } if sender.is_self() && groups == &[GroupId(2)] => Some(*slot),
        _ => None,
    })
    .await;
    assert_eq!(pool.subscriptions(slot), [2]);

    // Locks are exclusive: two leases get different connections, a third waits.
    let first = pool.lock().await;
    let second = pool.lock().await;
    assert_ne!(first.slot(), second.slot());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), pool.lock())
            .await
            .is_err()
    );
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(1), pool.lock())
        .await
        .unwrap();
    drop((second, third));

    // Restart the server on the same port.
    server.shutdown().await;
    until(&mut events, |e| {
        matches!(e, PoolEvent::Disconnected { .. }).then_some(())
    })
    .await;
    let server = serve(addr).await;
    pool.wait_connected(2).await;
    // The restored subscription takes effect on the new server.
    until(&mut events, |e| match e {
        PoolEvent::Event {
            slot: s,
            event: Event::Subscribed { sender, groups, .. },
        } if *s == slot && sender.is_self() && groups == &[GroupId(2)] => Some(()),
        _ => None,
    })
    .await;
    let outcome = server.handle().publish(&[2], "after the restart").unwrap();
    assert_eq!(outcome.reached, 1);
    let got = until(&mut events, |e| match e {
        PoolEvent::Event {
            slot: s,
            event: Event::Published { message, .. },
        } => Some((*s, message.clone())),
        _ => None,
    })
    .await;
    assert_eq!(got, (slot, bytes::Bytes::from("after the restart")));
    pool.close().await;
    server.shutdown().await;
}
