//! Publishing one accepted frame to JetStream and waiting until it is
//! durable.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;

/// Header carrying the id of the connection that sent a frame.
pub const REQUEST_ID_HEADER: &str = "Sessionfold-Request-Id";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("JetStream did not confirm the frame within {0:?}")]
    Timeout(Duration),
    #[error("JetStream refused the frame: {0}")]
    Refused(String),
}

#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    timeout: Duration,
}

impl Publisher {
    pub fn new(js: jetstream::Context, timeout: Duration) -> Self {
        Self { js, timeout }
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
        let publish = PublishMessage::build()
            .payload(payload)
            .message_id(message_id)
            .header(REQUEST_ID_HEADER, request_id);
        let store = async {
            let ack = self
                .js
                .send_publish(subject, publish)
                .await
                .map_err(|err| PublishError::Refused(err.to_string()))?;
            ack.await
                .map(|ack| ack.sequence)
                .map_err(|err| PublishError::Refused(err.to_string()))
        };
        tokio::time::timeout(self.timeout, store)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))?
    }
}
