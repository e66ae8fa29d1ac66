//! sessionfold api: the read-only HTTP side. `GET /data?session_id=X`
//! answers a session's document exactly as stored in RedisJSON.
//!
//! - [`config`]: the service's settings.
//! - [`server`]: [`serve`], the routes and the document read.
//! - [`live`]: `GET /data/stream`, the document pushed as Server-Sent Events.
//! - [`error`]: JSON errors with their HTTP status.
//! - [`conditional`]: `ETag` and `304` on a matching `If-None-Match`.
//! - [`openapi`]: the OpenAPI document at `/openapi.json`.
//! - [`readiness`]: what `/readyz` checks (Redis, shutdown).

pub mod conditional;
pub mod config;
pub mod error;
pub mod live;
pub mod openapi;
pub mod readiness;
pub mod server;

pub use config::Config;
pub use server::{Api, serve};
