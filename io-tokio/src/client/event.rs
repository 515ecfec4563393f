//! Events delivered to the client application.

use bytes::Bytes;
use futures_core::Stream;
use pushwire_engine::CloseReason;
use pushwire_protocol::{GroupId, Message, RejectCode, Sender, SessionLostReason, Text};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

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

/// Creates the connection task's end and the application's end of an event stream
/// that buffers at most `capacity` events.
pub(crate) fn channel(capacity: usize) -> (EventSender, EventStream) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        receiver_gone: AtomicBool::new(false),
        capacity: capacity.max(1),
    });
    (
        EventSender {
            shared: shared.clone(),
            pending: Vec::new(),
            room: shared.capacity,
        },
        EventStream {
            shared,
            batch: VecDeque::new(),
            taken: 0,
        },
    )
}

// The connection task hands events over in batches (everything one input produced)
// and the application takes each batch whole: one lock and at most one wake-up per
// batch on either side, where a channel of single events cost a semaphore operation,
// a slot and often a wake-up per event.
struct Shared {
    state: Mutex<State>,
    /// Set when the EventStream is dropped: the task then builds no events at all.
    receiver_gone: AtomicBool,
    capacity: usize,
}

#[derive(Default)]
struct State {
    /// Handed over, not yet taken by the application.
    queue: VecDeque<Event>,
    /// Events in `queue` plus those in the application's current batch: the bound
    /// applies to this count.
    buffered: usize,
    receiver: Option<Waker>,
    /// The task, waiting for room.
    sender: Option<Waker>,
    sender_gone: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection task's end of the event stream.
pub(crate) struct EventSender {
    shared: Arc<Shared>,
    /// Events not handed over yet, oldest first.
    pending: Vec<Event>,
    /// How many events may be handed over before the stream is full, as of the last
    /// hand-over (the application may have taken more since).
    room: usize,
}

impl EventSender {
    /// Whether the application dropped its EventStream.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.receiver_gone.load(Ordering::Acquire)
    }

    /// Queues an event; [`flush`](Self::flush) hands it over.
    pub(crate) fn push(&mut self, event: Event) {
        if !self.is_closed() {
            self.pending.push(event);
        }
    }

    /// Whether a queued event may not fit in the stream: flush before producing more.
    pub(crate) fn is_full(&self) -> bool {
        self.pending.len() > self.room
    }

    /// Hands the queued events over, waiting for room for those that do not fit
    /// (backpressure: the task reads nothing meanwhile).
    pub(crate) async fn flush(&mut self) {
        while !self.pending.is_empty() {
            std::future::poll_fn(|cx| self.poll_flush(cx)).await;
        }
    }

    /// Hands over what fits; pending while nothing does.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let waker = {
            let mut state = lock(&self.shared.state);
            if self.shared.receiver_gone.load(Ordering::Acquire) {
                self.pending.clear();
                return Poll::Ready(());
            }
            let fits = self
                .shared
                .capacity
                .saturating_sub(state.buffered)
                .min(self.pending.len());
            if fits == 0 {
                if !state
                    .sender
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.sender = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            state.buffered += fits;
            state.queue.extend(self.pending.drain(..fits));
            self.room = self.shared.capacity - state.buffered;
            state.receiver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Poll::Ready(())
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.shared.state);
            state.buffered += self.pending.len();
            state.queue.extend(self.pending.drain(..));
            state.sender_gone = true;
            state.receiver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The client's events as a `Stream` (also usable with [`EventStream::recv`]).
pub struct EventStream {
    shared: Arc<Shared>,
    /// The batch being taken, oldest first.
    batch: VecDeque<Event>,
    /// Size of the batch when it was taken (counted in `buffered` until it is used up).
    taken: usize,
}

impl EventStream {
    /// The next event; `None` after the connection's task has ended.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if let Some(event) = self.batch.pop_front() {
            return Poll::Ready(Some(event));
        }
        let (event, waker) = {
            let mut state = lock(&self.shared.state);
            // The last batch is used up: its room goes back to the task.
            state.buffered -= std::mem::take(&mut self.taken);
            if state.queue.is_empty() {
                let waker = state.sender.take();
                let event = if state.sender_gone {
                    Poll::Ready(None)
                } else {
                    if !state
                        .receiver
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        state.receiver = Some(cx.waker().clone());
                    }
                    Poll::Pending
                };
                (event, waker)
            } else {
                std::mem::swap(&mut self.batch, &mut state.queue);
                self.taken = self.batch.len();
                (Poll::Ready(self.batch.pop_front()), state.sender.take())
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        event
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        let (queue, waker) = {
            let mut state = lock(&self.shared.state);
            (std::mem::take(&mut state.queue), state.sender.take())
        };
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gap(n: u64) -> Event {
        Event::Gap { first: n, last: n }
    }

    fn number(event: Event) -> u64 {
        match event {
            Event::Gap { first, .. } => first,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn buffered(stream: &EventStream) -> usize {
        lock(&stream.shared.state).buffered
    }

    #[tokio::test]
    async fn events_arrive_in_order_then_the_end() {
        let (mut tx, mut rx) = channel(4);
        for n in 1..=3 {
            tx.push(gap(n));
        }
        tx.flush().await;
        tx.push(gap(4));
        tx.flush().await;
        drop(tx);
        let mut seen = Vec::new();
        while let Some(event) = rx.recv().await {
            seen.push(number(event));
        }
        assert_eq!(seen, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn the_sender_waits_for_room_and_never_exceeds_the_capacity() {
        let (mut tx, mut rx) = channel(3);
        let producer = tokio::spawn(async move {
            for n in 1..=10 {
                tx.push(gap(n));
                if tx.is_full() {
                    tx.flush().await;
                }
            }
            tx.flush().await;
        });
        // The producer fills the stream, then has to wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(buffered(&rx), 3);
        assert!(!producer.is_finished());
        let mut seen = Vec::new();
        while let Some(event) = rx.recv().await {
            assert!(buffered(&rx) <= 3);
            seen.push(number(event));
        }
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
        producer.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_stream_releases_a_waiting_sender_and_discards() {
        let (mut tx, rx) = channel(1);
        tx.push(gap(1));
        tx.push(gap(2));
        let producer = tokio::spawn(async move {
            tx.flush().await;
            tx.push(gap(3));
            tx.flush().await;
            tx.is_closed()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!producer.is_finished());
        drop(rx);
        assert!(producer.await.unwrap());
    }
}
