//! Run-time pieces shared by the sessionfold services, so that no service
//! copies them:
//!
//! - [`auth`]: API keys and signed session tokens, shared by ingest and api.
//! - [`rate_limit`]: per-IP and per-session limits, and the client IP.
//! - [`settings`]: the flag/environment groups every service composes its
//!   configuration from (NATS, Redis, input limits).
//! - [`batch_publish`]: JetStream's atomic batch publish, the base of
//!   group commit.
//! - [`jetstream`]: connecting to NATS and bringing the stream to the
//!   configured settings.
//! - [`telemetry`]: tracing set-up (`LOG_FORMAT`, `RUST_LOG`).
//! - [`shutdown`]: the SIGINT/SIGTERM future that starts a graceful stop.
//! - [`metrics`]: every metric name, the Prometheus recorder and `/metrics`.
//! - [`http`]: [`serve`](http::serve), the accept loop every listener runs
//!   with its limits (header timeout, connection caps, read budget), and
//!   request ids, the request span and bounded HTTP metrics for every route.
//! - [`health`]: `/healthz` and `/readyz` with cached dependency checks.
//! - [`redis_conn`]: one Redis connection type for a single server or a
//!   Redis Cluster (`REDIS_CLUSTER`).
//! - [`slots`]: Redis Cluster slots, hash tags for them, and the masters of
//!   `CLUSTER SLOTS`.

pub mod auth;
pub mod batch_publish;
pub mod health;
pub mod http;
pub mod jetstream;
pub mod metrics;
pub mod rate_limit;
pub mod redis_conn;
pub mod settings;
pub mod shutdown;
pub mod slots;
pub mod telemetry;
