//! Processor settings, from flags or the environment.

use std::net::SocketAddr;
use std::time::Duration;

use sessionfold_common::settings::{NatsSettings, RedisSettings, ShutdownSettings};
use sessionfold_core::{Keys, Subjects};

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
    pub lifecycle: LifecycleSettings,
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

/// Most EVENTs of one apply step by default: a tenth of them out of order
/// into a session of 100 000 children keeps a step near 3 ms (BENCHMARKS.md,
/// "Longest apply step"); `JSON.ARRINSERT` moves the whole array.
pub const DEFAULT_MAX_EVENTS_PER_STEP: usize = 50;

/// When sessions close by themselves, and what becomes of frames that come
/// after (docs/design.md "Session lifecycle"). Times are arrivals at ingest:
/// JetStream timestamps, not the events' own.
#[derive(Debug, Clone, clap::Args)]
pub struct LifecycleSettings {
    /// Whether sessions close by themselves at all (`false`: they stay open
    /// until their document expires, no timer is kept and no finished
    /// session is published).
    #[arg(long, env = "SESSION_LIFECYCLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub session_lifecycle: bool,
    /// A session without a frame for this long closes with reason `idle`, in
    /// seconds; 0 turns it off.
    #[arg(long, env = "SESSION_IDLE_TIMEOUT_SECS", default_value_t = 1800)]
    pub session_idle_timeout_secs: u64,
    /// Once a SESSION_END was applied and no frame came for this long, the
    /// session closes with reason `ended`, in seconds.
    #[arg(long, env = "SESSION_END_GRACE_SECS", default_value_t = 10)]
    pub session_end_grace_secs: u64,
    /// A session closes with reason `max_duration` this long after its first
    /// frame, in seconds; 0 turns it off.
    #[arg(long, env = "SESSION_MAX_DURATION_SECS", default_value_t = 0)]
    pub session_max_duration_secs: u64,
    /// How long after its close a session still takes frames (it opens
    /// again), in seconds.
    #[arg(long, env = "ALLOWED_LATENESS_SECS", default_value_t = 3600)]
    pub allowed_lateness_secs: u64,
    #[command(flatten)]
    pub late: sessionfold_common::settings::LateEventSettings,
    /// JetStream stream of the sessions' timers.
    #[arg(long, env = "TIMERS_STREAM", default_value = sessionfold_core::names::DEFAULT_TIMERS_STREAM)]
    pub timers_stream: String,
    /// Subject prefix of the timers: a session's schedule is
    /// `<prefix>.open.<token>` or `<prefix>.closed.<token>`, and fires on
    /// `<prefix>.due.<token>`.
    #[arg(long, env = "TIMERS_SUBJECT_PREFIX", default_value = sessionfold_core::names::DEFAULT_TIMERS_PREFIX)]
    pub timers_subject_prefix: String,
    /// Durable consumer of the due notes, shared by every processor replica.
    #[arg(long, env = "TIMERS_CONSUMER_NAME", default_value = sessionfold_core::names::DEFAULT_TIMERS_CONSUMER)]
    pub timers_consumer_name: String,
    /// JetStream stream of finished sessions.
    #[arg(long, env = "SESSIONS_STREAM", default_value = sessionfold_core::names::DEFAULT_SESSIONS_STREAM)]
    pub sessions_stream: String,
    /// Subject prefix of finished sessions: a session's is `<prefix>.<token>`.
    #[arg(long, env = "SESSIONS_SUBJECT_PREFIX", default_value = sessionfold_core::names::DEFAULT_SESSIONS_PREFIX)]
    pub sessions_subject_prefix: String,
    /// How long the finished-sessions stream keeps a message, in seconds.
    #[arg(long, env = "SESSIONS_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    pub sessions_max_age_secs: u64,
    /// Most bytes the finished-sessions stream holds; -1 for no limit. At
    /// the limit the stream refuses new finished messages and the closes
    /// wait, retried, until messages age out (docs/design.md §10.4).
    #[arg(long, env = "SESSIONS_MAX_BYTES", default_value_t = 1 << 30, allow_hyphen_values = true)]
    pub sessions_max_bytes: i64,
}

impl LifecycleSettings {
    /// Whether sessions close by themselves at all.
    pub fn enabled(&self) -> bool {
        self.session_lifecycle
    }

    /// The settings as the Lua steps read them; `None` when sessions never
    /// close by themselves.
    pub fn spec(&self) -> Option<crate::store::LifecycleSpec> {
        self.enabled().then(|| crate::store::LifecycleSpec {
            lateness_ms: self.allowed_lateness_secs.saturating_mul(1000),
            idle_ms: self.session_idle_timeout_secs.saturating_mul(1000),
            grace_ms: self.session_end_grace_secs.saturating_mul(1000),
            max_ms: self.session_max_duration_secs.saturating_mul(1000),
        })
    }

    pub fn lateness(&self) -> Duration {
        Duration::from_secs(self.allowed_lateness_secs)
    }
}

