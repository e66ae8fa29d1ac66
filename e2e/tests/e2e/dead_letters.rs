//! Messages that can never be applied go to the dead-letter stream with
//! their reason, block nothing, and can be replayed.

use serde_json::Value;
use sessionfold_processor::dead_letter;
use sessionfold_testkit::eventually;

use crate::helpers::{DEADLINE, expected_document, spawn_app, spawn_split_app};

#[tokio::test]
async fn an_undecodable_message_becomes_a_dead_letter_and_blocks_nothing() {
    let app = spawn_app().await;
    let js = app.jetstream().await;
    js.publish(app.subject("poisoned"), "not a frame".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let frame = r#"[{"type":"EVENT","timestamp":1,"name":"fine"}]"#;
    let mut producer = app.connect("poisoned").await;
    producer.send_accepted(frame).await;

    app.wait_for_document("poisoned", &expected_document("poisoned", &[frame]))
        .await;
    app.wait_until_consumed().await;
    let letters = dead_letter::list(&js, &app.names.dead_stream)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].reason.contains("not a valid frame"),
        "{letters:?}"
    );
    assert_eq!(letters[0].payload, "not a frame");
    assert_eq!(letters[0].original_subject, app.subject("poisoned"));
    assert_eq!(letters[0].original_sequence, Some(1));
}

#[tokio::test]
async fn a_refused_frame_is_dead_lettered_after_its_attempts_and_replayed_once_fixed() {
    let app = spawn_split_app().await;
    let limited =
        app.start_processor_with(&[("MAX_CHILDREN_PER_SESSION", "2"), ("MAX_ATTEMPTS", "2")]);
    let fits =
        r#"[{"type":"EVENT","timestamp":1,"name":"a"},{"type":"EVENT","timestamp":2,"name":"b"}]"#;
    let overflows = r#"[{"type":"EVENT","timestamp":3,"name":"c"}]"#;
    let mut producer = app.connect("full").await;
    producer.send_accepted(fits).await;
    // Applied first: with batches in flight, a limit counts what was
    // applied before, whatever the stream order.
    app.wait_for_document("full", &expected_document("full", &[fits]))
        .await;
    producer.send_accepted(overflows).await;

    let js = app.jetstream().await;
    let stream = app.names.dead_stream.clone();
    let letters = eventually("the refused frame is a dead letter", DEADLINE, || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            let letters = dead_letter::list(&js, &stream).await.ok()?;
            (!letters.is_empty()).then_some(letters)
        }
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.contains("SESSIONFOLD_FULL"),
        "{letters:?}"
    );
    app.wait_until_consumed().await;
    let (_, document) = app.get_data("full").await;
    assert_eq!(document, expected_document("full", &[fits]));
    assert_eq!(limited.terminate().code(), Some(0));

    // The operator lifts the limit, lists and replays.
    let _unlimited = app.start_processor();
    let listed = tokio::process::Command::from(app.command())
        .args(["dead-letters", "list"])
        .output()
        .await
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let lines: Vec<Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["payload"], overflows);

    let replayed = tokio::process::Command::from(app.command())
        .args(["dead-letters", "replay", "--all"])
        .output()
        .await
        .unwrap();
    assert!(replayed.status.success(), "{replayed:?}");
    app.wait_for_document("full", &expected_document("full", &[fits, overflows]))
        .await;
    assert!(
        dead_letter::list(&js, &stream).await.unwrap().is_empty(),
        "a replayed letter stays"
    );
}
