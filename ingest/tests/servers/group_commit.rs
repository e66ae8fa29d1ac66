//! Group commit against a real nats-server: frames committed together are
//! each stored once at the sequence their answer names, and a batch that
//! does not commit (a duplicate inside, a frame the stream refuses, a
//! stream without atomic batches, a commit whose answer is late, a server
//! killed in the middle) never acknowledges a frame it did not store.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use sessionfold_core::ErrorCode;
use sessionfold_ingest::group_commit::{GroupCommit, GroupCommitSettings};
use sessionfold_ingest::publisher::{
    JetStreamPublisher, OutgoingFrame, Publish, PublishError, PublishTiming, Stored,
};

use crate::helpers::{Producer, TestIngest, frame, spawn_ingest, spawn_ingest_with};

/// Settings that gather every frame published within 300 ms into one
/// batch, so that a test decides what a batch holds.
const ONE_BATCH: GroupCommitSettings = GroupCommitSettings {
    max_frames: 256,
    max_delay: Duration::from_millis(300),
    batches_in_flight: 1,
};

fn group_commit(
    ingest: &TestIngest,
    client: async_nats::Client,
    retry_after: Duration,
) -> GroupCommit {
    let publisher = JetStreamPublisher::new(
        client,
        PublishTiming {
            timeout: Duration::from_secs(10),
            retry_after: Some(retry_after),
        },
        ingest.config.nats.clone(),
    );
    GroupCommit::spawn(publisher, ONE_BATCH)
}

fn outgoing(ingest: &TestIngest, session: &str, id: usize, payload: String) -> OutgoingFrame {
    OutgoingFrame {
        subject: ingest.subject(session),
        payload: Bytes::from(payload),
        message_id: format!("0123456789abcdef0123456789abcdef:{id}"),
        request_id: format!("request-{id}"),
    }
}

/// Publishes `frames` at once (so that they share a batch) and returns
/// each one's answer, in order.
async fn publish_together(
    publisher: &GroupCommit,
    frames: Vec<OutgoingFrame>,
) -> Vec<Result<Stored, PublishError>> {
    futures::future::join_all(frames.into_iter().map(|frame| publisher.publish(frame))).await
}

/// The batch id a stored message was committed under, if any.
async fn batch_of(ingest: &TestIngest, sequence: u64) -> Option<String> {
    let js = ingest.jetstream().await;
    let stream = js
        .get_stream(&ingest.config.nats.stream_name)
        .await
        .unwrap();
    let message = stream.get_raw_message(sequence).await.unwrap();
    message
        .headers
        .get(sessionfold_common::batch_publish::BATCH_ID_HEADER)
        .map(|value| value.as_str().to_owned())
}

#[tokio::test]
async fn frames_from_many_connections_are_committed_together_each_at_its_own_sequence() {
    let ingest = spawn_ingest().await;
    const CONNECTIONS: usize = 40;
    const FRAMES: usize = 8;
    let mut producers: Vec<(String, Producer)> = Vec::new();
    for c in 0..CONNECTIONS {
        let session = format!("gc-{c}");
        producers.push((session.clone(), ingest.connect(&session).await));
    }
    let sends = producers
        .into_iter()
        .map(|(session, mut producer)| async move {
            let frames = (0..FRAMES)
                .map(|n| frame(&format!("{session}-f{n}")))
                .collect();
            let replies = producer.send_all_then_replies(frames).await;
            replies
                .into_iter()
                .map(|(text, reply)| (session.clone(), text, reply))
                .collect::<Vec<_>>()
        });
    let all: Vec<_> = futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut sequences = HashSet::new();
    let mut batches = HashSet::new();
    for (session, sent, reply) in &all {
        assert!(reply.is_ok(), "{reply:?}");
        ingest.assert_stored(reply, session, sent).await;
        let sequence = reply.seq().unwrap();
        assert!(
            sequences.insert(sequence),
            "sequence {sequence} acknowledged twice"
        );
        if let Some(batch) = batch_of(&ingest, sequence).await {
            batches.insert(batch);
        }
    }
    assert_eq!(
        ingest.stream_messages().await,
        (CONNECTIONS * FRAMES) as u64
    );
    // 320 frames sent at once from 40 connections: some went together.
    assert!(
        !batches.is_empty() && batches.len() < CONNECTIONS * FRAMES / 2,
        "{} batches for {} frames: frames were not committed together",
        batches.len(),
        CONNECTIONS * FRAMES
    );
}

