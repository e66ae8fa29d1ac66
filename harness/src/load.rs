//! The load of a scenario, running in the background while the scenario
//! injects its faults.

use std::sync::Arc;
use std::time::Duration;

use sessionfold_client::Producer;
use sessionfold_client::loadgen::{self, LoadOptions, LoadReport, Workload, WorkloadSpec};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// `workload` being sent through `producer` on a task of its own.
pub struct BackgroundLoad {
    started: Instant,
    task: JoinHandle<LoadReport>,
}

impl BackgroundLoad {
    pub fn start(workload: Arc<Workload>, producer: Producer, options: LoadOptions) -> Self {
        let started = Instant::now();
        let task = tokio::spawn(async move { loadgen::run(&workload, &producer, &options).await });
        Self { started, task }
    }

    /// The workload of `spec`, every session at once, each pausing up to
    /// `max_pause` between its frames (pauses drawn from `seed`).
    pub fn start_generated(
        spec: &WorkloadSpec,
        producer: Producer,
        max_pause: Duration,
        seed: u64,
    ) -> (Arc<Workload>, Self) {
        let workload = Arc::new(Workload::generate(spec));
        let options = LoadOptions {
            concurrency: spec.sessions,
            max_pause,
            seed,
        };
        (workload.clone(), Self::start(workload, producer, options))
    }

    /// How long the load has been running: the moment of a fault.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// `t=  1.2s (load running)`: when a fault happened, for the reports.
    pub fn moment(&self) -> String {
        let state = if self.is_finished() {
            "load finished"
        } else {
            "load running"
        };
        format!("t={:>5.1?} ({state})", self.elapsed())
    }

    /// Waits until every session has been sent.
    pub async fn finish(self) -> LoadReport {
        self.task.await.expect("the load task")
    }
}
