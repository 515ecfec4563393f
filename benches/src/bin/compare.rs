//! The NATS side of the side-by-side benchmark (`benches/nats_compare.sh`).
//!
//! Runs the same workload driver as `pushwire bench` (`pushwire_tokio::cli::bench::
//! run_workload`: same payload timestamps, flow-control window, rates, histogram and
//! report format) against a nats-server with the async-nats client: each subscriber and
//! publisher is its own connection, group G is the subject `bench.G`.
//!
//! The workload flags are `pushwire bench`'s (`--help` lists them): `--pubs P` (alias
//! `--publishers`), `--groups G` (subscriber `i` on subject `bench.{i % G + 1}`,
//! message `k` from publisher `k % P` to `bench.{k % G + 1}`), and `--room`, where
//! each of the `--subs` connections subscribes to its subject and publishes to it,
//! connected with `no_echo` so that, as with pushwire's echo off, it does not receive
//! its own messages.
//!
//! ```sh
//! compare --server 127.0.0.1:4222 --subs 10 --msgs 200000 --size 16
//! compare --server 127.0.0.1:4222 --pubs 8 --subs 1000 --groups 200 --msgs 200000
//! compare --server 127.0.0.1:4222 --room --subs 100 --msgs 200000
//! ```

use async_nats::{Client, Subject};
use bytes::Bytes;
use clap::Parser;
use futures_core::Stream;
use pushwire_tokio::cli::bench::{
    run_workload, BenchPublisher, BenchTarget, Recorder, WorkloadArgs,
};
use pushwire_tokio::cli::{CliError, Exit};
use std::pin::Pin;
use std::process::ExitCode;
use tokio::task::JoinHandle;

/// Benchmark a nats-server the way `pushwire bench` benchmarks pushwire.
#[derive(Debug, Parser)]
#[command(
    name = "compare",
    after_help = "Group G is the subject bench.G. With --room, every member connects with \
no_echo (as pushwire's echo off). Prints the same report and `result key=value …` line as \
`pushwire bench`."
)]
struct Args {
    /// The nats-server.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:4222")]
    server: String,
    /// The workload.
    #[command(flatten)]
    workload: WorkloadArgs,
}

struct NatsTarget {
    url: String,
    subjects: Vec<Subject>,
}

impl NatsTarget {
    fn subject(&self, group: u32) -> Subject {
        self.subjects[group as usize - 1].clone()
    }

    /// A connection; `no_echo`: the server does not send it its own messages.
    async fn connect(&self, name: String, no_echo: bool) -> Result<Client, CliError> {
        let mut options = async_nats::ConnectOptions::new().name(name);
        if no_echo {
            options = options.no_echo();
        }
        options
            .connect(&self.url)
            .await
            .map_err(|e| CliError::new(Exit::Connection, format!("NATS connect: {e}")))
    }
}

fn nats_failure(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Failure, format!("NATS {what}: {e}"))
}

/// A subscriber connection and the task that feeds its deliveries to the recorder.
struct NatsSubscriber {
    _client: Client,
    task: JoinHandle<()>,
}

impl Drop for NatsSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct NatsPublisher {
    client: Client,
    subjects: Vec<Subject>,
}

impl BenchPublisher for NatsPublisher {
    async fn publish(&mut self, group: u32, payload: Bytes) -> Result<(), CliError> {
        // Resolves once the message is in the client's bounded outgoing channel: the
        // same "queued" point as pushwire's publish future.
        let subject = self.subjects[group as usize - 1].clone();
        self.client
            .publish(subject, payload)
            .await
            .map_err(|e| nats_failure("publish", e))
    }

    async fn flush(&mut self) -> Result<(), CliError> {
        self.client
            .flush()
            .await
            .map_err(|e| nats_failure("flush", e))
    }
}

impl NatsTarget {
    /// Subscribes `client` to `group`'s subject, and feeds its messages to `recorder`
    /// once the server has the SUB.
    async fn join(
        &self,
        client: Client,
        group: u32,
        recorder: Recorder,
    ) -> Result<NatsSubscriber, CliError> {
        let mut subscription = client
            .subscribe(self.subject(group))
            .await
            .map_err(|e| nats_failure("subscribe", e))?;
        // A flush is a PING/PONG round trip: once it returns, the server has the SUB.
        client.flush().await.map_err(|e| nats_failure("flush", e))?;
        let task = tokio::spawn(async move {
            while let Some(message) =
                std::future::poll_fn(|cx| Pin::new(&mut subscription).poll_next(cx)).await
            {
                recorder.record(&message.payload);
            }
        });
        Ok(NatsSubscriber {
            _client: client,
            task,
        })
    }
}

impl BenchTarget for NatsTarget {
    type Subscriber = NatsSubscriber;
    type Publisher = NatsPublisher;

    async fn subscriber(
        &self,
        index: usize,
        group: u32,
        recorder: Recorder,
    ) -> Result<NatsSubscriber, CliError> {
        let client = self.connect(format!("bench-sub-{index}"), false).await?;
        self.join(client, group, recorder).await
    }

    async fn publisher(&self, index: usize) -> Result<NatsPublisher, CliError> {
        Ok(NatsPublisher {
            client: self.connect(format!("bench-pub-{index}"), false).await?,
            subjects: self.subjects.clone(),
        })
    }

    async fn member(
        &self,
        index: usize,
        group: u32,
        recorder: Recorder,
    ) -> Result<(NatsSubscriber, NatsPublisher), CliError> {
        let client = self.connect(format!("bench-member-{index}"), true).await?;
        let publisher = NatsPublisher {
            client: client.clone(),
            subjects: self.subjects.clone(),
        };
        Ok((self.join(client, group, recorder).await?, publisher))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let workload = args.workload.workload();
    let target = NatsTarget {
        url: format!("nats://{}", args.server),
        subjects: (1..=workload.groups)
            .map(|g| Subject::from(format!("bench.{g}")))
            .collect(),
    };
    // The same runtime as the `pushwire` CLI: multi-thread, one worker per core.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("compare: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "nats bench (async-nats): {}, nats-server {}",
        workload.describe(),
        args.server
    );
    match runtime.block_on(run_workload(&target, &workload)) {
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("compare: error: {e}");
            ExitCode::from(e.exit.code())
        }
    }
}
