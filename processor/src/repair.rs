//! Automatic repair: when Redis loses writes the processor had applied — a
//! restart from older data (an AOF that lost its `everysec` window, a
//! restore from backup), a failover to a replica that was behind, a flush —
//! the processor notices and re-applies the stream from before the loss. No
//! operator action; documents converge to the fold of the acknowledged
//! frames, because the apply step is idempotent and order-independent.
//!
//! ## The applied floor
//!
//! Every Redis node (the single server, or each master of a Redis Cluster)
//! holds a small hash, its *applied floor marker*: `floor`, a stream
//! sequence such that every frame up to it that can be applied is in that
//! node's data, and `run_id`, the node's server process when the floor was
//! written. Every [`REPAIR_CHECK_INTERVAL_MS`](crate::config::SinkSettings)
//! each processor reads the durable consumer's ack floor `F` (every frame up
//! to `F` was acked, and a frame is acked only after its apply returned) and
//! runs one script on each node ([`MARK_SCRIPT`]) that, atomically:
//!
//! - finds no marker → the node was flushed, or is new: **repair** from the
//!   first stream sequence;
//! - finds a marker written by another server process (`run_id` differs
//!   from the node's own) → the node restarted or failed over since, and
//!   may have come back with older data: **repair** from `floor + 1`;
//! - otherwise raises `floor` to `F`.
//!
//! A processor also repairs when a node's floor is lower than the floor it
//! saw there itself before (the same process, rewound data).
//!
//! Why `floor + 1` is enough: a node that restarts, is restored, or is
//! replaced by its replica comes back with a *prefix* of its write history
//! (AOF, RDB snapshots and replication all keep write order). The floor in
//! that prefix was written after every frame up to it had been applied, so
//! every lost write belongs to a frame after it.
//!
//! ## Repairing
//!
//! The repairer notes the node's run id and `L`, the stream's last sequence
//! or, if lower, the last sequence the durable consumer had delivered when
//! the round began (a frame never delivered was never applied, and the
//! consumer still delivers it as usual, so a new deployment with a backlog
//! replays only what was applied), and replays the stream from the start
//! sequence to `L` through an ordered
//! consumer (no acks, nothing changes in JetStream) with the same apply
//! step, skipping sessions that live on other nodes, and then adopts the
//! node: the marker gets the run id it noted and `floor = L`, but only if
//! the node is still that process (else it starts over). Each repair logs a
//! line and counts `sessionfold_repairs_total` (by reason) and
//! `sessionfold_repair_messages_total`. Every replica repairs on its own;
//! the work is idempotent, so the duplicate effort is the only cost.
//!
//! ## The window
//!
//! A repair can only re-apply what the event stream still holds:
//! `STREAM_MAX_AGE_SECS` / `STREAM_MAX_BYTES` bound how far back Redis may
//! lose data and still be repaired. A repair that finds its start sequence
//! already dropped replays what is left and says so in its log line.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt as _;
use redis::Value;

use sessionfold_common::metrics as names;
use sessionfold_common::redis_conn::RedisConnection;
pub use sessionfold_common::slots::{key_slot, tag_for_slot};
use sessionfold_core::Keys;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::applier::{Applier, Metadata, Pulled};
use crate::store::RedisStore;
use crate::worker::Processor;

/// Checks one node's marker and advances its floor (see the module docs).
///
/// KEYS[1] the marker. ARGV[1] `advance` or `adopt`; for `advance`
/// ARGV[2] the consumer's ack floor; for `adopt` ARGV[2] the run id noted
/// when the repair began and ARGV[3] the floor it reached.
///
/// Answers `{status, run_id, floor}`: `ok` (floor raised if lower),
/// `missing`, `restarted` (the marker's run id is not the node's), or for
/// `adopt`, `moved` (the node restarted during the repair).
pub const MARK_SCRIPT: &str = r#"
local marker = KEYS[1]
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local stored = redis.call('HMGET', marker, 'run_id', 'floor')
local floor = tonumber(stored[2]) or 0
if ARGV[1] == 'adopt' then
  if ARGV[2] ~= run_id then
    return {'moved', run_id, tostring(floor)}
  end
  local reached = tonumber(ARGV[3])
  if stored[1] == run_id and floor > reached then
    reached = floor
  end
  redis.call('HSET', marker, 'run_id', run_id, 'floor', tostring(reached))
  return {'ok', run_id, tostring(reached)}
