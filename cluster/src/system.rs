//! The system under test on the two clusters: ingest, N processors and the
//! api as child processes of the `sessionfold` binary, with the shipped
//! permission files and each service's own credentials, under the default
//! names those files grant (`SESSIONFOLD_EVENTS`, `sessionfold-processor`,
//! `sf:`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use futures::StreamExt as _;
use sessionfold_client::Producer;
use sessionfold_common::settings::NatsSettings;
use sessionfold_harness::{SystemUnderTest, run_producer};
use sessionfold_testkit::{
    BinaryDefault, JetStreamProbe, ServiceLauncher, ServiceProcess, free_port, sessionfold_bin,
};

use crate::credentials::{
    NATS_API, NATS_INGEST, NATS_OPERATOR, NATS_PROCESSOR, REDIS_ADMIN, REDIS_API, REDIS_PROCESSOR,
};
use crate::{NatsCluster, RedisCluster, deploy_file};

pub const STREAM: &str = sessionfold_core::names::DEFAULT_EVENT_STREAM;
pub const CONSUMER: &str = sessionfold_core::names::DEFAULT_CONSUMER;
pub const DEAD_LETTER_STREAM: &str = sessionfold_core::names::DEFAULT_DEAD_LETTER_STREAM;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How to set the system up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nats_nodes: usize,
    /// Redis Cluster masters.
    pub redis_nodes: usize,
    /// Replicas of each Redis master.
    pub redis_replicas_per_master: usize,
    /// More processor environment (e.g. `REDIS_DURABILITY`).
    pub processor_env: Vec<(String, String)>,
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
            redis_replicas_per_master: 0,
            processor_env: Vec::new(),
            stream_replicas: 3,
            processors: 2,
            publish_timeout_ms: 2000,
            ack_wait_secs: 5,
            batch_size: 256,
        }
    }
}

/// The running system. The services stop before the servers.
pub struct ClusterSystem {
    services: Vec<ServiceProcess>,
    pub nats: NatsCluster,
    pub redis: RedisCluster,
    pub options: ClusterOptions,
    pub ingest_addr: SocketAddr,
    pub api_addr: SocketAddr,
    launcher: ServiceLauncher,
    http: reqwest::Client,
    js: jetstream::Context,
    jetstream: JetStreamProbe,
}

impl Drop for ClusterSystem {
    fn drop(&mut self) {
        self.services.clear();
    }
}

impl ClusterSystem {
    /// Starts both clusters with the shipped permission files, then ingest,
    /// the processors and the api, and waits until every service is ready.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let bin = sessionfold_bin(BinaryDefault::SameProfileAsTest)?;
        let accounts = std::fs::read_to_string(deploy_file("nats/accounts.conf"))
            .context("reading deploy/nats/accounts.conf")?;
        let nats = NatsCluster::start(options.nats_nodes, &accounts).await?;
        let acl = sessionfold_testkit::users_acl(sessionfold_testkit::search_module()?.is_some())?;
        let redis = RedisCluster::start_with_replicas(
            options.redis_nodes,
            options.redis_replicas_per_master,
            &["--aclfile".to_owned(), acl.display().to_string()],
            Some(REDIS_ADMIN),
        )
        .await?;
        let operator = NatsSettings::local(nats.urls(Some(NATS_OPERATOR)));
        let client = sessionfold_common::jetstream::connect(&operator, "cluster-test")
            .await
            .context("connecting to the NATS cluster as the operator")?;
        let js = jetstream::new(client);
        let launcher = ServiceLauncher::new(
            bin,
            "cluster",
            vec![
                (
                    "RUST_LOG",
                    std::env::var("CLUSTER_CHILD_LOG").unwrap_or_else(|_| "info".to_owned()),
                ),
                ("LOG_FORMAT", "text".to_owned()),
                // An error that stops a service prints without a backtrace, so
                // the log tail in a failure report shows the error.
                ("RUST_LIB_BACKTRACE", "0".to_owned()),
            ],
        )?;
        let mut system = Self {
            services: Vec::new(),
            nats,
            redis,
            options,
            ingest_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            api_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            launcher,
            http: reqwest::Client::new(),
            jetstream: JetStreamProbe::new(js.clone(), STREAM, CONSUMER, DEAD_LETTER_STREAM)
                .polling_every(Duration::from_millis(200)),
            js,
        };
        let nats_ingest = system.nats.urls(Some(NATS_INGEST));
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
            system.spawn_processor(&format!("processor-{slot}"), &[])?;
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
        for service in &mut system.services {
            service.wait_ready(READY_TIMEOUT).await?;
        }
        Ok(system)
    }

    /// Starts one more processor, `extra_env` on top of the options'
    /// processor environment, and waits until it is ready.
    pub async fn add_processor(
        &mut self,
        name: &str,
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        self.spawn_processor(name, extra_env)?;
        let added = self
            .services
            .last_mut()
            .context("the processor just spawned")?;
        added.wait_ready(READY_TIMEOUT).await
    }

    fn spawn_processor(&mut self, name: &str, extra_env: &[(&str, String)]) -> anyhow::Result<()> {
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let replicas = self.options.stream_replicas.to_string();
        let mut env: Vec<(&str, String)> = self
            .options
            .processor_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        env.extend([
            ("PROCESSOR_LISTEN", health.to_string()),
            ("NATS_URL", self.nats.urls(Some(NATS_PROCESSOR))),
            ("STREAM_REPLICAS", replicas),
            ("REDIS_URL", self.redis.urls(Some(REDIS_PROCESSOR))),
            ("REDIS_CLUSTER", "true".to_owned()),
            ("ACK_WAIT_SECS", self.options.ack_wait_secs.to_string()),
            ("BATCH_SIZE", self.options.batch_size.to_string()),
        ]);
        env.extend(extra_env.iter().map(|(k, v)| (*k, v.clone())));
        let service = self.launcher.spawn(name, "processor", health, &env)?;
        self.services.push(service);
        Ok(())
    }

    fn spawn(
        &mut self,
        name: &str,
        subcommand: &str,
        health: SocketAddr,
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let service = self.launcher.spawn(name, subcommand, health, env)?;
        self.services.push(service);
        Ok(())
    }

    /// A producer pointed at this system's ingest.
    pub fn producer(&self) -> Producer {
        run_producer(self.ingest_addr, self.options.publish_timeout_ms)
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

    /// Lines of the processors' logs containing `needle`.
    pub fn count_in_processor_logs(&self, needle: &str) -> usize {
        self.services
            .iter()
            .filter(|service| service.name().starts_with("processor"))
            .map(|service| {
                std::fs::read_to_string(service.log_path())
                    .map(|text| text.lines().filter(|line| line.contains(needle)).count())
                    .unwrap_or(0)
            })
            .sum()
    }

    pub fn log_dir(&self) -> &Path {
        self.launcher.log_dir()
    }
}

impl SystemUnderTest for ClusterSystem {
    fn jetstream(&self) -> &JetStreamProbe {
        &self.jetstream
    }

    /// Every session's document as the api serves it (`None`: 404), in
    /// order; the api reads the Redis Cluster.
    async fn read_documents(&self, session_ids: &[String]) -> anyhow::Result<Vec<Option<String>>> {
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

    /// The last lines of every service's and server's log.
    fn log_tails(&self, lines: usize) -> String {
        let mut out = self.launcher.log_tails(lines);
        out.push_str(&self.nats.log_tails(lines));
        out.push_str(&self.redis.log_tails(lines));
        out
    }
}
