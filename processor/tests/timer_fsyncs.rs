//! How many fsyncs nats-server makes for the processor, per frame, on the
//! web mix (docs/design.md §10.1): 2 000 sessions × 10 frames × 3 EVENTs
//! (SESSION_START in the first frame, SESSION_END in the last), sent as 200
//! producers would, on a server with `sync_interval: always`.
//!
//! Ignored by default: it needs `perf` and a quiet machine. Run it with
//! `flock /tmp/sessionfold-bench.lock cargo test -p sessionfold-processor
//! --test timer_fsyncs -- --ignored --nocapture`; `RIG_SESSIONS` scales it.
//!
//! The frames are published the way ingest stores them (atomic batches of
//! 50), once to a stream no processor reads (the publishing's own fsyncs),
//! then to the processor's stream while it runs. The processor's share is
//! the difference, plus what the closes cost afterwards (timers firing,
//! finished messages, compaction schedules, acks).

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

mod run_config;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt as _;
use sessionfold_common::batch_publish::{BatchMessage, BatchOutcome, publish_atomic};
use sessionfold_common::settings::NatsSettings;
use sessionfold_core::SessionId;
use sessionfold_core::names::{DEFAULT_SESSIONS_STREAM, DEFAULT_TIMERS_STREAM};
use sessionfold_processor::Processor;
use sessionfold_testkit::{JetStreamProbe, NatsServer, RedisServer, RunNames, init_test_tracing};
use tokio_util::sync::CancellationToken;

const FRAMES_PER_SESSION: usize = 10;
const CONNECTIONS: usize = 200;
const PUBLISH_BATCH: usize = 50;

/// `perf stat` counting one process's fsyncs until stopped.
struct FsyncCounter {
    perf: Child,
    output: std::path::PathBuf,
}

impl FsyncCounter {
    fn start(pid: u32) -> Self {
        let output =
            std::env::temp_dir().join(format!("fsyncs-{}.txt", uuid::Uuid::new_v4().simple()));
        let perf = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                "-o",
            ])
            .arg(&output)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf");
        // perf attaches in a moment; nothing is measured before it has.
        std::thread::sleep(Duration::from_millis(300));
        Self { perf, output }
    }

    fn stop(mut self) -> u64 {
        Command::new("kill")
            .args(["-INT", &self.perf.id().to_string()])
            .status()
            .expect("kill");
        self.perf.wait().expect("perf ends");
        let text = std::fs::read_to_string(&self.output).expect("perf output");
        let _ = std::fs::remove_file(&self.output);
        text.lines()
            .filter(|line| line.contains("syscalls:"))
            .map(|line| line.split(',').next().unwrap().parse::<u64>().unwrap_or(0))
            .sum()
    }
}

/// The web mix's frames in the order 200 producers send them: each
/// connection a session at a time, frame after frame.
fn web_mix(sessions: usize, subject_prefix: &str) -> Vec<(String, String, String)> {
    let mut frames = Vec::new();
    let waves = sessions.div_ceil(CONNECTIONS);
    for wave in 0..waves {
        for frame in 0..FRAMES_PER_SESSION {
            for connection in 0..CONNECTIONS {
                let index = wave * CONNECTIONS + connection;
                if index >= sessions {
                    continue;
                }
                let session = SessionId::parse(&format!("web-{index:05}")).unwrap();
                let base = (frame * 10) as u64;
                let mut events: Vec<serde_json::Value> = (0..3)
                    .map(|n| {
                        serde_json::json!({"type": "EVENT", "timestamp": base + n,
                            "name": format!("click-{frame}-{n}")})
                    })
                    .collect();
                if frame == 0 {
                    events.insert(
                        1,
                        serde_json::json!({"type": "SESSION_START", "timestamp": 0}),
                    );
                }
                if frame + 1 == FRAMES_PER_SESSION {
                    events.insert(
                        2,
                        serde_json::json!({"type": "SESSION_END", "timestamp": base + 9}),
                    );
                }
                frames.push((
                    format!("{subject_prefix}.{}", session.token()),
                    format!("{}:{frame}", session.token()),
                    serde_json::Value::Array(events).to_string(),
                ));
            }
        }
    }
    frames
}

