//! A child server process with its log file, process group and lifecycle
//! (spawn / graceful stop / kill / readiness polling), shared by the NATS and
//! Redis wrappers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Poll interval for readiness / shutdown polling.
pub(crate) const POLL: Duration = Duration::from_millis(20);
/// How long `stop()` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Default readiness deadline; `SESSIONFOLD_SERVER_START_TIMEOUT_SECS` overrides.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn start_timeout() -> Duration {
    std::env::var("SESSIONFOLD_SERVER_START_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_START_TIMEOUT)
}

/// Workspace root: the parent of this crate's manifest dir.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Finds an external artifact: `$env_var` if set, else `<workspace>/.deps/<rel>`.
pub(crate) fn locate(env_var: &str, rel: &str, what: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "{env_var}={} does not point to an existing {what} file",
                p.display()
            );
        }
        return Ok(p);
    }
    let p = workspace_root().join(".deps").join(rel);
    if p.is_file() {
        return Ok(p);
    }
    bail!(
        "{what} not found at {} (and {env_var} is not set); run `scripts/bootstrap.sh` (or `make deps`) \
         in the workspace root to install it",
        p.display()
    )
}

/// Last `lines` lines of a file (best effort; for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)));
        let _ = f.read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Readiness probe result.
pub(crate) enum Probe {
    Ready,
    /// Not ready yet; the string describes what was observed.
    NotReady(String),
}

pub(crate) struct ManagedProcess {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl ManagedProcess {
    pub(crate) fn new(
        name: &'static str,
        program: PathBuf,
        args: Vec<String>,
        cwd: PathBuf,
        log_path: PathBuf,
    ) -> Self {
        Self {
            name,
            program,
            args,
            cwd,
            log_path,
            child: None,
        }
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Spawns the process in its own process group, appending its
    /// stdout/stderr to the log file, then polls `probe` until ready.
    /// `probe` gets the child's pid.
    pub(crate) fn spawn_and_wait(&mut self, mut probe: impl FnMut(u32) -> Probe) -> Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.name);
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening log file {}", self.log_path.display()))?;
        let _ = writeln!(
            log,
            "==== sessionfold-testkit: starting {} {:?} ====",
            self.program.display(),
            self.args
        );
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {} ({})", self.name, self.program.display()))?;
        let pid = child.id();
        tracing::debug!(server = self.name, pid, "spawned");
        self.child = Some(child);

        let timeout = start_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                bail!(
                    "{} exited during startup ({status}); last log lines of {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    log_tail(&self.log_path, 40)
                );
            }
            let last = match probe(pid) {
                Probe::Ready => {
                    // A foreign process could have answered on the port while ours
                    // was still failing to bind; make sure ours is still alive.
                    if let Some(status) = self.try_wait() {
                        bail!(
                            "{} exited during startup ({status}); last log lines of {}:\n{}",
                            self.name,
                            self.log_path.display(),
                            log_tail(&self.log_path, 40)
                        );
                    }
                    return Ok(());
                }
                Probe::NotReady(why) => why,
            };
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "{} not ready after {timeout:?} (last probe: {last}); last log lines of {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    log_tail(&self.log_path, 40)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            Ok(None) => None,
            Err(_) => None,
        }
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.try_wait();
        self.child.is_some()
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL the whole process group.
    pub(crate) fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    self.child = None;
                    return;
                }
                Ok(None) => std::thread::sleep(POLL),
            }
        }
        tracing::warn!(
            server = self.name,
            "did not stop within {STOP_GRACE:?}; killing"
        );
        self.kill();
    }

    /// SIGKILL the process group and reap the child.
    pub(crate) fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The child is the group leader (process_group(0)), so pgid == pid.
        // The child is not reaped yet, so the group id cannot have been reused.
        let pgid = Pid::from_raw(child.id() as i32);
        if killpg(pgid, Signal::SIGKILL).is_err() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
