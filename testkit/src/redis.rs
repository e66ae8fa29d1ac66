//! A throw-away Redis-compatible server (Valkey 9 by default) with RedisJSON
//! and, when installed, the query engine loaded; on-disk snapshots of its data
//! and restarts from them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::nats::{is_addr_in_use, keep_dir_if_asked};
use crate::net::{self, Resp};
use crate::process::{ManagedProcess, Probe, locate, workspace_root};
use crate::util::free_port;

const PORT_ATTEMPTS: usize = 5;
/// The cluster's node table belongs to the node's present, not to its data:
/// a snapshot neither takes nor restores it.
const NODES_CONF: &str = "nodes.conf";

/// The Redis settings sessionfold ships (`deploy/redis/sessionfold.conf`).
pub const SESSIONFOLD_CONF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/redis/sessionfold.conf"
);

/// How to start a [`RedisServer`]; `Default` is what [`RedisServer::start`] does.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// The server binary; default `SESSIONFOLD_REDIS_SERVER`, else
    /// `.deps/bin/redis-server` (Valkey, see `scripts/bootstrap.sh`).
    pub server: Option<PathBuf>,
    /// Where the AOF lives; default a `data/` dir in the server's temp dir.
    /// Created if missing. Used for a data dir on a test filesystem.
    pub data_dir: Option<PathBuf>,
    /// Load the query engine (`redisearch.so`); `None`: as
    /// `SESSIONFOLD_REDISEARCH` says (see [`search_module`]).
    pub search: Option<bool>,
    /// More server arguments, after the defaults (so they override them),
    /// e.g. `["--appendfsync", "everysec"]` or `["--aclfile", path]`.
    pub extra_args: Vec<String>,
}

impl RedisOptions {
    pub fn with_args(extra: &[&str]) -> Self {
        Self {
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ..Self::default()
        }
    }
}

/// A real Redis-compatible server with RedisJSON, on `127.0.0.1:<free port>`,
/// data dir in a fresh temp dir, `appendonly yes`, `appendfsync always`,
/// `save ""` (so data written before a stop/kill survives `restart`), and the
/// shipped `deploy/redis/sessionfold.conf` included. Killed on drop.
pub struct RedisServer {
    proc: ManagedProcess,
    port: u16,
    data_dir: PathBuf,
    snapshots_taken: usize,
    dir: Option<TempDir>,
}

/// A copy of a [`RedisServer`]'s data files (AOF dir, RDB) taken at one
/// moment by [`RedisServer::snapshot`]; [`RedisServer::restart_from`] puts the
/// server back on it. Lives in the server's temp dir.
#[derive(Clone, Debug)]
pub struct RedisSnapshot {
    path: PathBuf,
}

impl RedisSnapshot {
    /// The directory holding the copied files.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The query engine module to load, or `None`.
///
/// `SESSIONFOLD_REDISEARCH` unset: `.deps/lib/redisearch.so` when it exists;
/// `0`, `false`, `off`, `no` or empty: none; `1`, `true`, `on`, `yes`: the
/// `.deps` module, which must exist; anything else: a path to the module.
pub fn search_module() -> Result<Option<PathBuf>> {
    let default = workspace_root().join(".deps/lib/redisearch.so");
    match std::env::var("SESSIONFOLD_REDISEARCH") {
        Err(_) => Ok(default.is_file().then_some(default)),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "false" | "off" | "no" => Ok(None),
            "1" | "true" | "on" | "yes" => {
                if !default.is_file() {
                    bail!(
                        "SESSIONFOLD_REDISEARCH={v} but {} is missing; run scripts/bootstrap.sh",
                        default.display()
                    );
                }
                Ok(Some(default))
            }
            _ => {
                let p = PathBuf::from(v.trim());
                if !p.is_file() {
                    bail!("SESSIONFOLD_REDISEARCH={} is not a file", p.display());
                }
                Ok(Some(p))
            }
        },
    }
}

/// The shipped Redis users (`deploy/redis/users.acl`).
pub const USERS_ACL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/redis/users.acl");

