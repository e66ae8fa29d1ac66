//! Processors die and share work; the documents come out exact anyway.

use std::collections::BTreeMap;

use crate::helpers::{TestApp, expected_document, spawn_split_app};

/// Frames for `sessions` sessions: timestamps out of order, a repeated
/// event now and then, session markers in the middle of frames.
fn workload(sessions: usize, frames_per_session: usize) -> BTreeMap<String, Vec<String>> {
    let mut seed: u64 = 0x5eed;
    let mut next = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    (0..sessions)
        .map(|s| {
            let session = format!("load-{s}");
            let frames = (0..frames_per_session)
                .map(|f| {
                    let mut events: Vec<String> = (0..4)
                        .map(|e| {
                            let timestamp = next(1000);
                            format!(
                                r#"{{"type":"EVENT","timestamp":{timestamp},"name":"f{f}e{e}"}}"#
                            )
                        })
                        .collect();
                    if next(5) == 0 {
                        events
                            .push(r#"{"type":"EVENT","timestamp":1,"name":"repeated"}"#.to_owned());
                    }
                    if f == 0 {
                        events.insert(2, r#"{"type":"SESSION_START","timestamp":3}"#.to_owned());
                    }
                    if f == frames_per_session - 1 {
                        events.insert(1, r#"{"type":"SESSION_END","timestamp":999}"#.to_owned());
                    }
                    format!("[{}]", events.join(","))
                })
                .collect();
            (session, frames)
        })
        .collect()
}

/// Sends every session's frames over its own connection, all sessions at
/// once, each waiting for its acks.
async fn send(app: &TestApp, load: &BTreeMap<String, Vec<String>>) {
    let producers = load.iter().map(|(session, frames)| async move {
        let mut producer = app.connect(session).await;
        for frame in frames {
            producer.send_accepted(frame).await;
        }
    });
    futures::future::join_all(producers).await;
}

async fn check_documents(app: &TestApp, load: &BTreeMap<String, Vec<String>>) {
    for (session, frames) in load {
        let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
        app.wait_for_document(session, &expected_document(session, &frames))
            .await;
    }
}

#[tokio::test]
async fn a_processor_killed_mid_stream_and_restarted_loses_and_duplicates_nothing() {
    let app = spawn_split_app().await;
    let load = workload(20, 30);
    let first = app.start_processor();
    let sending = send(&app, &load);
    let crash = async {
        // Kill it once it has stored some, but not all, of the work.
        sessionfold_testkit::eventually(
            "the processor stored a document",
            crate::helpers::DEADLINE,
            || async {
                let (status, _) = app.get_data("load-0").await;
                (status == reqwest::StatusCode::OK).then_some(())
            },
        )
        .await;
        first.kill();
    };
    tokio::join!(sending, crash);
    let _second = app.start_processor();
    check_documents(&app, &load).await;
    app.wait_until_consumed().await;
}

#[tokio::test]
async fn two_processors_sharing_the_durable_consumer_fold_exactly() {
    let app = spawn_split_app().await;
    let load = workload(20, 30);
    let _one = app.start_processor();
    let _two = app.start_processor();
    send(&app, &load).await;
    check_documents(&app, &load).await;
    app.wait_until_consumed().await;
}
