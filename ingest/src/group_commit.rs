//! Group commit: frames accepted at about the same time, from any
//! connections and sessions, stored in JetStream by one atomic batch
//! (docs/design.md §3.3).
//!
//! [`GroupCommit`] is a [`Publish`] in front of a [`JetStreamPublisher`].
//! One committer task takes the frames waiting in its queue, up to
//! [`GroupCommitSettings::max_frames`], lingering at most
//! [`GroupCommitSettings::max_delay`] for more, and commits them while at
//! most [`GroupCommitSettings::batches_in_flight`] batches are under way.
//! Frames that arrive while a batch commits wait for the next one, so
//! batches grow with the load and a lone frame goes at once.
//!
//! | the batch | each frame's answer |
//! |---|---|
//! | fewer than [`MIN_ATOMIC_FRAMES`] frames | published alone (cheaper in fsyncs) |
//! | committed | `ok`, at its own sequence: the batch's are contiguous |
//! | refused (a duplicate id, a gap, no stream, any error) | published alone, within its deadline |
//! | unanswered in time | published alone with its same `Nats-Msg-Id`: stored once whether the batch landed or not |
//!
//! A frame's answer therefore only ever comes from a commit JetStream
//! confirmed, for the batch whole or for the frame alone. A permanent
//! refusal (a frame too large) reaches only its own frame, and a frame
//! the stream already holds (a batch that landed without its answer) is
//! verified by the single path before it is called stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sessionfold_common::batch_publish::{
    self, BatchMessage, BatchOutcome, ERR_BATCH_NOT_ENABLED, MAX_BATCH_MESSAGES,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument as _;

use crate::publisher::{JetStreamPublisher, OutgoingFrame, Publish, PublishError, Stored};

/// Batches smaller than this are published frame by frame: an atomic
/// batch costs nats-server a fixed 4 fsyncs under `sync_interval: always`
/// (measured on 2.15 for 10 to 200 messages), a single publish one.
pub const MIN_ATOMIC_FRAMES: usize = 4;

/// After a stream answered that it takes no atomic batches, frames go one
/// by one for this long before a batch is tried again.
const NOT_ENABLED_BACKOFF: Duration = Duration::from_secs(10);

/// How frames are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitSettings {
    /// Most frames in one batch (at most JetStream's 1000).
    pub max_frames: usize,
    /// Longest a batch waits for more frames after its first, when a
    /// commit slot is free; zero takes only what is already waiting.
    pub max_delay: Duration,
    /// Batches committing at once.
    pub batches_in_flight: usize,
}

impl GroupCommitSettings {
    /// `max_frames` within what JetStream takes, and at least one batch.
    pub fn bounded(self) -> Self {
        Self {
            max_frames: self.max_frames.clamp(1, MAX_BATCH_MESSAGES),
            max_delay: self.max_delay,
            batches_in_flight: self.batches_in_flight.max(1),
        }
    }
}

/// A frame waiting for its batch.
struct Pending {
    frame: OutgoingFrame,
    /// When the frame's answer is due at the latest.
    deadline: tokio::time::Instant,
    answer: oneshot::Sender<Result<Stored, PublishError>>,
}

/// Publishes frames in groups (see the module docs).
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Pending>,
    timeout: Duration,
}

impl GroupCommit {
    /// Starts the committer; it ends when every handle is dropped and the
    /// queue is empty.
    ///
    /// The queue is unbounded because what can wait in it is bounded
    /// before it: every frame holds one of ingest's `MAX_IN_FLIGHT_TOTAL`
    /// permits until it is answered.
    pub fn spawn(publisher: JetStreamPublisher, settings: GroupCommitSettings) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let timeout = publisher.timing().timeout;
        let committer = Committer {
            publisher,
            settings: settings.bounded(),
            not_enabled_until_ms: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        };
        tokio::spawn(committer.run(waiting));
        Self { queue, timeout }
    }
}

impl Publish for GroupCommit {
    fn publish(&self, frame: OutgoingFrame) -> BoxFuture<'static, Result<Stored, PublishError>> {
        let (answer, answered) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let queued = self.queue.send(Pending {
            frame,
            deadline,
            answer,
        });
        async move {
            if queued.is_err() {
                return Err(PublishError::Unavailable(
                    "ingest is stopping and publishes nothing more".to_owned(),
                ));
            }
            // A dropped answer means the committer task died: the frame
            // may or may not be stored, so it is not acknowledged.
            answered.await.unwrap_or_else(|_| {
                Err(PublishError::Unavailable(
                    "the frame's batch was abandoned".to_owned(),
                ))
            })
        }
        .boxed()
    }
}

#[derive(Clone)]
struct Committer {
    publisher: JetStreamPublisher,
    settings: GroupCommitSettings,
    /// Until when (ms since `started`) the stream is taken to refuse
    /// atomic batches.
    not_enabled_until_ms: Arc<AtomicU64>,
    started: Instant,
}

