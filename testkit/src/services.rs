//! sessionfold's own services (`sessionfold ingest`, `processor`, `api`) as
//! child processes of the `sessionfold` binary, for the harnesses that run
//! the whole system: where the binary is, the names a run uses, and the
//! processes with their logs.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::process::log_tail;
use crate::util::unique_name;

/// How often [`ServiceProcess::wait_ready`] asks `/readyz`.
const READY_POLL: Duration = Duration::from_millis(25);
/// Log lines shown when a service fails to start.
const FAILURE_LOG_LINES: usize = 30;

/// Where the `sessionfold` binary is when `SESSIONFOLD_BIN` does not say.
///
/// `CARGO_BIN_EXE_sessionfold` exists only in the tests of the package that
/// owns the binary (`sessionfold`, in `cli/`), so other packages find it
/// themselves.
#[derive(Debug, Clone, Copy)]
pub enum BinaryDefault {
    /// `target/<profile>/sessionfold`, next to the `deps/` directory holding
    /// the running test executable: the binary of the same profile. `cargo
    /// test` of another package alone does not build it; a binary older than
    /// the service libraries in `target/<profile>/deps` is reported as
    /// possibly stale.
    SameProfileAsTest,
    /// Next to the running executable (`target/release/sessionfold` beside
    /// `target/release/sessionfold-bench`); `how_to_build` goes into the
    /// error when it is missing.
    BesideExecutable { how_to_build: &'static str },
}

/// The `sessionfold` binary to run the services from: `SESSIONFOLD_BIN`
/// when set (any build, any place), else where `default` says.
pub fn sessionfold_bin(default: BinaryDefault) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SESSIONFOLD_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("SESSIONFOLD_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let binary_name = format!("sessionfold{}", std::env::consts::EXE_SUFFIX);
    match default {
        BinaryDefault::SameProfileAsTest => {
            // target/<profile>/deps/<test executable>
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .context("the test executable is not in target/<profile>/deps")?;
            let path = profile_dir.join(binary_name);
            if !path.is_file() {
                bail!(
                    "{} does not exist: run `cargo build -p sessionfold` (same profile) first, \
                     or point SESSIONFOLD_BIN at a sessionfold binary",
                    path.display()
                );
            }
            warn_if_stale(&path, profile_dir);
            Ok(path)
        }
        BinaryDefault::BesideExecutable { how_to_build } => {
            let path = exe
                .parent()
                .context("the running executable has no directory")?
                .join(binary_name);
            if !path.is_file() {
                bail!(
                    "{} does not exist: {how_to_build}, or point SESSIONFOLD_BIN at a sessionfold binary",
                    path.display()
                );
            }
            Ok(path)
        }
    }
}

/// Warns (once) when a service library was built after the binary: the
/// binary may then not contain the code under test.
fn warn_if_stale(bin: &Path, profile_dir: &Path) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let Some(built) = modified(bin) else { return };
        let Ok(entries) = std::fs::read_dir(profile_dir.join("deps")) else {
            return;
        };
        let newest = entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".rlib")
                    && ["core", "common", "ingest", "processor", "api"]
                        .iter()
                        .any(|lib| name.starts_with(&format!("libsessionfold_{lib}-")))
            })
            .filter_map(|entry| Some((modified(&entry.path())?, entry.file_name())))
            .max();
        if let Some((when, name)) = newest
            && when > built + Duration::from_secs(1)
        {
            eprintln!(
                "warning: {} was built after {}: run `cargo build -p sessionfold` so that the \
                 processes under test run the current code",
                name.to_string_lossy(),
                bin.display()
            );
        }
    });
}

/// The names one run uses (stream, subjects, key prefix, consumer,
/// dead-letter stream, updates subjects), unique so that runs never share
/// state.
#[derive(Debug, Clone)]
pub struct RunNames {
    pub stream: String,
    pub subject_prefix: String,
    pub key_prefix: String,
    pub consumer: String,
    pub dead_stream: String,
    pub dead_subject_prefix: String,
    /// Where the processors announce changes; [`RunNames::processor_env`]
    /// leaves it out, so that runs under the shipped ACLs (which allow only
    /// the default updates subjects) keep the default.
    pub updates_subject_prefix: String,
}

impl RunNames {
    /// Fresh names: the stream `<stream>_<random>`, subjects
    /// `<subject>_<random>`, keys `<key>_<random>:`.
    pub fn unique(stream: &str, subject: &str, key: &str) -> Self {
        Self {
            stream: unique_name(stream),
            subject_prefix: unique_name(subject),
            key_prefix: format!("{}:", unique_name(key)),
            consumer: unique_name("processor"),
            dead_stream: unique_name("DEAD"),
            dead_subject_prefix: unique_name("dead"),
            updates_subject_prefix: unique_name("updates"),
        }
    }