end
if not stored[1] then
  return {'missing', run_id, '0'}
end
if stored[1] ~= run_id then
  return {'restarted', run_id, tostring(floor)}
end
local wanted = tonumber(ARGV[2])
if wanted > floor then
  redis.call('HSET', marker, 'floor', tostring(wanted))
  floor = wanted
end
return {'ok', run_id, tostring(floor)}
"#;

/// What the marker script found on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub status: MarkStatus,
    pub run_id: String,
    pub floor: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkStatus {
    Ok,
    Missing,
    Restarted,
    /// `adopt` found another process than the repair began with.
    Moved,
}

impl Mark {
    fn parse(reply: Value) -> anyhow::Result<Self> {
        let (status, run_id, floor): (String, String, String) = redis::from_redis_value(reply)?;
        let status = match status.as_str() {
            "ok" => MarkStatus::Ok,
            "missing" => MarkStatus::Missing,
            "restarted" => MarkStatus::Restarted,
            "moved" => MarkStatus::Moved,
            other => anyhow::bail!("the marker script answered {other:?}"),
        };
        Ok(Self {
            status,
            run_id,
            floor: floor.parse().context("the marker's floor")?,
        })
    }
}

/// One Redis node: where its marker lives and which slots it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub marker_key: String,
    /// Slot ranges it serves (inclusive); empty on a single server, which
    /// serves every session.
    pub slots: Vec<(u16, u16)>,
    /// `host:port`, for logs.
    pub address: String,
}

impl Node {
    fn serves(&self, slot: u16) -> bool {
        self.slots.is_empty()
            || self
                .slots
                .iter()
                .any(|(first, last)| (*first..=*last).contains(&slot))
    }
}

/// Why a repair runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No marker: the node was flushed, or is new.
    MarkerMissing,
    /// Another server process than the one the floor was written on.
    Restarted,
    /// The floor went down within one process.
    Rewound,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MarkerMissing => "marker_missing",
            Self::Restarted => "restarted",
            Self::Rewound => "rewound",
        }
    }
}

/// Decides from a node's mark and the floor this processor last saw there
/// whether the node must be repaired, and from which sequence. `None`: no.
pub fn repair_needed(mark: &Mark, floor_seen: Option<u64>) -> Option<(Reason, u64)> {
    match mark.status {
        MarkStatus::Missing => Some((Reason::MarkerMissing, 1)),
        MarkStatus::Restarted => Some((Reason::Restarted, mark.floor + 1)),
        MarkStatus::Ok | MarkStatus::Moved => match floor_seen {
            Some(seen) if mark.floor < seen => Some((Reason::Rewound, mark.floor + 1)),
            _ => None,
        },
    }
}

/// The marker key of a single server.
pub fn single_marker_key(key_prefix: &str) -> String {
    Keys::new(key_prefix).applied_marker()
}

/// The marker key of a cluster master: its hash tag maps to the master's
/// lowest slot, so the marker lives on that master and moves with that slot.
pub fn cluster_marker_key(key_prefix: &str, slot: u16) -> String {
    Keys::new(key_prefix).cluster_applied_marker(&tag_for_slot(slot))
}

/// What the durable consumer says.
struct Progress {
    /// Every frame up to it was acked (applied, or dead-lettered).
    ack_floor: u64,
    /// It never delivered a frame, so none can have been applied.
    nothing_delivered: bool,
    /// The last stream sequence it delivered: no frame after it was ever
    /// applied, so a repair need not replay past it (the consumer delivers
    /// those frames as usual).
    delivered: u64,
}

/// Runs the checks and repairs of one processor.
pub struct Repairer {
    js: jetstream::Context,
    stream_name: String,
    consumer_name: String,
    subject_filter: String,
    key_prefix: String,
    batch_size: usize,
    interval: Duration,
    applier: Applier<RedisStore>,
    lifecycle: Option<crate::lifecycle::Lifecycle>,
    redis: RedisConnection,
    script: redis::Script,
    /// The floor this processor last saw on each node, by marker key.
    floors_seen: HashMap<String, u64>,
}

