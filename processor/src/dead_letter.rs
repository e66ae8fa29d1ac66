//! Messages that can never be applied are moved, with their reason and
//! original payload, to a dead-letter stream instead of being dropped.

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use sessionfold_common::jetstream::ensure_stream_config;
use sessionfold_core::Subjects;

use crate::config::WorkerSettings;

/// Why the message was dead-lettered.
pub const REASON_HEADER: &str = "Sessionfold-Dead-Reason";
/// The subject it was published on.
pub const SUBJECT_HEADER: &str = "Sessionfold-Original-Subject";
/// Its sequence in the event stream.
pub const SEQUENCE_HEADER: &str = "Sessionfold-Original-Sequence";

#[derive(Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    subjects: Subjects,
}

impl DeadLetters {
    /// Creates the dead-letter stream when it is missing, with `replicas`
    /// copies (the event stream's `STREAM_REPLICAS`).
    pub async fn ensure(
        js: jetstream::Context,
        settings: &WorkerSettings,
        subjects: Subjects,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let config = stream::Config {
            name: settings.dead_letter_stream.clone(),
            subjects: vec![subjects.dead_letters_filter()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            // Letters age out, and a full stream refuses new ones (the
            // frame is retried) rather than dropping old ones.
            max_age: std::time::Duration::from_secs(settings.dead_letter_max_age_secs),
            max_bytes: settings.dead_letter_max_bytes,
            discard: stream::DiscardPolicy::New,
            // The server's default, spelled out so that the drift check of
            // `ensure_stream_config` does not update the stream on every start.
            duplicate_window: std::time::Duration::from_secs(120),
            ..Default::default()
        };
        ensure_stream_config(&js, config)
            .await
            .context("setting up the dead-letter stream")?;
        Ok(Self { js, subjects })
    }

    /// Stores a copy of `message` with `reason`. Returns once it is durable;
    /// only then may the original be terminated. `stream_sequence` is
    /// `None` for a message without JetStream metadata.
    pub async fn send(
        &self,
        message: &jetstream::Message,
        stream_sequence: Option<u64>,
        reason: &str,
    ) -> anyhow::Result<()> {
        let token = message
            .subject
            .rsplit('.')
            .next()
            .filter(|token| !token.is_empty())
            .unwrap_or("unknown");
        // The message id makes a retried dead-lettering store one letter.
        let message_id = match stream_sequence {
            Some(sequence) => format!("dead:{sequence}"),
            None => format!(
                "dead:unsequenced:{:032x}",
                xxhash_rust::xxh3::xxh3_128(
                    &[message.subject.as_bytes(), b"\0", &message.payload].concat()
                )
            ),
        };
        let mut publish = PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(message_id)
            .header(REASON_HEADER, one_line(reason).as_str())
            .header(SUBJECT_HEADER, message.subject.as_str());
        if let Some(sequence) = stream_sequence {
            publish = publish.header(SEQUENCE_HEADER, sequence.to_string().as_str());
        }
        self.js
            .send_publish(self.subjects.dead_letter(token), publish)
            .await?
            .await?;
        tracing::warn!(
            stream_sequence,
            reason,
            "message moved to the dead-letter stream"
        );
        Ok(())
    }
}

/// Header values must not hold line breaks.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// A stored dead letter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    pub reason: String,
    pub original_subject: String,
    pub original_sequence: Option<u64>,
    /// The payload as stored, as text when it is UTF-8.
    pub payload: String,
}

/// Every dead letter in `stream_name`, oldest first.
pub async fn list(js: &jetstream::Context, stream_name: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .with_context(|| format!("opening the dead-letter stream {stream_name}"))?;
    let state = stream.info().await?.state.clone();
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok(letters);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        // Replayed letters are deleted, leaving gaps.
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|value| value.as_str().to_owned())
                .unwrap_or_default()
        };
        letters.push(DeadLetter {
            sequence,
            reason: header(REASON_HEADER),
            original_subject: header(SUBJECT_HEADER),
            original_sequence: header(SEQUENCE_HEADER).parse().ok(),
            payload: String::from_utf8_lossy(&message.payload).into_owned(),
        });
    }
    Ok(letters)
}

/// Publishes a dead letter's payload again on its original subject and,
/// once JetStream stored it, removes the letter. Returns the new sequence in
/// the event stream.
pub async fn replay(
    js: &jetstream::Context,
    stream_name: &str,
    sequence: u64,
) -> anyhow::Result<u64> {
    let stream = js.get_stream(stream_name).await?;
    let message = stream
        .get_raw_message(sequence)
        .await
        .with_context(|| format!("dead letter {sequence} not found"))?;
    let subject = message
        .headers
        .get(SUBJECT_HEADER)
        .map(|value| value.as_str().to_owned())
        .with_context(|| format!("dead letter {sequence} has no {SUBJECT_HEADER}"))?;
    let publish = PublishMessage::build()
        .payload(message.payload.clone())
        .message_id(format!("replay:{stream_name}:{sequence}"));
    let ack = js.send_publish(subject, publish).await?.await?;
    stream.delete_message(sequence).await?;
    Ok(ack.sequence)
}
