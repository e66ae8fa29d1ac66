//! `sessionfold-testkit`: test-only infrastructure for sessionfold's
//! integration tests, fault suite, cluster test and benchmarks.
//!
//! It owns starting and stopping REAL external servers — [`NatsServer`]
//! (nats-server with JetStream, `sync_interval: always`) and [`RedisServer`]
//! (Valkey 9 with the RedisJSON module and the query engine) — on free
//! loopback ports with throw-away directories, killed on drop; copies of
//! Redis's data taken at a moment and restarts from them
//! ([`RedisServer::snapshot`], [`RedisServer::restart_from`]); running sessionfold's own services as child processes of
//! the `sessionfold` binary ([`sessionfold_bin`], [`ServiceLauncher`],
//! [`ServiceProcess`], with a run's unique [`RunNames`]); asking JetStream
//! how far they got ([`JetStreamProbe`]); plus small helpers for tests:
//! [`eventually`] / [`eventually_ok`] polling, [`free_port`], [`unique_name`],
//! [`log_tail`] and [`init_test_tracing`].
//!
//! Server binaries are looked up via `SESSIONFOLD_NATS_SERVER`,
//! `SESSIONFOLD_REDIS_SERVER`, `SESSIONFOLD_REJSON` and
//! `SESSIONFOLD_REDISEARCH` (`0` leaves the query engine out), falling back
//! to `<workspace>/.deps/bin/nats-server`, `.deps/bin/redis-server` (Valkey),
//! `.deps/lib/rejson.so` and `.deps/lib/redisearch.so`, which
//! `scripts/bootstrap.sh` installs; the
//! `sessionfold` binary via `SESSIONFOLD_BIN`, falling back to the build
//! beside the running executable ([`BinaryDefault`]).
//!
//! Environment knobs: `TEST_LOG` (tracing output), `SESSIONFOLD_KEEP_TEST_DIRS`
//! (keep server temp dirs and service logs on drop),
//! `SESSIONFOLD_SERVER_START_TIMEOUT_SECS` (readiness deadline of the
//! servers, default 10).

mod jetstream;
mod nats;
mod net;
mod process;
mod redis;
mod services;
mod util;

pub use jetstream::JetStreamProbe;
pub use nats::{NatsOptions, NatsServer, SYNC_ALWAYS};
pub use process::log_tail;
pub use redis::{RedisOptions, RedisServer, RedisSnapshot, USERS_ACL, search_module, users_acl};
pub use services::{BinaryDefault, RunNames, ServiceLauncher, ServiceProcess, sessionfold_bin};
pub use util::{
    POLL_INTERVAL, eventually, eventually_ok, free_port, init_test_tracing, unique_name,
};
