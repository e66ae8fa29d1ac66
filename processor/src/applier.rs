//! Applying one pulled batch through a [`Store`]: decode every message,
//! group them by session, apply, wait out outages, and find out which
//! frames Redis refuses on their own. The result is an [`Outcome`] per
//! message; settling them with JetStream is the worker's job
//! ([`crate::settle`] decides how).
//!
//! Nothing here touches NATS, so the decisions are unit-tested with an
//! in-memory store (see the tests below); the real-server tests exercise the
//! same code through the processor.

use bytes::Bytes;
use sessionfold_common::metrics as names;
use sessionfold_core::SessionId;
use sessionfold_core::{Keys, Subjects};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::batch;
use crate::settle::Outcome;
use crate::store::{Applied, Invocation, LifecycleSpec, Outage, Store, Stored};

/// One message as pulled from JetStream.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub subject: String,
    pub payload: Bytes,
    /// Its stream sequence, how often it has been delivered and when ingest
    /// stored it; `None` when
    /// the message carries no JetStream metadata (it is then poison: a fold
    /// position cannot be made up).
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub stream_sequence: u64,
    pub delivered: i64,
    /// When JetStream stored it (its arrival), in milliseconds since the
    /// Unix epoch.
    pub published_ms: u64,
}

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// One per message, in the batch's order.
    pub outcomes: Vec<Outcome>,
    /// Sessions whose frames were stored.
    pub stored_sessions: Vec<StoredSession>,
}

/// A session some of whose frames were stored.
#[derive(Debug)]
pub struct StoredSession {
    pub session: SessionId,
    /// The stored messages, as indices into the batch.
    pub messages: Vec<usize>,
    /// Each stored invocation and what it did, in the order they ran.
    pub applies: Vec<(Invocation, Stored)>,
    /// Its steps may have run more than once (the batch was retried after
    /// an outage, or the session's frames applied again one by one): a
    /// step that finds its work done does not say it armed the timer, so
    /// the timer must be scheduled whatever `armed` says.
    pub reapplied: bool,
}

impl StoredSession {
    /// The session's timer after its last apply.
    pub fn timer(&self) -> Option<crate::store::Timer> {
        let armed = self
            .applies
            .iter()
            .any(|(_, stored)| stored.timer.is_some_and(|timer| timer.armed));
        self.applies
            .last()
            .and_then(|(_, stored)| stored.timer)
            .map(|timer| crate::store::Timer { armed, ..timer })
    }
}

/// Builds invocations and applies them through a [`Store`].
#[derive(Clone)]
pub struct Applier<S> {
    pub store: S,
    /// Where the frames it decodes were published.
    pub subjects: Subjects,
    /// The keys it writes.
    pub keys: Keys,
    pub max_children: u64,
    /// Most EVENTs one apply step takes (0: a session's part of a batch in
    /// one step): a larger part is applied in slices.
    pub max_events_per_step: usize,
    /// Whether the apply step keeps the sessions' summaries (for
    /// `GET /sessions`).
    pub summaries: bool,
    pub document_ttl_secs: u64,
    /// When sessions close by themselves and how long after a closed one
    /// still takes frames (`None`: never, and always).
    pub lifecycle: Option<LifecycleSpec>,
}

impl<S: Store> Applier<S> {
    /// The invocations of `deliveries`, which arrived at `arrivals` (ms):
    /// one, or slices of a large part.
    fn invocations(
        &self,
        session: &SessionId,
        deliveries: &[sessionfold_core::Delivery],
        arrivals: &[u64],
    ) -> Vec<Invocation> {
        let first = arrivals.iter().copied().min().unwrap_or(0);
        let last = arrivals.iter().copied().max().unwrap_or(0);
        let session_end = deliveries
            .iter()
            .zip(arrivals)
            .filter(|(delivery, _)| {
                delivery
                    .events
                    .iter()
                    .any(|event| event.kind == sessionfold_core::EventKind::SessionEnd)
            })
            .map(|(_, arrival)| *arrival)
            .max();
        Invocation::slices(
            &self.keys,
            session,
            deliveries,
            self.max_children,
            self.max_events_per_step,
        )
        .into_iter()
        .map(|invocation| {
            let invocation = if self.summaries {
                invocation
            } else {
                invocation.without_summary()
            };
            invocation
                .with_document_ttl(self.document_ttl_secs)
                .with_arrivals(first, last, session_end)
                .with_lifecycle(self.lifecycle.as_ref())
        })
        .collect()
    }

