//! Hardening II, attack 1: finished-session amplification, replayed
//! against a real nats-server and Valkey with RedisJSON.
//!
//! A session holds a large document; each tiny late `SESSION_END` frame
//! reopens it, and with `SESSION_MAX_DURATION_SECS` set it closes again at
//! once, publishing the whole document again on the finished-sessions
//! stream. The bound (docs/design.md §10.4): what a producer makes the
//! service store is a small multiple of what it sent, so a re-close
//! replaces the session's earlier finished message instead of adding a
//! copy. Prints what a stream keeping every close would hold beside what
//! the finished-sessions stream holds. A second test fills the stream to
//! its byte limit: the closes that do not fit wait and are stored later.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

mod run_config;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use sessionfold_core::names::DEFAULT_SESSIONS_STREAM;
use sessionfold_core::{LifecycleSubjects, SessionId};
use sessionfold_processor::Processor;
use sessionfold_testkit::{NatsServer, RedisServer, RunNames, eventually_ok, init_test_tracing};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
/// Frames that build the large document, and the events in each.
const BIG_FRAMES: usize = 8;
const EVENTS_PER_FRAME: usize = 100;
/// Tiny late frames, each waited on until its re-close is published.
const TINY_FRAMES: usize = 20;

async fn stream_bytes(js: &jetstream::Context, name: &str) -> Result<(u64, u64), String> {
    let mut stream = js.get_stream(name).await.map_err(|err| err.to_string())?;
    let info = stream.info().await.map_err(|err| err.to_string())?;
    Ok((info.state.bytes, info.state.messages))
}

