//! `sessionfold-client`: what a producer needs to talk to ingest, on top of
//! the domain crate (`sessionfold-core`) alone.
//!
//! - [`producer`]: a producer client that sends a session's frames and resends
//!   what was not acknowledged.
//! - [`loadgen`]: a seeded workload generator that runs sessions concurrently
//!   through the producer client.
//! - [`sse`]: the api's Server-Sent Events: events, and the document
//!   replayed from them ([`sse::LiveReplica`]).

pub mod loadgen;
pub mod producer;
pub mod sse;

pub use producer::{
    ConfigError, Counters, FrameOutcome, Producer, ProducerConfig, SendError, SendErrorKind,
    SendReport, SessionSender,
};
