//! Configuration groups, each settable by flag or environment variable, with
//! defaults that run against local servers.

use std::time::Duration;

use sessionfold_core::session::Names;
use sessionfold_core::{Limits, session::MAX_SESSION_ID_BYTES};

/// Where NATS is and how the event stream is laid out.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsSettings {
    /// NATS server URL(s), comma-separated for a cluster.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// JetStream stream holding accepted frames.
    #[arg(long, env = "STREAM_NAME", default_value = "SESSIONFOLD_EVENTS")]
    pub stream_name: String,
    /// Subject prefix of accepted frames; a session's subject is `<prefix>.<token>`.
    #[arg(long, env = "SUBJECT_PREFIX", default_value = "sessionfold.events")]
    pub subject_prefix: String,
    /// Oldest message the stream keeps, in seconds; 0 keeps messages forever.
    #[arg(long, env = "STREAM_MAX_AGE_SECS", default_value_t = 0)]
    pub stream_max_age_secs: u64,
    /// Most bytes the stream keeps; -1 for no limit.
    #[arg(long, env = "STREAM_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub stream_max_bytes: i64,
    /// Stream replicas (3 on a NATS cluster).
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// Window in which JetStream drops a re-published frame with the same `Nats-Msg-Id`, in seconds.
    #[arg(long, env = "STREAM_DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    pub stream_duplicate_window_secs: u64,
}

impl NatsSettings {
    pub fn stream_max_age(&self) -> Duration {
        Duration::from_secs(self.stream_max_age_secs)
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.stream_duplicate_window_secs)
    }
}

/// Where Redis is and how keys are named.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisSettings {
    /// Redis URL (Redis ≥ 7 with RedisJSON); for a Redis Cluster, one or
    /// more comma-separated seed nodes.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of every Redis key (no braces: they would move the hash tag).
    #[arg(long, env = "KEY_PREFIX", default_value = "sf:", value_parser = parse_key_prefix)]
    pub key_prefix: String,
    /// `REDIS_URL` points at a Redis Cluster (implied when it lists several
    /// URLs).
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub redis_cluster: bool,
}

impl RedisSettings {
    /// The URLs of `REDIS_URL`, split at commas.
    pub fn urls(&self) -> Vec<String> {
        self.redis_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Whether Redis is a cluster: `REDIS_CLUSTER=true` or several URLs.
    pub fn is_cluster(&self) -> bool {
        self.redis_cluster || self.urls().len() > 1
    }
}

/// Input limits (DESIGN §6).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitSettings {
    /// Largest accepted frame, in bytes.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = Limits::default().max_frame_bytes)]
    pub max_frame_bytes: usize,
    /// Most events in one frame.
    #[arg(long, env = "MAX_EVENTS_PER_FRAME", default_value_t = Limits::default().max_events_per_frame)]
    pub max_events_per_frame: usize,
    /// Largest single event, in bytes.
    #[arg(long, env = "MAX_EVENT_BYTES", default_value_t = Limits::default().max_event_bytes)]
    pub max_event_bytes: usize,
    /// Longest session_id, in bytes.
    /// At most 1024: a token is up to 3× the id, and NATS subjects stay
    /// well under their 4 KiB limit.
    #[arg(long, env = "MAX_SESSION_ID_BYTES", default_value_t = MAX_SESSION_ID_BYTES,
          value_parser = crate::settings::parse_session_id_limit)]
    pub max_session_id_bytes: usize,
}

impl LimitSettings {
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_events_per_frame: self.max_events_per_frame,
            max_event_bytes: self.max_event_bytes,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_frame_bytes: limits.max_frame_bytes,
            max_events_per_frame: limits.max_events_per_frame,
            max_event_bytes: limits.max_event_bytes,
            max_session_id_bytes: MAX_SESSION_ID_BYTES,
        }
    }
}

/// The subject and key names for a NATS + Redis settings pair.
pub fn names(nats: &NatsSettings, key_prefix: &str) -> Names {
    Names {
        events_subject_prefix: nats.subject_prefix.clone(),
        key_prefix: key_prefix.to_owned(),
    }
}

impl NatsSettings {
    /// Settings for a local server at `url` with default names.
    pub fn local(url: impl Into<String>) -> Self {
        Self {
            nats_url: url.into(),
            stream_name: "SESSIONFOLD_EVENTS".to_owned(),
            subject_prefix: "sessionfold.events".to_owned(),
            stream_max_age_secs: 0,
            stream_max_bytes: -1,
            stream_replicas: 1,
            stream_duplicate_window_secs: 120,
        }
    }
}

impl RedisSettings {
    pub fn local(url: impl Into<String>) -> Self {
        Self {
            redis_url: url.into(),
            key_prefix: "sf:".to_owned(),
            redis_cluster: false,
        }
    }
}

/// How a service stops.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ShutdownSettings {
    /// After SIGTERM, how long readiness reports 503 while traffic is still
    /// served, so load balancers stop sending new work, in milliseconds.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 0)]
    pub shutdown_grace_ms: u64,
}

impl ShutdownSettings {
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// A Redis key prefix must not hold `{` or `}`: the first `{…}` of a key is
/// its Redis Cluster hash tag, which must be the session's token.
pub fn parse_key_prefix(prefix: &str) -> Result<String, String> {
    if prefix.contains(['{', '}']) {
        Err("the key prefix must not contain '{' or '}'".to_owned())
    } else {
        Ok(prefix.to_owned())
    }
}

/// The longest session_id limit a deployment may set: a token is up to 3×
/// the id, and NATS subjects must stay well under their 4 KiB limit.
pub const MAX_SESSION_ID_LIMIT: usize = 1024;

pub fn parse_session_id_limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(limit) if (1..=MAX_SESSION_ID_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(format!(
            "expected a number from 1 to {MAX_SESSION_ID_LIMIT}"
        )),
    }
}
