//! Request round trips per second through an in-process server: one client
//! connection keeps `--depth` echo requests in flight until `--requests` have
//! completed, over TLS (default) or plaintext. Prints one line per run and the
//! median, for before/after comparisons of the RPC path.
//!
//! ```sh
//! cargo run --release -p pushwire-benches --bin rpc_rate -- --requests 200000 --depth 64
//! ```

use bytes::Bytes;
use clap::Parser;
use pushwire_tokio::client::{Client, ConnectionContext, Trust};
use pushwire_tokio::hello::{hello_world_service, ECHO, HELLO_WORLD_SERVICE};
use pushwire_tokio::server::{AuthDecision, ServerBuilder};
use std::time::Instant;

/// Measure RPC round trips per second.
#[derive(Debug, Parser)]
#[command(name = "rpc_rate")]
struct Args {
    /// Requests per run.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// Argument (and result) size in bytes.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// No TLS.
    #[arg(long)]
    plaintext: bool,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let certs = pushwire_benches::cert_file("");
    let mut builder = ServerBuilder::new();
    builder = if args.plaintext {
        builder.plaintext()
    } else {
        builder
            .tls_from_pem(
                &certs.join("server.cert.pem"),
                &certs.join("server.key.pem"),
                Some("mypassword"),
            )
            .expect("development certificate")
    };
    let server = builder
        .service(HELLO_WORLD_SERVICE, hello_world_service())
        .authenticator(|_: &pushwire_tokio::server::AuthAttempt<'_>| AuthDecision::Permit)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let port = server.local_addr().unwrap().port();
    let mut context = ConnectionContext::new("localhost", port, "bench", "pw");
    context.trust = if args.plaintext {
        Trust::Plaintext
    } else {
        Trust::CaFiles(vec![certs.join("ca.cert.pem")])
    };
    let (client, _events) = Client::connect(context).await.expect("connect");
    let payload = Bytes::from(vec![b'x'; args.size]);

    let mut rates = Vec::new();
    for run in 1..=args.runs {
        let began = Instant::now();
        let workers: Vec<_> = (0..args.depth)
            .map(|w| {
                let client = client.clone();
                let payload = payload.clone();
                let count =
                    args.requests / args.depth + usize::from(w < args.requests % args.depth);
                tokio::spawn(async move {
                    for _ in 0..count {
                        let result = client.request(ECHO, payload.clone()).await;
                        assert_eq!(result.expect("echo").len(), payload.len());
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        let rate = args.requests as f64 / began.elapsed().as_secs_f64();
        println!("run {run}: {rate:.0} requests/s");
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "result requests={} depth={} size={} tls={} requests_per_sec={median:.0}",
        args.requests, args.depth, args.size, !args.plaintext
    );
    client.close();
    server.shutdown().await;
}
