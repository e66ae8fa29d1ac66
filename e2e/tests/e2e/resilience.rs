//! Outages and operator mistakes: ingest answers instead of hanging, the
//! processor heals, and stopping loses nothing that was acknowledged.

use std::collections::BTreeMap;
use std::process::Stdio;

use reqwest::StatusCode;
use sessionfold_core::ErrorCode;
use sessionfold_testkit::{eventually, free_port};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{DEADLINE, Producer, expected_document, spawn_app, spawn_app_with};

#[tokio::test]
async fn ingest_answers_unavailable_while_jetstream_is_down_and_recovers() {
    let mut app = spawn_app_with(&[
        ("PUBLISH_TIMEOUT_MS", "300"),
        ("MAX_IN_FLIGHT_TOTAL", "4"),
        ("MAX_IN_FLIGHT_PER_CONNECTION", "8"),
    ])
    .await;
    let mut producer = app.connect("outage").await;
    app.nats.stop();
    // Once ingest knows NATS is gone it publishes nothing, so none of these
    // frames can surface later.
    app.wait_for_readiness(
        &format!("http://{}/readyz", app.ingest_addr),
        StatusCode::SERVICE_UNAVAILABLE,
        "ingest notices the outage",
    )
    .await;

    let frame = |i: usize| format!(r#"[{{"type":"EVENT","timestamp":{i},"name":"n{i}"}}]"#);
    for i in 0..40 {
        producer.send(&frame(i)).await;
    }
    for i in 0..40 {
        let reply = producer.reply().await;
        assert_eq!(reply.frame(), i + 1);
        assert_eq!(
            reply.error_code(),
            Some(ErrorCode::Unavailable),
            "{reply:?}"
        );
    }

    app.nats.restart().unwrap();
    producer.send_until_accepted(&frame(1000)).await;
    app.wait_for_document("outage", &expected_document("outage", &[&frame(1000)]))
        .await;
}

#[tokio::test]
async fn the_processor_recreates_a_deleted_consumer_and_stream() {
    let app = spawn_app_with(&[("PULL_HEARTBEAT_MS", "500")]).await;
    let first = r#"[{"type":"EVENT","timestamp":1,"name":"before"}]"#;
    let mut producer = app.connect("healing").await;
    producer.send_accepted(first).await;
    app.wait_for_document("healing", &expected_document("healing", &[first]))
        .await;

    let js = app.jetstream().await;
    let stream = js.get_stream(&app.names.stream).await.unwrap();
    stream.delete_consumer(&app.names.consumer).await.unwrap();
    let second = r#"[{"type":"EVENT","timestamp":2,"name":"after consumer deletion"}]"#;
    producer.send_accepted(second).await;
    app.wait_for_document("healing", &expected_document("healing", &[first, second]))
        .await;

    // A deleted stream restarts its sequences, so a new session is used:
    // documents of sessions that span a stream deletion must be rebuilt.
    js.delete_stream(&app.names.stream).await.unwrap();
    let third = r#"[{"type":"EVENT","timestamp":3,"name":"after stream deletion"}]"#;
    let mut producer = app.connect("after-deletion").await;
    producer.send_until_accepted(third).await;
    app.wait_for_document(
        "after-deletion",
        &expected_document("after-deletion", &[third]),
    )
    .await;
}

/// Producers that send frames as fast as they can until the server closes
/// the connection; returns the frames the server acknowledged, per session,
/// and the close codes seen.
async fn produce_until_closed(
    url_of: impl Fn(&str) -> String,
    sessions: usize,
) -> (BTreeMap<String, Vec<String>>, Vec<Option<u16>>) {
    let producers = (0..sessions).map(|s| {
        let session = format!("term-{s}");
        let url = url_of(&session);
        async move {
            let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let mut producer = Producer { socket };
            let mut sent = Vec::new();
            let mut acked = Vec::new();
            let mut close = None;
            let mut i = 0u64;
            loop {
                // Keep a few frames in flight.
                while sent.len() < acked.len() + 4 && sent.len() < 5_000 {
                    let frame = format!(r#"[{{"type":"EVENT","timestamp":{},"name":"f{i}"}},{{"type":"EVENT","timestamp":1,"name":"g{i}"}}]"#, i % 97);
                    i += 1;
                    if futures::SinkExt::send(&mut producer.socket, Message::text(frame.clone())).await.is_err() {
                        break;
                    }
                    sent.push(frame);
                }
                match producer.next_message().await {
                    Some(Message::Text(text)) => {
                        let reply: sessionfold_core::Reply = serde_json::from_str(text.as_str()).unwrap();
                        let frame = sent[reply.frame() as usize - 1].clone();
                        if reply.is_ok() {
                            acked.push(frame);
                        }
                    }
                    Some(Message::Close(frame)) => {
                        close = frame.map(|frame| u16::from(frame.code));
                        break;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            (session, acked, close)
        }
    });
    let results = futures::future::join_all(producers).await;
    let mut acked = BTreeMap::new();
    let mut closes = Vec::new();
    for (session, frames, close) in results {
        acked.insert(session, frames);
        closes.push(close);
    }
    (acked, closes)
}

#[tokio::test]
async fn sigterm_under_load_answers_in_flight_frames_and_loses_nothing_acknowledged() {
    // Ingest, api and processor in one `sessionfold dev` process, stopped
    // with SIGTERM while producers are sending.
    let app = spawn_app().await;
    let port = free_port();
    let mut dev = app
        .command()
        .arg("dev")
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", app.redis.url())
        .env("KEY_PREFIX", &app.names.key_prefix)
        .env("CONSUMER_NAME", &app.names.consumer)
        .env("SHUTDOWN_GRACE_MS", "500")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    app.wait_for_readiness(
        &format!("http://127.0.0.1:{port}/readyz"),
        StatusCode::OK,
        "the dev process is ready",
    )
    .await;

    let url_of = |session: &str| {
        let mut url = reqwest::Url::parse(&format!("ws://127.0.0.1:{port}/websocket")).unwrap();
        url.query_pairs_mut().append_pair("session_id", session);
        url.to_string()
    };
    let load = produce_until_closed(url_of, 8);
    let stop = async {
        // Let the load run until some documents exist, then SIGTERM.
        eventually("documents are being written", DEADLINE, || async {
            let (status, _) = app.get_data("term-0").await;
            (status == StatusCode::OK).then_some(())
        })
        .await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(dev.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        // Readiness fails first, while the process still serves.
        app.wait_for_readiness(
            &format!("http://127.0.0.1:{port}/readyz"),
            StatusCode::SERVICE_UNAVAILABLE,
            "readiness turns 503 after SIGTERM",
        )
        .await;
    };
    let ((acked, closes), ()) = tokio::join!(load, stop);
    let status = tokio::task::spawn_blocking(move || dev.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "dev exited with {status}");
    assert!(
        closes.iter().all(|code| *code == Some(1001)),
        "every socket is closed with 1001: {closes:?}"
    );

    // Another processor finishes what the stopped one left; every
    // acknowledged frame is in its document, exactly once.
    let _processor = app.start_processor();
    for (session, frames) in &acked {
        assert!(!frames.is_empty(), "{session} had no frame acknowledged");
        let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
        app.wait_for_document(session, &expected_document(session, &frames))
            .await;
    }
}
