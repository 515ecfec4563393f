//! A pool of connections (SocketPro's `CSocketPool`): `seek` the least busy,
//! `lock` one exclusively, and reconnect automatically with backoff, restoring each
//! connection's subscriptions.

use crate::client::{Client, ClientBuilder, ConnectError, ConnectionContext, Event};
use crate::transport::{Connector, TcpConnector};
use pushwire_engine::CloseReason;
use pushwire_protocol::GroupId;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn, Instrument};

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Number of connections.
    pub size: usize,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Seed of the jitter added to reconnect delays (spreads reconnecting clients
    /// so they do not stampede a restarted server).
    pub jitter_seed: u64,
    /// Events buffered for [`PoolEvents`] before connections stop reading.
    pub event_capacity: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            size: 1,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            jitter_seed: 0x5eed,
            event_capacity: 1024,
        }
    }
}

/// What the pool reports.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolEvent {
    /// A connection is (again) up; its subscriptions are being restored.
    Connected {
        /// Which connection.
        slot: usize,
    },
    /// A connection attempt failed; the pool retries after a delay.
    ConnectFailed {
        /// Which connection.
        slot: usize,
        /// Why.
        error: String,
    },
    /// A connection ended; the pool reconnects.
    Disconnected {
        /// Which connection.
        slot: usize,
        /// Why.
        reason: CloseReason,
    },
    /// An event on one of the connections.
    Event {
        /// Which connection.
        slot: usize,
        /// The event.
        event: Event,
    },
}

/// The pool's events, from every connection.
pub struct PoolEvents {
    rx: mpsc::Receiver<PoolEvent>,
}

impl PoolEvents {
    /// The next event; `None` once the pool is gone.
    pub async fn recv(&mut self) -> Option<PoolEvent> {
        self.rx.recv().await
    }
}

struct Slot {
    client: Mutex<Option<Client>>,
    locked: AtomicBool,
    /// Groups this connection is in, as the server confirmed them (self-flagged
    /// Subscribed and Unsubscribed events), restored after a reconnect.
    groups: Mutex<BTreeSet<GroupId>>,
}

struct Shared {
    slots: Vec<Slot>,
    changed: Notify,
    stopped: AtomicBool,
}

