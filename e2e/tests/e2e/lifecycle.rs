//! Sessions close by themselves (idle, ended, past their maximum duration),
//! exactly once, with their document on the finished-sessions stream; late
//! frames follow the policy; the timers outlive every process.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use reqwest::StatusCode;
use serde_json::Value;
use sessionfold_core::{LifecycleSubjects, SessionId};
use sessionfold_processor::dead_letter;
use sessionfold_testkit::eventually;

use crate::helpers::{Setting, TestApp, expected_document, spawn_app_with, spawn_split_app};

/// Closes can take the idle timeout and a scheduling round on top of the
/// usual deadline.
const CLOSE_DEADLINE: Duration = Duration::from_secs(40);

fn subjects() -> LifecycleSubjects {
    LifecycleSubjects::default()
}

fn session(id: &str) -> SessionId {
    SessionId::parse(id).unwrap()
}

/// One message of the finished-sessions stream.
#[derive(Debug, Clone)]
struct Finished {
    subject: String,
    body: Value,
    message_id: Option<String>,
}

/// Every message the finished-sessions stream holds, in order.
async fn finished(js: &jetstream::Context) -> Vec<Finished> {
    let Ok(mut stream) = js
        .get_stream(sessionfold_core::names::DEFAULT_SESSIONS_STREAM)
        .await
    else {
        return Vec::new();
    };
    let state = stream.info().await.unwrap().state.clone();
    let mut messages = Vec::new();
    if state.messages == 0 {
        return messages;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        messages.push(Finished {
            subject: message.subject.to_string(),
            body: serde_json::from_slice(&message.payload).unwrap(),
            message_id: message
                .headers
                .get("Nats-Msg-Id")
                .map(|value| value.as_str().to_owned()),
        });
    }
    messages
}

/// The finished messages of one session.
async fn finished_of(js: &jetstream::Context, id: &str) -> Vec<Finished> {
    let subject = subjects().finished(&session(id));
    finished(js)
        .await
        .into_iter()
        .filter(|message| message.subject == subject)
        .collect()
}

/// Waits until `id` has at least `count` finished messages; returns them.
async fn wait_for_closes(app: &TestApp, id: &str, count: usize) -> Vec<Finished> {
    let js = app.jetstream().await;
    let closes = tokio::time::timeout(CLOSE_DEADLINE, async {
        loop {
            let messages = finished_of(&js, id).await;
            if messages.len() >= count {
                return messages;
            }
            tokio::time::sleep(sessionfold_testkit::POLL_INTERVAL).await;
        }
    })
    .await;
    closes.unwrap_or_else(|_| {
        panic!(
            "{id} was not closed {count} time(s) in time\n{}",
            app.log_tails()
        )
    })
}

