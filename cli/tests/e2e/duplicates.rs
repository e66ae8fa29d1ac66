//! Sending the same data again never duplicates anything.

use crate::helpers::{expected_document, spawn_app};

const FRAMES: [&str; 3] = [
    r#"[{"type":"SESSION_START","timestamp":1},{"type":"EVENT","timestamp":2,"name":"a"},{"type":"EVENT","timestamp":3,"name":"b"}]"#,
    r#"[{"type":"EVENT","timestamp":4,"name":"c","id":"ev-c"},{"type":"EVENT","timestamp":2,"name":"a2"}]"#,
    r#"[{"type":"EVENT","timestamp":5,"name":"d"},{"type":"SESSION_END","timestamp":6}]"#,
];

/// The same events again, batched differently, in another order, one of
/// them with its fields reordered and one identified only by its `id`.
const REBATCHED: [&str; 3] = [
    r#"[{"type":"EVENT","timestamp":5,"name":"d"}]"#,
    r#"[{"name":"b","timestamp":3,"type":"EVENT"},{"type":"EVENT","timestamp":2,"name":"a"},{"type":"EVENT","timestamp":4,"name":"changed","id":"ev-c"}]"#,
    r#"[{"type":"EVENT","timestamp":2,"name":"a2"},{"type":"SESSION_START","timestamp":1},{"type":"SESSION_END","timestamp":6}]"#,
];

async fn send_all(app: &crate::helpers::TestApp, session: &str, frames: &[&str]) {
    let mut producer = app.connect(session).await;
    for frame in frames {
        producer.send_accepted(frame).await;
    }
}

#[tokio::test]
async fn the_same_frames_again_on_the_same_connection_add_nothing() {
    let app =
        crate::helpers::spawn_app_with(|config| config.connection.close_on_session_end = false)
            .await;
    let expected = expected_document("again", &FRAMES);
    let mut producer = app.connect("again").await;
    for frame in FRAMES.iter().chain(FRAMES.iter()) {
        producer.send_accepted(frame).await;
    }
    app.wait_until_consumed().await;
    app.wait_for_document("again", &expected).await;
    assert_eq!(expected["children"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn the_same_events_rebatched_over_a_new_connection_add_nothing() {
    let app = spawn_app().await;
    let expected = expected_document("rebatched", &FRAMES);
    send_all(&app, "rebatched", &FRAMES).await;
    app.wait_for_document("rebatched", &expected).await;
    send_all(&app, "rebatched", &REBATCHED).await;
    send_all(&app, "rebatched", &FRAMES).await;
    app.wait_until_consumed().await;
    assert_eq!(app.stored_frames("rebatched").await, 9);
    let (_, document) = app.get_data("rebatched").await;
    assert_eq!(
        document, expected,
        "the first arrival keeps its place and content"
    );
}
