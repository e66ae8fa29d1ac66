//! The system under test: nats-server and redis-server from the testkit,
//! `sessionfold ingest` and N × `sessionfold processor` as child processes,
//! all on loopback, with names (stream, consumer, key prefix) of its own; and
//! the faults it can suffer.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream;
use sessionfold::client::{Producer, ProducerConfig};
use sessionfold_core::SessionId;
use sessionfold_core::session::Names;
use sessionfold_testkit::{NatsServer, RedisServer, free_port, unique_name};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::binary::sessionfold_bin;

/// How to set the system up.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    /// Processor replicas sharing the durable consumer.
    pub processors: usize,
    /// Ingest's `PUBLISH_TIMEOUT_MS`: how long a frame waits for JetStream
    /// before it is answered `unavailable`.
    pub publish_timeout_ms: u64,
    /// Extra redis-server arguments (later ones win over the testkit's).
    pub redis_args: Vec<String>,
    /// The consumer's ack wait: how soon the work of a killed processor is
    /// redelivered.
    pub ack_wait_secs: u64,
    /// Processor `BATCH_SIZE`.
    pub batch_size: usize,
}

impl Default for SystemOptions {
    fn default() -> Self {
        Self {
            processors: 2,
            publish_timeout_ms: 1000,
            // Enough for process restarts; see docs/faults.md.
            redis_args: vec!["--appendfsync".to_owned(), "everysec".to_owned()],
            ack_wait_secs: 3,
            batch_size: 256,
        }
    }
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
    fn unique() -> Self {
        Self {
            stream: unique_name("EVENTS"),
            subject_prefix: unique_name("events"),
            key_prefix: format!("{}:", unique_name("sf")),
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
}

/// A service running as a child process; SIGKILLed on drop.
struct ServiceProcess {
    name: String,
    child: Child,
    health: SocketAddr,
    log: PathBuf,
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The running system.
pub struct System {
    processors: Vec<Option<ServiceProcess>>,
    ingest: Option<ServiceProcess>,
    nats: Arc<Mutex<NatsServer>>,
    redis: Arc<Mutex<RedisServer>>,
    pub nats_url: String,
    pub redis_url: String,
    pub names: RunNames,
    pub options: SystemOptions,
    pub ingest_addr: SocketAddr,
    /// Processors SIGKILLed so far.
    pub processors_killed: usize,
    /// Processor processes started so far (restarts included).
    pub processors_started: usize,
    bin: PathBuf,
    /// Holds the service logs; removed on drop unless
    /// `SESSIONFOLD_KEEP_TEST_DIRS` is set.
    logs: Option<TempDir>,
    log_dir: PathBuf,
    http: reqwest::Client,
    js: jetstream::Context,
}

impl Drop for System {
    fn drop(&mut self) {
        // The services go before the servers they use.
        self.processors.clear();
        self.ingest = None;
        if std::env::var_os("SESSIONFOLD_KEEP_TEST_DIRS").is_some()
            && let Some(logs) = self.logs.take()
        {
            eprintln!("faults: service logs kept in {}", logs.keep().display());
        }
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl System {
    /// Starts nats-server, redis-server, ingest and `options.processors`
    /// processors, and waits until every service is ready.
    pub async fn start(options: SystemOptions) -> anyhow::Result<Self> {
        let bin = sessionfold_bin()?;
        let redis_args = options.redis_args.clone();
        let (nats, redis) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = redis_args.iter().map(String::as_str).collect();
            let nats = NatsServer::start().context("starting nats-server")?;
            let redis = RedisServer::start_with_args(&args).context("starting redis-server")?;
            anyhow::Ok((nats, redis))
        })
        .await??;
        let nats_url = nats.url();
        let redis_url = redis.url();
        let logs = tempfile::Builder::new()
            .prefix("sessionfold-faults-")
            .tempdir()?;
        let client = async_nats::connect(&nats_url)
            .await
            .context("connecting to NATS")?;
        let mut system = Self {
            processors: Vec::new(),
            ingest: None,
            nats: Arc::new(Mutex::new(nats)),
            redis: Arc::new(Mutex::new(redis)),
            nats_url,
            redis_url,
            names: RunNames::unique(),
            options,
            ingest_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            processors_killed: 0,
            processors_started: 0,
            bin,
            log_dir: logs.path().to_path_buf(),
            logs: Some(logs),
            http: reqwest::Client::new(),
            js: jetstream::new(client),
        };
        system.ingest_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        system.start_ingest().await?;
        for slot in 0..system.options.processors {
            system.processors.push(None);
            system.start_processor(slot)?;
        }
        for slot in 0..system.options.processors {
            system.wait_ready_processor(slot).await?;
        }
        Ok(system)
    }

    fn common_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", self.nats_url.clone()),
            ("STREAM_NAME", self.names.stream.clone()),
            ("SUBJECT_PREFIX", self.names.subject_prefix.clone()),
            (
                "RUST_LOG",
                std::env::var("FAULTS_CHILD_LOG").unwrap_or_else(|_| "info".to_owned()),
            ),
            ("LOG_FORMAT", "text".to_owned()),
            ("NO_COLOR", "1".to_owned()),
        ]
    }

    fn spawn(
        &self,
        name: String,
        subcommand: &str,
        health: SocketAddr,
        env: &[(&'static str, String)],
    ) -> anyhow::Result<ServiceProcess> {
        let log = self.log_dir.as_path().join(format!("{name}.log"));
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(&self.bin)
            .arg(subcommand)
            .envs(self.common_env())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} {subcommand}", self.bin.display()))?;
        Ok(ServiceProcess {
            name,
            child,
            health,
            log,
        })
    }

    async fn wait_ready(&self, service: &mut ServiceProcess) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", service.health);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = service.child.try_wait()? {
                bail!(
                    "{} exited before it was ready ({status}):\n{}",
                    service.name,
                    log_tail(&service.log, 30)
                );
            }
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {READY_TIMEOUT:?}:\n{}",
                    service.name,
                    log_tail(&service.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts ingest on [`ingest_addr`](Self::ingest_addr) (again after
    /// [`kill_ingest`](Self::kill_ingest)) and waits until it is ready. Its
    /// log is appended to `ingest.log`.
    pub async fn start_ingest(&mut self) -> anyhow::Result<()> {
        if self.ingest.is_some() {
            bail!("ingest is already running");
        }
        let env = [
            ("INGEST_LISTEN", self.ingest_addr.to_string()),
            (
                "PUBLISH_TIMEOUT_MS",
                self.options.publish_timeout_ms.to_string(),
            ),
        ];
        let mut ingest = self.spawn("ingest".to_owned(), "ingest", self.ingest_addr, &env)?;
        let result = self.wait_ready(&mut ingest).await;
        self.ingest = Some(ingest);
        result
    }

    /// SIGKILLs ingest: every producer connection breaks, frames in flight
    /// stay unanswered (stored or not).
    pub fn kill_ingest(&mut self) -> anyhow::Result<()> {
        let Some(mut ingest) = self.ingest.take() else {
            bail!("ingest is not running");
        };
        ingest.child.kill().context("SIGKILL")?;
        ingest.child.wait()?;
        Ok(())
    }

    /// Waits until the processor in `slot` reports ready (it holds the
    /// consumer).
    pub async fn wait_ready_processor(&mut self, slot: usize) -> anyhow::Result<()> {
        let Some(mut processor) = self.processors[slot].take() else {
            bail!("processor {slot} is not running");
        };
        let result = self.wait_ready(&mut processor).await;
        self.processors[slot] = Some(processor);
        result
    }

    /// Starts (or restarts) the processor in `slot` as a child process. Its
    /// log is appended to `processor-<slot>.log`.
    pub fn start_processor(&mut self, slot: usize) -> anyhow::Result<()> {
        if self.processors[slot].is_some() {
            bail!("processor {slot} is already running");
        }
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let names = &self.names;
        let env = [
            ("PROCESSOR_LISTEN", health.to_string()),
            ("REDIS_URL", self.redis_url.clone()),
            ("KEY_PREFIX", names.key_prefix.clone()),
            ("CONSUMER_NAME", names.consumer.clone()),
            ("DEAD_LETTER_STREAM", names.dead_stream.clone()),
            (
                "DEAD_LETTER_SUBJECT_PREFIX",
                names.dead_subject_prefix.clone(),
            ),
            ("ACK_WAIT_SECS", self.options.ack_wait_secs.to_string()),
            ("BATCH_SIZE", self.options.batch_size.to_string()),
        ];
        let process = self.spawn(format!("processor-{slot}"), "processor", health, &env)?;
        self.processors[slot] = Some(process);
        self.processors_started += 1;
        Ok(())
    }

    /// SIGKILLs the processor in `slot`: no shutdown, no final acks.
    pub fn kill_processor(&mut self, slot: usize) -> anyhow::Result<()> {
        let Some(mut processor) = self.processors[slot].take() else {
            bail!("processor {slot} is not running");
        };
        processor.child.kill().context("SIGKILL")?;
        processor.child.wait()?;
        self.processors_killed += 1;
        Ok(())
    }

    pub fn processor_slots(&self) -> usize {
        self.processors.len()
    }

    /// nats-server: SIGTERM and wait (the JetStream file store stays).
    pub async fn stop_nats(&self) -> anyhow::Result<()> {
        let nats = self.nats.clone();
        tokio::task::spawn_blocking(move || {
            nats.lock().unwrap_or_else(PoisonError::into_inner).stop()
        })
        .await?;
        Ok(())
    }

    /// nats-server: start again on the same port and store, wait until ready.
    pub async fn start_nats(&self) -> anyhow::Result<()> {
        let nats = self.nats.clone();
        tokio::task::spawn_blocking(move || {
            nats.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .restart()
        })
        .await?
    }

    /// redis-server: SIGTERM (it writes and fsyncs the AOF) and wait.
    pub async fn stop_redis(&self) -> anyhow::Result<()> {
        let redis = self.redis.clone();
        tokio::task::spawn_blocking(move || {
            redis.lock().unwrap_or_else(PoisonError::into_inner).stop()
        })
        .await?;
        Ok(())
    }

    /// redis-server: SIGKILL, no shutdown.
    pub async fn kill_redis(&self) -> anyhow::Result<()> {
        let redis = self.redis.clone();
        tokio::task::spawn_blocking(move || {
            redis.lock().unwrap_or_else(PoisonError::into_inner).kill()
        })
        .await?;
        Ok(())
    }

    /// redis-server: start again on the same port and data dir (it loads
    /// the AOF), wait until ready.
    pub async fn start_redis(&self) -> anyhow::Result<()> {
        let redis = self.redis.clone();
        tokio::task::spawn_blocking(move || {
            redis
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .restart()
        })
        .await?
    }

    /// A field of Redis `INFO persistence` (e.g. `aof_delayed_fsync`).
    pub async fn redis_info(&self, field: &str) -> anyhow::Result<String> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut connection)
            .await?;
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
            .with_context(|| format!("INFO persistence has no {field}"))
    }

    /// A producer pointed at this system's ingest.
    pub fn producer(&self) -> Producer {
        let mut config = ProducerConfig::new(&format!("ws://{}/websocket", self.ingest_addr))
            .expect("a valid endpoint");
        config.reply_timeout =
            Duration::from_millis(self.options.publish_timeout_ms) + Duration::from_secs(5);
        config.deadline = Duration::from_secs(120);
        Producer::new(config)
    }

    /// The consumer's `num_pending` and `num_ack_pending`.
    pub async fn consumer_state(&self) -> anyhow::Result<(u64, usize)> {
        let stream = self.js.get_stream(&self.names.stream).await?;
        let info = stream.consumer_info(&self.names.consumer).await?;
        Ok((info.num_pending, info.num_ack_pending))
    }

    /// Waits until every stored frame is acked (`num_pending == 0 &&
    /// num_ack_pending == 0`); returns how long that took.
    pub async fn wait_drained(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let last = match self.consumer_state().await {
                Ok((0, 0)) => return Ok(started.elapsed()),
                Ok(state) => format!("{state:?}"),
                Err(err) => err.to_string(),
            };
            if started.elapsed() >= timeout {
                bail!(
                    "the consumer was not drained after {timeout:?}; last (pending, ack pending): {last}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages in the event stream (every stored copy of every frame).
    pub async fn stream_messages(&self) -> anyhow::Result<u64> {
        let stream = self.js.get_stream(&self.names.stream).await?;
        Ok(stream.cached_info().state.messages)
    }

    /// Messages in the dead-letter stream (0 when it does not exist).
    pub async fn dead_letters(&self) -> anyhow::Result<u64> {
        match self.js.get_stream(&self.names.dead_stream).await {
            Ok(stream) => Ok(stream.cached_info().state.messages),
            Err(err) if err.to_string().contains("not found") => Ok(0),
            Err(err) => Err(err.into()),
        }
    }

    /// The raw `JSON.GET` text of every session's document, in order.
    pub async fn read_documents(
        &self,
        session_ids: &[String],
    ) -> anyhow::Result<Vec<Option<String>>> {
        let names = self.names.names();
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let mut documents = Vec::with_capacity(session_ids.len());
        for chunk in session_ids.chunks(200) {
            let mut pipe = redis::pipe();
            for id in chunk {
                let session =
                    SessionId::parse(id).map_err(|err| anyhow::anyhow!("{id:?}: {err}"))?;
                pipe.cmd("JSON.GET").arg(names.keys(&session).doc);
            }
            let chunk_docs: Vec<Option<String>> = pipe.query_async(&mut connection).await?;
            documents.extend(chunk_docs);
        }
        Ok(documents)
    }

    /// Lines of the processors' logs containing `needle`.
    pub fn count_in_processor_logs(&self, needle: &str) -> usize {
        (0..self.processors.len())
            .map(|slot| {
                let path = self.log_dir.as_path().join(format!("processor-{slot}.log"));
                std::fs::read_to_string(path)
                    .map(|text| text.lines().filter(|line| line.contains(needle)).count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Where the services' logs are.
    pub fn log_dir(&self) -> &Path {
        self.log_dir.as_path()
    }

    /// The last lines of every service log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.log_dir.as_path()) {
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

/// The last `lines` lines of a log file.
fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
