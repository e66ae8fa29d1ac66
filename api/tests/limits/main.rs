//! The api's limits against real servers: reads that cannot starve Redis
//! ([`reads`]), live streams that share one read per update and end on
//! time ([`streams`]), deltas from the update notes ([`deltas`]), and the
//! shipped Redis settings ([`redis_config`]).

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

mod deltas;
mod hardening;
mod harness;
mod reads;
mod redis_config;
mod streams;
