//! The processor loop: pull a batch, apply it to Redis, ack what is stored.
//!
//! Outages are waited out without acking (and without using up deliveries):
//! while Redis is unreachable the batch is retried with backoff and kept
//! alive with in-progress acks. If the pull subscription keeps failing
//! (a consumer deleted, a restarted server; nats.rs issue 1584) the
//! consumer is re-created with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use sessionfold_common::jetstream as js_setup;
use sessionfold_common::metrics as names;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::applier::{Applier, Metadata, Pulled};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::consumer::ensure_consumer;
use crate::dead_letter::DeadLetters;
use crate::lifecycle::{Closer, Lifecycle};
use crate::settle::{Settlement, settle};
use crate::store::{RedisStore, StoreOptions, Stored};

/// Pull errors in a row after which the consumer is re-created.
const MAX_CONSECUTIVE_PULL_ERRORS: u32 = 3;

/// A connected processor.
#[derive(Clone)]
pub struct Processor {
    pub(crate) config: Config,
    pub(crate) nats: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) store: RedisStore,
    pub(crate) applier: Applier<RedisStore>,
    dead_letters: DeadLetters,
    /// `None` when sessions never close by themselves.
    pub(crate) lifecycle: Option<Lifecycle>,
    pub(crate) consuming: Arc<AtomicBool>,
    pub(crate) stopping: Arc<AtomicBool>,
}

