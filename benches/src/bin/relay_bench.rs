//! The driver of `benches/relay_floor.sh`: `pushwire bench`'s workload driver
//! (`pushwire_tokio::cli::bench::run_workload`: the same payload timestamps,
//! flow-control window, delivered-rate definition and report) run through
//! `relay_floor`, the fastest relay there is, instead of a pushwire server.
//!
//! Frames are `u32` big-endian length, then the body: the benchmark's payload (its
//! send timestamp first) padded with zeros, so that a whole frame is as long as the
//! Published frame a pushwire subscriber receives for the same payload from
//! `bench-pub-0` (`--frame-bytes` overrides it). The relay forwards frames unchanged,
//! so the publisher's frames are that long too (pushwire's Publish frame is shorter:
//! both sizes are printed).
//!
//! Each subscriber connection reads chunks of up to 256 KiB and hands every whole
//! frame's body to the run's recorder (as `pushwire bench`'s delivery callback does).
//! The publisher appends frames to a buffer and writes it whenever it holds 64 KiB,
//! before it waits on the window, and at the end.
//!
//! ```sh
//! relay_floor 127.0.0.1:0 &      # prints "listening on ADDR"
//! relay_bench --server ADDR --subs 10 --msgs 200000 --size 16
//! ```

use bytes::{Buf, Bytes, BytesMut};
use clap::Parser;
use pushwire_protocol::{GroupId, Message, PeerSender, Publish, Published, Sender, Text};
use pushwire_tokio::cli::bench::{
    run_workload, BenchPublisher, BenchTarget, Recorder, WorkloadArgs,
};
use pushwire_tokio::cli::{CliError, Exit};
use pushwire_tokio::hello::HELLO_WORLD_SERVICE;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Run `pushwire bench`'s workload through `relay_floor`.
#[derive(Debug, Parser)]
#[command(
    name = "relay_bench",
    after_help = "One publisher and one group only (the relay has no groups): --pubs, \
--groups and --room other than their defaults are refused. Prints the frame sizes, then the \
same report and `result key=value …` line as `pushwire bench`."
)]
struct Args {
    /// The relay (`relay_floor`).
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// Bytes of each frame on the wire, length prefix included [default: pushwire's
    /// Published frame for the payload].
    #[arg(long, value_name = "BYTES")]
    frame_bytes: Option<usize>,
    /// The workload.
    #[command(flatten)]
    workload: WorkloadArgs,
}

/// Bytes of the frames pushwire sends for a `size`-byte payload to group 1:
/// (Publish from the publisher, Published to each subscriber).
fn pushwire_frame_sizes(size: usize) -> (usize, usize) {
    let payload = Bytes::from(vec![b'x'; size]);
    let publish = Message::Publish(Publish {
        command_id: 1,
        groups: vec![GroupId(1)],
        payload: payload.clone(),
        compression: None,
    });
    let published = Message::Published(Published {
        seq: 1,
        sender: Sender::Peer(PeerSender {
            user_id: Text::from("bench-pub-0"),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 40_000,
            service_id: HELLO_WORLD_SERVICE,
            is_self: false,
            node: None,
        }),
        groups: vec![GroupId(1)],
        payload,
        compression: None,
    });
    (publish.encoded_len(), published.encoded_len())
}

fn io_failure(what: &str, e: std::io::Error) -> CliError {
    CliError::new(Exit::Connection, format!("relay {what}: {e}"))
}

struct RelayTarget {
    server: String,
    frame_bytes: usize,
}

