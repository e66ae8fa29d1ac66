//! The apply step and the close step against a model of the session
//! lifecycle (docs/design.md §10) written from the contract alone, on a real
//! Valkey with RedisJSON: seeded random interleavings of frames (new ones,
//! repeats of old events, redeliveries with their original arrival, frames
//! ending the session), timers firing at random times, finished messages
//! recorded as published or not, and the clock running past the lateness.
//! After every step the stored document must be, byte for byte, the
//! reference fold of exactly the frames the step took, and every answer
//! (taken, still closed, refused as late; closed, later, compacted) what
//! the model says.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use sessionfold_common::settings::RedisSettings;
use sessionfold_core::{Delivery, Frame, Keys, Limits, SeededRng, SessionId, fold};
use sessionfold_processor::lifecycle::Closing;
use sessionfold_processor::store::{
    Applied, CLOSE_SCRIPT, Invocation, LifecycleSpec, RedisStore, Store,
};
use sessionfold_testkit::{RedisServer, init_test_tracing, unique_name};

const SPEC: LifecycleSpec = LifecycleSpec {
    lateness_ms: 50,
    idle_ms: 30,
    grace_ms: 10,
    max_ms: 120,
};

/// The contract's lifecycle of one session, in the model's own terms.
#[derive(Debug, Default)]
struct Model {
    /// The frames the session took, in stream order.
    taken: Vec<Delivery>,
    first: Option<u64>,
    last: Option<u64>,
    ended: Option<u64>,
    /// Applies that changed the document.
    revision: u64,
    /// The close: reason, time, and whether its message was published.
    closed: Option<(String, u64, bool)>,
    compacted: bool,
}

impl Model {
    fn document(&self, session: &SessionId) -> String {
        serde_json::to_string(&fold(session.as_str(), &self.taken)).unwrap()
    }

