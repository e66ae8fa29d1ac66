//! The durable pull consumer every processor replica shares (docs/design.md §3).

use anyhow::Context as _;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::Stream;

use crate::config::WorkerSettings;

/// The consumer configuration sessionfold wants.
pub fn consumer_config(settings: &WorkerSettings) -> pull::Config {
    pull::Config {
        durable_name: Some(settings.consumer_name.clone()),
        name: Some(settings.consumer_name.clone()),
        description: Some("sessionfold processors: fold frames into session documents".to_owned()),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: settings.ack_wait(),
        // Redelivery is unlimited: outages are waited out, and messages Redis
        // refuses are moved to the dead-letter stream by the processor
        // itself after `max_attempts`, so nothing is silently dropped.
        max_deliver: -1,
        max_ack_pending: settings.max_ack_pending,
        ..Default::default()
    }
}

/// Creates the durable consumer, or brings an existing one to the
/// configured settings.
pub async fn ensure_consumer(
    stream: &Stream,
    settings: &WorkerSettings,
) -> anyhow::Result<PullConsumer> {
    let wanted = consumer_config(settings);
    let mut consumer: PullConsumer = stream
        .get_or_create_consumer(&settings.consumer_name, wanted.clone())
        .await
        .with_context(|| format!("creating consumer {}", settings.consumer_name))?;
    let current = consumer.info().await?.config.clone();
    if current.ack_wait != wanted.ack_wait
        || current.max_ack_pending != wanted.max_ack_pending
        || current.max_deliver != wanted.max_deliver
    {
        tracing::info!(consumer = %settings.consumer_name, "updating consumer settings");
        consumer = stream
            .update_consumer(wanted)
            .await
            .with_context(|| format!("updating consumer {}", settings.consumer_name))?;
    }
    Ok(consumer)
}
