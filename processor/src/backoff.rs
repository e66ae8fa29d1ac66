//! The backoff between retries of the processor's loops: core's
//! [`Backoff`](sessionfold_core::Backoff) schedule (50 ms, doubling, at most
//! 2 s), slept here so that a shutdown interrupts it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

const FIRST_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Backoff(sessionfold_core::Backoff);

impl Default for Backoff {
    fn default() -> Self {
        Self(sessionfold_core::Backoff::new(FIRST_DELAY, MAX_DELAY))
    }
}

impl Backoff {
    /// The delay before the next attempt: 50 ms, doubling, at most 2 s.
    pub fn next_delay(&mut self) -> Duration {
        self.0.next_delay()
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
        self.0.reset();
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

    #[tokio::test]
    async fn a_shutdown_interrupts_the_wait() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!Backoff::default().wait(&shutdown).await);
    }
}
