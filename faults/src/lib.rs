//! `sessionfold-faults`: the harness of the fault-injection suite
//! (`faults/tests/faults.rs`, described in `docs/faults.md`).
//!
//! Everything runs for real on loopback: nats-server and redis-server (with
//! RedisJSON) from `sessionfold-testkit`, ingest and the processors as child
//! processes of the `sessionfold` binary (the testkit's
//! [`ServiceLauncher`](sessionfold_testkit::ServiceLauncher)), and the
//! producers through [`sessionfold_client::producer`] driven by
//! [`sessionfold_client::loadgen`]. The end of a scenario, the verification
//! and the reports are `sessionfold-harness`'s, shared with the cluster test.
//!
//! - [`system`]: [`System`], the running system and the faults it can suffer.
//! - [`adversary`]: the adversarial-producer model test's producers, fault
//!   schedule, oracle and checks.

pub mod adversary;
pub mod system;

pub use system::{System, SystemOptions};

/// The random moments of fault injection come from a
/// `sessionfold_core::SeededRng` seeded with this, printed, so
/// that a run can be repeated: `FAULTS_SEED` when set, else a seed from the
/// clock.
pub fn seed_from_env() -> u64 {
    std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}
