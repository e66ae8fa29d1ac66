//! sessionfold ingest: accepts producers' WebSocket connections, validates
//! each frame, publishes it to JetStream and acknowledges it once durable.
//!
//! - [`config`]: the service's settings.
//! - [`closed`]: sessions closed for good, refused under `LATE_EVENTS=reject`.
//! - [`server`]: [`serve`], the shared state and the HTTP routes.
//! - [`connection`]: one producer connection as a state machine, frame by
//!   frame, replies in order.
//! - [`guard`]: connection limits, Origin checks, rate limits.
//! - [`session_caps`]: how many distinct sessions one address or prefix
//!   token may open.
//! - [`publisher`]: the [`Publish`](publisher::Publish) seam; JetStream
//!   publishing with server-chosen message ids, retries and checked
//!   duplicates.
//! - [`group_commit`]: frames accepted together stored by one atomic
//!   JetStream batch, in front of the publisher.
//! - [`http_error`]: JSON errors for refused HTTP requests.
//! - [`redact`]: fields removed or hashed in every event before a frame is
//!   published.
//! - [`readiness`]: what `/readyz` checks (NATS, the stream, shutdown).

pub mod closed;
pub mod config;
pub mod connection;
pub mod group_commit;
pub mod guard;
pub mod http_error;
pub mod publisher;
pub mod readiness;
pub mod redact;
pub mod server;
pub mod session_caps;

pub use config::Config;
pub use server::{Ingest, serve};
