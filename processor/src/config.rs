//! Processor settings, from flags or the environment.

use std::net::SocketAddr;
use std::time::Duration;

use sessionfold_common::settings::{NatsSettings, RedisSettings, ShutdownSettings};

use crate::durability::Durability;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sessionfold-processor",
    about = "Folds session events into RedisJSON documents"
)]
pub struct Config {
    /// Address of the health endpoints.
    #[arg(long, env = "PROCESSOR_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub worker: WorkerSettings,
    #[command(flatten)]
    pub sink: SinkSettings,
    #[command(flatten)]
    pub shutdown: ShutdownSettings,
    #[command(flatten)]
    pub http: sessionfold_common::http::HttpLimits,
}

/// How durable an apply must be before it is acked, and how Redis losing
/// writes is detected and repaired.
#[derive(Debug, Clone, clap::Args)]
pub struct SinkSettings {
    /// What must hold before a batch's messages are acked: `none` (Redis
    /// answered), `fsync` (`WAITAOF 1 0`: in Redis's fsynced append-only
    /// file) or `replica` (`WAIT 1`: on at least one replica).
    #[arg(long, env = "REDIS_DURABILITY", value_enum, default_value_t = Durability::None)]
    pub redis_durability: Durability,
    /// How long one durability wait may take before the batch counts as not
    /// durable yet (kept, applied again, not acked), in milliseconds.
    #[arg(long, env = "REDIS_DURABILITY_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_durability_timeout_ms: u64,
    /// How often every Redis node is checked for lost writes (a restart, a
    /// failover, a flush), and its applied floor advanced, in milliseconds;
    /// 0 turns automatic repair off.
    #[arg(long, env = "REPAIR_CHECK_INTERVAL_MS", default_value_t = 1000)]
    pub repair_check_interval_ms: u64,
}

impl SinkSettings {
    pub fn durability_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_durability_timeout_ms.max(1))
    }

    /// `None` when repair is off.
    pub fn repair_check_interval(&self) -> Option<Duration> {
        (self.repair_check_interval_ms > 0)
            .then(|| Duration::from_millis(self.repair_check_interval_ms))
    }
}

impl Default for SinkSettings {
    fn default() -> Self {
        Self {
            redis_durability: Durability::None,
            redis_durability_timeout_ms: 1000,
            repair_check_interval_ms: 1000,
        }
    }
}

/// How the processor consumes.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerSettings {
    /// Durable consumer shared by every processor replica.
    #[arg(long, env = "CONSUMER_NAME", default_value = "sessionfold-processor")]
    pub consumer_name: String,
    /// Most messages applied in one batch.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 512)]
    pub batch_size: usize,
    /// Batches applied at once by one processor: while Redis applies one,
    /// the next is pulled and decoded. Batches may be applied in any order
    /// (the apply step is order-independent), so this only overlaps work.
    #[arg(long, env = "BATCHES_IN_FLIGHT", default_value_t = 2)]
    pub batches_in_flight: usize,
    /// How long JetStream waits for an ack before redelivering, in seconds.
    #[arg(long, env = "ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
    /// Unacked messages across all replicas.
    #[arg(long, env = "MAX_ACK_PENDING", default_value_t = 20_000)]
    pub max_ack_pending: i64,
    /// Deliveries of a message that Redis refuses before it goes to the dead-letter stream.
    /// Outages (Redis or NATS unreachable) never count: the processor waits them out.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: i64,
    /// Stream that keeps dead letters.
    #[arg(long, env = "DEAD_LETTER_STREAM", default_value = "SESSIONFOLD_DEAD")]
    pub dead_letter_stream: String,
    /// Subject prefix of dead letters; a letter's subject is `<prefix>.<token>`.
    #[arg(
        long,
        env = "DEAD_LETTER_SUBJECT_PREFIX",
        default_value = "sessionfold.dead"
    )]
    pub dead_letter_subject_prefix: String,
    /// Most children one session may hold; 0 for no limit. Past it the frame goes to the dead-letter stream.
    #[arg(long, env = "MAX_CHILDREN_PER_SESSION", default_value_t = 0)]
    pub max_children_per_session: u64,
    /// Idle heartbeat of the pull subscription, in milliseconds; three missed in a row re-create the consumer.
    #[arg(long, env = "PULL_HEARTBEAT_MS", default_value_t = 5000)]
    pub pull_heartbeat_ms: u64,
    /// Subject prefix of the notes published after each apply (live views listen to them).
    #[arg(
        long,
        env = "UPDATES_SUBJECT_PREFIX",
        default_value = "sessionfold.updates"
    )]
    pub updates_subject_prefix: String,
    /// Seconds a session's document (and its bookkeeping keys) lives after its last update; 0 keeps documents forever.
    #[arg(long, env = "DOCUMENT_TTL_SECS", default_value_t = 0)]
    pub document_ttl_secs: u64,
}

impl WorkerSettings {
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }

    pub fn pull_heartbeat(&self) -> Duration {
        Duration::from_millis(self.pull_heartbeat_ms.max(500))
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            consumer_name: "sessionfold-processor".to_owned(),
            batch_size: 512,
            batches_in_flight: 2,
            ack_wait_secs: 30,
            max_ack_pending: 20_000,
            max_attempts: 5,
            dead_letter_stream: "SESSIONFOLD_DEAD".to_owned(),
            dead_letter_subject_prefix: "sessionfold.dead".to_owned(),
            max_children_per_session: 0,
            pull_heartbeat_ms: 5000,
            updates_subject_prefix: "sessionfold.updates".to_owned(),
            document_ttl_secs: 0,
        }
    }
}

impl Config {
    /// Settings for local servers, health endpoints on an ephemeral port.
    pub fn local(nats_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            nats: NatsSettings::local(nats_url),
            redis: RedisSettings::local(redis_url),
            worker: WorkerSettings::default(),
            sink: SinkSettings::default(),
            shutdown: ShutdownSettings::default(),
            http: sessionfold_common::http::HttpLimits::default(),
        }
    }
}
