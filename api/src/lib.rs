//! sessionfold api: the read-only HTTP side. `GET /data?session_id=X`
//! answers a session's document exactly as stored in RedisJSON.
//!
//! - [`config`]: the service's settings.
//! - [`server`]: [`serve`], the routes and the document read.
//! - [`error`]: JSON errors with their HTTP status.

pub mod config;
pub mod error;
pub mod server;

pub use config::Config;
pub use server::{Api, serve};
