//! One Redis connection for a single server or a Redis Cluster.
//!
//! `REDIS_URL` names one server, or with `REDIS_CLUSTER=true` (implied by a
//! comma-separated list) the seed nodes of a Redis Cluster. Either way the
//! services get a [`RedisConnection`], which runs commands like any
//! `redis::aio::ConnectionLike`; in cluster mode every command goes to the
//! node owning its key's slot (MOVED/ASK redirections, failovers and
//! topology changes are followed by the client). Every key of one session
//! carries the same hash tag, so a session's apply step runs on one node.
//!
//! What differs: a pipeline must stay within one slot in cluster mode
//! ([`RedisConnection::is_cluster`] tells callers to send per-key commands
//! instead), and `PING` goes to every primary.

use std::time::Duration;

use anyhow::Context as _;
use redis::AsyncConnectionConfig;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::jetstream::redacted;
use crate::settings::RedisSettings;

/// Timeouts of a [`RedisConnection`]; `None` keeps the client's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisTimeouts {
    /// How long one connection attempt may take.
    pub connect: Option<Duration>,
    /// How long one command may wait for its answer.
    pub response: Option<Duration>,
}

/// A reconnecting connection to one Redis server or to a Redis Cluster.
/// Cheap to clone: clones share the underlying connections.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// One connection to one server that does not reconnect
    /// ([`RedisConnection::connect_direct`]).
    Direct(MultiplexedConnection),
}

impl RedisConnection {
    /// Connects as `settings` say: one server, or a cluster through its seed
    /// nodes.
    pub async fn connect(
        settings: &RedisSettings,
        timeouts: RedisTimeouts,
    ) -> anyhow::Result<Self> {
        let urls = settings.urls();
        let shown = redacted(&settings.redis_url);
        if settings.is_cluster() {
            let mut builder = ClusterClientBuilder::new(urls.iter().map(String::as_str));
            if let Some(connect) = timeouts.connect {
                builder = builder.connection_timeout(connect);
            }
            if let Some(response) = timeouts.response {
                builder = builder.response_timeout(response);
            }
            let client = builder
                .build()
                .with_context(|| format!("invalid REDIS_URL {shown:?} for a Redis Cluster"))?;
            let connection = client
                .get_async_connection()
                .await
                .with_context(|| format!("connecting to the Redis Cluster at {shown}"))?;
            Ok(Self::Cluster(connection))
        } else {
            let [url] = urls.as_slice() else {
                anyhow::bail!("REDIS_URL {shown:?} names no server");
            };
            let client = redis::Client::open(url.as_str())
                .with_context(|| format!("invalid REDIS_URL {shown:?}"))?;
            let mut config = ConnectionManagerConfig::new();
            if let Some(connect) = timeouts.connect {
                config = config.set_connection_timeout(Some(connect));
            }
            if let Some(response) = timeouts.response {
                config = config.set_response_timeout(Some(response));
            }
            let connection = ConnectionManager::new_with_config(client, config)
                .await
                .with_context(|| format!("connecting to Redis at {shown}"))?;
            Ok(Self::Single(connection))
        }
    }

    /// Like [`connect`](Self::connect), but on a single server one plain
    /// connection that does not reconnect: dropping its last clone closes
    /// the socket at once, and with it whatever Redis still buffered for
    /// it. For callers that replace failed connections themselves, like the
    /// api's read pool. On a cluster the same as [`connect`](Self::connect).
    pub async fn connect_direct(
        settings: &RedisSettings,
        timeouts: RedisTimeouts,
    ) -> anyhow::Result<Self> {
        if settings.is_cluster() {
            return Self::connect(settings, timeouts).await;
        }
        let urls = settings.urls();
        let shown = redacted(&settings.redis_url);
        let [url] = urls.as_slice() else {
            anyhow::bail!("REDIS_URL {shown:?} names no server");
        };
        let client = redis::Client::open(url.as_str())
            .with_context(|| format!("invalid REDIS_URL {shown:?}"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeouts.connect)
            .set_response_timeout(timeouts.response);
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("connecting to Redis at {shown}"))?;
        Ok(Self::Direct(connection))
    }

    /// Whether this is a Redis Cluster connection, where a pipeline must not
    /// span hash slots.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs a keyless command on every master: on a cluster the answer is a
    /// map from each master's address to its reply (errors included as
    /// `Value::ServerError`); on a single server it is that server's reply.
    pub async fn route_to_all_masters(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
        match self {
            Self::Single(connection) => cmd.query_async(connection).await,
            Self::Direct(connection) => cmd.query_async(connection).await,
            Self::Cluster(connection) => {
                connection
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await
            }
        }
    }
}

impl RedisConnection {
    /// Runs `cmd` on the master serving `slot` (on a single server, on that
    /// server): for commands whose key the client cannot see, like the
    /// query engine's, whose index name Redis Cluster treats as a key.
    pub async fn route_to_slot(&mut self, cmd: &Cmd, slot: u16) -> redis::RedisResult<Value> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        match self {
            Self::Single(connection) => cmd.query_async(connection).await,
            Self::Direct(connection) => cmd.query_async(connection).await,
            Self::Cluster(connection) => {
                connection
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                            slot,
                            SlotAddr::Master,
                        ))),
                    )
                    .await
            }
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
            Self::Direct(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Direct(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
            Self::Direct(connection) => connection.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_or_the_flag_mean_a_cluster() {
        let single = RedisSettings::local("redis://a:6379");
        assert!(!single.is_cluster());
        assert_eq!(single.urls(), ["redis://a:6379"]);

        let seeds = RedisSettings::local("redis://u:p@a:6379, redis://u:p@b:6379,");
        assert!(seeds.is_cluster());
        assert_eq!(seeds.urls(), ["redis://u:p@a:6379", "redis://u:p@b:6379"]);

        let flagged = RedisSettings {
            redis_cluster: true,
            ..RedisSettings::local("redis://a:6379")
        };
        assert!(flagged.is_cluster());
    }

    #[tokio::test]
    async fn a_bad_url_is_reported_without_its_password() {
        let settings = RedisSettings::local("nonsense://user:secret@a:6379");
        let err = RedisConnection::connect(&settings, RedisTimeouts::default())
            .await
            .err()
            .expect("an invalid URL");
        let text = format!("{err:#}");
        assert!(text.contains("invalid REDIS_URL"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
