//! Storage near the floor: what the apply step costs Redis, next to the
//! least RedisJSON itself needs.
//!
//! - [`floor`]: the throughput workload's EVENTs appended with plain
//!   pipelined `JSON.ARRAPPEND` (one call per frame, so about 50 events a
//!   call), no de-duplication and no ordering: the floor.
//! - [`apply_cpu`]: the same workload through the apply step, with and
//!   without session summaries, batched as the raw apply run batches it.
//! - [`storage`]: bytes per child of one session of 10, 10 000 or 100 000
//!   children, split by key, next to the events' own bytes.
//!
//! Redis CPU is the server's own (`INFO cpu`: `used_cpu_user` +
//! `used_cpu_sys`, from `getrusage`), so the client's share and round trips
//! do not blur it.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::json;
use sessionfold_client::loadgen::Workload;
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::{Delivery, EventKind, Frame, Limits, SessionId};
use sessionfold_processor::store::{
    Applied, CLOSE_SCRIPT, Invocation, LifecycleSpec, RedisStore, Store,
};

use crate::raw::interleaved;
use crate::system::{Servers, unique_names};

/// Redis's work for one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RedisCost {
    pub events: usize,
    /// Redis CPU seconds.
    pub cpu_seconds: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl RedisCost {
    pub fn cpu_us_per_event(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.events.max(1) as f64
    }

    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// Which apply step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The current step (`apply.lua`).
    Current,
    /// The current step keeping no session summaries.
    CurrentWithoutSummaries,
}

/// `used_cpu_user + used_cpu_sys` of the server, in seconds.
async fn redis_cpu(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(redis).await?;
    let field = |name: &str| -> anyhow::Result<f64> {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
            .with_context(|| format!("no {name} in INFO cpu"))
    };
    Ok(field("used_cpu_user")? + field("used_cpu_sys")?)
}

/// The frames of the workload in stream order, parsed, with their session.
fn frames(workload: &Workload) -> anyhow::Result<Vec<(SessionId, Delivery)>> {
    interleaved(workload)
        .into_iter()
        .enumerate()
        .map(|(i, frame)| {
            let events = Frame::parse(&frame.text, &frame.session, &Limits::default())
                .map_err(|err| anyhow::anyhow!("{err:?}"))?
                .events;
            Ok((
                frame.session,
                Delivery {
                    stream_sequence: i as u64 + 1,
                    events,
                },
            ))
        })
        .collect()
}

