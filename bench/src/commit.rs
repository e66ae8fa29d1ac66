//! Group commit at ingest, measured for the throughput workload and for the
//! web mix ([`WorkloadSpec::web_mix`]) in one run:
//!
//! - nats-server's fsyncs per acknowledged frame ([`FsyncCounter`], `perf
//!   stat` on its syscalls), with ingest alone and with a processor folding
//!   (its lifecycle timers, finished-session messages and consumer state);
//! - raw JetStream publish of the workload's own frames, single messages
//!   and atomic batches;
//! - ingest's acknowledged rate and end to end, group commit on (ingest's
//!   defaults) and off (`PUBLISH_BATCH_MAX_FRAMES=1`, every frame alone);
//! - the same system with `sync_interval: always` and `2m`;
//! - a lone producer's send → ack latency at light load, on and off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use sessionfold_client::loadgen::{self, LoadOptions, Workload, WorkloadSpec};
use sessionfold_client::{FrameOutcome, Producer, ProducerConfig};
use sessionfold_common::batch_publish::{self, BatchMessage, BatchOutcome};
use sessionfold_testkit::{NatsOptions, RedisOptions};

use crate::raw::{self, interleaved};
use crate::report::{Row, Status};
use crate::stats::{Samples, count};
use crate::system::{REDIS_ARGS, Servers, nats_settings, unique_names};

/// The issue item every row of this section reports on.
const ITEM: u8 = 3;
/// The header ingest adds to every frame (its value is the connection's id).
const REQUEST_ID_HEADER: &str = "Sessionfold-Request-Id";
/// nats-server's single syscalls that make its store durable.
const FSYNC_EVENTS: &str = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync";
/// How long a processor waits after a session's last frame with
/// `SESSION_END` before closing it (its default `SESSION_END_GRACE_SECS`),
/// and how much longer the closes may take.
const CLOSE_WAIT: Duration = Duration::from_secs(10 + 30);

/// What the section measures with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The throughput workload's spec and producers.
    pub throughput: WorkloadSpec,
    pub throughput_connections: usize,
    /// Sessions and producers of the web mix.
    pub web_sessions: usize,
    pub web_connections: usize,
    /// PubAcks awaited at once by the single-message publisher.
    pub outstanding: usize,
    /// Frames per atomic batch, and batches in flight, of the raw batched
    /// publisher.
    pub batch_frames: usize,
    pub batches_in_flight: usize,
    /// Frames the lone producer sends, one at a time.
    pub latency_frames: usize,
}

/// nats-server's fsync and fdatasync calls over a stretch of time, counted
/// by `perf stat` attached to its process; `None` where perf is missing or
/// refuses.
pub struct FsyncCounter {
    perf: Option<(tokio::process::Child, tempfile::NamedTempFile)>,
}

impl FsyncCounter {
    /// Attaches to `pid`; counting starts when this returns.
    pub async fn attach(pid: Option<u32>) -> Self {
        let Some(pid) = pid else {
            return Self { perf: None };
        };
        let Ok(output) = tempfile::NamedTempFile::new() else {
            return Self { perf: None };
        };
        let spawned = tokio::process::Command::new("perf")
            .args(["stat", "-x", ",", "-e", FSYNC_EVENTS, "-o"])
            .arg(output.path())
            .args(["-p", &pid.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(mut child) = spawned else {
            return Self { perf: None };
        };
        // perf opens its counters after it starts; one that refused has
        // exited by then.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !matches!(child.try_wait(), Ok(None)) {
            return Self { perf: None };
        }
        Self {
            perf: Some((child, output)),
        }
    }

    /// Stops counting: the calls since [`FsyncCounter::attach`].
    pub async fn stop(self) -> Option<u64> {
        let (mut child, output) = self.perf?;
        let pid = child.id()?;
        // perf prints its counts when interrupted, as after Ctrl-C.
        let interrupted = tokio::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await
            .ok()?;
        if !interrupted.success() {
            return None;
        }
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .ok()?
            .ok()?;
        parse_perf_counts(&std::fs::read_to_string(output.path()).ok()?)
    }
}

/// The sum of the counts in `perf stat -x,` output; `None` when an event
/// was not counted.
fn parse_perf_counts(text: &str) -> Option<u64> {
    let mut total = 0;
    let mut events = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(',');
        let value = fields.next()?;
        let event = fields.nth(1)?;
        if !event.starts_with("syscalls:") {
            continue;
        }
        total += value.parse::<u64>().ok()?;
        events += 1;
    }
    (events > 0).then_some(total)
}

