//! Messages that can never be applied are moved, with their reason and
//! original payload, to a dead-letter stream instead of being dropped.

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use sessionfold_common::jetstream::ensure_stream_config;

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
    subject_prefix: String,
}

impl DeadLetters {
    /// Creates the dead-letter stream when it is missing.
    pub async fn ensure(js: jetstream::Context, settings: &WorkerSettings) -> anyhow::Result<Self> {
        let config = stream::Config {
            name: settings.dead_letter_stream.clone(),
            subjects: vec![format!("{}.>", settings.dead_letter_subject_prefix)],
            storage: stream::StorageType::File,
            ..Default::default()
        };
        ensure_stream_config(&js, config)
            .await
            .context("setting up the dead-letter stream")?;
        Ok(Self {
            js,
            subject_prefix: settings.dead_letter_subject_prefix.clone(),
        })
    }

    /// Stores a copy of `message` with `reason`. Returns once it is durable;
    /// only then may the original be terminated.
    pub async fn send(
        &self,
        message: &jetstream::Message,
        stream_sequence: u64,
        reason: &str,
    ) -> anyhow::Result<()> {
        let token = message
            .subject
            .rsplit('.')
            .next()
            .filter(|token| !token.is_empty())
            .unwrap_or("unknown");
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(format!("dead:{stream_sequence}"))
            .header(REASON_HEADER, one_line(reason).as_str())
            .header(SUBJECT_HEADER, message.subject.as_str())
            .header(SEQUENCE_HEADER, stream_sequence.to_string().as_str());
        self.js
            .send_publish(format!("{}.{token}", self.subject_prefix), publish)
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
