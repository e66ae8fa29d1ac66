//! A Redis Cluster master dies while its replica lags, and the replica is
//! promoted (`make test`, docs/faults.md).
//!
//! Three masters with one replica each (Valkey, RedisJSON, the shipped ACL
//! file), the three-node NATS cluster, ingest, two processors and the api. While the
//! load runs, the replica of master 0 is cut off from it (its replication
//! link fails authentication from then on: a lag that lasts exactly as long
//! as the test wants). Master 0 goes on acknowledging writes that only it
//! has. Once the load is over, master 0 is SIGKILLed and its replica takes
//! over (`CLUSTER FAILOVER TAKEOVER`): every write the replica never got is
//! gone from Redis. The old master is then started again and comes back as
//! the new master's replica.
//!
//! - `REDIS_DURABILITY=replica`: the processors ack a batch only once a
//!   replica has it (`WAIT`), so nothing they acked was lost; what master 0
//!   applied alone is delivered again and applied on the new master.
//! - `REDIS_DURABILITY=none`: the processors acked what only master 0 had.
//!   The test prints what the documents lack right after the failover, and
//!   then requires that the processors repair it from the stream on their
//!   own.
//!
//! Run: `cargo build -p sessionfold && cargo test -p sessionfold-cluster
//! --test failover -- --nocapture`.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::time::Duration;

use sessionfold_client::loadgen::WorkloadSpec;
use sessionfold_cluster::{ClusterOptions, ClusterSystem};
use sessionfold_harness::verify::verify;
use sessionfold_harness::{BackgroundLoad, ScenarioReport, SystemUnderTest, settle};
use sessionfold_testkit::{eventually_ok, init_test_tracing};
use tokio::time::Instant;

/// The scenarios take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SESSIONS: usize = 150;
const FRAMES_PER_SESSION: usize = 8;
const EVENTS_PER_FRAME: usize = 10;
const WORKLOAD_SEED: u64 = 0x0fa1_10fe;
/// When, into the load, the replica is cut off.
const CUT_AFTER: Duration = Duration::from_millis(1200);
/// How long the documents may take to equal the reference after the
/// takeover (the processors must find the new master, then repair).
const REPAIR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the processors may take, after the load, to apply what they can
/// before master 0 is killed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

struct Outcome {
    report: ScenarioReport,
    /// Children missing from the documents right after the takeover.
    lost_right_after_failover: usize,
    /// Bytes of master 0's replication stream the replica never got.
    replication_lag_bytes: i64,
}

/// How the processors come back from what a failover lost.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repair {
    /// Automatic repair is on from the start.
    On,
    /// The processors run without repair (`REPAIR_CHECK_INTERVAL_MS=0`), so
    /// that what the failover lost stays visible; after that is measured, a
    /// processor with repair joins.
    Later,
}

