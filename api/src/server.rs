//! The api service: routes, the document read and [`serve`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sessionfold_common::auth::{Access, Authenticator, bearer};
use sessionfold_common::rate_limit::{ClientIpSettings, KeyedLimit, retry_after_secs};
use sessionfold_common::redis_conn::{RedisConnection, RedisTimeouts};
use sessionfold_core::SessionId;
use sessionfold_core::session::Names;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ApiError;
use crate::live::Live;

pub(crate) struct Shared {
    /// One Redis server or a Redis Cluster (`REDIS_CLUSTER`).
    pub(crate) redis: RedisConnection,
    names: Names,
    max_session_id_bytes: usize,
    pub(crate) stopping: AtomicBool,
    authenticator: Authenticator,
    client_ip: ClientIpSettings,
    per_ip: KeyedLimit<IpAddr>,
    live: Option<Live>,
}

/// A connected api, ready to route.
#[derive(Clone)]
pub struct Api {
    pub(crate) shared: Arc<Shared>,
}

impl Api {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let redis = RedisConnection::connect(&config.redis, RedisTimeouts::default()).await?;
        let live = match &config.live.nats_url {
            Some(url) => {
                let settings = sessionfold_common::settings::NatsSettings::local(url.as_str());
                let client =
                    sessionfold_common::jetstream::connect(&settings, "sessionfold-api").await?;
                Some(Live {
                    client,
                    prefix: config.live.updates_subject_prefix.clone(),
                })
            }
            None => None,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                redis,
                names: Names {
                    key_prefix: config.redis.key_prefix.clone(),
                    ..Names::default()
                },
                max_session_id_bytes: config.max_session_id_bytes,
                stopping: AtomicBool::new(false),
                authenticator: Authenticator::new(&config.auth),
                client_ip: config.client_ip.clone(),
                per_ip: KeyedLimit::new(config.limits.api_ip_requests_per_sec, 0, 0),
                live,
            }),
        })
    }

    /// The reader-facing routes (`/data`), without health checks, so that
    /// the all-in-one mode can merge them with ingest's.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/data", get(data))
            .route("/data/stream", get(data_stream))
            .route("/sessions", get(crate::live::timeline))
            .route("/sessions/{session_id}", get(crate::live::timeline))
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
    /// A bearer token, for links and browsers.
    token: Option<String>,
}

/// Rate limit, session_id and credential checks shared by the read routes.
fn admit(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<SessionId, ApiError> {
    let client_ip = shared.client_ip.client_ip(peer, headers);
    shared
        .per_ip
        .check(&client_ip, 0)
        .map_err(|wait| ApiError::RateLimited(retry_after_secs(wait)))?;
    let query = query
        .map_err(|err| ApiError::InvalidSessionId(err.body_text()))?
        .0;
    let raw = query
        .session_id
        .ok_or_else(|| ApiError::InvalidSessionId("session_id is missing".to_owned()))?;
    let session = SessionId::parse_with_max(&raw, shared.max_session_id_bytes)
        .map_err(|err| ApiError::InvalidSessionId(err.to_string()))?;
    shared.authenticator.authorize(
        bearer(headers, query.token.as_deref()),
        session.as_str(),
        Access::Read,
    )?;
    Ok(session)
}

async fn data_stream(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let session = admit(&shared, peer, &headers, query)?;
    let live = shared
        .live
        .clone()
        .ok_or_else(|| ApiError::LiveUnavailable("the api has no NATS_URL".to_owned()))?;
    let key = shared.names.keys(&session).doc;
    let stream = crate::live::document_stream(live, shared.redis.clone(), key, session)
        .await
        .map_err(|err| ApiError::LiveUnavailable(err.to_string()))?;
    Ok(stream.into_response())
}

#[utoipa::path(
    get,
    path = "/data",
    tag = "documents",
    params(crate::openapi::DataQuery, crate::openapi::ConditionalHeaders),
    responses(crate::openapi::DataResponses)
)]
/// A session's document; `ETag` and `If-None-Match` make reads conditional.
async fn data(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let session = admit(&shared, peer, &headers, query)?;
    let key = shared.names.keys(&session).doc;
    let mut redis = shared.redis.clone();
    // Bytes, not a String: RedisJSON writes UTF-8, and checking it again
    // would cost a pass over every document served.
    let document: Option<Vec<u8>> = redis::cmd("JSON.GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .map_err(ApiError::Unavailable)?;
    let document = document.ok_or(ApiError::NotFound)?;
    Ok(crate::conditional::document_response(&headers, document))
}

/// Runs the api on `listener` until `shutdown`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = Api::build(&config).await?;
    let app = sessionfold_common::http::instrument(
        api.routes()
            .merge(sessionfold_common::health::routes(api.readiness()))
            .merge(sessionfold_common::metrics::routes())
            .merge(crate::openapi::routes()),
    );
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
