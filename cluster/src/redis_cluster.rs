//! A Redis Cluster on loopback: testkit redis-servers (Valkey with RedisJSON
//! on each) in cluster mode, joined and given the slots the way
//! `redis-cli --cluster create … --cluster-replicas N` does it, and the
//! faults of a replicated cluster: a replica cut off from its master, a
//! master killed, a replica promoted.

use std::time::Duration;

use anyhow::{Context as _, bail};
use sessionfold_testkit::{RedisServer, free_port};
use tokio::time::Instant;

/// Redis Cluster hash slots.
const SLOTS: u16 = 16_384;
/// How long the nodes may take to agree on the cluster.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// Masters each owning an equal share of the slots, each with the same
/// number of replicas. Killed on drop.
pub struct RedisCluster {
    /// The masters first (`0..masters`), then the replicas: replica `r` of
    /// master `m` is node `masters + m * replicas_per_master + r`.
    nodes: Vec<RedisServer>,
    masters: usize,
    replicas_per_master: usize,
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
        Self::start_with_replicas(size, 0, extra_args, admin).await
    }

    /// Like [`start`](Self::start), with `replicas_per_master` replicas of
    /// each master; waits until every replica's link to its master is up.
    /// The replicas authenticate to their masters as `admin`.
    pub async fn start_with_replicas(
        masters: usize,
        replicas_per_master: usize,
        extra_args: &[String],
        admin: Option<(&str, &str)>,
    ) -> anyhow::Result<Self> {
        let size = masters * (1 + replicas_per_master);
        let mut extra_args = extra_args.to_vec();
        if let Some((user, password)) = admin
            && replicas_per_master > 0
        {
            extra_args.extend([
                "--masteruser".to_owned(),
                user.to_owned(),
                "--masterauth".to_owned(),
                password.to_owned(),
            ]);
        }
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
            masters,
            replicas_per_master,
            admin: admin.map(|(user, password)| (user.to_owned(), password.to_owned())),
        };
        cluster.form().await?;
        cluster.attach_replicas().await?;
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
        let size = self.masters as u16;
        let share = SLOTS / size;
        for index in 0..self.masters {
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

    /// Makes every replica node replicate its master and waits until each
    /// link is up and every node agrees on the cluster.
    async fn attach_replicas(&self) -> anyhow::Result<()> {
        if self.replicas_per_master == 0 {
            return Ok(());
        }
        for master in 0..self.masters {
            let id = self.node_id(master).await?;
            for r in 0..self.replicas_per_master {
                let index = self.replica_index(master, r);
                let mut connection = self.node_connection(index).await?;
                // The replica must know the master first (CLUSTER MEET is
                // gossiped); retry until it does.
                let deadline = Instant::now() + FORM_TIMEOUT;
                loop {
                    let result = redis::cmd("CLUSTER")
                        .arg("REPLICATE")
                        .arg(&id)
                        .query_async::<()>(&mut connection)
                        .await;
                    match result {
                        Ok(()) => break,
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!("CLUSTER REPLICATE on node {index} of master {master}")
                            });
                        }
                    }
                }
            }
        }
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let mut waiting = Vec::new();
            for master in 0..self.masters {
                for r in 0..self.replicas_per_master {
                    let index = self.replica_index(master, r);
                    let info = self.info(index, "replication").await.unwrap_or_default();
                    if !info.contains("master_link_status:up") {
                        waiting.push(format!("replica {index}: link not up"));
                    }
                }
            }
            for index in 0..self.nodes.len() {
                let info = self.cluster_info(index).await.unwrap_or_default();
                if !info.contains("cluster_state:ok")
                    || !info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                {
                    waiting.push(format!("node {index}: not ok with every node"));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the replicas did not attach within {FORM_TIMEOUT:?}: {waiting:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Masters the cluster was formed with.
    pub fn masters(&self) -> usize {
        self.masters
    }

    /// The node index of replica `r` of master `master` (indices as formed;
    /// after a failover the roles are swapped, the indices stay).
    pub fn replica_index(&self, master: usize, r: usize) -> usize {
        self.masters + master * self.replicas_per_master + r
    }

    /// `CLUSTER MYID` of node `index`.
    pub async fn node_id(&self, index: usize) -> anyhow::Result<String> {
        let mut connection = self.node_connection(index).await?;
        Ok(redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut connection)
            .await?)
    }

    /// `INFO <section>` of node `index`.
    pub async fn info(&self, index: usize, section: &str) -> anyhow::Result<String> {
        let mut connection = self.node_connection(index).await?;
        Ok(redis::cmd("INFO")
            .arg(section)
            .query_async(&mut connection)
            .await?)
    }

    /// A numeric field of `INFO replication` of node `index`
    /// (`master_repl_offset`, `slave_repl_offset`, ...).
    pub async fn replication_offset(&self, index: usize, field: &str) -> anyhow::Result<i64> {
        let info = self.info(index, "replication").await?;
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
            .with_context(|| format!("INFO replication of node {index} has no {field}"))
    }

    /// Cuts replica node `index` off its master, deterministically and for
    /// as long as it takes: its `masterauth` is made wrong and its link
    /// closed, so every reconnection fails authentication. From here on,
    /// whatever the master acknowledges is on the master alone, as with a
    /// replica that lags behind a slow network.
    pub async fn cut_replica_off(&self, index: usize) -> anyhow::Result<()> {
        let mut connection = self.node_connection(index).await?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("masterauth")
            .arg("not-the-password")
            .query_async::<()>(&mut connection)
            .await
            .context("CONFIG SET masterauth")?;
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("master")
            .query_async::<i64>(&mut connection)
            .await
            .context("CLIENT KILL TYPE master")?;
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let info = self.info(index, "replication").await?;
            if info.contains("master_link_status:down") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("replica {index} still linked to its master: {info}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs node `index`.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts node `index` again (same port, data and `nodes.conf`) and
    /// waits until it is a replica with its link to its master up: a master
    /// that was failed over while it was down comes back as a replica of the
    /// node that took over, and resynchronises from it.
    pub async fn restart_as_replica(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        tokio::task::block_in_place(|| node.restart())
            .with_context(|| format!("restarting node {index}"))?;
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let info = self.info(index, "replication").await.unwrap_or_default();
            if info.contains("role:slave") && info.contains("master_link_status:up") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("node {index} did not come back as a linked replica: {info}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Promotes replica node `index` at once, without its master's consent
    /// (`CLUSTER FAILOVER TAKEOVER`), and waits until it is a master and
    /// every node still running reports `cluster_state:ok`.
    pub async fn take_over(&mut self, index: usize) -> anyhow::Result<()> {
        let mut connection = self.node_connection(index).await?;
        redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .arg("TAKEOVER")
            .query_async::<()>(&mut connection)
            .await
            .context("CLUSTER FAILOVER TAKEOVER")?;
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let role = self.info(index, "replication").await.unwrap_or_default();
            let mut ok = role.contains("role:master");
            for other in 0..self.nodes.len() {
                if self.nodes[other].is_running() {
                    let info = self.cluster_info(other).await.unwrap_or_default();
                    ok &= info.contains("cluster_state:ok");
                }
            }
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("node {index} did not take over within {FORM_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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
