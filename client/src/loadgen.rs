//! A deterministic load generator: [`Workload::generate`] builds, from a
//! seed, N sessions × F frames × E events with timestamps partly out of
//! order, repeated events (same content, same `id`, or the same content with
//! its fields in another order), `SESSION_START`/`SESSION_END` in the middle
//! of frames (sometimes more than one, sometimes none); [`run`] sends every
//! session at once over its own [`SessionSender`](crate::producer::SessionSender),
//! with bounded concurrency, and records for each session the frames that
//! were acknowledged, in acknowledgement order — the input of the reference
//! fold ([`SessionResult::acked_frames`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sessionfold_core::SeededRng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::producer::{Counters, FrameOutcome, Producer};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The same seed gives the same workload, byte for byte.
    pub seed: u64,
    pub sessions: usize,
    pub frames_per_session: usize,
    /// `EVENT`s per frame; `SESSION_START`/`SESSION_END` come on top.
    pub events_per_frame: usize,
    /// Session ids start with it.
    pub session_prefix: String,
    /// Percent of new events whose timestamp goes back up to 40 s.
    pub out_of_order_percent: u64,
    /// Percent of events that repeat an earlier event of the session
    /// exactly (a resend).
    pub repeated_percent: u64,
    /// Percent that repeat one with its fields in reverse order.
    pub reordered_repeat_percent: u64,
    /// Percent that send an event with an `id` again under another name.
    pub resent_id_percent: u64,
}

impl WorkloadSpec {
    pub fn new(
        seed: u64,
        sessions: usize,
        frames_per_session: usize,
        events_per_frame: usize,
    ) -> Self {
        Self {
            seed,
            sessions,
            frames_per_session,
            events_per_frame,
            session_prefix: "load".to_owned(),
            out_of_order_percent: 25,
            repeated_percent: 8,
            reordered_repeat_percent: 2,
            resent_id_percent: 2,
        }
    }

    /// Browser traffic: `sessions` × 10 frames × 3 EVENTs, a tenth of the
    /// events out of order and a few (3 %) resent exactly.
    pub fn web_mix(seed: u64, sessions: usize) -> Self {
        Self {
            session_prefix: "web".to_owned(),
            out_of_order_percent: 10,
            repeated_percent: 3,
            reordered_repeat_percent: 0,
            resent_id_percent: 0,
            ..Self::new(seed, sessions, 10, 3)
        }
    }
}

/// One session's frames, in sending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLoad {
    pub session_id: String,
    pub frames: Vec<String>,
    /// Events (of every type) in each frame.
    pub events_per_frame: Vec<usize>,
}

/// A generated workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub spec: WorkloadSpec,
    pub sessions: Vec<SessionLoad>,
}

impl Workload {
    /// Generates the workload of `spec`. Per session (with its own stream of
    /// random numbers derived from the seed, so sessions do not depend on
    /// each other):
    ///
    /// - timestamps rise by one per event from a per-session base, but a
    ///   quarter of the events go back up to 40 s (out of order, often into
    ///   an earlier frame's range), and some are fractional;
    /// - about 8 % of the events repeat an earlier event of the session
    ///   exactly, 2 % repeat one with its fields in reverse order (the same
    ///   canonical content), and events with an `id` are sometimes sent again
    ///   with the same `id` and another name (de-duplicated by `id`);
    /// - `SESSION_START` sits in the middle of the first frame, and in a
    ///   fifth of the sessions a later, larger one too; `SESSION_END` sits in
    ///   the middle of the last frame, in a tenth of the sessions also an
    ///   earlier, smaller one in a middle frame (the server then closes the
    ///   connection mid-session), and a twentieth of the sessions never end;
    /// - every fiftieth session id has characters that must be escaped in
    ///   NATS subjects and Redis keys.
    pub fn generate(spec: &WorkloadSpec) -> Self {
        let sessions = (0..spec.sessions)
            .map(|index| generate_session(spec, index))
            .collect();
        Self {
            spec: spec.clone(),
            sessions,
        }
    }

    pub fn frames(&self) -> usize {
        self.sessions.iter().map(|s| s.frames.len()).sum()
    }

    /// Events of every type, over all frames.
    pub fn events(&self) -> usize {
        self.sessions.iter().flat_map(|s| &s.events_per_frame).sum()
    }
}

