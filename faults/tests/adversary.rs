//! The adversarial-producer model test (docs/faults.md, "Adversarial
//! producers"): misbehaving producers over raw WebSockets and a seeded
//! schedule of processor SIGKILLs, nats-server restarts and Redis restarted
//! behind, against a real ingest, processors, api, nats-server and Redis;
//! every acknowledged frame must be stored at its `seq`, nothing else may be
//! stored, and every served document must equal, byte for byte, the test's
//! own fold of what the stream holds.
//!
//! Two fixed seeds and one random seed, printed (`ADVERSARY_SEED=<n>`
//! replays it). `make adversary` runs them bigger (`ADVERSARY_SESSIONS`,
//! `ADVERSARY_EVENTS`, `ADVERSARY_SECONDS`).
//!
//! Run: `cargo build -p sessionfold && cargo test -p sessionfold-faults --test adversary -- --nocapture`

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::time::Duration;

use sessionfold_faults::adversary::{self, RunSize};
use sessionfold_testkit::init_test_tracing;

/// The runs take turns: each is a load test for 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The size `make test` runs; the knobs make it bigger.
const IN_MAKE_TEST: RunSize = RunSize {
    sessions: 32,
    events_per_session: 50,
    load: Duration::from_secs(12),
};

async fn attack(name: &str, seed: u64) {
    let _serial = SERIAL.lock().await;
    init_test_tracing();
    let size = RunSize::from_env(IN_MAKE_TEST);
    println!("{name}: seed {seed} (ADVERSARY_SEED={seed} replays it)");
    let report = adversary::run(seed, size)
        .await
        .unwrap_or_else(|err| panic!("{name}: seed {seed}: {err:#}"));
    report.print(name);
    assert!(
        report.is_clean(),
        "{name}: seed {seed} broke the promise (ADVERSARY_SEED={seed} replays it); see above"
    );
    // The attack reached what it attacks.
    let refused: usize = report.ledger.refused.values().sum();
    assert!(
        report.ledger.acked > 0 && refused > 0,
        "{name}: nothing acked or refused"
    );
    assert!(
        report.dropped_in_flight > 0,
        "{name}: no connection dropped with frames in flight"
    );
    assert!(
        report.faults.len() >= 6,
        "{name}: the faults did not all run: {:?}",
        report.faults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_frames_are_stored_exactly_once_against_adversaries_seed_1() {
    attack("adversary seed 1", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_frames_are_stored_exactly_once_against_adversaries_seed_2() {
    attack("adversary seed 2", 0x00c0_ffee).await;
}

/// `ADVERSARY_SEED` when set, else a seed from the clock, printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_frames_are_stored_exactly_once_against_adversaries_random_seed() {
    let seed = std::env::var("ADVERSARY_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(3)
        });
    attack("adversary random seed", seed).await;
}