/// Publishes the frames by atomic batches, a few in flight, as ingest's
/// group commit does.
async fn publish(client: &async_nats::Client, frames: &[(String, String, String)]) {
    let batches: Vec<Vec<BatchMessage>> = frames
        .chunks(PUBLISH_BATCH)
        .map(|chunk| {
            chunk
                .iter()
                .map(|(subject, id, text)| {
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Msg-Id", id.as_str());
                    BatchMessage {
                        subject: subject.clone(),
                        headers,
                        payload: text.clone().into(),
                    }
                })
                .collect()
        })
        .collect();
    // JetStream takes a bounded number of batches in flight per stream.
    let results: Vec<BatchOutcome> = futures::stream::iter(batches)
        .map(|batch| publish_atomic(client, batch, Duration::from_secs(10)))
        .buffer_unordered(4)
        .collect()
        .await;
    for outcome in results {
        assert!(
            matches!(outcome, BatchOutcome::Committed { .. }),
            "{outcome:?}"
        );
    }
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: needs perf and a quiet machine"]
async fn fsyncs_per_frame_of_the_processor_on_the_web_mix() {
    init_test_tracing();
    let mut sessions: usize = std::env::var("RIG_SESSIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let nats = NatsServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let pid = nats.pid().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());

    // The publishing alone, to a stream no one reads.
    let base_names = RunNames::unique("BASE", "base", "bs");
    let mut base_settings = NatsSettings::local(nats.url());
    base_settings.stream_name = base_names.stream.clone();
    base_settings.subject_prefix = base_names.subject_prefix.clone();
    base_settings.stream_max_bytes = 256 << 20;
    sessionfold_common::jetstream::ensure_stream(&js, &base_settings)
        .await
        .unwrap();
    let frames = web_mix(sessions, &base_names.subject_prefix);
    let counter = FsyncCounter::start(pid);
    publish(&client, &frames).await;
    let publishing = counter.stop();

    // The same frames with the processor running.
    let names = RunNames::unique("WEB", "web", "wb");
    let mut config = run_config::processor_config(&nats, &redis, &names);
    config.sink.repair_check_interval_ms = 0;
    // RIG_LIFECYCLE=0: no timers at all, what the acks cost alone.
    let lifecycle = std::env::var("RIG_LIFECYCLE").map_or(true, |v| v != "0");
    config.lifecycle.session_lifecycle = lifecycle;
    let processor = Processor::build(config).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(processor.run(shutdown.clone()));
    let probe = JetStreamProbe::new(
        js.clone(),
        &names.stream,
        &names.consumer,
        &names.dead_stream,
    )
    .polling_every(Duration::from_millis(50));
    // The consumer exists once the processor consumes.
    sessionfold_testkit::eventually_ok("the consumer", Duration::from_secs(30), || {
        probe.consumer_state()
    })
    .await;
    let frames = web_mix(sessions, &names.subject_prefix);
    let started = Instant::now();
    let counter = FsyncCounter::start(pid);
    publish(&client, &frames).await;
    probe.wait_drained(Duration::from_secs(300)).await.unwrap();
    let applying = counter.stop();
    let applied_in = started.elapsed();

    let counter = FsyncCounter::start(pid);
    if !lifecycle {
        sessions = 0;
    }
    sessionfold_testkit::eventually("every session closed", Duration::from_secs(120), || {
        let js = js.clone();
        async move {
            (stream_messages(&js, DEFAULT_SESSIONS_STREAM).await >= sessions as u64).then_some(())
        }
    })
    .await;
    // Each close ends with its compaction's schedule: the timers stream
    // then holds one per session.
    sessionfold_testkit::eventually(
        "every compaction scheduled",
        Duration::from_secs(60),
        || {
            let js = js.clone();
            async move {
                (stream_messages(&js, DEFAULT_TIMERS_STREAM).await >= sessions as u64).then_some(())
            }
        },
    )
    .await;
    let closing = counter.stop();
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let frames = frames.len() as f64;
    let processor = applying.saturating_sub(publishing);
    println!(
        "web mix (lifecycle {lifecycle}), {frames} frames: publishing {publishing} fsyncs \
         ({:.3}/frame); publishing + applying {applying} ({applied_in:?}); the processor's \
         share while applying {processor} ({:.3}/frame); closing {closing} ({:.3}/frame); \
         the processor in all {:.3}/frame",
        publishing as f64 / frames,
        processor as f64 / frames,
        closing as f64 / frames,
        (processor + closing) as f64 / frames,
    );
}

/// What each timer operation costs nats-server in fsyncs, 200 sessions at
/// a time: schedules published alone, again on the same subjects (each
/// replaces the pending one), in one atomic batch, their firing, and
/// acking the due notes on the work queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: needs perf and a quiet machine"]
async fn fsyncs_of_each_timer_operation() {
    init_test_tracing();
    const N: usize = 200;
    let nats = NatsServer::start().unwrap();
    let pid = nats.pid().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "T".to_owned(),
        subjects: vec!["t.>".to_owned()],
        storage: jetstream::stream::StorageType::File,
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        allow_message_schedules: true,
        allow_rollup: true,
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let schedule = |i: usize, at: std::time::SystemTime| {
        let mut headers = HeaderMap::new();
        let at = time::OffsetDateTime::from(at);
        headers.insert(
            "Nats-Schedule",
            format!(
                "@at {}",
                at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap()
            )
            .as_str(),
        );
        headers.insert("Nats-Schedule-Target", format!("t.due.{i}").as_str());
        BatchMessage {
            subject: format!("t.open.{i}"),
            headers,
            payload: Default::default(),
        }
    };
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    let measure = |what: &'static str, count: u64| {
        println!(
            "{what}: {count} fsyncs for {N} ({:.2} each)",
            count as f64 / N as f64
        );
    };

    let counter = FsyncCounter::start(pid);
    for i in 0..N {
        let m = schedule(i, later);
        js.publish_with_headers(m.subject, m.headers, m.payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    measure("schedules alone", counter.stop());

    let counter = FsyncCounter::start(pid);
    for i in 0..N {
        let m = schedule(i, later + Duration::from_secs(1));
        js.publish_with_headers(m.subject, m.headers, m.payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    measure("schedules replacing the pending one", counter.stop());

    let counter = FsyncCounter::start(pid);
    let soon = std::time::SystemTime::now() + Duration::from_secs(3);
    let outcome = publish_atomic(
        &client,
        (0..N).map(|i| schedule(i, soon)).collect(),
        Duration::from_secs(10),
    )
    .await;
    measure("one atomic batch of schedules (replacing)", counter.stop());
    println!("  the batch: {outcome:?}");
    let mut stream = js.get_stream("T").await.unwrap();
    println!(
        "  the stream holds {} messages",
        stream.info().await.unwrap().state.messages
    );

    let counter = FsyncCounter::start(pid);
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("due".to_owned()),
            filter_subject: "t.due.*".to_owned(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    sessionfold_testkit::eventually("every timer fired", Duration::from_secs(30), || {
        let consumer = consumer.clone();
        async move {
            let mut consumer = consumer;
            (consumer.info().await.unwrap().num_pending >= N as u64).then_some(())
        }
    })
    .await;
    measure("firing", counter.stop());

    let counter = FsyncCounter::start(pid);
    let mut messages = consumer.fetch().max_messages(N).messages().await.unwrap();
    let mut acked = 0;
    while let Some(Ok(message)) = messages.next().await {
        message.double_ack().await.unwrap();
        acked += 1;
    }
    measure("acking the due notes", counter.stop());
    println!("  acked {acked}");
}