/// A pool of connections to one server.
pub struct Pool {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Exclusive use of one pooled connection until dropped (SocketPro's `Lock`).
pub struct PoolLease {
    shared: Arc<Shared>,
    slot: usize,
    client: Client,
}

impl std::ops::Deref for PoolLease {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl PoolLease {
    /// Which connection this is.
    pub fn slot(&self) -> usize {
        self.slot
    }
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        self.shared.slots[self.slot]
            .locked
            .store(false, Ordering::Release);
        self.shared.changed.notify_waiters();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// Starts `config.size` connections over TCP; they connect in the background.
    pub fn start(context: ConnectionContext, config: PoolConfig) -> (Pool, PoolEvents) {
        Self::start_with(context, config, TcpConnector)
    }

    /// As [`Pool::start`], through a connector.
    pub fn start_with<C: Connector + Clone>(
        context: ConnectionContext,
        config: PoolConfig,
        connector: C,
    ) -> (Pool, PoolEvents) {
        let shared = Arc::new(Shared {
            slots: (0..config.size.max(1))
                .map(|_| Slot {
                    client: Mutex::new(None),
                    locked: AtomicBool::new(false),
                    groups: Mutex::new(BTreeSet::new()),
                })
                .collect(),
            changed: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(config.event_capacity.max(1));
        let tasks = (0..shared.slots.len())
            .map(|slot| {
                tokio::spawn(
                    supervise(
                        shared.clone(),
                        slot,
                        context.clone(),
                        config.clone(),
                        connector.clone(),
                        tx.clone(),
                    )
                    .instrument(tracing::info_span!("pool", slot)),
                )
            })
            .collect();
        (Pool { shared, tasks }, PoolEvents { rx })
    }

    /// Connections currently up.
    pub fn connected(&self) -> usize {
        self.shared
            .slots
            .iter()
            .filter(|s| lock(&s.client).is_some())
            .count()
    }

    /// Waits until at least `n` connections are up.
    pub async fn wait_connected(&self, n: usize) {
        loop {
            let changed = self.shared.changed.notified();
            if self.connected() >= n.min(self.shared.slots.len()) {
                return;
            }
            changed.await;
        }
    }

    /// The connected, unlocked connection with the fewest outstanding requests
    /// (SocketPro's `Seek`); a locked one only if nothing else is up.
    pub fn seek(&self) -> Option<Client> {
        let mut best: Option<(bool, usize, Client)> = None;
        for slot in &self.shared.slots {
            let Some(client) = lock(&slot.client).clone() else {
                continue;
            };
            let locked = slot.locked.load(Ordering::Acquire);
            let key = (locked, client.outstanding());
            if best.as_ref().is_none_or(|(l, o, _)| key < (*l, *o)) {
                best = Some((key.0, key.1, client));
            }
        }
        best.map(|(_, _, c)| c)
    }

    /// Waits for a connected connection nobody has locked and leases it
    /// exclusively (SocketPro's `Lock`).
    pub async fn lock(&self) -> PoolLease {
        loop {
            let changed = self.shared.changed.notified();
            for (index, slot) in self.shared.slots.iter().enumerate() {
                let Some(client) = lock(&slot.client).clone() else {
                    continue;
                };
                if slot
                    .locked
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return PoolLease {
                        shared: self.shared.clone(),
                        slot: index,
                        client,
                    };
                }
            }
            changed.await;
        }
    }

    /// Groups a connection is in, as the pool will restore them.
    pub fn subscriptions(&self, slot: usize) -> Vec<u32> {
        self.shared
            .slots
            .get(slot)
            .map(|s| lock(&s.groups).iter().map(|g| g.0).collect())
            .unwrap_or_default()
    }

    /// Closes every connection and stops reconnecting.
    pub async fn close(self) {
        self.shared.stopped.store(true, Ordering::Release);
        for slot in &self.shared.slots {
            if let Some(client) = lock(&slot.client).take() {
                client.close();
            }
        }
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Exponential backoff with up to 50 % jitter, as the clients reconnect.
fn backoff(config: &PoolConfig, failures: u32, rng: &mut u64) -> Duration {
    crate::client::Reconnect {
        initial: config.backoff_initial,
        max: config.backoff_max,
        jitter_seed: 0,
    }
    .delay(failures, rng)
}

async fn supervise<C: Connector + Clone>(
    shared: Arc<Shared>,
    index: usize,
    mut context: ConnectionContext,
    config: PoolConfig,
    connector: C,
    events: mpsc::Sender<PoolEvent>,
) {
    let slot = &shared.slots[index];
    let mut rng = config.jitter_seed ^ (index as u64).wrapping_mul(0x9e37_79b9);
    // Each client reconnects (and resumes its session) by itself once connected; the
    // pool only retries the first connection and replaces clients that end for good.
    context.reconnect = Some(crate::client::Reconnect {
        initial: config.backoff_initial,
        max: config.backoff_max,
        jitter_seed: rng,
    });
    let mut failures = 0u32;
    while !shared.stopped.load(Ordering::Acquire) {
        let (client, mut stream) = match ClientBuilder::new(context.clone())
            .event_capacity(config.event_capacity)
            .connect_with(&connector)
            .await
        {
            Ok(connected) => connected,
            Err(error) => {
                let fatal = matches!(
                    error,
                    ConnectError::Refused { .. } | ConnectError::Untrusted(_)
                );
                warn!("connect failed: {error}");
                let _ = events
                    .send(PoolEvent::ConnectFailed {
                        slot: index,
                        error: error.to_string(),
                    })
                    .await;
                if fatal {
                    // Wrong credentials or an untrusted server do not heal by retrying
                    // quickly: back off to the maximum.
                    failures = 16;
                }
                tokio::time::sleep(backoff(&config, failures, &mut rng)).await;
                failures = failures.saturating_add(1);
                continue;
            }
        };
        failures = 0;
        info!("connected");
        *lock(&slot.client) = Some(client.clone());
        shared.changed.notify_waiters();
        let _ = events.send(PoolEvent::Connected { slot: index }).await;
        let reason = loop {
            match stream.recv().await {
                None => break CloseReason::PeerClosed,
                Some(Event::Closed(reason)) => break reason,
                Some(Event::Disconnected(reason)) => {
                    *lock(&slot.client) = None;
                    shared.changed.notify_waiters();
                    warn!("disconnected: {reason}; reconnecting");
                    let _ = events
                        .send(PoolEvent::Disconnected {
                            slot: index,
                            reason,
                        })
                        .await;
                }
                Some(Event::Reconnected { .. }) => {
                    *lock(&slot.client) = Some(client.clone());
                    shared.changed.notify_waiters();
                    let _ = events.send(PoolEvent::Connected { slot: index }).await;
                }
                Some(event) => {
                    track_membership(slot, &event);
                    let _ = events.send(PoolEvent::Event { slot: index, event }).await;
                }
            }
        };
        *lock(&slot.client) = None;
        shared.changed.notify_waiters();
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        warn!("closed: {reason}");
        let _ = events
            .send(PoolEvent::Disconnected {
                slot: index,
                reason,
            })
            .await;
        tokio::time::sleep(backoff(&config, 0, &mut rng)).await;
    }
}

fn track_membership(slot: &Slot, event: &Event) {
    match event {
        Event::Subscribed { sender, groups, .. } if sender.is_self() => {
            lock(&slot.groups).extend(groups.iter().copied());
        }
        Event::Unsubscribed { sender, groups, .. } if sender.is_self() => {
            let mut mine = lock(&slot.groups);
            for g in groups {
                mine.remove(g);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_bounded_jitter() {
        let config = PoolConfig::default();
        let mut rng = 1;
        let first = backoff(&config, 0, &mut rng);
        assert!(first >= config.backoff_initial && first <= config.backoff_initial * 3 / 2);
        let late = backoff(&config, 20, &mut rng);
        assert!(late >= config.backoff_max && late <= config.backoff_max * 3 / 2);
        let (mut a, mut b) = (7, 7);
        assert_eq!(
            backoff(&config, 3, &mut a),
            backoff(&config, 3, &mut b),
            "seeded"
        );
    }
}
