//! The system under test: nats-server and redis-server from the testkit,
//! `sessionfold ingest` and N × `sessionfold processor` as child processes,
//! all on loopback, with names (stream, consumer, key prefix) of its own; and
//! the faults it can suffer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream;
use sessionfold_client::Producer;
use sessionfold_testkit::{
    BinaryDefault, JetStreamProbe, NatsOptions, NatsServer, RedisOptions, RedisServer,
    RedisSnapshot, RunNames, ServiceLauncher, ServiceProcess, free_port, sessionfold_bin,
};

use sessionfold_harness::{SystemUnderTest, read_documents, run_keys, run_producer};

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
    /// Where Redis keeps its AOF (default: the testkit's temp dir), e.g. on
    /// a power-loss test filesystem.
    pub redis_data_dir: Option<PathBuf>,
    /// Where JetStream keeps its store (default: the testkit's temp dir).
    pub nats_store_dir: Option<PathBuf>,
    /// JetStream's `sync_interval` (default: the testkit's, `always`).
    pub nats_sync_interval: Option<String>,
    /// More processor environment (e.g. `REDIS_DURABILITY`).
    pub processor_env: Vec<(String, String)>,
    /// More ingest environment (e.g. its limits).
    pub ingest_env: Vec<(String, String)>,
    /// Also run `sessionfold api`, at [`System::api_addr`].
    pub api: bool,
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
            redis_data_dir: None,
            nats_store_dir: None,
            nats_sync_interval: None,
            processor_env: Vec::new(),
            ingest_env: Vec::new(),
            api: false,
        }
    }
}

/// The running system.
pub struct System {
    processors: Vec<Option<ServiceProcess>>,
    ingest: Option<ServiceProcess>,
    api: Option<ServiceProcess>,
    nats: Arc<Mutex<NatsServer>>,
    redis: Arc<Mutex<RedisServer>>,
    pub nats_url: String,
    pub redis_url: String,
    pub names: RunNames,
    pub options: SystemOptions,
    pub ingest_addr: SocketAddr,
    /// Where the api serves, when [`SystemOptions::api`] is set.
    pub api_addr: SocketAddr,
    /// Processors SIGKILLed so far.
    pub processors_killed: usize,
    /// Processor processes started so far (restarts included).
    pub processors_started: usize,
    launcher: ServiceLauncher,
    jetstream: JetStreamProbe,
}

impl Drop for System {
    fn drop(&mut self) {
        // The services go before the servers they use.
        self.processors.clear();
        self.ingest = None;
        self.api = None;
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl System {
    /// Starts nats-server, redis-server, ingest and `options.processors`
    /// processors, and waits until every service is ready.
    pub async fn start(options: SystemOptions) -> anyhow::Result<Self> {
        let bin = sessionfold_bin(BinaryDefault::SameProfileAsTest)?;
        let redis_options = RedisOptions {
            data_dir: options.redis_data_dir.clone(),
            extra_args: options.redis_args.clone(),
            ..RedisOptions::default()
        };
        let nats_options = NatsOptions {
            store_dir: options.nats_store_dir.clone(),
            sync_interval: options.nats_sync_interval.clone(),
            ..NatsOptions::default()
        };
        let (nats, redis) = tokio::task::spawn_blocking(move || {
            let nats = NatsServer::start_with(nats_options).context("starting nats-server")?;
            let redis = RedisServer::start_with(redis_options).context("starting redis-server")?;
            anyhow::Ok((nats, redis))
        })
        .await??;
        let nats_url = nats.url();
        let redis_url = redis.url();
        let names = RunNames::unique("EVENTS", "events", "sf");
        let mut env = vec![
            ("NATS_URL", nats_url.clone()),
            (
                "RUST_LOG",
                std::env::var("FAULTS_CHILD_LOG").unwrap_or_else(|_| "info".to_owned()),
            ),
            ("LOG_FORMAT", "text".to_owned()),
        ];
        env.extend(names.stream_env());
        let launcher = ServiceLauncher::new(bin, "faults", env)?;
        let client = async_nats::connect(&nats_url)
            .await
            .context("connecting to NATS")?;
        let jetstream = JetStreamProbe::new(
            jetstream::new(client),
            &names.stream,
            &names.consumer,
            &names.dead_stream,
        );
        let mut system = Self {
            processors: Vec::new(),
            ingest: None,
            api: None,
            nats: Arc::new(Mutex::new(nats)),
            redis: Arc::new(Mutex::new(redis)),
            nats_url,
            redis_url,
            names,
            options,
            ingest_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            api_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            processors_killed: 0,
            processors_started: 0,
            launcher,
            jetstream,
        };
        system.start_ingest().await?;
        for slot in 0..system.options.processors {
            system.processors.push(None);
            system.start_processor(slot)?;
        }
        for slot in 0..system.options.processors {
            system.wait_ready_processor(slot).await?;
        }
        if system.options.api {
            system.start_api().await?;
        }
        Ok(system)
    }

    /// Starts the api on [`api_addr`](Self::api_addr), reading this run's
    /// keys, and waits until it is ready. Its log is `api.log`.
    async fn start_api(&mut self) -> anyhow::Result<()> {
        let env = [
            ("API_LISTEN", self.api_addr.to_string()),
            ("REDIS_URL", self.redis_url.clone()),
            ("KEY_PREFIX", self.names.key_prefix.clone()),
        ];
        let api = self
            .api
            .insert(self.launcher.spawn("api", "api", self.api_addr, &env)?);
        api.wait_ready(READY_TIMEOUT).await
    }

    /// Starts ingest on [`ingest_addr`](Self::ingest_addr) (again after
    /// [`kill_ingest`](Self::kill_ingest)) and waits until it is ready. Its
    /// log is appended to `ingest.log`.
    pub async fn start_ingest(&mut self) -> anyhow::Result<()> {
        if self.ingest.is_some() {
            bail!("ingest is already running");
        }
        let mut env = vec![
            ("INGEST_LISTEN", self.ingest_addr.to_string()),
            (
                "PUBLISH_TIMEOUT_MS",
                self.options.publish_timeout_ms.to_string(),
            ),
        ];
        env.extend(
            self.options
                .ingest_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone())),
        );
        let ingest =
            self.ingest.insert(
                self.launcher
                    .spawn("ingest", "ingest", self.ingest_addr, &env)?,
            );
        ingest.wait_ready(READY_TIMEOUT).await
    }

