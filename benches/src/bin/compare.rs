//! The NATS side of the side-by-side benchmark (`benches/nats_compare.sh`).
//!
//! Runs the same workload driver as `pushwire bench` (`pushwire_tokio::cli::bench::
//! run_workload`: same payload timestamps, flow-control window, rates, histogram and
//! report format) against a nats-server with the async-nats client: each subscriber and
//! publisher is its own connection, group G is the subject `bench.G`.
//!
//! ```sh
//! compare --server 127.0.0.1:4222 --subs 10 --msgs 200000 --size 16
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
#[command(name = "compare")]
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

    async fn connect(&self, name: String) -> Result<Client, CliError> {
        async_nats::ConnectOptions::new()
            .name(name)
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

impl BenchTarget for NatsTarget {
    type Subscriber = NatsSubscriber;
    type Publisher = NatsPublisher;

    async fn subscriber(
        &self,
        index: usize,
        group: u32,
        recorder: Recorder,
    ) -> Result<NatsSubscriber, CliError> {
        let client = self.connect(format!("bench-sub-{index}")).await?;
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

    async fn publisher(&self, index: usize) -> Result<NatsPublisher, CliError> {
        Ok(NatsPublisher {
            client: self.connect(format!("bench-pub-{index}")).await?,
            subjects: self.subjects.clone(),
        })
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
        "nats bench (async-nats): {} publishers, {} subscribers, {} groups, {} messages of {} B, \
         nats-server {}",
        workload.pubs, workload.subs, workload.groups, workload.msgs, workload.size, args.server
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