#[tokio::test]
async fn a_batch_holding_frames_the_stream_already_has_stores_the_rest_and_verifies_the_others() {
    let ingest = spawn_ingest().await;
    let client = async_nats::connect(ingest.nats.url()).await.unwrap();
    let publisher = group_commit(&ingest, client, Duration::from_secs(1));
    let frames: Vec<OutgoingFrame> = (1..=8)
        .map(|id| outgoing(&ingest, "dup-in-batch", id, format!("[{id}]")))
        .collect();

    let first: Vec<Stored> = publish_together(&publisher, frames[..4].to_vec())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let batch = batch_of(&ingest, first[0].sequence).await;
    assert!(batch.is_some(), "four frames at once were not one batch");
    for stored in &first {
        assert!(!stored.duplicate);
        assert_eq!(batch_of(&ingest, stored.sequence).await, batch);
    }

    // Two frames sent again (as a lost answer makes ingest do) in a batch
    // with four new ones: JetStream refuses the batch whole for its
    // duplicates; every frame is then stored alone, the two again at
    // their first sequences.
    let mixed = vec![
        frames[1].clone(),
        frames[4].clone(),
        frames[3].clone(),
        frames[5].clone(),
        frames[6].clone(),
        frames[7].clone(),
    ];
    let answers = publish_together(&publisher, mixed.clone()).await;
    for (sent, answer) in mixed.iter().zip(&answers) {
        let stored = answer
            .as_ref()
            .unwrap_or_else(|err| panic!("{}: {err}", sent.message_id));
        let (_, payload) = ingest.stored(stored.sequence).await;
        assert_eq!(payload, sent.payload, "{}", sent.message_id);
    }
    let again = |index: usize| answers[index].as_ref().unwrap();
    assert!(again(0).duplicate && again(0).sequence == first[1].sequence);
    assert!(again(2).duplicate && again(2).sequence == first[3].sequence);
    for new in [1, 3, 4, 5] {
        assert!(!again(new).duplicate);
    }
    assert_eq!(ingest.stream_messages().await, 8);
}

#[tokio::test]
async fn a_batch_whose_commit_answer_is_late_is_stored_once() {
    let ingest = spawn_ingest().await;
    let client = async_nats::connect(ingest.nats.url()).await.unwrap();
    let publisher = group_commit(&ingest, client, Duration::from_millis(300));
    let frames: Vec<OutgoingFrame> = (1..=6)
        .map(|id| outgoing(&ingest, "late-batch", id, format!("[\"late-{id}\"]")))
        .collect();
    let pid = ingest.nats.pid().expect("nats-server runs");
    // The server stops answering: the batch's commit gets no answer in
    // time, and its frames are published again one by one under their
    // same ids while the batch may still land.
    signal(pid, "-STOP");
    let publishing = tokio::spawn({
        let publisher = publisher.clone();
        let frames = frames.clone();
        async move { publish_together(&publisher, frames).await }
    });
    // Past the batch's linger and its commit's wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(pid, "-CONT");
    let answers = publishing.await.unwrap();
    let mut sequences = HashSet::new();
    for (sent, answer) in frames.iter().zip(&answers) {
        let stored = answer
            .as_ref()
            .unwrap_or_else(|err| panic!("{}: {err}", sent.message_id));
        assert!(sequences.insert(stored.sequence));
        let (_, payload) = ingest.stored(stored.sequence).await;
        assert_eq!(payload, sent.payload);
    }
    assert_eq!(
        ingest.stream_messages().await,
        6,
        "a frame was stored twice"
    );
}

#[tokio::test]
async fn a_frame_the_stream_refuses_is_refused_alone_and_the_rest_of_its_batch_is_stored() {
    let ingest = spawn_ingest().await;
    let js = ingest.jetstream().await;
    let mut config = sessionfold_common::jetstream::stream_config(&ingest.config.nats);
    config.max_message_size = 512;
    js.update_stream(config).await.unwrap();
    let client = async_nats::connect(ingest.nats.url()).await.unwrap();
    let publisher = group_commit(&ingest, client, Duration::from_secs(1));
    let mut frames: Vec<OutgoingFrame> = (1..=5)
        .map(|id| outgoing(&ingest, "one-too-large", id, format!("[{id}]")))
        .collect();
    frames[2].payload = Bytes::from(format!("[\"{}\"]", "x".repeat(1000)));
    let answers = publish_together(&publisher, frames.clone()).await;
    for (index, (sent, answer)) in frames.iter().zip(&answers).enumerate() {
        if index == 2 {
            match answer {
                Err(err) => assert_eq!(err.code(), ErrorCode::FrameTooLarge, "{err}"),
                Ok(stored) => panic!("a frame over max_msg_size was stored: {stored:?}"),
            }
        } else {
            let stored = answer.as_ref().unwrap();
            let (_, payload) = ingest.stored(stored.sequence).await;
            assert_eq!(payload, sent.payload);
        }
    }
    assert_eq!(ingest.stream_messages().await, 4);
}

