//! JetStream's atomic batch publish (ADR-50, nats-server ≥ 2.12): many
//! messages stored together, or none of them, for a few fsyncs in all.
//!
//! On a stream with `sync_interval: always`, each single publish costs the
//! server an fsync; an atomic batch costs a fixed handful (4 measured on
//! nats-server 2.15, for 10 to 200 messages), so group commit rests on it.
//!
//! Every message but the last goes out as a plain publish, and only the
//! commit (the last, with `Nats-Batch-Commit: 1`) waits for an answer: one
//! round trip per batch. The server checks the batch whole at the commit:
//! a gap (a message it dropped), a `Nats-Msg-Id` it already holds (error
//! 10201, which does not say which one) or any other refusal stores
//! nothing. Messages keep their own `Nats-Msg-Id`, so a batch whose answer
//! was lost can be resent one message at a time and the stream still holds
//! each message once.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;

/// Header naming the batch a message belongs to (at most 64 characters).
pub const BATCH_ID_HEADER: &str = "Nats-Batch-Id";
/// Header with the message's place in its batch, from 1.
pub const BATCH_SEQUENCE_HEADER: &str = "Nats-Batch-Sequence";
/// Header on the last message: commit the batch with it.
pub const BATCH_COMMIT_HEADER: &str = "Nats-Batch-Commit";
/// Most messages nats-server takes in one atomic batch.
pub const MAX_BATCH_MESSAGES: usize = 1000;

/// JetStream's error code for a batch holding a `Nats-Msg-Id` the stream
/// already has (or holding one twice).
pub const ERR_DUPLICATE_MESSAGE_ID: u16 = 10201;
/// JetStream's error code for a stream without `allow_atomic`.
pub const ERR_BATCH_NOT_ENABLED: u16 = 10174;

/// The most bytes the batch headers add to one message on the wire, for
/// the frame limit: `Nats-Batch-Id` (32 hex digits), `Nats-Batch-Sequence`
/// (up to the batch limit) and `Nats-Batch-Commit: 1`.
pub fn max_batch_header_bytes() -> usize {
    let line = |name: &str, value: usize| name.len() + ": ".len() + value + "\r\n".len();
    line(BATCH_ID_HEADER, BatchId::HEX_DIGITS)
        + line(BATCH_SEQUENCE_HEADER, MAX_BATCH_MESSAGES.to_string().len())
        + line(BATCH_COMMIT_HEADER, 1)
}

/// A batch's id: 128 random bits as 32 hex digits, so that no two batches
/// in flight on one stream share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchId(String);

impl BatchId {
    pub const HEX_DIGITS: usize = 32;

    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One message of a batch.
#[derive(Debug, Clone)]
pub struct BatchMessage {
    pub subject: String,
    /// Its own headers (`Nats-Msg-Id` among them); the batch headers are
    /// added on top.
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// What an atomic batch came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Every message is stored, in order, from `first_sequence` on.
    Committed { first_sequence: u64 },
    /// JetStream answered and stored none of the messages.
    Refused {
        /// JetStream's error code, when it sent one.
        code: Option<u16>,
        reason: String,
    },
    /// No answer: the batch may or may not be stored, all of it or none.
    Unanswered { reason: String },
}

impl BatchOutcome {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Committed { .. } => "committed",
            Self::Refused {
                code: Some(ERR_DUPLICATE_MESSAGE_ID),
                ..
            } => "duplicate",
            Self::Refused {
                code: Some(ERR_BATCH_NOT_ENABLED),
                ..
            } => "not_enabled",
            Self::Refused { .. } => "refused",
            Self::Unanswered { .. } => "unanswered",
        }
    }
}

/// The commit's answer: a PubAck with the batch's id and size.
#[derive(Debug, serde::Deserialize)]
struct CommitAck {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    batch: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: Option<u16>,
    #[serde(default)]
    description: String,
}