impl Repairer {
    /// `None` when repair is turned off (`REPAIR_CHECK_INTERVAL_MS=0`).
    pub fn new(processor: &Processor) -> Option<Self> {
        let interval = processor.config.sink.repair_check_interval()?;
        Some(Self {
            js: processor.js.clone(),
            stream_name: processor.config.nats.stream_name.clone(),
            consumer_name: processor.config.worker.consumer_name.clone(),
            subject_filter: format!("{}.*", processor.config.nats.subject_prefix),
            key_prefix: processor.config.redis.key_prefix.clone(),
            batch_size: processor.config.worker.batch_size.max(1),
            interval,
            applier: processor.applier.clone(),
            lifecycle: processor.lifecycle.clone(),
            redis: processor.store.connection(),
            script: redis::Script::new(MARK_SCRIPT),
            floors_seen: HashMap::new(),
        })
    }

    /// Checks every node every interval until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(err) = self.check(&shutdown).await {
                tracing::debug!(error = %format!("{err:#}"), "applied-floor check failed; trying again");
            }
        }
    }

    /// One round: advance or repair every node.
    pub async fn check(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let progress = self.progress().await?;
        let ack_floor = progress.ack_floor.to_string();
        for node in self.nodes().await? {
            let mark = self.mark(&node, &["advance", &ack_floor]).await?;
            if mark.status == MarkStatus::Missing && progress.nothing_delivered {
                // A new deployment (or a new node): nothing was ever
                // applied, so nothing can be lost.
                self.mark(&node, &["adopt", &mark.run_id, "0"]).await?;
                continue;
            }
            let seen = self.floors_seen.get(&node.marker_key).copied();
            match repair_needed(&mark, seen) {
                None => {
                    self.floors_seen.insert(node.marker_key.clone(), mark.floor);
                    metrics::gauge!(names::APPLIED_FLOOR).set(mark.floor as f64);
                }
                Some((reason, from)) => {
                    self.repair(
                        &node,
                        reason,
                        from,
                        progress.delivered,
                        &mark.run_id,
                        shutdown,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// How far the durable consumer got.
    async fn progress(&self) -> anyhow::Result<Progress> {
        let stream = self.js.get_stream(&self.stream_name).await?;
        let info = stream.consumer_info(&self.consumer_name).await?;
        Ok(Progress {
            ack_floor: info.ack_floor.stream_sequence,
            nothing_delivered: info.delivered.stream_sequence == 0,
            delivered: info.delivered.stream_sequence,
        })
    }

    async fn mark(&mut self, node: &Node, args: &[&str]) -> anyhow::Result<Mark> {
        let mut invocation = self.script.key(&node.marker_key);
        for arg in args {
            invocation.arg(*arg);
        }
        let reply: Value = invocation
            .invoke_async(&mut self.redis)
            .await
            .with_context(|| format!("marking {}", node.address))?;
        Mark::parse(reply)
    }

    /// The nodes to watch: the server, or every master with slots.
    async fn nodes(&mut self) -> anyhow::Result<Vec<Node>> {
        if !self.redis.is_cluster() {
            return Ok(vec![Node {
                marker_key: single_marker_key(&self.key_prefix),
                slots: Vec::new(),
                address: "redis".to_owned(),
            }]);
        }
        let slots: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut self.redis)
            .await?;
        Ok(masters_of(&slots, &self.key_prefix))
    }

    /// Re-applies the stream from `from` to the last frame the consumer
    /// had delivered (`delivered`; nothing after it can have been applied)
    /// for the sessions `node` serves, then adopts the node as `run_id`.
    async fn repair(
        &mut self,
        node: &Node,
        reason: Reason,
        from: u64,
        delivered: u64,
        run_id: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut stream = self.js.get_stream(&self.stream_name).await?;
        let state = stream.info().await?.state.clone();
        let until = state.last_sequence.min(delivered);
        let start = from.max(state.first_sequence);
        metrics::counter!(names::REPAIRS_TOTAL, "reason" => reason.as_str()).increment(1);
        tracing::warn!(
            node = %node.address,
            reason = reason.as_str(),
            from,
            until,
            "Redis lost writes it had applied; re-applying the stream"
        );
        if start > from {
            tracing::warn!(
                node = %node.address,
                from,
                first_kept = state.first_sequence,
                "the stream no longer holds frames from {from} to {}: what they wrote cannot be restored",
                state.first_sequence - 1
            );
        }
        let replayed = if until >= start {
            self.replay(node, start, until, shutdown).await?
        } else {
            0
        };
        let adopted = self
            .mark(node, &["adopt", run_id, &until.to_string()])
            .await?;
        if adopted.status == MarkStatus::Moved {
            // Restarted again meanwhile: the next round starts over.
            tracing::warn!(node = %node.address, "the node restarted during its repair; repairing again");
            return Ok(());
        }
        self.floors_seen
            .insert(node.marker_key.clone(), adopted.floor);
        tracing::warn!(
            node = %node.address,
            reason = reason.as_str(),
            messages = replayed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            floor = adopted.floor,
            "repair done"
        );
        Ok(())
    }

    /// Applies every message from `start` to `until` whose session `node`
    /// serves. Returns how many were applied.
    async fn replay(
        &self,
        node: &Node,
        start: u64,
        until: u64,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<u64> {
        let stream = self.js.get_stream(&self.stream_name).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                // Named after the durable consumer, so that permissions can
                // be granted per stream (`…CREATE.<stream>.*`).
                name: Some(format!(
                    "{}-repair-{}",
                    self.consumer_name,
                    uuid::Uuid::new_v4().simple()
                )),
                filter_subject: self.subject_filter.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .context("creating the repair consumer")?;
        let mut messages = consumer.messages().await?;
        let mut batch: Vec<Pulled> = Vec::with_capacity(self.batch_size);
        let mut replayed = 0u64;
        let mut done = false;
        while !done {
            let next = tokio::select! {
                _ = shutdown.cancelled() => anyhow::bail!("shutting down"),
                next = tokio::time::timeout(Duration::from_secs(10), messages.next()) => next,
            };
            let message = match next {
                Ok(Some(message)) => message?,
                Ok(None) => anyhow::bail!("the repair consumer ended"),
                Err(_) => anyhow::bail!("no message for 10 s while repairing"),
            };
            let info = message.info().map_err(|err| anyhow::anyhow!("{err}"))?;
            let stream_sequence = info.stream_sequence;
            done = stream_sequence >= until;
            if stream_sequence > until {
                break;
            }
            if self.serves(node, &message.subject) {
                batch.push(Pulled {
                    subject: message.subject.to_string(),
                    payload: message.payload.clone(),
                    metadata: Some(Metadata {
                        stream_sequence,
                        delivered: 1,
                        published_ms: crate::worker::published_ms(&info),
                    }),
                });
            }
            if batch.len() >= self.batch_size || (done && !batch.is_empty()) {
                replayed += self.apply(&batch, shutdown).await? as u64;
                batch.clear();
            }
        }
        metrics::counter!(names::REPAIR_MESSAGES_TOTAL).increment(replayed);
        Ok(replayed)
    }

    /// Applies one replayed batch; outages are waited out like the live path.
    async fn apply(&self, batch: &[Pulled], shutdown: &CancellationToken) -> anyhow::Result<usize> {
        let sequence = |pulled: &Pulled| pulled.metadata.map(|m| m.stream_sequence);
        let span = tracing::info_span!(
            "repair_batch",
            stream_sequence = batch.first().and_then(sequence),
            last_stream_sequence = batch.last().and_then(sequence),
            messages = batch.len()
        );
        let mut outcome = self
            .applier
            .apply(batch, || async {}, shutdown)
            .instrument(span)
            .await;
        if shutdown.is_cancelled() {
            anyhow::bail!("shutting down");
        }
        // A session rebuilt from scratch arms its timer again.
        if let Some(lifecycle) = &self.lifecycle {
            let unscheduled = lifecycle.schedule_armed(batch, &mut outcome).await;
            if unscheduled > 0 {
                anyhow::bail!("{unscheduled} timers of re-applied sessions not scheduled");
            }
        }
        Ok(outcome
            .outcomes
            .iter()
            .filter(|outcome| **outcome == crate::settle::Outcome::Stored)
            .count())
    }

    fn serves(&self, node: &Node, subject: &str) -> bool {
        if node.slots.is_empty() {
            return true;
        }
        match self.applier.subjects.session_of_event(subject) {
            Some(session) => {
                node.serves(key_slot(self.applier.keys.session(&session).doc.as_bytes()))
            }
            // Poison: the live path dead-letters it.
            None => false,
        }
    }
}

/// The masters of a `CLUSTER SLOTS` answer, each with its slot ranges and
/// its marker key (at its lowest slot).
pub fn masters_of(slots: &Value, key_prefix: &str) -> Vec<Node> {
    sessionfold_common::slots::masters(slots)
        .into_iter()
        .map(|master| Node {
            marker_key: cluster_marker_key(key_prefix, master.lowest_slot()),
            slots: master.slots,
            address: master.address,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::*;

    fn mark(status: MarkStatus, floor: u64) -> Mark {
        Mark {
            status,
            run_id: "r".to_owned(),
            floor,
        }
    }

    #[test]
    fn a_missing_marker_repairs_from_the_start() {
        assert_eq!(
            repair_needed(&mark(MarkStatus::Missing, 0), None),
            Some((Reason::MarkerMissing, 1))
        );
    }

    #[test]
    fn another_process_repairs_from_after_its_floor() {
        assert_eq!(
            repair_needed(&mark(MarkStatus::Restarted, 41), Some(90)),
            Some((Reason::Restarted, 42))
        );
        assert_eq!(
            repair_needed(&mark(MarkStatus::Restarted, 41), None),
            Some((Reason::Restarted, 42))
        );
    }

    #[test]
    fn a_floor_below_what_was_seen_repairs_and_an_advancing_one_does_not() {
        assert_eq!(repair_needed(&mark(MarkStatus::Ok, 90), Some(90)), None);
        assert_eq!(repair_needed(&mark(MarkStatus::Ok, 95), Some(90)), None);
        assert_eq!(repair_needed(&mark(MarkStatus::Ok, 95), None), None);
        assert_eq!(
            repair_needed(&mark(MarkStatus::Ok, 70), Some(90)),
            Some((Reason::Rewound, 71))
        );
    }

    #[test]
    fn key_slots_agree_with_the_redis_client() {
        for key in [
            "",
            "a",
            "sf:doc:{e6fa79ca-d142}",
            "x{}y",
            "{a}{b}",
            "{",
            "s123",
            "123456789",
        ] {
            assert_eq!(
                Slot::new(key_slot(key.as_bytes())),
                Some(Slot::for_key(key.as_bytes())),
                "{key:?}"
            );
        }
        // The value the Redis Cluster specification gives.
        assert_eq!(key_slot(b"123456789"), 0x31c3);
    }

    #[test]
    fn every_slot_has_a_short_tag_that_maps_to_it() {
        for slot in [0u16, 1, 5461, 10923, 16383] {
            let tag = tag_for_slot(slot);
            assert!(tag.len() <= 8, "{tag}");
            assert_eq!(key_slot(tag.as_bytes()), slot);
            let key = cluster_marker_key("sf:", slot);
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
        assert_eq!(single_marker_key("sf:"), "sf:applied");
    }

    #[test]
    fn masters_are_read_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |first: i64, last: i64, master: Value| {
            Value::Array(vec![Value::Int(first), Value::Int(last), master])
        };
        let slots = Value::Array(vec![
            range(5461, 10922, node("127.0.0.1", 7001)),
            range(0, 5460, node("127.0.0.1", 7000)),
            range(10923, 16383, node("127.0.0.1", 7002)),
            range(16000, 16010, node("127.0.0.1", 7000)),
        ]);
        let masters = masters_of(&slots, "sf:");
        assert_eq!(masters.len(), 3);
        assert_eq!(masters[0].address, "127.0.0.1:7000");
        assert_eq!(masters[0].slots, [(0, 5460), (16000, 16010)]);
        assert_eq!(masters[0].marker_key, cluster_marker_key("sf:", 0));
        assert!(masters[0].serves(16005));
        assert!(!masters[0].serves(6000));
        assert_eq!(masters[2].marker_key, cluster_marker_key("sf:", 10923));
    }

    #[test]
    fn the_script_answer_is_parsed() {
        let reply = Value::Array(vec![
            Value::BulkString(b"restarted".to_vec()),
            Value::BulkString(b"abc".to_vec()),
            Value::BulkString(b"17".to_vec()),
        ]);
        assert_eq!(
            Mark::parse(reply).unwrap(),
            Mark {
                status: MarkStatus::Restarted,
                run_id: "abc".to_owned(),
                floor: 17
            }
        );
    }
}
