//! The physical floor for `benches/relay_floor.sh`: the fastest fan-out relay in a
//! few dozen lines — plaintext TCP, one thread, blocking I/O, no protocol beyond a
//! length prefix, no per-message work.
//!
//! Every connection first sends one byte: `S` (a subscriber) or `P` (the publisher).
//! Connections are taken in the order they arrive; the first `P` starts a session with
//! the subscribers that came before it. The relay then reads the publisher's bytes in
//! chunks of up to 256 KiB, finds the end of the last whole frame (`u32` big-endian
//! length, then that many bytes), and writes the whole frames of the chunk to every
//! subscriber with one `write_all` each, keeping the partial frame for the next read.
//! When the publisher closes, the session's sockets are closed and the relay waits for
//! the next session.
//!
//! ```sh
//! relay_floor [ADDR]      # default 127.0.0.1:0; prints "listening on ADDR"
//! ```

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

/// The largest read: frames must be smaller.
const CHUNK: usize = 256 * 1024;

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(addr)?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (publisher, subscribers) = accept_session(&listener)?;
        if let Err(e) = relay(publisher, subscribers) {
            eprintln!("relay_floor: session ended: {e}");
        }
    }
}

/// Accepts connections until one says it is the publisher.
fn accept_session(listener: &TcpListener) -> io::Result<(TcpStream, Vec<TcpStream>)> {
    let mut subscribers = Vec::new();
    loop {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut role = [0u8];
        if stream.read_exact(&mut role).is_err() {
            continue;
        }
        match role[0] {
            b'S' => subscribers.push(stream),
            b'P' => return Ok((stream, subscribers)),
            _ => {}
        }
    }
}

/// Forwards the publisher's whole frames to every subscriber until the publisher closes.
fn relay(mut publisher: TcpStream, mut subscribers: Vec<TcpStream>) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    loop {
        let n = publisher.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut end = 0;
        while end + 4 <= filled {
            let len = u32::from_be_bytes(buf[end..end + 4].try_into().expect("4 bytes")) as usize;
            if end + 4 + len > filled {
                break;
            }
            end += 4 + len;
        }
        if end == 0 && filled == CHUNK {
            return Err(io::Error::other("a frame larger than the read buffer"));
        }
        for subscriber in &mut subscribers {
            subscriber.write_all(&buf[..end])?;
        }
        buf.copy_within(end..filled, 0);
        filled -= end;
    }
}
