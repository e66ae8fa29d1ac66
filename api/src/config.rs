//! Api settings, from flags or the environment.

use std::net::SocketAddr;

use sessionfold_common::auth::AuthSettings;
use sessionfold_common::http::HttpLimits;
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
    #[command(flatten)]
    pub consumer: crate::applied::ConsumerNames,
    #[command(flatten)]
    pub http: HttpLimits,
}

/// Request limits of the api; 0 turns a rate limit off.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiLimitSettings {
    /// Requests per second one client IP may make to `/data`.
    #[arg(long, env = "API_IP_REQUESTS_PER_SEC", default_value_t = 0)]
    pub api_ip_requests_per_sec: u32,
    #[command(flatten)]
    pub reads: crate::read::ReadSettings,
    #[command(flatten)]
    pub streams: crate::live::StreamSettings,
    #[command(flatten)]
    pub waits: crate::applied::AppliedSettings,
    #[command(flatten)]
    pub sessions: crate::sessions::SessionsSettings,
    #[command(flatten)]
    pub children: crate::children::ChildrenSettings,
}

impl ApiLimitSettings {
    /// The names of the api's limits that are off, for a start-up warning.
    pub fn off(&self) -> Vec<&'static str> {
        let streams = &self.streams;
        [
            (self.api_ip_requests_per_sec == 0, "API_IP_REQUESTS_PER_SEC"),
            (streams.max_streams == 0, "API_MAX_STREAMS"),
            (streams.max_streams_per_ip == 0, "API_MAX_STREAMS_PER_IP"),
            (streams.stream_max_secs == 0, "API_STREAM_MAX_SECS"),
            (self.waits.max_waiters == 0, "API_MAX_WAITERS"),
            (self.waits.max_waiters_per_ip == 0, "API_MAX_WAITERS_PER_IP"),
        ]
        .into_iter()
        .filter_map(|(off, name)| off.then_some(name))
        .collect()
    }
}

sessionfold_common::defaults_from_flags!(Config, ApiLimitSettings);

impl Config {
    /// The defaults, with Redis at `redis_url` and listening on an
    /// ephemeral port.
    pub fn local(redis_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
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
        assert_default_is_flag_defaults::<ApiLimitSettings>();
        assert_default_is_flag_defaults::<crate::live::LiveSettings>();
        assert_default_is_flag_defaults::<crate::live::StreamSettings>();
        assert_default_is_flag_defaults::<crate::read::ReadSettings>();
        assert_default_is_flag_defaults::<crate::applied::AppliedSettings>();
        assert_default_is_flag_defaults::<crate::applied::ConsumerNames>();
        assert_default_is_flag_defaults::<crate::sessions::SessionsSettings>();
        assert_default_is_flag_defaults::<crate::children::ChildrenSettings>();
        assert_eq!(Config::default().live.nats_url, None);
    }
}
