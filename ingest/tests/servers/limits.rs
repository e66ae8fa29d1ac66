//! Frames at, under and over what the broker accepts: ingest lowers its
//! frame limit to fit the server's `max_payload` with its headers, and any
//! frame that can never be stored is refused with the permanent
//! `frame_too_large`, never `unavailable`.

use std::time::Duration;

use bytes::Bytes;
use sessionfold_core::ErrorCode;
use sessionfold_ingest::publisher::{
    JetStreamPublisher, OutgoingFrame, Publish, PublishError, PublishTiming, max_header_bytes,
};
use sessionfold_ingest::server::effective_frame_limit;

use crate::helpers::spawn_ingest_with;

const MAX_PAYLOAD: usize = 64 * 1024;

/// A frame of exactly `bytes` bytes: one event whose name pads it.
fn frame_of(bytes: usize) -> String {
    let head = r#"[{"type":"EVENT","timestamp":1,"name":""#;
    let tail = r#""}]"#;
    let pad = bytes - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad))
}

#[tokio::test]
async fn frames_at_and_under_the_broker_limit_are_stored_and_one_byte_over_is_too_large() {
    let ingest = spawn_ingest_with(&format!("max_payload: {MAX_PAYLOAD}"), |config| {
        config.limits.max_frame_bytes = 1 << 20;
        config.limits.max_event_bytes = 1 << 20;
    })
    .await;
    let limit = MAX_PAYLOAD - max_header_bytes();
    assert_eq!(effective_frame_limit(1 << 20, MAX_PAYLOAD, -1), limit);

    // Long request ids make the headers as large as they can be.
    let longest_request_id = "r".repeat(64);
    let mut producer = ingest
        .connect_with("sizes", &[("x-request-id", longest_request_id.as_str())])
        .await;
    for size in [limit - 1, limit] {
        let sent = frame_of(size);
        let reply = producer.send_and_reply(&sent).await;
        assert!(reply.is_ok(), "a frame of {size} bytes: {reply:?}");
        ingest.assert_stored(&reply, "sizes", &sent).await;
    }
    let over = producer.send_and_reply(&frame_of(limit + 1)).await;
    assert_eq!(
        over.error_code(),
        Some(ErrorCode::FrameTooLarge),
        "{over:?}"
    );
    assert!(!ErrorCode::FrameTooLarge.is_transient());
    assert_eq!(ingest.stream_messages().await, 2);

    // The budget is tight: with the longest headers ingest writes (a
    // frame alone has no batch headers, so it may take their bytes), one
    // byte more is what the broker refuses, and that refusal is permanent
    // too.
    let batch_headers = sessionfold_common::batch_publish::max_batch_header_bytes();
    let publisher = JetStreamPublisher::new(
        async_nats::connect(ingest.nats.url()).await.unwrap(),
        PublishTiming {
            timeout: Duration::from_secs(5),
            retry_after: None,
        },
        ingest.config.nats.clone(),
    );
    // The longest message ids: 32 hex digits, ':', the largest frame number.
    let direct = |bytes: usize, digit: &str| OutgoingFrame {
        subject: ingest.subject("sizes"),
        payload: Bytes::from(frame_of(bytes)),
        message_id: format!("{}:{}", digit.repeat(32), u64::MAX),
        request_id: longest_request_id.clone(),
    };
    assert!(
        publisher
            .publish(direct(limit + batch_headers, "e"))
            .await
            .is_ok()
    );
    match publisher
        .publish(direct(limit + batch_headers + 1, "f"))
        .await
    {
        Err(err @ PublishError::TooLarge(_)) => assert_eq!(err.code(), ErrorCode::FrameTooLarge),
        other => panic!("one byte over the broker's limit: {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_that_refuses_the_size_gets_a_permanent_refusal() {
    let ingest = spawn_ingest_with("", |config| {
        config.limits.max_event_bytes = 1 << 20;
    })
    .await;
    // An operator lowers the stream's message size while ingest runs.
    let js = ingest.jetstream().await;
    let mut stream_config = js
        .get_stream(&ingest.config.nats.stream_name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    stream_config.max_message_size = 4096;
    js.update_stream(stream_config).await.unwrap();

    let mut producer = ingest.connect("stream-limit").await;
    let small = producer.send_and_reply(&frame_of(1000)).await;
    assert!(small.is_ok(), "{small:?}");
    let large = producer.send_and_reply(&frame_of(8000)).await;
    assert_eq!(
        large.error_code(),
        Some(ErrorCode::FrameTooLarge),
        "{large:?}"
    );
}

#[test]
fn a_stream_limit_known_at_start_lowers_the_frame_limit() {
    assert_eq!(
        effective_frame_limit(1 << 20, 1 << 20, 4096),
        4096 - max_header_bytes()
    );
    assert_eq!(effective_frame_limit(1000, 1 << 20, -1), 1000);
    assert_eq!(effective_frame_limit(1000, 1 << 20, 0), 1000);
    assert_eq!(effective_frame_limit(1 << 20, 100, -1), 0);
}
