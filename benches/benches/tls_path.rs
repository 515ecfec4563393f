//! The TLS data path: the engine's rustls-unbuffered session against tokio-rustls,
//! same certificate, same cipher suite, same payloads.
//!
//! One iteration moves a flush of 64 coalesced Published frames (payload 16 B, 128 B
//! or 1 KiB) from server to client:
//!
//! - `engine`: `ServerConnection::send_encoded` of the frames, `poll_transmit`
//!   (encryption into as few records as possible), the bytes handed to
//!   `ClientConnection::handle_input` (decryption and frame decoding), the 64 push
//!   events drained; the client's own output (acknowledgements) is fed back to the
//!   server, as on a real connection.
//! - `tokio_rustls`: `write_all` + `flush` of the same frames on a tokio-rustls server
//!   stream over `tokio::io::duplex` (1 MiB buffer), and the client stream read until
//!   the 64 frames are decoded with the same `FrameDecoder`; both ends on one
//!   current-thread runtime.
//!
//! Both sides run TLS 1.3 with TLS13_AES_128_GCM_SHA256: the server configurations
//! offer only that suite (the engine's client offers ring's defaults; the server picks
//! from its own list). The suite the engine negotiated is printed once, on stderr.
//! Throughput is in plaintext bytes; the ratio engine / tokio-rustls is computed in
//! `benches/RESULTS.md`.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pushwire_benches::{cert_file, dev_server_tls, pinned_provider, sample_published};
use pushwire_engine::client::{ClientConfig, ClientConnection, ClientEvent, ClientTransport};
use pushwire_engine::credentials::load_root_store;
use pushwire_engine::server::{
    Grant, ServerConfig, ServerConnection, ServerEvent, ServerTransport,
};
use pushwire_engine::tls::ClientTls;
use pushwire_engine::KeepAlive;
use pushwire_protocol::{FrameDecoder, FrameLimits, ResumeToken};
use rustls::pki_types::{ServerName, UnixTime};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;

/// Frames per flush.
const FRAMES: usize = 64;

fn no_keepalive() -> KeepAlive {
    KeepAlive {
        ping_interval: None,
        idle_timeout: None,
    }
}

/// A client and a server engine joined in memory, past the Welcome.
struct EnginePair {
    client: ClientConnection,
    server: ServerConnection,
    wire: Vec<u8>,
    now: Instant,
    suite: String,
}

impl EnginePair {
    fn new() -> Self {
        let now = Instant::now();
        let mut config = ServerConfig::new(ServerTransport::Tls(dev_server_tls()));
        config.keepalive = no_keepalive();
        let server = ServerConnection::new(Arc::new(config), ([127, 0, 0, 1], 40_000).into(), now)
            .expect("server engine");
        let roots = load_root_store(&[cert_file("ca.cert.pem")]).expect("development CA");
        let tls = ClientTls::new(roots, "localhost").expect("client TLS");
        let mut config = ClientConfig::new(ClientTransport::Tls(tls), "bench", b"MyPassword");
        config.keepalive = no_keepalive();
        let client = ClientConnection::new(config, now, UnixTime::now()).expect("client engine");
        let mut pair = Self {
            client,
            server,
            wire: Vec::new(),
            now,
            suite: String::new(),
        };
        let mut ready = false;
        for _ in 0..100 {
            if ready {
                break;
            }
            pair.client_to_server();
            while let Some(event) = pair.server.poll_event() {
                if let ServerEvent::Authenticate(_) = event {
                    pair.server.permit(Grant {
                        session_id: 1,
                        resume_token: ResumeToken([7; 16]),
                        resumed: false,
                        session_timeout_ms: 0,
                        replay_capacity: 0,
                    });
                }
            }
            pair.server_to_client();
            while let Some(event) = pair.client.poll_event() {
                match event {
                    ClientEvent::ServerAuthenticated(info) => pair.suite = info.cipher_suite,
                    ClientEvent::Ready(_) => ready = true,
                    ClientEvent::Closed(reason) => panic!("closed during the handshake: {reason}"),
                    _ => {}
                }
            }
        }
        assert!(ready, "the engine pair did not reach Ready");
        pair
    }

