//! What a harness asks JetStream about a running system: how far the
//! processors' consumer is, and how many messages the event and dead-letter
//! streams hold.

use std::time::Duration;

use anyhow::{Result, bail};
use async_nats::jetstream;
use tokio::time::Instant;

/// Default poll interval of [`JetStreamProbe::wait_drained`].
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Questions about one event stream, its processor consumer and its
/// dead-letter stream.
#[derive(Clone)]
pub struct JetStreamProbe {
    js: jetstream::Context,
    stream: String,
    consumer: String,
    dead_letter_stream: String,
    drain_poll: Duration,
}

impl JetStreamProbe {
    pub fn new(
        js: jetstream::Context,
        stream: &str,
        consumer: &str,
        dead_letter_stream: &str,
    ) -> Self {
        Self {
            js,
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            dead_letter_stream: dead_letter_stream.to_owned(),
            drain_poll: DRAIN_POLL,
        }
    }

    /// How often [`wait_drained`](Self::wait_drained) asks: more often
    /// measures the moment of draining more precisely, less often loads the
    /// servers less.
    pub fn polling_every(mut self, interval: Duration) -> Self {
        self.drain_poll = interval;
        self
    }

    /// The consumer's `num_pending` and `num_ack_pending`.
    pub async fn consumer_state(&self) -> Result<(u64, usize)> {
        let stream = self.js.get_stream(&self.stream).await?;
        let info = stream.consumer_info(&self.consumer).await?;
        Ok((info.num_pending, info.num_ack_pending))
    }

    /// Waits until every stored frame is acked (`num_pending == 0 &&
    /// num_ack_pending == 0`); returns how long that took.
    pub async fn wait_drained(&self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let last = match self.consumer_state().await {
                Ok((0, 0)) => return Ok(started.elapsed()),
                Ok(state) => format!("{state:?}"),
                Err(err) => err.to_string(),
            };
            if started.elapsed() >= timeout {
                bail!(
                    "the consumer was not drained after {timeout:?}; last (pending, ack pending): {last}"
                );
            }
            tokio::time::sleep(self.drain_poll).await;
        }
    }

    /// Messages in the event stream (every stored copy of every frame).
    pub async fn stream_messages(&self) -> Result<u64> {
        let stream = self.js.get_stream(&self.stream).await?;
        Ok(stream.cached_info().state.messages)
    }

    /// Messages in the dead-letter stream (0 when it does not exist).
    pub async fn dead_letters(&self) -> Result<u64> {
        match self.js.get_stream(&self.dead_letter_stream).await {
            Ok(stream) => Ok(stream.cached_info().state.messages),
            Err(err) if err.to_string().contains("not found") => Ok(0),
            Err(err) => Err(err.into()),
        }
    }
}
