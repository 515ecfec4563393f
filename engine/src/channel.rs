//! What both connection engines share: the TLS link, framing, the coalescing
//! outbound queue, keep-alive timing and the close sequence.

use crate::close::{CloseReason, ProtocolError, TimeoutKind};
use crate::tls::{TlsError, TlsLink};
use crate::web::{WebConfig, WebError, WebLayer, WebOutcome};
use bytes::BytesMut;
use pushwire_protocol::{
    Close, CloseCode, DecodeError, FrameDecoder, FrameLimits, Message, Ping, RawFrame, Text,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keep-alive settings of one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// Send a Ping when nothing has been sent for this long (`None`: never).
    pub ping_interval: Option<Duration>,
    /// Close the connection when no complete frame has arrived for this long
    /// (`None`: never). Bytes of an unfinished frame do not count: a peer that
    /// trickles a frame that never ends is closed as idle.
    pub idle_timeout: Option<Duration>,
}

impl Default for KeepAlive {
    fn default() -> Self {
        Self {
            ping_interval: Some(Duration::from_secs(15)),
            idle_timeout: Some(Duration::from_secs(45)),
        }
    }
}

impl KeepAlive {
    /// The keep-alive a client uses once a version 4 server announced its own timing
    /// in the Welcome, so that neither end takes an idle but healthy connection for
    /// dead:
    ///
    /// - with a server idle timeout, the client pings at least every third of it
    ///   (its own interval when shorter), so the server hears from it in time even
    ///   with keep-alive pings off on the client;
    /// - with server pings every `p`, the client's own idle timeout is at least `3p`
    ///   (none stays none), so the server's pings alone keep it open.
    ///
    /// `None` for either server setting: the server does not do it (0 in the
    /// Welcome).
    pub fn following(
        self,
        server_ping_interval: Option<Duration>,
        server_idle_timeout: Option<Duration>,
    ) -> Self {
        let ping_interval = match server_idle_timeout {
            Some(idle) => {
                let needed = (idle / 3).max(Duration::from_millis(1));
                Some(self.ping_interval.map_or(needed, |own| own.min(needed)))
            }
            None => self.ping_interval,
        };
        let idle_timeout = match (self.idle_timeout, server_ping_interval) {
            (Some(own), Some(ping)) => Some(own.max(ping.saturating_mul(3))),
            (own, _) => own,
        };
        Self {
            ping_interval,
            idle_timeout,
        }
    }
}

#[derive(Debug)]
pub(crate) enum ChannelError {
    Tls(TlsError),
    Decode(DecodeError),
    Web(WebError),
}

impl From<WebError> for ChannelError {
    fn from(e: WebError) -> Self {
        ChannelError::Web(e)
    }
}

impl From<TlsError> for ChannelError {
    fn from(e: TlsError) -> Self {
        ChannelError::Tls(e)
    }
}

impl From<ChannelError> for CloseReason {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Tls(t) => CloseReason::Tls(t),
            ChannelError::Decode(d) => CloseReason::Protocol(ProtocolError::Decode(d)),
            ChannelError::Web(w) => CloseReason::Protocol(ProtocolError::Web(w)),
        }
    }
}

/// How pushwire's frames sit on the plaintext.
enum Framing {
    /// Directly (a native connection; every client).
    Raw,
    /// A server with WebSocket enabled before the first byte: it decides.
    Undecided {
        config: Arc<WebConfig>,
        max_frame_size: u32,
    },
    /// Inside binary WebSocket messages, after an HTTP upgrade.
    Web(Box<WebLayer>),
}

/// Feeds plaintext through the framing to `sink` (pushwire's frame decoder).
fn deliver(
    framing: &mut Framing,
    plain: &[u8],
    sink: &mut dyn FnMut(&[u8]) -> Result<(), ChannelError>,
) -> Result<(), ChannelError> {
    let Some(&first) = plain.first() else {
        return Ok(());
    };
    if let Framing::Undecided {
        config,
        max_frame_size,
    } = framing
    {
        *framing = if WebLayer::starts_http(first) {
            Framing::Web(Box::new(WebLayer::new(config.clone(), *max_frame_size)))
        } else {
            Framing::Raw
        };
    }
    match framing {
        Framing::Web(web) => web.receive(plain, sink),
        _ => sink(plain),
    }
}

/// Feeds bytes to the frame decoder; returns whether a frame completed.
fn decode_frames(
    decoder: &mut FrameDecoder,
    frames: &mut VecDeque<RawFrame>,
    mut plain: &[u8],
) -> Result<bool, ChannelError> {
    let mut any = false;
    while !plain.is_empty() {
        let taken = decoder.feed(plain);
        plain = &plain[taken..];
        while let Some(frame) = decoder.next_frame().map_err(ChannelError::Decode)? {
            frames.push_back(frame);
            any = true;
        }
        if taken == 0 && !plain.is_empty() {
            // The decoder refuses bytes only when it has an error to report.
            decoder.next_frame().map_err(ChannelError::Decode)?;
        }
    }
    Ok(any)
}

