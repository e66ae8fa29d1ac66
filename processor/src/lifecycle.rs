//! Sessions that close by themselves (docs/design.md "Session lifecycle").
//!
//! - A session's timer is one scheduled message on the timers stream
//!   (`Nats-Schedule: @at <due>`), on its own subject, so a new schedule
//!   replaces the pending one and the timer survives restarts of every
//!   process. The apply step arms it ([`crate::store::Timer`]); the worker
//!   schedules it before acking the frames that armed it.
//! - When it fires, the server publishes a due note; one durable consumer,
//!   shared by every replica, hands each note to one [`Closer`], which runs
//!   the close step: closed (the finished message goes to the
//!   finished-sessions stream, de-duplicated by `<token>:<revision>`), not
//!   due yet (scheduled again), or past its lateness (compacted, and marked
//!   closed for good in a key-value bucket ingest reads).
//!
//! Every step is idempotent and its note is acked last, so a replica killed
//! anywhere in a close leaves a note that the next one finishes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    kv, stream,
};
use bytes::Bytes;
use futures::StreamExt;
use sessionfold_common::batch_publish::{
    self, BatchMessage, ERR_BATCH_NOT_ENABLED, MAX_BATCH_MESSAGES,
};
use sessionfold_common::jetstream::ensure_stream_config;
use sessionfold_common::metrics as names;
use sessionfold_core::{Keys, LifecycleSubjects, SessionId, Subjects};
use tokio_util::sync::CancellationToken;

use crate::applier::{BatchOutcome, Pulled};
use crate::backoff::Backoff;
use crate::config::LifecycleSettings;
use crate::group_publish::{
    COMMIT_TIMEOUT, GroupPublisher, MIN_ATOMIC_MESSAGES, NOT_ENABLED_BACKOFF,
};
use crate::settle::Outcome;
use crate::store::{CLOSE_SCRIPT, LifecycleSpec, Outage, RedisStore};

/// How long a closer may hold a due note before it is handed to another.
const DUE_ACK_WAIT: Duration = Duration::from_secs(30);
/// How long the finished-sessions stream remembers message ids: a close
/// redelivered within it is stored once even if the replica that closed it
/// died before recording the publication.
const FINISHED_DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// How long the key-value bucket remembers a session closed for good.
const CLOSED_FOR_GOOD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Due notes handled at once by one replica. A close waits on a few round
/// trips (the close step, the finished message's PubAck, the compaction's
/// schedule), not on CPU, so many sessions due at once close in parallel.
const CLOSES_IN_FLIGHT: usize = 128;
/// Header of the finished message's body size when the document was left
/// out for being larger than the server takes.
const OMITTED_HEADER: &str = "Sessionfold-Document-Omitted";

/// Which of a session's two timer subjects a schedule goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// An open session's close.
    Open,
    /// A closed session's compaction.
    Closed,
}

/// The lifecycle's streams and how to schedule on them.
#[derive(Clone)]
pub struct Lifecycle {
    js: jetstream::Context,
    pub subjects: LifecycleSubjects,
    pub spec: LifecycleSpec,
    settings: LifecycleSettings,
    closed_for_good: kv::Store,
    /// When the timers stream last refused an atomic batch for not
    /// allowing them.
    atomic_refused_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// The closes' compaction and later schedules, grouped.
    timers: GroupPublisher,
    /// The finished messages, grouped.
    finished: GroupPublisher,
}

