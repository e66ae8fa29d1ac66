//! A steady load on the apply step, to profile Redis with `perf` while it
//! runs: one session prefilled with `CHILDREN` in-order children, then
//! frames of 50 events (`OUT_OF_ORDER_PERCENT` of them older than the
//! newest child) applied one per call for `SECONDS`.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 CHILDREN=100000 SECONDS=30 \
//!     cargo run --release -p sessionfold-processor --example apply_profile
//! perf record -g -p "$(pgrep -n valkey-server)" -- sleep 20
//! ```

use std::time::{Duration, Instant};

use sessionfold_common::settings::RedisSettings;
use sessionfold_core::Keys;
use sessionfold_core::{Delivery, Frame, Limits, SessionId};
use sessionfold_processor::store::{Invocation, RedisStore, Store};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn delivery(session: &SessionId, sequence: u64, timestamps: &[u64], tag: &str) -> Delivery {
    let events: Vec<String> = timestamps
        .iter()
        .map(|t| {
            format!(
                r#"{{"type":"EVENT","timestamp":{t},"name":"{tag}-{t}","props":{{"page":"/p/{}","n":{}}}}}"#,
                t % 7,
                t % 1000
            )
        })
        .collect();
    let limits = Limits {
        max_frame_bytes: usize::MAX,
        max_events_per_frame: usize::MAX,
        max_event_bytes: usize::MAX,
    };
    Delivery {
        stream_sequence: sequence,
        events: Frame::parse(&format!("[{}]", events.join(",")), session, &limits)
            .expect("valid events")
            .events,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let children = setting("CHILDREN", 100_000);
    let seconds = setting("SECONDS", 30);
    let out_of_order = setting("OUT_OF_ORDER_PERCENT", 10);
    let names = Keys::new(format!("profile{}:", std::process::id()));
    let store = RedisStore::connect(&RedisSettings::local(url)).await?;
    let session = SessionId::parse("profile")?;
    let mut sequence = 0;
    for start in (0..children).step_by(1000) {
        sequence += 1;
        let timestamps: Vec<u64> = (start..(start + 1000).min(children)).collect();
        let invocation = Invocation::new(
            &names,
            &session,
            &[delivery(&session, sequence, &timestamps, "pre")],
            0,
        );
        store.apply(&[invocation]).await?;
    }
    eprintln!("prefilled {children} children; applying frames of 50 for {seconds} s");
    let mut newest = children;
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let started = Instant::now();
    let mut frames = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        sequence += 1;
        let timestamps: Vec<u64> = (0..50)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if rng % 100 < out_of_order {
                    rng % newest
                } else {
                    newest += 1;
                    newest
                }
            })
            .collect();
        let invocation = Invocation::new(
            &names,
            &session,
            &[delivery(&session, sequence, &timestamps, "m")],
            0,
        );
        store.apply(&[invocation]).await?;
        frames += 1;
    }
    eprintln!(
        "{frames} frames, {:.1} µs per event wall",
        started.elapsed().as_secs_f64() * 1e6 / (frames * 50) as f64
    );
    Ok(())
}