impl Committer {
    async fn run(self, mut waiting: mpsc::UnboundedReceiver<Pending>) {
        let slots = Arc::new(Semaphore::new(self.settings.batches_in_flight));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Some(first) = waiting.recv().await else {
                return;
            };
            let batch = self.gather(first, &mut waiting).await;
            let committer = self.clone();
            tokio::spawn(async move {
                committer.commit(batch).await;
                drop(slot);
            });
        }
    }

    /// The batch that starts with `first`: every frame already waiting,
    /// then whatever arrives within the linger, up to the size bound.
    async fn gather(
        &self,
        first: Pending,
        waiting: &mut mpsc::UnboundedReceiver<Pending>,
    ) -> Vec<Pending> {
        let linger_until = tokio::time::Instant::now() + self.settings.max_delay;
        let mut batch = vec![first];
        while batch.len() < self.settings.max_frames {
            match waiting.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) if self.settings.max_delay.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(linger_until, waiting.recv()).await {
                    Ok(Some(pending)) => batch.push(pending),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        batch
    }

    fn atomic_refused_lately(&self) -> bool {
        self.started.elapsed().as_millis() as u64
            <= self.not_enabled_until_ms.load(Ordering::Relaxed)
    }

    async fn commit(&self, batch: Vec<Pending>) {
        let frames = batch.len();
        // While disconnected the client would queue the batch and send it
        // on reconnect, after its frames were answered: the single path
        // refuses them at once instead.
        if frames < MIN_ATOMIC_FRAMES || self.atomic_refused_lately() || !self.publisher.connected()
        {
            sessionfold_common::metrics::publish_batch("singles", frames);
            self.store_one_by_one(batch).await;
            return;
        }
        let started = Instant::now();
        let span = tracing::debug_span!("group_commit", frames);
        let deadline = batch
            .iter()
            .map(|pending| pending.deadline)
            .min()
            .expect("a batch has a frame");
        // One attempt's worth of waiting, as a single publish gets before
        // it is sent again; the frames then still have time of their own.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait = self
            .publisher
            .timing()
            .retry_after
            .map_or(left, |retry| retry.min(left));
        let messages = batch
            .iter()
            .map(|pending| BatchMessage {
                subject: pending.frame.subject.clone(),
                headers: JetStreamPublisher::headers(&pending.frame),
                payload: pending.frame.payload.clone(),
            })
            .collect();
        let outcome = batch_publish::publish_atomic(self.publisher.client(), messages, wait)
            .instrument(span.clone())
            .await;
        sessionfold_common::metrics::publish_batch(outcome.label(), frames);
        match outcome {
            BatchOutcome::Committed { first_sequence } => {
                let elapsed = started.elapsed();
                for (offset, pending) in (0u64..).zip(batch) {
                    sessionfold_common::metrics::publish_acked(elapsed, true);
                    // A frame whose connection is gone has no one to tell.
                    let _ = pending.answer.send(Ok(Stored {
                        sequence: first_sequence + offset,
                        duplicate: false,
                    }));
                }
            }
            BatchOutcome::Refused { code, reason } => {
                if code == Some(ERR_BATCH_NOT_ENABLED) {
                    let until = self.started.elapsed() + NOT_ENABLED_BACKOFF;
                    self.not_enabled_until_ms
                        .store(until.as_millis() as u64, Ordering::Relaxed);
                }
                span.in_scope(|| {
                    tracing::info!(?code, %reason, "batch refused; publishing its frames one by one")
                });
                self.store_one_by_one(batch).await;
            }
            BatchOutcome::Unanswered { reason } => {
                span.in_scope(|| {
                    tracing::warn!(%reason, "batch unanswered; publishing its frames one by one under their same ids")
                });
                self.store_one_by_one(batch).await;
            }
        }
    }

    /// Each frame through the single publish path, all at once, each
    /// within its own deadline.
    async fn store_one_by_one(&self, batch: Vec<Pending>) {
        let stores = batch.into_iter().map(|pending| {
            let publisher = self.publisher.clone();
            async move {
                let started = Instant::now();
                let stored = publisher
                    .store_until(&pending.frame, pending.deadline)
                    .await;
                sessionfold_common::metrics::publish_acked(started.elapsed(), stored.is_ok());
                let _ = pending.answer.send(stored);
            }
        });
        futures::future::join_all(stores).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_bounded_by_what_jetstream_takes() {
        let settings = GroupCommitSettings {
            max_frames: 5000,
            max_delay: Duration::ZERO,
            batches_in_flight: 0,
        }
        .bounded();
        assert_eq!(settings.max_frames, MAX_BATCH_MESSAGES);
        assert_eq!(settings.batches_in_flight, 1);
        let settings = GroupCommitSettings {
            max_frames: 0,
            max_delay: Duration::ZERO,
            batches_in_flight: 2,
        }
        .bounded();
        assert_eq!(settings.max_frames, 1);
    }
}
