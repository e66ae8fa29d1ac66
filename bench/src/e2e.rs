//! End-to-end throughput: real WebSocket producers
//! ([`sessionfold_client::loadgen`] over [`sessionfold_client::producer`]) send the workload
//! to `sessionfold ingest`; `replicas` × `sessionfold processor` fold it into
//! Redis. Timed from the first frame until the consumer has nothing pending
//! or unacknowledged, that is until every document is complete in Redis;
//! then every document is checked against the reference fold.

use std::time::Duration;

use anyhow::{Context as _, bail};
use sessionfold_client::loadgen::{self, LoadOptions, LoadReport, Workload};
use sessionfold_client::{Producer, ProducerConfig};
use sessionfold_harness::{read_documents, reference, run_keys};
use sessionfold_testkit::RunNames;
use tokio::time::Instant;

use crate::system::{CpuMeter, Servers, unique_names};

/// What one end-to-end run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndToEnd {
    pub replicas: usize,
    pub connections: usize,
    pub frames: usize,
    pub events: usize,
    /// From the first frame until the last acknowledgement on a socket.
    pub acked_seconds: f64,
    /// From the first frame until every document was complete in Redis.
    pub complete_seconds: f64,
    /// Sessions whose document equals the reference fold.
    pub exact_documents: usize,
    pub sessions: usize,
    /// CPU seconds each process used during the run.
    pub cpu: Vec<(String, f64)>,
}

impl EndToEnd {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.complete_seconds
    }
}

/// Runs the workload through ingest and `replicas` processors.
pub async fn run(
    servers: &Servers,
    workload: &Workload,
    replicas: usize,
    connections: usize,
) -> anyhow::Result<EndToEnd> {
    let names = unique_names();
    let ingest = servers
        .start_ingest(&names)
        .await
        .context("starting ingest")?;
    let processors = servers
        .start_processors(&names, replicas)
        .await
        .with_context(|| format!("starting {replicas} processor(s)"))?;
    let jetstream = servers.probe(&names).await.context("probing the stream")?;
    let mut config = ProducerConfig::new(&format!("ws://{}/websocket", ingest.addr()))?;
    config.deadline = Duration::from_secs(300);
    let producer = Producer::new(config);
    let options = LoadOptions {
        concurrency: connections,
        max_pause: Duration::ZERO,
        seed: workload.spec.seed,
    };
    let mut pids: Vec<(String, u32)> = vec![
        ("ingest".to_owned(), ingest.pid()),
        (
            "nats-server".to_owned(),
            servers.nats.pid().unwrap_or_default(),
        ),
        (
            "redis-server".to_owned(),
            servers.redis.pid().unwrap_or_default(),
        ),
    ];
    pids.extend(processors.iter().map(|p| (p.name().to_owned(), p.pid())));
    pids.push(("bench (producers)".to_owned(), std::process::id()));
    let named: Vec<(&str, u32)> = pids.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    let cpu = CpuMeter::start(&named);
    let started = Instant::now();
    let report = loadgen::run(workload, &producer, &options).await;
    let acked_seconds = report.elapsed.as_secs_f64();
    if let Some(failure) = report.failures().next() {
        bail!(
            "session {} stopped early: {:?}",
            failure.session_id,
            failure.error
        );
    }
    jetstream
        .wait_drained(Duration::from_secs(300))
        .await
        .context("waiting for the processors to drain the stream")?;
    let complete_seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    let exact_documents = exact_documents(servers, &names, workload, &report)
        .await
        .context("reading the documents")?;
    drop(processors);
    drop(ingest);
    servers.clean(&names).await?;
    Ok(EndToEnd {
        replicas,
        connections,
        frames: report.totals.acked as usize,
        events: report.events_acked,
        acked_seconds,
        complete_seconds,
        exact_documents,
        sessions: workload.sessions.len(),
        cpu,
    })
}

/// Sessions whose stored document equals, byte for byte, the reference fold
/// of their acknowledged frames (in acknowledgement order, which the client
/// makes their stream order).
pub async fn exact_documents(
    servers: &Servers,
    names: &RunNames,
    workload: &Workload,
    report: &LoadReport,
) -> anyhow::Result<usize> {
    let session_ids: Vec<String> = workload
        .sessions
        .iter()
        .map(|s| s.session_id.clone())
        .collect();
    let stored = read_documents(&servers.redis_url(), &run_keys(names), &session_ids).await?;
    let mut exact = 0;
    for ((result, load), stored) in report.sessions.iter().zip(&workload.sessions).zip(stored) {
        let expected =
            serde_json::to_string(&reference(&load.session_id, &result.acked_frames(load)))?;
        if stored.as_deref() == Some(expected.as_str()) {
            exact += 1;
        }
    }
    Ok(exact)
}
