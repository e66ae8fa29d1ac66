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

pub mod system;

pub use system::{System, SystemOptions};

/// SplitMix64, for the random moments of fault injection (seeded, printed,
/// so a run can be repeated with `FAULTS_SEED`).
#[derive(Debug, Clone)]
pub struct FaultRng(u64);

impl FaultRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// `FAULTS_SEED` when set, else a seed from the clock.
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

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> std::time::Duration {
        let span = high.saturating_sub(low) + 1;
        std::time::Duration::from_millis(low + self.next_u64() % span)
    }

    /// Uniform in `0..bound`.
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound.max(1) as u64) as usize
    }
}