impl Lifecycle {
    /// Creates the timers stream, the finished-sessions stream and the
    /// closed-sessions bucket when missing, with `replicas` copies.
    pub async fn ensure(
        js: jetstream::Context,
        settings: &LifecycleSettings,
        spec: LifecycleSpec,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let subjects = LifecycleSubjects {
            timers_prefix: settings.timers_subject_prefix.clone(),
            sessions_prefix: settings.sessions_subject_prefix.clone(),
        };
        ensure_stream_config(
            &js,
            stream::Config {
                name: settings.timers_stream.clone(),
                subjects: vec![subjects.timers_filter()],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                // A fired timer is gone once a closer acked it.
                retention: stream::RetentionPolicy::WorkQueue,
                allow_message_schedules: true,
                allow_rollup: true,
                // The timers a pulled batch armed are stored together.
                allow_atomic_publish: true,
                max_bytes: -1,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            },
        )
        .await
        .context("setting up the timers stream")?;
        ensure_stream_config(
            &js,
            stream::Config {
                name: settings.sessions_stream.clone(),
                subjects: vec![subjects.finished_filter()],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                max_age: Duration::from_secs(settings.sessions_max_age_secs),
                // A session's latest close replaces its earlier ones: a
                // re-close never stores a second copy of the document.
                max_messages_per_subject: 1,
                // Full, the stream refuses new closes (they are retried)
                // rather than dropping ones not read yet.
                max_bytes: settings.sessions_max_bytes,
                discard: stream::DiscardPolicy::New,
                duplicate_window: FINISHED_DUPLICATE_WINDOW,
                // Closes publish their finished messages together.
                allow_atomic_publish: true,
                ..Default::default()
            },
        )
        .await
        .context("setting up the finished-sessions stream")?;
        let closed_for_good = match js
            .get_key_value(&settings.late.closed_sessions_bucket)
            .await
        {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: settings.late.closed_sessions_bucket.clone(),
                    description: "sessions closed past their allowed lateness".to_owned(),
                    history: 1,
                    max_age: CLOSED_FOR_GOOD_TTL,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .context("setting up the closed-sessions bucket")?,
        };
        Ok(Self {
            subjects,
            spec,
            settings: settings.clone(),
            closed_for_good,
            atomic_refused_at: Arc::default(),
            timers: GroupPublisher::spawn(js.clone(), settings.timers_stream.clone()),
            finished: GroupPublisher::spawn(js.clone(), settings.sessions_stream.clone()),
            js,
        })
    }

    /// Schedules every timer and waits until each is stored: `false` for
    /// those that were not (their frames must not be acked yet).
    ///
    /// [`MIN_ATOMIC_MESSAGES`] timers or more go as atomic batches (see
    /// [`Lifecycle::schedule_atomically`]): a few fsyncs a batch instead
    /// of one or two a timer. A batch that does not commit is scheduled
    /// again one timer at a time, so a timer is only ever counted stored
    /// on a PubAck that covers it.
    pub async fn schedule_all(&self, timers: &[(SessionId, u64, TimerKind)]) -> Vec<bool> {
        let mut stored = Vec::with_capacity(timers.len());
        for chunk in timers.chunks(MAX_BATCH_MESSAGES) {
            if chunk.len() >= MIN_ATOMIC_MESSAGES
                && !self.atomic_refused_lately()
                && self.schedule_atomically(chunk).await
            {
                stored.extend(std::iter::repeat_n(true, chunk.len()));
            } else {
                stored.extend(self.schedule_one_by_one(chunk).await);
            }
        }
        stored
    }

    /// Stores `timers` (on distinct subjects, at most
    /// [`MAX_BATCH_MESSAGES`]) as one atomic batch: `true` when JetStream
    /// committed it whole.
    pub async fn schedule_atomically(&self, timers: &[(SessionId, u64, TimerKind)]) -> bool {
        let messages = timers
            .iter()
            .map(|(session, due_ms, kind)| {
                let (subject, headers) = self.schedule_message(session, *due_ms, *kind);
                BatchMessage {
                    subject,
                    headers,
                    payload: Bytes::new(),
                }
            })
            .collect();
        let outcome =
            batch_publish::publish_atomic(&self.js.client(), messages, COMMIT_TIMEOUT).await;
        match outcome {
            batch_publish::BatchOutcome::Committed { .. } => {
                tracing::debug!(
                    timers = timers.len(),
                    "timers scheduled by one atomic batch"
                );
                true
            }
            other => {
                if let batch_publish::BatchOutcome::Refused {
                    code: Some(ERR_BATCH_NOT_ENABLED),
                    ..
                } = other
                {
                    *self
                        .atomic_refused_at
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                        Some(std::time::Instant::now());
                }
                tracing::warn!(
                    timers = timers.len(),
                    outcome = other.label(),
                    error = ?other,
                    "the timers' atomic batch did not commit; scheduling them one by one"
                );
                false
            }
        }
    }