/// Waits until no fired timer is pending or being handled.
async fn wait_until_timers_settled(app: &TestApp) {
    let js = app.jetstream().await;
    eventually("every fired timer is handled", CLOSE_DEADLINE, || {
        let js = js.clone();
        async move {
            let stream = js
                .get_stream(sessionfold_core::names::DEFAULT_TIMERS_STREAM)
                .await
                .ok()?;
            let info = stream
                .consumer_info(sessionfold_core::names::DEFAULT_TIMERS_CONSUMER)
                .await
                .ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

/// When ingest stored `id`'s latest frame (JetStream clock, ms).
async fn last_arrival_ms(app: &TestApp, id: &str) -> u64 {
    let js = app.jetstream().await;
    let stream = js.get_stream(&app.names.stream).await.unwrap();
    let message = stream
        .get_last_raw_message_by_subject(&app.subject(id))
        .await
        .unwrap();
    (message.time.unix_timestamp_nanos() / 1_000_000) as u64
}

/// When ingest stored `id`'s first frame (JetStream clock, ms).
async fn first_arrival_ms(app: &TestApp, id: &str) -> u64 {
    let js = app.jetstream().await;
    let mut stream = js.get_stream(&app.names.stream).await.unwrap();
    let info = stream.info().await.unwrap();
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let message = stream.get_raw_message(sequence).await.unwrap();
        if message.subject.as_str() == app.subject(id) {
            return (message.time.unix_timestamp_nanos() / 1_000_000) as u64;
        }
    }
    panic!("{id} has no frame");
}

fn closed_at(message: &Finished) -> u64 {
    message.body["closed_at"].as_u64().unwrap()
}

async fn session_state(app: &TestApp, id: &str) -> Option<String> {
    let response = app.http.get(app.data_url(Some(id))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
        .headers()
        .get("sessionfold-session-state")
        .map(|value| value.to_str().unwrap().to_owned())
}

const START: &str =
    r#"[{"type":"SESSION_START","timestamp":1},{"type":"EVENT","timestamp":2,"name":"view"}]"#;

#[tokio::test]
async fn sessions_close_by_themselves_once_idle_ended_or_past_their_maximum_duration() {
    let settings: &[Setting<'_>] = &[
        ("SESSION_IDLE_TIMEOUT_SECS", "3"),
        ("SESSION_END_GRACE_SECS", "1"),
        ("SESSION_MAX_DURATION_SECS", "5"),
    ];
    let app = spawn_app_with(settings).await;
    let ended = r#"[{"type":"SESSION_START","timestamp":1},{"type":"SESSION_END","timestamp":9}]"#;
    let mut quiet = app.connect("quiet").await;
    quiet.send_accepted(START).await;
    let mut done = app.connect("done").await;
    done.send_accepted(ended).await;
    // Busy: a frame every 500 ms keeps it from idling; its maximum
    // duration closes it.
    let mut busy = app.connect("busy").await;
    let mut busy_frames = Vec::new();
    for i in 0..8 {
        let frame = format!(r#"[{{"type":"EVENT","timestamp":{i},"name":"tick"}}]"#);
        busy.send_accepted(&frame).await;
        busy_frames.push(frame);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let expectations = [
        ("quiet", "idle", vec![START.to_owned()], 3000),
        ("done", "ended", vec![ended.to_owned()], 1000),
        ("busy", "max_duration", busy_frames, 5000),
    ];
    for (id, reason, frames, _) in &expectations {
        let closes = wait_for_closes(&app, id, 1).await;
        let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
        assert_eq!(closes[0].body["reason"], *reason, "{id}: {:?}", closes[0]);
        assert_eq!(closes[0].body["session_id"], *id);
        assert_eq!(
            closes[0].body["document"],
            expected_document(id, &frames),
            "{id}"
        );
        let (_, document) = app.get_data(id).await;
        assert_eq!(closes[0].body["document"], document, "{id}");
    }
    // Never before its time: idle and ended count from the last arrival,
    // the maximum duration from the first.
    for (id, _, _, after_ms) in &expectations {
        let close = &finished_of(&app.jetstream().await, id).await[0];
        let from = if *id == "busy" {
            first_arrival_ms(&app, id).await
        } else {
            last_arrival_ms(&app, id).await
        };
        assert!(
            closed_at(close) >= from + after_ms,
            "{id} closed at {} before {from} + {after_ms}",
            closed_at(close)
        );
    }
    wait_until_timers_settled(&app).await;
    let all = finished(&app.jetstream().await).await;
    let mut per_session: BTreeMap<&str, usize> = BTreeMap::new();
    for message in &all {
        *per_session.entry(message.subject.as_str()).or_default() += 1;
    }
    assert!(per_session.values().all(|&n| n == 1), "{per_session:?}");
    assert_eq!(per_session.len(), 3, "{per_session:?}");
    for message in &all {
        let token = message.subject.rsplit('.').next().unwrap();
        assert_eq!(
            message.message_id.as_deref(),
            Some(format!("{token}:{}", message.body["revision"]).as_str())
        );
    }
}

#[tokio::test]
async fn a_late_frame_within_the_lateness_reopens_the_session_which_closes_again_with_a_new_revision()
 {
    let app = spawn_app_with(&[("SESSION_IDLE_TIMEOUT_SECS", "1")]).await;
    let mut producer = app.connect("late").await;
    producer.send_accepted(START).await;
    let first = wait_for_closes(&app, "late", 1).await;
    let late = r#"[{"type":"EVENT","timestamp":3,"name":"late"}]"#;
    producer.send_accepted(late).await;
    // The stream keeps a session's latest close: the re-close replaces
    // the first one.
    let js = app.jetstream().await;
    let closes = eventually(
        "the re-close replaces the first close",
        CLOSE_DEADLINE,
        || {
            let js = js.clone();
            let first_revision = first[0].body["revision"].as_u64();
            async move {
                let closes = finished_of(&js, "late").await;
                (closes.len() == 1 && closes[0].body["revision"].as_u64() > first_revision)
                    .then_some(closes)
            }
        },
    )
    .await;
    wait_until_timers_settled(&app).await;
    let closes_now = finished_of(&app.jetstream().await, "late").await;
    assert_eq!(closes_now.len(), 1, "{closes_now:?}");
    assert_eq!(
        closes_now[0].body["revision"], closes[0].body["revision"],
        "{closes_now:?}"
    );
    assert_eq!(
        closes[0].body["document"],
        expected_document("late", &[START, late])
    );
    let letters = dead_letter::list(&app.jetstream().await, &app.names.dead_stream)
        .await
        .unwrap();
    assert!(letters.is_empty(), "{letters:?}");
}

#[tokio::test]
async fn past_the_lateness_a_frame_is_dead_lettered_as_session_closed_and_changes_nothing() {
    let app = spawn_app_with(&[
        ("SESSION_IDLE_TIMEOUT_SECS", "1"),
        ("ALLOWED_LATENESS_SECS", "1"),
    ])
    .await;
    let mut producer = app.connect("gone").await;
    producer.send_accepted(START).await;
    wait_for_closes(&app, "gone", 1).await;
    // Closed for good once its lateness is over.
    let js = app.jetstream().await;
    eventually("the session is closed for good", CLOSE_DEADLINE, || {
        let js = js.clone();
        async move {
            let bucket = js
                .get_key_value(sessionfold_core::names::DEFAULT_CLOSED_BUCKET)
                .await
                .ok()?;
            bucket.get(session("gone").token()).await.ok()?.map(|_| ())
        }
    })
    .await;
    let late = r#"[{"type":"EVENT","timestamp":3,"name":"too-late"}]"#;
    producer.send_accepted(late).await;
    let stream = app.names.dead_stream.clone();
    let letters = eventually("the late frame is a dead letter", CLOSE_DEADLINE, || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            let letters = dead_letter::list(&js, &stream).await.ok()?;
            (!letters.is_empty()).then_some(letters)
        }
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].reason.starts_with("session_closed"),
        "{letters:?}"
    );
    assert_eq!(letters[0].payload, late);
    app.wait_until_consumed().await;
    let (_, document) = app.get_data("gone").await;
    assert_eq!(document, expected_document("gone", &[START]));
    assert_eq!(finished_of(&js, "gone").await.len(), 1);
}

#[tokio::test]
async fn the_api_tells_a_sessions_state_beside_the_unchanged_document() {
    let app = spawn_app_with(&[("SESSION_IDLE_TIMEOUT_SECS", "1")]).await;
    let mut producer = app.connect("told").await;
    producer.send_accepted(START).await;
    app.wait_for_document("told", &expected_document("told", &[START]))
        .await;
    assert_eq!(session_state(&app, "told").await.as_deref(), Some("open"));
    wait_for_closes(&app, "told", 1).await;
    eventually("the api says idle", CLOSE_DEADLINE, || async {
        (session_state(&app, "told").await.as_deref() == Some("idle")).then_some(())
    })
    .await;
    let (_, document) = app.get_data("told").await;
    assert_eq!(document, expected_document("told", &[START]));
    // The summary the query engine indexes says so too.
    let client = redis::Client::open(app.redis.url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let summary_key = app.keys().session(&session("told")).summary;
    let state: String = redis::cmd("JSON.GET")
        .arg(&summary_key)
        .arg("$.state")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(state, r#"["idle"]"#);
}

#[tokio::test]
async fn with_late_events_rejected_ingest_answers_session_closed_for_a_session_closed_for_good() {
    let settings: &[Setting<'_>] = &[
        ("SESSION_IDLE_TIMEOUT_SECS", "1"),
        ("ALLOWED_LATENESS_SECS", "1"),
        ("LATE_EVENTS", "reject"),
    ];
    let app = spawn_app_with(settings).await;
    let mut producer = app.connect("shut").await;
    producer.send_accepted(START).await;
    wait_for_closes(&app, "shut", 1).await;
    let js = app.jetstream().await;
    eventually("the session is closed for good", CLOSE_DEADLINE, || {
        let js = js.clone();
        async move {
            let bucket = js
                .get_key_value(sessionfold_core::names::DEFAULT_CLOSED_BUCKET)
                .await
                .ok()?;
            bucket.get(session("shut").token()).await.ok()?.map(|_| ())
        }
    })
    .await;
    let mut again = app.connect("shut").await;
    let reply = again
        .send_and_reply(r#"[{"type":"EVENT","timestamp":3,"name":"too-late"}]"#)
        .await;
    assert_eq!(
        reply.error_code(),
        Some(sessionfold_core::ErrorCode::SessionClosed),
        "{reply:?}"
    );
    // Nothing reached the stream for it.
    assert_eq!(app.stored_frames("shut").await, 1);
    // Other sessions are not affected.
    let mut other = app.connect("other").await;
    other.send_accepted(START).await;
}

#[tokio::test]
async fn one_finished_message_per_session_with_two_processors_and_one_killed_while_closing() {
    let app = spawn_split_app().await;
    let lifecycle: &[Setting<'_>] = &[("SESSION_IDLE_TIMEOUT_SECS", "2")];
    let first = app.start_processor_with(lifecycle);
    let _second = app.start_processor_with(lifecycle);
    let ids: Vec<String> = (0..120).map(|i| format!("many-{i}")).collect();
    let sends = ids.iter().map(|id| async {
        let mut producer = app.connect(id).await;
        producer.send_accepted(START).await;
    });
    futures::future::join_all(sends).await;
    // Kill one while the closes are under way.
    let js = app.jetstream().await;
    eventually("closes have begun", CLOSE_DEADLINE, || {
        let js = js.clone();
        async move { (!finished(&js).await.is_empty()).then_some(()) }
    })
    .await;
    first.kill();
    let _third = app.start_processor_with(lifecycle);
    for id in &ids {
        wait_for_closes(&app, id, 1).await;
    }
    wait_until_timers_settled(&app).await;
    let all = finished(&js).await;
    assert_eq!(all.len(), ids.len(), "one finished message per session");
    // The stream keeps one message per session, so a close stored twice
    // would replace its first copy: none was ever stored twice.
    let mut stream = js
        .get_stream(sessionfold_core::names::DEFAULT_SESSIONS_STREAM)
        .await
        .unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(
        state.last_sequence,
        ids.len() as u64,
        "every close stored once: {state:?}"
    );
    for id in &ids {
        let closes = finished_of(&js, id).await;
        assert_eq!(closes.len(), 1, "{id}: {closes:?}");
        assert_eq!(closes[0].body["reason"], "idle");
        assert_eq!(closes[0].body["document"], expected_document(id, &[START]));
    }
}

#[tokio::test]
async fn timers_outlive_a_processor_restart_and_a_nats_restart() {
    let mut app = spawn_split_app().await;
    let lifecycle: &[Setting<'_>] = &[("SESSION_IDLE_TIMEOUT_SECS", "3")];
    let processor = app.start_processor_with(lifecycle);
    let mut producer = app.connect("durable").await;
    producer.send_accepted(START).await;
    app.wait_until_consumed().await;
    // The timer is armed; no processor runs when it fires, and NATS
    // restarts meanwhile.
    assert_eq!(processor.terminate().code(), Some(0));
    drop(producer);
    app.nats.restart().unwrap();
    let due = last_arrival_ms(&app, "durable").await + 3000;
    eventually("the timer's due time passes", CLOSE_DEADLINE, || async {
        (unix_ms() > due + 500).then_some(())
    })
    .await;
    assert!(
        finished_of(&app.jetstream().await, "durable")
            .await
            .is_empty()
    );
    let _processor = app.start_processor_with(lifecycle);
    let closes = wait_for_closes(&app, "durable", 1).await;
    assert_eq!(closes[0].body["reason"], "idle");
    assert!(closed_at(&closes[0]) >= due, "{closes:?}");
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn sessions_tail_prints_the_finished_session_a_downstream_consumer_gets() {
    let app = spawn_app_with(&[("SESSION_IDLE_TIMEOUT_SECS", "1")]).await;
    let mut producer = app.connect("followed").await;
    producer.send_accepted(START).await;
    let closes = wait_for_closes(&app, "followed", 1).await;
    let mut other = app.connect("other").await;
    other.send_accepted(START).await;
    wait_for_closes(&app, "other", 1).await;
    let tail = tokio::time::timeout(
        CLOSE_DEADLINE,
        tokio::process::Command::from(app.command())
            .args([
                "sessions",
                "tail",
                "--from-start",
                "--session",
                "followed",
                "--limit",
                "1",
            ])
            .output(),
    )
    .await
    .expect("sessions tail ends after its limit")
    .unwrap();
    assert!(tail.status.success(), "{tail:?}");
    let lines: Vec<Value> = String::from_utf8(tail.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines, vec![closes[0].body.clone()]);
    assert_eq!(lines[0]["reason"], "idle");
    assert_eq!(
        lines[0]["document"],
        expected_document("followed", &[START])
    );
}