/// Apply steps of the workload through [`apply_cpu`]: per batch of
/// `batch_frames` frames, one for each session in it.
pub fn steps(workload: &Workload, batch_frames: usize) -> usize {
    interleaved(workload)
        .chunks(batch_frames.max(1))
        .map(|batch| {
            batch
                .iter()
                .map(|frame| &frame.session)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
        .sum()
}

/// EVENTs of the workload.
fn children(frames: &[(SessionId, Delivery)]) -> usize {
    frames
        .iter()
        .flat_map(|(_, delivery)| &delivery.events)
        .filter(|event| event.kind == EventKind::Event)
        .count()
}

/// The floor: every EVENT appended, `batch_frames` frames a pipeline.
pub async fn floor(
    servers: &Servers,
    workload: &Workload,
    batch_frames: usize,
) -> anyhow::Result<RedisCost> {
    let names = unique_names();
    let run_keys = sessionfold_harness::run_keys(&names);
    let frames = frames(workload)?;
    let mut redis = servers.redis_connection().await?;
    // The documents exist before the clock starts, as they would after a
    // session's first frame.
    let mut create = redis::pipe();
    for session in workload.sessions.iter().map(|s| &s.session_id) {
        let session = SessionId::parse(session)?;
        create
            .cmd("JSON.SET")
            .arg(run_keys.session(&session).doc)
            .arg("$")
            .arg(sessionfold_core::fold::empty_document(session.as_str()).to_string())
            .ignore();
    }
    create.query_async::<()>(&mut redis).await?;
    let pipelines: Vec<redis::Pipeline> = frames
        .chunks(batch_frames.max(1))
        .map(|batch| {
            let mut pipe = redis::pipe();
            for (session, delivery) in batch {
                let mut cmd = redis::cmd("JSON.ARRAPPEND");
                cmd.arg(run_keys.session(session).doc).arg("$.children");
                for event in delivery
                    .events
                    .iter()
                    .filter(|e| e.kind == EventKind::Event)
                {
                    cmd.arg(event.to_json());
                }
                pipe.add_command(cmd).ignore();
            }
            pipe
        })
        .collect();
    let cpu_before = redis_cpu(&mut redis).await?;
    let started = Instant::now();
    for pipe in &pipelines {
        pipe.query_async::<()>(&mut redis).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = redis_cpu(&mut redis).await? - cpu_before;
    servers.clean(&names).await?;
    Ok(RedisCost {
        events: children(&frames),
        cpu_seconds,
        seconds,
    })
}

/// The workload through the apply step of `layout`: batches of
/// `batch_frames` frames grouped by session, one pipeline a batch, in
/// order. Counts every EVENT sent (repeats included), as the floor does.
pub async fn apply_cpu(
    servers: &Servers,
    workload: &Workload,
    batch_frames: usize,
    layout: Layout,
) -> anyhow::Result<RedisCost> {
    let names = unique_names();
    let run_keys = sessionfold_harness::run_keys(&names);
    let frames = frames(workload)?;
    let batches: Vec<BTreeMap<SessionId, Vec<Delivery>>> = frames
        .chunks(batch_frames.max(1))
        .map(|batch| {
            let mut sessions: BTreeMap<SessionId, Vec<Delivery>> = BTreeMap::new();
            for (session, delivery) in batch {
                sessions
                    .entry(session.clone())
                    .or_default()
                    .push(delivery.clone());
            }
            sessions
        })
        .collect();
    let settings = RedisSettings {
        key_prefix: names.key_prefix.clone(),
        ..RedisSettings::local(servers.redis_url())
    };
    let mut redis = servers.redis_connection().await?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut redis)
        .await?;
    let store = RedisStore::connect(&settings).await?;
    let invocations: Vec<Vec<Invocation>> = batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|(session, deliveries)| {
                    let invocation = Invocation::new(&run_keys, session, deliveries, 0);
                    if layout == Layout::CurrentWithoutSummaries {
                        invocation.without_summary()
                    } else {
                        invocation
                    }
                })
                .collect()
        })
        .collect();
    store.apply(&[]).await.context("warming up the store")?;
    let cpu_before = redis_cpu(&mut redis).await?;
    let started = Instant::now();
    for batch in &invocations {
        for applied in store.apply(batch).await? {
            if let Applied::Refused(reason) = applied {
                bail!("the apply step refused a batch: {reason}");
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = redis_cpu(&mut redis).await? - cpu_before;
    if std::env::var_os("BENCH_COMMANDSTATS").is_some() {
        // Where Redis's time goes, by command (for profiling).
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut redis)
            .await?;
        eprintln!("commandstats of the {layout:?} apply run:\n{info}");
    }
    servers.clean(&names).await?;
    Ok(RedisCost {
        events: children(&frames),
        cpu_seconds,
        seconds,
    })
}

/// Bytes of one session of `children` children.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Storage {
    pub layout: &'static str,
    pub children: usize,
    /// The events' own JSON, per child.
    pub event_bytes: f64,
    /// `MEMORY USAGE` of the document, per child.
    pub document_bytes: f64,
    /// `MEMORY USAGE` of every other key of the session, per child, by key.
    pub bookkeeping: Vec<(String, f64)>,
    /// The same once the session closed and its lateness passed (the
    /// current layout only): what a finished session keeps beside its
    /// document.
    pub finished_bookkeeping: Option<Vec<(String, f64)>>,
}

impl Storage {
    pub fn bookkeeping_bytes(&self) -> f64 {
        self.bookkeeping.iter().map(|(_, bytes)| bytes).sum()
    }

    pub fn finished_bookkeeping_bytes(&self) -> Option<f64> {
        self.finished_bookkeeping
            .as_ref()
            .map(|keys| keys.iter().map(|(_, bytes)| bytes).sum())
    }
}

/// Lateness 1 ms, idle 1 ms: the bench's session closes and compacts as
/// soon as the close step runs past its last arrival.
const BENCH_LIFECYCLE: LifecycleSpec = LifecycleSpec {
    lateness_ms: 1,
    idle_ms: 1,
    grace_ms: 1,
    max_ms: 0,
};

