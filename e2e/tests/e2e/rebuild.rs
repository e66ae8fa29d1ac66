//! `sessionfold rebuild` replays the whole stream through a new durable
//! consumer into a fresh key prefix: the rebuilt documents equal the live
//! ones byte for byte, the temporary consumer is gone afterwards, and an api
//! started with `KEY_PREFIX=<new prefix>` serves them.

use std::process::Output;

use sessionfold_core::Keys;
use sessionfold_harness::read_documents;
use sessionfold_testkit::{RunNames, unique_name};

use crate::helpers::{TestApp, spawn_app, spawn_split_app_on};

/// Sessions with out-of-order events, duplicates, ids, several frames and
/// several connections.
const SESSIONS: &[(&str, &[&str])] = &[
    (
        "e6fa79ca-d142-4046-a134-5134f16a0b5e",
        &[
            r#"[{"type":"SESSION_START","timestamp":1569972082},{"type":"EVENT","timestamp":1569972085,"name":"last_event"}]"#,
            r#"[{"type":"EVENT","timestamp":1569972083,"name":"middle_event"},{"type":"EVENT","timestamp":1569972083,"name":"first_event"},{"type":"SESSION_END","timestamp":1569972086}]"#,
        ],
    ),
    (
        "dup s.ession*",
        &[
            r#"[{"type":"EVENT","timestamp":5,"name":"x","id":"1"},{"type":"EVENT","timestamp":1,"name":"y"}]"#,
            r#"[{"type":"EVENT","timestamp":5,"name":"x again","id":"1"},{"type":"EVENT","timestamp":1,"name":"y"},{"type":"EVENT","timestamp":0.5,"extra":{"k":[1,2]}}]"#,
            r#"{"type":"SESSION_START","timestamp":1.0}"#,
        ],
    ),
    (
        "only-start",
        &[r#"[{"type":"SESSION_START","timestamp":7}]"#],
    ),
];

async fn raw_document(app: &TestApp, key_prefix: &str, session: &str) -> Option<String> {
    let documents = read_documents(
        &app.redis.url(),
        &Keys::new(key_prefix),
        &[session.to_owned()],
    )
    .await
    .unwrap();
    documents.into_iter().next().flatten()
}

async fn rebuild(app: &TestApp, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::from(app.command());
    command
        .arg("rebuild")
        .args(args)
        .env("REDIS_URL", app.redis.url())
        .env("DEAD_LETTER_SUBJECT_PREFIX", &app.names.dead_subject_prefix)
        // The live prefix in the environment must not matter.
        .env("KEY_PREFIX", &app.names.key_prefix);
    command.output().await.expect("running sessionfold rebuild")
}

#[tokio::test]
async fn a_rebuild_into_a_fresh_prefix_equals_the_live_documents_byte_for_byte() {
    let app = spawn_app().await;
    for (session, frames) in SESSIONS {
        // Each frame on its own connection, as reconnecting producers do.
        for frame in *frames {
            let mut producer = app.connect(session).await;
            producer.send_accepted(frame).await;
        }
    }
    app.wait_until_consumed().await;

    let prefix = format!("{}:", unique_name("rebuilt"));
    let consumer = unique_name("rebuild");
    let output = rebuild(&app, &["--key-prefix", &prefix, "--consumer", &consumer]).await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("rebuilt {} documents", SESSIONS.len())),
        "{stdout}"
    );

    for (session, _) in SESSIONS {
        let live = raw_document(&app, &app.names.key_prefix, session).await;
        let rebuilt = raw_document(&app, &prefix, session).await;
        assert!(live.is_some(), "no live document for {session}");
        assert_eq!(rebuilt, live, "{session}");
    }

    // The temporary consumer is gone; the live one is untouched.
    let js = app.jetstream().await;
    let stream = js.get_stream(&app.names.stream).await.unwrap();
    assert!(stream.consumer_info(&consumer).await.is_err());
    assert!(stream.consumer_info(&app.names.consumer).await.is_ok());

    // The same prefix again is refused: a rebuild starts from nothing.
    let again = rebuild(
        &app,
        &["--key-prefix", &prefix, "--consumer", &unique_name("again")],
    )
    .await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds keys"),
        "{again:?}"
    );

    // A frame stored after the rebuild reaches only the live prefix (until
    // the processors switch); a rebuild of the tail closes the gap.
    let reached: u64 = stdout
        .split("up to ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no sequence in {stdout}"));
    let (late_session, _) = SESSIONS[0];
    let mut producer = app.connect(late_session).await;
    producer
        .send_accepted(r#"[{"type":"EVENT","timestamp":1569972084,"name":"late_event"}]"#)
        .await;
    app.wait_until_consumed().await;
    let live = raw_document(&app, &app.names.key_prefix, late_session).await;
    assert_ne!(raw_document(&app, &prefix, late_session).await, live);
    let tail = rebuild(
        &app,
        &[
            "--key-prefix",
            &prefix,
            "--consumer",
            &unique_name("tail"),
            "--allow-existing-keys",
            "--from-sequence",
            &(reached + 1).to_string(),
        ],
    )
    .await;
    assert!(tail.status.success(), "{tail:?}");
    for (session, _) in SESSIONS {
        assert_eq!(
            raw_document(&app, &prefix, session).await,
            raw_document(&app, &app.names.key_prefix, session).await,
            "{session}"
        );
    }

    // Switching readers: an api with KEY_PREFIX=<new prefix> serves them.
    let names = RunNames {
        key_prefix: prefix.clone(),
        ..app.names.clone()
    };
    let readers = spawn_split_app_on(
        sessionfold_testkit::NatsServer::start().unwrap(),
        sessionfold_testkit::RedisServer::start().unwrap(),
        names,
        &[],
        &[("REDIS_URL", &app.redis.url())],
    )
    .await;
    for (session, _) in SESSIONS {
        let response = readers
            .http
            .get(readers.data_url(Some(session)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let body = response.text().await.unwrap();
        assert_eq!(
            Some(body),
            raw_document(&app, &app.names.key_prefix, session).await
        );
    }
}

#[tokio::test]
async fn a_rebuild_refuses_settings_that_would_change_the_stream() {
    let app = spawn_app().await;
    let mut producer = app.connect("s").await;
    producer
        .send_accepted(r#"[{"type":"EVENT","timestamp":1}]"#)
        .await;
    app.wait_until_consumed().await;
    let prefix = format!("{}:", unique_name("rebuilt"));
    let output = tokio::process::Command::from(app.command())
        .args(["rebuild", "--key-prefix", &prefix, "--consumer", "c"])
        .env("REDIS_URL", app.redis.url())
        .env("SUBJECT_PREFIX", "somewhere.else")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("SUBJECT_PREFIX"),
        "{output:?}"
    );
    let js = app.jetstream().await;
    let mut stream = js.get_stream(&app.names.stream).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.subjects,
        vec![format!("{}.*", app.names.subject_prefix)]
    );
}

/// A rebuild runs a processor of its own; it keeps the dead-letter
/// stream's limits as the operator set them (lowering them would drop
/// letters) instead of the defaults.
#[tokio::test]
async fn a_rebuild_keeps_the_dead_letter_streams_limits() {
    let app = spawn_app().await;
    let mut producer = app.connect("s").await;
    producer.send_accepted(SESSIONS[0].1[0]).await;
    app.wait_until_consumed().await;
    let js = app.jetstream().await;
    let raised = 512 << 20;
    let mut config = js
        .get_stream(&app.names.dead_stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_ne!(config.max_bytes, raised);
    config.max_bytes = raised;
    js.update_stream(config).await.unwrap();

    let prefix = format!("{}:", unique_name("rebuilt"));
    let output = rebuild(
        &app,
        &[
            "--key-prefix",
            &prefix,
            "--consumer",
            &unique_name("rebuild"),
        ],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let after = js
        .get_stream(&app.names.dead_stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .max_bytes;
    assert_eq!(
        after, raised,
        "the rebuild reset the dead-letter stream's byte limit"
    );
}
