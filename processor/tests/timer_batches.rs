//! The lifecycle's schedules stored by atomic batches (docs/design.md
//! §10.1), against a real nats-server and Valkey with RedisJSON: every
//! timer a pulled batch arms is stored and fires, and a timers stream that
//! takes no atomic batch still gets every timer, one by one.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

mod run_config;

use std::time::Duration;

use async_nats::jetstream;
use sessionfold_core::names::{DEFAULT_SESSIONS_STREAM, DEFAULT_TIMERS_STREAM};
use sessionfold_core::{LifecycleSubjects, SessionId};
use sessionfold_processor::Processor;
use sessionfold_processor::config::LifecycleSettings;
use sessionfold_processor::lifecycle::{Lifecycle, TimerKind};
use sessionfold_testkit::{NatsServer, RedisServer, RunNames, eventually_ok, init_test_tracing};
use tokio_util::sync::CancellationToken;

/// Sessions in one pulled batch: more than one atomic batch's minimum,
/// fewer than the processor's batch size.
const SESSIONS: usize = 300;
const DEADLINE: Duration = Duration::from_secs(60);

fn session(index: usize) -> SessionId {
    SessionId::parse(&format!("batched-{index}")).unwrap()
}

/// Messages `stream` holds on the subjects matching `filter`.
async fn messages_on(js: &jetstream::Context, stream: &str, filter: &str) -> u64 {
    use futures::TryStreamExt as _;
    let Ok(stream) = js.get_stream(stream).await else {
        return 0;
    };
    let Ok(mut subjects) = stream.info_with_subjects(filter).await else {
        return 0;
    };
    let mut total = 0;
    while let Ok(Some((_, count))) = subjects.try_next().await {
        total += count as u64;
    }
    total
}

async fn stream_state(
    js: &jetstream::Context,
    stream: &str,
) -> Result<jetstream::stream::State, String> {
    let mut stream = js.get_stream(stream).await.map_err(|err| err.to_string())?;
    let info = stream.info().await.map_err(|err| err.to_string())?;
    Ok(info.state.clone())
}

async fn set_atomic_publish(js: &jetstream::Context, stream: &str, allowed: bool) {
    let mut timers = js.get_stream(stream).await.unwrap();
    let mut config = timers.info().await.unwrap().config.clone();
    config.allow_atomic_publish = allowed;
    js.update_stream(config).await.unwrap();
}

fn spec() -> sessionfold_processor::store::LifecycleSpec {
    LifecycleSettings::default().spec().unwrap()
}

/// A processor in-process whose sessions close 1 s after their
/// SESSION_END, and the frames of [`SESSIONS`] sessions published before
/// it starts, so that they come in one pulled batch.
struct Rig {
    nats: NatsServer,
    _redis: RedisServer,
    js: jetstream::Context,
    processor: Processor,
}

impl Rig {
    async fn start() -> Self {
        init_test_tracing();
        let nats = NatsServer::start().unwrap();
        let redis = RedisServer::start().unwrap();
        let names = RunNames::unique("BATCHED", "batched", "bt");
        let mut config = run_config::processor_config(&nats, &redis, &names);
        config.worker.batch_size = 512;
        config.lifecycle.session_end_grace_secs = 1;
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        let processor = Processor::build(config).await.unwrap();
        for index in 0..SESSIONS {
            let frame = serde_json::json!([
                {"type": "SESSION_START", "timestamp": 1},
                {"type": "EVENT", "timestamp": 2, "name": format!("e{index}")},
                {"type": "SESSION_END", "timestamp": 3},
            ]);
            js.publish(
                format!("{}.{}", names.subject_prefix, session(index).token()),
                frame.to_string().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        Self {
            nats,
            _redis: redis,
            js,
            processor,
        }
    }

    /// Runs the processor until every session's finished message is
    /// stored; each session has exactly one.
    async fn every_session_closes(self) {
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(self.processor.run(shutdown.clone()));
        let subjects = LifecycleSubjects::default();
        // One finished message per session, each on its own subject.
        eventually_ok("every session closes once", DEADLINE, || {
            let js = self.js.clone();
            async move {
                let state = stream_state(&js, DEFAULT_SESSIONS_STREAM).await?;
                if (state.messages, state.subjects_count) == (SESSIONS as u64, SESSIONS as u64) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} finished messages on {} subjects",
                        state.messages, state.subjects_count
                    ))
                }
            }
        })
        .await;
        // Each close ends with its compaction's schedule.
        eventually_ok("every compaction is scheduled", DEADLINE, || {
            let js = self.js.clone();
            let filter = format!("{}.closed.*", subjects.timers_prefix);
            async move {
                let scheduled = messages_on(&js, DEFAULT_TIMERS_STREAM, &filter).await;
                if scheduled == SESSIONS as u64 {
                    Ok(())
                } else {
                    Err(format!("{scheduled} compactions scheduled"))
                }
            }
        })
        .await;
        shutdown.cancel();
        running.await.unwrap().unwrap();
        drop(self.nats);
    }
}

#[tokio::test]
async fn every_timer_a_pulled_batch_arms_is_stored_and_every_session_closes() {
    Rig::start().await.every_session_closes().await;
}

#[tokio::test]
async fn a_timers_stream_without_atomic_batches_still_gets_every_timer() {
    let rig = Rig::start().await;
    set_atomic_publish(&rig.js, DEFAULT_TIMERS_STREAM, false).await;
    set_atomic_publish(&rig.js, DEFAULT_SESSIONS_STREAM, false).await;
    rig.every_session_closes().await;
}

/// The schedules themselves: one atomic batch stores them all; refused
/// (no atomic batches on the stream), they are stored one by one.
#[tokio::test]
async fn schedules_go_by_one_atomic_batch_or_one_by_one_when_it_is_refused() {
    init_test_tracing();
    let nats = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let settings = LifecycleSettings::default();
    let lifecycle = Lifecycle::ensure(js.clone(), &settings, spec(), 1)
        .await
        .unwrap();
    let subjects = LifecycleSubjects::default();
    let far = 4_000_000_000_000;
    let timers: Vec<(SessionId, u64, TimerKind)> = (0..SESSIONS)
        .map(|index| (session(index), far, TimerKind::Open))
        .collect();

    assert!(lifecycle.schedule_atomically(&timers).await);
    assert_eq!(
        messages_on(&js, DEFAULT_TIMERS_STREAM, &subjects.open_timers_filter()).await,
        SESSIONS as u64
    );

    // Again, on a stream that takes no atomic batch: the batch is refused
    // and every timer is stored alone, replacing the pending one.
    set_atomic_publish(&js, DEFAULT_TIMERS_STREAM, false).await;
    assert!(!lifecycle.schedule_atomically(&timers).await);
    let later: Vec<(SessionId, u64, TimerKind)> = (0..SESSIONS)
        .map(|index| (session(index), far + 1000, TimerKind::Open))
        .collect();
    assert!(
        lifecycle
            .schedule_all(&later)
            .await
            .iter()
            .all(|&stored| stored)
    );
    assert_eq!(
        messages_on(&js, DEFAULT_TIMERS_STREAM, &subjects.open_timers_filter()).await,
        SESSIONS as u64,
        "one pending timer per session"
    );
    let stream = js.get_stream(DEFAULT_TIMERS_STREAM).await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(&subjects.open_timer(&session(7)))
        .await
        .unwrap();
    assert_eq!(
        last.headers.get("Nats-Schedule").map(|v| v.as_str()),
        Some(
            format!(
                "@at {}",
                sessionfold_processor::lifecycle::rfc3339_millis(far + 1000)
            )
            .as_str()
        )
    );
}