/// Runs the close step until the session is compacted: closed, its
/// finished message recorded as published, then past its lateness.
async fn close_and_compact(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &sessionfold_core::SessionKeys,
    now_ms: u64,
) -> anyhow::Result<()> {
    let script = redis::Script::new(CLOSE_SCRIPT);
    let spec = BENCH_LIFECYCLE.to_arg();
    let run = |mode: &'static str, now: u64, revision: String| {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&keys.doc)
            .key(&keys.state)
            .key(&keys.summary)
            .key(&keys.names)
            .arg(mode)
            .arg(now)
            .arg(revision)
            .arg(&spec);
        invocation
    };
    let closed: Vec<redis::Value> = run("due", now_ms, String::new())
        .invoke_async(redis)
        .await?;
    let text = |value: &redis::Value| -> String {
        match value {
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            other => format!("{other:?}"),
        }
    };
    if closed.first().map(text).as_deref() != Some("closed") {
        bail!("the close step did not close the bench's session: {closed:?}");
    }
    let revision = text(&closed[2]);
    let _: i64 = run("published", now_ms, revision)
        .invoke_async(redis)
        .await?;
    let compacted: Vec<redis::Value> = run("due", now_ms + 10, String::new())
        .invoke_async(redis)
        .await?;
    if compacted.first().map(text).as_deref() != Some("compacted_now") {
        bail!("the close step did not compact the bench's session: {compacted:?}");
    }
    Ok(())
}

/// When the storage run's frames arrived (a JetStream time, ms).
const ARRIVED_MS: u64 = 1_764_000_000_000;

/// One event of about 90 bytes, as the growth run sends.
fn event(timestamp: u64) -> serde_json::Value {
    json!({
        "type": "EVENT",
        "timestamp": timestamp,
        "name": format!("e-{timestamp}"),
        "props": {"page": format!("/p/{}", timestamp % 7), "n": timestamp % 1000},
    })
}

async fn memory_usage(
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> anyhow::Result<f64> {
    let bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(redis)
        .await?;
    Ok(bytes.unwrap_or(0) as f64)
}

/// Fills one session per size with in-order events (frames of 1 000) and
/// measures its keys, for both layouts.
pub async fn storage(servers: &Servers, sizes: &[usize]) -> anyhow::Result<Vec<Storage>> {
    let mut results = Vec::new();
    for &children in sizes {
        let names = unique_names();
        let run_keys = sessionfold_harness::run_keys(&names);
        let settings = RedisSettings {
            key_prefix: names.key_prefix.clone(),
            ..RedisSettings::local(servers.redis_url())
        };
        let session = SessionId::parse(&format!("storage-{children}"))?;
        let mut event_bytes = 0usize;
        let mut deliveries = Vec::new();
        for (frame, start) in (0..children).step_by(1000).enumerate() {
            let events: Vec<serde_json::Value> = (start..(start + 1000).min(children))
                .map(|t| event(t as u64))
                .collect();
            event_bytes += events.iter().map(|e| e.to_string().len()).sum::<usize>();
            let text = serde_json::Value::Array(events).to_string();
            let limits = Limits {
                max_frame_bytes: usize::MAX,
                max_events_per_frame: usize::MAX,
                max_event_bytes: usize::MAX,
            };
            deliveries.push(Delivery {
                stream_sequence: frame as u64 + 1,
                events: Frame::parse(&text, &session, &limits)
                    .map_err(|err| anyhow::anyhow!("{err:?}"))?
                    .events,
            });
        }
        let keys = run_keys.session(&session);
        let store = RedisStore::connect(&settings).await?;
        for delivery in &deliveries {
            store
                .apply(&[
                    Invocation::new(&run_keys, &session, std::slice::from_ref(delivery), 0)
                        .with_arrivals(ARRIVED_MS, ARRIVED_MS, None)
                        .with_lifecycle(Some(&BENCH_LIFECYCLE)),
                ])
                .await?;
        }
        let bookkeeping_keys = [
            ("state", keys.state.clone()),
            ("summary", keys.summary.clone()),
            ("names", keys.names.clone()),
        ];
        let mut redis = servers.redis_connection().await?;
        let per_child = |bytes: f64| bytes / children.max(1) as f64;
        let document_bytes = per_child(memory_usage(&mut redis, &keys.doc).await?);
        let mut bookkeeping = Vec::new();
        for (name, key) in &bookkeeping_keys {
            bookkeeping.push((
                (*name).to_owned(),
                per_child(memory_usage(&mut redis, key).await?),
            ));
        }
        close_and_compact(&mut redis, &keys, ARRIVED_MS + 1_000).await?;
        let mut finished = Vec::new();
        for (name, key) in &bookkeeping_keys {
            finished.push((
                (*name).to_owned(),
                per_child(memory_usage(&mut redis, key).await?),
            ));
        }
        let finished_bookkeeping = Some(finished);
        results.push(Storage {
            layout: "current",
            children,
            event_bytes: per_child(event_bytes as f64),
            document_bytes,
            bookkeeping,
            finished_bookkeeping,
        });
        servers.clean(&names).await?;
    }
    Ok(results)
}

/// The longest single apply step, from Redis's slow log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LongestStep {
    pub children_before: usize,
    pub frame_events: usize,
    /// One step for the whole frame.
    pub whole_ms: f64,
    /// Slices of `slice_events`.
    pub sliced_ms: f64,
    pub slices: usize,
    pub slice_events: usize,
}