    /// The due time and reason: the earliest of grace after the last
    /// arrival once ended, max after the first, idle after the last; ties
    /// go to ended, then max_duration.
    fn due(&self) -> Option<(u64, &'static str)> {
        let mut best: Option<(u64, &'static str)> = None;
        let mut consider = |at: Option<u64>, why| {
            if let Some(at) = at
                && best.is_none_or(|(due, _)| at < due)
            {
                best = Some((at, why));
            }
        };
        consider(
            self.ended.and(self.last).map(|l| l + SPEC.grace_ms),
            "ended",
        );
        consider(self.first.map(|f| f + SPEC.max_ms), "max_duration");
        consider(self.last.map(|l| l + SPEC.idle_ms), "idle");
        best
    }
}

#[derive(Debug, PartialEq)]
enum Took {
    Taken,
    StillClosed,
    Late,
}

fn frame(session: &SessionId, sequence: u64, text: &str) -> Delivery {
    Delivery {
        stream_sequence: sequence,
        events: Frame::parse(text, session, &Limits::default())
            .unwrap()
            .events,
    }
}

fn random_frame(rng: &mut SeededRng, session: &SessionId, sequence: u64) -> Delivery {
    let events: Vec<String> = (0..1 + rng.below(3))
        .map(|_| {
            let timestamp = rng.below(40);
            match rng.below(10) {
                0 => format!(r#"{{"type":"SESSION_START","timestamp":{timestamp}}}"#),
                1 => format!(r#"{{"type":"SESSION_END","timestamp":{timestamp}}}"#),
                _ => format!(
                    r#"{{"type":"EVENT","timestamp":{timestamp},"name":"n{}","id":"i{}"}}"#,
                    rng.below(3),
                    rng.below(8)
                ),
            }
        })
        .collect();
    frame(session, sequence, &format!("[{}]", events.join(",")))
}

fn has_end(delivery: &Delivery) -> bool {
    delivery
        .events
        .iter()
        .any(|e| e.kind == sessionfold_core::EventKind::SessionEnd)
}

async fn stored_document(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> String {
    let text: Option<String> = redis::cmd("JSON.GET")
        .arg(key)
        .query_async(redis)
        .await
        .unwrap();
    text.unwrap_or_default()
}

async fn close_step(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &sessionfold_core::SessionKeys,
    mode: &str,
    now: u64,
    revision: u64,
) -> redis::Value {
    redis::Script::new(CLOSE_SCRIPT)
        .key(&keys.doc)
        .key(&keys.state)
        .key(&keys.summary)
        .key(&keys.names)
        .arg(mode)
        .arg(now)
        .arg(revision)
        .arg(SPEC.to_arg())
        .invoke_async(redis)
        .await
        .unwrap()
}

/// How often each outcome came up, so that the test shows its schedules
/// reach every part of the lifecycle.
#[derive(Debug, Default)]
struct Seen {
    taken: u64,
    reopened: u64,
    still_closed: u64,
    late: u64,
    closed: u64,
    closed_again: u64,
    later: u64,
    compacted: u64,
}

/// One seeded run: `steps` random steps on one session.
async fn run(seed: u64, store: &RedisStore, redis_url: &str, steps: usize, seen: &mut Seen) {
    let mut rng = SeededRng::new(seed);
    let keys = Keys::new(format!("{}:", unique_name("lm")));
    let session = SessionId::parse("model session").unwrap();
    let session_keys = keys.session(&session);
    let mut redis = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut model = Model::default();
    let mut now: u64 = 1_000;
    let mut sequence = 0u64;
    // Every delivery made so far, with its arrival, for redeliveries.
    let mut delivered: Vec<(Delivery, u64)> = Vec::new();
    for step in 0..steps {
        let context = format!("seed {seed}, step {step}, model {model:?}");
        match rng.below(10) {
            // A frame: new, or a redelivery of an earlier one with its
            // original arrival.
            0..=4 => {
                let (delivery, arrival) = if !delivered.is_empty() && rng.chance(25) {
                    delivered[rng.index(delivered.len())].clone()
                } else {
                    sequence += 1;
                    let delivery = random_frame(&mut rng, &session, sequence);
                    delivered.push((delivery.clone(), now));
                    (delivery, now)
                };
                let end = has_end(&delivery).then_some(arrival);
                let invocation =
                    Invocation::new(&keys, &session, std::slice::from_ref(&delivery), 0)
                        .with_arrivals(arrival, arrival, end)
                        .with_lifecycle(Some(&SPEC));
                let applied = store.apply(&[invocation]).await.unwrap();
                let took = match &applied[..] {
                    [Applied::Stored(stored)] if stored.still_closed => Took::StillClosed,
                    [Applied::Stored(_)] => Took::Taken,
                    [Applied::Late(_)] => Took::Late,
                    other => panic!("{context}: unexpected answer {other:?}"),
                };
                // The model: refused past the lateness or once compacted;
                // for a closed session, a frame that changes nothing leaves
                // it closed; any other frame is taken.
                let mut with = model.taken.clone();
                if !with
                    .iter()
                    .any(|d| d.stream_sequence == delivery.stream_sequence)
                {
                    with.push(delivery.clone());
                    with.sort_by_key(|d| d.stream_sequence);
                }
                let changes = serde_json::to_string(&fold(session.as_str(), &with)).unwrap()
                    != model.document(&session);
                let expected = match &model.closed {
                    _ if model.compacted => Took::Late,
                    Some((_, at, _)) if arrival > at + SPEC.lateness_ms => Took::Late,
                    Some(_) if !changes => Took::StillClosed,
                    _ => Took::Taken,
                };
                assert_eq!(took, expected, "{context}: frame {delivery:?} at {arrival}");
                match took {
                    Took::Taken if model.closed.is_some() => seen.reopened += 1,
                    Took::Taken => seen.taken += 1,
                    Took::StillClosed => seen.still_closed += 1,
                    Took::Late => seen.late += 1,
                }
                if took == Took::Taken {
                    let fresh = model.first.is_none();
                    if changes || fresh {
                        model.revision += 1;
                    }
                    model.taken = with;
                    model.first = Some(model.first.map_or(arrival, |f| f.min(arrival)));
                    model.last = Some(model.last.map_or(arrival, |l| l.max(arrival)));
                    if let Some(end) = end {
                        model.ended = Some(model.ended.map_or(end, |e| e.max(end)));
                    }
                    model.closed = None;
                }
            }
            // The session's timer fires now.
            5..=7 => {
                let reply = close_step(&mut redis, &session_keys, "due", now, 0).await;
                let closing = Closing::parse(reply).unwrap();
                match (&mut model, closing) {
                    (m, Closing::Gone) => assert!(m.first.is_none(), "{context}"),
                    (m, Closing::Compacted) => assert!(m.compacted, "{context}"),
                    (m, Closing::Later { due_ms, .. }) => match (seen.later += 1, &m.closed).1 {
                        None => {
                            let (due, _) = m.due().unwrap();
                            assert!(due > now, "{context}: due {due} not after {now}");
                            assert_eq!(due_ms, due, "{context}");
                        }
                        Some((_, at, published)) => {
                            assert!(*published, "{context}");
                            assert_eq!(due_ms, at + SPEC.lateness_ms, "{context}");
                            assert!(due_ms > now, "{context}");
                        }
                    },
                    (
                        m,
                        Closing::Closed {
                            reason,
                            revision,
                            closed_at_ms,
                            document,
                            ..
                        },
                    ) => {
                        match &m.closed {
                            None => {
                                let (due, why) = m.due().unwrap();
                                assert!(due <= now, "{context}: closed before {due}");
                                assert_eq!(reason, why, "{context}");
                                assert_eq!(closed_at_ms, now, "{context}");
                                m.closed = Some((reason.clone(), now, false));
                                seen.closed += 1;
                            }
                            Some((why, at, published)) => {
                                // Again, until its message is recorded.
                                assert!(!published, "{context}");
                                seen.closed_again += 1;
                                assert_eq!(&reason, why, "{context}");
                                assert_eq!(closed_at_ms, *at, "{context}");
                            }
                        }
                        assert_eq!(revision, m.revision, "{context}");
                        assert_eq!(
                            String::from_utf8(document).unwrap(),
                            m.document(&session),
                            "{context}"
                        );
                    }
                    (m, Closing::CompactedNow { reason, revision }) => {
                        let (why, at, published) = m.closed.clone().unwrap();
                        assert!(published && now >= at + SPEC.lateness_ms, "{context}");
                        assert_eq!(reason, why, "{context}");
                        assert_eq!(revision, m.revision, "{context}");
                        m.compacted = true;
                        seen.compacted += 1;
                    }
                    (_, Closing::Never) => panic!("{context}: the settings always close"),
                }
            }
            // The finished message was stored (sometimes for an old revision).
            8 => {
                let revision = if rng.chance(20) {
                    model.revision.saturating_sub(1)
                } else {
                    model.revision
                };
                let recorded: i64 = redis::from_redis_value(
                    close_step(&mut redis, &session_keys, "published", now, revision).await,
                )
                .unwrap();
                let expect = match &mut model.closed {
                    Some((_, _, published)) if revision == model.revision => {
                        *published = true;
                        1
                    }
                    _ => 0,
                };
                assert_eq!(recorded, expect, "{context}: published {revision}");
            }
            // Time passes.
            _ => now += rng.below(40),
        }
        assert_eq!(
            stored_document(&mut redis, &session_keys.doc).await,
            if model.first.is_none() {
                String::new()
            } else {
                model.document(&session)
            },
            "{context}"
        );
    }
}

#[tokio::test]
async fn apply_and_close_steps_follow_the_lifecycle_model_in_any_interleaving() {
    init_test_tracing();
    let redis = RedisServer::start().unwrap();
    let store = RedisStore::connect(&RedisSettings::local(redis.url()))
        .await
        .unwrap();
    let seeds: u64 = std::env::var("LIFECYCLE_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut seen = Seen::default();
    for seed in 0..seeds {
        run(seed, &store, &redis.url(), 60, &mut seen).await;
    }
    let counts = [
        seen.taken,
        seen.reopened,
        seen.still_closed,
        seen.late,
        seen.closed,
        seen.closed_again,
        seen.later,
        seen.compacted,
    ];
    assert!(
        seeds < 50 || counts.iter().all(|&n| n >= 5),
        "the schedules miss part of the lifecycle: {seen:?}"
    );
    eprintln!("lifecycle model: {seen:?}");
}