pub(crate) struct Channel {
    pub link: TlsLink,
    framing: Framing,
    /// WebSocket framing: the plaintext (HTTP answer, WebSocket frames) to encrypt.
    wire: BytesMut,
    decoder: FrameDecoder,
    frames: VecDeque<RawFrame>,
    /// Plaintext frames queued since the last flush: encrypted together.
    outbound: BytesMut,
    /// Records ready for the caller.
    transmit: Vec<u8>,
    keepalive: KeepAlive,
    keepalive_active: bool,
    last_rx: Instant,
    last_tx: Instant,
    next_ping_nonce: u64,
    /// Application (decrypted) bytes received in total.
    app_bytes_received: u64,
    /// Set once the connection is finished; the reason is reported once.
    closed: Option<CloseReason>,
    close_reported: bool,
    /// The transport is gone: nothing more can be sent.
    transport_gone: bool,
    /// The TLS link failed: only what it queued (its alert) may still leave.
    link_failed: bool,
    /// Give back the buffers' capacity after the next flush (see
    /// [`Channel::release_after_flush`]).
    release_pending: bool,
}

impl Channel {
    pub fn new(link: TlsLink, limits: FrameLimits, keepalive: KeepAlive, now: Instant) -> Self {
        Self {
            link,
            framing: Framing::Raw,
            wire: BytesMut::new(),
            decoder: FrameDecoder::new(limits),
            frames: VecDeque::new(),
            outbound: BytesMut::new(),
            transmit: Vec::new(),
            keepalive,
            keepalive_active: false,
            last_rx: now,
            last_tx: now,
            next_ping_nonce: 1,
            app_bytes_received: 0,
            closed: None,
            close_reported: false,
            transport_gone: false,
            link_failed: false,
            release_pending: false,
        }
    }

    /// Server side: lets the connection be a browser's (an HTTP upgrade, then
    /// pushwire inside WebSocket messages) if its first byte says so; see
    /// [`crate::web`].
    pub fn enable_web(&mut self, config: Arc<WebConfig>, max_frame_size: u32) {
        self.framing = Framing::Undecided {
            config,
            max_frame_size,
        };
    }

    /// Asks for the buffers' capacity to be given back once the next flush has
    /// handed out what is queued: call when the handshake (TLS and Hello/Welcome) is
    /// over. The handshake grows the buffers far beyond what an idle connection
    /// needs (the server's flight with its certificate chain is kilobytes), and most
    /// connections of a push server are idle; a busy one grows them again once.
    pub fn release_after_flush(&mut self) {
        self.release_pending = true;
    }

    /// Gives back the capacity of every empty buffer. Only at moments the connection
    /// is known to be idle (the handshake just ended, a keep-alive ping is due), never
    /// per message: a busy connection keeps its buffers.
    fn release_idle_capacity(&mut self) {
        if self.transmit.is_empty() {
            self.transmit = Vec::new();
        }
        if self.outbound.is_empty() {
            self.outbound = BytesMut::new();
        }
        if self.wire.is_empty() {
            self.wire = BytesMut::new();
        }
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
        self.decoder.release_if_empty();
        self.link.release_idle_capacity();
    }

    /// Bytes of buffer capacity held by the channel and its link (not counting
    /// rustls' own), however much of it is in use.
    pub fn buffer_capacity(&self) -> usize {
        self.transmit.capacity()
            + self.outbound.capacity()
            + self.frames.capacity() * std::mem::size_of::<RawFrame>()
            + self.decoder.buffer_capacity()
            + self.link.buffer_capacity()
            + self.wire.capacity()
            + match &self.framing {
                Framing::Web(web) => web.buffer_capacity(),
                _ => 0,
            }
    }

    /// Starts keep-alive timing (once the connection is ready), counting from the
    /// last traffic.
    pub fn start_keepalive_now(&mut self) {
        self.keepalive_active = true;
    }

    /// Changes the keep-alive timing (deadlines follow from the last traffic).
    pub fn set_keepalive(&mut self, keepalive: KeepAlive) {
        self.keepalive = keepalive;
    }

    /// The keep-alive timing in force.
    pub fn keepalive(&self) -> KeepAlive {
        self.keepalive
    }

    pub fn is_closing(&self) -> bool {
        self.closed.is_some()
    }

