//! A NATS cluster on loopback: testkit nats-servers joined by routes.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use sessionfold_testkit::{NatsServer, free_port};

/// `size` nats-servers, each with JetStream, a `server_name` (`n1`, `n2`, …)
/// and routes to all the others, plus whatever `extra_config` adds
/// (accounts). Killed on drop.
pub struct NatsCluster {
    nodes: Vec<Arc<Mutex<NatsServer>>>,
    names: Vec<String>,
}

impl NatsCluster {
    /// Starts every node at once (a clustered JetStream server is healthy
    /// only once a quorum of the cluster is up) and waits until each is.
    pub async fn start(size: usize, extra_config: &str) -> anyhow::Result<Self> {
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let names: Vec<String> = (1..=size).map(|i| format!("n{i}")).collect();
        let mut starts = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let routes = route_ports
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let config = format!(
                "server_name: \"{name}\"\n\
                 cluster {{\n  name: \"sessionfold-test\"\n  listen: \"127.0.0.1:{port}\"\n  routes: [{routes}]\n}}\n\
                 {extra_config}\n",
                port = route_ports[index],
            );
            let name = name.clone();
            starts.push(tokio::task::spawn_blocking(move || {
                NatsServer::start_with_config(&config)
                    .with_context(|| format!("starting nats-server {name}"))
            }));
        }
        let mut nodes = Vec::new();
        for start in starts {
            nodes.push(Arc::new(Mutex::new(start.await??)));
        }
        Ok(Self { nodes, names })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, comma-separated (a `NATS_URL`), with
    /// `user:password@` when given.
    pub fn urls(&self, credentials: Option<(&str, &str)>) -> String {
        self.nodes
            .iter()
            .map(|node| {
                let url = lock(node).url();
                match credentials {
                    Some((user, password)) => crate::with_credentials(&url, user, password),
                    None => url,
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node whose `server_name` is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|known| known == name)
    }

    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// SIGKILLs node `index` (its JetStream store stays).
    pub async fn kill(&self, index: usize) -> anyhow::Result<()> {
        let node = self.nodes[index].clone();
        tokio::task::spawn_blocking(move || lock(&node).kill()).await?;
        Ok(())
    }

    /// Starts node `index` again (same ports, config and store) and waits
    /// until it is healthy, which for a clustered JetStream server means
    /// caught up with the meta leader.
    pub async fn restart(&self, index: usize) -> anyhow::Result<()> {
        let node = self.nodes[index].clone();
        tokio::task::spawn_blocking(move || lock(&node).restart()).await?
    }

    /// The last lines of every node's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (node, name) in self.nodes.iter().zip(&self.names) {
            let path = lock(node).log_path().to_path_buf();
            out.push_str(&format!(
                "--- nats {name} ({}) ---\n{}\n",
                path.display(),
                sessionfold_testkit::log_tail(&path, lines)
            ));
        }
        out
    }
}

fn lock(node: &Mutex<NatsServer>) -> std::sync::MutexGuard<'_, NatsServer> {
    node.lock().unwrap_or_else(PoisonError::into_inner)
}
