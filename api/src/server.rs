//! The api service: routes, the document read and [`serve`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use sessionfold_common::auth::{Access, Authenticator, bearer};
use sessionfold_common::rate_limit::{ClientIpSettings, KeyedLimit, retry_after_secs};
use sessionfold_common::redis_conn::{RedisConnection, RedisTimeouts};
use sessionfold_core::Keys;
use sessionfold_core::SessionId;
use sessionfold_core::session::query_value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::children::ChildrenSettings;
use crate::config::Config;
use crate::error::ApiError;
use crate::live::{Live, StreamRequest};
use crate::read::ReadPool;
use crate::sessions::SessionSearch;

pub(crate) struct Shared {
    /// One Redis server or a Redis Cluster (`REDIS_CLUSTER`), for readiness;
    /// documents are read through `reads`.
    pub(crate) redis: RedisConnection,
    pub(crate) reads: Arc<ReadPool>,
    pub(crate) keys: Keys,
    pub(crate) max_session_id_bytes: usize,
    pub(crate) stopping: AtomicBool,
    /// Cancelled when a shutdown starts: live streams end.
    closing: CancellationToken,
    pub(crate) authenticator: Authenticator,
    pub(crate) client_ip: ClientIpSettings,
    pub(crate) per_ip: KeyedLimit<IpAddr>,
    live: Live,
    applied: crate::applied::Applied,
    max_wait_ms: u64,
    updates: sessionfold_core::Subjects,
    /// `GET /sessions`, on connections of its own.
    pub(crate) search: SessionSearch,
    pub(crate) children: ChildrenSettings,
}

/// A connected api, ready to route.
#[derive(Clone)]
pub struct Api {
    pub(crate) shared: Arc<Shared>,
}

impl Api {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let redis = RedisConnection::connect(&config.redis, RedisTimeouts::default()).await?;
        let client = match &config.live.nats_url {
            Some(url) => {
                let settings = sessionfold_common::settings::NatsSettings::local(url.as_str());
                Some(sessionfold_common::jetstream::connect(&settings, "sessionfold-api").await?)
            }
            None => None,
        };
        let applied =
            crate::applied::Applied::new(client.clone(), &config.consumer, &config.limits.waits);
        let live = Live::new(client, &config.live, &config.limits.streams);
        Ok(Self {
            shared: Arc::new(Shared {
                redis,
                reads: Arc::new(ReadPool::new(&config.redis, &config.limits.reads)),
                keys: Keys::new(config.redis.key_prefix.as_str()),
                max_session_id_bytes: config.max_session_id_bytes,
                stopping: AtomicBool::new(false),
                closing: CancellationToken::new(),
                authenticator: Authenticator::new(&config.auth),
                client_ip: config.client_ip.clone(),
                per_ip: KeyedLimit::new(config.limits.api_ip_requests_per_sec, 0, 0),
                live,
                applied,
                max_wait_ms: config.limits.waits.max_wait_ms,
                updates: sessionfold_core::Subjects {
                    updates_prefix: config.live.updates_subject_prefix.clone(),
                    ..sessionfold_core::Subjects::default()
                },
                search: SessionSearch::new(&config.redis, &config.limits.sessions),
                children: config.limits.children.clone(),
            }),
        })
    }

    /// The reader-facing routes (`/data`), without health checks, so that
    /// the all-in-one mode can merge them with ingest's.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/data", get(data))
            .route("/data/stream", get(data_stream))
            .route("/data/children", get(crate::children::page))
            .route("/sessions", get(crate::sessions::list))
            .route("/timeline", get(crate::pages::list))
            .route("/timeline/{session_id}", get(crate::pages::timeline))
            .route("/assets/{name}", get(crate::pages::asset))
            .with_state(self.shared.clone())
    }

    /// Readiness turns 503 and live streams end (with `shutdown`), so the
    /// server's graceful shutdown does not wait for them.
    pub fn begin_shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.shared.closing.cancel();
    }

    /// Live streams open now.
    pub fn open_streams(&self) -> usize {
        self.shared.live.open_streams()
    }

    /// Sessions whose live streams share a feed now.
    pub fn live_feeds(&self) -> usize {
        self.shared.live.feeds()
    }
}