    /// Whether the timers stream answered lately that it takes no atomic
    /// batch (it was set up by an older version, or changed by hand).
    fn atomic_refused_lately(&self) -> bool {
        self.atomic_refused_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some_and(|at| at.elapsed() < NOT_ENABLED_BACKOFF)
    }

    /// Schedules each timer with its own publish, all in flight at once.
    async fn schedule_one_by_one(&self, timers: &[(SessionId, u64, TimerKind)]) -> Vec<bool> {
        let mut acks = Vec::with_capacity(timers.len());
        for (session, due_ms, kind) in timers {
            acks.push(self.send_schedule(session, *due_ms, *kind).await);
        }
        let mut stored = Vec::with_capacity(acks.len());
        for ((session, _, _), ack) in timers.iter().zip(acks) {
            let result = match ack {
                Ok(ack) => ack.await.map(|_| ()).map_err(|err| err.to_string()),
                Err(err) => Err(err),
            };
            if let Err(err) = &result {
                tracing::warn!(session_id = %session, error = %err, "timer not scheduled");
            }
            stored.push(result.is_ok());
        }
        stored
    }

    /// Schedules the timers a batch armed, before anything is acked: a
    /// session whose timer could not be stored has its frames made
    /// `NotStored`, so they are redelivered (they are stored; the
    /// redelivery schedules the timer again). A redelivered frame's session
    /// schedules its timer in any case: the replica that armed it may have
    /// died before scheduling it; so does a session whose steps ran more
    /// than once ([`crate::applier::StoredSession::reapplied`]). Counts
    /// sessions opened and reopened too.
    /// Returns how many timers could not be scheduled.
    pub async fn schedule_armed(&self, pulled: &[Pulled], outcome: &mut BatchOutcome) -> usize {
        let mut timers = Vec::new();
        let mut owners = Vec::new();
        for (index, stored) in outcome.stored_sessions.iter().enumerate() {
            for (_, applied) in &stored.applies {
                if applied.created {
                    metrics::counter!(names::SESSIONS_OPENED_TOTAL, "how" => "new").increment(1);
                }
                if applied.reopened {
                    metrics::counter!(names::SESSIONS_OPENED_TOTAL, "how" => "reopened")
                        .increment(1);
                    names::late_frame("applied");
                }
            }
            let Some(timer) = stored.timer() else {
                continue;
            };
            let redelivered = stored
                .messages
                .iter()
                .any(|&message| pulled[message].metadata.is_some_and(|m| m.delivered > 1));
            if timer.armed || redelivered || stored.reapplied {
                let closed = stored
                    .applies
                    .last()
                    .is_some_and(|(_, applied)| applied.still_closed);
                let kind = if closed {
                    TimerKind::Closed
                } else {
                    TimerKind::Open
                };
                timers.push((stored.session.clone(), timer.due_ms, kind));
                owners.push(index);
            }
        }
        if timers.is_empty() {
            return 0;
        }
        let mut failed = 0;
        for (index, scheduled) in owners.into_iter().zip(self.schedule_all(&timers).await) {
            if !scheduled {
                failed += 1;
                for &message in &outcome.stored_sessions[index].messages {
                    outcome.outcomes[message] = Outcome::NotStored;
                }
            }
        }
        failed
    }

    /// Schedules one timer of a close (its compaction, or the close again
    /// when it was not due yet), grouped with the other closes' schedules
    /// into atomic batches.
    async fn schedule(
        &self,
        session: &SessionId,
        due_ms: u64,
        kind: TimerKind,
    ) -> Result<(), String> {
        let (subject, headers) = self.schedule_message(session, due_ms, kind);
        self.timers
            .publish(BatchMessage {
                subject,
                headers,
                payload: Bytes::new(),
            })
            .await
            .map(|_| ())
    }

