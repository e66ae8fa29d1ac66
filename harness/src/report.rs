//! The counts of one scenario: what was sent, what the faults did, and what
//! the documents look like next to the reference.

use std::fmt;
use std::time::Duration;

use anyhow::Context;
use sessionfold_client::Counters;
use sessionfold_client::loadgen::{LoadReport, Workload};
use sessionfold_testkit::JetStreamProbe;

use crate::scenario::{FAILURE_LOG_LINES, SystemUnderTest};
use crate::verify::Verification;

#[derive(Debug, Clone, Default)]
pub struct ScenarioReport {
    pub name: String,
    pub sessions: usize,
    pub frames: usize,
    /// Events (of every type) in the workload.
    pub events_sent: usize,
    /// Events in acknowledged frames.
    pub events_acked: usize,
    /// What the producers did (acks, `unavailable` replies, reconnects, …).
    pub producers: Counters,
    /// Sessions that stopped before their last frame.
    pub failed_sessions: usize,
    /// Messages in the event stream: every stored copy of every frame.
    pub stream_messages: u64,
    pub dead_letters: u64,
    pub processor_replicas: usize,
    pub processors_killed: usize,
    /// The faults injected, with their moment relative to the load's start.
    pub faults: Vec<String>,
    /// Anything else worth printing (name, value).
    pub notes: Vec<(String, String)>,
    pub load_duration: Duration,
    /// From the end of the load until every stored frame was acked.
    pub drain_duration: Duration,
    /// The whole scenario, servers' start to verification.
    pub duration: Duration,
    pub verification: Verification,
}

impl ScenarioReport {
    /// The report of `load` sending `workload`, with the stream counts
    /// `jetstream` gives now; the caller fills in the processors, faults,
    /// notes, times and verification.
    pub async fn new(
        name: &str,
        workload: &Workload,
        load: &LoadReport,
        jetstream: &JetStreamProbe,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            sessions: workload.sessions.len(),
            frames: workload.frames(),
            events_sent: workload.events(),
            events_acked: load.events_acked,
            producers: load.totals,
            failed_sessions: load.failures().count(),
            stream_messages: jetstream.stream_messages().await.context("stream info")?,
            dead_letters: jetstream
                .dead_letters()
                .await
                .context("dead-letter stream info")?,
            load_duration: load.elapsed,
            ..Self::default()
        })
    }

    /// Prints the report, followed by the end of `system`'s logs when a
    /// session failed or a document is not exact.
    pub fn print(&self, system: &impl SystemUnderTest) {
        println!("{self}");
        if !self.verification.is_exact() || self.failed_sessions > 0 {
            println!("{}", system.log_tails(FAILURE_LOG_LINES));
        }
    }

    /// Panics unless every session finished and every document is exact,
    /// nothing dead-lettered and every acknowledged frame is in the stream.
    pub fn assert_exact(&self) {
        let v = &self.verification;
        assert_eq!(self.failed_sessions, 0, "{}: sessions failed", self.name);
        assert_eq!(
            (v.lost, v.duplicated, v.unexpected),
            (0, 0, 0),
            "{}: lost, duplicated, unexpected children; examples: {:#?}",
            self.name,
            v.examples
        );
        assert_eq!(
            (
                v.start_mismatched,
                v.end_mismatched,
                v.misordered,
                v.documents_missing,
                v.unequal
            ),
            (0, 0, 0, 0, 0),
            "{}: start, end, order, missing, unequal; examples: {:#?}",
            self.name,
            v.examples
        );
        assert_eq!(self.dead_letters, 0, "{}: dead letters", self.name);
        assert!(
            self.stream_messages >= self.producers.acked,
            "{}: fewer stream messages ({}) than acked frames ({})",
            self.name,
            self.stream_messages,
            self.producers.acked
        );
    }
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.producers;
        let v = &self.verification;
        writeln!(f, "=== scenario {} ===", self.name)?;
        writeln!(
            f,
            "  workload:   {} sessions, {} frames, {} events sent ({} in acked frames)",
            self.sessions, self.frames, self.events_sent, self.events_acked
        )?;
        writeln!(
            f,
            "  producers:  frames acked {}, attempts {}, unavailable replies {}, reconnects {}, connect errors {}, dropped connections {}, reply timeouts {}, failed sessions {}",
            p.acked,
            p.attempts,
            p.unavailable,
            p.reconnects,
            p.connect_errors,
            p.dropped,
            p.reply_timeouts,
            self.failed_sessions
        )?;
        writeln!(
            f,
            "  jetstream:  stream messages {} (copies beyond the acked frames: {}), dead letters {}",
            self.stream_messages,
            self.stream_messages.saturating_sub(p.acked),
            self.dead_letters
        )?;
        writeln!(
            f,
            "  processors: {} replicas, processors killed {}",
            self.processor_replicas, self.processors_killed
        )?;
        for fault in &self.faults {
            writeln!(f, "  fault:      {fault}")?;
        }
        for (name, value) in &self.notes {
            writeln!(f, "  {name}: {value}")?;
        }
        writeln!(
            f,
            "  documents:  {} sessions, {} children expected: lost={} duplicated={} unexpected={} start mismatched={} end mismatched={} misordered={} missing={} unequal={}",
            v.sessions,
            v.expected_children,
            v.lost,
            v.duplicated,
            v.unexpected,
            v.start_mismatched,
            v.end_mismatched,
            v.misordered,
            v.documents_missing,
            v.unequal
        )?;
        write!(
            f,
            "  time:       load {:.1?}, drain {:.1?}, scenario {:.1?}",
            self.load_duration, self.drain_duration, self.duration
        )
    }
}