async fn failover_scenario(name: &str, durability: &str, repair: Repair) -> Outcome {
    init_test_tracing();
    let started = Instant::now();
    let mut processor_env = vec![("REDIS_DURABILITY".to_owned(), durability.to_owned())];
    if repair == Repair::Later {
        processor_env.push(("REPAIR_CHECK_INTERVAL_MS".to_owned(), "0".to_owned()));
    }
    let options = ClusterOptions {
        redis_nodes: 3,
        redis_replicas_per_master: 1,
        processor_env,
        ..ClusterOptions::default()
    };
    let mut system = ClusterSystem::start(options)
        .await
        .expect("starting the clusters and the services");
    let spec = WorkloadSpec::new(
        WORKLOAD_SEED,
        SESSIONS,
        FRAMES_PER_SESSION,
        EVENTS_PER_FRAME,
    );
    let (workload, load) =
        BackgroundLoad::start_generated(&spec, system.producer(), Duration::from_millis(800), 13);
    let load_started = Instant::now();

    let master = 0;
    let replica = system.redis.replica_index(master, 0);
    tokio::time::sleep(CUT_AFTER).await;
    system
        .redis
        .cut_replica_off(replica)
        .await
        .expect("cutting the replica off its master");
    let replica_offset = system
        .redis
        .replication_offset(replica, "slave_repl_offset")
        .await
        .expect("the replica's offset");
    let mut faults = vec![format!(
        "t={:>5.1?}: replica {replica} of master {master} cut off (replication offset {replica_offset})",
        load_started.elapsed()
    )];
    let load_report = load.finish().await;

    // Let the processors apply what they can: under `none`, all of it (the
    // processors then have acked everything, the writes on master 0 alone
    // included); under `replica`, everything but the batches for master 0,
    // which wait for a replica that does not come.
    if durability == "none" {
        if let Err(err) = system.jetstream().wait_drained(APPLY_TIMEOUT).await {
            panic!("{name}: {err:#}\n{}", system.log_tails(25));
        }
    } else {
        let deadline = Instant::now() + APPLY_TIMEOUT;
        let mut last = None;
        loop {
            let state = system
                .jetstream()
                .consumer_state()
                .await
                .unwrap_or_default();
            if state == (0, 0) || Instant::now() >= deadline || last == Some(state) {
                break;
            }
            last = Some(state);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let master_offset = system
        .redis
        .replication_offset(master, "master_repl_offset")
        .await
        .expect("the master's offset");
    let replication_lag_bytes = master_offset - replica_offset;
    system.redis.kill(master);
    system
        .redis
        .take_over(replica)
        .await
        .expect("promoting the replica");
    faults.push(format!(
        "t={:>5.1?}: master {master} SIGKILLed {replication_lag_bytes} bytes ahead of its replica; replica {replica} took over",
        load_started.elapsed()
    ));
    let taken_over = Instant::now();
    // The killed master comes back (as an orchestrator would restart it) as
    // the new master's replica, so that `replica` durability can be met
    // again for those slots.
    system
        .redis
        .restart_as_replica(master)
        .await
        .expect("restarting the old master");
    faults.push(format!(
        "t={:>5.1?}: node {master} restarted, now a replica of node {replica}",
        load_started.elapsed()
    ));

    let session_ids: Vec<String> = workload
        .sessions
        .iter()
        .map(|s| s.session_id.clone())
        .collect();
    // The api finds the new master on its first errors.
    let right_after = eventually_ok(
        "the documents through the api after the failover",
        Duration::from_secs(20),
        || system.read_documents(&session_ids),
    )
    .await;
    let after = verify(&workload, &load_report, &right_after);
    let lost_right_after_failover = after.lost + after.documents_missing;
    println!(
        "{name}: right after the failover: lost={} missing documents={} unequal={} of {} sessions",
        after.lost, after.documents_missing, after.unequal, after.sessions
    );

    if repair == Repair::Later {
        // What was lost stays lost without repair; now a processor with
        // repair joins (it finds no applied-floor marker and replays).
        system
            .add_processor(
                "processor-repairing",
                &[("REPAIR_CHECK_INTERVAL_MS", "1000".to_owned())],
            )
            .await
            .expect("starting a processor with repair");
        faults.push(format!(
            "t={:>5.1?}: a processor with automatic repair joined",
            load_started.elapsed()
        ));
    }
    let mut settled = settle(&system, name, &workload, &load_report).await;
    // A repair after a failover first has to find the new master: give the
    // documents REPAIR_TIMEOUT in all, counted from the takeover.
    while !settled.verification.is_exact() && taken_over.elapsed() < REPAIR_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(documents) = system.read_documents(&session_ids).await {
            settled.verification = verify(&workload, &load_report, &documents);
        }
    }
    let converged_after = taken_over.elapsed();
    let report = ScenarioReport {
        processor_replicas: system.options.processors,
        faults,
        notes: vec![
            (
                "right after the failover".to_owned(),
                format!(
                    "{} children lost, {} documents missing (before any repair)",
                    after.lost, after.documents_missing
                ),
            ),
            (
                "documents checked".to_owned(),
                format!("{converged_after:.1?} after the takeover"),
            ),
        ],
        drain_duration: settled.drain_duration,
        duration: started.elapsed(),
        verification: settled.verification,
        ..ScenarioReport::new(name, &workload, &load_report, system.jetstream())
            .await
            .expect("stream info")
    };
    report.print(&system);
    Outcome {
        report,
        lost_right_after_failover,
        replication_lag_bytes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replica_durability_a_failover_behind_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let outcome = failover_scenario(
        "failover: REDIS_DURABILITY=replica, master killed while its replica lags",
        "replica",
        Repair::On,
    )
    .await;
    assert!(
        outcome.replication_lag_bytes > 0,
        "the replica did not lag: the fault did not hit the load"
    );
    outcome.report.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_durability_a_failover_behind_loses_writes_until_they_are_repaired() {
    let _serial = SERIAL.lock().await;
    let outcome = failover_scenario(
        "failover: REDIS_DURABILITY=none, master killed while its replica lags, repair joining later",
        "none",
        Repair::Later,
    )
    .await;
    assert!(
        outcome.replication_lag_bytes > 0,
        "the replica did not lag: the fault did not hit the load"
    );
    assert!(
        outcome.lost_right_after_failover > 0,
        "the promoted replica lacked nothing: the fault did not lose any write"
    );
    outcome.report.assert_exact();
}