    async fn send_schedule(
        &self,
        session: &SessionId,
        due_ms: u64,
        kind: TimerKind,
    ) -> Result<jetstream::context::PublishAckFuture, String> {
        let (subject, headers) = self.schedule_message(session, due_ms, kind);
        self.js
            .publish_with_headers(subject, headers, Bytes::new())
            .await
            .map_err(|err| err.to_string())
    }

    /// The subject and headers of a session's schedule.
    fn schedule_message(
        &self,
        session: &SessionId,
        due_ms: u64,
        kind: TimerKind,
    ) -> (String, HeaderMap) {
        let subject = match kind {
            TimerKind::Open => self.subjects.open_timer(session),
            TimerKind::Closed => self.subjects.closed_timer(session),
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Schedule", format!("@at {}", rfc3339_millis(due_ms)));
        headers.insert(
            "Nats-Schedule-Target",
            self.subjects.timer_due(session).as_str(),
        );
        (subject, headers)
    }
}

/// `ms` since the Unix epoch as RFC 3339 in UTC with milliseconds, as a
/// schedule's `@at` takes it.
pub fn rfc3339_millis(ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// What the close step answered for a fired timer (see `close.lua`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// No such session.
    Gone,
    /// Compacted before: nothing to do.
    Compacted,
    /// Nothing closes it.
    Never,
    /// Not due yet: schedule the timer again.
    Later { due_ms: u64, kind: TimerKind },
    /// Closed, and its finished message is not known to be stored.
    Closed {
        reason: String,
        revision: u64,
        closed_at_ms: u64,
        /// When it was due, if it closed on this call.
        due_ms: Option<u64>,
        compaction_due_ms: u64,
        /// The document at the close (JSON), empty when there is none.
        document: Vec<u8>,
    },
    /// Past its lateness: compacted now.
    CompactedNow { reason: String, revision: u64 },
}

impl Closing {
    /// Reads the close step's answer (the top of `close.lua`).
    pub fn parse(reply: redis::Value) -> Result<Self, String> {
        let values: Vec<redis::Value> =
            redis::from_redis_value(reply).map_err(|err| err.to_string())?;
        let mut values = values.into_iter();
        let mut text = || -> Result<String, String> {
            let value = values.next().unwrap_or(redis::Value::Nil);
            let bytes: Option<Vec<u8>> =
                redis::from_redis_value(value).map_err(|err| err.to_string())?;
            Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
        };
        let number = |text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("not a number: {text:?}"))
        };
        let outcome = text()?;
        Ok(match outcome.as_str() {
            "gone" => Self::Gone,
            "compacted" => Self::Compacted,
            "none" => Self::Never,
            "later" => {
                let due_ms = number(text()?)?;
                let kind = if text()? == "closed" {
                    TimerKind::Closed
                } else {
                    TimerKind::Open
                };
                Self::Later { due_ms, kind }
            }
            "closed" => {
                let reason = text()?;
                let revision = number(text()?)?;
                let closed_at_ms = number(text()?)?;
                let due = text()?;
                let due_ms = if due.is_empty() {
                    None
                } else {
                    Some(number(due)?)
                };
                let compaction_due_ms = number(text()?)?;
                let document = text()?.into_bytes();
                Self::Closed {
                    reason,
                    revision,
                    closed_at_ms,
                    due_ms,
                    compaction_due_ms,
                    document,
                }
            }
            "compacted_now" => Self::CompactedNow {
                reason: text()?,
                revision: number(text()?)?,
            },
            other => return Err(format!("unknown close outcome {other:?}")),
        })
    }
}

/// The finished message of a session: `{session_id, reason, revision,
/// closed_at, document}` (`closed_at` in milliseconds since the Unix
/// epoch, JetStream's clock); `document` is `null` when it is
/// larger than `max_payload` allows (read it with `GET /data` then).
pub fn finished_message(
    session: &SessionId,
    reason: &str,
    revision: u64,
    closed_at_ms: u64,
    document: &[u8],
    max_payload: usize,
) -> (Bytes, bool) {
    let head = format!(
        "{{\"session_id\":{},\"reason\":{},\"revision\":{revision},\"closed_at\":{closed_at_ms},\"document\":",
        serde_json::Value::from(session.as_str()),
        serde_json::Value::from(reason),
    );
    // Room for the headers and the subject.
    let fits = head.len() + document.len() + 1 + 1024 <= max_payload;
    let mut body = Vec::with_capacity(head.len() + document.len() + 1);
    body.extend_from_slice(head.as_bytes());
    if fits && !document.is_empty() {
        body.extend_from_slice(document);
    } else {
        body.extend_from_slice(b"null");
    }
    body.push(b'}');
    (Bytes::from(body), !fits)
}

