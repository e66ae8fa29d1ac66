//! A throw-away `redis-server` with the RedisJSON module loaded.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::nats::{is_addr_in_use, keep_dir_if_asked};
use crate::net::{self, Resp};
use crate::process::{ManagedProcess, Probe, locate};
use crate::util::free_port;

const PORT_ATTEMPTS: usize = 5;

/// A real `redis-server` with RedisJSON, on `127.0.0.1:<free port>`, data dir
/// in a fresh temp dir, `appendonly yes`, `appendfsync always`, `save ""`
/// (so data written before a stop/kill survives `restart`). Killed on drop.
pub struct RedisServer {
    proc: ManagedProcess,
    port: u16,
    data_dir: PathBuf,
    dir: Option<TempDir>,
}

impl RedisServer {
    /// Starts the server and waits until it answers (and is not loading).
    pub fn start() -> Result<Self> {
        Self::start_with_args(&[])
    }

    /// Like [`start`](Self::start), appending `extra` redis-server arguments
    /// (e.g. `["--aclfile", path]`); later arguments override earlier ones.
    ///
    /// If `extra` enables auth for the default user, readiness only means
    /// "answers with -NOAUTH" (the loading state cannot be checked).
    pub fn start_with_args(extra: &[&str]) -> Result<Self> {
        let redis_bin = locate(
            "SESSIONFOLD_REDIS_SERVER",
            "bin/redis-server",
            "redis-server binary",
        )?;
        let rejson = locate(
            "SESSIONFOLD_REJSON",
            "lib/rejson.so",
            "RedisJSON module (rejson.so)",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("sessionfold-redis-")
            .tempdir()
            .context("creating temp dir for redis-server")?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        let log_path = dir.path().join("redis-server.log");

        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &data_dir.display().to_string(),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "notice",
                "--enable-debug-command",
                "local",
                "--loadmodule",
                &rejson.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let proc = ManagedProcess::new(
                "redis-server",
                redis_bin.clone(),
                args,
                dir.path().to_path_buf(),
                log_path.clone(),
            );
            let mut server = Self {
                proc,
                port,
                data_dir: data_dir.clone(),
                dir: None,
            };
            match server.spawn_and_wait() {
                Ok(()) => {
                    server.dir = Some(dir);
                    tracing::debug!(url = %server.url(), "redis-server ready");
                    return Ok(server);
                }
                Err(e) if is_addr_in_use(&e) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let port = self.port;
        self.proc.spawn_and_wait(|pid| probe(port, pid))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Redis `dir` (AOF lives here; kept across stop/kill/restart).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Server stdout/stderr (appended across restarts).
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// Pid of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// SIGTERM (graceful shutdown; AOF is fsynced), wait, SIGKILL after 5 s.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// SIGKILL; data written before is still in the AOF (`appendfsync always`).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts again on the same port, same args and data dir; waits until
    /// ready (polls through `-LOADING`). Stops the server first if running.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop();
        self.spawn_and_wait()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.proc.kill();
        keep_dir_if_asked(&mut self.dir, "redis-server");
    }
}

/// Ready when `INFO server persistence` answers from *our* pid with `loading:0`
/// (or with -NOAUTH when auth is configured).
fn probe(port: u16, pid: u32) -> Probe {
    match net::resp_command(port, &["INFO", "server", "persistence"]) {
        Ok(Resp::Bulk(info)) => {
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
            };
            if let Some(theirs) = field("process_id")
                && theirs != pid.to_string()
            {
                return Probe::NotReady(format!(
                    "port answered by another redis (pid {theirs}, ours {pid})"
                ));
            }
            match field("loading") {
                Some("0") => Probe::Ready,
                other => Probe::NotReady(format!("loading:{other:?}")),
            }
        }
        Ok(Resp::Error(e)) if e.starts_with("NOAUTH") => Probe::Ready,
        Ok(Resp::Error(e)) => Probe::NotReady(e),
        Ok(Resp::Simple(s)) => Probe::NotReady(format!("unexpected +{s}")),
        Err(e) => Probe::NotReady(format!("{e:#}")),
    }
}
