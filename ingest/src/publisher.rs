//! Publishing one accepted frame to JetStream and waiting until it is
//! durable.

use std::time::Duration;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::jetstream::context::{PublishError as NatsPublishError, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use sessionfold_common::jetstream::ensure_stream;
use sessionfold_common::settings::NatsSettings;

/// Header carrying the id of the connection that sent a frame.
pub const REQUEST_ID_HEADER: &str = "Sessionfold-Request-Id";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("NATS is disconnected")]
    Disconnected,
    #[error("JetStream did not confirm the frame within {0:?}")]
    Timeout(Duration),
    #[error("JetStream refused the frame: {0}")]
    Refused(String),
}

#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    timeout: Duration,
    stream: Arc<StreamRepair>,
}

/// Re-creates a deleted stream, at most once per interval, so that ingest
/// heals without a restart.
struct StreamRepair {
    settings: NatsSettings,
    last_attempt: Mutex<Option<Instant>>,
}

const STREAM_REPAIR_INTERVAL: Duration = Duration::from_secs(1);

impl Publisher {
    pub fn new(client: async_nats::Client, timeout: Duration, settings: NatsSettings) -> Self {
        Self {
            js: jetstream::new(client.clone()),
            client,
            timeout,
            stream: Arc::new(StreamRepair {
                settings,
                last_attempt: Mutex::new(None),
            }),
        }
    }

    fn repair_stream(&self) {
        {
            let mut last = self.stream.last_attempt.lock().expect("not poisoned");
            if last.is_some_and(|at| at.elapsed() < STREAM_REPAIR_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let js = self.js.clone();
        let repair = self.stream.clone();
        tokio::spawn(async move {
            match ensure_stream(&js, &repair.settings).await {
                Ok(_) => {
                    tracing::info!(stream = %repair.settings.stream_name, "event stream re-created")
                }
                Err(err) => tracing::warn!(error = %err, "re-creating the event stream failed"),
            }
        });
    }

    /// Publishes `payload` on `subject` with `message_id` as `Nats-Msg-Id`,
    /// so that a retried publish is stored once, and resolves once JetStream
    /// has stored it. Returns the stream sequence.
    pub async fn publish(
        &self,
        subject: String,
        payload: Bytes,
        message_id: String,
        request_id: &str,
    ) -> Result<u64, PublishError> {
        // While disconnected the client would queue the frame and send it on
        // reconnect, after the producer was told `unavailable`: refuse at once.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(PublishError::Disconnected);
        }
        let publish = PublishMessage::build()
            .payload(payload)
            .message_id(message_id)
            .header(REQUEST_ID_HEADER, request_id);
        let store = async {
            let ack = self
                .js
                .send_publish(subject, publish)
                .await
                .map_err(|err| self.refused(err))?;
            ack.await
                .map(|ack| ack.sequence)
                .map_err(|err| self.refused(err))
        };
        let started = Instant::now();
        let stored = tokio::time::timeout(self.timeout, store)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))
            .and_then(|stored| stored);
        sessionfold_common::metrics::publish_acked(started.elapsed(), stored.is_ok());
        stored
    }

    fn refused(&self, err: NatsPublishError) -> PublishError {
        if err.kind() == PublishErrorKind::StreamNotFound {
            self.repair_stream();
        }
        PublishError::Refused(err.to_string())
    }
}
