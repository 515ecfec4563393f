//! Feeds arbitrary bytes to a `FrameDecoder` in chunks and checks, for every input:
//!
//! - nothing panics, whatever the bytes and however they are cut;
//! - the decoder never buffers more than its capacity limit;
//! - a decoder that refuses bytes has an error to report, and errors are sticky;
//! - every decoded message re-encodes to a frame that decodes to the same message, and
//!   (except for the Hello, which ignores unknown option bits and extension bytes) to
//!   exactly the bytes it was decoded from.
//!
//! The first input byte picks the chunk size (1 to 256 bytes); the rest is the stream.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pushwire_protocol::{FrameDecoder, FrameLimits, Message, MessageKind, MIN_MAX_FRAME_SIZE};

fn limits() -> FrameLimits {
    FrameLimits::new(MIN_MAX_FRAME_SIZE).expect("the least frame limit is valid")
}

/// Re-encodes `message` and checks the result against the frame it came from.
fn check_round_trip(message: &Message, original: &[u8]) {
    let mut wire = BytesMut::new();
    message.encode(&mut wire);
    assert_eq!(wire.len(), message.encoded_len(), "encoded_len is exact");
    if message.kind() == MessageKind::Hello {
        // Dropped extension bytes can only make the frame shorter.
        assert!(wire.len() <= original.len(), "a Hello re-encoded longer");
    } else {
        assert_eq!(&wire[..], original, "re-encoding changed the frame");
    }

    // The re-encoded frame decodes to the same message, through the streaming decoder
    // and directly.
    let mut decoder = FrameDecoder::new(limits());
    assert_eq!(decoder.feed(&wire), wire.len());
    let again = decoder
        .next_message()
        .expect("a re-encoded message decodes")
        .expect("a re-encoded frame is complete");
    assert_eq!(&again, message);
    assert_eq!(decoder.next_message(), Ok(None));
    assert_eq!(decoder.buffered(), 0);

    let body = Bytes::copy_from_slice(&wire[pushwire_protocol::FRAME_HEADER_LEN..]);
    let decoded = Message::decode_frame(
        message.kind(),
        message.is_compressed(),
        body,
        &mut Vec::new(),
    );
    assert_eq!(decoded.as_ref(), Ok(message));
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk_size = usize::from(first) + 1;

    let mut decoder = FrameDecoder::new(limits());
    // Start of the frame the next decoded message comes from: frames are contiguous,
    // and every byte the decoder took before a message belongs to that message's
    // frame or an earlier one.
    let mut frame_start = 0;
    let mut fed = 0;

    for chunk in stream.chunks(chunk_size) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let taken = decoder.feed(rest);
            assert!(taken <= rest.len());
            fed += taken;
            rest = &rest[taken..];
            assert!(
                decoder.buffered() <= decoder.capacity_limit(),
                "buffered {} > limit {}",
                decoder.buffered(),
                decoder.capacity_limit()
            );

            loop {
                match decoder.next_message() {
                    Ok(Some(message)) => {
                        let length = u32::from_be_bytes(
                            stream[frame_start..frame_start + 4].try_into().unwrap(),
                        ) as usize;
                        let frame_end = frame_start + 4 + length;
                        assert!(frame_end <= fed, "a message before its frame was fed");
                        check_round_trip(&message, &stream[frame_start..frame_end]);
                        frame_start = frame_end;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        // The error is sticky, ends the stream, and nothing more is
                        // taken.
                        assert_eq!(decoder.next_message(), Err(error));
                        assert_eq!(decoder.feed(rest), 0);
                        assert!(decoder.buffered() <= decoder.capacity_limit());
                        return;
                    }
                }
            }

            if taken == 0 && !rest.is_empty() {
                // The decoder refuses bytes only when it has an error to report, which
                // the loop above would have returned on.
                panic!("the decoder stalled without an error");
            }
        }
    }
    assert!(decoder.buffered() <= decoder.capacity_limit());
    assert_eq!(
        decoder.buffered(),
        fed - frame_start,
        "exactly the bytes of the unfinished frame stay buffered"
    );
});
