//! The processor loop: pull a batch, apply it to Redis, ack what is stored.
//!
//! Outages are waited out without acking (and without using up deliveries):
//! while Redis is unreachable the batch is retried with backoff and kept
//! alive with in-progress acks. If the pull subscription keeps failing
//! (a consumer deleted, a restarted server; nats.rs issue 1584) the
//! consumer is re-created with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use sessionfold_common::metrics as names;
use sessionfold_common::{jetstream as js_setup, settings};
use sessionfold_core::session::Names;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::{self, SessionBatch};
use crate::config::{Config, WorkerSettings};
use crate::consumer::ensure_consumer;
use crate::dead_letter::DeadLetters;
use crate::store::{Applied, Invocation, Store};

/// Pull errors in a row after which the consumer is re-created.
const MAX_CONSECUTIVE_PULL_ERRORS: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A connected processor.
#[derive(Clone)]
pub struct Processor {
    pub(crate) config: Config,
    names: Names,
    pub(crate) nats: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) store: Store,
    dead_letters: DeadLetters,
    pub(crate) consuming: Arc<AtomicBool>,
    pub(crate) stopping: Arc<AtomicBool>,
}

/// What became of a message in a batch.
enum Fate {
    Ack,
    /// Not stored because of an outage or a shutdown: redeliver.
    Retry,
    /// Refused by Redis: redeliver until its attempts are used up.
    Refused(String),
    /// Can never be applied.
    DeadLetter(String),
}

impl Processor {
    /// Connects to NATS and Redis and creates the streams it needs.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let nats = js_setup::connect(&config.nats, "sessionfold-processor").await?;
        let js = jetstream::new(nats.clone());
        js_setup::ensure_stream(&js, &config.nats).await?;
        let dead_letters =
            DeadLetters::ensure(js.clone(), &config.worker, config.nats.stream_replicas).await?;
        let store = Store::connect(&config.redis).await?;
        Ok(Self {
            names: settings::names(&config.nats, &config.redis.key_prefix),
            config,
            nats,
            js,
            store,
            dead_letters,
            consuming: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Ready while it holds a consumer and is not stopping.
    pub fn is_ready(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed)
            && self.consuming.load(Ordering::Relaxed)
            && self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// Consumes until `shutdown`; the batches in hand are finished and acked
    /// before it returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let lag = tokio::spawn(crate::lag::poll(
            self.js.clone(),
            self.config.nats.stream_name.clone(),
            self.config.worker.consumer_name.clone(),
            shutdown.clone(),
        ));
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
        if let Err(err) = self.nats.flush().await {
            tracing::warn!(error = %err, "flushing acks at shutdown");
        }
        tracing::info!("processor stopped");
        Ok(())
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
                        let _ = message.ack_with(AckKind::Nak(None)).await;
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

