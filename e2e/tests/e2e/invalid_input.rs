//! Bad input gets a clear, stable error; the connection stays usable and
//! nothing of a rejected frame is stored.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sessionfold_core::ErrorCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{expected_document, spawn_app, spawn_app_with};

#[tokio::test]
async fn invalid_frames_are_rejected_and_later_frames_still_count() {
    let app = spawn_app_with(&[("MAX_FRAME_BYTES", "4096"), ("MAX_EVENTS_PER_FRAME", "5")]).await;
    let session = "bad-input";
    let valid_before = r#"[{"type":"EVENT","timestamp":1,"name":"before"}]"#;
    let valid_after =
        r#"[{"type":"EVENT","timestamp":2,"name":"after"},{"type":"SESSION_START","timestamp":0}]"#;
    let ok = r#"{"type":"EVENT","timestamp":1,"name":"fine"}"#;
    let cases: Vec<(String, ErrorCode, Option<usize>)> = vec![
        ("{not json".into(), ErrorCode::InvalidJson, None),
        ("".into(), ErrorCode::InvalidJson, None),
        ("42".into(), ErrorCode::InvalidFrame, None),
        (
            format!(r#"[{ok},{{"type":"EVENT","timestamp":"5"}}]"#),
            ErrorCode::InvalidEvent,
            Some(1),
        ),
        (
            format!(r#"[{ok},{ok},{{"type":"CLICK","timestamp":5}}]"#),
            ErrorCode::InvalidEvent,
            Some(2),
        ),
        (
            r#"[{"type":"EVENT"}]"#.into(),
            ErrorCode::InvalidEvent,
            Some(0),
        ),
        (
            r#"[{"type":"EVENT","timestamp":-3}]"#.into(),
            ErrorCode::InvalidEvent,
            Some(0),
        ),
        (
            r#"[{"type":"EVENT","timestamp":1,"name":["x"]}]"#.into(),
            ErrorCode::InvalidEvent,
            Some(0),
        ),
        (
            format!(r#"[{ok},{{"type":"EVENT","timestamp":1,"session_id":"other"}}]"#),
            ErrorCode::SessionMismatch,
            Some(1),
        ),
        (
            format!("[{}]", [ok; 6].join(",")),
            ErrorCode::TooManyEvents,
            None,
        ),
        (
            format!(
                r#"[{{"type":"EVENT","timestamp":1,"name":"{}"}}]"#,
                "x".repeat(5000)
            ),
            ErrorCode::FrameTooLarge,
            None,
        ),
    ];

    let mut producer = app.connect(session).await;
    producer.send_accepted(valid_before).await;
    for (frame, code, index) in &cases {
        let reply = producer.send_and_reply(frame).await;
        assert_eq!(reply.error_code(), Some(*code), "{frame:.80} → {reply:?}");
        let parsed: Value = serde_json::from_str(&reply.to_json()).unwrap();
        assert_eq!(
            parsed["error"]["index"].as_u64(),
            index.map(|i| i as u64),
            "{frame:.80}"
        );
        assert!(
            parsed["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    producer.socket.send_binary(vec![1, 2, 3]).await;
    let reply = producer.reply().await;
    assert_eq!(reply.error_code(), Some(ErrorCode::InvalidJson));
    assert_eq!(reply.frame(), cases.len() as u64 + 2);
    producer.send_accepted(valid_after).await;

    app.wait_for_document(
        session,
        &expected_document(session, &[valid_before, valid_after]),
    )
    .await;
    app.wait_until_consumed().await;
    assert_eq!(
        app.stored_frames(session).await,
        2,
        "rejected frames were published"
    );
}

/// `futures::SinkExt::send` of a binary message, kept beside the test.
trait SendBinary {
    async fn send_binary(&mut self, bytes: Vec<u8>);
}

impl SendBinary
    for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
{
    async fn send_binary(&mut self, bytes: Vec<u8>) {
        use futures::SinkExt;
        self.send(Message::binary(bytes)).await.unwrap();
    }
}

#[tokio::test]
async fn a_websocket_upgrade_without_a_valid_session_id_is_refused_with_400() {
    let app = spawn_app().await;
    for query in ["", "?session_id=", "?other=1", "?session_id=a%0Ab"] {
        let url = format!("http://{}/websocket{query}", app.ingest_addr);
        let response = app
            .http
            .get(&url)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert!(response.headers().contains_key("x-request-id"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_session_id", "{query}");
    }
    let too_long = "x".repeat(129);
    let err = tokio_tungstenite::connect_async(app.websocket_url(&too_long))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST)
        }
        other => panic!("expected an HTTP 400, got {other:?}"),
    }
}

#[tokio::test]
async fn the_api_answers_400_without_session_id_and_404_for_unknown_sessions() {
    let app = spawn_app().await;
    let response = app.http.get(app.data_url(None)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_session_id");

    let (status, body) = app.get_data("nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"error":{"code":"not_found","message":"no document for this session_id"}})
    );
}

#[tokio::test]
async fn an_oversized_message_closes_the_connection_with_1009() {
    let app = spawn_app_with(&[("MAX_FRAME_BYTES", "20000")]).await;
    let mut producer = app.connect("huge").await;
    producer.send(&"x".repeat(200_000)).await;
    match producer.socket.next_close().await {
        Some(code) => assert_eq!(code, 1009),
        None => panic!("the connection was not closed with a code"),
    }
}

trait NextClose {
    async fn next_close(&mut self) -> Option<u16>;
}

impl NextClose
    for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
{
    async fn next_close(&mut self) -> Option<u16> {
        use futures::StreamExt;
        loop {
            match tokio::time::timeout(crate::helpers::DEADLINE, self.next())
                .await
                .ok()?
            {
                Some(Ok(Message::Close(Some(frame)))) => return Some(frame.code.into()),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    }
}