impl Processor {
    /// Connects to NATS and Redis and creates the streams it needs.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let nats = js_setup::connect(&config.nats, "sessionfold-processor").await?;
        let js = jetstream::new(nats.clone());
        js_setup::ensure_stream(&js, &config.nats).await?;
        let dead_letters = DeadLetters::ensure(
            js.clone(),
            &config.worker,
            config.subjects(),
            config.nats.stream_replicas,
        )
        .await?;
        let store = RedisStore::connect_with(
            &config.redis,
            StoreOptions {
                // One per batch in flight, and one for repairs.
                connections: config.worker.batches_in_flight.max(1) + 1,
                durability: config.sink.redis_durability,
                durability_timeout: config.sink.durability_timeout(),
            },
        )
        .await?;
        let applier = Applier {
            store: store.clone(),
            subjects: config.subjects(),
            keys: config.keys(),
            max_children: config.worker.max_children_per_session,
            max_events_per_step: config.worker.max_events_per_step,
            summaries: config.worker.session_summaries,
            document_ttl_secs: config.worker.document_ttl_secs,
            lifecycle: config.lifecycle.spec(),
        };
        let lifecycle = match config.lifecycle.spec() {
            Some(spec) => Some(
                Lifecycle::ensure(
                    js.clone(),
                    &config.lifecycle,
                    spec,
                    config.nats.stream_replicas,
                )
                .await?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            nats,
            js,
            store,
            applier,
            dead_letters,
            lifecycle,
            consuming: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Consumes until `shutdown`; the batches in hand are finished and acked
    /// before it returns. Automatic repair runs beside it.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let lag = tokio::spawn(crate::lag::poll(
            self.js.clone(),
            self.config.nats.stream_name.clone(),
            self.config.worker.consumer_name.clone(),
            shutdown.clone(),
        ));
        // The first check runs before consuming, so that a new deployment
        // marks its nodes before anything is applied.
        let repair = match crate::repair::Repairer::new(&self) {
            Some(mut repairer) => {
                if let Err(err) = repairer.check(&shutdown).await {
                    tracing::warn!(error = %format!("{err:#}"), "first applied-floor check failed; retrying in the background");
                }
                Some(tokio::spawn(repairer.run(shutdown.clone())))
            }
            None => None,
        };
        let closer = match self.closer(&shutdown).await {
            Ok(closer) => closer,
            Err(err) => {
                self.stopping.store(true, Ordering::Relaxed);
                lag.abort();
                return Err(err);
            }
        };
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let consumer = match self.consumer().await {
                Ok(consumer) => consumer,
                Err(err) => {
                    tracing::warn!(error = %err, "consumer unavailable; retrying");
                    backoff.wait(&shutdown).await;
                    continue;
                }
            };
            self.consuming.store(true, Ordering::Relaxed);
            match self.consume(consumer, &shutdown).await {
                Ok(()) => backoff.reset(),
                Err(err) => {
                    tracing::warn!(error = %err, "pull subscription failed; re-creating the consumer");
                    self.consuming.store(false, Ordering::Relaxed);
                    backoff.wait(&shutdown).await;
                }
            }
        }
        self.stopping.store(true, Ordering::Relaxed);
        self.consuming.store(false, Ordering::Relaxed);
        lag.abort();
        if let Some(repair) = repair {
            repair.abort();
        }
        for task in closer {
            // The closer finishes the closes in hand first.
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "closer task failed");
            }
        }
        if let Err(err) = self.nats.flush().await {
            tracing::warn!(error = %err, "flushing acks at shutdown");
        }
        tracing::info!("processor stopped");
        Ok(())
    }

    /// Starts closing sessions whose timer fired (with its own Redis
    /// connections), and counting the open ones.
    async fn closer(
        &self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let Some(lifecycle) = &self.lifecycle else {
            return Ok(Vec::new());
        };
        let store = RedisStore::connect_with(
            &self.config.redis,
            StoreOptions {
                connections: 4,
                durability: self.config.sink.redis_durability,
                durability_timeout: self.config.sink.durability_timeout(),
            },
        )
        .await?;
        let closer = Closer::new(
            lifecycle.clone(),
            store,
            self.config.keys(),
            self.config.subjects(),
            self.nats.clone(),
        );
        Ok(vec![
            tokio::spawn(closer.run(shutdown.clone())),
            tokio::spawn(crate::lifecycle::poll_open_sessions(
                lifecycle.clone(),
                shutdown.clone(),
            )),
        ])
    }

    async fn consumer(&self) -> anyhow::Result<PullConsumer> {
        let stream = js_setup::ensure_stream(&self.js, &self.config.nats).await?;
        ensure_consumer(&stream, &self.config.worker).await
    }

    /// Pulls and applies batches until shutdown (`Ok`) or until the
    /// subscription is broken (`Err`). Up to `batches_in_flight` batches are
    /// applied at once; every one is finished and settled before it returns.
    async fn consume(
        &self,
        consumer: PullConsumer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let batch_size = self.config.worker.batch_size.max(1);
        let batches_in_flight = self.config.worker.batches_in_flight.max(1);
        let mut in_flight = FuturesUnordered::new();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(batch_size)
            .heartbeat(self.config.worker.pull_heartbeat())
            .expires(self.config.worker.pull_heartbeat() * 6)
            .messages()
            .await?;
        let mut consecutive_errors = 0;
        loop {
            if in_flight.len() >= batches_in_flight {
                in_flight.next().await;
                continue;
            }
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    while in_flight.next().await.is_some() {}
                    // Hand back what was pulled but not started, so other
                    // replicas get it now rather than after the ack wait.
                    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
                        settle_with(&message, AckKind::Nak(None), "handing back").await;
                    }
                    return Ok(());
                }
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                next = messages.next() => next,
            };
            let mut batch = match first {
                None => {
                    while in_flight.next().await.is_some() {}
                    anyhow::bail!("the pull subscription ended")
                }
                Some(Err(err)) => {
                    consecutive_errors += 1;
                    tracing::warn!(error = %err, consecutive_errors, "pull error");
                    // A deleted consumer or stream never heals by itself;
                    // repeated heartbeat errors after a reconnect may not
                    // either (nats.rs issue 1584).
                    if is_fatal_pull_error(&err)
                        || consecutive_errors >= MAX_CONSECUTIVE_PULL_ERRORS
                    {
                        while in_flight.next().await.is_some() {}
                        anyhow::bail!("{consecutive_errors} pull errors in a row: {err}");
                    }
                    continue;
                }
                Some(Ok(message)) => vec![message],
            };
            consecutive_errors = 0;
            while batch.len() < batch_size {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            let span = batch_span(&batch);
            in_flight.push(self.process(batch, shutdown).instrument(span));
        }
    }

    /// Applies one batch and settles every message in it (see
    /// [`crate::settle`]).
    async fn process(&self, messages: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        metrics::histogram!(names::BATCH_MESSAGES).record(messages.len() as f64);
        let pulled: Vec<Pulled> = messages.iter().map(pulled).collect();
        for metadata in pulled.iter().filter_map(|p| p.metadata) {
            if metadata.delivered > 1 {
                metrics::counter!(names::REDELIVERIES_TOTAL).increment(1);
            }
        }
        let keep_alive = || async {
            for message in &messages {
                settle_with(message, AckKind::Progress, "in-progress ack").await;
            }
        };
        let mut outcome = self.applier.apply(&pulled, keep_alive, shutdown).await;
        self.schedule_timers(&pulled, &mut outcome).await;
        for stored in &outcome.stored_sessions {
            self.announce(&stored.session, &stored.applies).await;
        }
        let max_attempts = self.config.worker.max_attempts;
        for ((message, pulled), outcome) in messages.iter().zip(&pulled).zip(outcome.outcomes) {
            let delivered = pulled.metadata.map_or(1, |m| m.delivered);
            let stream_sequence = pulled.metadata.map(|m| m.stream_sequence);
            let settlement = settle(outcome, delivered, max_attempts);
            match settlement {
                Settlement::Ack => {
                    count(&settlement);
                    if let Err(err) = message.ack().await {
                        tracing::warn!(stream_sequence, error = %err, "ack failed; the message will be redelivered");
                    }
                }
                Settlement::Redeliver(delay) | Settlement::RetryRefused(delay) => {
                    count(&settlement);
                    settle_with(message, AckKind::Nak(Some(delay)), "nak").await;
                }
                Settlement::DeadLetter { kind, reason } => {
                    match self
                        .dead_letters
                        .send(message, stream_sequence, &reason)
                        .await
                    {
                        Ok(()) => {
                            count(&Settlement::DeadLetter {
                                kind,
                                reason: String::new(),
                            });
                            metrics::counter!(names::DEAD_LETTERS_TOTAL, "kind" => kind.as_str())
                                .increment(1);
                            if kind == crate::settle::DeadLetterKind::Late {
                                names::late_frame("dead_lettered");
                            }
                            settle_with(message, AckKind::Term, "term").await;
                        }
                        Err(err) => {
                            tracing::warn!(stream_sequence, error = %err, "dead letter not stored; the message will be redelivered");
                            settle_with(
                                message,
                                AckKind::Nak(Some(std::time::Duration::from_secs(1))),
                                "nak",
                            )
                            .await;
                        }
                    }
                }
            }
        }
    }

    /// Schedules the timers the batch armed before anything is acked (see
    /// [`Lifecycle::schedule_armed`]).
    async fn schedule_timers(&self, pulled: &[Pulled], outcome: &mut crate::applier::BatchOutcome) {
        if let Some(lifecycle) = &self.lifecycle {
            lifecycle.schedule_armed(pulled, outcome).await;
        }
    }

    /// Tells live views what changed in `session`: one note per stored
    /// apply, with its revision and changes (see [`crate::note`]). Best
    /// effort: a lost note only makes a view read the document again.
    async fn announce(
        &self,
        session: &sessionfold_core::SessionId,
        applies: &[(crate::store::Invocation, Stored)],
    ) {
        let subject = self.applier.subjects.update(session);
        for (invocation, stored) in applies {
            let note = crate::note::update_note(session.as_str(), invocation, stored);
            if let Err(err) = self.nats.publish(subject.clone(), note.into()).await {
                tracing::debug!(session_id = %session, error = %err, "update note not sent");
            }
        }
    }
}