impl RelayTarget {
    async fn connect(&self, role: u8) -> Result<TcpStream, CliError> {
        let mut stream = TcpStream::connect(&self.server)
            .await
            .map_err(|e| io_failure("connect", e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| io_failure("nodelay", e))?;
        stream
            .write_all(&[role])
            .await
            .map_err(|e| io_failure("hello", e))?;
        Ok(stream)
    }
}

/// A subscriber connection and the task that reads it.
struct RelaySubscriber {
    task: JoinHandle<()>,
    /// Set when a read failed (an end of stream is not a failure: the relay closes
    /// its subscribers once the publisher is done).
    failed: Arc<AtomicBool>,
}

impl Drop for RelaySubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many bytes the publisher collects before a write.
const WRITE_AT: usize = 64 * 1024;

struct RelayPublisher {
    stream: TcpStream,
    buf: Vec<u8>,
    frame_bytes: usize,
}

impl BenchPublisher for RelayPublisher {
    async fn publish(&mut self, _group: u32, payload: Bytes) -> Result<(), CliError> {
        let body = self.frame_bytes - 4;
        self.buf.extend_from_slice(&(body as u32).to_be_bytes());
        self.buf.extend_from_slice(&payload);
        self.buf.resize(self.buf.len() + body - payload.len(), 0);
        if self.buf.len() >= WRITE_AT {
            self.stream
                .write_all(&self.buf)
                .await
                .map_err(|e| io_failure("write", e))?;
            self.buf.clear();
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), CliError> {
        self.stream
            .write_all(&self.buf)
            .await
            .map_err(|e| io_failure("write", e))?;
        self.buf.clear();
        self.stream
            .flush()
            .await
            .map_err(|e| io_failure("flush", e))
    }

    fn before_wait(&mut self) {
        // As much as the socket takes now. What it does not take cannot hold the run:
        // the buffer (under 64 KiB) is smaller than any window (at least 256 frames and
        // 2 MiB by default), so the subscribers have the rest of the window to read.
        while !self.buf.is_empty() {
            match self.stream.try_write(&self.buf) {
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(_) => break,
            }
        }
    }
}

impl BenchTarget for RelayTarget {
    type Subscriber = RelaySubscriber;
    type Publisher = RelayPublisher;

    async fn subscriber(
        &self,
        _index: usize,
        group: u32,
        recorder: Recorder,
    ) -> Result<RelaySubscriber, CliError> {
        if group != 1 {
            return Err(CliError::new(Exit::Usage, "the relay has one group"));
        }
        let mut stream = self.connect(b'S').await?;
        let failed = Arc::new(AtomicBool::new(false));
        let failure = failed.clone();
        let task = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(256 * 1024);
            loop {
                if buf.capacity() - buf.len() < 64 * 1024 {
                    buf.reserve(256 * 1024);
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(_) => {
                        failure.store(true, Ordering::Release);
                        return;
                    }
                }
                let mut at = 0;
                while buf.len() - at >= 4 {
                    let len =
                        u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                    if buf.len() - at - 4 < len {
                        break;
                    }
                    recorder.record(&buf[at + 4..at + 4 + len]);
                    at += 4 + len;
                }
                buf.advance(at);
            }
        });
        Ok(RelaySubscriber { task, failed })
    }

    fn is_connected(&self, subscriber: &RelaySubscriber) -> bool {
        !subscriber.failed.load(Ordering::Acquire)
    }

    async fn publisher(&self, index: usize) -> Result<RelayPublisher, CliError> {
        if index > 0 {
            return Err(CliError::new(Exit::Usage, "the relay has one publisher"));
        }
        Ok(RelayPublisher {
            stream: self.connect(b'P').await?,
            buf: Vec::with_capacity(WRITE_AT + self.frame_bytes),
            frame_bytes: self.frame_bytes,
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let workload = args.workload.workload();
    if workload.pubs != 1 || workload.groups != 1 || workload.room {
        eprintln!("relay_bench: error: one publisher, one group, no room");
        return ExitCode::from(Exit::Usage.code());
    }
    let (publish, published) = pushwire_frame_sizes(workload.size);
    let frame_bytes = args.frame_bytes.unwrap_or(published);
    if frame_bytes < workload.size + 4 {
        eprintln!(
            "relay_bench: error: a frame of {frame_bytes} B cannot hold a {} B payload and \
             its 4-byte length",
            workload.size
        );
        return ExitCode::from(Exit::Usage.code());
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relay_bench: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "relay bench: {}, relay {}; frames of {frame_bytes} B (pushwire: Publish {publish} B, \
         Published {published} B)",
        workload.describe(),
        args.server
    );
    let target = RelayTarget {
        server: args.server,
        frame_bytes,
    };
    match runtime.block_on(run_workload(&target, &workload)) {
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay_bench: error: {e}");
            ExitCode::from(e.exit.code())
        }
    }
}