/// The shipped Redis users for a server with the query engine (`search`)
/// or without it. Redis refuses a whole ACL file that names a command it
/// does not know, so without the query engine this is a copy of
/// [`USERS_ACL`] without its `+ft.…` rules, as deploy/redis/README.md tells
/// operators to make.
pub fn users_acl(search: bool) -> Result<PathBuf> {
    let shipped = PathBuf::from(USERS_ACL);
    if search {
        return Ok(shipped);
    }
    let text = std::fs::read_to_string(&shipped)
        .with_context(|| format!("reading {}", shipped.display()))?;
    let stripped: Vec<String> = text
        .lines()
        .map(|line| {
            line.split(' ')
                .filter(|rule| !rule.to_ascii_lowercase().starts_with("+ft."))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let path = std::env::temp_dir().join(format!(
        "sessionfold-users-without-search-{}.acl",
        std::process::id()
    ));
    std::fs::write(&path, stripped.join("\n") + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl RedisServer {
    /// Starts the server and waits until it answers (and is not loading).
    pub fn start() -> Result<Self> {
        Self::start_with(RedisOptions::default())
    }

    /// Like [`start`](Self::start), appending `extra` server arguments
    /// (e.g. `["--aclfile", path]`); later arguments override earlier ones.
    ///
    /// If `extra` enables auth for the default user, readiness only means
    /// "answers with -NOAUTH" (the loading state cannot be checked).
    pub fn start_with_args(extra: &[&str]) -> Result<Self> {
        Self::start_with(RedisOptions::with_args(extra))
    }

    /// Starts a server as `options` say.
    pub fn start_with(options: RedisOptions) -> Result<Self> {
        let redis_bin = match options.server {
            Some(p) => p,
            None => locate(
                "SESSIONFOLD_REDIS_SERVER",
                "bin/redis-server",
                "redis-server binary",
            )?,
        };
        let rejson = locate(
            "SESSIONFOLD_REJSON",
            "lib/rejson.so",
            "RedisJSON module (rejson.so)",
        )?;
        let search = match options.search {
            Some(false) => None,
            Some(true) => Some(
                search_module()?
                    .unwrap_or_else(|| workspace_root().join(".deps/lib/redisearch.so")),
            ),
            None => search_module()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("sessionfold-redis-")
            .tempdir()
            .context("creating temp dir for redis-server")?;
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
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
                // The shipped limits (client output buffers), as deployed.
                "--include",
                SESSIONFOLD_CONF,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(search) = &search {
                args.push("--loadmodule".into());
                args.push(search.display().to_string());
            }
            args.extend(options.extra_args.iter().cloned());
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
                snapshots_taken: 0,
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

    /// Copies the data files as they are on disk now (the AOF dir and any
    /// RDB; not `nodes.conf`), while the server keeps running.
    ///
    /// With `appendfsync always` every write acknowledged before this call is
    /// in the copy, and the copy is a prefix of the server's history: what
    /// a restore from a backup, a power cut that lost the `everysec` window,
    /// or a replica promoted before it caught up leaves behind. The AOF's
    /// last command may be cut in the copy; the server drops it on load
    /// (`aof-load-truncated yes`, the default). A copy that raced an AOF
    /// rewrite (the manifest changed meanwhile) is taken again.
    pub fn snapshot(&mut self) -> Result<RedisSnapshot> {
        let root = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .context("server has no temp dir")?;
        self.snapshots_taken += 1;
        let path = root.join(format!("snapshot-{}", self.snapshots_taken));
        for _attempt in 0..20 {
            if path.exists() {
                std::fs::remove_dir_all(&path)?;
            }
            let before = manifest_of(&self.data_dir);
            copy_data(&self.data_dir, &path)?;
            if manifest_of(&self.data_dir) == before {
                tracing::debug!(snapshot = %path.display(), "redis data copied");
                return Ok(RedisSnapshot { path });
            }
            std::thread::sleep(crate::process::POLL);
        }
        bail!("the AOF manifest kept changing while it was copied")
    }

    /// SIGKILLs the server, replaces its data files (not `nodes.conf`) with
    /// `snapshot`'s, and starts it again on the same port: the server comes
    /// back with the data it had when the snapshot was taken.
    pub fn restart_from(&mut self, snapshot: &RedisSnapshot) -> Result<()> {
        self.proc.kill();
        for entry in std::fs::read_dir(&self.data_dir)? {
            let entry = entry?;
            if entry.file_name() == NODES_CONF {
                continue;
            }
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("removing {}", p.display()))?;
        }
        copy_data(&snapshot.path, &self.data_dir)?;
        self.spawn_and_wait()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.proc.kill();
        keep_dir_if_asked(&mut self.dir, "redis-server");
    }
}

/// The AOF manifest's text (`""` when there is none).
fn manifest_of(data_dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return String::new();
    };
    let mut out = String::new();
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            for file in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if file.file_name().to_string_lossy().ends_with(".manifest") {
                    out.push_str(&std::fs::read_to_string(file.path()).unwrap_or_default());
                }
            }
        }
    }
    out
}

/// Copies the files and one level of directories under `from` (Redis's data
/// dir: `appendonlydir/`, `dump.rdb`) into `to`, leaving out `nodes.conf`
/// and temp files.
fn copy_data(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let lossy = name.to_string_lossy();
        if name == NODES_CONF || lossy.starts_with("temp-") {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            for file in std::fs::read_dir(entry.path())? {
                let file = file?;
                if file.file_type()?.is_file() {
                    copy_file(&file.path(), &target.join(file.file_name()))?;
                }
            }
        } else if entry.file_type()?.is_file() {
            copy_file(&entry.path(), &target)?;
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    match std::fs::copy(from, to) {
        Ok(_) => Ok(()),
        // Removed by the server between listing and copying (a rewrite's
        // old file); the manifest check notices and the copy is taken again.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("copying {}", from.display())),
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
