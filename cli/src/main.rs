//! The `sessionfold` command: runs the services (each alone, or all in one
//! process for development) and, for users, talks to a running system. It is
//! only the binary: the services, the producer client and the domain are
//! libraries it uses.
//!
//! - [`dev`]: the all-in-one mode: ingest, processor and api in one process,
//!   `/websocket` and `/data` on one listener (default `:8080`).
//! - [`send`]: `send` (files of events to a session), `get` and `tail` (a
//!   document), over [`sessionfold_client`].
//! - [`token`]: issuing signed session tokens.
//! - [`dead_letters`]: listing and replaying messages that could not be applied.
//! - [`sessions`]: following finished sessions.
//! - [`rebuild`]: rebuilding every document from the stream into a fresh
//!   key prefix through a temporary durable consumer.

mod dead_letters;
mod dev;
mod rebuild;
mod send;
mod sessions;
mod token;

use clap::{Parser, Subcommand};
use sessionfold_common::{shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "sessionfold",
    version,
    about = "Session events over WebSockets, folded into one JSON document per session"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up and then taken apart: the size of the largest
// settings variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Ingest, processor and api in one process, `/websocket` and `/data` on one port.
    Dev(crate::dev::DevConfig),
    /// The ingest service alone.
    Ingest(sessionfold_ingest::Config),
    /// The processor service alone.
    Processor(sessionfold_processor::Config),
    /// The api service alone.
    Api(sessionfold_api::Config),
    /// List or replay dead letters.
    DeadLetters(crate::dead_letters::DeadLetterArgs),
    /// Send events from JSON-array or NDJSON files to a session, waiting for every ack.
    Send(crate::send::SendArgs),
    /// Print a session's document.
    Get(crate::send::ReadArgs),
    /// Follow a session: print its document each time it changes.
    Tail(crate::send::ReadArgs),
    /// Issue a signed token that opens a session (or a prefix) for writing or reading.
    Token(crate::token::TokenArgs),
    /// Rebuild every document from the stream into a fresh key prefix.
    Rebuild(crate::rebuild::RebuildArgs),
    /// Follow finished sessions, as downstream consumers get them.
    Sessions(crate::sessions::SessionsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    if matches!(
        command,
        Command::DeadLetters(_)
            | Command::Rebuild(_)
            | Command::Token(_)
            | Command::Send(_)
            | Command::Get(_)
            | Command::Tail(_)
            | Command::Sessions(_)
    ) {
        telemetry::init_for_tool();
    } else {
        telemetry::init();
    }
    let shutdown = shutdown::token_on_signal();
    match command {
        Command::Dev(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            crate::dev::serve(config, listener, shutdown).await
        }
        Command::Ingest(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            sessionfold_ingest::serve(config, listener, shutdown).await
        }
        Command::Processor(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            sessionfold_processor::serve(config, listener, shutdown).await
        }
        Command::DeadLetters(args) => crate::dead_letters::run(args).await,
        Command::Token(args) => crate::token::run(args),
        Command::Send(args) => crate::send::run(args).await,
        Command::Get(args) => crate::send::get(args).await,
        Command::Tail(args) => crate::send::tail(args).await,
        Command::Rebuild(args) => crate::rebuild::run(args).await,
        Command::Sessions(args) => crate::sessions::run(args).await,
        Command::Api(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            sessionfold_api::serve(config, listener, shutdown).await
        }
    }
}