    fn client_to_server(&mut self) {
        self.wire.clear();
        if self.client.poll_transmit(self.now, &mut self.wire) > 0 {
            self.server.handle_input(self.now, &self.wire);
        }
    }

    fn server_to_client(&mut self) {
        self.wire.clear();
        if self.server.poll_transmit(self.now, &mut self.wire) > 0 {
            self.client.handle_input(self.now, &self.wire);
        }
    }

    /// One flush of `frames` from the server, decrypted and decoded by the client.
    fn round(&mut self, frames: &[u8]) {
        self.server.send_encoded(frames);
        self.server_to_client();
        let mut pushes = 0;
        while let Some(event) = self.client.poll_event() {
            if let ClientEvent::Push(message) = event {
                black_box(message);
                pushes += 1;
            }
        }
        debug_assert_eq!(pushes, FRAMES);
        // Acknowledgements and the like, as on a real connection.
        self.client_to_server();
        while self.server.poll_event().is_some() {}
    }
}

/// A tokio-rustls client and server over an in-memory duplex, past the handshake.
struct RustlsPair {
    runtime: Runtime,
    client: tokio_rustls::client::TlsStream<DuplexStream>,
    server: tokio_rustls::server::TlsStream<DuplexStream>,
    read_buf: Vec<u8>,
    decoder: FrameDecoder,
}

impl RustlsPair {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let roots = load_root_store(&[cert_file("ca.cert.pem")]).expect("development CA");
        let client_config = rustls::ClientConfig::builder_with_provider(pinned_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let acceptor = tokio_rustls::TlsAcceptor::from(dev_server_tls());
        let (client, server) = runtime.block_on(async {
            let (a, b) = tokio::io::duplex(1 << 20);
            let name = ServerName::try_from("localhost").expect("server name");
            let (client, server) = tokio::join!(connector.connect(name, a), acceptor.accept(b));
            (
                client.expect("client handshake"),
                server.expect("server handshake"),
            )
        });
        Self {
            runtime,
            client,
            server,
            read_buf: vec![0; 64 * 1024],
            decoder: FrameDecoder::new(FrameLimits::default()),
        }
    }

    fn suite(&self) -> String {
        let (_, session) = self.client.get_ref();
        session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default()
    }

    /// `iters` flushes of `frames`, each read and decoded before the next.
    fn rounds(&mut self, frames: &[u8], iters: u64) -> Duration {
        let Self {
            runtime,
            client,
            server,
            read_buf,
            decoder,
        } = self;
        runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let write = async {
                    server.write_all(frames).await.expect("write");
                    server.flush().await.expect("flush");
                };
                let read = async {
                    let mut decoded = 0;
                    while decoded < FRAMES {
                        let n = client.read(read_buf).await.expect("read");
                        assert!(n > 0, "the stream ended");
                        let mut plain = &read_buf[..n];
                        while !plain.is_empty() {
                            let taken = decoder.feed(plain);
                            plain = &plain[taken..];
                            while let Some(message) = decoder.next_message().expect("decode") {
                                black_box(message);
                                decoded += 1;
                            }
                        }
                    }
                };
                tokio::join!(write, read);
            }
            start.elapsed()
        })
    }
}

fn tls_path(c: &mut Criterion) {
    let mut engine = EnginePair::new();
    let mut tokio_rustls = RustlsPair::new();
    eprintln!(
        "tls_path: engine negotiated {}, tokio-rustls negotiated {}",
        engine.suite,
        tokio_rustls.suite()
    );
    let mut group = c.benchmark_group("tls_path");
    for size in pushwire_benches::PAYLOAD_SIZES {
        let mut frames = BytesMut::new();
        let message = sample_published(size);
        for _ in 0..FRAMES {
            message.encode(&mut frames);
        }
        group.throughput(Throughput::Bytes(frames.len() as u64));
        let id = format!("{FRAMES}x{size}B");
        group.bench_with_input(BenchmarkId::new("engine", &id), &frames, |b, f| {
            b.iter(|| engine.round(f))
        });
        group.bench_with_input(BenchmarkId::new("tokio_rustls", &id), &frames, |b, f| {
            b.iter_custom(|iters| tokio_rustls.rounds(f, iters))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = tls_path
}
criterion_main!(benches);
