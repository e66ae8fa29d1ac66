//! Acknowledged means stored: whatever request ids clients send, every frame
//! answered `ok` is in the stream at the sequence its reply names, and a
//! `duplicate` PubAck is believed only for the very same frame.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use sessionfold_ingest::publisher::{
    JetStreamPublisher, OutgoingFrame, Publish, PublishError, PublishTiming,
};

use crate::helpers::{Producer, frame, spawn_ingest};

const SHARED_ID: (&str, &str) = ("x-request-id", "same-value");

#[tokio::test]
async fn a_request_id_reused_across_sessions_stores_every_frame() {
    let ingest = spawn_ingest().await;
    let mut replies = Vec::new();
    for session in ["first-session", "second-session"] {
        let mut producer = ingest.connect_with(session, &[SHARED_ID]).await;
        let sent = frame(session);
        let reply = producer.send_and_reply(&sent).await;
        assert!(reply.is_ok(), "{reply:?}");
        ingest.assert_stored(&reply, session, &sent).await;
        replies.push(reply.seq());
    }
    assert_ne!(replies[0], replies[1]);
    assert_eq!(ingest.stream_messages().await, 2);
}

#[tokio::test]
async fn a_request_id_reused_across_reconnects_stores_every_frame() {
    let ingest = spawn_ingest().await;
    let mut sequences = HashSet::new();
    for round in 0..3 {
        let mut producer = ingest.connect_with("reconnecting", &[SHARED_ID]).await;
        for n in 0..4 {
            let sent = frame(&format!("round-{round}-frame-{n}"));
            let reply = producer.send_and_reply(&sent).await;
            assert!(reply.is_ok(), "{reply:?}");
            ingest.assert_stored(&reply, "reconnecting", &sent).await;
            assert!(
                sequences.insert(reply.seq()),
                "a sequence acknowledged twice"
            );
        }
        producer.close().await;
    }
    assert_eq!(ingest.stream_messages().await, 12);
}

#[tokio::test]
async fn a_request_id_reused_by_concurrent_connections_stores_every_frame() {
    let ingest = spawn_ingest().await;
    const CONNECTIONS: usize = 8;
    const FRAMES: usize = 10;
    let mut producers: Vec<Producer> = Vec::new();
    for _ in 0..CONNECTIONS {
        // Half of them into one session, the rest each into its own.
        producers.push(ingest.connect_with("shared", &[SHARED_ID]).await);
    }
    let sends = producers
        .into_iter()
        .enumerate()
        .map(|(c, mut producer)| async move {
            let frames = (0..FRAMES).map(|n| frame(&format!("c{c}-f{n}"))).collect();
            let replies = producer.send_all_then_replies(frames).await;
            replies
                .into_iter()
                .map(|(sent, reply)| (reply, sent))
                .collect::<Vec<_>>()
        });
    let all: Vec<_> = futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut sequences = HashSet::new();
    for (reply, sent) in &all {
        assert!(reply.is_ok(), "{reply:?}");
        ingest.assert_stored(reply, "shared", sent).await;
        assert!(sequences.insert(reply.seq()));
    }
    assert_eq!(sequences.len(), CONNECTIONS * FRAMES);
    assert_eq!(
        ingest.stream_messages().await,
        (CONNECTIONS * FRAMES) as u64
    );
}

#[tokio::test]
async fn an_empty_frame_is_acknowledged_without_a_sequence() {
    let ingest = spawn_ingest().await;
    let mut producer = ingest.connect("empty").await;
    let reply = producer.send_and_reply("[]").await;
    assert_eq!(reply.to_json(), r#"{"ok":true,"frame":1,"accepted":0}"#);
    let stored = producer.send_and_reply(&frame("x")).await;
    assert_eq!(
        stored.to_json(),
        r#"{"ok":true,"frame":2,"accepted":1,"seq":1}"#
    );
}

fn publisher(
    ingest: &crate::helpers::TestIngest,
    client: async_nats::Client,
) -> JetStreamPublisher {
    JetStreamPublisher::new(
        client,
        PublishTiming {
            timeout: Duration::from_secs(5),
            retry_after: Some(Duration::from_secs(1)),
        },
        ingest.config.nats.clone(),
    )
}

#[tokio::test]
async fn a_duplicate_puback_is_believed_only_for_the_same_frame() {
    let ingest = spawn_ingest().await;
    let client = async_nats::connect(ingest.nats.url()).await.unwrap();
    let publisher = publisher(&ingest, client);
    let subject = ingest.subject("dup");
    let outgoing = |payload: &'static str, subject: &str| OutgoingFrame {
        subject: subject.to_owned(),
        payload: Bytes::from_static(payload.as_bytes()),
        message_id: "0123456789abcdef0123456789abcdef:1".to_owned(),
        request_id: "r".to_owned(),
    };
    let first = publisher.publish(outgoing("[1]", &subject)).await.unwrap();
    assert!(!first.duplicate);

    // The same frame again (as ingest's own retry sends it): JetStream
    // keeps one copy, and the copy is checked to be this frame.
    let again = publisher.publish(outgoing("[1]", &subject)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);

    // Another payload, or another subject, under the same id: refused.
    for forged in [
        outgoing("[2]", &subject),
        outgoing("[1]", &ingest.subject("other")),
    ] {
        match publisher.publish(forged).await {
            Err(err @ PublishError::UnverifiedDuplicate { .. }) => {
                assert_eq!(err.code(), sessionfold_core::ErrorCode::Unavailable);
            }
            other => panic!("a foreign duplicate was believed: {other:?}"),
        }
    }
    assert_eq!(ingest.stream_messages().await, 1);
}

/// Stops or resumes a process (SIGSTOP / SIGCONT).
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test]
async fn a_publish_whose_puback_is_late_is_sent_again_and_stored_once() {
    let ingest = spawn_ingest().await;
    let client = async_nats::connect(ingest.nats.url()).await.unwrap();
    let publisher = JetStreamPublisher::new(
        client,
        PublishTiming {
            timeout: Duration::from_secs(10),
            retry_after: Some(Duration::from_millis(300)),
        },
        ingest.config.nats.clone(),
    );
    let pid = ingest.nats.pid().expect("nats-server runs");
    // The server stops answering: no PubAck comes, the publish is sent
    // again (and again) under the same message id.
    signal(pid, "-STOP");
    let publishing = tokio::spawn(publisher.publish(OutgoingFrame {
        subject: ingest.subject("late"),
        payload: Bytes::from_static(b"[\"late\"]"),
        message_id: "fedcba9876543210fedcba9876543210:1".to_owned(),
        request_id: "r".to_owned(),
    }));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    signal(pid, "-CONT");
    let stored = publishing.await.unwrap().expect("stored in the end");
    // It was sent several times, stored once, and the copy checked.
    assert!(
        stored.duplicate,
        "the answer should be to a repeated publish"
    );
    assert_eq!(stored.sequence, 1);
    assert_eq!(ingest.stream_messages().await, 1);
    let (_, payload) = ingest.stored(1).await;
    assert_eq!(payload, b"[\"late\"]");
}
