//! The adversarial-producer model test (`faults/tests/adversary.rs`,
//! docs/faults.md): many misbehaving producers ([`producer`]) send the
//! events of a seeded [`plan`] while a seeded [`schedule`] of faults strikes
//! the system; then [`check`] holds the producers' ledgers, the event stream
//! and the served documents against the contract and an [`oracle`] written
//! for this test.
//!
//! One seed names a run: the sessions, the events, every producer's
//! behaviour and the faults. The interleaving of the producers with each
//! other and with the faults is left to the machine, so a seed repeats the
//! attack, not every moment of it.
//!
//! Knobs (environment): `ADVERSARY_SEED` (the seed of the random-seed run),
//! `ADVERSARY_SESSIONS`, `ADVERSARY_EVENTS` (about this many per session),
//! `ADVERSARY_SECONDS` (how long the load is spread over; the faults fill
//! it).

pub mod check;
pub mod oracle;
pub mod plan;
pub mod producer;
pub mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sessionfold_harness::SystemUnderTest;
use tokio::time::Instant;

use crate::{System, SystemOptions};
use check::{Documents, Ledger};
use plan::{Plan, PlanSize};
use producer::{Behaviour, FrameLimits, ProducerReport};

/// The size of a run.
#[derive(Debug, Clone, Copy)]
pub struct RunSize {
    pub sessions: usize,
    pub events_per_session: usize,
    /// How long the producers spread their work over.
    pub load: Duration,
}

impl RunSize {
    /// `default`, with what `ADVERSARY_SESSIONS`, `ADVERSARY_EVENTS` and
    /// `ADVERSARY_SECONDS` say instead.
    pub fn from_env(default: RunSize) -> Self {
        let read = |name: &str| -> Option<u64> {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|n| *n > 0)
        };
        Self {
            sessions: read("ADVERSARY_SESSIONS").map_or(default.sessions, |n| n as usize),
            events_per_session: read("ADVERSARY_EVENTS")
                .map_or(default.events_per_session, |n| n as usize),
            load: read("ADVERSARY_SECONDS").map_or(default.load, Duration::from_secs),
        }
    }
}

/// The limits ingest runs with: small, so that frames at and over them are
/// cheap to make.
pub const LIMITS: FrameLimits = FrameLimits {
    frame_bytes: 16_384,
    events_per_frame: 50,
    event_bytes: 2_048,
};

/// Processor replicas on the one durable consumer.
const PROCESSORS: usize = 2;
/// How long the processors may take to drain the stream after the load.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the documents may take to equal the oracle's once the stream
/// is drained (a repair after Redis came back behind included).
const DOCUMENTS_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a producer may go on after the load's time to get everything
/// stored.
const PRODUCER_GRACE: Duration = Duration::from_secs(120);

/// What one run found.
pub struct RunReport {
    pub seed: u64,
    pub size: RunSize,
    pub session_ids: Vec<String>,
    pub producers: usize,
    pub events_planned: usize,
    pub faults: Vec<String>,
    pub ledger: Ledger,
    pub documents: Documents,
    pub frames: Vec<producer::SentFrame>,
    pub connections: u64,
    pub connect_failures: u64,
    pub dropped_in_flight: u64,
    pub polite_closes: u64,
    pub server_closes: BTreeMap<String, usize>,
    pub reply_timeouts: u64,
    pub unfinished_events: usize,
    pub dead_letters: u64,
    pub repairs_logged: usize,
    pub load_duration: Duration,
    pub drain_duration: Duration,
    pub duration: Duration,
}

