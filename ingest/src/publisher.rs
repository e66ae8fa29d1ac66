//! Where accepted frames go: the [`Publish`] seam, and [`JetStreamPublisher`],
//! which stores a frame in JetStream and resolves once it is durable.
//!
//! A frame's `Nats-Msg-Id` is `<connection id>:<frame number>`, both chosen
//! by ingest (see [`ConnectionId`]), so no client can make JetStream drop
//! another frame as a duplicate. When a PubAck does not come back in time,
//! the publish is sent again with the same id, inside the stream's
//! duplicate window: JetStream stores it at most once. A PubAck that says
//! `duplicate` is believed only after the message stored at its sequence has
//! been read back and is this frame (subject, id and payload); anything else
//! is an error, never an acknowledgement.

use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::ErrorCode as JetStreamErrorCode;
use async_nats::jetstream::context::{PublishError as NatsPublishError, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use sessionfold_common::jetstream::ensure_stream;
use sessionfold_common::settings::NatsSettings;
use sessionfold_core::ErrorCode;

/// Header carrying the request id of the connection that sent a frame, for
/// tracing only.
pub const REQUEST_ID_HEADER: &str = "Sessionfold-Request-Id";
/// JetStream's de-duplication header.
const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The id ingest gives a connection: 128 bits from the operating system's
/// random source, as 32 lowercase hex digits. It names the connection's
/// frames in JetStream (`Nats-Msg-Id`), so it must not be guessable or
/// chosen by a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionId(String);

impl ConnectionId {
    pub const HEX_DIGITS: usize = 32;

    /// A fresh random id.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the operating system's random source works");
        Self(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `Nats-Msg-Id` of this connection's `frame`-th frame.
    pub fn message_id(&self, frame: u64) -> String {
        format!("{}:{frame}", self.0)
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most bytes the headers ingest puts on a frame can take on the wire
/// (`NATS/1.0\r\n`, one `Name: value\r\n` per header, a closing `\r\n`),
/// counted against the server's `max_payload` together with the frame.
/// The batch headers of group commit are counted too.
pub fn max_header_bytes() -> usize {
    let longest_message_id = ConnectionId::HEX_DIGITS + 1 + u64::MAX.to_string().len();
    let line = |name: &str, value: usize| name.len() + ": ".len() + value + "\r\n".len();
    "NATS/1.0\r\n".len()
        + line(MSG_ID_HEADER, longest_message_id)
        + line(
            REQUEST_ID_HEADER,
            sessionfold_common::http::MAX_REQUEST_ID_BYTES,
        )
        + sessionfold_common::batch_publish::max_batch_header_bytes()
        + "\r\n".len()
}

/// One accepted frame on its way to the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingFrame {
    pub subject: String,
    pub payload: Bytes,
    /// Built by ingest only ([`ConnectionId::message_id`]).
    pub message_id: String,
    /// The client's request id, for tracing.
    pub request_id: String,
}

/// Where a frame was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Its stream sequence.
    pub sequence: u64,
    /// JetStream already held it (an earlier attempt of the same publish got
    /// through); checked to be this very frame.
    pub duplicate: bool,
}

/// Why a frame was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("NATS is disconnected")]
    Disconnected,
    #[error("JetStream did not confirm the frame within {0:?}")]
    Timeout(Duration),
    #[error("JetStream could not store the frame: {0}")]
    Unavailable(String),
    /// The frame with its headers is over the server's `max_payload` or the
    /// stream's `max_msg_size`: no retry can store it.
    #[error("the frame is larger than JetStream accepts: {0}")]
    TooLarge(String),
    /// JetStream answered `duplicate` for a sequence that does not hold this
    /// frame (or that could not be read back to check).
    #[error("JetStream reported the frame as already stored at sequence {sequence}, but {reason}")]
    UnverifiedDuplicate { sequence: u64, reason: String },
}

impl PublishError {
    /// The reply code: `frame_too_large` for what can never be stored,
    /// `unavailable` ("send it again", under a new frame number and thus a
    /// new message id) for everything else.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge(_) => ErrorCode::FrameTooLarge,
            _ => ErrorCode::Unavailable,
        }
    }
}

/// Stores accepted frames. The JetStream publisher is the real one; tests of
/// the connection state machine use an in-memory fake.
pub trait Publish: Send + Sync + 'static {
    /// Resolves once the frame is durably stored, or with why it is not.
    fn publish(&self, frame: OutgoingFrame) -> BoxFuture<'static, Result<Stored, PublishError>>;
}