fn generate_session(spec: &WorkloadSpec, index: usize) -> SessionLoad {
    let mut rng = SeededRng::new(spec.seed ^ (index as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
    let session_id = if index % 50 == 49 {
        format!("{}.odd {index}*>{{x}}_", spec.session_prefix)
    } else {
        format!("{}-{:016x}-{index:05}", spec.session_prefix, spec.seed)
    };
    let base = 1_700_000_000 + index as u64 * 100_000;
    let frames_total = spec.frames_per_session;
    let never_ends = rng.chance(5);
    let early_end_frame = (frames_total > 2 && rng.chance(10))
        .then(|| 1 + rng.below(frames_total as u64 - 2) as usize);
    let second_start_frame = (frames_total > 1 && rng.chance(20))
        .then(|| 1 + rng.below(frames_total as u64 - 1) as usize);
    let mut history: Vec<Map<String, Value>> = Vec::new();
    let mut ordinal: u64 = 0;
    let mut frames = Vec::with_capacity(frames_total);
    let mut counts = Vec::with_capacity(frames_total);
    for f in 0..frames_total {
        let mut events: Vec<Value> = Vec::with_capacity(spec.events_per_frame + 2);
        for _ in 0..spec.events_per_frame {
            ordinal += 1;
            let roll = rng.below(100);
            let reordered_below = spec.repeated_percent + spec.reordered_repeat_percent;
            let resent_id_below = reordered_below + spec.resent_id_percent;
            let event = if roll < spec.repeated_percent && !history.is_empty() {
                let earlier = &history[rng.below(history.len() as u64) as usize];
                Value::Object(earlier.clone())
            } else if roll < reordered_below && !history.is_empty() {
                let earlier = &history[rng.below(history.len() as u64) as usize];
                let mut reversed = Map::new();
                for (key, value) in earlier.iter().rev() {
                    reversed.insert(key.clone(), value.clone());
                }
                Value::Object(reversed)
            } else if roll < resent_id_below && history.iter().any(|e| e.contains_key("id")) {
                let with_id: Vec<_> = history.iter().filter(|e| e.contains_key("id")).collect();
                let earlier = with_id[rng.below(with_id.len() as u64) as usize];
                let mut again = earlier.clone();
                again.insert("name".to_owned(), json!("sent_again"));
                Value::Object(again)
            } else {
                let event = new_event(&mut rng, spec, &session_id, base, ordinal);
                history.push(event.clone());
                Value::Object(event)
            };
            events.push(event);
        }
        let middle = events.len() / 2;
        let last_timestamp = base + ordinal + 5;
        if f == 0 {
            events.insert(middle, json!({"type": "SESSION_START", "timestamp": base}));
        }
        if second_start_frame == Some(f) {
            events.insert(
                middle,
                json!({"type": "SESSION_START", "timestamp": base + ordinal}),
            );
        }
        if early_end_frame == Some(f) {
            events.insert(
                middle,
                json!({"type": "SESSION_END", "timestamp": base + ordinal}),
            );
        }
        if f + 1 == frames_total && !never_ends {
            events.insert(
                middle,
                json!({"type": "SESSION_END", "timestamp": last_timestamp}),
            );
        }
        counts.push(events.len());
        frames.push(Value::Array(events).to_string());
    }
    SessionLoad {
        session_id,
        frames,
        events_per_frame: counts,
    }
}

fn new_event(
    rng: &mut SeededRng,
    spec: &WorkloadSpec,
    session_id: &str,
    base: u64,
    ordinal: u64,
) -> Map<String, Value> {
    let mut timestamp = json!(base + ordinal);
    if rng.chance(spec.out_of_order_percent) {
        let back = rng.below(40);
        timestamp = json!((base + ordinal).saturating_sub(back));
    }
    if rng.chance(10) {
        let whole = timestamp.as_u64().expect("an integer timestamp");
        timestamp = json!(whole as f64 + [0.25, 0.5, 0.75][rng.below(3) as usize]);
    }
    let mut event = Map::new();
    event.insert("type".to_owned(), json!("EVENT"));
    event.insert("timestamp".to_owned(), timestamp);
    event.insert("name".to_owned(), json!(format!("event_{ordinal}")));
    if rng.chance(30) {
        event.insert("id".to_owned(), json!(format!("e{ordinal}")));
    }
    if rng.chance(20) {
        event.insert(
            "props".to_owned(),
            json!({"page": format!("/p/{}", rng.below(20)), "n": rng.below(1000), "tags": ["a", "b"]}),
        );
    }
    if rng.chance(10) {
        event.insert("session_id".to_owned(), json!(session_id));
    }
    event
}

/// How to run a workload.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Sessions sending at once, each over its own connection.
    pub concurrency: usize,
    /// Each session waits a random time up to this before each frame, which
    /// spreads the load over time; zero sends as fast as acks come back.
    pub max_pause: Duration,
    /// Seeds the pauses.
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            concurrency: 500,
            max_pause: Duration::ZERO,
            seed: 1,
        }
    }
}

