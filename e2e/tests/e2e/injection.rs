//! Hostile session_ids end to end: every accepted id gets exactly one subject
//! in the stream and exactly its own three keys in Redis, under one hash tag;
//! refused ids (control and format characters, 129 bytes, empty) leave
//! neither.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use reqwest::StatusCode;
use sessionfold_core::SessionId;
use tokio_tungstenite::tungstenite;

use crate::helpers::{TestApp, expected_document, spawn_app};

/// Valid ids that break naive subject or key building: NATS separators and
/// wildcards, an id spelled like another's escape (`a.b` / `a_2eb`), white
/// space that is not a control character, hash-tag braces, characters with a
/// meaning in URLs and globs, multi-byte UTF-8 and ids of exactly 128 bytes.
fn hostile_ids() -> Vec<String> {
    [
        "a.b",
        "a_2eb",
        "*",
        ">",
        "a.*.>",
        "sessionfold.events.x",
        " ",
        "a b",
        "\u{a0}\u{2028}\u{3000}",
        "{x}",
        "}{",
        "_",
        "%2e",
        "a+b",
        "a&session_id=b",
        "[*]?",
        "é☃🦀\u{301}",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([
        "x".repeat(128),
        "🦀".repeat(32),
        ".".repeat(128),
        "{}".repeat(64),
    ])
    .collect()
}

/// Ids refused before the upgrade: empty, a byte too long, control
/// characters (C0, DEL, C1), invisible format characters (a BOM, a bidi
/// override, a zero-width space).
fn refused_ids() -> Vec<String> {
    [
        "",
        "a\u{0}b",
        "a\nb",
        "\t",
        "a\r\n*",
        "\u{7f}",
        "a\u{85}b",
        "\u{9b}",
        "é☃🦀\u{301}\u{feff}",
        "a\u{202e}b",
        "a\u{200b}b",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([
        "x".repeat(129),
        format!("{}x", "é".repeat(64)),
        format!("{}.", "🦀".repeat(32)),
    ])
    .collect()
}

fn frame_for(id: &str) -> String {
    let id = serde_json::to_string(id).unwrap();
    format!(r#"[{{"type":"EVENT","timestamp":1,"name":{id},"session_id":{id}}}]"#)
}

/// Every subject the event stream holds, with its message count.
async fn stream_subjects(app: &TestApp) -> BTreeMap<String, usize> {
    let js = app.jetstream().await;
    let stream = js.get_stream(&app.names.stream).await.unwrap();
    let mut subjects = stream.info_with_subjects(">").await.unwrap();
    let mut found = BTreeMap::new();
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.unwrap();
        found.insert(subject, count);
    }
    found
}

/// Every Redis key under the test's key prefix.
async fn redis_keys(app: &TestApp) -> BTreeSet<String> {
    let client = redis::Client::open(app.redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}*", app.names.key_prefix);
    let mut keys = BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

async fn expect_refused_upgrade(app: &TestApp, id: &str) {
    match tokio_tungstenite::connect_async(app.websocket_url(id)).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{id:?}")
        }
        Ok(_) => panic!("{id:?} was accepted"),
        Err(other) => panic!("{id:?}: expected an HTTP 400, got {other:?}"),
    }
    let response = app.http.get(app.data_url(Some(id))).send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "GET /data {id:?}"
    );
}

#[tokio::test]
async fn hostile_session_ids_get_exactly_one_subject_and_their_own_keys() {
    let app = spawn_app().await;
    let (run_subjects, run_keys) = (app.subjects(), app.keys());
    let accepted = hostile_ids();
    let refused = refused_ids();
    for id in &refused {
        assert!(SessionId::parse(id).is_err(), "{id:?} should be invalid");
    }

    // Refused ids first, then again between the accepted ones.
    for id in &refused {
        expect_refused_upgrade(&app, id).await;
    }
    for (i, id) in accepted.iter().enumerate() {
        let mut producer = app.connect(id).await;
        producer.send_accepted(&frame_for(id)).await;
        expect_refused_upgrade(&app, &refused[i % refused.len()]).await;
    }
    for id in &accepted {
        app.wait_for_document(id, &expected_document(id, &[&frame_for(id)]))
            .await;
    }
    app.wait_until_consumed().await;

    let sessions: Vec<SessionId> = accepted
        .iter()
        .map(|id| SessionId::parse(id).unwrap())
        .collect();
    let tokens: BTreeSet<String> = sessions.iter().map(SessionId::token).collect();
    assert_eq!(tokens.len(), accepted.len(), "two ids share a token");

    let subjects = stream_subjects(&app).await;
    let expected_subjects: BTreeMap<String, usize> = sessions
        .iter()
        .map(|session| (run_subjects.event(session), 1))
        .collect();
    assert_eq!(subjects, expected_subjects);
    let prefix_tokens = run_subjects.events_prefix.split('.').count();
    for subject in subjects.keys() {
        let tokens: Vec<&str> = subject.split('.').collect();
        assert_eq!(tokens.len(), prefix_tokens + 1, "{subject}");
        assert!(
            tokens.iter().all(|token| !token.is_empty()
                && token.bytes().all(|b| b.is_ascii_graphic())
                && !token.contains(['*', '>'])),
            "{subject} is not a plain subject"
        );
        let session = run_subjects.session_of_event(subject).unwrap();
        assert!(sessions.contains(&session));
    }

    let keys = redis_keys(&app).await;
    // The sessions' keys (each frame's one event is named), and the
    // processor's applied-floor marker.
    let expected_keys: BTreeSet<String> = sessions
        .iter()
        .flat_map(|session| {
            let keys = run_keys.session(session);
            [keys.doc, keys.state, keys.summary, keys.names]
        })
        .chain([sessionfold_processor::repair::single_marker_key(
            &run_keys.prefix,
        )])
        .collect();
    assert_eq!(keys, expected_keys);
    for session in &sessions {
        let token = session.token();
        let keys = run_keys.session(session);
        for key in [&keys.doc, &keys.state, &keys.summary, &keys.names] {
            let open = key.find('{').unwrap();
            let close = open + 1 + key[open + 1..].find('}').unwrap();
            assert_eq!(&key[open + 1..close], token, "hash tag of {key}");
        }
    }
}
