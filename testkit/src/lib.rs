//! `sessionfold-testkit`: test-only infrastructure for sessionfold's
//! integration tests. It owns starting and stopping REAL external servers —
//! [`NatsServer`] (nats-server with JetStream) and [`RedisServer`]
//! (redis-server with the RedisJSON module) — on free loopback ports with
//! throw-away directories, killed on drop; plus small helpers for tests:
//! [`eventually`] / [`eventually_ok`] polling, [`free_port`], [`unique_name`]
//! and [`init_test_tracing`].
//!
//! Binaries are looked up via `SESSIONFOLD_NATS_SERVER`, `SESSIONFOLD_REDIS_SERVER`
//! and `SESSIONFOLD_REJSON`, falling back to `<workspace>/.deps/bin/nats-server`,
//! `.deps/bin/redis-server` and `.deps/lib/rejson.so`, which
//! `scripts/bootstrap.sh` installs.
//!
//! Environment knobs: `TEST_LOG` (tracing output), `SESSIONFOLD_KEEP_TEST_DIRS`
//! (keep server temp dirs on drop), `SESSIONFOLD_SERVER_START_TIMEOUT_SECS`
//! (readiness deadline, default 10).

mod nats;
mod net;
mod process;
mod redis;
mod util;

pub use nats::NatsServer;
pub use redis::RedisServer;
pub use util::{
    POLL_INTERVAL, eventually, eventually_ok, free_port, init_test_tracing, unique_name,
};