/// What became of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionResult {
    pub session_id: String,
    /// Indexes of the acknowledged frames, in acknowledgement order.
    pub acked: Vec<usize>,
    /// Frames refused for their content: index and error code.
    pub rejected: Vec<(usize, String)>,
    /// Why the session stopped before its last frame, if it did.
    pub error: Option<String>,
    pub counters: Counters,
}

impl SessionResult {
    /// The acknowledged frames' texts, in acknowledgement order.
    pub fn acked_frames<'a>(&self, load: &'a SessionLoad) -> Vec<&'a str> {
        self.acked
            .iter()
            .map(|&i| load.frames[i].as_str())
            .collect()
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// One per session, in the workload's order.
    pub sessions: Vec<SessionResult>,
    /// Sum over the sessions.
    pub totals: Counters,
    /// Events (of every type) in acknowledged frames.
    pub events_acked: usize,
    pub elapsed: Duration,
}

impl LoadReport {
    /// Sessions that stopped early.
    pub fn failures(&self) -> impl Iterator<Item = &SessionResult> {
        self.sessions.iter().filter(|s| s.error.is_some())
    }
}

/// Sends every session of `workload` through `producer`, at most
/// `options.concurrency` at once, each session's frames one after another.
pub async fn run(workload: &Workload, producer: &Producer, options: &LoadOptions) -> LoadReport {
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (index, load) in workload.sessions.iter().enumerate() {
        let permits = permits.clone();
        let producer = producer.clone();
        let load = load.clone();
        let max_pause = options.max_pause;
        let mut rng =
            SeededRng::new(options.seed ^ (index as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .expect("the semaphore stays open");
            let result = send_session(&producer, &load, max_pause, &mut rng).await;
            (index, result)
        });
    }
    let mut results: Vec<Option<SessionResult>> = vec![None; workload.sessions.len()];
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = joined.expect("a session task panicked");
        results[index] = Some(result);
    }
    let sessions: Vec<SessionResult> = results
        .into_iter()
        .map(|r| r.expect("every session ran"))
        .collect();
    let mut totals = Counters::default();
    let mut events_acked = 0;
    for (result, load) in sessions.iter().zip(&workload.sessions) {
        totals += result.counters;
        events_acked += result
            .acked
            .iter()
            .map(|&i| load.events_per_frame[i])
            .sum::<usize>();
    }
    LoadReport {
        sessions,
        totals,
        events_acked,
        elapsed: started.elapsed(),
    }
}

