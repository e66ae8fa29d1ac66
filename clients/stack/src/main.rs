//! `sessionfold-stack`: the whole system on free loopback ports, for test
//! suites written in other languages (the JavaScript SDK's Node and browser
//! tests). It starts a throw-away nats-server with JetStream and a
//! redis-server with RedisJSON through `testkit`, then `sessionfold ingest`,
//! `processor` and `api` as child processes with a run's unique stream,
//! consumer and key names; prints one JSON line with the addresses; and then
//! obeys one command per stdin line, answering each with one JSON line:
//!
//! | command        | what it does                                                  |
//! |----------------|---------------------------------------------------------------|
//! | `kill-ingest`  | SIGKILL ingest: open sockets break, frames in flight go unanswered |
//! | `start-ingest` | start ingest again on the same port and wait until it is ready |
//! | `stop-nats`    | stop nats-server (its store is kept): ingest answers `unavailable` |
//! | `start-nats`   | start nats-server again on the same port and store            |
//! | `quit`         | stop everything and exit (so does the end of stdin)           |
//!
//! The services inherit this process's environment, so a test sets ingest's
//! settings (`SESSION_FRAMES_PER_SEC`, `AUTH_REQUIRED`, `MAX_FRAME_BYTES`, …)
//! by setting them for the stack; addresses, server URLs and the run's names
//! are always the stack's own.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use sessionfold_testkit::{
    BinaryDefault, NatsServer, RedisServer, RunNames, ServiceLauncher, ServiceProcess, free_port,
    sessionfold_bin,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "sessionfold-stack",
    about = "Runs nats-server, redis-server (RedisJSON), ingest, processors and the api on free loopback ports; steered by stdin commands"
)]
struct Args {
    /// Processor replicas to run.
    #[arg(long, env = "SESSIONFOLD_STACK_PROCESSORS", default_value_t = 1)]
    processors: usize,
    /// Longest wait for each service to answer `/readyz`.
    #[arg(
        long,
        env = "SESSIONFOLD_STACK_READY_TIMEOUT_SECS",
        default_value_t = 30
    )]
    ready_timeout_secs: u64,
}

/// The running system.
struct Stack {
    nats: NatsServer,
    /// Held so that Redis lives as long as the stack.
    _redis: RedisServer,
    launcher: ServiceLauncher,
    ingest_addr: SocketAddr,
    api_addr: SocketAddr,
    ingest: Option<ServiceProcess>,
    /// Held so that the processors live as long as the stack.
    _processors: Vec<ServiceProcess>,
    _api: ServiceProcess,
    ready_timeout: Duration,
}

impl Stack {
    async fn start(args: &Args) -> Result<Self> {
        let bin = sessionfold_bin(BinaryDefault::BesideExecutable {
            how_to_build: "run `cargo build -p sessionfold` (same profile)",
        })?;
        let ready_timeout = Duration::from_secs(args.ready_timeout_secs);
        let nats = block(NatsServer::start).context("starting nats-server")?;
        let redis = block(RedisServer::start).context("starting redis-server")?;
        let names = RunNames::unique("EVENTS", "events", "sf");
        let mut env = vec![
            ("NATS_URL", nats.url()),
            ("REDIS_URL", redis.url()),
            (
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            ),
            ("LOG_FORMAT", "json".to_owned()),
        ];
        env.extend(names.stream_env());
        env.extend(names.processor_env());
        let launcher = ServiceLauncher::new(bin, "stack", env)?;

        let mut processors = Vec::new();
        for slot in 0..args.processors {
            let health = loopback();
            let env = [("PROCESSOR_LISTEN", health.to_string())];
            let name = format!("processor-{slot}");
            processors.push(launcher.spawn(&name, "processor", health, &env)?);
        }
        let api_addr = loopback();
        let mut api = launcher.spawn(
            "api",
            "api",
            api_addr,
            &[("API_LISTEN", api_addr.to_string())],
        )?;
        for processor in &mut processors {
            processor.wait_ready(ready_timeout).await?;
        }
        api.wait_ready(ready_timeout).await?;
        let mut stack = Self {
            nats,
            _redis: redis,
            launcher,
            ingest_addr: loopback(),
            api_addr,
            ingest: None,
            _processors: processors,
            _api: api,
            ready_timeout,
        };
        stack.start_ingest().await?;
        Ok(stack)
    }

    async fn start_ingest(&mut self) -> Result<()> {
        if self.ingest.is_some() {
            bail!("ingest is already running");
        }
        let env = [("INGEST_LISTEN", self.ingest_addr.to_string())];
        let ingest =
            self.ingest.insert(
                self.launcher
                    .spawn("ingest", "ingest", self.ingest_addr, &env)?,
            );
        ingest.wait_ready(self.ready_timeout).await
    }

    fn kill_ingest(&mut self) -> Result<()> {
        match self.ingest.take() {
            Some(ingest) => ingest.kill(),
            None => bail!("ingest is not running"),
        }
    }

    fn addresses(&self) -> serde_json::Value {
        json!({
            "ingest": format!("ws://{}/websocket", self.ingest_addr),
            "api": format!("http://{}", self.api_addr),
            "nats": self.nats.url(),
            "sessionfold": self.launcher.bin(),
            "logs": self.launcher.log_dir(),
        })
    }

    async fn obey(&mut self, command: &str) -> Result<()> {
        match command {
            "kill-ingest" => self.kill_ingest(),
            "start-ingest" => self.start_ingest().await,
            "stop-nats" => {
                block(|| self.nats.stop());
                Ok(())
            }
            "start-nats" => block(|| self.nats.restart()),
            other => bail!("unknown command {other:?}"),
        }
    }
}

/// A free address on 127.0.0.1.
fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Runs a blocking server operation (start, stop, readiness polls) without
/// stalling the runtime's other worker.
fn block<T>(operation: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(operation)
}

/// One line on stdout; a reader that went away is no error worth a panic.
fn say(line: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut stack = Stack::start(&args).await?;
    say(stack.addresses());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line?,
            // SIGTERM and Ctrl-C stop the servers too, like `quit`.
            _ = terminate.recv() => None,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else { break };
        let command = line.trim();
        if command.is_empty() {
            continue;
        }
        if command == "quit" {
            break;
        }
        match stack.obey(command).await {
            Ok(()) => say(json!({"ok": true, "command": command})),
            Err(err) => say(json!({"ok": false, "command": command, "error": format!("{err:#}")})),
        }
    }
    // Dropping the stack kills the services, then both servers.
    drop(stack);
    say(json!({"ok": true, "command": "quit"}));
    Ok(())
}
