//! Reading from a stream without a buffer per connection.
//!
//! A connection task spends nearly all its life waiting for bytes that do not come;
//! a read buffer of its own (16 KiB) was most of what an idle connection cost. Here
//! the bytes are read into one scratch buffer per worker thread and handed on inside
//! the same poll, before anything else can run on that thread, so the buffer is
//! free again as soon as the poll returns.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncRead, ReadBuf};

/// The scratch buffer's size: one read takes up to this much (several TLS records).
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// What one read produced.
#[derive(Debug)]
pub(crate) enum Input<'a> {
    /// Bytes received (never empty).
    Bytes(&'a [u8]),
    /// End of stream or a read error: the transport is gone.
    Closed,
}

/// Waits until `reader` has bytes or ends, and passes what it got to `deliver`
/// during the poll that found it (the bytes live in the thread's scratch buffer, so
/// `deliver` must consume them, not keep them).
///
/// Cancel-safe like `AsyncReadExt::read`: bytes are taken from the stream only in
/// the poll that returns `Ready`, and handed over in that same poll.
pub(crate) fn read_with<'a, R, F>(
    reader: &'a mut R,
    mut deliver: F,
) -> impl Future<Output = ()> + 'a
where
    R: AsyncRead + Unpin + ?Sized,
    F: FnMut(Input<'_>) + 'a,
{
    poll_fn(move |cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            let result = match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result,
            };
            let n = buf.filled().len();
            match result {
                Ok(()) if n > 0 => deliver(Input::Bytes(&scratch[..n])),
                Ok(()) | Err(_) => deliver(Input::Closed),
            }
            Poll::Ready(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn bytes_then_end_of_stream() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        let mut closed = false;
        let mut deliver = |input: Input<'_>| match input {
            Input::Bytes(bytes) => got.extend_from_slice(bytes),
            Input::Closed => closed = true,
        };
        read_with(&mut b, &mut deliver).await;
        drop(a);
        read_with(&mut b, &mut deliver).await;
        assert_eq!(got, b"hello");
        assert!(closed);
    }

    #[tokio::test]
    async fn a_large_write_arrives_whole_over_several_reads() {
        let (mut a, mut b) = tokio::io::duplex(256 * 1024);
        let sent: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        a.write_all(&sent).await.unwrap();
        drop(a);
        let mut got = Vec::new();
        let mut closed = false;
        while !closed {
            read_with(&mut b, |input: Input<'_>| match input {
                Input::Bytes(bytes) => {
                    assert!(bytes.len() <= SCRATCH_LEN);
                    got.extend_from_slice(bytes);
                }
                Input::Closed => closed = true,
            })
            .await;
        }
        assert_eq!(got, sent);
    }
}
