//! Retention: the stream's `max_age` / `max_bytes` come from the settings,
//! and with `DOCUMENT_TTL_SECS` a session's document and its bookkeeping
//! keys vanish that long after the session's last frame.

use std::time::Duration;

use reqwest::StatusCode;
use sessionfold_testkit::eventually;

use crate::helpers::{DEADLINE, expected_document, spawn_app_with};

#[tokio::test]
async fn documents_expire_after_the_document_ttl() {
    let app = spawn_app_with(&[("DOCUMENT_TTL_SECS", "2")]).await;
    let frame =
        r#"[{"type":"SESSION_START","timestamp":1},{"type":"EVENT","timestamp":2,"name":"brief"}]"#;
    let mut producer = app.connect("short-lived").await;
    producer.send_accepted(frame).await;
    app.wait_for_document("short-lived", &expected_document("short-lived", &[frame]))
        .await;

    let prefix = &app.names.key_prefix;
    let keys = ["doc", "ids", "order"].map(|kind| format!("{prefix}{kind}:{{short-lived}}"));
    let client = redis::Client::open(app.redis.url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    // Not gone at once: it lives about two seconds.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl == -2 || (0..=2000).contains(&ttl), "PTTL {ttl}");

    eventually("the session's keys expire", DEADLINE, || {
        let mut redis = redis.clone();
        let keys = keys.clone();
        async move {
            let existing: u64 = redis::cmd("EXISTS")
                .arg(&keys[..])
                .query_async(&mut redis)
                .await
                .ok()?;
            (existing == 0).then_some(())
        }
    })
    .await;
    let (status, body) = app.get_data("short-lived").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The stream still holds the frame: expiry is the documents' retention only.
    assert_eq!(app.stored_frames("short-lived").await, 1);
}

#[tokio::test]
async fn the_stream_takes_its_retention_from_the_settings() {
    let app = spawn_app_with(&[
        ("STREAM_MAX_AGE_SECS", "3600"),
        ("STREAM_MAX_BYTES", "67108864"),
    ])
    .await;
    let js = app.jetstream().await;
    let mut stream = js.get_stream(&app.names.stream).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(3600));
    assert_eq!(config.max_bytes, 64 * 1024 * 1024);
}
