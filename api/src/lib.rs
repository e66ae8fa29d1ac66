//! sessionfold api: the read-only HTTP side. `GET /data?session_id=X`
//! answers a session's document exactly as stored in RedisJSON.
//!
//! - [`config`]: the service's settings.
//! - [`server`]: [`serve`], the routes and the document read.
//! - [`read`]: document reads with their own Redis connections, deadlines,
//!   a lane for large documents and the maximum document size.
//! - [`live`]: `GET /data/stream`, the document and then its changes as
//!   Server-Sent Events, one shared feed for all of a session's watchers
//!   ([`fanout`]), with caps on streams and their lifetime; [`delta`]: the
//!   feed's copy of the document and the update notes applied to it.
//! - [`applied`]: read your writes, `GET /data?min_seq=S`: waits until the
//!   processors' ack floor reaches `S`, one shared JetStream lookup at a time.
//! - [`sessions`]: `GET /sessions`, sessions found by their summaries with
//!   the query engine, on every master, in pages.
//! - [`children`]: `GET /data/children`, a session's children in pages, by
//!   position or by timestamp.
//! - [`error`]: JSON errors with their HTTP status.
//! - [`fair`]: api-wide caps (streams, waiters) shared fairly between
//!   client addresses.
//! - [`conditional`]: `ETag` and `304` on a matching `If-None-Match`.
//! - [`openapi`]: the OpenAPI document at `/openapi.json`.
//! - [`pages`]: the HTML pages, their scripts and styles, with their
//!   security headers.
//! - [`readiness`]: what `/readyz` checks (Redis, shutdown).

pub mod applied;
pub mod children;
pub mod conditional;
pub mod config;
pub mod delta;
pub mod error;
pub mod fair;
pub mod fanout;
pub mod live;
pub mod openapi;
pub mod pages;
pub mod read;
pub mod readiness;
pub mod server;
pub mod sessions;

pub use config::Config;
pub use server::{Api, serve};
