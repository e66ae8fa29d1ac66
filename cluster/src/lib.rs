//! `sessionfold-cluster`: the harness of the cluster test
//! (`cluster/tests/cluster.rs`, `make cluster-test`).
//!
//! Everything runs for real on loopback, started with the testkit's
//! binaries (`.deps/`) and the shipped permission files
//! (`deploy/nats/accounts.conf`, `deploy/redis/users.acl`):
//!
//! - [`NatsCluster`]: three nats-servers joined by routes into one cluster,
//!   JetStream on each (so an R3 stream has a copy on every node);
//! - [`RedisCluster`]: three redis-servers with RedisJSON in cluster mode,
//!   the 16 384 slots split between them (three masters, no replicas);
//! - [`ClusterSystem`]: ingest, N processors and the api as child processes
//!   of the `sessionfold` binary, configured for both clusters the way a
//!   deployment would be (several `NATS_URL`s, `STREAM_REPLICAS=3`,
//!   `REDIS_CLUSTER=true` with several `REDIS_URL`s, each service with its
//!   own credentials).
//!
//! The test drives them with [`sessionfold_client::loadgen`] and checks the
//! documents with [`sessionfold_harness::scenario`].

pub mod nats;
pub mod redis_cluster;
pub mod system;

use std::path::PathBuf;

pub use nats::NatsCluster;
pub use redis_cluster::RedisCluster;
pub use system::{ClusterOptions, ClusterSystem};

/// A file under `deploy/`.
pub fn deploy_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// `url` with `user:password@` after the scheme.
pub fn with_credentials(url: &str, user: &str, password: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{user}:{password}@{rest}"),
        None => url.to_owned(),
    }
}

/// The development credentials of the shipped permission files.
pub mod credentials {
    /// NATS users (`deploy/nats/accounts.conf`).
    pub const NATS_INGEST: (&str, &str) = ("ingest", "ingest-dev-password");
    pub const NATS_PROCESSOR: (&str, &str) = ("processor", "processor-dev-password");
    pub const NATS_API: (&str, &str) = ("api", "api-dev-password");
    pub const NATS_OPERATOR: (&str, &str) = ("operator", "operator-dev-password");
    /// Redis users (`deploy/redis/users.acl`).
    pub const REDIS_PROCESSOR: (&str, &str) = ("sessionfold-processor", "processor-dev-password");
    pub const REDIS_API: (&str, &str) = ("sessionfold-api", "api-dev-password");
    pub const REDIS_ADMIN: (&str, &str) = ("sessionfold-admin", "admin-dev-password");
}
