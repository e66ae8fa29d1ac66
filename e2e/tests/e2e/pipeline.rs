//! The pipeline end to end, as producers and readers see it.

use serde_json::json;

use crate::helpers::{expected_document, spawn_app, spawn_app_with};

const SESSION: &str = "e6fa79ca-d142-4046-a134-5134f16a0b5e";
const FRAME_A: &str = r#"[{"type":"SESSION_START","timestamp":1569972082},{"type":"EVENT","timestamp":1569972085,"name":"last_event"}]"#;
const FRAME_B: &str = r#"[{"type":"EVENT","timestamp":1569972083,"name":"middle_event"},{"type":"EVENT","timestamp":1569972083,"name":"first_event"},{"type":"SESSION_END","timestamp":1569972086}]"#;

#[tokio::test]
async fn the_design_example_becomes_the_design_document() {
    let app = spawn_app().await;
    let mut producer = app.connect(SESSION).await;

    let first = producer.send_and_reply(FRAME_A).await;
    assert_eq!(
        first.to_json(),
        r#"{"ok":true,"frame":1,"accepted":2,"seq":1}"#
    );
    let second = producer.send_and_reply(FRAME_B).await;
    assert_eq!(
        second.to_json(),
        r#"{"ok":true,"frame":2,"accepted":3,"seq":2}"#
    );
    producer.expect_close(1000).await;

    app.wait_for_document(
        SESSION,
        &json!({
          "session_id": SESSION,
          "type": "SESSION",
          "start": 1569972082,
          "end": 1569972086,
          "children": [
            {"type": "EVENT", "timestamp": 1569972083, "name": "middle_event"},
            {"type": "EVENT", "timestamp": 1569972083, "name": "first_event"},
            {"type": "EVENT", "timestamp": 1569972085, "name": "last_event"}
          ]
        }),
    )
    .await;
}

#[tokio::test]
async fn session_markers_may_stand_anywhere_and_frames_arrive_out_of_order() {
    let app = spawn_app().await;
    let frames = [
        r#"[{"type":"EVENT","timestamp":50,"name":"e50"},{"type":"SESSION_START","timestamp":7},{"type":"EVENT","timestamp":10,"name":"e10"}]"#,
        r#"[{"type":"EVENT","timestamp":30,"name":"e30"},{"type":"SESSION_START","timestamp":5}]"#,
        r#"[{"type":"SESSION_END","timestamp":80},{"type":"EVENT","timestamp":20,"name":"e20","extra":{"nested":[1,2,3]}},{"type":"SESSION_END","timestamp":90},{"type":"EVENT","timestamp":1,"name":"e1"}]"#,
    ];
    let mut producer = app.connect("markers").await;
    for frame in frames {
        producer.send_accepted(frame).await;
    }
    let expected = expected_document("markers", &frames);
    assert_eq!(expected["start"], json!(5));
    assert_eq!(expected["end"], json!(90));
    let names = child_names(&expected);
    assert_eq!(names, ["e1", "e10", "e20", "e30", "e50"]);
    app.wait_for_document("markers", &expected).await;
}

#[tokio::test]
async fn a_single_event_object_is_a_frame_of_one() {
    let app = spawn_app().await;
    let mut producer = app.connect("single").await;
    let reply = producer
        .send_and_reply(r#"{"type":"EVENT","timestamp":3,"name":"alone","id":"x1"}"#)
        .await;
    assert_eq!(
        reply.to_json(),
        r#"{"ok":true,"frame":1,"accepted":1,"seq":1}"#
    );
    app.wait_for_document(
        "single",
        &json!({"session_id":"single","type":"SESSION","start":null,"end":null,
                "children":[{"type":"EVENT","timestamp":3,"name":"alone","id":"x1"}]}),
    )
    .await;
}

#[tokio::test]
async fn equal_timestamps_keep_arrival_order_across_frames() {
    let app = spawn_app().await;
    let frames = [
        r#"[{"type":"EVENT","timestamp":1,"name":"a"},{"type":"EVENT","timestamp":1,"name":"b"}]"#,
        r#"[{"type":"EVENT","timestamp":1,"name":"c"}]"#,
        r#"[{"type":"EVENT","timestamp":0.5,"name":"z"},{"type":"EVENT","timestamp":1,"name":"d"}]"#,
    ];
    let mut producer = app.connect("ties").await;
    for frame in frames {
        producer.send_accepted(frame).await;
    }
    let expected = expected_document("ties", &frames);
    let names = child_names(&expected);
    assert_eq!(names, ["z", "a", "b", "c", "d"]);
    app.wait_for_document("ties", &expected).await;
}

#[tokio::test]
async fn pipelined_frames_are_answered_in_order() {
    let app = spawn_app().await;
    let mut producer = app.connect("pipelined").await;
    let frames: Vec<String> = (0..200)
        .map(|i| {
            if i % 7 == 3 {
                "not json".to_owned()
            } else {
                format!(r#"[{{"type":"EVENT","timestamp":{i},"name":"n{i}"}}]"#)
            }
        })
        .collect();
    for frame in &frames {
        producer.send(frame).await;
    }
    for (i, frame) in frames.iter().enumerate() {
        let reply = producer.reply().await;
        assert_eq!(reply.frame(), i as u64 + 1);
        assert_eq!(reply.is_ok(), frame != "not json", "{reply:?}");
    }
    let valid: Vec<&str> = frames
        .iter()
        .filter(|frame| *frame != "not json")
        .map(String::as_str)
        .collect();
    app.wait_for_document("pipelined", &expected_document("pipelined", &valid))
        .await;
}

#[tokio::test]
async fn the_socket_stays_open_after_session_end_when_configured() {
    let app = spawn_app_with(&[("CLOSE_ON_SESSION_END", "false")]).await;
    let mut producer = app.connect("open").await;
    producer
        .send_accepted(r#"[{"type":"SESSION_END","timestamp":9}]"#)
        .await;
    producer
        .send_accepted(r#"[{"type":"EVENT","timestamp":8,"name":"late"}]"#)
        .await;
    app.wait_for_document(
        "open",
        &json!({"session_id":"open","type":"SESSION","start":null,"end":9,
                "children":[{"type":"EVENT","timestamp":8,"name":"late"}]}),
    )
    .await;
}

#[tokio::test]
async fn session_ids_with_separators_and_unicode_are_stored_under_their_own_name() {
    let app = spawn_app().await;
    let ids = ["a.b", "a_2eb", "a*>{x} y", "séance-☃", &"x".repeat(128)];
    for id in ids {
        let mut producer = app.connect(id).await;
        let frame = format!(
            r#"[{{"type":"EVENT","timestamp":1,"name":{}}}]"#,
            serde_json::to_string(id).unwrap()
        );
        producer.send_accepted(&frame).await;
    }
    for id in ids {
        let frame = format!(
            r#"[{{"type":"EVENT","timestamp":1,"name":{}}}]"#,
            serde_json::to_string(id).unwrap()
        );
        app.wait_for_document(id, &expected_document(id, &[&frame]))
            .await;
    }
}

/// The `name` of every child of `document`, in order.
fn child_names(document: &serde_json::Value) -> Vec<&str> {
    document["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|child| child["name"].as_str().unwrap())
        .collect()
}
