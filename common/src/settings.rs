//! Configuration groups, each settable by flag or environment variable, with
//! defaults that run against local servers.
//!
//! A default is written once, in its flag: every settings type's `Default`
//! is what parsing no arguments, with no environment, gives
//! ([`flag_defaults`], implemented by [`defaults_from_flags!`]).

use std::time::Duration;

use sessionfold_core::{Limits, session::MAX_SESSION_ID_BYTES};

/// Where NATS is and how the event stream is laid out.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsSettings {
    /// NATS server URL(s), comma-separated for a cluster.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// JetStream stream holding accepted frames.
    #[arg(long, env = "STREAM_NAME", default_value = sessionfold_core::names::DEFAULT_EVENT_STREAM)]
    pub stream_name: String,
    /// Subject prefix of accepted frames; a session's subject is `<prefix>.<token>`.
    #[arg(long, env = "SUBJECT_PREFIX", default_value = sessionfold_core::names::DEFAULT_EVENTS_PREFIX)]
    pub subject_prefix: String,
    /// Oldest message the stream keeps, in seconds (7 days); 0 keeps
    /// messages forever. It bounds how far back a repair or a rebuild can
    /// replay.
    #[arg(long, env = "STREAM_MAX_AGE_SECS", default_value_t = DEFAULT_STREAM_MAX_AGE_SECS)]
    pub stream_max_age_secs: u64,
    /// Most bytes the stream keeps; -1 for no limit (the default: JetStream
    /// reserves a stream's byte limit out of its storage when it creates
    /// the stream, so a default would fail on small disks). A full stream
    /// refuses new frames (ingest answers `unavailable`) and never drops
    /// stored ones to make room.
    #[arg(long, env = "STREAM_MAX_BYTES", default_value_t = DEFAULT_STREAM_MAX_BYTES, allow_negative_numbers = true)]
    pub stream_max_bytes: i64,
    /// Stream replicas (3 on a NATS cluster).
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// Window in which JetStream drops a re-published frame with the same `Nats-Msg-Id`, in seconds.
    #[arg(long, env = "STREAM_DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    pub stream_duplicate_window_secs: u64,
}

/// The event stream keeps a week of frames by default.
pub const DEFAULT_STREAM_MAX_AGE_SECS: u64 = 7 * 24 * 3600;
/// Without a byte limit unless one is set.
pub const DEFAULT_STREAM_MAX_BYTES: i64 = -1;

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
    #[arg(long, env = "KEY_PREFIX", default_value = sessionfold_core::names::DEFAULT_KEY_PREFIX, value_parser = parse_key_prefix)]
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

/// Input limits (docs/design.md §6).
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

impl NatsSettings {
    /// The defaults, with the server at `url`.
    pub fn local(url: impl Into<String>) -> Self {
        Self {
            nats_url: url.into(),
            ..Self::default()
        }
    }
}

impl RedisSettings {
    /// The defaults, with the server at `url`.
    pub fn local(url: impl Into<String>) -> Self {
        Self {
            redis_url: url.into(),
            ..Self::default()
        }
    }
}

/// How a service stops.
#[derive(Debug, Clone, clap::Args)]
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

/// What parsing no arguments, with no environment, gives for the flags of
/// `T`: the defaults its flags declare. Panics when a flag has none, which
/// the settings' unit tests would show at once.
pub fn flag_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let matches = defaults_command::<T>()
        .try_get_matches_from(["defaults"])
        .unwrap_or_else(|err| panic!("every flag needs a default: {err}"));
    T::from_arg_matches(&matches).unwrap_or_else(|err| panic!("the flags' defaults: {err}"))
}

/// The command of `T`'s flags with no environment variable behind them.
fn defaults_command<T: clap::Args>() -> clap::Command {
    T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None::<&str>))
}

/// `impl Default` for settings types as their [`flag_defaults`].
#[macro_export]
macro_rules! defaults_from_flags {
    ($($settings:ty),+ $(,)?) => {$(
        impl Default for $settings {
            /// The defaults its flags declare.
            fn default() -> Self {
                $crate::settings::flag_defaults()
            }
        }
    )+};
}

