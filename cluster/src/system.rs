//! The system under test on the two clusters: ingest, N processors and the
//! api as child processes of the `sessionfold` binary, with the shipped
//! permission files and each service's own credentials, under the default
//! names those files grant (`SESSIONFOLD_EVENTS`, `sessionfold-processor`,
//! `sf:`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use futures::StreamExt as _;
use sessionfold::client::{Producer, ProducerConfig};
use sessionfold_common::settings::NatsSettings;
use sessionfold_faults::binary::sessionfold_bin;
use sessionfold_testkit::free_port;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::credentials::{
    NATS_API, NATS_INGEST, NATS_OPERATOR, NATS_PROCESSOR, REDIS_ADMIN, REDIS_API, REDIS_PROCESSOR,
};
use crate::{NatsCluster, RedisCluster, deploy_file};

pub const STREAM: &str = "SESSIONFOLD_EVENTS";
pub const CONSUMER: &str = "sessionfold-processor";
pub const DEAD_LETTER_STREAM: &str = "SESSIONFOLD_DEAD";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How to set the system up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nats_nodes: usize,
    pub redis_nodes: usize,
    /// `STREAM_REPLICAS`.
    pub stream_replicas: usize,
    /// Processor replicas sharing the durable consumer.
    pub processors: usize,
    /// Ingest's `PUBLISH_TIMEOUT_MS`.
    pub publish_timeout_ms: u64,
    /// The consumer's ack wait.
    pub ack_wait_secs: u64,
    /// Processor `BATCH_SIZE`.
    pub batch_size: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nats_nodes: 3,
            redis_nodes: 3,
            stream_replicas: 3,
            processors: 2,
            publish_timeout_ms: 2000,
            ack_wait_secs: 5,
            batch_size: 256,
        }
    }
}

/// A service running as a child process; SIGKILLed on drop.
struct Service {
    name: String,
    child: Child,
    health: SocketAddr,
    log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The running system. The services stop before the servers.
pub struct ClusterSystem {
    services: Vec<Service>,
    pub nats: NatsCluster,
    pub redis: RedisCluster,
    pub options: ClusterOptions,
    pub ingest_addr: SocketAddr,
    pub api_addr: SocketAddr,
    bin: PathBuf,
    logs: Option<TempDir>,
    log_dir: PathBuf,
    http: reqwest::Client,
    js: jetstream::Context,
}

impl Drop for ClusterSystem {
    fn drop(&mut self) {
        self.services.clear();
        if std::env::var_os("SESSIONFOLD_KEEP_TEST_DIRS").is_some()
            && let Some(logs) = self.logs.take()
        {
            eprintln!("cluster: service logs kept in {}", logs.keep().display());
        }
    }
}

impl ClusterSystem {
    /// Starts both clusters with the shipped permission files, then ingest,
    /// the processors and the api, and waits until every service is ready.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let bin = sessionfold_bin()?;
        let accounts = std::fs::read_to_string(deploy_file("nats/accounts.conf"))
            .context("reading deploy/nats/accounts.conf")?;
        let nats = NatsCluster::start(options.nats_nodes, &accounts).await?;
        let acl = deploy_file("redis/users.acl");
        let redis = RedisCluster::start(
            options.redis_nodes,
            &["--aclfile".to_owned(), acl.display().to_string()],
            Some(REDIS_ADMIN),
        )
        .await?;
        let operator = NatsSettings::local(nats.urls(Some(NATS_OPERATOR)));
        let client = sessionfold_common::jetstream::connect(&operator, "cluster-test")
            .await
            .context("connecting to the NATS cluster as the operator")?;
        let logs = tempfile::Builder::new()
            .prefix("sessionfold-cluster-")
            .tempdir()?;
        let mut system = Self {
            services: Vec::new(),
            nats,
            redis,
            options,
            ingest_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            api_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            bin,
            log_dir: logs.path().to_path_buf(),
            logs: Some(logs),
            http: reqwest::Client::new(),
            js: jetstream::new(client),
        };
        let nats_ingest = system.nats.urls(Some(NATS_INGEST));
        let nats_processor = system.nats.urls(Some(NATS_PROCESSOR));
        let redis_processor = system.redis.urls(Some(REDIS_PROCESSOR));
        let redis_api = system.redis.urls(Some(REDIS_API));
        let nats_api = system.nats.urls(Some(NATS_API));
        let replicas = system.options.stream_replicas.to_string();

        let ingest_addr = system.ingest_addr;
        system.spawn(
            "ingest",
            "ingest",
            ingest_addr,
            &[
                ("INGEST_LISTEN", ingest_addr.to_string()),
                ("NATS_URL", nats_ingest),
                ("STREAM_REPLICAS", replicas.clone()),
                (
                    "PUBLISH_TIMEOUT_MS",
                    system.options.publish_timeout_ms.to_string(),
                ),
            ],
        )?;
        for slot in 0..system.options.processors {
            let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
            system.spawn(
                &format!("processor-{slot}"),
                "processor",
                health,
                &[
                    ("PROCESSOR_LISTEN", health.to_string()),
                    ("NATS_URL", nats_processor.clone()),
                    ("STREAM_REPLICAS", replicas.clone()),
                    ("REDIS_URL", redis_processor.clone()),
                    ("REDIS_CLUSTER", "true".to_owned()),
                    ("ACK_WAIT_SECS", system.options.ack_wait_secs.to_string()),
                    ("BATCH_SIZE", system.options.batch_size.to_string()),
                ],
            )?;
        }
        let api_addr = system.api_addr;
        system.spawn(
            "api",
            "api",
            api_addr,
            &[
                ("API_LISTEN", api_addr.to_string()),
                ("REDIS_URL", redis_api),
                ("NATS_URL", nats_api),
                ("REDIS_CLUSTER", "true".to_owned()),
            ],
        )?;
        for index in 0..system.services.len() {
            system.wait_ready(index).await?;
        }
        Ok(system)
    }

