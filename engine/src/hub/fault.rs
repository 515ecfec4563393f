//! Deliberate misbehaviour, for the simulator's proof that its oracle catches each
//! kind of delivery bug. Compiled only with the `fault-injection` feature in debug
//! builds (the feature alone only declares [`HubFault`] and the arming call, which
//! panics in other builds); a hub without an injected fault behaves exactly as
//! without the feature.

use super::events::{Delivery, PushEvent};
use super::{ConnectionId, Hub, HubFault, PushHooks};

#[derive(Debug, Default)]
pub(super) struct FaultState {
    fault: Option<HubFault>,
    sequenced: u64,
    presence: u64,
    pending: Option<Delivery>,
    resumes: u64,
    /// A delivery held back until the next one to the same connection has gone.
    held: Option<Delivery>,
}

impl FaultState {
    /// Whether the next presence notice to another member is to be skipped.
    pub(super) fn skip_presence(&mut self) -> bool {
        let Some(HubFault::SkipPresence(n)) = self.fault else {
            return false;
        };
        self.presence += 1;
        self.presence == n
    }
}

fn groups_of(event: &PushEvent) -> Vec<u32> {
    event
        .groups()
        .map(|g| g.iter().map(|g| g.0).collect())
        .unwrap_or_default()
}

impl<H: PushHooks> Hub<H> {
    /// Applies a replay fault to the deliveries a resume just queued (the last
    /// `replayed` ones).
    pub(super) fn fault_on_replay(&mut self, session: ConnectionId, replayed: usize) {
        if replayed == 0 {
            return;
        }
        let (n, twice) = match self.fault.fault {
            Some(HubFault::ReplayTwice(n)) => (n, true),
            Some(HubFault::ReplaySkip(n)) => (n, false),
            _ => return,
        };
        self.fault.resumes += 1;
        if self.fault.resumes != n {
            return;
        }
        let position = self.outbox.deliveries.len() - replayed;
        debug_assert_eq!(self.outbox.deliveries[position].connection, session);
        if twice {
            let copy = self.outbox.deliveries[position].clone();
            self.outbox.deliveries.insert(position + 1, copy);
        } else {
            self.outbox.deliveries.remove(position);
        }
    }

    /// Arms a fault.
    pub(super) fn arm_fault(&mut self, fault: HubFault) {
        self.fault = FaultState {
            fault: Some(fault),
            ..FaultState::default()
        };
    }

    pub(super) fn faulty_delivery(&mut self) -> Option<Delivery> {
        if let Some(d) = self.fault.pending.take() {
            return Some(d);
        }
        let delivery = self.outbox.deliveries.pop_front()?;
        if self
            .fault
            .held
            .as_ref()
            .is_some_and(|h| h.connection == delivery.connection)
        {
            // The held delivery goes right after the one that overtook it.
            self.fault.pending = self.fault.held.take();
        }
        if delivery.event.seq().is_none() {
            return Some(delivery);
        }
        self.fault.sequenced += 1;
        let n = self.fault.sequenced;
        match self.fault.fault {
            Some(HubFault::DropDelivery(k)) if k == n => self.faulty_delivery(),
            Some(HubFault::DuplicateDelivery(k)) if k == n => {
                self.fault.pending = Some(delivery.clone());
                Some(delivery)
            }
            Some(HubFault::SwapDeliveries(k)) if k == n => {
                self.fault.held = Some(delivery);
                self.faulty_delivery()
            }
            Some(HubFault::Misdeliver(k)) if k == n => {
                let groups = groups_of(&delivery.event());
                let stranger = self.connections().find(|&c| {
                    c != delivery.connection
                        && self
                            .subscriptions(c)
                            .is_some_and(|mut s| s.all(|g| !groups.contains(&g.0)))
                        && !delivery.event.is_user_message()
                });
                match stranger {
                    Some(c) => Some(Delivery {
                        connection: ConnectionId(c.0),
                        ..delivery
                    }),
                    None => {
                        self.fault.fault = Some(HubFault::Misdeliver(k + 1));
                        Some(delivery)
                    }
                }
            }
            _ => Some(delivery),
        }
    }
}
