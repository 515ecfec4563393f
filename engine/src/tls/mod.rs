//! TLS through rustls' unbuffered API, behind the engine's own type.
//!
//! `TlsLink` owns the rustls connection (or nothing, in explicit plaintext mode), the
//! buffer of ciphertext received but not yet processed, and the logic that walks
//! rustls' `ConnectionState` machine. The connection engines above it see plaintext
//! in, plaintext out, and a few lifecycle facts (handshake done, peer closed, closed).

mod certificate;
mod config;

pub use certificate::{CertificateInfo, CertificateParseError, ServerAuthentication, Verdict};
pub use config::{server_tls_config, ClientAuth, ClientTls, TlsConfigError};

use bytes::BytesMut;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, ReadEarlyData,
    UnbufferedStatus,
};
use thiserror::Error;

/// Room for the largest TLS record: 16 KiB of plaintext, 2 KiB of expansion allowed by
/// the RFCs, and the 5-byte header.
pub const MAX_RECORD_LEN: usize = 16_384 + 2_048 + 5;

/// How far the incoming buffer may grow while the handshake runs: rustls joins
/// fragmented handshake messages (long certificate chains) in place, up to 64 KiB.
pub const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024 + MAX_RECORD_LEN;

/// Why the TLS layer failed. Fatal for the connection.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TlsError {
    /// rustls rejected the peer's records, or the peer sent an alert.
    #[error("TLS error: {0}")]
    Rustls(#[from] rustls::Error),
    /// The peer sent more than fits in the incoming buffer without completing a record.
    #[error("TLS record or handshake message larger than {limit} bytes")]
    RecordTooLarge {
        /// The buffer bound that was hit.
        limit: usize,
    },
    /// The connection's keys are exhausted (after 2^64 records).
    #[error("TLS encryption keys exhausted")]
    KeysExhausted,
}

/// Lifecycle facts the connection engine reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LinkStatus {
    /// Application data may flow (handshake complete, or plaintext mode).
    pub ready: bool,
    /// The peer sent close_notify (or, in plaintext mode, nothing: the transport tells).
    pub peer_closed: bool,
    /// Both directions are closed.
    pub closed: bool,
}

/// The rustls connection types share a state machine but not a trait; this is the
/// one call the driver needs from each.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// Drops 0-RTT data: pushwire never enables it, so only a server can see the
    /// state, and only from a misbehaving client.
    fn drain_early_data(early: &mut ReadEarlyData<'_, '_, Self::Data>)
        -> Result<(), rustls::Error>;
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = rustls::client::ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn drain_early_data(_: &mut ReadEarlyData<'_, '_, Self::Data>) -> Result<(), rustls::Error> {
        Ok(())
    }
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = rustls::server::ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn drain_early_data(
        early: &mut ReadEarlyData<'_, '_, Self::Data>,
    ) -> Result<(), rustls::Error> {
        while let Some(record) = early.next_record() {
            record?;
        }
        Ok(())
    }
}

enum Session {
    Client(Box<UnbufferedClientConnection>),
    Server(Box<UnbufferedServerConnection>),
    Plaintext,
}

/// One connection's TLS (or explicit plaintext) layer.
///
/// Calling contract: feed received bytes with [`TlsLink::receive`]; queue outgoing
/// plaintext in a caller-owned buffer and pass it to [`TlsLink::flush`], which
/// encrypts everything queued into as few records as possible and appends them to the
/// transmit buffer. Handshake records produced while receiving are appended to the
/// transmit buffer passed to `receive`.
pub(crate) struct TlsLink {
    session: Session,
    /// Ciphertext received and not yet consumed by rustls: `incoming[start..]`.
    incoming: Vec<u8>,
    start: usize,
    status: LinkStatus,
    close_requested: bool,
    close_notify_sent: bool,
}

impl TlsLink {
    pub fn client(conn: UnbufferedClientConnection) -> Self {
        Self::new(Session::Client(Box::new(conn)))
    }

    pub fn server(conn: UnbufferedServerConnection) -> Self {
        Self::new(Session::Server(Box::new(conn)))
    }

    pub fn plaintext() -> Self {
        let mut link = Self::new(Session::Plaintext);
        link.status.ready = true;
        link
    }

    fn new(session: Session) -> Self {
        Self {
            session,
            incoming: Vec::new(),
            start: 0,
            status: LinkStatus::default(),
            close_requested: false,
            close_notify_sent: false,
        }
    }

    pub fn status(&self) -> LinkStatus {
        self.status
    }

    /// The rustls client connection, for certificate and cipher inspection.
    pub fn client_session(&self) -> Option<&UnbufferedClientConnection> {
        match &self.session {
            Session::Client(c) => Some(c),
            _ => None,
        }
    }

    /// The rustls server connection, for client-certificate inspection.
    pub fn server_session(&self) -> Option<&UnbufferedServerConnection> {
        match &self.session {
            Session::Server(s) => Some(s),
            _ => None,
        }
    }

