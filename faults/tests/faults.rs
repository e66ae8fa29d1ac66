//! Exactly-once under real faults (docs/faults.md).
//!
//! Every scenario sends ≥ 50 000 events over ≥ 500 sessions through a real
//! ingest into a real nats-server, folds them with real processor processes
//! into a real redis-server with RedisJSON, injects its faults while the
//! load runs, waits until the consumer is drained, then reads every
//! session's document and compares it with the reference fold of the
//! frames the producer got acknowledged. It prints the counts and asserts
//! that nothing was lost or duplicated.
//!
//! The scenarios are load tests for a 2-core machine: they take turns on a
//! lock, so they run one after another whatever `--test-threads` says.
//!
//! Run: `cargo build -p sessionfold && cargo test -p sessionfold-faults --test faults -- --nocapture`
//! (`FAULTS_SEED=<n>` repeats the fault timing of a run; `SESSIONFOLD_KEEP_TEST_DIRS=1`
//! keeps the service logs; `FAULTS_CHILD_LOG` sets the services' `RUST_LOG`.)

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::sync::Arc;
use std::time::Duration;

use sessionfold_client::loadgen::{LoadOptions, Workload, WorkloadSpec};
use sessionfold_core::SeededRng;
use sessionfold_faults::{System, SystemOptions, seed_from_env};
use sessionfold_harness::{BackgroundLoad, ScenarioReport, SystemUnderTest, settle};
use sessionfold_testkit::init_test_tracing;
use tokio::time::Instant;

/// The scenarios take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SESSIONS: usize = 500;
const FRAMES_PER_SESSION: usize = 10;
const EVENTS_PER_FRAME: usize = 10;
const WORKLOAD_SEED: u64 = 0x005e_5510_f01d;

fn workload() -> Arc<Workload> {
    let spec = WorkloadSpec::new(
        WORKLOAD_SEED,
        SESSIONS,
        FRAMES_PER_SESSION,
        EVENTS_PER_FRAME,
    );
    let workload = Workload::generate(&spec);
    assert!(workload.events() >= 50_000 && workload.sessions.len() >= 500);
    Arc::new(workload)
}

/// Spread each session's frames over a few seconds, so that faults land
/// while the load runs.
fn paced() -> LoadOptions {
    LoadOptions {
        concurrency: 500,
        max_pause: Duration::from_millis(1500),
        seed: 7,
    }
}

fn fault_rng(scenario: &str) -> SeededRng {
    let seed = seed_from_env();
    println!("{scenario}: fault seed {seed} (FAULTS_SEED={seed} repeats the timing)");
    SeededRng::new(seed)
}

/// A scenario on the default system under the paced load, and the random
/// source of its fault timing.
async fn paced_run(name: &str) -> (Run, SeededRng) {
    let rng = fault_rng(name);
    let run = Run::begin(name, SystemOptions::default(), workload(), paced()).await;
    (run, rng)
}

/// A scenario in progress: the system, and the load running in the
/// background.
struct Run {
    name: String,
    system: System,
    workload: Arc<Workload>,
    started: Instant,
    load: BackgroundLoad,
    faults: Vec<String>,
    notes: Vec<(String, String)>,
}

