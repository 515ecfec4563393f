//! The `pushwire` command-line tool: a server (`serve`), client commands (`sub`, `pub`,
//! `send`, `call`, `groups`), the tutorial `demo`, `bench`, `hash-password` and
//! `protocol`.
//!
//! The binary (`src/bin/pushwire.rs`) only parses the command line with [`Cli`] and
//! hands it to [`run`]; everything else lives here so it can be unit-tested.
//!
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | any other failure (a server error answering a call, a refused push, a port in use …) |
//! | 2 | usage: bad flags (clap), or a configuration `serve` cannot start with |
//! | 3 | connection or TLS failure, including an untrusted server certificate |
//! | 4 | the server refused the user id and password |
//! | 5 | timed out |

pub mod bench;
mod client;
mod demo;
mod output;
mod serve;
pub mod users;

pub use client::{
    CallArgs, ClientArgs, GroupsArgs, Method, PubArgs, SendArgs, ServerAddress, SubArgs,
};
pub use output::{describe_event, describe_sender, event_json};
pub use serve::{ServeArgs, ServeConfig};

use crate::client::ConnectError;
use clap::{Args, Parser, Subcommand};
use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// The password the development setup uses everywhere: the tutorial's `MyPassword`.
pub const DEVELOPMENT_PASSWORD: &str = "MyPassword";

/// The password of the development server key `certs/server.key.pem`.
pub const DEVELOPMENT_KEY_PASSWORD: &str = "mypassword";

/// A file of the development certificates in `certs/`, located through the crate's
/// source directory at compile time, so the tool finds them from any working
/// directory of a source checkout. (An installed binary may not have them: callers
/// check that the file exists.)
pub fn development_file(name: &str) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // `certs/` sits next to the crate, at the workspace root.
    crate_dir
        .parent()
        .unwrap_or(crate_dir)
        .join("certs")
        .join(name)
}

/// pushwire: secure RPC with built-in message push (SocketPro's secure-push tutorial,
/// in Rust).
#[derive(Debug, Parser)]
#[command(name = "pushwire", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES_HELP: &str = "Exit codes: 0 success, 1 other failure, 2 usage or configuration, \
3 connection or TLS failure (including an untrusted server), 4 authentication refused, \
5 timed out.";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (TLS with the development certificates unless told otherwise)
    /// until Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Subscribe to chat groups and print events (publications, user messages,
    /// presence, notices).
    Sub(SubArgs),
    /// Publish a message to chat groups.
    Pub(PubArgs),
    /// Send a message to every connection of one user.
    Send(SendArgs),
    /// Call a method of the hello-world service.
    Call(CallArgs),
    /// List the server's chat groups.
    Groups(GroupsArgs),
    /// Hash a password for a `--users` file.
    HashPassword(HashPasswordArgs),
    /// Run the tutorial in one process: a TLS server on a loopback port and three
    /// clients (alice, bob, carol) subscribing, publishing, batching and messaging,
    /// with the event log every client sees.
    Demo,
    /// Print the protocol version and every message type.
    Protocol,
    /// Measure publish rate, delivery rate and publish-to-deliver latency with P
    /// publishers and S subscribers, against an in-process server or --server.
    Bench(bench::BenchArgs),
}

/// Arguments of `pushwire hash-password`.
#[derive(Debug, Args)]
pub struct HashPasswordArgs {
    /// The password; read from standard input (one line) when omitted, which keeps it
    /// out of the shell history and the process list.
    #[arg(long)]
    pub password: Option<String>,
}

/// How the tool ends, as a process exit code (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0.
    Success,
    /// 1: a failure with no more specific code.
    Failure,
    /// 2: bad usage or configuration.
    Usage,
    /// 3: the connection or TLS failed.
    Connection,
    /// 4: authentication refused.
    Refused,
    /// 5: timed out.
    TimedOut,
}

impl Exit {
    /// The numeric exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Connection => 3,
            Exit::Refused => 4,
            Exit::TimedOut => 5,
        }
    }
}

