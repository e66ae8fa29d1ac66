//! Publishes that many tasks make at about the same time, to one stream,
//! stored together by one atomic JetStream batch (docs/design.md §10.1).
//!
//! The closer handles many due notes at once; each close publishes its
//! finished message and schedules its compaction. Under `sync_interval:
//! always` each of those alone costs nats-server an fsync (two for a
//! schedule replacing a pending one), an atomic batch a fixed handful.
//! [`GroupPublisher::publish`] hands the message to one committer task,
//! which takes every message waiting or arriving within [`MAX_DELAY`] (up
//! to [`MAX_BATCH_MESSAGES`] and [`MAX_BATCH_BYTES`]) and commits them
//! together while at most [`BATCHES_IN_FLIGHT`] batches are under way;
//! messages arriving meanwhile wait for the next batch.
//!
//! A message's answer only ever comes from a commit JetStream confirmed:
//! the batch's whole, or its own single publish. A batch that is refused
//! (a `Nats-Msg-Id` the stream already holds, a stream without atomic
//! batches) or unanswered is published again one message at a time, under
//! the same ids, so the stream holds each message once and each publisher
//! learns whether its message was a duplicate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use sessionfold_common::batch_publish::{
    self, BatchMessage, BatchOutcome, ERR_BATCH_NOT_ENABLED, MAX_BATCH_MESSAGES,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Messages from which one atomic batch is cheaper than single publishes
/// (a batch costs 4 fsyncs whatever its size, measured on nats-server
/// 2.15; a message alone 1, a schedule replacing a pending one 2).
pub const MIN_ATOMIC_MESSAGES: usize = 3;
/// Batches committing at once.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// Longest a batch waits for more messages after its first. Closes are
/// not waited on by anyone (the timer lag is measured in seconds), and the
/// timers of sessions due at about the same time fire a few milliseconds
/// apart: waiting this long lets them share a commit.
pub const MAX_DELAY: Duration = Duration::from_millis(20);
/// Most payload bytes in one batch: finished messages hold whole
/// documents, and the server keeps a batch in memory until its commit.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// How long a batch waits for its commit's answer before its messages are
/// published one by one.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a stream answered that it takes no atomic batch, messages go one
/// by one for this long before a batch is tried again.
pub const NOT_ENABLED_BACKOFF: Duration = Duration::from_secs(10);

/// Whether a stored message was new (`false`) or one the stream's
/// duplicate window already held (`true`).
pub type Duplicate = bool;

struct Pending {
    message: BatchMessage,
    answer: oneshot::Sender<Result<Duplicate, String>>,
}

/// A handle on one stream's committer; cheap to clone. The committer
/// stops once every handle is dropped.
#[derive(Clone)]
pub struct GroupPublisher {
    waiting: mpsc::UnboundedSender<Pending>,
}

impl GroupPublisher {
    /// Starts the committer of `stream` (a name, for logs) on `js`.
    pub fn spawn(js: jetstream::Context, stream: String) -> Self {
        let (waiting, receiver) = mpsc::unbounded_channel();
        let committer = Arc::new(Committer {
            js,
            stream,
            in_flight: Arc::new(Semaphore::new(BATCHES_IN_FLIGHT)),
            refused_at: std::sync::Mutex::new(None),
        });
        tokio::spawn(committer.run(receiver));
        Self { waiting }
    }

    /// Stores `message` and waits for JetStream's answer.
    pub async fn publish(&self, message: BatchMessage) -> Result<Duplicate, String> {
        let (answer, answered) = oneshot::channel();
        self.waiting
            .send(Pending { message, answer })
            .map_err(|_| "the publisher stopped".to_owned())?;
        answered
            .await
            .map_err(|_| "the publisher stopped before answering".to_owned())?
    }
}

struct Committer {
    js: jetstream::Context,
    stream: String,
    in_flight: Arc<Semaphore>,
    refused_at: std::sync::Mutex<Option<Instant>>,
}

impl Committer {
    async fn run(self: Arc<Self>, mut waiting: mpsc::UnboundedReceiver<Pending>) {
        // A message that did not fit in the previous batch starts the next.
        let mut carried = None;
        loop {
            let first = match carried.take() {
                Some(first) => first,
                None => match waiting.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            // A commit slot first: messages keep gathering while every
            // slot is taken.
            let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
                return;
            };
            let mut bytes = first.message.payload.len();
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + MAX_DELAY;
            while batch.len() < MAX_BATCH_MESSAGES {
                match tokio::time::timeout_at(deadline, waiting.recv()).await {
                    Ok(Some(pending))
                        if bytes + pending.message.payload.len() > MAX_BATCH_BYTES =>
                    {
                        carried = Some(pending);
                        break;
                    }
                    Ok(Some(pending)) => {
                        bytes += pending.message.payload.len();
                        batch.push(pending);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let committer = Arc::clone(&self);
            tokio::spawn(async move {
                committer.commit(batch).await;
                drop(permit);
            });
        }
    }

    fn refused_lately(&self) -> bool {
        self.refused_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some_and(|at| at.elapsed() < NOT_ENABLED_BACKOFF)
    }

    async fn commit(&self, batch: Vec<Pending>) {
        if batch.len() < MIN_ATOMIC_MESSAGES || self.refused_lately() {
            return self.one_by_one(batch).await;
        }
        let messages = batch.iter().map(|p| p.message.clone()).collect();
        let outcome =
            batch_publish::publish_atomic(&self.js.client(), messages, COMMIT_TIMEOUT).await;
        match outcome {
            BatchOutcome::Committed { .. } => {
                tracing::debug!(stream = %self.stream, messages = batch.len(), "published by one atomic batch");
                for pending in batch {
                    let _ = pending.answer.send(Ok(false));
                }
            }
            other => {
                if let BatchOutcome::Refused {
                    code: Some(ERR_BATCH_NOT_ENABLED),
                    ..
                } = other
                {
                    *self
                        .refused_at
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
                }
                tracing::info!(
                    stream = %self.stream,
                    messages = batch.len(),
                    outcome = other.label(),
                    error = ?other,
                    "an atomic batch did not commit; publishing its messages one by one"
                );
                self.one_by_one(batch).await;
            }
        }
    }

    /// Publishes each message alone, all in flight at once.
    async fn one_by_one(&self, batch: Vec<Pending>) {
        let mut acks = Vec::with_capacity(batch.len());
        for pending in &batch {
            let message = pending.message.clone();
            acks.push(
                self.js
                    .publish_with_headers(message.subject, message.headers, message.payload)
                    .await,
            );
        }
        for (pending, ack) in batch.into_iter().zip(acks) {
            let result = match ack {
                Ok(ack) => ack
                    .await
                    .map(|ack| ack.duplicate)
                    .map_err(|err| err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            let _ = pending.answer.send(result);
        }
    }
}