/// Handles fired timers: one per replica, all sharing one durable consumer.
pub struct Closer {
    pub lifecycle: Lifecycle,
    pub store: RedisStore,
    pub keys: Keys,
    pub subjects: Subjects,
    pub nats: async_nats::Client,
    script: redis::Script,
}

/// What became of one due note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    Done,
    /// Something it needs is out: try again after the delay.
    Retry(Duration),
}

impl Closer {
    pub fn new(
        lifecycle: Lifecycle,
        store: RedisStore,
        keys: Keys,
        subjects: Subjects,
        nats: async_nats::Client,
    ) -> Self {
        Self {
            lifecycle,
            store,
            keys,
            subjects,
            nats,
            script: redis::Script::new(CLOSE_SCRIPT),
        }
    }

    /// Handles due notes until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let closer = Arc::new(self);
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let consumer = match closer.consumer().await {
                Ok(consumer) => consumer,
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "timers consumer unavailable; retrying");
                    backoff.wait(&shutdown).await;
                    continue;
                }
            };
            match closer.consume(consumer, &shutdown).await {
                Ok(()) => backoff.reset(),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "timers subscription failed; re-creating it");
                    backoff.wait(&shutdown).await;
                }
            }
        }
    }

    async fn consumer(&self) -> anyhow::Result<PullConsumer> {
        let settings = &self.lifecycle.settings;
        let stream = self
            .lifecycle
            .js
            .get_stream(&settings.timers_stream)
            .await
            .context("reading the timers stream")?;
        let name = settings.timers_consumer_name.clone();
        stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    name: Some(name.clone()),
                    description: Some(
                        "sessionfold processors: close sessions whose timer fired".to_owned(),
                    ),
                    filter_subject: self.lifecycle.subjects.timers_due_filter(),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::All,
                    ack_wait: DUE_ACK_WAIT,
                    // A timer is never given up: every step is retried.
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("creating consumer {name}"))
    }

    async fn consume(
        self: &Arc<Self>,
        consumer: PullConsumer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let messages = consumer
            .stream()
            .max_messages_per_batch(CLOSES_IN_FLIGHT)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        let mut messages = std::pin::pin!(messages.take_until(shutdown.cancelled()));
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                next = messages.next(), if in_flight.len() < CLOSES_IN_FLIGHT => match next {
                    None => break,
                    Some(Err(err)) => {
                        while in_flight.next().await.is_some() {}
                        anyhow::bail!("pull error: {err}");
                    }
                    Some(Ok(message)) => {
                        let closer = Arc::clone(self);
                        in_flight.push(async move { closer.settle(message).await });
                    }
                },
                else => break,
            }
        }
        while in_flight.next().await.is_some() {}
        Ok(())
    }

    async fn settle(&self, message: jetstream::Message) {
        let handled = self.handle(&message).await;
        let kind = match handled {
            Handled::Done => AckKind::Ack,
            Handled::Retry(delay) => AckKind::Nak(Some(delay)),
        };
        if let Err(err) = message.ack_with(kind).await {
            tracing::warn!(subject = %message.subject, error = %err, "settling a due note failed; it comes again after the ack wait");
        }
    }

    async fn handle(&self, message: &jetstream::Message) -> Handled {
        let Some(session) = self
            .lifecycle
            .subjects
            .session_of_timer_due(&message.subject)
        else {
            tracing::warn!(subject = %message.subject, "a due note that names no session; dropped");
            return Handled::Done;
        };
        let Ok(info) = message.info() else {
            tracing::warn!(subject = %message.subject, "a due note without JetStream metadata; dropped");
            return Handled::Done;
        };
        let now_ms = crate::worker::published_ms(&info);
        match self.close(&session, now_ms).await {
            Ok(handled) => handled,
            Err(err) => {
                tracing::warn!(session_id = %session, error = %err, "closing failed; retrying");
                Handled::Retry(Duration::from_secs(1))
            }
        }
    }

    async fn run_close(
        &self,
        session: &SessionId,
        args: [String; 4],
    ) -> Result<redis::Value, Outage> {
        let keys = self.keys.session(session);
        self.store
            .run_durably(
                &self.script,
                CLOSE_SCRIPT,
                &[
                    keys.doc.as_str(),
                    keys.state.as_str(),
                    keys.summary.as_str(),
                    keys.names.as_str(),
                ],
                &args,
            )
            .await
    }

    async fn close(&self, session: &SessionId, now_ms: u64) -> Result<Handled, String> {
        let spec = self.lifecycle.spec.to_arg();
        let reply = self
            .run_close(
                session,
                [
                    "due".to_owned(),
                    now_ms.to_string(),
                    String::new(),
                    spec.clone(),
                ],
            )
            .await
            .map_err(|err| err.to_string())?;
        let closing = Closing::parse(reply)?;
        tracing::debug!(session_id = %session, ?closing, "timer fired");
        match closing {
            Closing::Gone | Closing::Never => Ok(Handled::Done),
            Closing::Compacted => {
                self.mark_closed_for_good(session, "closed").await?;
                Ok(Handled::Done)
            }
            Closing::Later { due_ms, kind } => {
                self.lifecycle.schedule(session, due_ms, kind).await?;
                Ok(Handled::Done)
            }
            Closing::Closed {
                reason,
                revision,
                closed_at_ms,
                due_ms,
                compaction_due_ms,
                document,
            } => {
                if let Some(due_ms) = due_ms {
                    let lag_ms = unix_millis().saturating_sub(due_ms);
                    metrics::histogram!(names::TIMER_LAG_SECONDS).record(lag_ms as f64 / 1000.0);
                }
                let first_time = self
                    .publish_finished(session, &reason, revision, closed_at_ms, &document)
                    .await?;
                if first_time {
                    metrics::counter!(names::SESSIONS_CLOSED_TOTAL, "reason" => reason.clone())
                        .increment(1);
                    tracing::info!(session_id = %session, %reason, revision, "session closed");
                    self.announce_state(session, revision, &reason).await;
                }
                self.run_close(
                    session,
                    [
                        "published".to_owned(),
                        now_ms.to_string(),
                        revision.to_string(),
                        spec,
                    ],
                )
                .await
                .map_err(|err| err.to_string())?;
                self.lifecycle
                    .schedule(session, compaction_due_ms, TimerKind::Closed)
                    .await?;
                Ok(Handled::Done)
            }
            Closing::CompactedNow { reason, revision } => {
                tracing::debug!(session_id = %session, %reason, revision, "session compacted");
                self.mark_closed_for_good(session, &reason).await?;
                Ok(Handled::Done)
            }
        }
    }

    /// Stores the finished message; `true` when it was new (not a
    /// redelivered close's copy).
    async fn publish_finished(
        &self,
        session: &SessionId,
        reason: &str,
        revision: u64,
        closed_at_ms: u64,
        document: &[u8],
    ) -> Result<bool, String> {
        let max_payload = self.nats.server_info().max_payload;
        let (body, omitted) = finished_message(
            session,
            reason,
            revision,
            closed_at_ms,
            document,
            max_payload,
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{revision}", session.token()).as_str(),
        );
        if omitted {
            headers.insert(OMITTED_HEADER, document.len().to_string().as_str());
        }
        let duplicate = self
            .lifecycle
            .finished
            .publish(BatchMessage {
                subject: self.lifecycle.subjects.finished(session),
                headers,
                payload: body,
            })
            .await?;
        Ok(!duplicate)
    }

    /// Tells live views the session's state changed. Best effort.
    async fn announce_state(&self, session: &SessionId, revision: u64, state: &str) {
        let note = serde_json::json!({
            "session_id": session.as_str(),
            "written": 0,
            "revision": revision,
            "state": state,
        });
        if let Err(err) = self
            .nats
            .publish(self.subjects.update(session), note.to_string().into())
            .await
        {
            tracing::debug!(session_id = %session, error = %err, "state note not sent");
        }
    }

    async fn mark_closed_for_good(&self, session: &SessionId, reason: &str) -> Result<(), String> {
        self.lifecycle
            .closed_for_good
            .put(session.token(), Bytes::from(reason.to_owned()))
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}

