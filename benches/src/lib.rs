//! Workloads shared by pushwire's criterion benchmarks.

use bytes::Bytes;
use pushwire_protocol::{GroupId, Message, PeerSender, Published, Sender, Text};
use std::net::{IpAddr, Ipv4Addr};

/// A typical publication as one receiver gets it: a peer sender, two groups, and a
/// payload of `payload_len` bytes.
pub fn sample_published(payload_len: usize) -> Message {
    Message::Published(Published {
        seq: 1_000_000,
        sender: Sender::Peer(PeerSender {
            user_id: Text::from("alice@example.com"),
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            port: 51_234,
            service_id: 1,
            is_self: false,
        }),
        groups: vec![GroupId(2), GroupId(3)],
        payload: Bytes::from(vec![b'x'; payload_len]),
    })
}

/// Payload sizes measured by the codec and fan-out benchmarks.
pub const PAYLOAD_SIZES: [usize; 3] = [16, 128, 1024];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_publication_has_the_requested_payload() {
        for size in PAYLOAD_SIZES {
            let Message::Published(p) = sample_published(size) else {
                panic!("not a publication");
            };
            assert_eq!(p.payload.len(), size);
        }
    }
}
