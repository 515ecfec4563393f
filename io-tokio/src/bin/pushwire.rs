//! The `pushwire` command-line tool.

use clap::{Parser, Subcommand};

/// pushwire: secure RPC with built-in message push.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the tutorial demo. Until the server and client land, it prints the protocol
    /// version and the message catalogue.
    Demo,
    /// Print the protocol version and every message type.
    Protocol,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => {
            println!("pushwire demo: the server and client are not built yet;");
            println!("this is the wire protocol they will speak.\n");
            print!("{}", pushwire_tokio::protocol_catalogue());
        }
        Command::Protocol => print!("{}", pushwire_tokio::protocol_catalogue()),
    }
}
