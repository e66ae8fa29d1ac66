//! Consumer lag as gauges: every [`POLL_INTERVAL`] the processor reads the
//! durable consumer's info from JetStream and sets
//! `sessionfold_consumer_pending_messages` (not delivered yet),
//! `sessionfold_consumer_ack_pending_messages` (delivered, not acked) and
//! `sessionfold_consumer_redelivered_messages`, labelled by consumer. Every
//! replica reports the same numbers; aggregate with `max by (consumer)`.

use std::time::Duration;

use async_nats::jetstream;
use sessionfold_common::metrics::{CONSUMER_ACK_PENDING, CONSUMER_PENDING, CONSUMER_REDELIVERED};
use tokio_util::sync::CancellationToken;

/// How often the consumer's counts are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Polls until `shutdown`. A failed read leaves the gauges as they were.
pub async fn poll(
    js: jetstream::Context,
    stream: String,
    consumer: String,
    shutdown: CancellationToken,
) {
    let labels = [("consumer", consumer.clone())];
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let info = match js.get_stream(&stream).await {
            Ok(stream) => stream
                .consumer_info(&consumer)
                .await
                .map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match info {
            Ok(info) => {
                metrics::gauge!(CONSUMER_PENDING, &labels).set(info.num_pending as f64);
                metrics::gauge!(CONSUMER_ACK_PENDING, &labels).set(info.num_ack_pending as f64);
                metrics::gauge!(CONSUMER_REDELIVERED, &labels).set(info.num_redelivered as f64);
            }
            Err(err) => tracing::debug!(%consumer, error = %err, "reading consumer lag failed"),
        }
    }
}