/// Sets `sessionfold_sessions_open` every [`crate::lag::POLL_INTERVAL`]
/// until `shutdown`: the open sessions' timers, counted by a consumer on
/// their subjects that is never pulled (its pending count is theirs).
pub async fn poll_open_sessions(lifecycle: Lifecycle, shutdown: CancellationToken) {
    let settings = &lifecycle.settings;
    let name = format!("{}-open-count", settings.timers_consumer_name);
    let mut ticks = tokio::time::interval(crate::lag::POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let counted = async {
            let stream = lifecycle
                .js
                .get_stream(&settings.timers_stream)
                .await
                .map_err(|err| err.to_string())?;
            let mut consumer: PullConsumer = stream
                .get_or_create_consumer(
                    &name,
                    pull::Config {
                        durable_name: Some(name.clone()),
                        description: Some(
                            "counts the open sessions' timers; never pulled".to_owned(),
                        ),
                        filter_subject: lifecycle.subjects.open_timers_filter(),
                        ack_policy: AckPolicy::Explicit,
                        deliver_policy: DeliverPolicy::All,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|err| err.to_string())?;
            consumer
                .info()
                .await
                .map(|info| info.num_pending)
                .map_err(|err| err.to_string())
        };
        match counted.await {
            Ok(open) => metrics::gauge!(names::SESSIONS_OPEN).set(open as f64),
            Err(err) => tracing::debug!(error = %err, "counting open sessions failed"),
        }
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_time_is_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_796_145_229_282),
            "2026-12-01T17:13:49.282Z"
        );
    }

    #[test]
    fn a_finished_message_holds_the_document_when_it_fits() {
        let session = SessionId::parse("s-1").unwrap();
        let document = br#"{"session_id":"s-1","children":[]}"#;
        let (body, omitted) = finished_message(&session, "idle", 3, 1000, document, 1 << 20);
        assert!(!omitted);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"session_id": "s-1", "reason": "idle", "revision": 3,
                "closed_at": 1000, "document": {"session_id": "s-1", "children": []}})
        );
    }

    #[test]
    fn a_finished_message_leaves_out_a_document_the_server_would_refuse() {
        let session = SessionId::parse("s-1").unwrap();
        let document = vec![b' '; 4096];
        let (body, omitted) = finished_message(&session, "ended", 1, 5, &document, 4096);
        assert!(omitted);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["document"], serde_json::Value::Null);
        assert_eq!(parsed["reason"], "ended");
    }

    #[test]
    fn the_close_steps_answers_are_read_back() {
        use redis::Value::BulkString as B;
        let text = |s: &str| B(s.as_bytes().to_vec());
        assert_eq!(
            Closing::parse(redis::Value::Array(vec![text("gone")])),
            Ok(Closing::Gone)
        );
        assert_eq!(
            Closing::parse(redis::Value::Array(vec![
                text("later"),
                text("1500"),
                text("closed")
            ])),
            Ok(Closing::Later {
                due_ms: 1500,
                kind: TimerKind::Closed
            })
        );
        assert_eq!(
            Closing::parse(redis::Value::Array(vec![
                text("closed"),
                text("idle"),
                text("7"),
                text("2000"),
                text(""),
                text("5600"),
                text("{}"),
            ])),
            Ok(Closing::Closed {
                reason: "idle".to_owned(),
                revision: 7,
                closed_at_ms: 2000,
                due_ms: None,
                compaction_due_ms: 5600,
                document: b"{}".to_vec(),
            })
        );
        assert!(Closing::parse(redis::Value::Array(vec![text("what")])).is_err());
    }
}
