//! Server memory per idle, authenticated TLS connection (`--plaintext`: without TLS,
//! for comparison).
//!
//! This process runs the pushwire server (TLS with the development certificate, the
//! development login) and nothing else; the clients run in a second process (this
//! binary again, `idle_memory clients`), so their memory and file descriptors do not
//! count. The clients connect in two steps, first `--first` connections then the rest
//! up to `--connections`; after each step, once the server counts them all and they
//! have been idle for `--settle` seconds, the server's resident set (`VmRSS` from
//! `/proc/self/status`) and its live heap bytes (a counting global allocator) are
//! read. The per-connection figure is the growth between the two steps divided by the
//! connections added, which leaves out fixed costs and warm-up; the growth from the
//! empty server is printed too.
//!
//! 10,000 connections need about 10,050 file descriptors in each process: raise the
//! limit first if `ulimit -n` is lower (`ulimit -n 20000`).
//!
//! ```sh
//! cargo build --release -p pushwire-benches --bin idle_memory
//! target/release/idle_memory --connections 10000
//! ```

use clap::{Parser, Subcommand};
use pushwire_benches::cert_file;
use pushwire_tokio::cli::bench::start_server;
use pushwire_tokio::client::{Client, ConnectionContext, Trust};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Counts live heap bytes; everything else is the system allocator's.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the
// counter has no effect on the allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Measure the pushwire server's memory per idle authenticated TLS connection.
#[derive(Debug, Parser)]
#[command(name = "idle_memory")]
struct Args {
    /// Connections in all.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections of the first step (the baseline of the per-connection figure).
    #[arg(long, default_value_t = 1_000)]
    first: usize,
    /// Seconds to wait, once every connection is in, before reading the memory.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Plaintext connections instead of TLS (to see what TLS itself costs).
    #[arg(long, global = true)]
    plaintext: bool,
    /// Internal: the client process.
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Open connections to PORT as told on stdin (`open N` lines), answer `opened N`,
    /// and keep them until stdin closes.
    Clients {
        /// The server's port on 127.0.0.1.
        #[arg(long)]
        port: u16,
    },
}

/// The resident set of this process, in bytes.
fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn live_heap() -> i64 {
    LIVE.load(Ordering::Relaxed) as i64
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    connections: usize,
    rss: u64,
    heap: i64,
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

async fn server_side(args: &Args) -> Result<(), String> {
    let server = start_server(args.plaintext, 1)
        .await
        .map_err(|e| e.to_string())?;
    let port = server.local_addr().ok_or("no address")?.port();
    let handle = server.handle();
    let mut child = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["clients", "--port", &port.to_string()])
        .args(args.plaintext.then_some("--plaintext"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the client process: {e}"))?;
    let mut to_child = child.stdin.take().ok_or("no stdin")?;
    let mut from_child = BufReader::new(child.stdout.take().ok_or("no stdout")?);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let empty = Sample {
        connections: 0,
        rss: vm_rss(),
        heap: live_heap(),
    };
    let mut samples = vec![empty];
    let mut total = 0;
    for step in [args.first.min(args.connections), args.connections] {
        let add = step - total;
        writeln!(to_child, "open {add}").map_err(|e| e.to_string())?;
        to_child.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        // The child answers once its connections are ready (or it failed).
        tokio::task::block_in_place(|| from_child.read_line(&mut line))
            .map_err(|e| e.to_string())?;
        if !line.starts_with("opened") {
            return Err(format!("the client process failed: {line:?}"));
        }
        total = step;
        let deadline = Instant::now() + Duration::from_secs(120);
        while handle.connection_count() < total {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {total} connections authenticated",
                    handle.connection_count()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let sample = Sample {
            connections: total,
            rss: vm_rss(),
            heap: live_heap(),
        };
        println!(
            "{:>6} idle {} connections: VmRSS {:.1} MiB, live heap {:.1} MiB",
            sample.connections,
            if args.plaintext { "plaintext" } else { "TLS" },
            sample.rss as f64 / (1024.0 * 1024.0),
            sample.heap as f64 / (1024.0 * 1024.0)
        );
        samples.push(sample);
    }
    drop(to_child);
    let _ = child.wait();

    let [empty, first, last] = samples[..] else {
        return Err("missing samples".into());
    };
    let added = (last.connections - first.connections).max(1) as f64;
    println!(
        "per connection, {} -> {} connections: VmRSS {}, live heap {}",
        first.connections,
        last.connections,
        kib((last.rss as f64 - first.rss as f64) / added),
        kib((last.heap - first.heap) as f64 / added)
    );
    println!(
        "per connection, 0 -> {} connections:  VmRSS {}, live heap {}",
        last.connections,
        kib((last.rss as f64 - empty.rss as f64) / last.connections as f64),
        kib((last.heap - empty.heap) as f64 / last.connections as f64)
    );
    println!(
        "result connections={} rss_per_conn={:.0} heap_per_conn={:.0}",
        last.connections,
        (last.rss as f64 - first.rss as f64) / added,
        (last.heap - first.heap) as f64 / added
    );
    server.shutdown().await;
    Ok(())
}

async fn client_side(port: u16, plaintext: bool) -> Result<(), String> {
    let mut clients: Vec<Client> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    // Handshakes in parallel, but not 10,000 at once: the accept queue is finite.
    let permits = Arc::new(Semaphore::new(64));
    while let Some(line) = tokio::task::block_in_place(|| lines.next()) {
        let line = line.map_err(|e| e.to_string())?;
        let Some(count) = line
            .strip_prefix("open ")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let permits = permits.clone();
            let user = format!("idle-{}", clients.len() + i);
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let mut context = ConnectionContext::new("127.0.0.1", port, user, "MyPassword");
                context.trust = if plaintext {
                    Trust::Plaintext
                } else {
                    Trust::CaFiles(vec![cert_file("ca.cert.pem")])
                };
                context.connect_timeout = Duration::from_secs(60);
                let (client, events) = Client::connect(context).await?;
                // Nothing will arrive on an idle connection; nobody reads events.
                drop(events);
                Ok::<_, pushwire_tokio::client::ConnectError>(client)
            }));
        }
        for task in tasks {
            let client = task
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            clients.push(client);
        }
        println!("opened {}", clients.len());
        std::io::stdout().flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("idle_memory: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match &args.role {
        Some(Role::Clients { port }) => runtime.block_on(client_side(*port, args.plaintext)),
        None => runtime.block_on(server_side(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle_memory: error: {e}");
            ExitCode::FAILURE
        }
    }
}
