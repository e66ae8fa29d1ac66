//! The limits of the parts, without sessionfold around them:
//!
//! - [`jetstream_publish`]: the workload's frames published with async-nats
//!   alone, on the same subjects, with the same headers and the same stream
//!   settings as ingest, at most `outstanding` PubAcks awaited at once;
//! - [`redis_apply`]: the same frames folded by the apply step called
//!   directly ([`Store::apply`]), in batches grouped by session as the
//!   processor builds them, pipelined.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sessionfold_client::loadgen::Workload;
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::{Delivery, Frame, Limits, SessionId};
use sessionfold_processor::store::{Applied, Invocation, RedisStore, Store};
use tokio::time::Instant;

use crate::system::{Servers, nats_settings, unique_names};

/// How much went through, in how long.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Throughput {
    pub frames: usize,
    pub events: usize,
    pub seconds: f64,
}

impl Throughput {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    pub fn frames_per_sec(&self) -> f64 {
        self.frames as f64 / self.seconds
    }
}

/// One frame of the workload in stream order.
pub struct StreamFrame {
    pub session: SessionId,
    pub text: String,
    pub events: usize,
}

/// The workload's frames in the order many concurrent producers would store
/// them: the first frame of every session, then every second frame, … (each
/// session's frames stay in order).
pub fn interleaved(workload: &Workload) -> Vec<StreamFrame> {
    let longest = workload
        .sessions
        .iter()
        .map(|s| s.frames.len())
        .max()
        .unwrap_or(0);
    let mut frames = Vec::with_capacity(workload.frames());
    for round in 0..longest {
        for session in &workload.sessions {
            if let Some(text) = session.frames.get(round) {
                frames.push(StreamFrame {
                    session: SessionId::parse(&session.session_id).expect("a valid session id"),
                    text: text.clone(),
                    events: session.events_per_frame[round],
                });
            }
        }
    }
    frames
}

/// Publishes every frame with async-nats alone, at most `outstanding`
/// PubAcks in flight; timed from the first publish to the last PubAck.
pub async fn jetstream_publish(
    servers: &Servers,
    workload: &Workload,
    outstanding: usize,
) -> anyhow::Result<Throughput> {
    let names = unique_names();
    let run_subjects = sessionfold_harness::run_subjects(&names);
    let js = servers.jetstream().await?;
    sessionfold_common::jetstream::ensure_stream(&js, &nats_settings(&names, &servers.nats_url()))
        .await?;
    let frames: Vec<(String, Bytes, String)> = interleaved(workload)
        .into_iter()
        .enumerate()
        .map(|(i, frame)| {
            (
                run_subjects.event(&frame.session),
                Bytes::from(frame.text),
                format!("bench-{i}:1"),
            )
        })
        .collect();
    let events = workload.events();
    let started = Instant::now();
    let mut acks: FuturesUnordered<
        <async_nats::jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture,
    > = FuturesUnordered::new();
    for (subject, payload, message_id) in frames.iter().cloned() {
        while acks.len() >= outstanding {
            acks.next()
                .await
                .expect("not empty")
                .context("awaiting a PubAck")?;
        }
        let publish = PublishMessage::build()
            .payload(payload)
            .message_id(message_id)
            .header(REQUEST_ID_HEADER, "bench");
        acks.push(js.send_publish(subject, publish).await?.into_future());
    }
    while let Some(ack) = acks.next().await {
        ack.context("awaiting a PubAck")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored = js
        .get_stream(&names.stream)
        .await?
        .cached_info()
        .state
        .messages;
    if stored != frames.len() as u64 {
        bail!("{stored} messages stored of {} published", frames.len());
    }
    servers.clean(&names).await?;
    Ok(Throughput {
        frames: frames.len(),
        events,
        seconds,
    })
}

/// The header ingest adds to every frame (its value is the connection's id).
const REQUEST_ID_HEADER: &str = "Sessionfold-Request-Id";

/// Folds every frame into Redis through [`Store::apply`]: batches of
/// `batch_frames` consecutive frames (in stream order), grouped by session
/// into one invocation each, one pipeline per batch, `concurrency` batches in
/// flight. The invocations are built before the clock starts: this is the
/// limit of Redis, not of the processor's decoding. Returns the throughput
/// and how many documents equal the reference fold.
pub async fn redis_apply(
    servers: &Servers,
    workload: &Workload,
    batch_frames: usize,
    concurrency: usize,
) -> anyhow::Result<(Throughput, usize)> {
    let names = unique_names();
    let run_keys = sessionfold_harness::run_keys(&names);
    let frames = interleaved(workload);
    let mut deliveries_by_session: BTreeMap<SessionId, Vec<Delivery>> = BTreeMap::new();
    let mut batches: Vec<Vec<Invocation>> = Vec::new();
    for (chunk_index, chunk) in frames.chunks(batch_frames.max(1)).enumerate() {
        let mut sessions: BTreeMap<&SessionId, Vec<Delivery>> = BTreeMap::new();
        for (i, frame) in chunk.iter().enumerate() {
            let delivery = Delivery {
                stream_sequence: (chunk_index * batch_frames + i + 1) as u64,
                events: Frame::parse(&frame.text, &frame.session, &Limits::default())
                    .map_err(|err| anyhow::anyhow!("{err:?}"))?
                    .events,
            };
            deliveries_by_session
                .entry(frame.session.clone())
                .or_default()
                .push(delivery.clone());
            sessions.entry(&frame.session).or_default().push(delivery);
        }
        batches.push(
            sessions
                .into_iter()
                .map(|(session, deliveries)| Invocation::new(&run_keys, session, &deliveries, 0))
                .collect(),
        );
    }
    let settings = RedisSettings {
        key_prefix: names.key_prefix.clone(),
        ..RedisSettings::local(servers.redis_url())
    };
    let store = RedisStore::connect(&settings).await?;
    // Load the script outside the clock.
    store
        .clone()
        .apply(&[])
        .await
        .context("warming up the store")?;
    let batches = Arc::new(batches);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (batches, next, store) = (batches.clone(), next.clone(), store.clone());
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(index) else {
                    return anyhow::Ok(());
                };
                let applied = store.apply(batch).await?;
                if let Some(refused) = applied.iter().find_map(|a| match a {
                    Applied::Refused(reason) | Applied::Late(reason) => Some(reason),
                    Applied::Stored(_) => None,
                }) {
                    bail!("the apply step refused a batch: {refused}");
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let exact = exact_documents(servers, &run_keys, &deliveries_by_session).await?;
    servers.clean(&names).await?;
    Ok((
        Throughput {
            frames: frames.len(),
            events: workload.events(),
            seconds,
        },
        exact,
    ))
}

/// How many sessions' stored documents equal the reference fold of their
/// deliveries, byte for byte.
async fn exact_documents(
    servers: &Servers,
    keys: &sessionfold_core::Keys,
    deliveries: &BTreeMap<SessionId, Vec<Delivery>>,
) -> anyhow::Result<usize> {
    let mut redis = servers.redis_connection().await?;
    let mut exact = 0;
    for (session, deliveries) in deliveries {
        let stored: Option<String> = redis::cmd("JSON.GET")
            .arg(keys.session(session).doc)
            .query_async(&mut redis)
            .await?;
        let expected =
            serde_json::to_string(&sessionfold_core::fold(session.as_str(), deliveries))?;
        if stored.as_deref() == Some(expected.as_str()) {
            exact += 1;
        }
    }
    Ok(exact)
}

/// A short pause between measurements, so that one's tail (AOF fsync,
/// JetStream flushes) does not land in the next.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}
