//! sessionfold on a NATS cluster and a Redis Cluster (`make cluster-test`).
//!
//! On loopback: three nats-servers in one cluster with the event stream at
//! R3, three Redis Cluster masters with RedisJSON, both with the shipped
//! permission files; ingest, two processors and the api configured the way
//! a deployment is (several `NATS_URL`s, `STREAM_REPLICAS=3`,
//! `REDIS_CLUSTER=true`, each service with its own credentials). While the
//! load runs, the node leading the event stream is SIGKILLed. Then every
//! session's document, read through the api, must equal the reference fold
//! of the frames the producers got acknowledged: nothing lost, nothing
//! duplicated. Finally the killed node comes back and catches up.
//!
//! Run: `make cluster-test`, or `cargo build -p sessionfold && cargo test -p
//! sessionfold-cluster -- --nocapture` (`SESSIONFOLD_KEEP_TEST_DIRS=1` keeps
//! the logs, `CLUSTER_CHILD_LOG` sets the services' `RUST_LOG`).

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::time::Duration;

use sessionfold_client::loadgen::WorkloadSpec;
use sessionfold_cluster::{ClusterOptions, ClusterSystem};
use sessionfold_harness::{BackgroundLoad, ScenarioReport, SystemUnderTest, settle};
use sessionfold_testkit::{eventually_ok, init_test_tracing};
use tokio::time::Instant;

const SESSIONS: usize = 200;
const FRAMES_PER_SESSION: usize = 10;
const EVENTS_PER_FRAME: usize = 10;
const WORKLOAD_SEED: u64 = 0x0c1a_57e2;
/// When, into the load, the stream leader is killed.
const KILL_AFTER: Duration = Duration::from_millis(2500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_node_killed_under_load_loses_and_duplicates_nothing() {
    init_test_tracing();
    let name = "cluster: stream leader SIGKILLed";
    let started = Instant::now();
    let system = ClusterSystem::start(ClusterOptions::default())
        .await
        .expect("starting the clusters and the services");
    let startup = started.elapsed();
    assert_eq!(
        system.stream_replicas().await.expect("stream info"),
        3,
        "STREAM_REPLICAS=3 made an R3 stream"
    );
    let (leader, current) = eventually_ok(
        "three current replicas",
        Duration::from_secs(20),
        || async {
            match system.stream_placement().await {
                Ok((leader, 3)) => Ok((leader, 3)),
                Ok(other) => Err(format!("{other:?}")),
                Err(err) => Err(err.to_string()),
            }
        },
    )
    .await;

    let memory_before = system.redis.total_used_memory().await.expect("INFO memory");
    let spec = WorkloadSpec::new(
        WORKLOAD_SEED,
        SESSIONS,
        FRAMES_PER_SESSION,
        EVENTS_PER_FRAME,
    );
    let (workload, load) =
        BackgroundLoad::start_generated(&spec, system.producer(), Duration::from_millis(1500), 11);

    tokio::time::sleep(KILL_AFTER).await;
    let (leader, _) = system.stream_placement().await.unwrap_or((leader, current));
    let victim = system
        .nats
        .index_of(&leader)
        .expect("the leader is one of the nodes");
    let (pending, ack_pending) = system
        .jetstream()
        .consumer_state()
        .await
        .unwrap_or_default();
    system.nats.kill(victim).await.expect("killing a NATS node");
    let mut faults = vec![format!(
        "{}: SIGKILL nats {leader}, the stream leader (consumer then: {pending} pending, {ack_pending} ack pending)",
        load.moment()
    )];
    let (new_leader, _) = eventually_ok("a new stream leader", Duration::from_secs(30), || async {
        match system.stream_placement().await {
            Ok((new_leader, current)) if new_leader != leader => Ok((new_leader, current)),
            Ok(other) => Err(format!("{other:?}")),
            Err(err) => Err(err.to_string()),
        }
    })
    .await;
    faults.push(format!(
        "t={:>5.1?}: {new_leader} leads the stream",
        load.elapsed()
    ));

    let load_report = load.finish().await;
    let settled = settle(&system, name, &workload, &load_report).await;

    let mut keys_per_node = Vec::new();
    for index in 0..system.redis.len() {
        keys_per_node.push(system.redis.keys_on(index).await.expect("DBSIZE"));
    }
    let memory_after = system.redis.total_used_memory().await.expect("INFO memory");
    let children = settled.verification.expected_children.max(1) as u64;
    let restart_started = Instant::now();
    system
        .nats
        .restart(victim)
        .await
        .expect("restarting the killed NATS node");
    eventually_ok(
        "the restarted node caught up",
        Duration::from_secs(60),
        || async {
            match system.stream_placement().await {
                Ok((_, 3)) => Ok(()),
                Ok(other) => Err(format!("{other:?}")),
                Err(err) => Err(err.to_string()),
            }
        },
    )
    .await;
    faults.push(format!(
        "{leader} restarted; all three replicas current again after {:.1?}",
        restart_started.elapsed()
    ));

    let report = ScenarioReport {
        processor_replicas: system.options.processors,
        processors_killed: 0,
        faults,
        notes: vec![
            (
                "startup   ".to_owned(),
                format!("{startup:.1?} (3 NATS + 3 Redis nodes, 4 services)"),
            ),
            (
                "redis keys".to_owned(),
                format!("per node {keys_per_node:?}"),
            ),
            (
                "redis mem ".to_owned(),
                format!(
                    "{} bytes more for {children} children: {} bytes per child (all three keys of {SESSIONS} sessions)",
                    memory_after.saturating_sub(memory_before),
                    memory_after.saturating_sub(memory_before) / children
                ),
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
    report.assert_exact();
    assert!(
        keys_per_node.iter().all(|&keys| keys > 0),
        "the sessions are spread over every Redis node: {keys_per_node:?}"
    );
}
