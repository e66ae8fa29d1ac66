//! [`Backoff`]: the one retry schedule of the workspace — exponential,
//! capped, optionally jittered. It only computes delays; the callers sleep
//! (each with its own way to be interrupted: a shutdown, a deadline).

use std::time::Duration;

use crate::rng::SeededRng;

/// Delays that start at `first` and double up to `max`. With jitter, each
/// delay is between half and all of its step, so that many clients failing
/// together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
    jitter: Option<SeededRng>,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            step: first,
            jitter: None,
        }
    }

    /// The same schedule, each delay a random share (half to all) of its
    /// step, drawn from `rng`.
    pub fn with_jitter(mut self, rng: SeededRng) -> Self {
        self.jitter = Some(rng);
        self
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = self.step.saturating_mul(2).min(self.max);
        match &mut self.jitter {
            Some(rng) => step.mul_f64(rng.half_to_one()),
            None => step,
        }
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let delays: Vec<u128> = (0..8).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(50));
    }

    #[test]
    fn jittered_delays_are_half_to_all_of_their_step() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400))
            .with_jitter(SeededRng::new(3));
        let steps = [100, 200, 400, 400, 400, 400];
        let delays: Vec<Duration> = steps.iter().map(|_| backoff.next_delay()).collect();
        for (delay, step) in delays.iter().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(
                *delay >= step / 2 && *delay < step,
                "{delay:?} for a step of {step:?}"
            );
        }
        assert!(
            delays[2..].windows(2).any(|pair| pair[0] != pair[1]),
            "{delays:?}"
        );
    }

    #[test]
    fn a_cap_below_the_first_delay_is_the_first_delay() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_millis(10));
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    }
}
