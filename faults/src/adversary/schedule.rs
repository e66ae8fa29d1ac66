//! The faults of an adversarial run, drawn from its seed: when each one
//! strikes and how long the part stays down. Every run has at least one
//! processor SIGKILL, one nats-server restart and one Redis restart from an
//! older copy of its data; longer runs add more of every kind.

use std::time::Duration;

use sessionfold_core::SeededRng;
use tokio::time::Instant;

use crate::System;

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL processor `slot`, start it again after `down`.
    KillProcessor { slot: usize, down: Duration },
    /// Stop nats-server (SIGTERM), start it again on the same store after
    /// `down`.
    StopNats { down: Duration },
    /// SIGKILL nats-server, start it again after `down`.
    KillNats { down: Duration },
    /// SIGKILL redis-server, start it again on its data after `down`.
    KillRedis { down: Duration },
    /// Copy Redis's data, wait `behind` while the load goes on, SIGKILL
    /// Redis and start it from the copy: everything applied meanwhile is
    /// gone from Redis, and the processors must fold it again.
    RedisBehind { behind: Duration },
    /// SIGKILL ingest with frames in flight, start it again after `down`.
    KillIngest { down: Duration },
}

/// A fault and the pause before it (after the previous one is over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub pause: Duration,
    pub fault: Fault,
}

/// The faults of a run whose load lasts about `load` with `processors`
/// replicas, drawn from `seed`.
pub fn schedule(seed: u64, load: Duration, processors: usize) -> Vec<Step> {
    let mut rng = SeededRng::new(seed ^ 0x5c4e_d01e);
    let mut faults = vec![
        kill_processor(&mut rng, processors),
        Fault::StopNats {
            down: rng.millis(800, 2500),
        },
        Fault::RedisBehind {
            behind: rng.millis(1000, 2500),
        },
    ];
    // And one more for every 4 s of load after the first 4 s.
    let extra = (load.as_secs() / 4).saturating_sub(1);
    for _ in 0..extra {
        let fault = match rng.below(6) {
            0 => kill_processor(&mut rng, processors),
            1 => Fault::StopNats {
                down: rng.millis(500, 2000),
            },
            2 => Fault::KillNats {
                down: rng.millis(300, 1500),
            },
            3 => Fault::KillRedis {
                down: rng.millis(300, 1500),
            },
            4 => Fault::RedisBehind {
                behind: rng.millis(800, 2500),
            },
            _ => Fault::KillIngest {
                down: rng.millis(200, 1000),
            },
        };
        faults.push(fault);
    }
    // Shuffle (Fisher–Yates).
    for i in (1..faults.len()).rev() {
        faults.swap(i, rng.index(i + 1));
    }
    faults
        .into_iter()
        .map(|fault| Step {
            pause: rng.millis(300, 1500),
            fault,
        })
        .collect()
}

fn kill_processor(rng: &mut SeededRng, processors: usize) -> Fault {
    Fault::KillProcessor {
        slot: rng.index(processors.max(1)),
        down: rng.millis(0, 1500),
    }
}

/// Runs `steps` against `system`, one after another; returns what happened,
/// each line with its moment since `started`.
pub async fn run(
    system: &mut System,
    steps: &[Step],
    started: Instant,
) -> anyhow::Result<Vec<String>> {
    let mut log = Vec::new();
    let mut note = |what: String| log.push(format!("t={:>5.1?}: {what}", started.elapsed()));
    for step in steps {
        tokio::time::sleep(step.pause).await;
        match &step.fault {
            Fault::KillProcessor { slot, down } => {
                system.kill_processor(*slot)?;
                note(format!("processor {slot} SIGKILLed"));
                tokio::time::sleep(*down).await;
                system.start_processor(*slot)?;
                note(format!("processor {slot} started again"));
            }
            Fault::StopNats { down } => {
                system.stop_nats().await?;
                note("nats-server stopped (SIGTERM)".to_owned());
                tokio::time::sleep(*down).await;
                system.start_nats().await?;
                note("nats-server started again (same store)".to_owned());
            }
            Fault::KillNats { down } => {
                system.kill_nats().await?;
                note("nats-server SIGKILLed".to_owned());
                tokio::time::sleep(*down).await;
                system.start_nats().await?;
                note("nats-server started again (same store)".to_owned());
            }
            Fault::KillRedis { down } => {
                system.kill_redis().await?;
                note("redis-server SIGKILLed".to_owned());
                tokio::time::sleep(*down).await;
                system.start_redis().await?;
                note("redis-server started again (its AOF)".to_owned());
            }
            Fault::RedisBehind { behind } => {
                let copy = system.snapshot_redis().await?;
                note("copy of Redis's data taken".to_owned());
                tokio::time::sleep(*behind).await;
                system.restart_redis_from(copy).await?;
                note(format!(
                    "redis-server SIGKILLed and started from the copy ({behind:?} behind)"
                ));
            }
            Fault::KillIngest { down } => {
                system.kill_ingest()?;
                note("ingest SIGKILLed".to_owned());
                tokio::time::sleep(*down).await;
                system.start_ingest().await?;
                note("ingest started again".to_owned());
            }
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schedule_holds_the_three_required_faults_and_repeats_from_its_seed() {
        for seed in 0..50 {
            let steps = schedule(seed, Duration::from_secs(12), 2);
            assert_eq!(steps, schedule(seed, Duration::from_secs(12), 2));
            let has = |f: fn(&Fault) -> bool| steps.iter().any(|s| f(&s.fault));
            assert!(has(
                |f| matches!(f, Fault::KillProcessor { slot, .. } if *slot < 2)
            ));
            assert!(has(|f| matches!(f, Fault::StopNats { .. })));
            assert!(has(|f| matches!(f, Fault::RedisBehind { .. })));
        }
        assert!(schedule(1, Duration::from_secs(60), 2).len() >= 12);
    }
}
