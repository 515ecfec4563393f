//! The tutorial's hello-world service (the seed's Figures 9 and 10): `say_hello`,
//! a slow `sleep`, and `echo`.

use crate::server::{service_fn, Call, Cancellation, Service};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use pushwire_protocol::{ErrorCode, Text};
use std::time::Duration;

/// The service id clients ask for.
pub const HELLO_WORLD_SERVICE: u32 = 1;

/// `say_hello(first, last)`: returns "Hello first last" and publishes
/// "Say hello from first last" to groups 2 and 3 on the caller's behalf.
pub const SAY_HELLO: u32 = 1;
/// `sleep(ms)`: a slow request; returns after `ms` milliseconds (at most 60 s), or
/// earlier with `Cancelled` when the caller cancels it.
pub const SLEEP: u32 = 2;
/// `echo(bytes)`: returns its argument.
pub const ECHO: u32 = 3;

/// Encodes `say_hello`'s arguments: two texts, each a `u16` length and UTF-8.
pub fn say_hello_args(first: &str, last: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + first.len() + last.len());
    for s in [first, last] {
        let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        out.put_u16(s.len() as u16);
        out.put_slice(s);
    }
    out.freeze()
}

/// Encodes `sleep`'s argument.
pub fn sleep_args(ms: u32) -> Bytes {
    Bytes::copy_from_slice(&ms.to_be_bytes())
}

fn bad_request(what: &str) -> (ErrorCode, Text) {
    (ErrorCode::BadRequest, Text::from(what))
}

fn read_text(buf: &mut Bytes) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = buf.get_u16() as usize;
    if buf.remaining() < len {
        return None;
    }
    String::from_utf8(buf.split_to(len).to_vec()).ok()
}

/// The hello-world service.
pub fn hello_world_service() -> impl Service {
    service_fn(|call: Call| async move {
        match call.method {
            SAY_HELLO => {
                let mut args = call.payload.clone();
                let (Some(first), Some(last)) = (read_text(&mut args), read_text(&mut args)) else {
                    return Err(bad_request(
                        "say_hello takes two texts: first and last name",
                    ));
                };
                // Figure 9: notify groups 2 and 3, from the caller.
                let _ = call.server.publish_as(
                    call.connection,
                    &[2, 3],
                    format!("Say hello from {first} {last}"),
                );
                Ok(Bytes::from(format!("Hello {first} {last}")))
            }
            SLEEP => {
                let mut args = call.payload.clone();
                if args.remaining() != 4 {
                    return Err(bad_request("sleep takes one u32: milliseconds"));
                }
                let ms = args.get_u32().min(60_000);
                // A cancel (or the caller's connection ending) stops the sleep.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms.into())) => Ok(Bytes::new()),
                    () = call.cancellation.cancelled() => Cancellation::result(),
                }
            }
            ECHO => Ok(call.payload),
            other => Err((
                ErrorCode::UnknownMethod,
                Text::from(format!("hello-world has no method {other}")),
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn say_hello_arguments_round_trip() {
        let mut args = say_hello_args("Jack", "Smith");
        assert_eq!(read_text(&mut args).as_deref(), Some("Jack"));
        assert_eq!(read_text(&mut args).as_deref(), Some("Smith"));
        assert_eq!(read_text(&mut args), None);
    }
}