/// Bytes every stream of the server holds.
async fn all_streams_bytes(js: &jetstream::Context) -> u64 {
    let mut names = js.stream_names();
    let mut total = 0;
    while let Some(Ok(name)) = names.next().await {
        total += stream_bytes(js, &name).await.map_or(0, |(bytes, _)| bytes);
    }
    total
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::test]
async fn tiny_late_frames_that_re_close_a_large_session_store_no_copy_of_its_document() {
    init_test_tracing();
    let nats = NatsServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let names = RunNames::unique("AMPLIFY", "amplify", "am");
    let mut config = run_config::processor_config(&nats, &redis, &names);
    // Every late frame re-closes at once: the session is past its
    // maximum duration when the frame comes.
    config.lifecycle.session_max_duration_secs = 1;
    config.lifecycle.session_end_grace_secs = 1;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let processor = Processor::build(config).await.unwrap();
    let session = SessionId::parse("amplified").unwrap();
    let subject = format!("{}.{}", names.subject_prefix, session.token());

    // What a stream keeping every close would hold: every finished
    // message published, as a plain subscriber sees them.
    let finished_subject = LifecycleSubjects::default().finished(&session);
    let mut published = client.subscribe(finished_subject).await.unwrap();
    let published_bytes = Arc::new(AtomicU64::new(0));
    let published_count = Arc::new(AtomicU64::new(0));
    let counting = {
        let (bytes, count) = (Arc::clone(&published_bytes), Arc::clone(&published_count));
        tokio::spawn(async move {
            while let Some(message) = published.next().await {
                bytes.fetch_add(message.payload.len() as u64, Ordering::SeqCst);
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    let mut sent = 0_u64;
    let padding = "x".repeat(1000);
    for frame_index in 0..BIG_FRAMES {
        let events: Vec<_> = (0..EVENTS_PER_FRAME)
            .map(|event| {
                serde_json::json!({"type": "EVENT", "timestamp": 2,
                    "name": format!("e{frame_index}-{event}"), "padding": padding})
            })
            .collect();
        let frame = serde_json::to_vec(&events).unwrap();
        sent += frame.len() as u64;
        js.publish(subject.clone(), frame.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(processor.run(shutdown.clone()));
    let wait_for_closes = |count: u64| {
        let published_count = Arc::clone(&published_count);
        let js = js.clone();
        async move {
            eventually_ok(&format!("{count} closes stored"), DEADLINE, || {
                let published_count = Arc::clone(&published_count);
                let js = js.clone();
                async move {
                    let seen = published_count.load(Ordering::SeqCst);
                    let (_, last) = js
                        .get_stream(DEFAULT_SESSIONS_STREAM)
                        .await
                        .map_err(|err| err.to_string())?
                        .info()
                        .await
                        .map(|info| (info.state.messages, info.state.last_sequence))
                        .map_err(|err| err.to_string())?;
                    if seen >= count && last >= count {
                        Ok(())
                    } else {
                        Err(format!("{seen} closes published, last sequence {last}"))
                    }
                }
            })
            .await;
        }
    };
    wait_for_closes(1).await;
    let (first_bytes, _) = stream_bytes(&js, DEFAULT_SESSIONS_STREAM).await.unwrap();
    let big_sent = sent;

    // Each differs from the others (the same event twice changes nothing).
    let tiny = |close: u64| format!(r#"[{{"type":"SESSION_END","timestamp":{}}}]"#, 1000 + close);
    for close in 0..TINY_FRAMES as u64 {
        let frame = tiny(close);
        sent += frame.len() as u64;
        js.publish(subject.clone(), frame.into())
            .await
            .unwrap()
            .await
            .unwrap();
        wait_for_closes(close + 2).await;
    }
    let tiny_sent = sent - big_sent;
    let (stored, messages) = stream_bytes(&js, DEFAULT_SESSIONS_STREAM).await.unwrap();
    let everything = all_streams_bytes(&js).await;
    let unbounded = published_bytes.load(Ordering::SeqCst);
    let on_disk = dir_bytes(
        &nats
            .store_dir()
            .join("jetstream/$G/streams")
            .join(DEFAULT_SESSIONS_STREAM),
    );
    println!(
        "finished-session amplification: {big_sent} B of frames built the document; \
         {TINY_FRAMES} re-closing frames of {} B ({tiny_sent} B) then made {} closes",
        tiny(0).len(),
        published_count.load(Ordering::SeqCst)
    );
    println!(
        "  a stream keeping every close (before): {unbounded} B, +{} B for the tiny frames ({}x them)",
        unbounded.saturating_sub(first_bytes),
        unbounded.saturating_sub(first_bytes) / tiny_sent
    );
    println!(
        "  {DEFAULT_SESSIONS_STREAM} holds (after): {stored} B in {messages} message(s) \
         ({first_bytes} B after the first close), +{} B for the tiny frames; every stream together: {everything} B for {sent} B sent ({:.2}x)",
        stored.saturating_sub(first_bytes),
        everything as f64 / sent as f64
    );
    // The bound: the tiny frames add to the finished stream no more than
    // a small multiple of their own bytes (each adds a child to the
    // document, which the one finished message carries).
    assert!(
        stored.saturating_sub(first_bytes) <= 8 * tiny_sent + 1024,
        "the re-closes stored {} B for {tiny_sent} B of frames",
        stored.saturating_sub(first_bytes)
    );
    assert_eq!(messages, 1, "one finished message per session");
    // Each close is stored once (its `<token>:<revision>` id): the stream
    // took as many messages as there were closes.
    let last_sequence = js
        .get_stream(DEFAULT_SESSIONS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    assert_eq!(last_sequence, 1 + TINY_FRAMES as u64);
    // The stream's own limits (README, "Retention").
    let limits = js
        .get_stream(DEFAULT_SESSIONS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(limits.max_messages_per_subject, 1);
    assert_eq!(limits.max_bytes, 1 << 30);
    assert_eq!(limits.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(limits.discard, jetstream::stream::DiscardPolicy::New);
    // On disk too: the replaced messages' space is reclaimed (20 re-closes
    // left 2.5 MB, 100 left 1.7 MB, with a 0.85 MB document).
    println!(
        "  {DEFAULT_SESSIONS_STREAM}'s files: {on_disk} B (a stream keeping every close: {unbounded} B)"
    );
    assert!(
        on_disk <= 6 * sent,
        "the finished stream takes {on_disk} B on disk for {sent} B sent"
    );
    // And all the streams together (frames, timers, finished sessions,
    // dead letters) hold a small multiple of what was sent.
    assert!(
        everything <= 4 * sent,
        "the streams hold {everything} B for {sent} B sent"
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
    counting.abort();
    drop(nats);
}

/// At `SESSIONS_MAX_BYTES` the finished stream refuses new closes; they
/// wait, retried, and are stored once there is room: none is lost.
#[tokio::test]
async fn closes_wait_at_the_finished_streams_byte_limit_and_are_stored_once_there_is_room() {
    const SESSIONS: usize = 4;
    const LIMIT: i64 = 4 << 10;
    init_test_tracing();
    let nats = NatsServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let names = RunNames::unique("FULLFIN", "fullfin", "ff");
    let mut config = run_config::processor_config(&nats, &redis, &names);
    config.lifecycle.session_end_grace_secs = 1;
    config.lifecycle.sessions_max_bytes = LIMIT;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let processor = Processor::build(config).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(processor.run(shutdown.clone()));
    // Each document about 1.6 KB: two fit under the limit, not four.
    let padding = "x".repeat(1500);
    for index in 0..SESSIONS {
        let frame = serde_json::json!([
            {"type": "SESSION_START", "timestamp": 1},
            {"type": "EVENT", "timestamp": 2, "name": "e", "padding": padding},
            {"type": "SESSION_END", "timestamp": 3},
        ]);
        js.publish(
            format!("{}.full-{index}", names.subject_prefix),
            frame.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let (stored, bytes) = eventually_ok("the finished stream fills", DEADLINE, || async {
        let (bytes, messages) = stream_bytes(&js, DEFAULT_SESSIONS_STREAM).await?;
        // Two fit.
        if messages >= 2 {
            Ok((messages, bytes))
        } else {
            Err(format!("{messages} closes stored"))
        }
    })
    .await;
    // The others keep being retried, and stay refused while it is full.
    let (bytes_later, stored_later) = stream_bytes(&js, DEFAULT_SESSIONS_STREAM).await.unwrap();
    println!(
        "finished stream at its limit ({LIMIT} B): {stored_later} of {SESSIONS} closes stored, \
         {bytes_later} B (first seen: {stored}, {bytes} B)"
    );
    assert!(bytes_later <= LIMIT as u64);
    assert!(stored_later < SESSIONS as u64);
    // Room again (the limit raised): every close is stored, once.
    let mut limits = js
        .get_stream(DEFAULT_SESSIONS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    limits.max_bytes = 1 << 20;
    js.update_stream(limits).await.unwrap();
    eventually_ok("every close is stored", DEADLINE, || async {
        let mut stream = js
            .get_stream(DEFAULT_SESSIONS_STREAM)
            .await
            .map_err(|err| err.to_string())?;
        let state = stream
            .info()
            .await
            .map_err(|err| err.to_string())?
            .state
            .clone();
        if (state.messages, state.last_sequence) == (SESSIONS as u64, SESSIONS as u64) {
            Ok(())
        } else {
            Err(format!("{state:?}"))
        }
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    drop(nats);
}