async fn send_session(
    producer: &Producer,
    load: &SessionLoad,
    max_pause: Duration,
    rng: &mut SeededRng,
) -> SessionResult {
    let mut result = SessionResult {
        session_id: load.session_id.clone(),
        acked: Vec::with_capacity(load.frames.len()),
        rejected: Vec::new(),
        error: None,
        counters: Counters::default(),
    };
    let mut sender = match producer.session(&load.session_id) {
        Ok(sender) => sender,
        Err(err) => {
            result.error = Some(format!("invalid session id: {err}"));
            return result;
        }
    };
    for (index, frame) in load.frames.iter().enumerate() {
        if !max_pause.is_zero() {
            let pause = max_pause.mul_f64(rng.below(1001) as f64 / 1000.0);
            tokio::time::sleep(pause).await;
        }
        match sender.send_frame(frame).await {
            Ok(FrameOutcome::Accepted { .. }) => result.acked.push(index),
            Ok(FrameOutcome::Rejected(error)) => result
                .rejected
                .push((index, error.code.as_str().to_owned())),
            Err(err) => {
                result.error = Some(format!("frame {index}: {err}"));
                break;
            }
        }
    }
    result.counters = sender.counters();
    sender.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionfold_core::{Frame, Limits, SessionId};

    #[test]
    fn the_same_seed_gives_the_same_workload() {
        let spec = WorkloadSpec::new(7, 60, 5, 8);
        assert_eq!(Workload::generate(&spec), Workload::generate(&spec));
        let other = WorkloadSpec::new(8, 60, 5, 8);
        assert_ne!(
            Workload::generate(&spec).sessions,
            Workload::generate(&other).sessions
        );
    }

    #[test]
    fn every_frame_is_valid_and_the_mix_is_there() {
        let workload = Workload::generate(&WorkloadSpec::new(42, 100, 6, 10));
        assert_eq!(workload.frames(), 600);
        assert!(workload.events() >= 6000);
        let (mut starts, mut ends, mut repeats, mut out_of_order, mut fractional) = (0, 0, 0, 0, 0);
        let mut odd_ids = 0;
        for session in &workload.sessions {
            let id = SessionId::parse(&session.session_id).unwrap();
            if id.token() != session.session_id {
                odd_ids += 1;
            }
            let mut seen = std::collections::HashSet::new();
            let mut previous = 0.0;
            for (frame, count) in session.frames.iter().zip(&session.events_per_frame) {
                let parsed = Frame::parse(frame, &id, &Limits::default()).unwrap();
                assert_eq!(parsed.events.len(), *count);
                for event in parsed.events {
                    match event.kind {
                        sessionfold_core::EventKind::SessionStart => starts += 1,
                        sessionfold_core::EventKind::SessionEnd => ends += 1,
                        sessionfold_core::EventKind::Event => {
                            if !seen.insert(event.identity()) {
                                repeats += 1;
                            }
                            if event.timestamp < previous {
                                out_of_order += 1;
                            }
                            if event.timestamp.fract() != 0.0 {
                                fractional += 1;
                            }
                            previous = event.timestamp;
                        }
                    }
                }
            }
        }
        assert!(starts >= 100 && ends >= 80, "{starts} starts, {ends} ends");
        assert!(repeats > 300, "{repeats} repeats");
        assert!(out_of_order > 600, "{out_of_order} out of order");
        assert!(fractional > 100, "{fractional} fractional");
        assert_eq!(odd_ids, 2);
    }

    #[test]
    fn the_web_mix_is_small_frames_a_tenth_out_of_order_a_few_resent() {
        let workload = Workload::generate(&WorkloadSpec::web_mix(6, 400));
        assert_eq!(workload.frames(), 4000);
        let (mut events, mut out_of_order, mut repeats) = (0, 0, 0);
        for session in &workload.sessions {
            assert!(session.session_id.starts_with("web"));
            let id = SessionId::parse(&session.session_id).unwrap();
            let mut seen = std::collections::HashSet::new();
            let mut latest = 0.0_f64;
            for frame in &session.frames {
                for event in Frame::parse(frame, &id, &Limits::default()).unwrap().events {
                    if event.kind != sessionfold_core::EventKind::Event {
                        continue;
                    }
                    events += 1;
                    if !seen.insert(event.identity()) {
                        repeats += 1;
                    } else if event.timestamp < latest {
                        out_of_order += 1;
                    }
                    latest = latest.max(event.timestamp);
                }
            }
        }
        assert_eq!(events, 400 * 10 * 3);
        let percent = |n: usize| 100.0 * n as f64 / events as f64;
        assert!(
            (6.0..14.0).contains(&percent(out_of_order)),
            "{out_of_order} out of order"
        );
        assert!((1.0..5.0).contains(&percent(repeats)), "{repeats} repeats");
    }

    #[test]
    fn session_markers_sit_inside_frames() {
        let workload = Workload::generate(&WorkloadSpec::new(3, 20, 3, 6));
        for session in &workload.sessions {
            let first: Vec<Value> = serde_json::from_str(&session.frames[0]).unwrap();
            assert_eq!(first[3]["type"], "SESSION_START");
        }
    }
}
