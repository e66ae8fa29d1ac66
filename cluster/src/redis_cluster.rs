//! A Redis Cluster on loopback: testkit redis-servers (RedisJSON loaded on
//! each) in cluster mode, joined and given the slots the way
//! `redis-cli --cluster create … --cluster-replicas 0` does it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use sessionfold_testkit::{RedisServer, free_port};
use tokio::time::Instant;

/// Redis Cluster hash slots.
const SLOTS: u16 = 16_384;
/// How long the nodes may take to agree on the cluster.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// `size` masters, no replicas, each owning an equal share of the slots.
/// Killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Who runs the set-up commands (`user:password`), when ACLs are on.
    admin: Option<(String, String)>,
}

impl RedisCluster {
    /// Starts `size` nodes with `extra_args` (e.g. `--aclfile`), assigns the
    /// slots, introduces the nodes to each other and waits until every node
    /// reports `cluster_state:ok`. `admin` are the credentials of a user
    /// allowed to run `CLUSTER` commands.
    pub async fn start(
        size: usize,
        extra_args: &[String],
        admin: Option<(&str, &str)>,
    ) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..size {
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "3000",
                // Every node's data dir is its own, so is nodes.conf.
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
            ]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
            args.push(free_port().to_string());
            args.extend(extra_args.iter().cloned());
            let node = tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                RedisServer::start_with_args(&args)
            })
            .await?
            .context("starting a redis-server in cluster mode")?;
            nodes.push(node);
        }
        let cluster = Self {
            nodes,
            admin: admin.map(|(user, password)| (user.to_owned(), password.to_owned())),
        };
        cluster.form().await?;
        Ok(cluster)
    }

    /// Every node's URL, comma-separated (a `REDIS_URL`), with
    /// `user:password@` when given.
    pub fn urls(&self, credentials: Option<(&str, &str)>) -> String {
        self.nodes
            .iter()
            .map(|node| match credentials {
                Some((user, password)) => crate::with_credentials(&node.url(), user, password),
                None => node.url(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A plain (non-cluster) connection to node `index` as the admin.
    pub async fn node_connection(
        &self,
        index: usize,
    ) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let url = self.nodes[index].url();
        let url = match &self.admin {
            Some((user, password)) => crate::with_credentials(&url, user, password),
            None => url,
        };
        let client = redis::Client::open(url.as_str())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    async fn form(&self) -> anyhow::Result<()> {
        let size = self.nodes.len() as u16;
        let share = SLOTS / size;
        for index in 0..self.nodes.len() {
            let first = index as u16 * share;
            let last = if index as u16 == size - 1 {
                SLOTS - 1
            } else {
                first + share - 1
            };
            let mut connection = self.node_connection(index).await?;
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query_async::<()>(&mut connection)
                .await
                .with_context(|| format!("CLUSTER ADDSLOTSRANGE on node {index}"))?;
        }
        let mut first = self.node_connection(0).await?;
        for index in 1..self.nodes.len() {
            let mut connection = self.node_connection(index).await?;
            let bus_port: u16 = config_value(&mut connection, "cluster-port").await?;
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(self.nodes[index].port())
                .arg(bus_port)
                .query_async::<()>(&mut first)
                .await
                .with_context(|| format!("CLUSTER MEET node {index}"))?;
        }
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let mut states = Vec::new();
            for index in 0..self.nodes.len() {
                states.push(self.cluster_info(index).await.unwrap_or_default());
            }
            let formed = states.iter().all(|info| {
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                    && info.contains(&format!("cluster_slots_ok:{SLOTS}"))
            });
            if formed {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the Redis Cluster did not form within {FORM_TIMEOUT:?}: {states:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `CLUSTER INFO` of node `index`.
    pub async fn cluster_info(&self, index: usize) -> anyhow::Result<String> {
        let mut connection = self.node_connection(index).await?;
        Ok(redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut connection)
            .await?)
    }

    /// Keys held by node `index` (`DBSIZE`).
    pub async fn keys_on(&self, index: usize) -> anyhow::Result<u64> {
        let mut connection = self.node_connection(index).await?;
        Ok(redis::cmd("DBSIZE").query_async(&mut connection).await?)
    }

    /// `used_memory` of node `index`, in bytes.
    pub async fn used_memory(&self, index: usize) -> anyhow::Result<u64> {
        let mut connection = self.node_connection(index).await?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut connection)
            .await?;
        info.lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|value| value.trim().parse().ok())
            .context("INFO memory has no used_memory")
    }

    /// `used_memory` summed over the nodes.
    pub async fn total_used_memory(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for index in 0..self.nodes.len() {
            total += self.used_memory(index).await?;
        }
        Ok(total)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The last lines of every node's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (index, node) in self.nodes.iter().enumerate() {
            out.push_str(&format!(
                "--- redis node {index} ({}) ---\n{}\n",
                node.log_path().display(),
                sessionfold_testkit::log_tail(node.log_path(), lines)
            ));
        }
        out
    }
}

async fn config_value<T: std::str::FromStr>(
    connection: &mut redis::aio::MultiplexedConnection,
    name: &str,
) -> anyhow::Result<T> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(connection)
        .await?;
    pair.get(1)
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("CONFIG GET {name} answered {pair:?}"))
}