    fn spawn(
        &mut self,
        name: &str,
        subcommand: &str,
        health: SocketAddr,
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let log = self.log_dir.join(format!("{name}.log"));
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(&self.bin)
            .arg(subcommand)
            .env(
                "RUST_LOG",
                std::env::var("CLUSTER_CHILD_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env("LOG_FORMAT", "text")
            // An error that stops a service prints without a backtrace, so
            // the log tail in a failure report shows the error.
            .env("RUST_LIB_BACKTRACE", "0")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} {subcommand}", self.bin.display()))?;
        self.services.push(Service {
            name: name.to_owned(),
            child,
            health,
            log,
        });
        Ok(())
    }

    async fn wait_ready(&mut self, index: usize) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.services[index].health);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let service = &mut self.services[index];
            if let Some(status) = service.child.try_wait()? {
                bail!(
                    "{} exited before it was ready ({status}):\n{}",
                    service.name,
                    log_tail(&service.log, 30)
                );
            }
            let last = match self.http.get(&url).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                let service = &self.services[index];
                bail!(
                    "{} not ready after {READY_TIMEOUT:?} (last /readyz: {last}):\n{}",
                    service.name,
                    log_tail(&service.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    /// The `server_name` of the event stream's leader, and its replicas
    /// that are current.
    pub async fn stream_placement(&self) -> anyhow::Result<(String, usize)> {
        let mut stream = self.js.get_stream(STREAM).await?;
        let info = stream.info().await?;
        let cluster = info
            .cluster
            .as_ref()
            .context("the stream has no cluster info")?;
        let leader = cluster.leader.clone().context("the stream has no leader")?;
        let current = 1 + cluster.replicas.iter().filter(|r| r.current).count();
        Ok((leader, current))
    }

    /// The stream's configured replicas.
    pub async fn stream_replicas(&self) -> anyhow::Result<usize> {
        let mut stream = self.js.get_stream(STREAM).await?;
        Ok(stream.info().await?.config.num_replicas)
    }

    /// The consumer's `num_pending` and `num_ack_pending`.
    pub async fn consumer_state(&self) -> anyhow::Result<(u64, usize)> {
        let stream = self.js.get_stream(STREAM).await?;
        let info = stream.consumer_info(CONSUMER).await?;
        Ok((info.num_pending, info.num_ack_pending))
    }

    /// Waits until every stored frame is acked; returns how long that took.
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
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Messages in the event stream.
    pub async fn stream_messages(&self) -> anyhow::Result<u64> {
        let stream = self.js.get_stream(STREAM).await?;
        Ok(stream.cached_info().state.messages)
    }

    /// Messages in the dead-letter stream (0 when it does not exist).
    pub async fn dead_letters(&self) -> anyhow::Result<u64> {
        match self.js.get_stream(DEAD_LETTER_STREAM).await {
            Ok(stream) => Ok(stream.cached_info().state.messages),
            Err(err) if err.to_string().contains("not found") => Ok(0),
            Err(err) => Err(err.into()),
        }
    }

    /// Every session's document as the api serves it (`None`: 404), in
    /// order; the api reads the Redis Cluster.
    pub async fn read_documents(
        &self,
        session_ids: &[String],
    ) -> anyhow::Result<Vec<Option<String>>> {
        let base = format!("http://{}/data", self.api_addr);
        futures::stream::iter(session_ids)
            .map(|id| {
                let request = self.http.get(&base).query(&[("session_id", id)]);
                async move {
                    let response = request.send().await?;
                    match response.status() {
                        reqwest::StatusCode::OK => Ok(Some(response.text().await?)),
                        reqwest::StatusCode::NOT_FOUND => Ok(None),
                        status => bail!(
                            "GET /data?session_id={id}: {status} {}",
                            response.text().await.unwrap_or_default()
                        ),
                    }
                }
            })
            .buffered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Lines of the processors' logs containing `needle`.
    pub fn count_in_processor_logs(&self, needle: &str) -> usize {
        self.services
            .iter()
            .filter(|service| service.name.starts_with("processor"))
            .map(|service| {
                std::fs::read_to_string(&service.log)
                    .map(|text| text.lines().filter(|line| line.contains(needle)).count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// The last lines of every service's and server's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for service in &self.services {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                service.name,
                log_tail(&service.log, lines)
            ));
        }
        out.push_str(&self.nats.log_tails(lines));
        out.push_str(&self.redis.log_tails(lines));
        out
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
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