/// The parts of a pulled message the applier needs.
fn pulled(message: &jetstream::Message) -> Pulled {
    let metadata = match message.info() {
        Ok(info) => Some(Metadata {
            stream_sequence: info.stream_sequence,
            delivered: info.delivered,
            published_ms: published_ms(&info),
        }),
        Err(err) => {
            tracing::warn!(error = %err, subject = %message.subject, "message without JetStream metadata");
            None
        }
    };
    Pulled {
        subject: message.subject.to_string(),
        payload: message.payload.clone(),
        metadata,
    }
}

/// A JetStream timestamp in milliseconds since the Unix epoch.
pub(crate) fn published_ms(info: &jetstream::message::Info<'_>) -> u64 {
    (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// Sends `kind` for `message`; a failure is logged (the message is then
/// redelivered after the ack wait, which the apply step makes harmless).
async fn settle_with(message: &jetstream::Message, kind: AckKind, what: &'static str) {
    if let Err(err) = message.ack_with(kind).await {
        let stream_sequence = message.info().ok().map(|info| info.stream_sequence);
        tracing::warn!(stream_sequence, error = %err, "{what} failed; the message will be redelivered after the ack wait");
    }
}

/// Counts one settled message by its outcome.
fn count(settlement: &Settlement) {
    metrics::counter!(names::MESSAGES_TOTAL, "outcome" => settlement.metric_outcome()).increment(1);
}

/// The span of one batch: every line logged while applying it carries the
/// batch's first `stream_sequence` (lines about one message name their own).
fn batch_span(batch: &[jetstream::Message]) -> tracing::Span {
    let sequence =
        |message: &jetstream::Message| message.info().map(|info| info.stream_sequence).ok();
    let first = batch.iter().find_map(sequence);
    let last = batch.iter().rev().find_map(sequence);
    tracing::info_span!(
        "batch",
        stream_sequence = first,
        last_stream_sequence = last,
        messages = batch.len()
    )
}

fn is_fatal_pull_error(err: &jetstream::consumer::pull::MessagesError) -> bool {
    use jetstream::consumer::pull::MessagesErrorKind as Kind;
    matches!(
        err.kind(),
        Kind::ConsumerDeleted
            | Kind::NoResponders
            | Kind::PushBasedConsumer
            | Kind::RequestLimitExceeded
    )
}

/// Runs the processor with `/healthz`, `/readyz` and `/metrics` on
/// `listener` until `shutdown`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let processor = Processor::build(config).await?;
    let health = sessionfold_common::http::instrument(
        sessionfold_common::health::routes(processor.readiness())
            .merge(sessionfold_common::metrics::routes()),
    );
    tracing::info!(addr = %listener.local_addr()?, "processor health listening");
    // The health endpoints answer until consuming has stopped.
    let http_shutdown = CancellationToken::new();
    let http_stop = http_shutdown.clone();
    let http_limits = processor.config.http.clone();
    let http = tokio::spawn(async move {
        sessionfold_common::http::serve(listener, health, &http_limits, http_stop.cancelled_owned())
            .await
    });
    // Readiness turns off first; consuming stops after the grace period.
    let stopping = processor.stopping.clone();
    let grace = processor.config.shutdown.grace();
    let stop_consuming = CancellationToken::new();
    let stop = stop_consuming.clone();
    tokio::spawn(async move {
        sessionfold_common::shutdown::after_grace(shutdown, grace, || {
            stopping.store(true, Ordering::Relaxed)
        })
        .await;
        stop.cancel();
    });
    processor.run(stop_consuming).await?;
    http_shutdown.cancel();
    http.await??;
    Ok(())
}
