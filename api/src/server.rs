//! The api service: routes, the document read and [`serve`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use redis::aio::ConnectionManager;
use sessionfold_core::SessionId;
use sessionfold_core::session::Names;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ApiError;

struct Shared {
    redis: ConnectionManager,
    names: Names,
    max_session_id_bytes: usize,
    stopping: AtomicBool,
}

/// A connected api, ready to route.
#[derive(Clone)]
pub struct Api {
    shared: Arc<Shared>,
}

impl Api {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let client = redis::Client::open(config.redis.redis_url.as_str())
            .with_context(|| format!("invalid REDIS_URL {:?}", config.redis.redis_url))?;
        let redis = ConnectionManager::new(client)
            .await
            .with_context(|| format!("connecting to Redis at {}", config.redis.redis_url))?;
        Ok(Self {
            shared: Arc::new(Shared {
                redis,
                names: Names {
                    key_prefix: config.redis.key_prefix.clone(),
                    ..Names::default()
                },
                max_session_id_bytes: config.max_session_id_bytes,
                stopping: AtomicBool::new(false),
            }),
        })
    }

    /// The reader-facing routes (`/data`), without health checks, so that
    /// the all-in-one mode can merge them with ingest's.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/data", get(data))
            .with_state(self.shared.clone())
    }

    /// Ready while Redis answers and no shutdown is under way.
    pub async fn is_ready(&self) -> bool {
        if self.shared.stopping.load(Ordering::Relaxed) {
            return false;
        }
        let mut redis = self.shared.redis.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut redis)
            .await
            .is_ok()
    }

    pub fn begin_shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, serde::Deserialize)]
struct SessionQuery {
    session_id: Option<String>,
}

async fn data(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let raw = query
        .map_err(|err| ApiError::InvalidSessionId(err.body_text()))?
        .0
        .session_id
        .ok_or_else(|| ApiError::InvalidSessionId("session_id is missing".to_owned()))?;
    let session = SessionId::parse_with_max(&raw, shared.max_session_id_bytes)
        .map_err(|err| ApiError::InvalidSessionId(err.to_string()))?;
    let key = shared.names.keys(&session).doc;
    let mut redis = shared.redis.clone();
    let document: Option<String> = redis::cmd("JSON.GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .map_err(ApiError::Unavailable)?;
    let document = document.ok_or(ApiError::NotFound)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document,
    )
        .into_response())
}

/// Health routes: `/healthz` (alive) and `/readyz` (Redis answers, not
/// stopping).
fn health_routes(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let api = api.clone();
                async move {
                    if api.is_ready().await {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

/// Runs the api on `listener` until `shutdown`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = Api::build(&config).await?;
    let app = api.routes().merge(health_routes(api.clone()));
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let grace = config.shutdown.grace();
        sessionfold_common::shutdown::after_grace(shutdown, grace, || api.begin_shutdown()).await;
    })
    .await?;
    tracing::info!("api stopped");
    Ok(())
}
