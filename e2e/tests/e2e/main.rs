//! End-to-end tests: real WebSocket clients against ingest, a real
//! nats-server with JetStream, processors, a real redis-server with RedisJSON,
//! and `GET /data`. Every test starts its own servers on free ports.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

mod children;
mod conditional_reads;
mod dead_letters;
mod duplicates;
mod helpers;
mod hostile_input;
mod injection;
mod invalid_input;
mod least_privilege;
mod lifecycle;
mod live_deltas;
mod logs;
mod observability;
mod openapi;
mod pipeline;
mod privacy;
mod processor_faults;
mod read_your_writes;
mod rebuild;
mod resilience;
mod retention;
mod security;
mod session_list_page;
mod sessions;
mod timeline_page;
mod user_tools;
