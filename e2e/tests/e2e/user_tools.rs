//! The user's side: live updates over SSE, and the `send`, `get` and
//! `tail` commands against a running system.

use std::process::Stdio;

use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{DEADLINE, expected_document, spawn_app};

#[tokio::test]
async fn the_live_stream_pushes_the_document_then_its_changes() {
    let app = spawn_app().await;
    let first = r#"[{"type":"EVENT","timestamp":1,"name":"one"}]"#;
    let second = r#"[{"type":"EVENT","timestamp":2,"name":"two"}]"#;
    let mut producer = app.connect("live").await;
    producer.send_accepted(first).await;
    app.wait_for_document("live", &expected_document("live", &[first]))
        .await;

    let mut url = app.data_url(Some("live"));
    url.set_path("/data/stream");
    let response = app.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = response.bytes_stream();
    let mut events = sessionfold_client::sse::SseEvents::default();
    let mut pending = std::collections::VecDeque::new();
    let mut next_event = async || -> sessionfold_client::sse::SseEvent {
        loop {
            if let Some(event) = pending.pop_front() {
                return event;
            }
            let chunk = tokio::time::timeout(DEADLINE, body.next())
                .await
                .expect("an event in time")
                .expect("the stream stays open")
                .unwrap();
            pending.extend(events.push(&chunk));
        }
    };
    let mut replica = sessionfold_client::sse::LiveReplica::default();
    let document = next_event().await;
    assert_eq!(document.name, "document");
    assert_eq!(document.id.as_deref(), Some("1"), "the revision");
    replica.apply(&document).unwrap();
    producer.send_accepted(second).await;
    // The change comes as a delta of the next revision: the inserted
    // child and its position, not the document.
    let delta = next_event().await;
    assert_eq!(delta.name, "delta");
    assert_eq!(delta.id.as_deref(), Some("2"));
    assert_eq!(
        serde_json::from_str::<Value>(&delta.data).unwrap(),
        serde_json::json!({"changes": [{"insert": 1, "children": [
            {"type": "EVENT", "timestamp": 2, "name": "two"}]}]})
    );
    replica.apply(&delta).unwrap();
    let replayed: Value = serde_json::from_str(&replica.document().unwrap()).unwrap();
    assert_eq!(replayed, expected_document("live", &[first, second]));
}

#[tokio::test]
async fn send_get_and_tail_work_against_a_running_system() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let ndjson = dir.path().join("events.ndjson");
    let events: Vec<String> = (0..1200)
        .map(|i| format!(r#"{{"type":"EVENT","timestamp":{i},"name":"e{i}"}}"#))
        .collect();
    std::fs::write(&ndjson, events.join("\n")).unwrap();
    let array = dir.path().join("bounds.json");
    std::fs::write(
        &array,
        r#"[{"type":"SESSION_START","timestamp":0},{"type":"SESSION_END","timestamp":2000}]"#,
    )
    .unwrap();
    let base = format!("http://{}", app.api_addr);
    let ws = format!("ws://{}/websocket", app.ingest_addr);

    let mut tail = tokio::process::Command::from(app.command())
        .args(["tail", "cli", "--api", &base])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let sent = tokio::process::Command::from(app.command())
        .args([
            "send",
            "--session",
            "cli",
            "--url",
            &ws,
            "--events-per-frame",
            "100",
        ])
        .arg(&ndjson)
        .arg(&array)
        .output()
        .await
        .unwrap();
    assert!(sent.status.success(), "{sent:?}");
    let summary = String::from_utf8(sent.stdout).unwrap();
    assert!(
        summary.starts_with("1202 events acknowledged in 13 frames"),
        "{summary}"
    );

    let frames: Vec<String> = events
        .chunks(100)
        .map(|chunk| format!("[{}]", chunk.join(",")))
        .chain([std::fs::read_to_string(&array).unwrap()])
        .collect();
    let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
    let expected = expected_document("cli", &frames);
    app.wait_for_document("cli", &expected).await;

    // `tail` printed the document as it grew, ending with the full one.
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if serde_json::from_str::<Value>(&line).unwrap() == expected {
                return;
            }
        }
        panic!("tail ended before the full document");
    })
    .await
    .expect("tail shows the full document in time");

    let got = tokio::process::Command::from(app.command())
        .args(["get", "cli", "--api", &base])
        .output()
        .await
        .unwrap();
    assert!(got.status.success(), "{got:?}");
    let printed: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(printed, expected);

    let missing = tokio::process::Command::from(app.command())
        .args(["get", "nobody", "--api", &base])
        .output()
        .await
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
}

#[tokio::test]
async fn send_then_get_prints_the_document_with_every_event_sent() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let ndjson = dir.path().join("events.ndjson");
    // Out of timestamp order, in 30 frames: the last ack comes well before
    // every apply has run.
    let events: Vec<String> = (0..300)
        .map(|i| {
            format!(
                r#"{{"type":"EVENT","timestamp":{},"name":"e{i}"}}"#,
                (i * 7) % 300
            )
        })
        .collect();
    std::fs::write(&ndjson, events.join("\n")).unwrap();
    let sent = tokio::process::Command::from(app.command())
        .args([
            "send",
            "--session",
            "then-get",
            "--url",
            &format!("ws://{}/websocket", app.ingest_addr),
            "--api",
            &format!("http://{}", app.api_addr),
            "--events-per-frame",
            "10",
            "--then-get",
        ])
        .arg(&ndjson)
        .output()
        .await
        .unwrap();
    assert!(sent.status.success(), "{sent:?}");
    let stdout = String::from_utf8(sent.stdout).unwrap();
    let (summary, document) = stdout.split_once('\n').unwrap();
    assert!(
        summary.starts_with("300 events acknowledged in 30 frames"),
        "{summary}"
    );
    let frames: Vec<String> = events
        .chunks(10)
        .map(|chunk| format!("[{}]", chunk.join(",")))
        .collect();
    let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
    let printed: Value = serde_json::from_str(document).unwrap();
    assert_eq!(printed, expected_document("then-get", &frames));
}
