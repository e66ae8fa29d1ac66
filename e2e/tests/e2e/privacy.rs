//! Redaction before storage: a unique marker sent in redacted and hashed
//! fields is found nowhere afterwards (no Redis key or value, no message of
//! any JetStream stream, no log line, no metric, no reply), while a marker
//! in an ordinary field is found where it belongs, so the scan can find
//! what is there.

use futures::StreamExt as _;
use serde_json::Value;
use sessionfold_processor::dead_letter;
use sessionfold_testkit::eventually;

use crate::helpers::{DEADLINE, TestApp, spawn_app_with};

const KEY: &str = "a-redaction-key-of-at-least-32-bytes!";

/// Every key of the test's Redis with its value, as text.
async fn redis_text(app: &TestApp) -> String {
    let client = redis::Client::open(app.redis.url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut text = String::new();
    for key in keys {
        text.push_str(&String::from_utf8_lossy(&key));
        text.push('\n');
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let command = match kind.as_str() {
            "ReJSON-RL" => redis::cmd("JSON.GET").arg(&key).arg("$").clone(),
            "hash" => redis::cmd("HGETALL").arg(&key).clone(),
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).clone(),
            "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
            "stream" => redis::cmd("XRANGE").arg(&key).arg("-").arg("+").clone(),
            _ => redis::cmd("GET").arg(&key).clone(),
        };
        let value: redis::Value = command.query_async(&mut redis).await.unwrap();
        text.push_str(&format!("{value:?}\n"));
    }
    text
}

/// Every message of every JetStream stream (key-value buckets included):
/// subject, headers and payload.
async fn jetstream_text(app: &TestApp) -> String {
    let js = app.jetstream().await;
    let mut names = js.stream_names();
    let mut text = String::new();
    while let Some(name) = names.next().await {
        let name = name.unwrap();
        let mut stream = js.get_stream(&name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        for sequence in state.first_sequence..=state.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                text.push_str(&format!(
                    "{name} {sequence} {} {:?} {}\n",
                    message.subject,
                    message.headers,
                    String::from_utf8_lossy(&message.payload)
                ));
            }
        }
    }
    text
}

#[tokio::test]
async fn redacted_and_hashed_fields_are_stored_nowhere_and_resends_still_deduplicate() {
    let app = spawn_app_with(&[
        ("REDACT_FIELDS", "email,props.card,items.secret"),
        ("HASH_FIELDS", "user_id"),
        ("REDACTION_KEY", KEY),
        ("MAX_CHILDREN_PER_SESSION", "3"),
        ("MAX_ATTEMPTS", "1"),
        ("RUST_LOG", "debug"),
    ])
    .await;
    let marker = format!("pii-{}", uuid::Uuid::new_v4().simple());
    let visible = format!("kept-{}", uuid::Uuid::new_v4().simple());
    let frame = format!(
        r#"[{{"type":"SESSION_START","timestamp":1,"user_id":"{marker}"}},
            {{"type":"EVENT","timestamp":2,"name":"{visible}","email":"{marker}@example.com","user_id":"{marker}",
              "props":{{"card":"{marker}","plan":"pro"}},"items":[{{"secret":"{marker}","sku":1}}]}}]"#
    );
    let mut producer = app.connect("private").await;
    let reply = producer.send_and_reply(&frame).await;
    assert!(reply.is_ok(), "{reply:?}");
    // The same frame again (a producer's retry): the same redacted events,
    // de-duplicated as before.
    let again = producer.send_and_reply(&frame).await;
    assert!(again.is_ok(), "{again:?}");
    // A frame refused for another reason says nothing of its values.
    let refused = producer
        .send_and_reply(&format!(
            r#"[{{"type":"EVENT","timestamp":"late","email":"{marker}"}}]"#
        ))
        .await;
    assert!(!refused.is_ok());
    assert!(
        !refused.to_json().contains(&marker),
        "{}",
        refused.to_json()
    );

    // A frame dead-lettered by the apply step: its letter is the redacted frame.
    let mut full = app.connect("full").await;
    let fills = r#"[{"type":"EVENT","timestamp":1},{"type":"EVENT","timestamp":2},{"type":"EVENT","timestamp":3}]"#;
    assert!(full.send_and_reply(fills).await.is_ok());
    app.wait_for_children("full", 3).await;
    let overflow = format!(r#"[{{"type":"EVENT","timestamp":4,"email":"{marker}"}}]"#);
    assert!(full.send_and_reply(&overflow).await.is_ok());
    let js = app.jetstream().await;
    let dead_stream = app.names.dead_stream.clone();
    eventually("the overflowing frame is a dead letter", DEADLINE, || {
        let js = js.clone();
        let stream = dead_stream.clone();
        async move {
            let letters = dead_letter::list(&js, &stream).await.ok()?;
            (!letters.is_empty()).then_some(())
        }
    })
    .await;

    app.wait_for_children("private", 1).await;
    app.wait_until_consumed().await;
    let (_, document) = app.get_data("private").await;
    let children = document["children"].as_array().unwrap();
    assert_eq!(
        children.len(),
        1,
        "the resent frame was stored twice: {document}"
    );
    let child = &children[0];
    assert_eq!(child["name"], Value::String(visible.clone()));
    assert!(child.get("email").is_none());
    assert_eq!(child["props"], serde_json::json!({"plan": "pro"}));
    assert_eq!(child["items"], serde_json::json!([{"sku": 1}]));
    let hashed = child["user_id"].as_str().unwrap();
    assert!(
        hashed.starts_with("hmac-sha256:") && hashed.len() == 12 + 64,
        "{hashed}"
    );

    let metrics = app
        .http
        .get(format!("http://{}/metrics", app.api_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"sessionfold_ingest_redactions_total{rule="user_id",action="hash"}"#)
            || metrics
                .contains(r#"sessionfold_ingest_redactions_total{action="hash",rule="user_id"}"#),
        "no redaction counted:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("redaction"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let redis = redis_text(&app).await;
    let streams = jetstream_text(&app).await;
    let log = app.service_log("dev");
    for (place, text) in [
        ("Redis", &redis),
        ("JetStream", &streams),
        ("the log", &log),
        ("/metrics", &metrics),
    ] {
        let found = text.matches(marker.as_str()).count();
        println!("marker in {place}: {found} ({} bytes scanned)", text.len());
        assert_eq!(found, 0, "the redacted marker is in {place}");
    }
    // The scan finds what is there: the ordinary field's marker is in the
    // document and in the stream, and the hashed value is in both.
    assert!(redis.contains(&visible) && streams.contains(&visible));
    assert!(redis.contains("hmac-sha256:") && streams.contains("hmac-sha256:"));
}

#[tokio::test]
async fn hashing_without_a_key_of_32_bytes_stops_the_service() {
    let output = app_command_output(&[("HASH_FIELDS", "user_id"), ("REDACTION_KEY", "short")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("REDACTION_KEY"), "{stderr}");
    assert!(!stderr.contains("short\""), "the key was printed: {stderr}");
}

/// `sessionfold ingest` run with `env` against nothing: what it printed as
/// it refused to start.
fn app_command_output(env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(crate::helpers::sessionfold_bin());
    command.arg("ingest").env("NATS_URL", "nats://127.0.0.1:1");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("running sessionfold ingest")
}
