//! Freshness: how long after a frame is sent its events can be read through
//! `GET /data`, at a steady rate.
//!
//! `connections` producers each send one frame of `events_per_frame` events
//! per second, their starts spread evenly over the first second (100 × 50 =
//! 5 000 events/s). When a frame is sent, a reader starts polling `GET /data`
//! of its session every millisecond until the document holds the frame's
//! last event (a name no other event has); the latency is from just before
//! the frame was written to the socket until that answer arrived.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde_json::json;
use sessionfold_client::{FrameOutcome, Producer, ProducerConfig};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::stats::Samples;
use crate::system::{Servers, unique_names};

/// What the freshness run measured.
#[derive(Debug, Clone)]
pub struct Freshness {
    pub connections: usize,
    pub events_per_frame: usize,
    /// Events per second actually sent.
    pub events_per_sec: f64,
    /// Send → visible through `GET /data`.
    pub visible: Samples,
    /// Send → acknowledged on the socket.
    pub acked: Samples,
    /// Frames never seen within the poll timeout.
    pub never_visible: usize,
    /// `GET /data` requests the readers made.
    pub polls: u64,
}

const POLL_INTERVAL: Duration = Duration::from_millis(1);
const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// The `k`-th frame of a session: in-order timestamps, unique names.
fn frame(k: usize, events: usize) -> String {
    let base = 1_700_000_000 + (k * events) as u64;
    let events: Vec<_> = (0..events)
        .map(|i| {
            json!({
                "type": "EVENT",
                "timestamp": base + i as u64,
                "name": format!("f{k}-e{i}"),
                "props": {"page": format!("/p/{}", i % 7), "n": i},
            })
        })
        .collect();
    serde_json::Value::Array(events).to_string()
}

pub async fn run(
    servers: &Servers,
    connections: usize,
    events_per_frame: usize,
    duration: Duration,
) -> anyhow::Result<Freshness> {
    let names = unique_names();
    let ingest = servers.start_ingest(&names).await?;
    let processors = servers.start_processors(&names, 1).await?;
    let api = servers.start_api(&names).await?;
    let producer = Producer::new(ProducerConfig::new(&format!(
        "ws://{}/websocket",
        ingest.addr()
    ))?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let data_url = Arc::new(format!("http://{}/data", api.addr()));
    let frames_each = duration.as_secs().max(1) as usize;
    let visible = Arc::new(Mutex::new((Samples::new(), 0usize, 0u64)));
    let acked = Arc::new(Mutex::new(Samples::new()));
    let last_send = Arc::new(Mutex::new(None::<Instant>));
    let started = Instant::now() + Duration::from_millis(500);
    let mut producers = tokio::task::JoinSet::new();
    for c in 0..connections {
        let mut sender = producer.session(&format!("fresh-{c:04}"))?;
        let session_id = sender.session_id().to_owned();
        let offset = Duration::from_secs(1).mul_f64(c as f64 / connections as f64);
        let (http, data_url, visible, acked, last_send) = (
            http.clone(),
            data_url.clone(),
            visible.clone(),
            acked.clone(),
            last_send.clone(),
        );
        producers.spawn(async move {
            let mut readers = tokio::task::JoinSet::new();
            for k in 0..frames_each {
                let text = frame(k, events_per_frame);
                let needle = format!("\"f{k}-e{}\"", events_per_frame - 1);
                tokio::time::sleep_until(started + offset + Duration::from_secs(k as u64)).await;
                let sent = Instant::now();
                {
                    let mut last = last_send.lock().await;
                    *last = Some(last.map_or(sent, |last: Instant| last.max(sent)));
                }
                let (http, url, visible) = (http.clone(), data_url.clone(), visible.clone());
                let session = session_id.clone();
                readers.spawn(async move {
                    let (seen, polls) = poll_until_visible(&http, &url, &session, &needle).await;
                    let mut visible = visible.lock().await;
                    visible.2 += polls;
                    match seen {
                        Some(at) => visible.0.push(at - sent),
                        None => visible.1 += 1,
                    }
                });
                match sender.send_frame(&text).await {
                    Ok(FrameOutcome::Accepted { .. }) => acked.lock().await.push(sent.elapsed()),
                    Ok(FrameOutcome::Rejected(error)) => bail!("frame refused: {error:?}"),
                    Err(err) => bail!("frame not acknowledged: {err}"),
                }
            }
            while readers.join_next().await.is_some() {}
            sender.close().await;
            anyhow::Ok(())
        });
    }
    while let Some(joined) = producers.join_next().await {
        joined??;
    }
    // Every frame but the last was sent between the first send (at
    // `started`) and the last one.
    let span = last_send
        .lock()
        .await
        .map_or(Duration::ZERO, |last| last - started);
    let events_per_sec =
        ((connections * frames_each - 1) * events_per_frame) as f64 / span.as_secs_f64();
    drop(api);
    drop(processors);
    drop(ingest);
    servers.clean(&names).await?;
    let (visible, never_visible, polls) = Arc::try_unwrap(visible)
        .map_err(|_| anyhow::anyhow!("readers still running"))?
        .into_inner();
    let acked = Arc::try_unwrap(acked)
        .map_err(|_| anyhow::anyhow!("producers still running"))?
        .into_inner();
    Ok(Freshness {
        connections,
        events_per_frame,
        events_per_sec,
        visible,
        acked,
        never_visible,
        polls,
    })
}

/// Polls the session's document until it contains `needle`; when it did
/// and how many requests it took.
async fn poll_until_visible(
    http: &reqwest::Client,
    url: &str,
    session: &str,
    needle: &str,
) -> (Option<Instant>, u64) {
    let deadline = Instant::now() + POLL_TIMEOUT;
    let mut polls = 0;
    while Instant::now() < deadline {
        polls += 1;
        if let Ok(response) = http.get(url).query(&[("session_id", session)]).send().await
            && response.status().is_success()
            && let Ok(body) = response.text().await
            && body.contains(needle)
        {
            return (Some(Instant::now()), polls);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    (None, polls)
}