#[tokio::test]
async fn a_stream_without_atomic_batches_still_stores_every_frame() {
    let ingest = spawn_ingest().await;
    let js = ingest.jetstream().await;
    let mut config = sessionfold_common::jetstream::stream_config(&ingest.config.nats);
    config.allow_atomic_publish = false;
    js.update_stream(config).await.unwrap();
    let client = async_nats::connect(ingest.nats.url()).await.unwrap();
    let publisher = group_commit(&ingest, client, Duration::from_secs(1));
    let frames: Vec<OutgoingFrame> = (1..=6)
        .map(|id| outgoing(&ingest, "no-atomic", id, format!("[{id}]")))
        .collect();
    for round in [&frames[..3], &frames[3..]] {
        let answers = publish_together(&publisher, round.to_vec()).await;
        for (sent, answer) in round.iter().zip(answers) {
            let stored = answer.unwrap();
            assert!(!stored.duplicate);
            let (_, payload) = ingest.stored(stored.sequence).await;
            assert_eq!(payload, sent.payload);
            assert_eq!(batch_of(&ingest, stored.sequence).await, None);
        }
    }
    assert_eq!(ingest.stream_messages().await, 6);
}

/// nats-server SIGKILLed while producers keep sending, and down for
/// longer than a frame may wait: every frame answered `ok` before, during
/// or after is in the stream at its sequence (the shipped `sync_interval:
/// always`); the frames caught in the outage are answered `unavailable`,
/// which a producer may send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_killed_in_the_middle_of_group_commits_loses_no_acknowledged_frame() {
    let mut ingest = spawn_ingest_with("", |config| {
        config.connection.publish_timeout_ms = 1500;
        config.connection.publish_retry_ms = 500;
    })
    .await;
    const CONNECTIONS: usize = 24;
    // About 6 s of load at 10 ms a frame.
    const FRAMES: usize = 600;
    let mut producers = Vec::new();
    for c in 0..CONNECTIONS {
        let session = format!("killed-{c}");
        producers.push((session.clone(), ingest.connect(&session).await));
    }
    // Each connection keeps up to 8 frames in flight.
    let sends = producers
        .into_iter()
        .map(|(session, mut producer)| async move {
            let mut answered = Vec::new();
            let mut in_flight = std::collections::VecDeque::new();
            for n in 0..FRAMES {
                let text = frame(&format!("{session}-f{n}"));
                producer.send(&text).await;
                in_flight.push_back(text);
                if in_flight.len() == 8 {
                    let reply = producer.reply().await;
                    answered.push((session.clone(), in_flight.pop_front().unwrap(), reply));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            while let Some(text) = in_flight.pop_front() {
                answered.push((session.clone(), text, producer.reply().await));
            }
            answered
        });
    let load = tokio::spawn(futures::future::join_all(sends));
    sessionfold_testkit::eventually_ok(
        "frames stored before the kill",
        Duration::from_secs(20),
        || async {
            anyhow::ensure!(ingest.stream_messages().await >= 500);
            Ok(())
        },
    )
    .await;
    ingest.nats.kill();
    // Past PUBLISH_TIMEOUT_MS: what was in flight cannot wait it out.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ingest
        .nats
        .restart()
        .expect("nats-server restarts on its store");
    let all: Vec<_> = load.await.unwrap().into_iter().flatten().collect();

    let js = ingest.jetstream().await;
    let stream = js
        .get_stream(&ingest.config.nats.stream_name)
        .await
        .unwrap();
    let (mut ok, mut unavailable) = (0, 0);
    let mut sequences = HashSet::new();
    for (session, sent, reply) in &all {
        if reply.is_ok() {
            ok += 1;
            let sequence = reply.seq().unwrap();
            assert!(
                sequences.insert(sequence),
                "sequence {sequence} acknowledged twice"
            );
            let stored = stream
                .get_raw_message(sequence)
                .await
                .unwrap_or_else(|err| {
                    panic!("acknowledged frame {sent} lost at {sequence}: {err}")
                });
            assert_eq!(stored.subject.as_str(), ingest.subject(session));
            assert_eq!(stored.payload, sent.as_bytes(), "sequence {sequence}");
        } else {
            let json = reply.to_json();
            assert!(json.contains("\"unavailable\""), "{json}");
            unavailable += 1;
        }
    }
    println!(
        "nats-server SIGKILL under group commit: {ok} frames acknowledged and stored, {unavailable} answered unavailable"
    );
    assert!(
        ok >= 500,
        "too few frames acknowledged to prove anything: {ok}"
    );
    assert!(unavailable > 0, "the kill hit no frame in flight");
}

/// Stops or resumes a process (SIGSTOP / SIGCONT).
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {signal} {pid}");
}
