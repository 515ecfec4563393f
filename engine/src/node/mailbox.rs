//! A connection's mailbox: the encoded push frames the node has queued for it, shared
//! between the node (which fills it under its own lock) and the connection's half
//! (which empties it into its engine), with the wake-up that tells the connection's
//! driver to look.

use crate::hub::{Delivery, OutboundQueue, Queued, SlowConsumerPolicy};
use bytes::BytesMut;
use pushwire_protocol::Message;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

/// Why the node closed a connection's mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alert {
    /// Its unwritten frames went over the limit under
    /// [`SlowConsumerPolicy::Disconnect`].
    SlowConsumer,
    /// Flow control: it was congested and took nothing for the grace (under
    /// [`SlowConsumerPolicy::Disconnect`]).
    Stalled,
    /// Its session was resumed on another connection.
    Superseded,
}

/// The mailbox's contents, locked.
pub(crate) type MailboxGuard<'a> = MutexGuard<'a, MailboxState>;

#[derive(Debug)]
pub(crate) struct MailboxState {
    queue: OutboundQueue,
    /// Set once by the node; from then on the mailbox takes nothing (the session's
    /// events are in its replay buffer for the resume) and the connection closes.
    alert: Option<Alert>,
    /// Flow control: the node found this mailbox over its high-water mark and holds
    /// publishers back for it; the connection reports when it drained.
    congested: bool,
    /// Flow control: while congested, the last time the connection's transport took
    /// bytes (its grace runs from then).
    last_progress: Option<Instant>,
}

/// One connection's share of the node's output.
///
/// Why a lock of its own rather than the node's: the connection's driver empties its
/// mailbox whenever its transport can take more, and must never wait for a
/// publisher's fan-out to other connections to do so (on a multi-threaded runtime
/// that would stall a worker thread). The node holds this lock only to append one
/// operation's frames; the connection holds it only to swap the buffer out.
#[derive(Debug)]
pub(crate) struct Mailbox {
    state: Mutex<MailboxState>,
    /// Flow control: how many congested receivers hold this connection's push
    /// commands back; while non-zero its driver does not read from it. Outside the
    /// lock: the driver asks before every read, flow control on or off.
    holds: AtomicU32,
    /// Mirrors `congested`, so a driver's report of every write costs a lock only
    /// while the mailbox is congested.
    congested_hint: AtomicBool,
    waker: Waker,
}

impl Mailbox {
    pub(crate) fn new(limit: usize, policy: SlowConsumerPolicy, waker: Waker) -> Self {
        Self {
            state: Mutex::new(MailboxState {
                queue: OutboundQueue::new(limit, policy),
                alert: None,
                congested: false,
                last_progress: None,
            }),
            holds: AtomicU32::new(0),
            congested_hint: AtomicBool::new(false),
            waker,
        }
    }

    pub(crate) fn lock(&self) -> MailboxGuard<'_> {
        // A panic while holding the lock leaves the queue as it was at the panic; keep
        // serving rather than poisoning the node.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the connection's driver to look at its mailbox.
    pub(crate) fn wake(&self) {
        self.waker.wake_by_ref();
    }

    /// Whether congested receivers hold this connection back.
    pub(crate) fn is_held(&self) -> bool {
        self.holds.load(Ordering::Acquire) > 0
    }

    /// One more congested receiver holds this connection back (under the node's lock).
    pub(crate) fn hold(&self) {
        self.holds.fetch_add(1, Ordering::AcqRel);
    }

    /// One receiver fewer holds it back (under the node's lock); wakes the driver
    /// when that was the last.
    pub(crate) fn release(&self) {
        if self.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wake();
        }
    }

    /// The connection's transport took bytes at `now`: a congested mailbox's grace
    /// starts again.
    pub(crate) fn note_progress(&self, now: Instant) {
        if self.congested_hint.load(Ordering::Acquire) {
            let mut state = self.lock();
            if state.congested {
                state.last_progress = Some(now);
            }
        }
    }

    /// Marks the mailbox congested or not (with its state locked by the caller).
    pub(crate) fn set_congested(&self, state: &mut MailboxState, congested: bool) {
        state.congested = congested;
        state.last_progress = None;
        self.congested_hint.store(congested, Ordering::Release);
    }

    /// Closes the mailbox for `alert` (unless it already was) and wakes the driver.
    /// Returns whether this call closed it.
    pub(crate) fn close(&self, alert: Alert) -> bool {
        let closed = self.lock().close(alert);
        self.wake();
        closed
    }
}

impl MailboxState {
    /// Queues a delivery. Returns whether that took the queue over its limit under
    /// the disconnect policy, which closes the mailbox as a slow consumer. A closed
    /// mailbox takes nothing.
    pub(crate) fn push_delivery(&mut self, delivery: &Delivery) -> bool {
        if self.alert.is_some() {
            return false;
        }
        self.queue.push_delivery(delivery) == Queued::OverLimit && self.close(Alert::SlowConsumer)
    }

    /// Queues a notice for this connection alone (not a push event: never shed);
    /// returns what [`push_delivery`](Self::push_delivery) returns.
    pub(crate) fn push_notice(&mut self, message: &Message) -> bool {
        if self.alert.is_some() {
            return false;
        }
        self.queue.push_message(message) == Queued::OverLimit && self.close(Alert::SlowConsumer)
    }

    fn close(&mut self, alert: Alert) -> bool {
        if self.alert.is_some() {
            return false;
        }
        self.alert = Some(alert);
        // What it held is in the session's replay buffer (or will be reported as a
        // gap on the resume); holding it here too would only grow memory while the
        // connection closes.
        self.queue.clear();
        true
    }

    pub(crate) fn alert(&self) -> Option<Alert> {
        self.alert
    }

    /// Everything queued, when there is something and the mailbox is open.
    pub(crate) fn take_frames(&mut self) -> Option<BytesMut> {
        if self.alert.is_some() || self.queue.is_empty() {
            return None;
        }
        Some(self.queue.take_frames())
    }

    pub(crate) fn queue(&self) -> &OutboundQueue {
        &self.queue
    }

    pub(crate) fn queue_mut(&mut self) -> &mut OutboundQueue {
        &mut self.queue
    }

    pub(crate) fn is_congested(&self) -> bool {
        self.congested
    }

    /// While congested: when the transport last took bytes.
    pub(crate) fn last_progress(&self) -> Option<Instant> {
        self.last_progress
    }

    /// The transport took bytes at `now` (the connection's own take of frames).
    pub(crate) fn note_progress(&mut self, now: Instant) {
        if self.congested {
            self.last_progress = Some(now);
        }
    }

    pub(crate) fn release_idle_capacity(&mut self) {
        self.queue.release_idle_capacity();
    }
}
