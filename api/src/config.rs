//! Api settings, from flags or the environment.

use std::net::SocketAddr;

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
    #[arg(long, env = "MAX_SESSION_ID_BYTES", default_value_t = sessionfold_core::session::MAX_SESSION_ID_BYTES)]
    pub max_session_id_bytes: usize,
    #[command(flatten)]
    pub shutdown: ShutdownSettings,
}

impl Config {
    pub fn local(redis_url: impl Into<String>) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            redis: RedisSettings::local(redis_url),
            max_session_id_bytes: sessionfold_core::session::MAX_SESSION_ID_BYTES,
            shutdown: ShutdownSettings::default(),
        }
    }
}
