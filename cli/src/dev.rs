//! The all-in-one development mode. Each service keeps its own library and
//! `serve`; this composes their routes on one listener and runs the processor
//! beside them, so the client contract (`/websocket` and `/data` on one port)
//! holds without a reverse proxy. `/healthz`, `/readyz` (all three services
//! ready), `/metrics` and the api's `/openapi.json` are served there too.

use std::net::SocketAddr;

use axum::Router;
use sessionfold_api::Api;
use sessionfold_api::config::ApiLimitSettings;
use sessionfold_common::auth::AuthSettings;
use sessionfold_common::http::HttpLimits;
use sessionfold_common::rate_limit::ClientIpSettings;
use sessionfold_common::settings::{LimitSettings, NatsSettings, RedisSettings, ShutdownSettings};
use sessionfold_ingest::Ingest;
use sessionfold_ingest::config::{ConnectionSettings, GuardSettings, RedactionSettings};
use sessionfold_processor::Processor;
use sessionfold_processor::config::{LifecycleSettings, SinkSettings, WorkerSettings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct DevConfig {
    /// Address serving `/websocket` and `/data`.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub limits: LimitSettings,
    #[command(flatten)]
    pub connection: ConnectionSettings,
    #[command(flatten)]
    pub worker: WorkerSettings,
    #[command(flatten)]
    pub sink: SinkSettings,
    #[command(flatten)]
    pub lifecycle: LifecycleSettings,
    #[command(flatten)]
    pub shutdown: ShutdownSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub client_ip: ClientIpSettings,
    #[command(flatten)]
    pub guard: GuardSettings,
    #[command(flatten)]
    pub api_limits: ApiLimitSettings,
    #[command(flatten)]
    pub http: HttpLimits,
    #[command(flatten)]
    pub redaction: RedactionSettings,
}

impl DevConfig {
    fn ingest(&self) -> sessionfold_ingest::Config {
        sessionfold_ingest::Config {
            listen: self.listen,
            nats: self.nats.clone(),
            limits: self.limits.clone(),
            connection: self.connection.clone(),
            shutdown: self.shutdown.clone(),
            auth: self.auth.clone(),
            client_ip: self.client_ip.clone(),
            guard: self.guard.clone(),
            http: self.http.clone(),
            late: self.lifecycle.late.clone(),
            redaction: self.redaction.clone(),
        }
    }

    fn processor(&self) -> sessionfold_processor::Config {
        sessionfold_processor::Config {
            listen: self.listen,
            nats: self.nats.clone(),
            redis: self.redis.clone(),
            worker: self.worker.clone(),
            sink: self.sink.clone(),
            lifecycle: self.lifecycle.clone(),
            shutdown: self.shutdown.clone(),
            http: self.http.clone(),
        }
    }

    fn api(&self) -> sessionfold_api::Config {
        sessionfold_api::Config {
            listen: self.listen,
            redis: self.redis.clone(),
            max_session_id_bytes: self.limits.max_session_id_bytes,
            shutdown: self.shutdown.clone(),
            auth: self.auth.clone(),
            client_ip: self.client_ip.clone(),
            limits: self.api_limits.clone(),
            live: sessionfold_api::live::LiveSettings {
                nats_url: Some(self.nats.nats_url.clone()),
                updates_subject_prefix: self.worker.updates_subject_prefix.clone(),
            },
            consumer: sessionfold_api::applied::ConsumerNames {
                stream_name: self.nats.stream_name.clone(),
                consumer_name: self.worker.consumer_name.clone(),
            },
            http: self.http.clone(),
        }
    }
}

/// Runs ingest, processor and api on `listener` until `shutdown`.
pub async fn serve(
    config: DevConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let drain = CancellationToken::new();
    let ingest = Ingest::build(&config.ingest(), drain.clone()).await?;
    let api = Api::build(&config.api()).await?;
    let processor = Processor::build(config.processor()).await?;

    // Ready when all three are: their checks, and none is stopping.
    let readiness = ingest
        .readiness(&config.nats)
        .and(api.readiness())
        .and(processor.readiness());
    let app = sessionfold_common::http::instrument(
        Router::new()
            .merge(ingest.routes())
            .merge(api.routes())
            .merge(sessionfold_common::health::liveness_routes())
            .merge(
                sessionfold_common::auth::Authenticator::new(&config.auth).guard_ops(
                    sessionfold_common::health::readiness_routes(readiness)
                        .merge(sessionfold_common::metrics::routes())
                        .merge(sessionfold_api::openapi::routes()),
                ),
            ),
    );

    let processing = tokio::spawn(processor.run(drain.clone()));
    tracing::info!(addr = %listener.local_addr()?, "sessionfold dev mode listening");
    let stopping = (ingest.clone(), api.clone());
    let grace = config.shutdown.grace();
    let drain_all = drain.clone();
    warn_of_protections_off(&config);
    sessionfold_common::http::serve(listener, app, &config.http, async move {
        sessionfold_common::shutdown::after_grace(shutdown, grace, || {
            stopping.0.begin_shutdown();
            stopping.1.begin_shutdown();
        })
        .await;
        drain_all.cancel();
    })
    .await?;
    ingest.drain().await;
    processing.await??;
    Ok(())
}

/// Says at start-up which protections are off, so that a dev-mode set-up is
/// never mistaken for one fit for the internet.
fn warn_of_protections_off(config: &DevConfig) {
    let mut off: Vec<&str> = config.http.off();
    let guard = &config.guard;
    for (name, value) in [
        ("IP_FRAMES_PER_SEC", u64::from(guard.ip_frames_per_sec)),
        ("IP_BYTES_PER_SEC", u64::from(guard.ip_bytes_per_sec)),
        (
            "SESSION_FRAMES_PER_SEC",
            u64::from(guard.session_frames_per_sec),
        ),
        (
            "SESSION_BYTES_PER_SEC",
            u64::from(guard.session_bytes_per_sec),
        ),
        ("MAX_CONNECTIONS", guard.max_connections as u64),
        (
            "MAX_CONNECTIONS_PER_IP",
            guard.max_connections_per_ip as u64,
        ),
        ("IDLE_TIMEOUT_SECS", guard.idle_timeout_secs),
        ("MAX_PINGS_PER_SEC", u64::from(guard.max_pings_per_sec)),
        (
            "API_IP_REQUESTS_PER_SEC",
            u64::from(config.api_limits.api_ip_requests_per_sec),
        ),
    ] {
        if value == 0 {
            off.push(name);
        }
    }
    if !config.auth.auth_required {
        off.push("AUTH_REQUIRED");
    }
    if guard.allowed_origins.is_empty() {
        off.push("ALLOWED_ORIGINS");
    }
    if !off.is_empty() {
        tracing::warn!(
            off = %off.join(", "),
            "protections that are off (set them before exposing this service)"
        );
    }
}