    /// Bytes buffered and not yet processed.
    pub fn buffered(&self) -> usize {
        self.incoming.len() - self.start
    }

    /// Gives back the incoming buffer's capacity if it holds nothing. After the
    /// handshake it may have grown up to [`MAX_HANDSHAKE_BUFFER`]; an empty buffer has
    /// nothing rustls could still refer to (no partial record or handshake message).
    pub fn release_idle_capacity(&mut self) {
        if self.buffered() == 0 {
            self.incoming = Vec::new();
            self.start = 0;
        }
    }

    /// Bytes of buffer capacity held (not counting rustls' own).
    pub fn buffer_capacity(&self) -> usize {
        self.incoming.capacity()
    }

    /// Takes received bytes. Decrypted application data goes to `plaintext` (which may
    /// refuse it by returning an error, ending the call); handshake records to send go
    /// to `transmit`.
    pub fn receive<E: From<TlsError>>(
        &mut self,
        mut data: &[u8],
        transmit: &mut Vec<u8>,
        plaintext: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if matches!(self.session, Session::Plaintext) {
            return plaintext(data);
        }
        while !data.is_empty() {
            if self.status.closed || self.status.peer_closed {
                // Bytes after close_notify are ignored, as TLS requires.
                return Ok(());
            }
            let limit = if self.status.ready {
                MAX_RECORD_LEN
            } else {
                MAX_HANDSHAKE_BUFFER
            };
            self.compact();
            let room = limit.saturating_sub(self.buffered());
            if room == 0 {
                return Err(TlsError::RecordTooLarge { limit }.into());
            }
            let take = room.min(data.len());
            self.incoming.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.drive(transmit, None, plaintext)?;
        }
        Ok(())
    }

    /// Encrypts all of `pending` (emptying it) and, if a close was requested, the
    /// close_notify, appending the records to `transmit`. Does nothing to `pending`
    /// before the handshake completes.
    pub fn flush<E: From<TlsError>>(
        &mut self,
        pending: &mut BytesMut,
        transmit: &mut Vec<u8>,
        plaintext: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if matches!(self.session, Session::Plaintext) {
            if transmit.is_empty() && !pending.is_empty() {
                // Hand the buffer over: without a copy when it is not shared (an
                // outbox's frames, say), which is the bulk of a busy server's bytes.
                *transmit = Vec::from(std::mem::take(pending));
            } else {
                transmit.extend_from_slice(pending);
                pending.clear();
            }
            if self.close_requested {
                self.close_notify_sent = true;
                self.status.closed = true;
            }
            return Ok(());
        }
        if self.status.closed {
            pending.clear();
            return Ok(());
        }
        self.drive(transmit, Some(pending), plaintext)?;
        if self.close_requested && !self.status.ready {
            // Closing before the handshake finished: there is no traffic key to send
            // close_notify with, and nothing queued may leave unencrypted.
            pending.clear();
            self.close_notify_sent = true;
            self.status.closed = true;
        }
        Ok(())
    }

    /// Asks for close_notify to be sent at the next flush, after pending data.
    pub fn request_close(&mut self) {
        self.close_requested = true;
    }

    /// Whether our close_notify (or, in plaintext mode, our close) has been queued.
    pub fn close_sent(&self) -> bool {
        self.close_notify_sent
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.incoming.drain(..self.start);
            self.start = 0;
        }
    }

    fn drive<E: From<TlsError>>(
        &mut self,
        transmit: &mut Vec<u8>,
        pending: Option<&mut BytesMut>,
        plaintext: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut state = DriveState {
            incoming: &mut self.incoming,
            start: &mut self.start,
            status: &mut self.status,
            close_requested: self.close_requested,
            close_notify_sent: &mut self.close_notify_sent,
        };
        match &mut self.session {
            Session::Client(c) => state.run(c.as_mut(), transmit, pending, plaintext),
            Session::Server(s) => state.run(s.as_mut(), transmit, pending, plaintext),
            Session::Plaintext => Ok(()),
        }
    }
}

/// The driver's view of the link's fields, split from the session so both can be
/// borrowed at once.
struct DriveState<'a> {
    incoming: &'a mut Vec<u8>,
    start: &'a mut usize,
    status: &'a mut LinkStatus,
    close_requested: bool,
    close_notify_sent: &'a mut bool,
}

