//! Exponential backoff between retries of the processor's loops, capped,
//! interrupted by shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

const FIRST_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next attempt: 50 ms, doubling, at most 2 s.
    pub fn next_delay(&mut self) -> Duration {
        let delay = (FIRST_DELAY * (1u32 << self.attempt.min(6))).min(MAX_DELAY);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Sleeps for the next delay; `false` when shutdown interrupted it.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..8)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(50));
    }
}
