//! Run-time pieces shared by the sessionfold services, so that no service
//! copies them:
//!
//! - [`settings`]: the flag/environment groups every service composes its
//!   configuration from (NATS, Redis, input limits).
//! - [`jetstream`]: connecting to NATS and bringing the stream to the
//!   configured settings.
//! - [`telemetry`]: tracing set-up (`LOG_FORMAT`, `RUST_LOG`).
//! - [`shutdown`]: the SIGINT/SIGTERM future that starts a graceful stop.

pub mod jetstream;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
