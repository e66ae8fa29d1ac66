//! Hardening II, the dead-letter stream's limits, against a real
//! nats-server and Valkey with RedisJSON: late frames for a session
//! closed for good are dead-lettered, and the dead-letter stream has an
//! age and a byte limit. At the byte limit it refuses new letters, and
//! their frames stay unacknowledged in the event stream, retried, until
//! there is room again: nothing is dropped to make room.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

mod run_config;

use std::time::Duration;

use async_nats::jetstream;
use sessionfold_core::SessionId;
use sessionfold_core::names::DEFAULT_CLOSED_BUCKET;
use sessionfold_processor::Processor;
use sessionfold_testkit::{NatsServer, RedisServer, RunNames, eventually_ok, init_test_tracing};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
/// More than the limit holds, and what does not fit fits once it is
/// emptied.
const LATE_FRAMES: usize = 24;
const LETTER_BYTES: usize = 4000;
const DEAD_MAX_BYTES: i64 = 64 << 10;
const DEAD_MAX_AGE_SECS: u64 = 3600;

async fn state_of(js: &jetstream::Context, name: &str) -> Result<jetstream::stream::Info, String> {
    let mut stream = js.get_stream(name).await.map_err(|err| err.to_string())?;
    stream.info().await.cloned().map_err(|err| err.to_string())
}

/// Frames the consumer has not acked (pending or in flight).
async fn unacked(js: &jetstream::Context, stream: &str, consumer: &str) -> Result<u64, String> {
    let stream = js.get_stream(stream).await.map_err(|err| err.to_string())?;
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(consumer)
        .await
        .map_err(|err| err.to_string())?;
    let info = consumer.info().await.map_err(|err| err.to_string())?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

#[tokio::test]
async fn late_frames_fill_the_dead_letter_stream_to_its_limit_and_the_rest_wait_unacked() {
    init_test_tracing();
    let nats = NatsServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let names = RunNames::unique("DEADLIMIT", "deadlimit", "dl");
    let mut config = run_config::processor_config(&nats, &redis, &names);
    config.worker.dead_letter_max_bytes = DEAD_MAX_BYTES;
    config.worker.dead_letter_max_age_secs = DEAD_MAX_AGE_SECS;
    // Closed 1 s after its SESSION_END, closed for good 1 s later.
    config.lifecycle.session_end_grace_secs = 1;
    config.lifecycle.allowed_lateness_secs = 1;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let processor = Processor::build(config).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(processor.run(shutdown.clone()));

    let dead = state_of(&js, &names.dead_stream).await.unwrap();
    assert_eq!(dead.config.max_bytes, DEAD_MAX_BYTES);
    assert_eq!(dead.config.max_age, Duration::from_secs(DEAD_MAX_AGE_SECS));
    assert_eq!(dead.config.discard, jetstream::stream::DiscardPolicy::New);

    let session = SessionId::parse("closed-for-good").unwrap();
    let subject = format!("{}.{}", names.subject_prefix, session.token());
    let opening =
        br#"[{"type":"SESSION_START","timestamp":1},{"type":"SESSION_END","timestamp":2}]"#;
    js.publish(subject.clone(), opening.as_slice().into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually_ok("the session is closed for good", DEADLINE, || async {
        let bucket = js
            .get_key_value(DEFAULT_CLOSED_BUCKET)
            .await
            .map_err(|err| err.to_string())?;
        match bucket.get(session.token()).await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Late frames, each distinct (the same event twice changes nothing).
    let padding = "x".repeat(LETTER_BYTES);
    let mut sent = 0;
    for index in 0..LATE_FRAMES {
        let frame = format!(
            r#"[{{"type":"EVENT","timestamp":{},"name":"late","padding":"{padding}"}}]"#,
            10 + index
        );
        sent += frame.len();
        js.publish(subject.clone(), frame.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The stream fills to its limit; the letters that do not fit wait.
    let (letters, bytes, waiting) =
        eventually_ok("the dead-letter stream is full", DEADLINE, || async {
            let info = state_of(&js, &names.dead_stream).await?;
            let waiting = unacked(&js, &names.stream, &names.consumer).await?;
            let stored = info.state.messages;
            if stored > 0 && stored + waiting == LATE_FRAMES as u64 && waiting > 0 {
                Ok((stored, info.state.bytes, waiting))
            } else {
                Err(format!("{stored} letters stored, {waiting} frames unacked"))
            }
        })
        .await;
    println!(
        "dead-letter limits: {LATE_FRAMES} late frames ({sent} B) for a session closed for good"
    );
    println!("  before (no limit, no age): all {LATE_FRAMES} kept, about {sent} B, forever");
    println!(
        "  after (max_bytes {DEAD_MAX_BYTES}, max_age {DEAD_MAX_AGE_SECS} s, discard new): \
         {letters} letters, {bytes} B stored; {waiting} frames wait unacknowledged, none dropped"
    );
    assert!(bytes <= DEAD_MAX_BYTES as u64, "{bytes} B past the limit");
    let events = state_of(&js, &names.stream).await.unwrap();
    assert_eq!(
        events.state.messages,
        1 + LATE_FRAMES as u64,
        "the event stream keeps every frame"
    );

    // Room again (an operator purges the letters, or they age out): the
    // frames that waited are dead-lettered, every one of them.
    js.get_stream(&names.dead_stream)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    eventually_ok("the waiting frames are dead-lettered", DEADLINE, || async {
        let info = state_of(&js, &names.dead_stream).await?;
        let waiting = unacked(&js, &names.stream, &names.consumer).await?;
        if (info.state.messages, waiting) == (LATE_FRAMES as u64 - letters, 0) {
            Ok(())
        } else {
            Err(format!(
                "{} letters, {waiting} unacked",
                info.state.messages
            ))
        }
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    drop(nats);
}
