//! The system under measurement: one nats-server and one redis-server
//! (RedisJSON) from the testkit, and the services as child processes of the
//! release `sessionfold` binary, each run with names (stream, consumer, key
//! prefix) of its own.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream;
use sessionfold_common::settings::NatsSettings;
use sessionfold_core::session::Names;
use sessionfold_testkit::{NatsServer, RedisServer, free_port, unique_name};
use tempfile::TempDir;
use tokio::time::Instant;

/// Redis persistence of the bench: the append-only file with one fsync per
/// second, what `docs/faults.md` recommends for deployments (the testkit's
/// default, `always`, is for tests that kill Redis).
pub const REDIS_ARGS: &[&str] = &["--appendfsync", "everysec"];

/// The `sessionfold` binary: `SESSIONFOLD_BIN`, or the one next to this
/// executable (`target/release/sessionfold` beside
/// `target/release/sessionfold-bench`).
pub fn sessionfold_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SESSIONFOLD_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let path = exe
        .parent()
        .context("the bench executable has no directory")?
        .join(format!("sessionfold{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "{} does not exist: run `cargo build --release -p sessionfold` (or `make bench`), \
             or point SESSIONFOLD_BIN at a sessionfold binary",
            path.display()
        );
    }
    Ok(path)
}

/// The servers, shared by every measurement.
pub struct Servers {
    pub nats: NatsServer,
    pub redis: RedisServer,
    bin: PathBuf,
    logs: TempDir,
    http: reqwest::Client,
}

/// The names one run uses, unique so that runs never share state.
#[derive(Debug, Clone)]
pub struct RunNames {
    pub stream: String,
    pub subject_prefix: String,
    pub key_prefix: String,
    pub consumer: String,
    pub dead_stream: String,
    pub dead_subject_prefix: String,
}

impl RunNames {
    pub fn unique() -> Self {
        Self {
            stream: unique_name("BENCH"),
            subject_prefix: unique_name("bench"),
            key_prefix: format!("{}:", unique_name("b")),
            consumer: unique_name("processor"),
            dead_stream: unique_name("DEAD"),
            dead_subject_prefix: unique_name("dead"),
        }
    }

    pub fn names(&self) -> Names {
        Names {
            events_subject_prefix: self.subject_prefix.clone(),
            key_prefix: self.key_prefix.clone(),
        }
    }

    /// The stream settings ingest and the processor use for these names.
    pub fn nats_settings(&self, nats_url: &str) -> NatsSettings {
        NatsSettings {
            stream_name: self.stream.clone(),
            subject_prefix: self.subject_prefix.clone(),
            ..NatsSettings::local(nats_url)
        }
    }
}

/// A service running as a child process; SIGKILLed on drop.
pub struct Service {
    pub name: String,
    child: Child,
    /// Where it serves (and answers `/readyz`).
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`).
    pub fn status_kb(&self, field: &str) -> anyhow::Result<u64> {
        proc_status_kb(self.pid(), field)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/<pid>/status` in kB.
pub fn proc_status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no {field}"))
}

/// Total CPU time (user + system) a process used so far.
pub fn proc_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime) = ticks(11).zip(ticks(12)).context("unreadable /proc stat")?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Ok(Duration::from_millis((utime + stime) * 10))
}

/// CPU time of some processes over a stretch of time.
pub struct CpuMeter {
    processes: Vec<(String, u32, Duration)>,
}

impl CpuMeter {
    pub fn start(processes: &[(&str, u32)]) -> Self {
        Self {
            processes: processes
                .iter()
                .map(|(name, pid)| ((*name).to_owned(), *pid, proc_cpu(*pid).unwrap_or_default()))
                .collect(),
        }
    }