/// What becomes of a frame for a session closed longer ago than its allowed
/// lateness (docs/design.md §10); read by ingest and the processor alike.
#[derive(Debug, Clone, clap::Args)]
pub struct LateEventSettings {
    /// `dead-letter`: the processor keeps such a frame in the dead-letter
    /// stream with reason `session_closed`; `reject`: ingest answers it
    /// `session_closed` (a connection opened before the session was closed
    /// for good is not checked again: its frames are dead-lettered).
    #[arg(long, env = "LATE_EVENTS", value_enum, default_value_t = LatePolicy::DeadLetter)]
    pub late_events: LatePolicy,
    /// NATS key-value bucket of the sessions closed for good, which the
    /// processor writes and ingest reads under `LATE_EVENTS=reject`.
    #[arg(long, env = "CLOSED_SESSIONS_BUCKET", default_value = sessionfold_core::names::DEFAULT_CLOSED_BUCKET)]
    pub closed_sessions_bucket: String,
}

/// What becomes of a frame for a session closed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LatePolicy {
    /// Moved to the dead-letter stream with reason `session_closed`.
    #[default]
    DeadLetter,
    /// Answered `session_closed` by ingest.
    Reject,
}

defaults_from_flags!(
    NatsSettings,
    RedisSettings,
    LimitSettings,
    ShutdownSettings,
    LateEventSettings
);

/// For the unit tests of each crate's settings: `T::default()` is what its
/// flags declare, not a second list of values that may drift from them.
pub fn assert_default_is_flag_defaults<T>()
where
    T: clap::Args + clap::FromArgMatches + Default + std::fmt::Debug,
{
    assert_eq!(
        format!("{:?}", T::default()),
        format!("{:?}", flag_defaults::<T>()),
        "{}::default() differs from its flags' defaults",
        std::any::type_name::<T>()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthSettings;
    use crate::http::HttpLimits;
    use crate::rate_limit::ClientIpSettings;

    #[test]
    fn every_default_is_the_flags_default() {
        assert_default_is_flag_defaults::<NatsSettings>();
        assert_default_is_flag_defaults::<RedisSettings>();
        assert_default_is_flag_defaults::<LimitSettings>();
        assert_default_is_flag_defaults::<ShutdownSettings>();
        assert_default_is_flag_defaults::<AuthSettings>();
        assert_default_is_flag_defaults::<ClientIpSettings>();
        assert_default_is_flag_defaults::<HttpLimits>();
    }

    #[test]
    fn defaults_ignore_the_environment() {
        let command = defaults_command::<NatsSettings>();
        assert!(command.get_arguments().all(|arg| arg.get_env().is_none()));
        // The real command does read it.
        let real = <NatsSettings as clap::Args>::augment_args(clap::Command::new("real"));
        assert!(real.get_arguments().any(|arg| arg.get_env().is_some()));
    }

    #[test]
    fn the_defaults_name_the_shipped_stream_subjects_and_keys() {
        let nats = NatsSettings::default();
        assert_eq!(nats.stream_name, "SESSIONFOLD_EVENTS");
        assert_eq!(
            nats.subject_prefix,
            sessionfold_core::names::DEFAULT_EVENTS_PREFIX
        );
        assert_eq!(nats.stream_max_bytes, -1);
        assert_eq!(nats.stream_max_age_secs, 7 * 24 * 3600);
        assert_eq!(nats.stream_duplicate_window_secs, 120);
        assert_eq!(
            RedisSettings::default().key_prefix,
            sessionfold_core::names::DEFAULT_KEY_PREFIX
        );
        let limits = LimitSettings::default();
        assert_eq!(limits.limits(), Limits::default());
        assert_eq!(limits.max_session_id_bytes, MAX_SESSION_ID_BYTES);
        assert_eq!(NatsSettings::local("nats://x:1").nats_url, "nats://x:1");
    }
}