/// How the processor consumes.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerSettings {
    /// Durable consumer shared by every processor replica.
    #[arg(long, env = "CONSUMER_NAME", default_value = sessionfold_core::names::DEFAULT_CONSUMER)]
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
    #[arg(long, env = "DEAD_LETTER_STREAM", default_value = sessionfold_core::names::DEFAULT_DEAD_LETTER_STREAM)]
    pub dead_letter_stream: String,
    /// Subject prefix of dead letters; a letter's subject is `<prefix>.<token>`.
    #[arg(
        long,
        env = "DEAD_LETTER_SUBJECT_PREFIX",
        default_value = sessionfold_core::names::DEFAULT_DEAD_LETTERS_PREFIX
    )]
    pub dead_letter_subject_prefix: String,
    /// How long the dead-letter stream keeps a letter, in seconds; 0 keeps
    /// them forever.
    #[arg(long, env = "DEAD_LETTER_MAX_AGE_SECS", default_value_t = 30 * 24 * 3600)]
    pub dead_letter_max_age_secs: u64,
    /// Most bytes the dead-letter stream holds; -1 for no limit. At the
    /// limit it refuses new letters: their frames stay unacknowledged in
    /// the event stream and are retried until letters age out or are
    /// replayed (nothing is dropped to make room).
    #[arg(long, env = "DEAD_LETTER_MAX_BYTES", default_value_t = 256 << 20, allow_hyphen_values = true)]
    pub dead_letter_max_bytes: i64,
    /// Most children one session may hold; 0 for no limit. Past it the frame goes to the dead-letter stream.
    #[arg(long, env = "MAX_CHILDREN_PER_SESSION", default_value_t = 0)]
    pub max_children_per_session: u64,
    /// Most EVENTs one apply step (one script call) takes; a session's part
    /// of a batch with more is applied in slices, so that no call holds
    /// Redis for long. 0: no slices.
    #[arg(long, env = "MAX_EVENTS_PER_STEP", default_value_t = DEFAULT_MAX_EVENTS_PER_STEP)]
    pub max_events_per_step: usize,
    /// Whether the apply step keeps each session's summary, which `GET
    /// /sessions` searches (`false` saves its upkeep where nothing queries
    /// sessions; summaries written before then stay as they were).
    #[arg(long, env = "SESSION_SUMMARIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub session_summaries: bool,
    /// Idle heartbeat of the pull subscription, in milliseconds; three missed in a row re-create the consumer.
    #[arg(long, env = "PULL_HEARTBEAT_MS", default_value_t = 5000)]
    pub pull_heartbeat_ms: u64,
    /// Subject prefix of the notes published after each apply (live views listen to them).
    #[arg(
        long,
        env = "UPDATES_SUBJECT_PREFIX",
        default_value = sessionfold_core::names::DEFAULT_UPDATES_PREFIX
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

sessionfold_common::defaults_from_flags!(Config, SinkSettings, WorkerSettings, LifecycleSettings);

impl Config {
    /// The subjects it reads frames from, moves dead letters to and
    /// announces changes on.
    pub fn subjects(&self) -> Subjects {
        Subjects {
            events_prefix: self.nats.subject_prefix.clone(),
            dead_letters_prefix: self.worker.dead_letter_subject_prefix.clone(),
            updates_prefix: self.worker.updates_subject_prefix.clone(),
        }
    }

    /// The keys it writes.
    pub fn keys(&self) -> Keys {
        Keys::new(self.redis.key_prefix.as_str())
    }

    /// The defaults, with the servers at `nats_url` and `redis_url` and the
    /// health endpoints on an ephemeral port.
    pub fn local(nats_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            nats: NatsSettings::local(nats_url),
            redis: RedisSettings::local(redis_url),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionfold_common::settings::assert_default_is_flag_defaults;

    #[test]
    fn every_default_is_the_flags_default() {
        assert_default_is_flag_defaults::<Config>();
        assert_default_is_flag_defaults::<WorkerSettings>();
        assert_default_is_flag_defaults::<SinkSettings>();
        assert_default_is_flag_defaults::<LifecycleSettings>();
        let lifecycle = LifecycleSettings::default();
        assert_eq!(lifecycle.session_idle_timeout_secs, 1800);
        assert_eq!(
            lifecycle.late.late_events,
            sessionfold_common::settings::LatePolicy::DeadLetter
        );
        let worker = WorkerSettings::default();
        assert_eq!(worker.consumer_name, "sessionfold-processor");
        assert_eq!(
            worker.updates_subject_prefix,
            sessionfold_core::names::DEFAULT_UPDATES_PREFIX
        );
    }

    #[test]
    fn the_subjects_and_keys_are_the_configured_prefixes() {
        let mut config = Config::local("nats://x:1", "redis://y:2");
        config.nats.subject_prefix = "run.events".to_owned();
        config.worker.dead_letter_subject_prefix = "run.dead".to_owned();
        config.worker.updates_subject_prefix = "run.updates".to_owned();
        config.redis.key_prefix = "run:".to_owned();
        let session = sessionfold_core::SessionId::parse("s").unwrap();
        let subjects = config.subjects();
        assert_eq!(subjects.event(&session), "run.events.s");
        assert_eq!(subjects.dead_letter("s"), "run.dead.s");
        assert_eq!(subjects.update(&session), "run.updates.s");
        assert_eq!(config.keys().session(&session).doc, "run:doc:{s}");
    }
}
