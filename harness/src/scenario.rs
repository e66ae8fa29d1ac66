//! The end of a scenario, the same for the fault suite and the cluster
//! test: once the load is over, wait until the processors have caught up,
//! then compare every document with the reference.

use std::time::Duration;

use sessionfold_client::loadgen::{LoadReport, Workload};
use sessionfold_testkit::JetStreamProbe;
use tokio::time::Instant;

use crate::verify::{Verification, verify};

/// How long the processors may take to catch up after the load.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
/// How long documents may take to equal the reference once drained.
pub const DOCUMENTS_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines per service shown when a scenario fails.
pub const FAILURE_LOG_LINES: usize = 25;

/// A running system whose documents a scenario checks.
pub trait SystemUnderTest {
    /// The event stream, the processors' consumer and the dead letters.
    fn jetstream(&self) -> &JetStreamProbe;

    /// Every session's document (`None`: there is none), in the order of
    /// `session_ids`.
    fn read_documents(
        &self,
        session_ids: &[String],
    ) -> impl Future<Output = anyhow::Result<Vec<Option<String>>>>;

    /// The last `lines` lines of every service's log, for failure reports.
    fn log_tails(&self, lines: usize) -> String;
}

/// What [`settle`] found.
pub struct Settled {
    /// From the end of the load until every stored frame was acked.
    pub drain_duration: Duration,
    /// Every session's document, in the workload's order.
    pub documents: Vec<Option<String>>,
    pub verification: Verification,
}

/// After the load of scenario `name`: prints the first failed sessions,
/// waits until the consumer is drained, then reads and verifies the
/// documents, again every 200 ms until they are exact or
/// [`DOCUMENTS_TIMEOUT`] has passed. Panics, with the services' log tails,
/// when the consumer does not drain within [`DRAIN_TIMEOUT`].
pub async fn settle(
    system: &impl SystemUnderTest,
    name: &str,
    workload: &Workload,
    load: &LoadReport,
) -> Settled {
    for failure in load.failures().take(5) {
        println!(
            "{name}: session {} failed: {:?}",
            failure.session_id, failure.error
        );
    }
    let drain_duration = match system.jetstream().wait_drained(DRAIN_TIMEOUT).await {
        Ok(duration) => duration,
        Err(err) => panic!("{name}: {err:#}\n{}", system.log_tails(FAILURE_LOG_LINES)),
    };
    let session_ids: Vec<String> = workload
        .sessions
        .iter()
        .map(|s| s.session_id.clone())
        .collect();
    let deadline = Instant::now() + DOCUMENTS_TIMEOUT;
    loop {
        let documents = system
            .read_documents(&session_ids)
            .await
            .unwrap_or_else(|err| panic!("{name}: reading the documents: {err:#}"));
        let verification = verify(workload, load, &documents);
        if verification.is_exact() || Instant::now() >= deadline {
            return Settled {
                drain_duration,
                documents,
                verification,
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
