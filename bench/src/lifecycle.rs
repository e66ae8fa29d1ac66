//! What sessions closing by themselves costs: end-to-end throughput with
//! `SESSION_LIFECYCLE` on and off, run alternately on the same servers, and
//! the timer lag of many sessions closing at once: frames for `sessions`
//! sessions published straight to JetStream, one processor with a short
//! idle timeout, and from each frame's PubAck plus the timeout to its
//! finished message's JetStream timestamp.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt as _;
use sessionfold_core::SessionId;
use sessionfold_harness::run_subjects;
use sessionfold_testkit::unique_name;

use crate::stats::Samples;
use crate::system::{Servers, unique_names};

/// What the timer-lag run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TimerLag {
    pub sessions: usize,
    pub idle_timeout_secs: u64,
    /// Seconds from the first frame's publication until every session closed.
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `sessions` sessions of one frame each, closed by a 2 s idle timeout.
pub async fn timer_lag(servers: &Servers, sessions: usize) -> anyhow::Result<TimerLag> {
    const IDLE_SECS: u64 = 2;
    let names = unique_names();
    let sessions_stream = unique_name("SESSIONS");
    let sessions_prefix = unique_name("sessions");
    let timers_stream = unique_name("TIMERS");
    servers.set_processor_env(vec![
        ("SESSION_IDLE_TIMEOUT_SECS", IDLE_SECS.to_string()),
        ("SESSIONS_STREAM", sessions_stream.clone()),
        ("SESSIONS_SUBJECT_PREFIX", sessions_prefix.clone()),
        ("TIMERS_STREAM", timers_stream.clone()),
        ("TIMERS_SUBJECT_PREFIX", unique_name("timers")),
    ]);
    let processors = servers.start_processors(&names, 1).await;
    servers.set_processor_env(Vec::new());
    let processors = processors?;
    let js = servers.jetstream().await?;
    let subjects = run_subjects(&names);
    let started = std::time::Instant::now();
    let mut acked_at: HashMap<String, u64> = HashMap::with_capacity(sessions);
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..sessions {
        let session = SessionId::parse(&format!("lag-{i}"))?;
        let frame = format!(r#"[{{"type":"SESSION_START","timestamp":{i}}}]"#);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("lag-{i}").as_str());
        let ack = js
            .publish_with_headers(subjects.event(&session), headers, frame.into())
            .await?;
        pending.push(async move { (session.token(), ack.await) });
        while pending.len() >= 200 {
            if let Some((token, ack)) = pending.next().await {
                ack.context("publishing a frame")?;
                acked_at.insert(token, now_ms());
            }
        }
    }
    while let Some((token, ack)) = pending.next().await {
        ack.context("publishing a frame")?;
        acked_at.insert(token, now_ms());
    }
    // The stream exists once the processor made it; closes come IDLE_SECS on.
    let stream = loop {
        match js.get_stream(&sessions_stream).await {
            Ok(stream) => break stream,
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("no finished-sessions stream: {e}"),
        }
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{sessions_prefix}.*"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut lags = Samples::new();
    let deadline = Duration::from_secs(IDLE_SECS + 300);
    while lags.len() < sessions {
        let message = tokio::time::timeout(deadline, messages.next())
            .await
            .context("finished sessions stopped coming")?
            .context("the finished-sessions stream ended")??;
        let token = message
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let Some(acked) = acked_at.get(&token) else {
            continue;
        };
        let published = message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .published;
        let published_ms = (published.unix_timestamp_nanos() / 1_000_000) as u64;
        let due = acked + IDLE_SECS * 1000;
        lags.push(Duration::from_millis(published_ms.saturating_sub(due)));
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(processors);
    servers.clean(&names).await?;
    // The compactions stay scheduled for the lateness (an hour): drop them
    // with their stream, so that the runs after this one do not carry them.
    for stream in [&timers_stream, &sessions_stream] {
        js.delete_stream(stream.as_str()).await?;
    }
    Ok(TimerLag {
        sessions,
        idle_timeout_secs: IDLE_SECS,
        seconds,
        p50_ms: lags.p50().as_secs_f64() * 1e3,
        p99_ms: lags.p99().as_secs_f64() * 1e3,
        max_ms: lags.max().as_secs_f64() * 1e3,
    })
}
