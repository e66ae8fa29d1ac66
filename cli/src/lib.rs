//! The `sessionfold` command: runs the services (each alone, or all in one
//! process for development) and, for users, talks to a running system.
//!
//! - [`dev`]: the all-in-one mode: ingest, processor and api in one process,
//!   `/websocket` and `/data` on one listener (default `:8080`).
//! - [`send`]: `send` (files of events to a session) and `get` (a document).
//! - [`token`]: issuing signed session tokens.
//! - [`dead_letters`]: listing and replaying messages that could not be applied.
//! - [`client`]: a producer client that sends a session's frames and resends
//!   what was not acknowledged.
//! - [`rebuild`]: rebuilding every document from the stream into a fresh
//!   key prefix through a temporary durable consumer.
//! - [`loadgen`]: a seeded workload generator that runs sessions concurrently
//!   through the client.

pub mod client;
pub mod dead_letters;
pub mod dev;
pub mod loadgen;
pub mod rebuild;
pub mod send;
pub mod token;
