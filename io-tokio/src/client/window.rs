//! The client's send window: a bound on the bytes of push commands the connection's
//! task holds, sent or about to be, and the server has not yet taken.
//!
//! Why at the call and not only in the task: a command reaches the task through a
//! channel, so a bound the task alone kept would come after an unbounded queue. A
//! call that finds room, with nothing waiting before it, goes into the channel at
//! once, as before. One that does not waits here, in call order, and the task takes
//! it when room comes back (it gives bytes back when the server confirms commands
//! with PushTaken, or at once with a server of protocol version 1 or inside a batch).
//! The task, not the caller's future, moves waiting commands on: a publisher that
//! keeps many futures and awaits only the oldest still has a full window in flight.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Bytes a command costs besides its payload (frame header, command id, groups).
pub(super) const COMMAND_OVERHEAD: usize = 64;

/// Shared by every clone of a `Client` and its task. `C` is the task's command.
pub(super) struct SendWindow<C> {
    limit: usize,
    state: Mutex<State<C>>,
}

struct State<C> {
    /// Bytes of commands in the task's hands or its channel.
    used: usize,
    /// Commands that found no room, oldest first, with their cost.
    waiting: VecDeque<(usize, C)>,
    /// The task ended: nothing waits any more.
    closed: bool,
}

impl<C> State<C> {
    fn fits(&self, limit: usize, cost: usize) -> bool {
        // A command larger than the whole window still goes, alone.
        self.used == 0 || self.used + cost <= limit
    }
}

impl<C> SendWindow<C> {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            state: Mutex::new(State {
                used: 0,
                waiting: VecDeque::new(),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for a command of `cost` bytes: `Some(command)` when it may go to the task
    /// now (it fits, and nothing waits before it, or the task is gone); `None` when
    /// it waits here for [`next_ready`](Self::next_ready).
    pub(super) fn offer(&self, cost: usize, command: C) -> Option<C> {
        let mut state = self.lock();
        if state.closed || (state.waiting.is_empty() && state.fits(self.limit, cost)) {
            state.used += cost;
            return Some(command);
        }
        state.waiting.push_back((cost, command));
        None
    }

    /// The oldest waiting command, once it fits (for the task).
    pub(super) fn next_ready(&self) -> Option<C> {
        let mut state = self.lock();
        let &(cost, _) = state.waiting.front()?;
        if !state.fits(self.limit, cost) {
            return None;
        }
        state.used += cost;
        state.waiting.pop_front().map(|(_, command)| command)
    }

    /// Gives `cost` bytes back (the server took the command, or it failed).
    pub(super) fn give_back(&self, cost: usize) {
        let mut state = self.lock();
        state.used = state.used.saturating_sub(cost);
    }

    /// The task is ending: the waiting commands are handed back to be dropped (their
    /// callers learn the connection is lost), and later ones go to the closed
    /// channel.
    pub(super) fn close(&self) -> Vec<C> {
        let mut state = self.lock();
        state.closed = true;
        state
            .waiting
            .drain(..)
            .map(|(_, command)| command)
            .collect()
    }

    /// Bytes taken now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.lock().used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_that_find_no_room_wait_in_call_order_and_nobody_jumps_the_queue() {
        let window = SendWindow::new(100);
        assert_eq!(window.offer(80, "a"), Some("a"));
        assert_eq!(window.offer(50, "b"), None);
        assert_eq!(window.offer(1, "c"), None, "fits, but b waits before it");
        assert_eq!(window.next_ready(), None, "b does not fit yet");
        window.give_back(80);
        assert_eq!(window.next_ready(), Some("b"));
        assert_eq!(window.next_ready(), Some("c"));
        assert_eq!(window.next_ready(), None);
        assert_eq!(window.used(), 51);
        assert_eq!(window.offer(49, "d"), Some("d"), "nothing waits: at once");
    }

    #[test]
    fn a_command_larger_than_the_window_goes_alone() {
        let window = SendWindow::new(100);
        assert_eq!(window.offer(500, "big"), Some("big"));
        assert_eq!(window.offer(1, "small"), None);
        window.give_back(500);
        assert_eq!(window.next_ready(), Some("small"));
        window.give_back(1);
        assert_eq!(window.offer(500, "big again"), Some("big again"));
    }

    #[test]
    fn closing_hands_back_what_waits_and_lets_later_commands_through() {
        let window = SendWindow::new(10);
        assert_eq!(window.offer(10, 1), Some(1));
        assert_eq!(window.offer(10, 2), None);
        assert_eq!(window.close(), [2]);
        assert_eq!(
            window.offer(10, 3),
            Some(3),
            "to fail at the closed channel"
        );
    }
}