impl Run {
    async fn begin(
        name: &str,
        options: SystemOptions,
        workload: Arc<Workload>,
        load: LoadOptions,
    ) -> Self {
        init_test_tracing();
        let started = Instant::now();
        let system = System::start(options).await.expect("starting the system");
        let load = BackgroundLoad::start(workload.clone(), system.producer(), load);
        Self {
            name: name.to_owned(),
            system,
            workload,
            started,
            load,
            faults: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records a fault at the current moment of the load.
    fn fault(&mut self, what: String) {
        self.faults.push(format!("{}: {what}", self.load.moment()));
    }

    /// Waits for the load and the processors, reads every document and
    /// compares it with the reference. Returns the report (printed) and the
    /// raw documents.
    async fn finish(self) -> (ScenarioReport, Vec<Option<String>>) {
        let Run {
            name,
            system,
            workload,
            started,
            load,
            faults,
            notes,
            ..
        } = self;
        let load_report = load.finish().await;
        let silent: Vec<&str> = load_report
            .sessions
            .iter()
            .filter(|s| s.counters.reply_timeouts > 0)
            .map(|s| s.session_id.as_str())
            .take(5)
            .collect();
        if !silent.is_empty() {
            println!("{name}: sessions that met a reply timeout (first 5): {silent:?}");
        }
        let settled = settle(&system, &name, &workload, &load_report).await;
        let report = ScenarioReport {
            processor_replicas: system.processor_slots(),
            processors_killed: system.processors_killed,
            faults,
            notes,
            drain_duration: settled.drain_duration,
            duration: started.elapsed(),
            verification: settled.verification,
            ..ScenarioReport::new(&name, &workload, &load_report, system.jetstream())
                .await
                .expect("stream info")
        };
        report.print(&system);
        (report, settled.documents)
    }

    /// [`finish`](Self::finish), and assert that nothing was lost or
    /// duplicated.
    async fn finish_exact(self) -> ScenarioReport {
        let (report, _) = self.finish().await;
        report.assert_exact();
        report
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processors_sigkilled_at_random_moments_and_restarted() {
    let _serial = SERIAL.lock().await;
    let name = "a: processor SIGKILLs";
    const KILLS: usize = 4;
    let (mut run, mut rng) = paced_run(name).await;
    for _ in 0..KILLS {
        tokio::time::sleep(rng.millis(700, 1800)).await;
        let slot = rng.index(run.system.processor_slots());
        let (pending, ack_pending) = run
            .system
            .jetstream()
            .consumer_state()
            .await
            .unwrap_or_default();
        run.system
            .kill_processor(slot)
            .expect("killing a processor");
        run.fault(format!(
            "SIGKILL processor {slot} (consumer then: {pending} pending, {ack_pending} ack pending)"
        ));
        tokio::time::sleep(rng.millis(0, 500)).await;
        run.system
            .start_processor(slot)
            .expect("restarting a processor");
        run.fault(format!("processor {slot} restarted"));
    }
    let report = run.finish_exact().await;
    assert_eq!(report.processors_killed, KILLS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_nats_server_stopped_and_restarted_during_the_load() {
    let _serial = SERIAL.lock().await;
    let name = "b: nats-server restarts";
    let (mut run, mut rng) = paced_run(name).await;
    for round in 0..2 {
        tokio::time::sleep(rng.millis(1500, 2500)).await;
        run.system.stop_nats().await.expect("stopping nats-server");
        run.fault(format!(
            "nats-server stopped (SIGTERM), outage {}",
            round + 1
        ));
        tokio::time::sleep(rng.millis(1500, 2500)).await;
        run.system
            .start_nats()
            .await
            .expect("restarting nats-server");
        run.fault("nats-server restarted (same port, same JetStream store)".to_owned());
    }
    let report = run.finish_exact().await;
    assert!(
        report.producers.unavailable > 0,
        "the outages produced no `unavailable` reply: the fault did not hit the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_redis_server_restarted_during_the_load() {
    let _serial = SERIAL.lock().await;
    let name = "c: redis-server restarts";
    let (mut run, mut rng) = paced_run(name).await;

    tokio::time::sleep(rng.millis(1500, 2500)).await;
    run.system
        .stop_redis()
        .await
        .expect("stopping redis-server");
    run.fault("redis-server stopped (SIGTERM: final AOF write and fsync)".to_owned());
    tokio::time::sleep(rng.millis(1000, 2000)).await;
    run.system
        .start_redis()
        .await
        .expect("restarting redis-server");
    run.fault("redis-server restarted (AOF reloaded)".to_owned());

    tokio::time::sleep(rng.millis(1500, 2500)).await;
    let delayed = run
        .system
        .redis_info("aof_delayed_fsync")
        .await
        .unwrap_or_else(|e| e.to_string());
    run.system.kill_redis().await.expect("killing redis-server");
    run.fault(format!(
        "redis-server SIGKILLed (aof_delayed_fsync was {delayed})"
    ));
    tokio::time::sleep(rng.millis(1000, 2000)).await;
    run.system
        .start_redis()
        .await
        .expect("restarting redis-server");
    run.fault("redis-server restarted (AOF reloaded)".to_owned());

    // Counted once both outages are over: the retries happened during them.
    let retried = run
        .system
        .count_in_processor_logs("batch not stored; retrying it");
    run.notes.push((
        "processor batch retries (from their logs)".to_owned(),
        retried.to_string(),
    ));
    run.finish_exact().await;
    assert!(
        retried > 0,
        "no processor met the Redis outages: the fault did not hit the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_one_two_and_four_replicas_give_byte_identical_documents() {
    let _serial = SERIAL.lock().await;
    let workload = workload();
    let unpaced = LoadOptions {
        concurrency: 500,
        max_pause: Duration::ZERO,
        seed: 7,
    };
    let mut runs = Vec::new();
    for replicas in [1, 2, 4] {
        let name = format!("d: {replicas} processor replica(s)");
        let options = SystemOptions {
            processors: replicas,
            ..SystemOptions::default()
        };
        let run = Run::begin(&name, options, workload.clone(), unpaced.clone()).await;
        let (report, documents) = run.finish().await;
        report.assert_exact();
        runs.push((replicas, documents));
    }
    let (_, first) = &runs[0];
    for (replicas, documents) in &runs[1..] {
        let differing = first.iter().zip(documents).filter(|(a, b)| a != b).count();
        println!(
            "d: raw JSON.GET documents differing between 1 and {replicas} replicas: {differing} of {}",
            first.len()
        );
        assert_eq!(
            differing, 0,
            "documents with {replicas} replicas differ from those with 1"
        );
    }
    assert!(first.iter().all(Option::is_some));
}

/// Beyond the brief's four: ingest itself dies with frames in flight. Every
/// connection breaks; frames published but not yet acknowledged are stored
/// without the producer knowing, and sent again once ingest is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_ingest_sigkilled_and_restarted_during_the_load() {
    let _serial = SERIAL.lock().await;
    let name = "e: ingest SIGKILLs";
    let (mut run, mut rng) = paced_run(name).await;
    for _ in 0..2 {
        tokio::time::sleep(rng.millis(1500, 3000)).await;
        run.system.kill_ingest().expect("killing ingest");
        run.fault("ingest SIGKILLed".to_owned());
        tokio::time::sleep(rng.millis(300, 1000)).await;
        run.system.start_ingest().await.expect("restarting ingest");
        run.fault("ingest restarted (same port)".to_owned());
    }
    let report = run.finish_exact().await;
    assert!(
        report.producers.reconnects > 0,
        "no producer reconnected: the fault did not hit the load"
    );
}

/// Regression: a frame holding `SESSION_END` that ingest answers
/// `unavailable` must leave the connection readable, so that the producer
/// can send it again on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_session_end_frame_answered_unavailable_can_be_sent_again() {
    use futures::{SinkExt, StreamExt};
    use sessionfold_core::{ErrorCode, Reply};
    use tokio_tungstenite::tungstenite::Message;

    let _serial = SERIAL.lock().await;
    let options = SystemOptions {
        processors: 0,
        ..SystemOptions::default()
    };
    let system = System::start(options).await.expect("starting the system");
    let url = format!(
        "ws://{}/websocket?session_id=ends-while-down",
        system.ingest_addr
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connecting");
    system.stop_nats().await.expect("stopping nats-server");
    let frame = r#"[{"type":"EVENT","timestamp":1},{"type":"SESSION_END","timestamp":2}]"#;
    let mut replies = Vec::new();
    for attempt in 1..=2u64 {
        socket.send(Message::text(frame)).await.expect("sending");
        let reply = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = reply else {
            panic!("attempt {attempt}: no reply within 5 s (after {replies:?}): {reply:?}");
        };
        let reply: Reply = serde_json::from_str(text.as_str()).expect("a reply");
        assert_eq!(reply.frame(), attempt);
        replies.push(reply.error_code());
    }
    assert_eq!(replies, [Some(ErrorCode::Unavailable); 2]);
}

/// Redis comes back behind: killed during the load and restarted from a
/// copy of its data taken seconds earlier (a restore from backup, an AOF
/// that lost its last writes, a replica promoted before it caught up).
/// Every frame folded after the copy is gone from Redis, but JetStream still
/// holds it; the processors must notice and fold it again on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_redis_restarted_from_an_older_copy_of_its_data() {
    let _serial = SERIAL.lock().await;
    let name = "f: redis-server restarted behind";
    let (mut run, mut rng) = paced_run(name).await;
    tokio::time::sleep(rng.millis(1500, 2500)).await;
    let snapshot = run
        .system
        .snapshot_redis()
        .await
        .expect("copying Redis's data");
    let acked_at_copy = run.system.jetstream().stream_messages().await.unwrap_or(0);
    run.fault(format!(
        "copy of Redis's AOF taken ({acked_at_copy} messages in the stream then)"
    ));
    tokio::time::sleep(rng.millis(1500, 2500)).await;
    let acked_at_restart = run.system.jetstream().stream_messages().await.unwrap_or(0);
    run.system
        .restart_redis_from(snapshot)
        .await
        .expect("restarting Redis from the copy");
    run.fault(format!(
        "redis-server SIGKILLed and restarted from the copy: behind by up to {} messages",
        acked_at_restart.saturating_sub(acked_at_copy)
    ));
    run.finish_exact().await;
    assert!(
        acked_at_restart > acked_at_copy,
        "nothing was stored between the copy and the restart: the fault did not hit the load"
    );
}

/// Power cuts per power-cut scenario: `POWER_CUTS` (`make power-test` sets
/// more), else 1.
fn power_cuts() -> usize {
    std::env::var("POWER_CUTS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// The paced load, with the longest pause between a session's frames from
/// `FAULTS_PACING_MS` (`make power-test` spreads the load over more cuts).
fn power_cut_load() -> LoadOptions {
    let mut load = paced();
    if let Some(ms) = std::env::var("FAULTS_PACING_MS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        load.max_pause = Duration::from_millis(ms);
    }
    load
}

/// The power goes out under load: nats-server's JetStream store and Redis's
/// AOF live on a test filesystem that keeps only what was fsynced
/// (`sessionfold-crashfs`). Both servers are SIGKILLed, everything not yet
/// fsynced is dropped, both start again from what is left. The returned
/// stats count what every cut dropped.
async fn power_cut_scenario(
    name: &str,
    nats_sync_interval: &str,
    appendfsync: &str,
    redis_durability: Option<&str>,
) -> (ScenarioReport, sessionfold_crashfs::Stats, u64) {
    let mut disk = sessionfold_crashfs::CrashFs::mount_temp()
        .expect("mounting the power-loss test filesystem (needs /dev/fuse and root)");
    let nats_dir = disk.path().join("nats");
    let redis_dir = disk.path().join("redis");
    let options = SystemOptions {
        nats_store_dir: Some(nats_dir),
        nats_sync_interval: Some(nats_sync_interval.to_owned()),
        redis_data_dir: Some(redis_dir),
        redis_args: vec!["--appendfsync".to_owned(), appendfsync.to_owned()],
        processor_env: redis_durability
            .map(|mode| vec![("REDIS_DURABILITY".to_owned(), mode.to_owned())])
            .unwrap_or_default(),
        ..SystemOptions::default()
    };
    let mut rng = fault_rng(name);
    let mut run = Run::begin(name, options, workload(), power_cut_load()).await;
    // The stream and the consumer were made long before the cut, as on a
    // machine that has been running for a while.
    disk.sync_all();
    let cuts = power_cuts();
    let mut last = sessionfold_crashfs::Stats::default();
    let mut dropped = (0, 0);
    for _ in 0..cuts {
        tokio::time::sleep(rng.millis(2000, 3500)).await;
        let acked_before = run.system.jetstream().stream_messages().await.unwrap_or(0);
        run.system.kill_nats().await.expect("killing nats-server");
        run.system.kill_redis().await.expect("killing redis-server");
        let cut = disk.power_cut().expect("cutting the power");
        dropped.0 += cut.bytes_lost_in_last_cut;
        dropped.1 += cut.names_lost_in_last_cut;
        run.fault(format!(
            "power cut: nats-server and redis-server SIGKILLed, {} unsynced bytes and {} unsynced \
             namespace changes dropped ({acked_before} messages in the stream before)",
            cut.bytes_lost_in_last_cut, cut.names_lost_in_last_cut
        ));
        tokio::time::sleep(rng.millis(300, 1000)).await;
        run.system
            .start_nats()
            .await
            .expect("restarting nats-server");
        run.system
            .start_redis()
            .await
            .expect("restarting redis-server");
        run.fault("power back: nats-server and redis-server restarted on what was left".to_owned());
        last = cut;
    }
    let committed = run
        .system
        .ingest_batches("committed")
        .await
        .expect("reading ingest's metrics");
    let refused = run.system.ingest_batches("unanswered").await.unwrap_or(0)
        + run.system.ingest_batches("refused").await.unwrap_or(0)
        + run.system.ingest_batches("duplicate").await.unwrap_or(0);
    run.notes.push((
        "group commit".to_owned(),
        format!(
            "{committed} atomic batches committed, {refused} that did not commit (their frames then stored one by one)"
        ),
    ));
    let cut = sessionfold_crashfs::Stats {
        bytes_lost_in_last_cut: dropped.0,
        names_lost_in_last_cut: dropped.1,
        ..last
    };
    run.notes.push((
        "filesystem".to_owned(),
        format!(
            "{} file fsyncs, {} directory fsyncs, {} bytes written before the last cut",
            cut.file_syncs, cut.dir_syncs, cut.bytes_written
        ),
    ));
    let (report, _) = run.finish().await;
    drop(disk);
    (report, cut, committed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_power_cut_with_the_shipped_durable_settings_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let (report, _, group_commits) = power_cut_scenario(
        "g: power cut, sync_interval always + appendfsync always",
        sessionfold_testkit::SYNC_ALWAYS,
        "always",
        None,
    )
    .await;
    report.assert_exact();
    assert!(
        group_commits > 0,
        "ingest committed no atomic batch: the cuts did not test group commit"
    );
}

/// The same power cut with nats-server's and Redis's own defaults: JetStream
/// fsyncs every two minutes, Redis once a second. Acknowledged frames are
/// lost; this scenario shows how many (docs/faults.md records a run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_power_cut_with_the_servers_defaults_loses_acknowledged_frames() {
    let _serial = SERIAL.lock().await;
    let name = "h: power cut, sync_interval 2m + appendfsync everysec";
    let (report, cut, _) = power_cut_scenario(name, "2m", "everysec", Some("none")).await;
    let v = &report.verification;
    println!(
        "{name}: of {} acknowledged frames ({} events), lost children {}, missing documents {}, \
         unequal documents {} of {}",
        report.producers.acked,
        report.events_acked,
        v.lost,
        v.documents_missing,
        v.unequal,
        v.sessions
    );
    assert!(
        cut.bytes_lost_in_last_cut > 0,
        "the power cut dropped nothing: the fault did not hit the load"
    );
    assert!(
        v.lost + v.documents_missing > 0,
        "the defaults lost nothing acknowledged in a power cut; docs/faults.md says they do"
    );
}