    /// Every name as the services' environment: [`RunNames::stream_env`],
    /// [`RunNames::processor_env`] and `UPDATES_SUBJECT_PREFIX`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::from(self.stream_env());
        env.extend(self.processor_env());
        env.push((
            "UPDATES_SUBJECT_PREFIX",
            self.updates_subject_prefix.clone(),
        ));
        env
    }

    /// The environment that points ingest and the processors at the event
    /// stream.
    pub fn stream_env(&self) -> [(&'static str, String); 2] {
        [
            ("STREAM_NAME", self.stream.clone()),
            ("SUBJECT_PREFIX", self.subject_prefix.clone()),
        ]
    }

    /// The environment that gives a processor the rest of these names.
    pub fn processor_env(&self) -> [(&'static str, String); 4] {
        [
            ("KEY_PREFIX", self.key_prefix.clone()),
            ("CONSUMER_NAME", self.consumer.clone()),
            ("DEAD_LETTER_STREAM", self.dead_stream.clone()),
            (
                "DEAD_LETTER_SUBJECT_PREFIX",
                self.dead_subject_prefix.clone(),
            ),
        ]
    }
}

/// Starts services from one `sessionfold` binary, each with its output
/// appended to `<log dir>/<name>.log`. The log directory is removed on drop,
/// or kept (and its path printed) when `SESSIONFOLD_KEEP_TEST_DIRS` is set.
pub struct ServiceLauncher {
    bin: PathBuf,
    /// Prefixes the log directory's name and the "logs kept" message.
    owner: &'static str,
    /// Set for every service, before the service's own environment.
    env: Vec<(&'static str, String)>,
    logs: Option<TempDir>,
    log_dir: PathBuf,
}

impl ServiceLauncher {
    /// A launcher of `bin` with a fresh log directory
    /// `sessionfold-<owner>-*`; `env` is given to every service.
    pub fn new(
        bin: PathBuf,
        owner: &'static str,
        env: Vec<(&'static str, String)>,
    ) -> Result<Self> {
        let logs = tempfile::Builder::new()
            .prefix(&format!("sessionfold-{owner}-"))
            .tempdir()
            .context("creating the service log directory")?;
        Ok(Self {
            bin,
            owner,
            env,
            log_dir: logs.path().to_path_buf(),
            logs: Some(logs),
        })
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Where the service `name` logs.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Keeps the log directory instead of removing it; returns its path.
    pub fn keep_logs(mut self) -> PathBuf {
        match self.logs.take() {
            Some(logs) => logs.keep(),
            None => self.log_dir.clone(),
        }
    }

    /// Spawns `sessionfold <subcommand>` as the service `name`, serving
    /// (and answering `/readyz`) at `addr`, with the launcher's environment
    /// and then `env`. It does not wait until the service is ready.
    pub fn spawn(
        &self,
        name: &str,
        subcommand: &str,
        addr: SocketAddr,
        env: &[(&str, String)],
    ) -> Result<ServiceProcess> {
        let log = self.log_path(name);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(&self.bin)
            .arg(subcommand)
            // The output goes to a file: no colour codes in it.
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} {subcommand}", self.bin.display()))?;
        Ok(ServiceProcess {
            name: name.to_owned(),
            child,
            addr,
            log,
        })
    }

    /// The last `lines` lines of every log in the log directory, by name.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.log_dir) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                out.push_str(&format!(
                    "--- {} ---\n{}\n",
                    path.display(),
                    log_tail(&path, lines)
                ));
            }
        }
        out
    }
}

impl Drop for ServiceLauncher {
    fn drop(&mut self) {
        if std::env::var_os("SESSIONFOLD_KEEP_TEST_DIRS").is_some()
            && let Some(logs) = self.logs.take()
        {
            eprintln!(
                "{}: service logs kept in {}",
                self.owner,
                logs.keep().display()
            );
        }
    }
}

/// A service running as a child process; SIGKILLed on drop.
pub struct ServiceProcess {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ServiceProcess {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it serves (and answers `/readyz`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Polls `/readyz` until it answers with success. Fails, with the end of
    /// the service's log, when the service exits first or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let http = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.addr);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited before it was ready ({status}); last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(FAILURE_LOG_LINES)
                );
            }
            let last = match http.get(&url).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                // `/readyz` behind an API key (OPS_REQUIRE_API_KEY): the
                // service answers; the test checks readiness itself.
                Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    let alive = format!("http://{}/healthz", self.addr);
                    match http.get(&alive).send().await {
                        Ok(response) if response.status().is_success() => return Ok(()),
                        _ => "protected /readyz; /healthz not answering yet".to_owned(),
                    }
                }
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {timeout:?} (last /readyz: {last}); last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(FAILURE_LOG_LINES)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// SIGKILL, no shutdown; returns once the process is gone.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // After `kill`, std knows the child is reaped and does not signal it
        // again (its pid may belong to another process by then).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
