//! Who may open a connection: the server's connection limits, decided when a
//! connection is accepted, before a byte of it is read.
//!
//! Three bounds, each against a different abuse: all connections (memory and file
//! descriptors), connections from one address (one host taking the server's share
//! of everyone), and connections still in their handshake (TLS and Hello, the
//! expensive and unauthenticated phase: a flood of half-open handshakes must not
//! crowd out the clients that finish theirs).

use std::collections::BTreeMap;
use std::net::IpAddr;
use thiserror::Error;

/// The limits, with sane defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections at once, in all (default 10,000).
    pub max_connections: usize,
    /// Connections at once from one address (default 1,000). IPv6 addresses count by
    /// their /64 prefix: one host normally has a whole /64 to pick from.
    pub max_per_address: usize,
    /// Connections at once that have not finished their handshake (TLS and the
    /// Hello/Welcome exchange; default 256).
    pub max_handshaking: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_per_address: 1_000,
            max_handshaking: 256,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The server has [`AdmissionLimits::max_connections`] connections.
    #[error("the server has {0} connections, its limit")]
    TooManyConnections(usize),
    /// The address has [`AdmissionLimits::max_per_address`] connections.
    #[error("{0} connections from this address, the limit")]
    TooManyFromAddress(usize),
    /// [`AdmissionLimits::max_handshaking`] connections are in their handshake.
    #[error("{0} connections are in their handshake, the limit")]
    TooManyHandshaking(usize),
}

/// The count of connections by address and phase.
///
/// Calling contract: [`admit`](Self::admit) each accepted connection; for each
/// admitted one, [`handshake_finished`](Self::handshake_finished) once its Hello is
/// permitted (or never), and [`closed`](Self::closed) exactly once when it ends,
/// saying whether its handshake had finished.
#[derive(Debug, Default)]
pub struct Admission {
    limits: AdmissionLimits,
    per_address: BTreeMap<AddressKey, usize>,
    connections: usize,
    handshaking: usize,
}

/// An IPv4 address, or the /64 prefix of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct AddressKey(u128);

impl AddressKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddressKey(u128::from(u32::from(v4))),
            // An IPv4-mapped address is the IPv4 host it maps.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey(u128::from(u32::from(v4))),
                None => AddressKey((u128::from(v6) & !u128::from(u64::MAX)) | 1 << 32),
            },
        }
    }
}

impl Admission {
    /// No connections yet, under `limits`.
    pub fn new(limits: AdmissionLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Changes the limits; connections already admitted stay.
    pub fn set_limits(&mut self, limits: AdmissionLimits) {
        self.limits = limits;
    }

    /// Connections admitted and not closed.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Admitted connections still in their handshake.
    pub fn handshaking(&self) -> usize {
        self.handshaking
    }

    /// Admits a connection from `peer` (it counts as in its handshake), or says why
    /// not; a refused connection is not counted.
    pub fn admit(&mut self, peer: IpAddr) -> Result<(), Refusal> {
        let limits = self.limits;
        if self.connections >= limits.max_connections {
            return Err(Refusal::TooManyConnections(limits.max_connections));
        }
        if self.handshaking >= limits.max_handshaking {
            return Err(Refusal::TooManyHandshaking(limits.max_handshaking));
        }
        let from_address = self.per_address.entry(AddressKey::of(peer)).or_insert(0);
        if *from_address >= limits.max_per_address {
            let refusal = Refusal::TooManyFromAddress(limits.max_per_address);
            if *from_address == 0 {
                self.per_address.remove(&AddressKey::of(peer));
            }
            return Err(refusal);
        }
        *from_address += 1;
        self.connections += 1;
        self.handshaking += 1;
        Ok(())
    }

    /// An admitted connection finished its handshake: it no longer counts against
    /// [`AdmissionLimits::max_handshaking`].
    pub fn handshake_finished(&mut self) {
        self.handshaking = self.handshaking.saturating_sub(1);
    }

    /// An admitted connection from `peer` ended; `handshaking` says whether it ended
    /// before [`handshake_finished`](Self::handshake_finished) was called for it.
    pub fn closed(&mut self, peer: IpAddr, handshaking: bool) {
        let key = AddressKey::of(peer);
        if let Some(count) = self.per_address.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&key);
            }
        }
        self.connections = self.connections.saturating_sub(1);
        if handshaking {
            self.handshake_finished();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn limits(all: usize, per_address: usize, handshaking: usize) -> AdmissionLimits {
        AdmissionLimits {
            max_connections: all,
            max_per_address: per_address,
            max_handshaking: handshaking,
        }
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn each_limit_refuses_and_a_closed_connection_makes_room() {
        let mut admission = Admission::new(limits(3, 2, 10));
        admission.admit(A).unwrap();
        admission.admit(A).unwrap();
        assert_eq!(admission.admit(A), Err(Refusal::TooManyFromAddress(2)));
        admission.admit(B).unwrap();
        assert_eq!(admission.admit(B), Err(Refusal::TooManyConnections(3)));
        admission.closed(A, true);
        admission.admit(A).unwrap();
        assert_eq!(admission.connections(), 3);
    }

    #[test]
    fn only_connections_in_their_handshake_count_against_the_handshake_limit() {
        let mut admission = Admission::new(limits(10, 10, 2));
        admission.admit(A).unwrap();
        admission.admit(B).unwrap();
        assert_eq!(admission.admit(A), Err(Refusal::TooManyHandshaking(2)));
        admission.handshake_finished();
        admission.admit(A).unwrap();
        assert_eq!(admission.handshaking(), 2);
        // One that finished and one that did not, closing.
        admission.closed(A, false);
        assert_eq!(admission.handshaking(), 2);
        admission.closed(B, true);
        assert_eq!(admission.handshaking(), 1);
        assert_eq!(admission.connections(), 1);
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        let mut admission = Admission::new(limits(10, 1, 10));
        let host = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1);
        let same_64 = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9);
        let other_64 = Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1);
        admission.admit(IpAddr::V6(host)).unwrap();
        assert!(admission.admit(IpAddr::V6(same_64)).is_err());
        admission.admit(IpAddr::V6(other_64)).unwrap();
        admission.admit(A).unwrap();
        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        assert!(admission.admit(IpAddr::V6(mapped)).is_err(), "A again");
        // An IPv6 prefix never collides with an IPv4 address.
        let low = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0x0a00, 1));
        admission.admit(low).unwrap();
    }

    #[test]
    fn a_refusal_leaves_no_trace() {
        let mut admission = Admission::new(limits(10, 0, 10));
        assert!(admission.admit(A).is_err());
        assert!(admission.per_address.is_empty());
        assert_eq!(admission.connections(), 0);
        assert_eq!(admission.handshaking(), 0);
    }
}