/// A failure of a command: the exit code and a one-line message for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// How the process ends.
    pub exit: Exit,
    /// What went wrong, on one line.
    pub message: String,
}

impl CliError {
    /// A failure with this exit code.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        let message: String = message.into();
        // Server-supplied texts may hold line breaks; the contract is one line.
        let message = message.replace(['\n', '\r'], " ");
        Self { exit, message }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<ConnectError> for CliError {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::Untrusted(info) => {
                let why = match &info.verdict {
                    pushwire_engine::tls::Verdict::Verified => {
                        "rejected by the server-authentication check".to_owned()
                    }
                    pushwire_engine::tls::Verdict::Failed(e) => e.to_string(),
                };
                let subject = info
                    .certificate()
                    .map(|c| format!(" (subject {})", c.subject))
                    .unwrap_or_default();
                CliError::new(
                    Exit::Connection,
                    format!(
                        "the server's certificate{subject} is not trusted: {why}; no credentials \
                         were sent (use --ca FILE with the CA that signed it)"
                    ),
                )
            }
            ConnectError::Refused { code, reason } => CliError::new(
                Exit::Refused,
                format!("the server refused the login ({code:?}): {reason}"),
            ),
            ConnectError::Timeout => CliError::new(Exit::TimedOut, "timed out connecting"),
            // Io, Credentials, TlsConfig, Client (settings the engine refuses) and Closed.
            other => CliError::new(Exit::Connection, other.to_string()),
        }
    }
}

/// Runs a parsed command line to completion and returns how the process should exit.
/// Failures are printed to stderr as `pushwire: error: …`.
pub fn run(cli: Cli) -> Exit {
    let result = match cli.command {
        Command::Protocol => {
            print!("{}", crate::protocol_catalogue());
            Ok(())
        }
        Command::HashPassword(args) => hash_password(args),
        command => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(run_async(command)),
            Err(e) => Err(CliError::new(
                Exit::Failure,
                format!("cannot start the runtime: {e}"),
            )),
        },
    };
    match result {
        Ok(()) => Exit::Success,
        Err(e) => {
            eprintln!("pushwire: error: {e}");
            e.exit
        }
    }
}

async fn run_async(command: Command) -> Result<(), CliError> {
    match command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Sub(args) => client::sub(args).await,
        Command::Pub(args) => client::publish(args).await,
        Command::Send(args) => client::send(args).await,
        Command::Call(args) => client::call(args).await,
        Command::Groups(args) => client::groups(args).await,
        Command::Demo => demo::run().await,
        Command::Bench(args) => bench::run(args).await,
        Command::Protocol | Command::HashPassword(_) => unreachable!("handled without a runtime"),
    }
}

fn hash_password(args: HashPasswordArgs) -> Result<(), CliError> {
    let password = match args.password {
        Some(password) => password,
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                // No terminal-echo control without another dependency: say so.
                eprint!("password (shown as you type): ");
                let _ = std::io::stderr().flush();
            }
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .map_err(|e| CliError::new(Exit::Failure, format!("cannot read stdin: {e}")))?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
    };
    if password.is_empty() {
        return Err(CliError::new(Exit::Usage, "the password is empty"));
    }
    let hash = users::PasswordHash::new(password.as_bytes())
        .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
    println!("{hash}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connect_errors_map_to_the_documented_exit_codes() {
        let refused = ConnectError::Refused {
            code: pushwire_protocol::RefuseCode::BadCredentials,
            reason: "unknown user or wrong password".into(),
        };
        assert_eq!(CliError::from(refused).exit.code(), 4);
        assert_eq!(CliError::from(ConnectError::Timeout).exit.code(), 5);
        let io = ConnectError::Io {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let error = CliError::from(io);
        assert_eq!(error.exit.code(), 3);
        assert!(error.message.contains("127.0.0.1:1"), "{error}");
    }

    #[test]
    fn messages_stay_on_one_line() {
        let error = CliError::new(Exit::Failure, "first\nsecond\r\nthird");
        assert_eq!(error.message, "first second  third");
    }
}