    /// SIGKILLs ingest: every producer connection breaks, frames in flight
    /// stay unanswered (stored or not).
    pub fn kill_ingest(&mut self) -> anyhow::Result<()> {
        let Some(ingest) = self.ingest.take() else {
            bail!("ingest is not running");
        };
        ingest.kill()
    }

    /// Waits until the processor in `slot` reports ready (it holds the
    /// consumer).
    pub async fn wait_ready_processor(&mut self, slot: usize) -> anyhow::Result<()> {
        let Some(processor) = self.processors[slot].as_mut() else {
            bail!("processor {slot} is not running");
        };
        processor.wait_ready(READY_TIMEOUT).await
    }

    /// Starts (or restarts) the processor in `slot` as a child process. Its
    /// log is appended to `processor-<slot>.log`.
    pub fn start_processor(&mut self, slot: usize) -> anyhow::Result<()> {
        if self.processors[slot].is_some() {
            bail!("processor {slot} is already running");
        }
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut env = vec![
            ("PROCESSOR_LISTEN", health.to_string()),
            ("REDIS_URL", self.redis_url.clone()),
            ("ACK_WAIT_SECS", self.options.ack_wait_secs.to_string()),
            ("BATCH_SIZE", self.options.batch_size.to_string()),
        ];
        env.extend(self.names.processor_env());
        let extra: Vec<(&str, String)> = self
            .options
            .processor_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        env.extend(extra);
        let process =
            self.launcher
                .spawn(&format!("processor-{slot}"), "processor", health, &env)?;
        self.processors[slot] = Some(process);
        self.processors_started += 1;
        Ok(())
    }

    /// SIGKILLs the processor in `slot`: no shutdown, no final acks.
    pub fn kill_processor(&mut self, slot: usize) -> anyhow::Result<()> {
        let Some(processor) = self.processors[slot].take() else {
            bail!("processor {slot} is not running");
        };
        processor.kill()?;
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

    /// nats-server: SIGKILL, no shutdown (the store keeps what reached it).
    pub async fn kill_nats(&self) -> anyhow::Result<()> {
        let nats = self.nats.clone();
        tokio::task::spawn_blocking(move || {
            nats.lock().unwrap_or_else(PoisonError::into_inner).kill()
        })
        .await?;
        Ok(())
    }

    /// Copies Redis's data files as they are now (see
    /// [`RedisServer::snapshot`]), while it runs.
    pub async fn snapshot_redis(&self) -> anyhow::Result<RedisSnapshot> {
        let redis = self.redis.clone();
        tokio::task::spawn_blocking(move || {
            redis
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .snapshot()
        })
        .await?
    }

    /// redis-server: SIGKILL, then start again on the same port from
    /// `snapshot`: Redis is back, behind by everything written since.
    pub async fn restart_redis_from(&self, snapshot: RedisSnapshot) -> anyhow::Result<()> {
        let redis = self.redis.clone();
        tokio::task::spawn_blocking(move || {
            redis
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .restart_from(&snapshot)
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
        run_producer(self.ingest_addr, self.options.publish_timeout_ms)
    }

    /// Group commits ingest has counted since it last started, by outcome
    /// (`committed`, `singles`, `duplicate`, …), from its `/metrics`.
    pub async fn ingest_batches(&self, outcome: &str) -> anyhow::Result<u64> {
        let text = reqwest::get(format!("http://{}/metrics", self.ingest_addr))
            .await?
            .text()
            .await?;
        // The metric's public name, as an operator's dashboard reads it.
        let series = format!("sessionfold_ingest_publish_batches_total{{outcome=\"{outcome}\"}} ");
        Ok(text
            .lines()
            .filter_map(|line| line.strip_prefix(series.as_str()))
            .filter_map(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
            .sum())
    }

    /// Lines of the processors' logs containing `needle`.
    pub fn count_in_processor_logs(&self, needle: &str) -> usize {
        (0..self.processors.len())
            .map(|slot| {
                let path = self.launcher.log_path(&format!("processor-{slot}"));
                std::fs::read_to_string(path)
                    .map(|text| text.lines().filter(|line| line.contains(needle)).count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Where the services' logs are.
    pub fn log_dir(&self) -> &Path {
        self.launcher.log_dir()
    }
}

impl SystemUnderTest for System {
    fn jetstream(&self) -> &JetStreamProbe {
        &self.jetstream
    }

    /// The raw `JSON.GET` text of every session's document.
    async fn read_documents(&self, session_ids: &[String]) -> anyhow::Result<Vec<Option<String>>> {
        read_documents(&self.redis_url, &run_keys(&self.names), session_ids).await
    }

    fn log_tails(&self, lines: usize) -> String {
        self.launcher.log_tails(lines)
    }
}