/// Fsyncs per frame, or "n/a" without a count.
fn per_frame(fsyncs: Option<u64>, frames: usize) -> Option<f64> {
    fsyncs.map(|n| n as f64 / frames.max(1) as f64)
}

fn fsync_text(per_frame: Option<f64>) -> String {
    per_frame.map_or("n/a".to_owned(), |f| format!("{f:.3}"))
}

/// A raw publish of a workload's frames.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RawRun {
    /// `singles` (≤ `outstanding` PubAcks awaited) or `atomic batches`.
    pub how: String,
    pub frames: usize,
    pub events: usize,
    pub seconds: f64,
    pub fsyncs: Option<u64>,
}

impl RawRun {
    pub fn frames_per_sec(&self) -> f64 {
        self.frames as f64 / self.seconds
    }

    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    pub fn fsyncs_per_frame(&self) -> Option<f64> {
        per_frame(self.fsyncs, self.frames)
    }
}

/// The workload's frames as ingest publishes them, in stream order.
fn messages(workload: &Workload, subjects: &sessionfold_core::Subjects) -> Vec<BatchMessage> {
    interleaved(workload)
        .into_iter()
        .enumerate()
        .map(|(i, frame)| {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("bench-{i}:1").as_str());
            headers.insert(REQUEST_ID_HEADER, "bench");
            BatchMessage {
                subject: subjects.event(&frame.session),
                headers,
                payload: Bytes::from(frame.text),
            }
        })
        .collect()
}

