//! The processor's settings for one test run: its own stream, subjects,
//! keys, consumer and dead-letter stream on the test's servers.

use sessionfold_common::settings::RedisSettings;
use sessionfold_testkit::{NatsServer, RedisServer, RunNames};

/// Settings on `nats` and `redis` under `names`; the stream may hold 256 MiB
/// (JetStream reserves a stream's byte limit out of the test server's 2 GB).
pub fn processor_config(
    nats: &NatsServer,
    redis: &RedisServer,
    names: &RunNames,
) -> sessionfold_processor::Config {
    let mut config = sessionfold_processor::Config::local(nats.url(), redis.url());
    config.nats.stream_name = names.stream.clone();
    config.nats.subject_prefix = names.subject_prefix.clone();
    config.nats.stream_max_bytes = 256 << 20;
    config.redis = RedisSettings {
        key_prefix: names.key_prefix.clone(),
        ..RedisSettings::local(redis.url())
    };
    config.worker.consumer_name = names.consumer.clone();
    config.worker.dead_letter_stream = names.dead_stream.clone();
    config.worker.dead_letter_subject_prefix = names.dead_subject_prefix.clone();
    config
}