    fn arrivals(batch: &[Pulled], messages: &[usize]) -> Vec<u64> {
        messages
            .iter()
            .map(|&index| batch[index].metadata.map_or(0, |m| m.published_ms))
            .collect()
    }

    /// Applies `batch` until it is stored or `shutdown` comes first. While
    /// Redis is out, `keep_alive` runs before every new attempt (the worker
    /// sends in-progress acks there, so the batch is not redelivered
    /// elsewhere meanwhile).
    pub async fn apply<F, K>(
        &self,
        batch: &[Pulled],
        mut keep_alive: K,
        shutdown: &CancellationToken,
    ) -> BatchOutcome
    where
        K: FnMut() -> F,
        F: Future<Output = ()>,
    {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut decoded = Vec::with_capacity(batch.len());
        for (index, pulled) in batch.iter().enumerate() {
            let Some(metadata) = pulled.metadata else {
                outcomes.push(Outcome::Poison(
                    "the message carries no JetStream metadata".to_owned(),
                ));
                continue;
            };
            match batch::decode(
                &self.subjects,
                &pulled.subject,
                &pulled.payload,
                metadata.stream_sequence,
            ) {
                Ok((session, delivery)) => {
                    outcomes.push(Outcome::NotStored);
                    decoded.push((index, session, delivery));
                }
                Err(poison) => outcomes.push(Outcome::Poison(poison.to_string())),
            }
        }
        let sessions: Vec<_> = batch::group(decoded).into_iter().collect();
        // Every session's invocations, in session order, all sent to Redis
        // at once; `slice_counts` says how many belong to each session.
        let mut invocations: Vec<Invocation> = Vec::with_capacity(sessions.len());
        let mut slice_counts = Vec::with_capacity(sessions.len());
        for (session, part) in &sessions {
            let slices = self.invocations(
                session,
                &part.deliveries,
                &Self::arrivals(batch, &part.messages),
            );
            slice_counts.push(slices.len());
            invocations.extend(slices);
        }

        let mut result = BatchOutcome {
            outcomes,
            stored_sessions: Vec::new(),
        };
        let Some((applied, attempts)) = self
            .apply_until_stored(&invocations, &mut keep_alive, shutdown)
            .await
        else {
            // Shutdown during an outage: everything decodable stays NotStored.
            return result;
        };
        let mut applied = applied.into_iter();
        let mut invocations = invocations.into_iter();
        for ((session, part), count) in sessions.iter().zip(slice_counts) {
            let slices: Vec<Invocation> = invocations.by_ref().take(count).collect();
            // A session's slices are stored, late or refused alike (they share
            // the batch's arrivals and bounds), except that a slice may be
            // refused after others were stored: then its frames are isolated.
            let answers: Vec<Applied> = applied.by_ref().take(slices.len()).collect();
            let refused = answers.iter().find_map(|answer| match answer {
                Applied::Refused(reason) => Some(reason.clone()),
                _ => None,
            });
            let late = answers.iter().find_map(|answer| match answer {
                Applied::Late(reason) => Some(reason.clone()),
                _ => None,
            });
            if let Some(reason) = refused {
                self.isolate_refusal(session, part, &reason, batch, &mut result, shutdown)
                    .await;
            } else if let Some(reason) = late {
                // Every frame of the part arrived at or after its earliest,
                // which is past the lateness already.
                for &index in &part.messages {
                    let stream_sequence = batch[index].metadata.map(|m| m.stream_sequence);
                    tracing::info!(session_id = %session, stream_sequence, %reason, "frame for a closed session");
                    result.outcomes[index] = Outcome::Late(reason.clone());
                }
            } else {
                let applies: Vec<(Invocation, crate::store::Stored)> = slices
                    .into_iter()
                    .zip(answers)
                    .filter_map(|(invocation, answer)| match answer {
                        Applied::Stored(stored) => Some((invocation, stored)),
                        _ => None,
                    })
                    .collect();
                let written: i64 = applies.iter().map(|(_, stored)| stored.written).sum();
                let revision = applies.last().map(|(_, stored)| stored.revision);
                tracing::debug!(session_id = %session, written, revision, frames = part.messages.len(), steps = applies.len(), "applied");
                for &index in &part.messages {
                    result.outcomes[index] = Outcome::Stored;
                }
                result.stored_sessions.push(StoredSession {
                    session: session.clone(),
                    messages: part.messages.clone(),
                    applies,
                    reapplied: attempts > 1,
                });
            }
        }
        result
    }