/// How a [`JetStreamPublisher`] waits and retries.
#[derive(Debug, Clone, Copy)]
pub struct PublishTiming {
    /// Longest wait for a frame to be stored, retries included.
    pub timeout: Duration,
    /// How long one attempt waits for its PubAck before the frame is
    /// published again with the same message id; `None` never retries.
    pub retry_after: Option<Duration>,
}

#[derive(Clone)]
pub struct JetStreamPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    stream_name: String,
    timing: PublishTiming,
    repair: StreamRepair,
}

/// Re-creates a deleted stream, at most once per interval, so that ingest
/// heals without a restart.
struct StreamRepair {
    settings: NatsSettings,
    last_attempt: Mutex<Option<Instant>>,
}

const STREAM_REPAIR_INTERVAL: Duration = Duration::from_secs(1);

/// What one publish attempt came to.
enum Attempt {
    Acked(async_nats::jetstream::publish::PublishAck),
    /// No PubAck: it may or may not have been stored; safe to send again
    /// with the same message id.
    NoAck(String),
    Failed(PublishError),
}

impl JetStreamPublisher {
    pub fn new(client: async_nats::Client, timing: PublishTiming, settings: NatsSettings) -> Self {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(timing.timeout);
        Self {
            inner: Arc::new(Inner {
                client,
                js,
                stream_name: settings.stream_name.clone(),
                timing,
                repair: StreamRepair {
                    settings,
                    last_attempt: Mutex::new(None),
                },
            }),
        }
    }
}

impl JetStreamPublisher {
    /// Stores `frame` on its own, retrying until `deadline`; what group
    /// commit falls back on for a batch that did not commit.
    pub(crate) async fn store_until(
        &self,
        frame: &OutgoingFrame,
        deadline: tokio::time::Instant,
    ) -> Result<Stored, PublishError> {
        self.inner.store(frame, deadline).await
    }

    pub(crate) fn connected(&self) -> bool {
        self.inner.connected()
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    pub(crate) fn timing(&self) -> PublishTiming {
        self.inner.timing
    }

    /// The headers a frame is stored with.
    pub(crate) fn headers(frame: &OutgoingFrame) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MSG_ID_HEADER, frame.message_id.as_str());
        headers.insert(REQUEST_ID_HEADER, frame.request_id.as_str());
        headers
    }
}

impl Publish for JetStreamPublisher {
    fn publish(&self, frame: OutgoingFrame) -> BoxFuture<'static, Result<Stored, PublishError>> {
        let inner = self.inner.clone();
        async move {
            let started = Instant::now();
            let deadline = tokio::time::Instant::now() + inner.timing.timeout;
            let stored = inner.store(&frame, deadline).await;
            sessionfold_common::metrics::publish_acked(started.elapsed(), stored.is_ok());
            stored
        }
        .boxed()
    }
}

impl Inner {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Stores `frame` alone, retrying until `deadline`.
    async fn store(
        &self,
        frame: &OutgoingFrame,
        deadline: tokio::time::Instant,
    ) -> Result<Stored, PublishError> {
        let mut attempts = 0u32;
        loop {
            // While disconnected the client would queue the frame and send
            // it on reconnect, after the producer was told `unavailable`:
            // refuse at once.
            if !self.connected() {
                return Err(PublishError::Disconnected);
            }
            attempts += 1;
            let attempt_deadline = match self.timing.retry_after {
                Some(retry) => deadline.min(tokio::time::Instant::now() + retry),
                None => deadline,
            };
            let outcome = tokio::time::timeout_at(attempt_deadline, self.attempt(frame))
                .await
                .unwrap_or_else(|_| Attempt::NoAck("no PubAck in time".to_owned()));
            match outcome {
                Attempt::Acked(ack) if ack.duplicate => {
                    return self.verify_duplicate(frame, ack.sequence).await;
                }
                Attempt::Acked(ack) => {
                    return Ok(Stored {
                        sequence: ack.sequence,
                        duplicate: false,
                    });
                }
                Attempt::Failed(err) => return Err(err),
                Attempt::NoAck(reason) => {
                    let now = tokio::time::Instant::now();
                    if self.timing.retry_after.is_none() || now >= deadline {
                        return Err(if now >= deadline {
                            PublishError::Timeout(self.timing.timeout)
                        } else {
                            PublishError::Unavailable(reason)
                        });
                    }
                    tracing::debug!(attempts, %reason, message_id = %frame.message_id, "publishing the frame again");
                    // A moment's pause, so that an immediate failure (no
                    // stream leader yet) does not spin.
                    tokio::time::sleep_until(deadline.min(now + Duration::from_millis(50))).await;
                }
            }
        }
    }