/// Publishes `messages` (1 to [`MAX_BATCH_MESSAGES`]) as one atomic batch
/// and waits at most `timeout` for the commit's answer.
pub async fn publish_atomic(
    client: &async_nats::Client,
    messages: Vec<BatchMessage>,
    timeout: Duration,
) -> BatchOutcome {
    let count = messages.len();
    assert!(
        (1..=MAX_BATCH_MESSAGES).contains(&count),
        "an atomic batch holds 1 to {MAX_BATCH_MESSAGES} messages, not {count}"
    );
    let id = BatchId::random();
    let mut commit = None;
    for (index, message) in messages.into_iter().enumerate() {
        let BatchMessage {
            subject,
            mut headers,
            payload,
        } = message;
        headers.insert(BATCH_ID_HEADER, id.as_str());
        headers.insert(BATCH_SEQUENCE_HEADER, (index + 1).to_string().as_str());
        if index + 1 == count {
            headers.insert(BATCH_COMMIT_HEADER, "1");
            commit = Some((subject, headers, payload));
        } else if let Err(err) = client.publish_with_headers(subject, headers, payload).await {
            // Nothing was committed: the server abandons the partial batch.
            return BatchOutcome::Refused {
                code: None,
                reason: format!("sending the batch failed: {err}"),
            };
        }
    }
    let (subject, headers, payload) = commit.expect("a batch has a last message");
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(payload)
        .timeout(Some(timeout));
    let answer = match client.send_request(subject, request).await {
        Ok(answer) => answer,
        Err(err) => {
            return match err.kind() {
                // No stream listens on the subject: nothing was stored.
                async_nats::RequestErrorKind::NoResponders => BatchOutcome::Refused {
                    code: None,
                    reason: "no stream answered the batch".to_owned(),
                },
                _ => BatchOutcome::Unanswered {
                    reason: format!("the batch's commit was not answered: {err}"),
                },
            };
        }
    };
    judge_commit(&answer.payload, id.as_str(), count)
}

/// Reads the commit's answer: committed only when JetStream names this
/// batch and all of its messages.
fn judge_commit(answer: &[u8], id: &str, count: usize) -> BatchOutcome {
    let ack: CommitAck = match serde_json::from_slice(answer) {
        Ok(ack) => ack,
        Err(err) => {
            return BatchOutcome::Unanswered {
                reason: format!("the batch's commit got an answer that is not a PubAck: {err}"),
            };
        }
    };
    if let Some(error) = ack.error {
        return BatchOutcome::Refused {
            code: error.err_code,
            reason: error.description,
        };
    }
    let count = count as u64;
    match (ack.batch.as_deref(), ack.count) {
        (Some(batch), Some(stored)) if batch == id && stored == count && ack.seq >= count => {
            BatchOutcome::Committed {
                first_sequence: ack.seq - count + 1,
            }
        }
        // A PubAck that does not account for this batch whole proves
        // nothing about its messages.
        _ => BatchOutcome::Unanswered {
            reason: format!(
                "the batch's PubAck does not name it whole (batch {:?}, count {:?}, seq {})",
                ack.batch, ack.count, ack.seq
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_naming_the_whole_batch_gives_its_first_sequence() {
        let outcome = judge_commit(
            br#"{"stream":"S","seq":19,"batch":"b1","count":5}"#,
            "b1",
            5,
        );
        assert_eq!(outcome, BatchOutcome::Committed { first_sequence: 15 });
        assert_eq!(outcome.label(), "committed");
    }

    #[test]
    fn a_duplicate_message_id_refuses_the_batch() {
        let outcome = judge_commit(
            br#"{"error":{"code":400,"err_code":10201,"description":"atomic publish batch contains duplicate message id"},"stream":"S","seq":0}"#,
            "b1",
            5,
        );
        assert_eq!(outcome.label(), "duplicate");
        assert!(matches!(
            outcome,
            BatchOutcome::Refused {
                code: Some(10201),
                ..
            }
        ));
    }

    #[test]
    fn a_stream_without_atomic_batches_refuses_them() {
        let outcome = judge_commit(
            br#"{"error":{"code":400,"err_code":10174,"description":"atomic publish is disabled"},"stream":"S","seq":0}"#,
            "b1",
            2,
        );
        assert_eq!(outcome.label(), "not_enabled");
    }

    #[test]
    fn an_ack_for_another_batch_or_another_count_proves_nothing() {
        for answer in [
            &br#"{"stream":"S","seq":19,"batch":"other","count":5}"#[..],
            br#"{"stream":"S","seq":19,"batch":"b1","count":4}"#,
            br#"{"stream":"S","seq":19}"#,
            br#"{"stream":"S","seq":3,"batch":"b1","count":5}"#,
            b"not json",
            b"",
        ] {
            let outcome = judge_commit(answer, "b1", 5);
            assert_eq!(
                outcome.label(),
                "unanswered",
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[test]
    fn batch_ids_are_random_and_fit_the_server_limit() {
        let (a, b) = (BatchId::random(), BatchId::random());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), BatchId::HEX_DIGITS);
        assert!(a.as_str().len() <= 64);
    }

    #[test]
    fn the_header_budget_covers_the_batch_headers_of_the_largest_batch() {
        let id = BatchId::random();
        let wire = format!(
            "{BATCH_ID_HEADER}: {}\r\n{BATCH_SEQUENCE_HEADER}: {MAX_BATCH_MESSAGES}\r\n{BATCH_COMMIT_HEADER}: 1\r\n",
            id.as_str()
        );
        assert_eq!(max_batch_header_bytes(), wire.len());
    }
}