    /// Feeds received bytes; complete frames queue up for [`Channel::next_frame`].
    pub fn receive(&mut self, now: Instant, data: &[u8]) {
        if self.closed.is_some() || data.is_empty() {
            return;
        }
        // Only complete frames count as traffic for the idle timer: a peer that
        // trickles the bytes of a frame that never ends must not keep the
        // connection forever.
        let last_rx = &mut self.last_rx;
        let decoder = &mut self.decoder;
        let frames = &mut self.frames;
        let framing = &mut self.framing;
        let app_bytes = &mut self.app_bytes_received;
        let result = self
            .link
            .receive(data, &mut self.transmit, &mut |plain: &[u8]| {
                *app_bytes += plain.len() as u64;
                deliver(framing, plain, &mut |bytes| {
                    if decode_frames(decoder, frames, bytes)? {
                        *last_rx = now;
                    }
                    Ok(())
                })
            });
        if let Err(e) = result {
            let reason = CloseReason::from(e);
            match reason {
                CloseReason::Tls(_) => self.fail(reason),
                _ => self.close_with(reason),
            }
        }
        if let Framing::Web(web) = &mut self.framing {
            if let Some(WebOutcome::Served(path)) = web.take_outcome() {
                self.finish_after_queued(CloseReason::Local {
                    code: CloseCode::Normal,
                    reason: clamp_text(Text::from(format!("served HTTP GET {path}"))),
                });
            }
        }
    }

    /// Call after draining [`Channel::next_frame`]: a close_notify that came without a
    /// Close message ends the connection as closed by the peer. (Deferred so a Close
    /// message arriving with the close_notify is seen first.)
    pub fn check_peer_closed(&mut self) {
        let status = self.link.status();
        let web_closed = matches!(&self.framing, Framing::Web(web) if web.peer_closed());
        if self.closed.is_none() && (status.closed || status.peer_closed || web_closed) {
            self.closed = Some(CloseReason::PeerClosed);
            self.link.request_close();
        }
    }

    pub fn next_frame(&mut self) -> Option<RawFrame> {
        if self.closed.is_some() {
            return None;
        }
        self.frames.pop_front()
    }

    /// Queues a message for the next flush.
    pub fn send(&mut self, message: &Message) {
        if self.closed.is_none() {
            message.encode(&mut self.outbound);
        }
    }

    /// Queues raw frame bytes (already encoded) for the next flush.
    pub fn send_encoded(&mut self, frames: &[u8]) {
        if self.closed.is_none() {
            self.outbound.extend_from_slice(frames);
        }
    }

    /// Like [`Channel::send_encoded`], taking the buffer: when nothing else is
    /// queued it becomes the outbound buffer without a copy.
    pub fn send_encoded_buffer(&mut self, frames: BytesMut) {
        if self.closed.is_some() {
            return;
        }
        if self.outbound.is_empty() {
            self.outbound = frames;
        } else {
            self.outbound.extend_from_slice(&frames);
        }
    }

    /// Application bytes received (after decryption) so far.
    pub fn app_bytes_received(&self) -> u64 {
        self.app_bytes_received
    }

