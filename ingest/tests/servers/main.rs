//! ingest against a real nats-server with JetStream (started by `testkit`
//! on a free port): what it acknowledges is in the stream, what it refuses
//! says truthfully whether a retry can help, and what attackers try does not
//! take it down. `security::*` is what `make security` replays.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

mod acknowledged;
mod group_commit;
mod helpers;
mod limits;
mod security;
