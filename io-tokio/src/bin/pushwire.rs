//! The `pushwire` command-line tool; see [`pushwire_tokio::cli`].

use clap::Parser;
use pushwire_tokio::cli::{run, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(run(Cli::parse()).code())
}