    /// Plaintext bytes queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.outbound.len()
    }

    /// Sends Close with the reason's code, then close_notify, then nothing more.
    pub fn close_with(&mut self, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        let text = clamp_text(match &reason {
            CloseReason::Local { reason, .. } => reason.clone(),
            other => Text::from(other.to_string()),
        });
        Message::Close(Close {
            code: reason.code(),
            reason: text,
        })
        .encode(&mut self.outbound);
        self.closed = Some(reason);
        self.link.request_close();
    }

    /// Ends the connection without a Close message (the peer closed first, or the
    /// link failed), sending close_notify if the link still can.
    pub fn finish(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
            self.outbound.clear();
            self.link.request_close();
        }
    }

    /// Ends the connection after what is already queued (a Refused, say), without a
    /// Close message.
    pub fn finish_after_queued(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
            self.link.request_close();
        }
    }

    /// The TLS layer failed: nothing more can be encrypted or sent.
    fn fail(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
        self.outbound.clear();
        self.link_failed = true;
    }

    /// The transport ended (EOF or error).
    pub fn transport_closed(&mut self) {
        if self.closed.is_none() {
            self.closed = Some(CloseReason::PeerClosed);
        }
        self.transport_gone = true;
        self.outbound.clear();
        self.transmit.clear();
    }

    /// Encrypts what is queued and appends everything ready to `out`; returns the
    /// number of bytes appended.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        // Always give the link a turn: TLS may have records of its own to send (the
        // ClientHello, handshake replies, tickets, close_notify).
        if !self.transport_gone && !self.link_failed {
            let decoder = &mut self.decoder;
            let frames = &mut self.frames;
            let closing = self.closed.is_some();
            let pending = match &mut self.framing {
                Framing::Web(web) => {
                    web.flush(&mut self.outbound, closing, &mut self.wire);
                    &mut self.wire
                }
                _ => &mut self.outbound,
            };
            let framing = &mut self.framing;
            // Records arriving during a flush are only possible mid-handshake; frames
            // decoded here are kept for the next poll.
            let result = self
                .link
                .flush(pending, &mut self.transmit, &mut |plain: &[u8]| {
                    if closing {
                        return Ok(());
                    }
                    deliver(framing, plain, &mut |bytes| {
                        decode_frames(decoder, frames, bytes).map(|_| ())
                    })
                });
            if let Err(e) = result {
                self.fail(e.into());
            }
        }
        if self.transport_gone {
            self.transmit.clear();
            return 0;
        }
        let n = self.transmit.len();
        if n > 0 {
            self.last_tx = now;
            if out.is_empty() {
                // The usual case: hand the records over rather than copy them.
                std::mem::swap(out, &mut self.transmit);
            } else {
                out.append(&mut self.transmit);
            }
        }
        if std::mem::take(&mut self.release_pending) {
            self.release_idle_capacity();
        }
        n
    }

    /// Whether the connection is over and everything there was to send has been
    /// handed out: the caller may close the transport.
    pub fn is_finished(&self) -> bool {
        self.closed.is_some()
            && self.transmit.is_empty()
            && (self.transport_gone
                || self.link_failed
                || self.link.close_sent()
                || self.link.status().closed)
    }

    /// The close reason, once, when the connection has finished.
    pub fn take_close_reason(&mut self) -> Option<CloseReason> {
        if self.close_reported || !self.is_finished() {
            return None;
        }
        self.close_reported = true;
        self.closed.clone()
    }

    /// The keep-alive deadline, if any.
    pub fn keepalive_deadline(&self) -> Option<Instant> {
        if !self.keepalive_active || self.closed.is_some() {
            return None;
        }
        let ping = self.keepalive.ping_interval.map(|d| self.last_tx + d);
        let idle = self.keepalive.idle_timeout.map(|d| self.last_rx + d);
        match (ping, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends a Ping or closes for idleness when their time has come. Returns true
    /// when a Ping was due: nothing was sent for a ping interval, so the connection
    /// is idle and the empty buffers' capacity has been given back (the caller may
    /// do the same with its own).
    pub fn handle_keepalive(&mut self, now: Instant) -> bool {
        if !self.keepalive_active || self.closed.is_some() {
            return false;
        }
        if let Some(idle) = self.keepalive.idle_timeout {
            if now >= self.last_rx + idle {
                self.close_with(CloseReason::Timeout(TimeoutKind::Idle));
                return false;
            }
        }
        if let Some(interval) = self.keepalive.ping_interval {
            if now >= self.last_tx + interval {
                // Before the Ping is queued: it then takes a few bytes, not what the
                // last burst left.
                self.release_idle_capacity();
                // Frames already waiting to be flushed make the ping unnecessary.
                if self.outbound.is_empty() {
                    let nonce = self.next_ping_nonce;
                    self.next_ping_nonce += 1;
                    self.send(&Message::Ping(Ping { nonce }));
                }
                // Either way the deadline moves: the next ping is due an interval
                // from now, so the timer never stays in the past.
                self.last_tx = now;
                return true;
            }
        }
        false
    }

    /// Closes locally with an application reason.
    pub fn close_local(&mut self, code: CloseCode, reason: Text) {
        self.close_with(CloseReason::Local { code, reason });
    }
}

/// Longest reason in a Close or Refused (code `u16`, text): 4,091 bytes, so that the
/// frame (type, code, text length, text) fits the least frame limit a peer may have
/// (4,096; a version 4 client announces its own), below the protocol's text limit.
const REASON_MAX: usize = {
    let fits = pushwire_protocol::MIN_MAX_FRAME_SIZE as usize - 1 - 2 - 2;
    if fits < pushwire_protocol::MAX_TEXT_BYTES {
        fits
    } else {
        pushwire_protocol::MAX_TEXT_BYTES
    }
};

/// A Close or Refused reason cut to [`REASON_MAX`] bytes on a character boundary.
pub(crate) fn clamp_text(t: Text) -> Text {
    clamp_text_to(t, REASON_MAX)
}

/// Longest message in a ServerError (request id `u64`, code `u32`, text): 4,081
/// bytes, so that the frame fits the least frame limit a peer may have.
pub(crate) const SERVER_ERROR_TEXT_MAX: usize =
    pushwire_protocol::MIN_MAX_FRAME_SIZE as usize - 1 - 8 - 4 - 2;

/// `t` cut to at most `max` bytes on a character boundary.
pub(crate) fn clamp_text_to(t: Text, max: usize) -> Text {
    if t.len() <= max {
        return t;
    }
    let s = t.as_str();
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Text::from(&s[..end])
}