    /// Applies one batch and settles every message in it: ack when stored,
    /// dead letter when it can never be stored, otherwise redelivery.
    async fn process(&self, messages: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        let mut fates: Vec<Fate> = Vec::with_capacity(messages.len());
        let mut sequences = Vec::with_capacity(messages.len());
        let mut deliveries = Vec::with_capacity(messages.len());
        let mut decoded = Vec::with_capacity(messages.len());
        metrics::histogram!(names::BATCH_MESSAGES).record(messages.len() as f64);
        for (index, message) in messages.iter().enumerate() {
            let (sequence, delivered) = match message.info() {
                Ok(info) => (info.stream_sequence, info.delivered),
                Err(err) => {
                    tracing::warn!(error = %err, subject = %message.subject, "message without JetStream metadata");
                    (0, 1)
                }
            };
            if delivered > 1 {
                metrics::counter!(names::REDELIVERIES_TOTAL).increment(1);
            }
            sequences.push(sequence);
            deliveries.push(delivered);
            match batch::decode(&self.names, &message.subject, &message.payload, sequence) {
                Ok((session, delivery)) => {
                    fates.push(Fate::Retry);
                    decoded.push((index, session, delivery));
                }
                Err(poison) => fates.push(Fate::DeadLetter(poison.to_string())),
            }
        }
        let sessions: Vec<_> = batch::group(decoded).into_iter().collect();
        let max_children = self.config.worker.max_children_per_session;
        let invocations: Vec<Invocation> = sessions
            .iter()
            .map(|(session, part)| {
                Invocation::new(&self.names, session, &part.deliveries, max_children)
                    .with_document_ttl(self.config.worker.document_ttl_secs)
            })
            .collect();

        let Some(results) = self
            .apply_until_stored(&invocations, &messages, shutdown)
            .await
        else {
            // Stopping during an outage: hand the batch back at once.
            for message in &messages {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
            return;
        };
        for ((session, part), applied) in sessions.iter().zip(results) {
            match applied {
                Applied::Stored(written) => {
                    tracing::debug!(session_id = %session, written, frames = part.messages.len(), "applied");
                    for &index in &part.messages {
                        fates[index] = Fate::Ack;
                    }
                    self.announce(session, written).await;
                }
                Applied::Refused(reason) => {
                    self.isolate_refusal(session, part, &sequences, &reason, &mut fates, shutdown)
                        .await;
                }
            }
        }
        for (index, fate) in fates.into_iter().enumerate() {
            let message = &messages[index];
            let sequence = sequences[index];
            match fate {
                Fate::Ack => {
                    settled("acked");
                    if let Err(err) = message.ack().await {
                        tracing::warn!(stream_sequence = sequence, error = %err, "ack failed; the message will be redelivered");
                    }
                }
                Fate::Retry => {
                    settled("retried");
                    let delay = Duration::from_millis(200 * deliveries[index].clamp(1, 10) as u64);
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                }
                Fate::Refused(reason)
                    if self.config.worker.attempts_exhausted(deliveries[index]) =>
                {
                    self.dead_letter(message, sequence, &reason, "refused")
                        .await;
                }
                Fate::Refused(_) => {
                    settled("refused");
                    let delay = Duration::from_millis(500 * deliveries[index].clamp(1, 10) as u64);
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                }
                Fate::DeadLetter(reason) => {
                    self.dead_letter(message, sequence, &reason, "poison").await;
                }
            }
        }
    }

    /// A session's part was refused. Applies its frames one by one, so that
    /// only the frames that are refused on their own are retried or dead
    /// lettered.
    async fn isolate_refusal(
        &self,
        session: &sessionfold_core::SessionId,
        part: &SessionBatch,
        sequences: &[u64],
        reason: &str,
        fates: &mut [Fate],
        shutdown: &CancellationToken,
    ) {
        let max_children = self.config.worker.max_children_per_session;
        let single: Vec<Invocation> = part
            .deliveries
            .iter()
            .map(|delivery| {
                Invocation::new(
                    &self.names,
                    session,
                    std::slice::from_ref(delivery),
                    max_children,
                )
                .with_document_ttl(self.config.worker.document_ttl_secs)
            })
            .collect();
        let mut store = self.store.clone();
        let outcome = if part.messages.len() > 1 {
            // In stream order, so that a frame that fits is not displaced by a later one.
            let mut results = Vec::with_capacity(single.len());
            for invocation in &single {
                match store.apply(std::slice::from_ref(invocation)).await {
                    Ok(mut applied) => results.push(applied.remove(0)),
                    Err(_) => return, // An outage: all stay `Retry`.
                }
                if shutdown.is_cancelled() {
                    break;
                }
            }
            results
        } else {
            vec![Applied::Refused(reason.to_owned())]
        };
        for (position, applied) in outcome.into_iter().enumerate() {
            let index = part.messages[position];
            fates[index] = match applied {
                Applied::Stored(_) => Fate::Ack,
                Applied::Refused(reason) => {
                    tracing::warn!(session_id = %session, stream_sequence = sequences[index], %reason, "Redis refused a frame");
                    Fate::Refused(reason)
                }
            };
        }
    }

    /// Retries the batch through Redis outages until it is stored. `None`
    /// when shutdown came first.
    async fn apply_until_stored(
        &self,
        invocations: &[Invocation],
        messages: &[jetstream::Message],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Applied>> {
        let mut store = self.store.clone();
        let mut backoff = Backoff::default();
        loop {
            match store.apply(invocations).await {
                Ok(results) => return Some(results),
                Err(err) => {
                    metrics::counter!(names::REDIS_OUTAGES_TOTAL).increment(1);
                    tracing::warn!(error = %err, frames = messages.len(), "Redis unavailable; retrying the batch");
                    for message in messages {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                    if shutdown.is_cancelled() || !backoff.wait(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Moves a message to the dead-letter stream; `kind` (`poison`,
    /// `refused`) labels the metric.
    /// Tells live views that `session` changed. Best effort: a lost note
    /// only delays a view until the next one.
    async fn announce(&self, session: &sessionfold_core::SessionId, written: i64) {
        let subject = format!(
            "{}.{}",
            self.config.worker.updates_subject_prefix,
            session.token()
        );
        let note = serde_json::json!({"session_id": session.as_str(), "written": written});
        if let Err(err) = self.nats.publish(subject, note.to_string().into()).await {
            tracing::debug!(session_id = %session, error = %err, "update note not sent");
        }
    }

    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        sequence: u64,
        reason: &str,
        kind: &'static str,
    ) {
        match self.dead_letters.send(message, sequence, reason).await {
            Ok(()) => {
                settled("dead_lettered");
                metrics::counter!(names::DEAD_LETTERS_TOTAL, "kind" => kind).increment(1);
                let _ = message.ack_with(AckKind::Term).await;
            }
            Err(err) => {
                tracing::warn!(stream_sequence = sequence, error = %err, "dead letter not stored; the message will be redelivered");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }
}

/// Counts one settled message by its outcome.
fn settled(outcome: &'static str) {
    metrics::counter!(names::MESSAGES_TOTAL, "outcome" => outcome).increment(1);
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

/// Exponential backoff, capped, interrupted by shutdown.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// Sleeps for the next delay; `false` when shutdown interrupted it.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = Duration::from_millis(50u64 << self.attempt.min(6)).min(MAX_BACKOFF);
        self.attempt += 1;
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
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

impl WorkerSettings {
    /// Whether a refused message has used up its attempts.
    pub fn attempts_exhausted(&self, delivered: i64) -> bool {
        delivered >= self.max_attempts
    }
}