    async fn attempt(&self, frame: &OutgoingFrame) -> Attempt {
        let publish = PublishMessage::build()
            .payload(frame.payload.clone())
            .message_id(frame.message_id.as_str())
            .header(REQUEST_ID_HEADER, frame.request_id.as_str());
        let ack = match self.js.send_publish(frame.subject.clone(), publish).await {
            Ok(ack) => ack,
            Err(err) => return self.classify(err),
        };
        match ack.await {
            Ok(ack) => Attempt::Acked(ack),
            Err(err) => self.classify(err),
        }
    }

    fn classify(&self, err: NatsPublishError) -> Attempt {
        match err.kind() {
            PublishErrorKind::MaxPayloadExceeded => {
                Attempt::Failed(PublishError::TooLarge(err.to_string()))
            }
            // No responders: the stream is missing or has no leader yet.
            PublishErrorKind::StreamNotFound => {
                self.repair_stream();
                Attempt::NoAck(err.to_string())
            }
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                Attempt::NoAck(err.to_string())
            }
            _ if jetstream_error_code(&err)
                == Some(JetStreamErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) =>
            {
                Attempt::Failed(PublishError::TooLarge(err.to_string()))
            }
            _ => Attempt::Failed(PublishError::Unavailable(err.to_string())),
        }
    }

    /// A `duplicate` PubAck names the sequence of the message JetStream
    /// already holds under this message id: read it back and compare.
    async fn verify_duplicate(
        &self,
        frame: &OutgoingFrame,
        sequence: u64,
    ) -> Result<Stored, PublishError> {
        let unverified = |reason: String| PublishError::UnverifiedDuplicate { sequence, reason };
        let stream = self
            .js
            .get_stream_no_info(&self.stream_name)
            .await
            .map_err(|err| unverified(format!("the stream cannot be named: {err}")))?;
        let stored = stream
            .get_raw_message(sequence)
            .await
            .map_err(|err| unverified(format!("reading it back failed: {err}")))?;
        let stored_id = stored
            .headers
            .get(MSG_ID_HEADER)
            .map(|value| value.as_str().to_owned());
        if stored.subject.as_str() != frame.subject {
            return Err(unverified("it was stored under another subject".to_owned()));
        }
        if stored_id.as_deref() != Some(frame.message_id.as_str()) {
            return Err(unverified("it carries another message id".to_owned()));
        }
        if stored.payload != frame.payload {
            return Err(unverified("its payload differs".to_owned()));
        }
        Ok(Stored {
            sequence,
            duplicate: true,
        })
    }

    fn repair_stream(&self) {
        {
            let mut last = self
                .repair
                .last_attempt
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|at| at.elapsed() < STREAM_REPAIR_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let js = self.js.clone();
        let settings = self.repair.settings.clone();
        tokio::spawn(async move {
            match ensure_stream(&js, &settings).await {
                Ok(_) => {
                    tracing::info!(stream = %settings.stream_name, "event stream re-created")
                }
                Err(err) => tracing::warn!(error = %err, "re-creating the event stream failed"),
            }
        });
    }
}

/// The JetStream API error code behind a publish error, if JetStream sent one.
fn jetstream_error_code(err: &NatsPublishError) -> Option<JetStreamErrorCode> {
    err.source()
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .map(|error| error.error_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_128_random_bits_in_hex() {
        let a = ConnectionId::random();
        let b = ConnectionId::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), ConnectionId::HEX_DIGITS);
        assert!(
            a.as_str()
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(a.message_id(7), format!("{a}:7"));
    }

    #[test]
    fn the_header_budget_covers_the_longest_headers() {
        let id = ConnectionId::random().message_id(u64::MAX);
        let request_id = "r".repeat(sessionfold_common::http::MAX_REQUEST_ID_BYTES);
        let wire = format!(
            "NATS/1.0\r\n{MSG_ID_HEADER}: {id}\r\n{REQUEST_ID_HEADER}: {request_id}\r\n\r\n"
        );
        assert_eq!(
            max_header_bytes(),
            wire.len() + sessionfold_common::batch_publish::max_batch_header_bytes()
        );
    }

    #[test]
    fn only_size_errors_are_permanent() {
        assert_eq!(
            PublishError::TooLarge("x".into()).code(),
            ErrorCode::FrameTooLarge
        );
        for transient in [
            PublishError::Disconnected,
            PublishError::Timeout(Duration::from_secs(1)),
            PublishError::Unavailable("x".into()),
            PublishError::UnverifiedDuplicate {
                sequence: 1,
                reason: "x".into(),
            },
        ] {
            assert_eq!(transient.code(), ErrorCode::Unavailable, "{transient}");
        }
    }
}