/// Publishes every frame of `workload` to a fresh stream, one message at a
/// time (`batch_frames` 0, at most `outstanding` PubAcks awaited) or in
/// atomic batches of `batch_frames` (`in_flight` at once); timed, and its
/// fsyncs counted, from the first publish to the last answer.
async fn raw_publish(
    servers: &Servers,
    workload: &Workload,
    outstanding: usize,
    batch_frames: usize,
    in_flight: usize,
) -> anyhow::Result<RawRun> {
    let names = unique_names();
    let subjects = sessionfold_harness::run_subjects(&names);
    let js = servers.jetstream().await?;
    let settings = nats_settings(&names, &servers.nats_url());
    // A server just started may not answer JetStream's API at once.
    let mut attempts = 0;
    while let Err(err) = sessionfold_common::jetstream::ensure_stream(&js, &settings).await {
        attempts += 1;
        if attempts == 10 {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let client = async_nats::connect(servers.nats_url()).await?;
    let messages = messages(workload, &subjects);
    let frames = messages.len();
    let fsyncs = FsyncCounter::attach(servers.nats.pid()).await;
    let started = Instant::now();
    let how = if batch_frames == 0 {
        let mut acks = FuturesUnordered::new();
        for message in messages {
            while acks.len() >= outstanding.max(1) {
                let ack: Result<_, async_nats::jetstream::context::PublishError> =
                    acks.next().await.expect("not empty");
                ack.context("awaiting a PubAck")?;
            }
            let publish = js
                .publish_with_headers(message.subject, message.headers, message.payload)
                .await?;
            acks.push(publish.into_future());
        }
        while let Some(ack) = acks.next().await {
            ack.context("awaiting a PubAck")?;
        }
        format!("single messages, ≤ {outstanding} PubAcks outstanding")
    } else {
        let batches: Vec<Vec<BatchMessage>> = messages
            .chunks(batch_frames)
            .map(<[BatchMessage]>::to_vec)
            .collect();
        let batches = Arc::new(batches);
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..in_flight.max(1) {
            let (batches, next, client) = (batches.clone(), next.clone(), client.clone());
            tasks.spawn(async move {
                loop {
                    let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return anyhow::Ok(());
                    };
                    let outcome = batch_publish::publish_atomic(
                        &client,
                        batch.clone(),
                        Duration::from_secs(10),
                    )
                    .await;
                    if !matches!(outcome, BatchOutcome::Committed { .. }) {
                        bail!("an atomic batch did not commit: {outcome:?}");
                    }
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        format!("atomic batches of {batch_frames}, {in_flight} in flight")
    };
    let seconds = started.elapsed().as_secs_f64();
    let fsyncs = fsyncs.stop().await;
    let stored = js
        .get_stream(&names.stream)
        .await?
        .cached_info()
        .state
        .messages;
    if stored != frames as u64 {
        bail!("{stored} messages stored of {frames} published");
    }
    servers.clean(&names).await?;
    Ok(RawRun {
        how,
        frames,
        events: workload.events(),
        seconds,
        fsyncs,
    })
}

/// How ingest grouped the frames of a run (its `/metrics`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Batches {
    /// Batches (or groups too small to batch) by outcome.
    pub by_outcome: Vec<(String, u64)>,
    pub groups: u64,
    pub frames: f64,
}

impl Batches {
    fn mean_frames(&self) -> f64 {
        self.frames / self.groups.max(1) as f64
    }

    fn describe(&self) -> String {
        let outcomes: Vec<String> = self
            .by_outcome
            .iter()
            .map(|(outcome, n)| format!("{outcome} {}", count(*n as f64)))
            .collect();
        format!(
            "{} groups of {:.1} frames on average ({})",
            count(self.groups as f64),
            self.mean_frames(),
            outcomes.join(", ")
        )
    }
}

/// Reads the group-commit metrics from ingest's `/metrics` page.
fn parse_batches(page: &str) -> Batches {
    let mut batches = Batches::default();
    let value = |line: &str| {
        line.rsplit_once(' ')
            .and_then(|(_, v)| v.trim().parse::<f64>().ok())
    };
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("sessionfold_ingest_publish_batches_total{") {
            let outcome = rest
                .split("outcome=\"")
                .nth(1)
                .and_then(|o| o.split('"').next())
                .unwrap_or("?")
                .to_owned();
            if let Some(n) = value(line) {
                batches.by_outcome.push((outcome, n as u64));
            }
        } else if line.starts_with("sessionfold_ingest_publish_batch_frames_sum") {
            batches.frames = value(line).unwrap_or_default();
        } else if line.starts_with("sessionfold_ingest_publish_batch_frames_count") {
            batches.groups = value(line).unwrap_or_default() as u64;
        }
    }
    batches
}

/// One run through ingest (and a processor, or none).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SystemRun {
    pub group_commit: bool,
    pub processors: usize,
    pub frames: usize,
    pub events: usize,
    /// From the first frame until the last acknowledgement on a socket.
    pub acked_seconds: f64,
    /// Until every document was complete in Redis (with a processor).
    pub complete_seconds: Option<f64>,
    /// nats-server's fsyncs from the first frame until the last
    /// acknowledgement (ingest alone) or until the sessions with a
    /// `SESSION_END` were closed (with a processor).
    pub fsyncs: Option<u64>,
    /// Finished-session messages stored, of the sessions with a `SESSION_END`.
    pub closed: (u64, u64),
    pub exact_documents: usize,
    pub sessions: usize,
    pub batches: Batches,
}

impl SystemRun {
    pub fn acked_events_per_sec(&self) -> f64 {
        self.events as f64 / self.acked_seconds
    }

    pub fn acked_frames_per_sec(&self) -> f64 {
        self.frames as f64 / self.acked_seconds
    }

    pub fn events_per_sec(&self) -> Option<f64> {
        self.complete_seconds.map(|s| self.events as f64 / s)
    }

    pub fn fsyncs_per_frame(&self) -> Option<f64> {
        per_frame(self.fsyncs, self.frames)
    }

    fn setting(&self) -> &'static str {
        if self.group_commit {
            "group commit on"
        } else {
            "group commit off"
        }
    }
}

/// The ingest settings of group commit on (its defaults) or off.
fn ingest_env(group_commit: bool) -> Vec<(&'static str, String)> {
    if group_commit {
        Vec::new()
    } else {
        vec![("PUBLISH_BATCH_MAX_FRAMES", "1".to_owned())]
    }
}

/// Messages in the finished-sessions stream (0 before a processor made it).
async fn finished_messages(js: &async_nats::jetstream::Context) -> u64 {
    match js
        .get_stream(sessionfold_core::names::DEFAULT_SESSIONS_STREAM)
        .await
    {
        Ok(stream) => stream.cached_info().state.messages,
        Err(_) => 0,
    }
}

/// Sends `workload` through ingest (group commit on or off) and
/// `processors` (0 or 1) processors; with one, waits until the stream is
/// drained and the sessions with a `SESSION_END` are closed.
async fn system_run(
    servers: &Servers,
    workload: &Workload,
    connections: usize,
    group_commit: bool,
    processors: usize,
) -> anyhow::Result<SystemRun> {
    let names = unique_names();
    let ingest = servers
        .start_ingest_with(&names, &ingest_env(group_commit))
        .await
        .context("starting ingest")?;
    let processes = servers
        .start_processors(&names, processors)
        .await
        .context("starting the processor")?;
    let probe = servers.probe(&names).await?;
    let js = servers.jetstream().await?;
    let mut config = ProducerConfig::new(&format!("ws://{}/websocket", ingest.addr()))?;
    config.deadline = Duration::from_secs(300);
    let producer = Producer::new(config);
    let options = LoadOptions {
        concurrency: connections,
        max_pause: Duration::ZERO,
        seed: workload.spec.seed,
    };
    let ending = workload
        .sessions
        .iter()
        .filter(|s| s.frames.iter().any(|f| f.contains("SESSION_END")))
        .count() as u64;
    let finished_before = finished_messages(&js).await;
    let fsyncs = FsyncCounter::attach(servers.nats.pid()).await;
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
    let mut complete_seconds = None;
    let mut closed = (0, 0);
    if processors > 0 {
        probe
            .wait_drained(Duration::from_secs(300))
            .await
            .context("waiting for the processor to drain the stream")?;
        complete_seconds = Some(started.elapsed().as_secs_f64());
        let deadline = Instant::now() + CLOSE_WAIT;
        let mut finished = 0;
        while Instant::now() < deadline {
            finished = finished_messages(&js).await.saturating_sub(finished_before);
            if finished >= ending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The compaction schedule follows each close.
        tokio::time::sleep(Duration::from_millis(500)).await;
        closed = (finished, ending);
    }
    let fsyncs = fsyncs.stop().await;
    let page = reqwest::get(format!("http://{}/metrics", ingest.addr()))
        .await?
        .text()
        .await?;
    let exact_documents = if processors > 0 {
        crate::e2e::exact_documents(servers, &names, workload, &report).await?
    } else {
        0
    };
    drop(processes);
    drop(ingest);
    servers.clean(&names).await?;
    Ok(SystemRun {
        group_commit,
        processors,
        frames: report.totals.acked as usize,
        events: report.events_acked,
        acked_seconds,
        complete_seconds,
        fsyncs,
        closed,
        exact_documents,
        sessions: workload.sessions.len(),
        batches: parse_batches(&page),
    })
}

/// A lone producer's send → ack latencies.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoneProducer {
    pub group_commit: bool,
    pub frames: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LoneProducer {
    fn of(group_commit: bool, samples: &Samples) -> Self {
        let millis = |d: Duration| d.as_secs_f64() * 1e3;
        Self {
            group_commit,
            frames: samples.len(),
            p50_ms: millis(samples.p50()),
            p99_ms: millis(samples.p99()),
            max_ms: millis(samples.max()),
        }
    }
}

/// One connection, one frame of one EVENT at a time (after 20 untimed):
/// each frame's send → ack.
async fn lone_producer(
    servers: &Servers,
    group_commit: bool,
    frames: usize,
) -> anyhow::Result<Samples> {
    let names = unique_names();
    let ingest = servers
        .start_ingest_with(&names, &ingest_env(group_commit))
        .await?;
    let producer = Producer::new(ProducerConfig::new(&format!(
        "ws://{}/websocket",
        ingest.addr()
    ))?);
    let mut sender = producer.session("lone-producer")?;
    let mut samples = Samples::new();
    let warm_up = 20;
    for i in 0..warm_up + frames {
        let frame = if i == 0 {
            r#"[{"type":"SESSION_START","timestamp":1700000000}]"#.to_owned()
        } else {
            format!(
                r#"[{{"type":"EVENT","timestamp":{},"name":"tap"}}]"#,
                1_700_000_000 + i
            )
        };
        let sent = Instant::now();
        match sender.send_frame(&frame).await {
            Ok(FrameOutcome::Accepted { .. }) => {}
            other => bail!("lone producer, frame {i}: {other:?}"),
        }
        if i >= warm_up {
            samples.push(sent.elapsed());
        }
    }
    sender.close().await;
    drop(ingest);
    servers.clean(&names).await?;
    Ok(samples)
}

/// Everything measured for one workload on the durable servers.
#[derive(Debug, Clone, serde::Serialize)]
struct Durable {
    singles: RawRun,
    batched: RawRun,
    ingest_on: SystemRun,
    ingest_off: SystemRun,
    system_on: SystemRun,
    system_off: SystemRun,
}

/// What the 2m server measured for one workload.
#[derive(Debug, Clone, serde::Serialize)]
struct Relaxed {
    singles: RawRun,
    batched: RawRun,
    system_on: SystemRun,
}

/// A workload of the section.
struct Mix {
    name: &'static str,
    spec: WorkloadSpec,
    connections: usize,
    /// Whether the issue's targets apply to it.
    targeted: bool,
}

impl Mix {
    /// The workload with session ids of its own for run `run`, so that no
    /// run's finished-session messages are taken for another's duplicates.
    fn workload(&self, run: usize) -> Workload {
        let mut spec = self.spec.clone();
        spec.session_prefix = format!("{}{run}", spec.session_prefix);
        Workload::generate(&spec)
    }
}

fn step(what: &str, started: Instant) {
    eprintln!("bench: [{:>5.1} s] {what}", started.elapsed().as_secs_f64());
}

fn rate(events: f64, frames: f64) -> String {
    format!("{} events/s ({} frames/s)", count(events), count(frames))
}

fn target_row(
    measure: String,
    result: String,
    against: String,
    ratio: String,
    target: Option<(&str, bool)>,
) -> Row {
    let (target, status) = match target {
        Some((text, met)) => (text.to_owned(), Status::of(met)),
        None => (String::new(), Status::Info),
    };
    Row {
        item: ITEM,
        measure,
        result,
        against,
        ratio,
        target,
        status,
    }
}

/// Runs the section and adds its rows, notes and JSON.
pub async fn rows(
    options: &Options,
    servers: &Servers,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
    json: &mut serde_json::Map<String, serde_json::Value>,
    clock: Instant,
) -> anyhow::Result<()> {
    let mut throughput = options.throughput.clone();
    throughput.session_prefix = "gc".to_owned();
    let mixes = [
        Mix {
            name: "throughput workload",
            spec: throughput,
            connections: options.throughput_connections,
            targeted: false,
        },
        Mix {
            name: "web mix",
            spec: WorkloadSpec::web_mix(options.throughput.seed, options.web_sessions),
            connections: options.web_connections,
            targeted: true,
        },
    ];
    for mix in &mixes {
        let workload = mix.workload(0);
        notes.push(format!(
            "Group commit, {}: {} sessions × {} frames × {} EVENTs (+ SESSION_START/END), {} frames, {} events, {} producers, \
             {} % of the events out of order, {} % repeated exactly (seed {}).",
            mix.name,
            mix.spec.sessions,
            mix.spec.frames_per_session,
            mix.spec.events_per_frame,
            count(workload.frames() as f64),
            count(workload.events() as f64),
            mix.connections,
            mix.spec.out_of_order_percent,
            mix.spec.repeated_percent,
            mix.spec.seed
        ));
    }

    let mut durable = Vec::new();
    for mix in &mixes {
        let workload = mix.workload(0);
        let singles = raw_publish(servers, &workload, options.outstanding, 0, 0).await?;
        raw::settle().await;
        let batched = raw_publish(
            servers,
            &workload,
            0,
            options.batch_frames,
            options.batches_in_flight,
        )
        .await?;
        raw::settle().await;
        step(
            &format!(
                "{}: raw publish {} frames/s singles ({} fsyncs/frame), {} frames/s batched ({})",
                mix.name,
                count(singles.frames_per_sec()),
                fsync_text(singles.fsyncs_per_frame()),
                count(batched.frames_per_sec()),
                fsync_text(batched.fsyncs_per_frame())
            ),
            clock,
        );
        let mut runs = Vec::new();
        for (run, (group_commit, processors)) in [(true, 0), (false, 0), (true, 1), (false, 1)]
            .into_iter()
            .enumerate()
        {
            let result = system_run(
                servers,
                &mix.workload(run + 1),
                mix.connections,
                group_commit,
                processors,
            )
            .await?;
            step(
                &format!(
                    "{}: {}, {} processor(s): acked {} events/s, {} fsyncs/frame{}",
                    mix.name,
                    result.setting(),
                    processors,
                    count(result.acked_events_per_sec()),
                    fsync_text(result.fsyncs_per_frame()),
                    result
                        .events_per_sec()
                        .map(|r| format!(", end to end {} events/s", count(r)))
                        .unwrap_or_default()
                ),
                clock,
            );
            runs.push(result);
            raw::settle().await;
        }
        let [ingest_on, ingest_off, system_on, system_off]: [SystemRun; 4] =
            runs.try_into().expect("four runs");
        durable.push(Durable {
            singles,
            batched,
            ingest_on,
            ingest_off,
            system_on,
            system_off,
        });
    }

    // Off and on alternately, twice, so that the machine's other work
    // weighs on both alike.
    let (mut off, mut on) = (Samples::new(), Samples::new());
    for _ in 0..2 {
        for group_commit in [false, true] {
            let samples =
                lone_producer(servers, group_commit, options.latency_frames.div_ceil(2)).await?;
            if group_commit {
                on.extend(samples);
            } else {
                off.extend(samples);
            }
            raw::settle().await;
        }
    }
    let lone = [LoneProducer::of(false, &off), LoneProducer::of(true, &on)];
    for latency in &lone {
        step(
            &format!(
                "lone producer, group commit {}: p50 {:.2} / p99 {:.2} ms",
                if latency.group_commit { "on" } else { "off" },
                latency.p50_ms,
                latency.p99_ms
            ),
            clock,
        );
    }

    let relaxed_servers = tokio::task::spawn_blocking(|| {
        Servers::start_with(
            NatsOptions {
                sync_interval: Some("2m".to_owned()),
                ..NatsOptions::default()
            },
            RedisOptions::with_args(REDIS_ARGS),
        )
    })
    .await??;
    let mut relaxed = Vec::new();
    for mix in &mixes {
        let workload = mix.workload(0);
        let singles = raw_publish(&relaxed_servers, &workload, options.outstanding, 0, 0).await?;
        raw::settle().await;
        let batched = raw_publish(
            &relaxed_servers,
            &workload,
            0,
            options.batch_frames,
            options.batches_in_flight,
        )
        .await?;
        raw::settle().await;
        let system_on =
            system_run(&relaxed_servers, &mix.workload(5), mix.connections, true, 1).await?;
        step(
            &format!(
                "{}, sync_interval 2m: raw publish {} frames/s singles, {} batched; system acked {} events/s",
                mix.name,
                count(singles.frames_per_sec()),
                count(batched.frames_per_sec()),
                count(system_on.acked_events_per_sec())
            ),
            clock,
        );
        relaxed.push(Relaxed {
            singles,
            batched,
            system_on,
        });
        raw::settle().await;
    }
    drop(relaxed_servers);

    for ((mix, d), r) in mixes.iter().zip(&durable).zip(&relaxed) {
        add_rows(mix, d, r, rows, notes);
    }
    let (off, on) = (&lone[0], &lone[1]);
    rows.push(target_row(
        format!(
            "A lone producer's send → ack, 1 connection, {} frames of 1 EVENT one at a time, group commit on",
            on.frames
        ),
        format!("p50 {:.2} / p99 {:.2} ms", on.p50_ms, on.p99_ms),
        format!(
            "group commit off: p50 {:.2} / p99 {:.2} ms",
            off.p50_ms, off.p99_ms
        ),
        format!("{:+.2} ms at p99", on.p99_ms - off.p99_ms),
        Some(("p99 ≤ off + 2 ms", on.p99_ms <= off.p99_ms + 2.0)),
    ));
    json.insert(
        "group_commit".into(),
        serde_json::json!({
            "workloads": mixes.iter().zip(&durable).zip(&relaxed).map(|((mix, d), r)| serde_json::json!({
                "name": mix.name,
                "sessions": mix.spec.sessions,
                "frames_per_session": mix.spec.frames_per_session,
                "events_per_frame": mix.spec.events_per_frame,
                "connections": mix.connections,
                "always": d,
                "2m": r,
            })).collect::<Vec<_>>(),
            "lone_producer": lone,
        }),
    );
    Ok(())
}

fn add_rows(mix: &Mix, d: &Durable, r: &Relaxed, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let name = mix.name;
    let targeted = |text: &'static str, met: bool| mix.targeted.then_some((text, met));
    let fsync_ratio = |on: Option<f64>, off: Option<f64>| match (on, off) {
        (Some(on), Some(off)) if on > 0.0 => format!("{:.1}× fewer", off / on),
        _ => String::new(),
    };

    let (on, off) = (
        d.ingest_on.fsyncs_per_frame(),
        d.ingest_off.fsyncs_per_frame(),
    );
    rows.push(target_row(
        format!("{name}: nats-server fsyncs per acknowledged frame, ingest alone (no processor), group commit on"),
        fsync_text(on),
        format!("group commit off: {}", fsync_text(off)),
        fsync_ratio(on, off),
        on.and_then(|f| targeted("≤ 0.1", f <= 0.1)),
    ));
    let (on, off) = (
        d.system_on.fsyncs_per_frame(),
        d.system_off.fsyncs_per_frame(),
    );
    rows.push(target_row(
        format!(
            "{name}: nats-server fsyncs per acknowledged frame, everything included (1 processor: lifecycle timers, finished-session messages, consumer state), group commit on"
        ),
        fsync_text(on),
        format!("group commit off: {}", fsync_text(off)),
        fsync_ratio(on, off),
        on.and_then(|f| targeted("≤ 0.2", f <= 0.2)),
    ));
    for (raw, sync) in [
        (&d.singles, "always"),
        (&d.batched, "always"),
        (&r.singles, "2m"),
        (&r.batched, "2m"),
    ] {
        rows.push(target_row(
            format!(
                "{name}: raw JetStream publish of its frames, {}, `sync_interval: {sync}`",
                raw.how
            ),
            format!(
                "{} frames/s ({} events/s), {} fsyncs/frame",
                count(raw.frames_per_sec()),
                count(raw.events_per_sec()),
                fsync_text(raw.fsyncs_per_frame())
            ),
            String::new(),
            String::new(),
            None,
        ));
    }
    rows.push(target_row(
        format!(
            "{name}: ingest's acknowledged rate, ingest alone, {} connections, group commit on",
            mix.connections
        ),
        rate(
            d.ingest_on.acked_events_per_sec(),
            d.ingest_on.acked_frames_per_sec(),
        ),
        format!(
            "group commit off: {}",
            rate(
                d.ingest_off.acked_events_per_sec(),
                d.ingest_off.acked_frames_per_sec()
            )
        ),
        format!(
            "{:.1}×",
            d.ingest_on.acked_events_per_sec() / d.ingest_off.acked_events_per_sec()
        ),
        None,
    ));
    let (on, off) = (&d.system_on, &d.system_off);
    let speedup = on.acked_events_per_sec() / off.acked_events_per_sec();
    rows.push(target_row(
        format!("{name}: ingest's acknowledged rate, 1 processor folding, group commit on"),
        rate(on.acked_events_per_sec(), on.acked_frames_per_sec()),
        format!(
            "group commit off: {}",
            rate(off.acked_events_per_sec(), off.acked_frames_per_sec())
        ),
        format!("{speedup:.1}×"),
        targeted("≥ 5× off", speedup >= 5.0),
    ));
    let of_raw = on.acked_frames_per_sec() / r.singles.frames_per_sec();
    rows.push(target_row(
        format!("{name}: the same, against raw JetStream publish with `sync_interval: 2m`"),
        format!("{} frames/s", count(on.acked_frames_per_sec())),
        format!(
            "raw publish, {}, 2m: {} frames/s (atomic batches: {} frames/s)",
            r.singles.how,
            count(r.singles.frames_per_sec()),
            count(r.batched.frames_per_sec())
        ),
        format!("{:.0} %", 100.0 * of_raw),
        targeted("≥ 50 %", of_raw >= 0.5),
    ));
    if let (Some(on_rate), Some(off_rate)) = (on.events_per_sec(), off.events_per_sec()) {
        rows.push(target_row(
            format!("{name}: end to end, 1 processor, group commit on"),
            format!("{} events/s", count(on_rate)),
            format!("group commit off: {} events/s", count(off_rate)),
            format!("{:.1}×", on_rate / off_rate),
            None,
        ));
    }
    let relaxed = &r.system_on;
    let of_relaxed = on.acked_events_per_sec() / relaxed.acked_events_per_sec();
    rows.push(target_row(
        format!(
            "{name}: the whole system's acknowledged rate (1 processor, group commit on), `sync_interval: always`"
        ),
        rate(on.acked_events_per_sec(), on.acked_frames_per_sec()),
        format!(
            "`sync_interval: 2m`: {}",
            rate(relaxed.acked_events_per_sec(), relaxed.acked_frames_per_sec())
        ),
        format!("{:.0} %", 100.0 * of_relaxed),
        targeted("≥ 80 %", of_relaxed >= 0.8),
    ));
    for (setting, run) in [
        ("ingest alone", &d.ingest_on),
        ("1 processor", &d.system_on),
        ("1 processor, `sync_interval: 2m`", relaxed),
    ] {
        notes.push(format!(
            "Group commit, {name}, {setting}: ingest made {}.",
            run.batches.describe()
        ));
    }
    for run in [&d.system_on, &d.system_off, relaxed] {
        let (closed, ending) = run.closed;
        if closed < ending || run.exact_documents != run.sessions {
            notes.push(format!(
                "Group commit, {name}, {}, 1 processor: {closed} of {ending} sessions with a `SESSION_END` closed within the wait, {} of {} documents equal the reference fold.",
                run.setting(),
                run.exact_documents,
                run.sessions
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_counts_are_summed_and_refusals_are_none() {
        let text = "# started on Tue Dec  8 04:00:00 2026\n\n\
                    1234,,syscalls:sys_enter_fsync,2005295348,100.00,,\n\
                    6,,syscalls:sys_enter_fdatasync,2005295967,100.00,,\n";
        assert_eq!(parse_perf_counts(text), Some(1240));
        let refused = "<not supported>,,syscalls:sys_enter_fsync,0,100.00,,\n";
        assert_eq!(parse_perf_counts(refused), None);
        assert_eq!(parse_perf_counts(""), None);
    }

    #[test]
    fn ingest_batches_are_read_from_its_metrics() {
        let page = "# TYPE sessionfold_ingest_publish_batches_total counter\n\
                    sessionfold_ingest_publish_batches_total{outcome=\"committed\"} 40\n\
                    sessionfold_ingest_publish_batches_total{outcome=\"singles\"} 10\n\
                    sessionfold_ingest_publish_batch_frames{quantile=\"0.5\"} 20\n\
                    sessionfold_ingest_publish_batch_frames_sum 1010\n\
                    sessionfold_ingest_publish_batch_frames_count 50\n";
        let batches = parse_batches(page);
        assert_eq!(batches.groups, 50);
        assert_eq!(batches.mean_frames(), 20.2);
        assert_eq!(
            batches.by_outcome,
            vec![("committed".to_owned(), 40), ("singles".to_owned(), 10)]
        );
    }
}
