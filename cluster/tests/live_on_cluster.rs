//! Live deltas and read your writes on a Redis Cluster: the feed's atomic
//! read (document, revision, state) runs in each session's slot on its
//! master, and `min_seq` reads the consumer's ack floor from a NATS
//! cluster. Small: three NATS nodes with an R1 stream, three Redis masters
//! with the shipped ACLs, two processors.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::time::Duration;

use futures::StreamExt as _;
use sessionfold_client::sse::{LiveReplica, SseEvents};
use sessionfold_cluster::{ClusterOptions, ClusterSystem};
use sessionfold_testkit::init_test_tracing;

const SESSIONS: usize = 6;
const FRAMES: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_replay_and_min_seq_reads_hold_their_frames_on_every_master() {
    init_test_tracing();
    let system = ClusterSystem::start(ClusterOptions {
        stream_replicas: 1,
        processors: 2,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let producer = system.producer();
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let id = format!("live-cluster-{s}");
        let api = system.api_addr;
        let http = http.clone();
        let mut sender = producer.session(&id).unwrap();
        tasks.push(tokio::spawn(async move {
            let response = http
                .get(format!("http://{api}/data/stream?session_id={id}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.bytes_stream();
            let mut parser = SseEvents::default();
            let mut replica = LiveReplica::default();
            let mut last = 0;
            for i in 0..FRAMES {
                // Every third one goes in before the others.
                let timestamp = if i % 3 == 2 { i as f64 - 1.5 } else { i as f64 };
                let frame =
                    format!(r#"[{{"type":"EVENT","timestamp":{timestamp},"name":"e{i}"}}]"#);
                match sender.send_frame(&frame).await.unwrap() {
                    sessionfold_client::FrameOutcome::Accepted { seq, .. } => {
                        last = seq.unwrap().max(last);
                    }
                    other => panic!("{other:?}"),
                }
            }
            sender.close().await;
            let served = http
                .get(format!(
                    "http://{api}/data?session_id={id}&min_seq={last}&wait_ms=10000"
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(served.status(), 200);
            let served = served.text().await.unwrap();
            assert_eq!(served.matches("\"name\":\"e").count(), FRAMES, "{served}");
            let replayed = tokio::time::timeout(Duration::from_secs(20), async {
                while replica.document().as_deref() != Some(served.as_str()) {
                    let chunk = body.next().await.unwrap().unwrap();
                    for event in parser.push(&chunk) {
                        replica.apply(&event).unwrap();
                    }
                }
            })
            .await;
            assert!(
                replayed.is_ok(),
                "{id}: the stream never gave {served}: {:?}",
                replica.document()
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // The sessions are spread over the masters.
    let mut holding = 0;
    for master in 0..system.redis.masters() {
        if system.redis.keys_on(master).await.unwrap() > 0 {
            holding += 1;
        }
    }
    assert!(holding > 1, "only {holding} master holds the sessions");
}
