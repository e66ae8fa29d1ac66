//! `sessionfold-bench`, run by `make bench`: measures sessionfold against
//! the limits of its own parts, in one run on one machine, and records the
//! table in BENCHMARKS.md.
//!
//! Everything runs for real on loopback: nats-server and redis-server
//! (RedisJSON) from the testkit on free ports, the services as child
//! processes of the release `sessionfold` binary ([`system`]), the producers
//! through [`sessionfold_client::producer`] and [`sessionfold_client::loadgen`] in this
//! process.
//!
//! - [`system`]: the servers and the service processes.
//! - [`raw`]: the limits: JetStream publish with async-nats alone, the apply
//!   step called directly.
//! - [`storage`]: Redis CPU per event of the apply step (both layouts)
//!   against plain appends, and bytes per child by key.
//! - [`e2e`]: end-to-end throughput with 1, 2, 4 processor replicas.
//! - [`lifecycle`]: end to end with sessions closing by themselves on and
//!   off; the timer lag of many sessions closing at once.
//! - [`freshness`]: send → visible through `GET /data` at a steady rate.
//! - [`read`]: `GET /data` against raw `JSON.GET`; [`http`]: the minimal
//!   HTTP client it reads with.
//! - [`growth`]: apply cost per event by session size; ingest memory with
//!   idle connections.
//! - [`live`]: SSE bytes per applied event to a watcher of a large
//!   session; the latency `min_seq` adds to a read after the frame's ack.
//! - [`query`]: `GET /sessions` over many sessions, `GET /data/children` of
//!   a large session against `GET /data`.
//! - [`commit`]: group commit at ingest on and off, for the throughput
//!   workload and the web mix: fsyncs per acknowledged frame, raw publish
//!   single and batched, acknowledged and end-to-end rates, a lone
//!   producer's ack latency.
//! - [`stats`]: percentiles; [`report`]: the table and BENCHMARKS.md.

pub mod commit;
pub mod e2e;
pub mod freshness;
pub mod growth;
pub mod http;
pub mod lifecycle;
pub mod live;
pub mod query;
pub mod raw;
pub mod read;
pub mod report;
pub mod stats;
pub mod storage;
pub mod system;
