//! The client's send window: a bound on the bytes of push commands handed to the
//! client and not yet taken by the server.
//!
//! Why here and not only in the task: a command is queued for the connection's task
//! when the application calls `publish()`, so a bound the task kept would come after
//! an unbounded queue. The window is checked at the call instead. A call that finds
//! room (and nobody waiting before it) queues its command at once, as before; one
//! that does not gets a ticket and waits, and tickets enter in the order they were
//! given, so publications keep their program order however many wait. The task gives
//! the bytes back when the server confirms it ran the command (PushTaken), or at once
//! when the server speaks a protocol version without it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Bytes a command costs besides its payload (frame header, command id, groups).
pub(super) const COMMAND_OVERHEAD: usize = 64;

/// Shared by every clone of a `Client` and its task.
pub(super) struct SendWindow {
    limit: usize,
    state: Mutex<State>,
    room: Notify,
}

struct State {
    /// Bytes of commands queued or in flight.
    used: usize,
    /// The next ticket to hand out.
    next_ticket: u64,
    /// The ticket whose turn it is; equal to `next_ticket` when nobody waits.
    serving: u64,
    /// Tickets whose futures were dropped before their turn.
    abandoned: BTreeSet<u64>,
}

impl State {
    fn fits(&self, limit: usize, cost: usize) -> bool {
        // A command larger than the whole window still goes, alone.
        self.used == 0 || self.used + cost <= limit
    }

    fn advance(&mut self) {
        self.serving += 1;
        while self.abandoned.remove(&self.serving) {
            self.serving += 1;
        }
    }
}

impl SendWindow {
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            state: Mutex::new(State {
                used: 0,
                next_ticket: 0,
                serving: 0,
                abandoned: BTreeSet::new(),
            }),
            room: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `cost` bytes now if they fit and nobody waits; otherwise a ticket,
    /// which waits in [`Ticket::take`] (dropping it gives its turn up).
    pub(super) fn try_take(self: &Arc<Self>, cost: usize) -> Result<(), Ticket> {
        let mut state = self.lock();
        if state.serving == state.next_ticket && state.fits(self.limit, cost) {
            state.used += cost;
            return Ok(());
        }
        let id = state.next_ticket;
        state.next_ticket += 1;
        Err(Ticket {
            window: self.clone(),
            id,
            done: false,
        })
    }

    /// Gives `cost` bytes back (the server took the command, or it failed).
    pub(super) fn give_back(&self, cost: usize) {
        if cost == 0 {
            return;
        }
        let mut state = self.lock();
        state.used = state.used.saturating_sub(cost);
        drop(state);
        self.room.notify_waiters();
    }

    /// Bytes taken now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.lock().used
    }
}

/// A place in the queue of calls waiting for room; given up when dropped before its
/// turn came (a future never polled, or dropped while waiting).
pub(super) struct Ticket {
    window: Arc<SendWindow>,
    id: u64,
    done: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Ticket").field(&self.id).finish()
    }
}

impl Ticket {
    /// Waits for this ticket's turn and for room, then takes `cost` bytes.
    pub(super) async fn take(mut self, cost: usize) {
        let window = self.window.clone();
        loop {
            let room = window.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = window.lock();
                if state.serving == self.id && state.fits(window.limit, cost) {
                    state.used += cost;
                    state.advance();
                    self.done = true;
                    drop(state);
                    // The next ticket may fit too.
                    window.room.notify_waiters();
                    return;
                }
            }
            room.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.window.lock();
        if state.serving == self.id {
            state.advance();
        } else {
            state.abandoned.insert(self.id);
        }
        drop(state);
        self.window.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn calls_that_wait_enter_in_ticket_order_and_a_dropped_one_gives_its_turn_up() {
        let window = SendWindow::new(100);
        window.try_take(80).unwrap();
        let first = window.try_take(50).unwrap_err();
        let second = window.try_take(10).unwrap_err();
        assert!(window.try_take(1).is_err(), "nobody jumps the queue");
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiter = |ticket: Ticket, cost: usize, name: &'static str| {
            let order = order.clone();
            tokio::spawn(async move {
                Ticket::take(ticket, cost).await;
                order.lock().unwrap().push(name);
            })
        };
        // The second is polled first: it must still wait for the first.
        let second = waiter(second, 10, "second");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let first = waiter(first, 50, "first");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(order.lock().unwrap().is_empty(), "no room yet");
        window.give_back(80);
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["first", "second"]);
        assert_eq!(window.used(), 60);

        // A waiting call dropped before its turn lets the next one in.
        window.try_take(40).unwrap();
        let dropped = window.try_take(50).unwrap_err();
        let next = window.try_take(5).unwrap_err();
        let next = waiter(next, 5, "next");
        let gone = tokio::spawn(dropped.take(50));
        tokio::time::sleep(Duration::from_millis(10)).await;
        gone.abort();
        let _ = gone.await;
        window.give_back(40);
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("the turn passed on")
            .unwrap();
        assert_eq!(window.used(), 65);
    }

    #[test]
    fn a_command_larger_than_the_window_goes_alone() {
        let window = SendWindow::new(100);
        window.try_take(500).unwrap();
        assert!(window.try_take(1).is_err(), "a ticket, dropped at once");
        window.give_back(500);
        window.try_take(1).unwrap();
    }
}