/// A request that passed [`admit`].
pub(crate) struct Admitted {
    pub(crate) session: SessionId,
    client_ip: IpAddr,
    /// When its credential expires, for a session token.
    expires_at: Option<u64>,
}

/// Rate limit, session_id and credential checks shared by the read routes.
/// The query is decoded strictly (the same parser as ingest's): bytes that
/// are not UTF-8 are refused, never replaced.
pub(crate) fn admit(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Admitted, ApiError> {
    let client_ip = shared.client_ip.client_ip(peer, headers);
    shared
        .per_ip
        .check(&client_ip, 0)
        .map_err(|wait| ApiError::RateLimited(retry_after_secs(wait)))?;
    let session = SessionId::from_query(query, shared.max_session_id_bytes)
        .map_err(|err| ApiError::InvalidSessionId(err.to_string()))?;
    // A token that cannot be decoded is no valid credential.
    let token = query_value(query.unwrap_or(""), "token")
        .map_err(|_| ApiError::Auth(sessionfold_common::auth::AuthError::Invalid))?;
    let grant = shared.authenticator.authorize(
        bearer(headers, token.as_deref()),
        session.as_str(),
        Access::Read,
    )?;
    Ok(Admitted {
        expires_at: grant.expires_at,
        session,
        client_ip,
    })
}

#[utoipa::path(
    get,
    path = "/data/stream",
    tag = "documents",
    params(crate::openapi::DataQuery),
    responses(crate::openapi::StreamResponses)
)]
/// A session's document, live: pushed as Server-Sent Events when the
/// stream opens and after every change.
async fn data_stream(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let admitted = admit(&shared, peer, &headers, query.as_deref())?;
    let keys = shared.keys.session(&admitted.session);
    let request = StreamRequest {
        key: keys.doc,
        state_key: keys.state,
        session: admitted.session,
        client_ip: admitted.client_ip,
        expires_at: admitted.expires_at,
    };
    shared
        .live
        .stream(request, shared.reads.clone(), shared.closing.clone())
}

#[utoipa::path(
    get,
    path = "/data",
    tag = "documents",
    params(
        crate::openapi::DataQuery,
        crate::openapi::MinSeqQuery,
        crate::openapi::ConditionalHeaders
    ),
    responses(crate::openapi::DataResponses)
)]
/// A session's document; `ETag` and `If-None-Match` make reads conditional.
/// With `min_seq`, it answers once every accepted frame up to that stream
/// sequence is applied (waiting up to `wait_ms`).
async fn data(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let admitted = admit(&shared, peer, &headers, query.as_deref())?;
    if let Some(want) =
        crate::applied::MinSeq::from_query(query.as_deref().unwrap_or(""), shared.max_wait_ms)?
    {
        shared
            .applied
            .wait(
                want,
                admitted.session.as_str(),
                shared.updates.update(&admitted.session),
                admitted.client_ip,
            )
            .await?;
    }
    let keys = shared.keys.session(&admitted.session);
    let document = shared
        .reads
        .read_with_state(&keys.doc, Some(&keys.state))
        .await?
        .ok_or(ApiError::NotFound)?;
    if document.is_large() {
        // Hashing megabytes for the ETag would hold up the requests
        // waiting on this worker thread.
        return Ok(tokio::task::spawn_blocking(move || {
            crate::conditional::document_response(&headers, document)
        })
        .await
        .expect("building a response does not panic"));
    }
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
            .merge(sessionfold_common::health::liveness_routes())
            .merge(
                Authenticator::new(&config.auth).guard_ops(
                    sessionfold_common::health::readiness_routes(api.readiness())
                        .merge(sessionfold_common::metrics::routes())
                        .merge(crate::openapi::routes()),
                ),
            ),
    );
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let mut off = config.http.off();
    off.extend(config.limits.off());
    if !off.is_empty() {
        tracing::warn!(limits = ?off, "protections are off");
    }
    let stopping = api.clone();
    let grace = config.shutdown.grace();
    sessionfold_common::http::serve(listener, app, &config.http, async move {
        sessionfold_common::shutdown::after_grace(shutdown, grace, || stopping.begin_shutdown())
            .await;
    })
    .await?;
    tracing::info!("api stopped");
    Ok(())
}
