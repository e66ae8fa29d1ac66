//! sessionfold processor: pulls accepted frames from the shared durable
//! JetStream consumer, folds each session's events into its RedisJSON
//! document with one atomic, idempotent Redis step, and acks only after Redis
//! confirmed. Any number of replicas may share the consumer.
//!
//! - [`config`]: the service's settings.
//! - [`store`]: the seam to Redis ([`store::Store`]) and its real
//!   implementation: the apply script, the durability wait and how errors
//!   are classified.
//! - [`durability`]: `REDIS_DURABILITY`, what must hold before an ack.
//! - [`summary`]: the query engine's index over the session summaries the
//!   apply step keeps (`GET /sessions` searches it).
//! - [`batch`]: decoding a pulled batch and grouping it by session.
//! - [`applier`]: applying one batch through a store, outages waited out,
//!   refusals isolated: an outcome per message.
//! - [`settle`]: ack, nak or dead letter, a pure function of the outcome.
//! - [`lifecycle`]: sessions that close by themselves: their timers, the
//!   close when one fires, the finished-sessions stream.
//! - [`repair`]: noticing that Redis lost applied writes and re-applying
//!   the stream.
//! - [`backoff`]: the delays between retries.
//! - [`consumer`]: creating (and re-creating) the durable pull consumer.
//! - [`dead_letter`]: where messages that can never be applied go.
//! - [`group_publish`]: publishes from many closes stored together by
//!   atomic batches.
//! - [`note`]: the update note published after each apply: its revision
//!   and what changed, for the api's live deltas.
//! - [`worker`]: the pull → apply → ack loop, a few batches in flight; [`serve`] adds health routes.
//! - [`lag`]: polls the consumer's pending and ack-pending counts into gauges.
//! - [`readiness`]: what `/readyz` checks (NATS, Redis, stream, consumer).

pub mod applier;
pub mod backoff;
pub mod batch;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod durability;
pub mod group_publish;
pub mod lag;
pub mod lifecycle;
pub mod note;
pub mod readiness;
pub mod repair;
pub mod settle;
pub mod store;
pub mod summary;
pub mod worker;

pub use config::Config;
pub use worker::{Processor, serve};
