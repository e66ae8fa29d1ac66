//! Api settings, from flags or the environment.

use std::net::SocketAddr;

use sessionfold_common::auth::AuthSettings;
use sessionfold_common::rate_limit::ClientIpSettings;
use sessionfold_common::settings::{RedisSettings, ShutdownSettings};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sessionfold-api", about = "Read API of session documents")]
pub struct Config {
    /// Address the HTTP listener binds.
    #[arg(long, env = "API_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub redis: RedisSettings,
    /// Longest session_id accepted, in bytes.
    #[arg(long, env = "MAX_SESSION_ID_BYTES", default_value_t = sessionfold_core::session::MAX_SESSION_ID_BYTES,
          value_parser = sessionfold_common::settings::parse_session_id_limit)]
    pub max_session_id_bytes: usize,
    #[command(flatten)]
    pub shutdown: ShutdownSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub client_ip: ClientIpSettings,
    #[command(flatten)]
    pub limits: ApiLimitSettings,
    #[command(flatten)]
    pub live: crate::live::LiveSettings,
}

/// Request limits of the api; 0 turns a rate limit off.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiLimitSettings {
    /// Requests per second one client IP may make to `/data`.
    #[arg(long, env = "API_IP_REQUESTS_PER_SEC", default_value_t = 0)]
    pub api_ip_requests_per_sec: u32,
    #[command(flatten)]
    pub reads: crate::read::ReadSettings,
    #[command(flatten)]
    pub streams: crate::live::StreamSettings,
}

impl Config {
    pub fn local(redis_url: impl Into<String>) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            redis: RedisSettings::local(redis_url),
            max_session_id_bytes: sessionfold_core::session::MAX_SESSION_ID_BYTES,
            shutdown: ShutdownSettings::default(),
            auth: AuthSettings::default(),
            client_ip: ClientIpSettings::default(),
            limits: ApiLimitSettings::default(),
            live: crate::live::LiveSettings::default(),
        }
    }
}