    /// Retries through outages until stored. `None` when shutdown came first.
    async fn apply_until_stored<F, K>(
        &self,
        invocations: &[Invocation],
        keep_alive: &mut K,
        shutdown: &CancellationToken,
    ) -> Option<(Vec<Applied>, u32)>
    where
        K: FnMut() -> F,
        F: Future<Output = ()>,
    {
        let mut backoff = Backoff::default();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.store.apply(invocations).await {
                Ok(applied) => return Some((applied, attempts)),
                Err(outage) => {
                    count_outage(&outage);
                    tracing::warn!(error = %outage, sessions = invocations.len(), "batch not stored; retrying it");
                    keep_alive().await;
                    if shutdown.is_cancelled() || !backoff.wait(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// A session's part was refused. Applies its frames one by one, in
    /// stream order (so that a frame that fits is not displaced by a later
    /// one), so that only the frames refused on their own are refused.
    async fn isolate_refusal(
        &self,
        session: &SessionId,
        part: &batch::SessionBatch,
        reason: &str,
        batch: &[Pulled],
        result: &mut BatchOutcome,
        shutdown: &CancellationToken,
    ) {
        let refuse = |result: &mut BatchOutcome, index: usize, reason: String| {
            let stream_sequence = batch[index].metadata.map(|m| m.stream_sequence);
            tracing::warn!(session_id = %session, stream_sequence, %reason, "Redis refused a frame");
            result.outcomes[index] = Outcome::Refused(reason);
        };
        if part.messages.len() == 1 {
            refuse(result, part.messages[0], reason.to_owned());
            return;
        }
        let mut stored_applies = Vec::new();
        let mut stored_messages = Vec::new();
        for (delivery, &index) in part.deliveries.iter().zip(&part.messages) {
            if shutdown.is_cancelled() {
                break;
            }
            let slices = self.invocations(
                session,
                std::slice::from_ref(delivery),
                &Self::arrivals(batch, &[index]),
            );
            match self.store.apply(&slices).await {
                Ok(applied) => {
                    if let Some(Applied::Refused(reason)) = applied
                        .iter()
                        .find(|answer| matches!(answer, Applied::Refused(_)))
                    {
                        refuse(result, index, reason.clone());
                    } else if let Some(Applied::Late(reason)) = applied
                        .iter()
                        .find(|answer| matches!(answer, Applied::Late(_)))
                    {
                        result.outcomes[index] = Outcome::Late(reason.clone());
                    } else {
                        result.outcomes[index] = Outcome::Stored;
                        stored_messages.push(index);
                        for (invocation, answer) in slices.into_iter().zip(applied) {
                            if let Applied::Stored(stored) = answer {
                                stored_applies.push((invocation, stored));
                            }
                        }
                    }
                }
                // An outage: this frame and the rest stay NotStored.
                Err(outage) => {
                    count_outage(&outage);
                    break;
                }
            }
        }
        if !stored_applies.is_empty() {
            result.stored_sessions.push(StoredSession {
                session: session.clone(),
                messages: stored_messages,
                applies: stored_applies,
                reapplied: true,
            });
        }
    }
}

fn count_outage(outage: &Outage) {
    match outage {
        Outage::Unreachable(_) => metrics::counter!(names::REDIS_OUTAGES_TOTAL).increment(1),
        Outage::NotDurable(_) => metrics::counter!(names::NOT_DURABLE_TOTAL).increment(1),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;

    type Reply = Result<Vec<Applied>, Outage>;

    /// A store that answers from a script of replies and records every call.
    #[derive(Clone, Default)]
    struct ScriptedStore {
        replies: Arc<Mutex<VecDeque<Reply>>>,
        calls: Arc<Mutex<Vec<Vec<Invocation>>>>,
    }

    impl ScriptedStore {
        fn answering(replies: Vec<Reply>) -> Self {
            Self {
                replies: Arc::new(Mutex::new(replies.into())),
                ..Self::default()
            }
        }

        fn calls(&self) -> Vec<Vec<Invocation>> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Store for ScriptedStore {
        async fn apply(&self, invocations: &[Invocation]) -> Result<Vec<Applied>, Outage> {
            self.calls.lock().unwrap().push(invocations.to_vec());
            self.replies.lock().unwrap().pop_front().unwrap_or_else(|| {
                Ok(invocations
                    .iter()
                    .map(|_| Applied::Stored(Stored::default()))
                    .collect())
            })
        }
    }

    fn applier(store: ScriptedStore) -> Applier<ScriptedStore> {
        Applier {
            store,
            subjects: Subjects::default(),
            keys: Keys::default(),
            max_children: 0,
            max_events_per_step: 0,
            summaries: true,
            document_ttl_secs: 0,
            lifecycle: None,
        }
    }

    fn pulled(session: &str, sequence: u64, body: &str) -> Pulled {
        Pulled {
            subject: Subjects::default().event(&SessionId::parse(session).unwrap()),
            payload: Bytes::from(body.to_owned()),
            metadata: Some(Metadata {
                stream_sequence: sequence,
                delivered: 1,
                published_ms: 1_700_000_000_000 + sequence,
            }),
        }
    }

    const EVENT: &str = r#"[{"type":"EVENT","timestamp":1}]"#;

    #[tokio::test]
    async fn one_invocation_per_session_and_every_message_stored() {
        let store = ScriptedStore::default();
        let batch = [
            pulled("a", 1, EVENT),
            pulled("b", 2, EVENT),
            pulled("a", 3, EVENT),
        ];
        let outcome = applier(store.clone())
            .apply(&batch, || async {}, &CancellationToken::new())
            .await;
        assert_eq!(outcome.outcomes, vec![Outcome::Stored; 3]);
        assert_eq!(store.calls().len(), 1);
        assert_eq!(store.calls()[0].len(), 2, "one invocation per session");
        let sessions: Vec<_> = outcome
            .stored_sessions
            .iter()
            .map(|stored| stored.session.as_str().to_owned())
            .collect();
        assert_eq!(sessions, ["a", "b"]);
    }

    #[tokio::test]
    async fn poison_and_messages_without_metadata_are_not_applied() {
        let store = ScriptedStore::default();
        let mut no_metadata = pulled("a", 1, EVENT);
        no_metadata.metadata = None;
        let batch = [
            no_metadata,
            pulled("a", 2, "[1]"),
            Pulled {
                subject: "elsewhere.x".to_owned(),
                ..pulled("a", 3, EVENT)
            },
            pulled("a", 4, EVENT),
        ];
        let outcome = applier(store.clone())
            .apply(&batch, || async {}, &CancellationToken::new())
            .await;
        assert!(matches!(&outcome.outcomes[0], Outcome::Poison(r) if r.contains("metadata")));
        assert!(matches!(&outcome.outcomes[1], Outcome::Poison(_)));
        assert!(matches!(&outcome.outcomes[2], Outcome::Poison(_)));
        assert_eq!(outcome.outcomes[3], Outcome::Stored);
        // Only the good frame reached the store, with its own position.
        let calls = store.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].len(), 1);
        let positions = &calls[0][0].args[6];
        assert_eq!(&positions[..8], &crate::store::position_bytes(4, 0));
    }

    #[tokio::test]
    async fn outages_are_retried_with_keep_alives_until_stored() {
        let store = ScriptedStore::answering(vec![
            Err(Outage::Unreachable("down".to_owned())),
            Err(Outage::NotDurable("WAITAOF: not fsynced".to_owned())),
        ]);
        let keep_alives = Arc::new(Mutex::new(0));
        let counter = keep_alives.clone();
        let outcome = applier(store.clone())
            .apply(
                &[pulled("a", 1, EVENT)],
                || {
                    *counter.lock().unwrap() += 1;
                    async {}
                },
                &CancellationToken::new(),
            )
            .await;
        assert_eq!(outcome.outcomes, vec![Outcome::Stored]);
        assert_eq!(store.calls().len(), 3, "the same batch, three times");
        assert_eq!(*keep_alives.lock().unwrap(), 2);
        // The steps may have run before: the timer is scheduled whatever
        // the last run says it armed.
        assert!(outcome.stored_sessions[0].reapplied);
    }

    #[tokio::test]
    async fn a_batch_stored_at_the_first_attempt_is_not_reapplied() {
        let store = ScriptedStore::answering(vec![Ok(vec![Applied::Stored(Stored::default())])]);
        let outcome = applier(store)
            .apply(
                &[pulled("a", 1, EVENT)],
                || async {},
                &CancellationToken::new(),
            )
            .await;
        assert_eq!(outcome.outcomes, vec![Outcome::Stored]);
        assert!(!outcome.stored_sessions[0].reapplied);
    }

    #[tokio::test]
    async fn a_shutdown_during_an_outage_stores_nothing() {
        let store = ScriptedStore::answering(vec![Err(Outage::Unreachable("down".to_owned()))]);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let outcome = applier(store)
            .apply(&[pulled("a", 1, EVENT)], || async {}, &shutdown)
            .await;
        assert_eq!(outcome.outcomes, vec![Outcome::NotStored]);
        assert!(outcome.stored_sessions.is_empty());
    }

    #[tokio::test]
    async fn a_large_part_goes_in_slices_whose_answers_are_told_apart_per_session() {
        let five = r#"[{"type":"EVENT","timestamp":5},{"type":"EVENT","timestamp":4},{"type":"EVENT","timestamp":3},{"type":"EVENT","timestamp":2},{"type":"EVENT","timestamp":1}]"#;
        let store = ScriptedStore::answering(vec![Ok(vec![
            // a's three slices, b's one (late), c's two (the second refused).
            Applied::Stored(Stored::default()),
            Applied::Stored(Stored::default()),
            Applied::Stored(Stored::default()),
            Applied::Late("session_closed: past its lateness".to_owned()),
            Applied::Stored(Stored::default()),
            Applied::Refused("SESSIONFOLD_CORRUPT".to_owned()),
        ])]);
        let batch = [
            pulled("a", 1, five),
            pulled("b", 2, EVENT),
            pulled(
                "c",
                3,
                r#"[{"type":"EVENT","timestamp":1},{"type":"EVENT","timestamp":2},{"type":"EVENT","timestamp":3}]"#,
            ),
        ];
        let mut applier = applier(store.clone());
        applier.max_events_per_step = 2;
        let outcome = applier
            .apply(&batch, || async {}, &CancellationToken::new())
            .await;
        let calls = store.calls();
        assert_eq!(calls[0].len(), 3 + 1 + 2, "slices of at most 2 EVENTs");
        assert!(calls[0].iter().all(|slice| slice.children() <= 2));
        assert_eq!(outcome.outcomes[0], Outcome::Stored);
        assert_eq!(
            outcome.outcomes[1],
            Outcome::Late("session_closed: past its lateness".to_owned())
        );
        // c alone in its part: refused without isolating frames.
        assert_eq!(
            outcome.outcomes[2],
            Outcome::Refused("SESSIONFOLD_CORRUPT".to_owned())
        );
        assert_eq!(outcome.stored_sessions.len(), 1);
        assert_eq!(outcome.stored_sessions[0].applies.len(), 3);
    }

    #[tokio::test]
    async fn a_refused_session_is_retried_frame_by_frame_to_find_the_culprit() {
        let store = ScriptedStore::answering(vec![
            // The whole session part: refused.
            Ok(vec![Applied::Refused("SESSIONFOLD_FULL".to_owned())]),
            // Then frame by frame: the first fits, the second does not.
            Ok(vec![Applied::Stored(Stored::default())]),
            Ok(vec![Applied::Refused("SESSIONFOLD_FULL".to_owned())]),
        ]);
        let batch = [pulled("a", 1, EVENT), pulled("a", 2, EVENT)];
        let outcome = applier(store.clone())
            .apply(&batch, || async {}, &CancellationToken::new())
            .await;
        assert_eq!(outcome.outcomes[0], Outcome::Stored);
        assert_eq!(
            outcome.outcomes[1],
            Outcome::Refused("SESSIONFOLD_FULL".to_owned())
        );
        assert_eq!(store.calls().len(), 3);
        assert_eq!(outcome.stored_sessions.len(), 1);
    }

    #[tokio::test]
    async fn an_outage_while_isolating_leaves_the_rest_not_stored() {
        let store = ScriptedStore::answering(vec![
            Ok(vec![Applied::Refused("SESSIONFOLD_FULL".to_owned())]),
            Err(Outage::Unreachable("down".to_owned())),
        ]);
        let batch = [pulled("a", 1, EVENT), pulled("a", 2, EVENT)];
        let outcome = applier(store)
            .apply(&batch, || async {}, &CancellationToken::new())
            .await;
        assert_eq!(outcome.outcomes, vec![Outcome::NotStored; 2]);
    }
}