impl DriveState<'_> {
    /// Walks rustls' states until it needs more input or has nothing more to do.
    ///
    /// States handled specially:
    /// - `EncodeTlsData` and `TransmitTlsData` may come at any time, also after the
    ///   handshake (session tickets, key updates): the records are appended to the
    ///   transmit buffer and `done()` is called at once, since "transmitted" here means
    ///   handed to the caller.
    /// - `WriteTraffic` is where the loop stops: all pending plaintext is encrypted in
    ///   one call (rustls splits it into full records) and a requested close_notify
    ///   follows. After the handshake, half a record buffered also shows up as
    ///   `WriteTraffic`; the bytes stay in `incoming` for the next call.
    /// - `PeerClosed` is edge-triggered: noted, and the loop goes on so we can still
    ///   send. `Closed` is terminal.
    /// - `ReadEarlyData` cannot happen (0-RTT is not enabled); drained and dropped.
    fn run<C: Unbuffered, E: From<TlsError>>(
        &mut self,
        conn: &mut C,
        transmit: &mut Vec<u8>,
        mut pending: Option<&mut BytesMut>,
        plaintext: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        loop {
            let UnbufferedStatus { discard, state } =
                conn.process(&mut self.incoming[*self.start..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    *self.start += discard;
                    drain_alert(conn, &mut self.incoming[*self.start..], transmit);
                    return Err(TlsError::from(e).into());
                }
            };
            let mut stop = false;
            match state {
                ConnectionState::ReadTraffic(mut read) => {
                    let mut failed = None;
                    while let Some(record) = read.next_record() {
                        let record = record.map_err(TlsError::from)?;
                        if failed.is_none() {
                            if let Err(e) = plaintext(record.payload) {
                                failed = Some(e);
                            }
                        }
                    }
                    if let Some(e) = failed {
                        *self.start += discard;
                        return Err(e);
                    }
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    C::drain_early_data(&mut early).map_err(TlsError::from)?;
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(transmit, |buf| encode.encode(buf))?;
                }
                ConnectionState::TransmitTlsData(transmit_state) => transmit_state.done(),
                ConnectionState::BlockedHandshake => stop = true,
                ConnectionState::WriteTraffic(mut write) => {
                    self.status.ready = true;
                    if let Some(pending) = pending.take() {
                        if !pending.is_empty() {
                            let hint = pending.len() + (pending.len() / 16_384 + 1) * 64;
                            encrypt_into(transmit, hint, |buf| write.encrypt(pending, buf))?;
                            pending.clear();
                        }
                    }
                    if self.close_requested && !*self.close_notify_sent {
                        encrypt_into(transmit, 64, |buf| write.queue_close_notify(buf))?;
                        *self.close_notify_sent = true;
                        // Go round once more: rustls reports Closed if the peer had
                        // already closed.
                    } else {
                        stop = true;
                    }
                }
                ConnectionState::PeerClosed => self.status.peer_closed = true,
                ConnectionState::Closed => {
                    self.status.peer_closed = true;
                    self.status.closed = true;
                    stop = true;
                }
                _ => stop = true,
            }
            *self.start += discard;
            if stop {
                return Ok(());
            }
        }
    }
}

/// What a rustls write into a caller buffer reported, other than success.
enum Short {
    /// The buffer must hold this many bytes.
    Need(usize),
    /// Stop, with this result (nothing written).
    Stop(Result<(), TlsError>),
}

/// Appends what `write` produces to `transmit`, growing the buffer from `room` bytes
/// until it fits, and keeps exactly the bytes written.
fn write_growing(
    transmit: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Short>,
) -> Result<(), TlsError> {
    let base = transmit.len();
    loop {
        transmit.resize(base + room, 0);
        match write(&mut transmit[base..]) {
            Ok(n) => {
                transmit.truncate(base + n);
                return Ok(());
            }
            Err(Short::Need(required)) => room = required,
            Err(Short::Stop(result)) => {
                transmit.truncate(base);
                return result;
            }
        }
    }
}

/// A handshake record (or alert) rustls prepared.
fn encode_into(
    transmit: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), TlsError> {
    write_growing(transmit, 2048, |buf| {
        write(buf).map_err(|e| match e {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Short::Need(required_size)
            }
            EncodeError::AlreadyEncoded => Short::Stop(Ok(())),
        })
    })
}

/// Encrypted application data or close_notify, starting from a size guess (`room`)
/// that covers TLS 1.2 and 1.3 record overhead, so the retry is rare.
fn encrypt_into(
    transmit: &mut Vec<u8>,
    room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), TlsError> {
    write_growing(transmit, room, |buf| {
        write(buf).map_err(|e| match e {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Short::Need(required_size)
            }
            EncryptError::EncryptExhausted => Short::Stop(Err(TlsError::KeysExhausted)),
        })
    })
}

/// After an error rustls has queued a fatal alert (if any): it comes out first on the
/// next call, before any input is looked at. Exactly one call, on the same bytes: a
/// second would re-read the failed input and queue a second alert (a rustls debug
/// assertion), and a different slice breaks rustls' in-place handshake joining.
fn drain_alert<C: Unbuffered>(conn: &mut C, incoming: &mut [u8], transmit: &mut Vec<u8>) {
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = conn.process(incoming).state {
        let _ = encode_into(transmit, |buf| encode.encode(buf));
    }
}