    /// CPU seconds each process used since [`CpuMeter::start`].
    pub fn stop(self) -> Vec<(String, f64)> {
        self.processes
            .into_iter()
            .map(|(name, pid, before)| {
                let after = proc_cpu(pid).unwrap_or_default();
                (name, after.saturating_sub(before).as_secs_f64())
            })
            .collect()
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Servers {
    pub fn start() -> anyhow::Result<Self> {
        let bin = sessionfold_bin()?;
        let nats = NatsServer::start().context("starting nats-server")?;
        let redis = RedisServer::start_with_args(REDIS_ARGS).context("starting redis-server")?;
        let logs = tempfile::Builder::new()
            .prefix("sessionfold-bench-")
            .tempdir()?;
        Ok(Self {
            nats,
            redis,
            bin,
            logs,
            http: reqwest::Client::new(),
        })
    }

    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Keeps the service logs (prints where) instead of removing them.
    pub fn keep_logs(self) -> PathBuf {
        let Servers { logs, .. } = self;
        logs.keep()
    }

    fn spawn(
        &self,
        name: &str,
        subcommand: &str,
        addr: SocketAddr,
        env: &[(&str, String)],
    ) -> anyhow::Result<Service> {
        let log = self.logs.path().join(format!("{name}.log"));
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(&self.bin)
            .arg(subcommand)
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} {subcommand}", self.bin.display()))?;
        Ok(Service {
            name: name.to_owned(),
            child,
            addr,
            log,
        })
    }

    async fn wait_ready(&self, service: &mut Service) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", service.addr);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = service.child.try_wait()? {
                bail!(
                    "{} exited before it was ready ({status}); log: {}",
                    service.name,
                    service.log.display()
                );
            }
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {READY_TIMEOUT:?}; log: {}",
                    service.name,
                    service.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn nats_env(&self, names: &RunNames) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", self.nats_url()),
            ("STREAM_NAME", names.stream.clone()),
            ("SUBJECT_PREFIX", names.subject_prefix.clone()),
        ]
    }

    /// `sessionfold ingest` on a free port, ready.
    pub async fn start_ingest(&self, names: &RunNames) -> anyhow::Result<Service> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut env = self.nats_env(names);
        env.push(("INGEST_LISTEN", addr.to_string()));
        let mut ingest = self.spawn("ingest", "ingest", addr, &env)?;
        self.wait_ready(&mut ingest).await?;
        Ok(ingest)
    }

    /// `replicas` × `sessionfold processor` on one durable consumer, ready.
    pub async fn start_processors(
        &self,
        names: &RunNames,
        replicas: usize,
    ) -> anyhow::Result<Vec<Service>> {
        let mut processors = Vec::with_capacity(replicas);
        for slot in 0..replicas {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut env = self.nats_env(names);
            env.extend([
                ("PROCESSOR_LISTEN", addr.to_string()),
                ("REDIS_URL", self.redis_url()),
                ("KEY_PREFIX", names.key_prefix.clone()),
                ("CONSUMER_NAME", names.consumer.clone()),
                ("DEAD_LETTER_STREAM", names.dead_stream.clone()),
                (
                    "DEAD_LETTER_SUBJECT_PREFIX",
                    names.dead_subject_prefix.clone(),
                ),
            ]);
            processors.push(self.spawn(&format!("processor-{slot}"), "processor", addr, &env)?);
        }
        for processor in &mut processors {
            self.wait_ready(processor).await?;
        }
        Ok(processors)
    }

    /// `sessionfold api` on a free port, ready.
    pub async fn start_api(&self, names: &RunNames) -> anyhow::Result<Service> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let env = [
            ("API_LISTEN", addr.to_string()),
            ("REDIS_URL", self.redis_url()),
            ("KEY_PREFIX", names.key_prefix.clone()),
        ];
        let mut api = self.spawn("api", "api", addr, &env)?;
        self.wait_ready(&mut api).await?;
        Ok(api)
    }

    pub async fn jetstream(&self) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::connect(self.nats_url())
            .await
            .context("connecting to NATS")?;
        Ok(jetstream::new(client))
    }

    /// A connection for the bench's own commands, with room for slow ones
    /// (`FLUSHALL` of a large data set, reading a large document).
    pub async fn redis_connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.redis_url())?;
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
        Ok(client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Deletes a run's streams and Redis keys, so runs do not pile up, and
    /// rewrites the (now empty) append-only file, so that no measurement
    /// pays for the rewrite of an earlier one's data.
    pub async fn clean(&self, names: &RunNames) -> anyhow::Result<()> {
        let js = self.jetstream().await?;
        for stream in [&names.stream, &names.dead_stream] {
            let _ = js.delete_stream(stream).await;
        }
        let mut redis = self.redis_connection().await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut redis).await?;
        // BGREWRITEAOF is refused while a rewrite runs: wait, rewrite, wait.
        wait_aof_rewrite(&mut redis).await?;
        redis::cmd("BGREWRITEAOF")
            .query_async::<()>(&mut redis)
            .await?;
        wait_aof_rewrite(&mut redis).await
    }
}

/// Waits until Redis runs no AOF rewrite and has none scheduled.
async fn wait_aof_rewrite(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(redis)
            .await?;
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("an AOF rewrite still runs after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the consumer has nothing pending and nothing unacked; the
/// time it was first seen drained.
pub async fn wait_drained(
    js: &jetstream::Context,
    names: &RunNames,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let started = Instant::now();
    loop {
        let state = async {
            let stream = js.get_stream(&names.stream).await?;
            let info = stream.consumer_info(&names.consumer).await?;
            anyhow::Ok((info.num_pending, info.num_ack_pending))
        }
        .await;
        match state {
            Ok((0, 0)) => return Ok(Instant::now()),
            Ok(state) if started.elapsed() >= timeout => {
                bail!("not drained after {timeout:?}: (pending, ack pending) = {state:?}")
            }
            Err(err) if started.elapsed() >= timeout => return Err(err),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
