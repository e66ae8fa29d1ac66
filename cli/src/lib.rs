//! The `sessionfold` command: runs the services (each alone, or all in one
//! process for development) and, for users, talks to a running system.
//!
//! - [`dev`]: the all-in-one mode: ingest, processor and api in one process,
//!   `/websocket` and `/data` on one listener (default `:8080`).

pub mod dev;
