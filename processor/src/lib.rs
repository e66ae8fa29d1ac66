//! sessionfold processor: pulls accepted frames from the shared durable
//! JetStream consumer, folds each session's events into its RedisJSON
//! document with one atomic, idempotent Redis step, and acks only after Redis
//! confirmed. Any number of replicas may share the consumer.
//!
//! - [`config`]: the service's settings.
//! - [`store`]: the Redis side: the apply script and how errors are classified.
//! - [`batch`]: decoding a pulled batch and grouping it by session.
//! - [`consumer`]: creating (and re-creating) the durable pull consumer.
//! - [`dead_letter`]: where messages that can never be applied go.
//! - [`worker`]: the pull → apply → ack loop, a few batches in flight; [`serve`] adds health routes.
//! - [`lag`]: polls the consumer's pending and ack-pending counts into gauges.
//! - [`readiness`]: what `/readyz` checks (NATS, Redis, stream, consumer).

pub mod batch;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod lag;
pub mod readiness;
pub mod store;
pub mod worker;

pub use config::Config;
pub use worker::{Processor, serve};