async fn slowlog_max_ms(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(10_000)
        .query_async(redis)
        .await?;
    let mut longest_us = 0i64;
    for entry in entries {
        if let redis::Value::Array(fields) = entry
            && let Some(redis::Value::Int(us)) = fields.get(2)
        {
            longest_us = longest_us.max(*us);
        }
    }
    Ok(longest_us as f64 / 1e3)
}

/// A session of `children_before` in-order children, then one frame of
/// `frame_events` with a tenth out of order, applied whole and in slices
/// of `slice_events` (two copies of the session): the longest step of each.
pub async fn longest_step(
    servers: &Servers,
    children_before: usize,
    frame_events: usize,
    slice_events: usize,
) -> anyhow::Result<LongestStep> {
    let names = unique_names();
    let run_keys = sessionfold_harness::run_keys(&names);
    let settings = RedisSettings {
        key_prefix: names.key_prefix.clone(),
        ..RedisSettings::local(servers.redis_url())
    };
    let store = RedisStore::connect(&settings).await?;
    let mut redis = servers.redis_connection().await?;
    let limits = Limits {
        max_frame_bytes: usize::MAX,
        max_events_per_frame: usize::MAX,
        max_event_bytes: usize::MAX,
    };
    let mut results = Vec::new();
    for (copy, slice) in [("whole", 0), ("sliced", slice_events)] {
        let session = SessionId::parse(&format!("longest-{copy}"))?;
        let frame = |sequence: u64, timestamps: Vec<u64>| -> anyhow::Result<Delivery> {
            let events: Vec<serde_json::Value> = timestamps.into_iter().map(event).collect();
            let text = serde_json::Value::Array(events).to_string();
            Ok(Delivery {
                stream_sequence: sequence,
                events: Frame::parse(&text, &session, &limits)
                    .map_err(|err| anyhow::anyhow!("{err:?}"))?
                    .events,
            })
        };
        for (at, start) in (0..children_before).step_by(1000).enumerate() {
            let before = frame(
                at as u64 + 1,
                (start..(start + 1000).min(children_before))
                    .map(|t| t as u64)
                    .collect(),
            )?;
            store
                .apply(&[Invocation::new(&run_keys, &session, &[before], 0)])
                .await?;
        }
        // A tenth of the frame goes back into the session's range.
        let timestamps: Vec<u64> = (0..frame_events)
            .map(|i| {
                if i % 10 == 0 {
                    (i as u64 * 7_919) % children_before.max(1) as u64
                } else {
                    (children_before + i) as u64
                }
            })
            .collect();
        let big = frame(1_000_000, timestamps)?;
        let slices = Invocation::slices(&run_keys, &session, &[big], 0, slice);
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(0)
            .query_async::<()>(&mut redis)
            .await?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-max-len")
            .arg(10_000)
            .query_async::<()>(&mut redis)
            .await?;
        redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async::<()>(&mut redis)
            .await?;
        let count = slices.len();
        for slice in slices {
            store.apply(&[slice]).await?;
        }
        let longest = slowlog_max_ms(&mut redis).await?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(10_000)
            .query_async::<()>(&mut redis)
            .await?;
        results.push((longest, count));
    }
    servers.clean(&names).await?;
    Ok(LongestStep {
        children_before,
        frame_events,
        whole_ms: results[0].0,
        sliced_ms: results[1].0,
        slices: results[1].1,
        slice_events,
    })
}