/// Runs the attack of `seed` at `size` on a fresh system and checks it.
pub async fn run(seed: u64, size: RunSize) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let options = SystemOptions {
        processors: PROCESSORS,
        api: true,
        ingest_env: vec![
            ("MAX_FRAME_BYTES".to_owned(), LIMITS.frame_bytes.to_string()),
            (
                "MAX_EVENTS_PER_FRAME".to_owned(),
                LIMITS.events_per_frame.to_string(),
            ),
            ("MAX_EVENT_BYTES".to_owned(), LIMITS.event_bytes.to_string()),
        ],
        ..SystemOptions::default()
    };
    let mut system = System::start(options).await?;
    let plan = Arc::new(Plan::generate(
        seed,
        PlanSize {
            sessions: size.sessions,
            events_per_session: size.events_per_session,
        },
    ));
    let steps = schedule::schedule(seed, size.load, PROCESSORS);
    // About one action per 3.5 events; reconnects, resends and replies
    // take about as long again as the pauses.
    let mean_events = plan.events() as f64 / plan.producers.len().max(1) as f64;
    let actions = (mean_events / 3.5).max(1.0) * 3.0;
    let pace = Duration::from_secs_f64(size.load.as_secs_f64() / actions);
    let load_started = Instant::now();
    let behaviour = Arc::new(Behaviour {
        endpoint: format!("ws://{}/websocket", system.ingest_addr),
        limits: LIMITS,
        pace,
        deadline: load_started + size.load + PRODUCER_GRACE,
        reply_timeout: Duration::from_secs(8),
        session_ids: plan.session_ids.clone(),
    });
    let tasks: Vec<_> = (0..plan.producers.len())
        .map(|index| {
            let plan = plan.clone();
            let behaviour = behaviour.clone();
            tokio::spawn(
                async move { producer::run(index, &plan.producers[index], &behaviour).await },
            )
        })
        .collect();
    let faults = schedule::run(&mut system, &steps, load_started).await?;
    let mut reports: Vec<ProducerReport> = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await?);
    }
    let load_duration = load_started.elapsed();
    let drain_duration = system
        .jetstream()
        .wait_drained(DRAIN_TIMEOUT)
        .await
        .map_err(|err| anyhow::anyhow!("{err:#}\n{}", system.log_tails(30)))?;

    let frames: Vec<producer::SentFrame> = reports
        .iter()
        .flat_map(|r| r.ledger.iter().cloned())
        .collect();
    let protocol_errors: Vec<String> = reports
        .iter()
        .flat_map(|r| r.protocol_errors.iter().cloned())
        .collect();
    let stream = check::read_stream(&system.nats_url, &system.names.stream).await?;
    let ledger = check::check_ledger(
        &plan.session_ids,
        &system.names.subject_prefix,
        &frames,
        &stream,
        &protocol_errors,
    );
    // The documents converge: poll until they equal the oracle's, or the
    // deadline passes (then the last comparison is the finding).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + DOCUMENTS_TIMEOUT;
    let documents = loop {
        let served = check::read_served(&http, system.api_addr, &plan.session_ids).await;
        let past = Instant::now() >= deadline;
        match served {
            Ok(served) => {
                let documents = check::check_documents(&plan.session_ids, &ledger, &served);
                if documents.diverged.is_empty() || past {
                    break documents;
                }
            }
            Err(err) if past => return Err(err.context("reading the served documents")),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut server_closes = BTreeMap::new();
    for code in reports.iter().flat_map(|r| &r.server_closes) {
        let key = code.map_or_else(|| "none (connection gone)".to_owned(), |c| c.to_string());
        *server_closes.entry(key).or_default() += 1;
    }
    Ok(RunReport {
        seed,
        size,
        session_ids: plan.session_ids.clone(),
        producers: plan.producers.len(),
        events_planned: plan.events(),
        faults,
        ledger,
        documents,
        frames,
        connections: reports.iter().map(|r| r.connections).sum(),
        connect_failures: reports.iter().map(|r| r.connect_failures).sum(),
        dropped_in_flight: reports.iter().map(|r| r.dropped_in_flight).sum(),
        polite_closes: reports.iter().map(|r| r.polite_closes).sum(),
        server_closes,
        reply_timeouts: reports.iter().map(|r| r.reply_timeouts).sum(),
        unfinished_events: reports.iter().map(|r| r.unfinished).sum(),
        dead_letters: system.jetstream().dead_letters().await.unwrap_or(0),
        repairs_logged: system.count_in_processor_logs("repair done"),
        load_duration,
        drain_duration,
        duration: started.elapsed(),
    })
}

impl RunReport {
    /// Whether the promise held and the faults hit.
    pub fn is_clean(&self) -> bool {
        self.ledger.violations.is_empty()
            && self.documents.diverged.is_empty()
            && self.documents.lost == 0
            && self.documents.duplicated == 0
            && self.unfinished_events == 0
            && self.dead_letters == 0
    }

    /// The counts, the faults, and for a failed run the violations and the
    /// first session that diverged.
    pub fn print(&self, name: &str) {
        let l = &self.ledger;
        let d = &self.documents;
        println!(
            "{name}: seed {seed} (ADVERSARY_SEED={seed} replays it), {} sessions, {} producers, {} events planned, load {:.1?}, drain {:.1?}, run {:.1?}",
            self.size.sessions,
            self.producers,
            self.events_planned,
            self.load_duration,
            self.drain_duration,
            self.duration,
            seed = self.seed,
        );
        for fault in &self.faults {
            println!("{name}:   fault {fault}");
        }
        println!(
            "{name}: frames sent {} / acked {} (of them [] {}) / rejected {:?} / unanswered {} / stored {} / stored-unacked {}",
            l.frames_sent,
            l.acked,
            l.acked_empty,
            l.refused,
            l.unanswered,
            l.stored,
            l.stored_unacked
        );
        println!(
            "{name}: connections {} (connect failures {}, dropped with frames in flight {}, closed politely {}, ended by the server {:?}), reply timeouts {}",
            self.connections,
            self.connect_failures,
            self.dropped_in_flight,
            self.polite_closes,
            self.server_closes,
            self.reply_timeouts
        );
        println!(
            "{name}: lost {} duplicated {} diverged documents {} of {} ({} children), violations {}, unfinished events {}, dead letters {}, repairs {}",
            d.lost,
            d.duplicated,
            d.diverged.len(),
            self.session_ids.len(),
            d.children,
            l.violations.len(),
            self.unfinished_events,
            self.dead_letters,
            self.repairs_logged
        );
        for violation in l.violations.iter().take(20) {
            println!("{name}: VIOLATION {violation}");
        }
        if let Some((session, expected, served)) = d.diverged.first() {
            println!(
                "{name}: first diverged {}",
                check::describe_session(
                    *session,
                    &self.session_ids[*session],
                    &self.frames,
                    l,
                    expected,
                    served
                )
            );
        }
    }
}
