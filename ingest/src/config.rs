//! Ingest settings, from flags or the environment.

use std::net::SocketAddr;

use sessionfold_common::auth::AuthSettings;
use sessionfold_common::http::HttpLimits;
use sessionfold_common::rate_limit::ClientIpSettings;
use sessionfold_common::settings::{
    LateEventSettings, LimitSettings, NatsSettings, ShutdownSettings,
};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sessionfold-ingest",
    about = "WebSocket ingest of session events"
)]
pub struct Config {
    /// Address the WebSocket listener binds.
    #[arg(long, env = "INGEST_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub limits: LimitSettings,
    #[command(flatten)]
    pub connection: ConnectionSettings,
    #[command(flatten)]
    pub shutdown: ShutdownSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub client_ip: ClientIpSettings,
    #[command(flatten)]
    pub guard: GuardSettings,
    #[command(flatten)]
    pub http: HttpLimits,
    #[command(flatten)]
    pub late: LateEventSettings,
    #[command(flatten)]
    pub redaction: RedactionSettings,
}

/// Fields stripped from every event before it is stored (docs/design.md §1.6).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedactionSettings {
    /// Dotted paths removed from every event, comma-separated (`email,props.card`).
    #[arg(long, env = "REDACT_FIELDS", value_delimiter = ',')]
    pub redact_fields: Vec<String>,
    /// Dotted paths whose value is replaced by `hmac-sha256:<hex>` under `REDACTION_KEY`.
    #[arg(long, env = "HASH_FIELDS", value_delimiter = ',')]
    pub hash_fields: Vec<String>,
    /// Key of the hashed fields, at least 32 bytes; required with `HASH_FIELDS`.
    #[arg(long, env = "REDACTION_KEY", hide_env_values = true)]
    pub redaction_key: Option<String>,
}

/// Abuse limits; 0 turns a limit off.
#[derive(Debug, Clone, clap::Args)]
pub struct GuardSettings {
    /// Frames per second one client IP may send.
    #[arg(long, env = "IP_FRAMES_PER_SEC", default_value_t = 0)]
    pub ip_frames_per_sec: u32,
    /// Bytes per second one client IP may send.
    #[arg(long, env = "IP_BYTES_PER_SEC", default_value_t = 0)]
    pub ip_bytes_per_sec: u32,
    /// Frames per second one session may receive.
    #[arg(long, env = "SESSION_FRAMES_PER_SEC", default_value_t = 0)]
    pub session_frames_per_sec: u32,
    /// Bytes per second one session may receive.
    #[arg(long, env = "SESSION_BYTES_PER_SEC", default_value_t = 0)]
    pub session_bytes_per_sec: u32,
    /// Open WebSocket connections in all.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Open WebSocket connections per client IP.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// Distinct sessions one client address (IPv6: one /64) may open within
    /// `SESSION_CAP_WINDOW_SECS`; past it, `429 too_many_sessions` (0: no
    /// cap; like every per-address cap, set it where the client address is
    /// known, not behind an untrusted proxy).
    #[arg(long, env = "MAX_SESSIONS_PER_IP", default_value_t = 0)]
    pub max_sessions_per_ip: usize,
    /// Distinct sessions the prefix tokens of one prefix may open within
    /// `SESSION_CAP_WINDOW_SECS`, from any addresses (0: no cap).
    #[arg(long, env = "MAX_SESSIONS_PER_PREFIX", default_value_t = 100_000)]
    pub max_sessions_per_prefix: usize,
    /// How long a session counts against the client that connected to it,
    /// after its last connection, in seconds.
    #[arg(long, env = "SESSION_CAP_WINDOW_SECS", default_value_t = 3600)]
    pub session_cap_window_secs: u64,
    /// A connection that sends no frame for this long is closed, in seconds.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// Pings one connection may send per second; past it the socket is
    /// closed with 1008 (0: no limit).
    #[arg(long, env = "MAX_PINGS_PER_SEC", default_value_t = 10)]
    pub max_pings_per_sec: u32,
    /// Origins browsers may connect from, comma-separated; empty allows any.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
}

/// How connections behave.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionSettings {
    /// Frames of one connection that may wait for their PubAck at once.
    #[arg(long, env = "MAX_IN_FLIGHT_PER_CONNECTION", default_value_t = 32)]
    pub max_in_flight_per_connection: usize,
    /// Frames of all connections that may wait for their PubAck at once; past it frames get `unavailable`.
    #[arg(long, env = "MAX_IN_FLIGHT_TOTAL", default_value_t = 8192)]
    pub max_in_flight_total: usize,
    /// How long a frame may wait for JetStream before it is answered `unavailable`, in milliseconds.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,
    /// How long one publish waits for its PubAck before the frame is sent
    /// again with the same message id (JetStream stores it once), within
    /// `PUBLISH_TIMEOUT_MS`, in milliseconds; 0 never sends again.
    #[arg(long, env = "PUBLISH_RETRY_MS", default_value_t = 1000)]
    pub publish_retry_ms: u64,
    /// Most frames stored together by one group commit (an atomic JetStream
    /// batch, at most 1000); 1 publishes every frame alone.
    #[arg(long, env = "PUBLISH_BATCH_MAX_FRAMES", default_value_t = 256)]
    pub publish_batch_max_frames: usize,
    /// Longest a group commit waits for more frames after its first while
    /// a commit slot is free, in microseconds; 0 takes only the frames
    /// already waiting (a lone frame goes at once).
    #[arg(long, env = "PUBLISH_BATCH_MAX_DELAY_US", default_value_t = 0)]
    pub publish_batch_max_delay_us: u64,
    /// Group commits under way at once; frames arriving meanwhile wait
    /// for the next one (1 makes the largest batches: measured on the web
    /// mix, groups of 88 frames against 46 with 2, and a third more frames
    /// acknowledged a second).
    #[arg(long, env = "PUBLISH_BATCHES_IN_FLIGHT", default_value_t = 1)]
    pub publish_batches_in_flight: usize,
    /// Close the socket with 1000 once a frame with SESSION_END is acknowledged.
    #[arg(long, env = "CLOSE_ON_SESSION_END", default_value_t = true, action = clap::ArgAction::Set)]
    pub close_on_session_end: bool,
}

sessionfold_common::defaults_from_flags!(Config, GuardSettings, ConnectionSettings);

impl Config {
    /// The defaults, with NATS at `nats_url` and listening on an ephemeral
    /// port.
    pub fn local(nats_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            nats: NatsSettings::local(nats_url),
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
        assert_default_is_flag_defaults::<GuardSettings>();
        assert_default_is_flag_defaults::<ConnectionSettings>();
        // Once a hand-written default said 0 here.
        assert_eq!(GuardSettings::default().idle_timeout_secs, 300);
        assert_eq!(Config::local("nats://x:1").guard.idle_timeout_secs, 300);
    }
}
