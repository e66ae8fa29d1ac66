//! `sessionfold-harness`: what the harnesses that run the whole system share,
//! on top of `sessionfold-testkit` (servers, service processes, JetStream
//! probes) and `sessionfold-client` (producers, workloads). The fault suite
//! (`faults/`), the cluster test (`cluster/`), the end-to-end tests (`e2e/`)
//! and the bench (`bench/`) use it.
//!
//! - [`load`]: a scenario's load, running in the background.
//! - [`names`]: a run's names as subjects and keys.
//! - [`producer`]: a producer for a run's load, and reading a run's documents.
//! - [`scenario`]: the end of every scenario, once the load is over: drain,
//!   then compare the documents.
//! - [`verify`]: every session document against the reference fold.
//! - [`report`]: the per-scenario counts the suites print and assert on.

pub mod load;
pub mod names;
pub mod producer;
pub mod report;
pub mod scenario;
pub mod verify;

pub use load::BackgroundLoad;
pub use names::{run_keys, run_subjects};
pub use producer::{read_documents, run_producer};
pub use report::ScenarioReport;
pub use scenario::{Settled, SystemUnderTest, settle};
pub use verify::{Verification, reference};
