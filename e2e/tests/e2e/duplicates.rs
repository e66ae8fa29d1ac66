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
    let app = crate::helpers::spawn_app_with(&[("CLOSE_ON_SESSION_END", "false")]).await;
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

/// A producer connection that sends `X-Request-Id: same-value`.
async fn connect_with_shared_request_id(
    app: &crate::helpers::TestApp,
    session: &str,
) -> crate::helpers::Producer {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = app.websocket_url(session).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-request-id", "same-value".parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket connection");
    crate::helpers::Producer { socket }
}

#[tokio::test]
async fn a_request_id_shared_by_sessions_reconnects_and_concurrent_connections_loses_nothing() {
    let app = spawn_app().await;
    let frame = |name: &str| format!(r#"[{{"type":"EVENT","timestamp":1,"name":"{name}"}}]"#);
    // Two sessions, the same request id.
    for session in ["one", "two"] {
        let mut producer = connect_with_shared_request_id(&app, session).await;
        producer.send_accepted(&frame(session)).await;
    }
    // One session, reconnecting with the same request id.
    for round in ["first", "second"] {
        let mut producer = connect_with_shared_request_id(&app, "again").await;
        producer.send_accepted(&frame(round)).await;
    }
    // Two connections to one session at once, the same request id.
    let mut a = connect_with_shared_request_id(&app, "both").await;
    let mut b = connect_with_shared_request_id(&app, "both").await;
    let (a_frame, b_frame) = (frame("a"), frame("b"));
    tokio::join!(a.send_accepted(&a_frame), b.send_accepted(&b_frame));

    app.wait_for_document("one", &expected_document("one", &[&frame("one")]))
        .await;
    app.wait_for_document("two", &expected_document("two", &[&frame("two")]))
        .await;
    app.wait_for_document(
        "again",
        &expected_document("again", &[&frame("first"), &frame("second")]),
    )
    .await;
    app.wait_until_consumed().await;
    let (_, both) = app.get_data("both").await;
    let mut names: Vec<&str> = both["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|child| child["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["a", "b"]);
}
