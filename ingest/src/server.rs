//! The ingest service: shared state, routes and [`serve`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, RawQuery, State, ws::rejection::WebSocketUpgradeRejection};
use axum::http::header::ORIGIN;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sessionfold_common::auth::{Access, Authenticator, bearer};
use sessionfold_common::http::ReadCredit;
use sessionfold_common::rate_limit::{ClientIpSettings, retry_after_secs};
use sessionfold_common::{health, jetstream as js_setup, metrics, shutdown};
use sessionfold_core::Subjects;
use sessionfold_core::session::query_value;
use sessionfold_core::{Limits, SessionId};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, ConnectionSettings, GuardSettings};
use crate::connection::{self, Connection};
use crate::group_commit::{GroupCommit, GroupCommitSettings};
use crate::guard::{ConnectionLimits, Crossed, FrameLimits, origin_allowed};
use crate::http_error::HttpError;
use crate::publisher::{JetStreamPublisher, Publish, PublishTiming, max_header_bytes};
use crate::redact::Redaction;
use crate::session_caps::{SessionCapCrossed, SessionCaps};

/// Largest WebSocket message read at all. Frames between the configured
/// frame limit and this size get a `frame_too_large` reply; larger ones
/// close the connection with 1009, so memory per connection stays bounded.
fn hard_message_cap(limits: &Limits) -> usize {
    limits.max_frame_bytes.saturating_mul(4).max(64 * 1024)
}

/// The WebSocket read buffer each connection allocates up front. The
/// library's default, 128 KiB, is zero-filled before every read and held
/// by idle connections too; a larger frame grows the buffer as it arrives.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Most bytes of replies, pongs and close frames a connection may have
/// waiting for a client that does not read. Replies are small and at most
/// `MAX_IN_FLIGHT_PER_CONNECTION` wait at once, so only a client that never
/// reads (while flooding pings, say) reaches it; its connection then fails.
pub const MAX_WRITE_BUFFER_BYTES: usize = 64 * 1024;

pub(crate) struct Shared {
    pub(crate) publisher: Arc<dyn Publish>,
    pub(crate) subjects: Subjects,
    pub(crate) limits: Limits,
    pub(crate) max_session_id_bytes: usize,
    pub(crate) connection: ConnectionSettings,
    pub(crate) in_flight_total: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) connections: TaskTracker,
    pub(crate) authenticator: Authenticator,
    pub(crate) client_ip: ClientIpSettings,
    pub(crate) guard: GuardSettings,
    pub(crate) connection_limits: Arc<ConnectionLimits>,
    pub(crate) frame_limits: Arc<FrameLimits>,
    pub(crate) session_caps: SessionCaps,
    /// `None` when no field is redacted.
    pub(crate) redaction: Option<Redaction>,
    /// Set under `LATE_EVENTS=reject`.
    pub(crate) closed_sessions: Option<Arc<dyn crate::closed::ClosedSessions>>,
}

impl Shared {
    /// The state every connection shares, publishing through `publisher`
    /// with `limits` (the configured ones, or lower where the broker
    /// demands).
    pub(crate) fn new(
        config: &Config,
        limits: Limits,
        publisher: Arc<dyn Publish>,
        authenticator: Authenticator,
        drain: CancellationToken,
    ) -> Self {
        Self {
            publisher,
            subjects: Subjects::with_events_prefix(config.nats.subject_prefix.as_str()),
            limits,
            max_session_id_bytes: config.limits.max_session_id_bytes,
            connection: config.connection.clone(),
            in_flight_total: Arc::new(Semaphore::new(config.connection.max_in_flight_total)),
            shutdown: drain,
            shutting_down: AtomicBool::new(false),
            connections: TaskTracker::new(),
            authenticator,
            client_ip: config.client_ip.clone(),
            guard: config.guard.clone(),
            connection_limits: ConnectionLimits::new(
                config.guard.max_connections,
                config.guard.max_connections_per_ip,
            ),
            frame_limits: FrameLimits::new(&config.guard, limits.max_frame_bytes),
            session_caps: SessionCaps::new(
                Duration::from_secs(config.guard.session_cap_window_secs),
                config.guard.max_sessions_per_ip,
                config.guard.max_sessions_per_prefix,
            ),
            closed_sessions: None,
            redaction: None,
        }
    }
}

/// A built ingest service, ready to route.
#[derive(Clone)]
pub struct Ingest {
    pub(crate) shared: Arc<Shared>,
    pub(crate) nats: async_nats::Client,
}

/// The frame limit JetStream can take: `MAX_FRAME_BYTES`, lowered so that a
/// frame with ingest's headers fits the server's `max_payload` and the
/// stream's `max_msg_size` (when set). A frame past it is refused with
/// `frame_too_large` before it is published, never `unavailable`.
pub fn effective_frame_limit(
    configured: usize,
    server_max_payload: usize,
    stream_max_msg_size: i32,
) -> usize {
    let headers = max_header_bytes();
    let mut limit = configured.min(server_max_payload.saturating_sub(headers));
    if let Ok(stream_max) = usize::try_from(stream_max_msg_size)
        && stream_max > 0
    {
        limit = limit.min(stream_max.saturating_sub(headers));
    }
    limit
}

impl Ingest {
    /// Connects to NATS and brings the stream to the configured settings.
    /// Cancelling `drain` makes every connection answer its in-flight frames
    /// and close with 1001.
    pub async fn build(config: &Config, drain: CancellationToken) -> anyhow::Result<Self> {
        let authenticator = Authenticator::try_new(&config.auth)?;
        let redaction = Redaction::new(
            &config.redaction.redact_fields,
            &config.redaction.hash_fields,
            config.redaction.redaction_key.as_deref(),
        )
        .context("REDACT_FIELDS, HASH_FIELDS, REDACTION_KEY")?;
        let nats = js_setup::connect(&config.nats, "sessionfold-ingest").await?;
        let js = async_nats::jetstream::new(nats.clone());
        let mut stream = js_setup::ensure_stream(&js, &config.nats)
            .await
            .context("setting up the event stream")?;
        let stream_max_msg_size = stream
            .info()
            .await
            .context("reading the event stream")?
            .config
            .max_message_size;
        let mut limits = config.limits.limits();
        let server_max_payload = nats.server_info().max_payload;
        let effective = effective_frame_limit(
            limits.max_frame_bytes,
            server_max_payload,
            stream_max_msg_size,
        );
        if effective == 0 {
            anyhow::bail!(
                "NATS accepts messages of at most {server_max_payload} bytes (stream max_msg_size {stream_max_msg_size}),                  too small for a frame plus ingest's {} bytes of headers",
                max_header_bytes()
            );
        }
        if effective < limits.max_frame_bytes {
            // Making room for the headers alone (the defaults: 1 MiB frames,
            // 1 MiB max_payload) is expected; a larger cut is worth a warning.
            if effective + max_header_bytes() < limits.max_frame_bytes {
                tracing::warn!(
                    configured = limits.max_frame_bytes,
                    effective,
                    server_max_payload,
                    stream_max_msg_size,
                    header_bytes = max_header_bytes(),
                    "MAX_FRAME_BYTES lowered: JetStream accepts less"
                );
            } else {
                tracing::info!(
                    configured = limits.max_frame_bytes,
                    effective,
                    header_bytes = max_header_bytes(),
                    "frame limit lowered by the room ingest's headers take in a message"
                );
            }
            limits.max_frame_bytes = effective;
        }
        let duplicate_window = config.nats.duplicate_window();
        let timeout = Duration::from_millis(config.connection.publish_timeout_ms);
        let retry_after = match config.connection.publish_retry_ms {
            0 => None,
            _ if duplicate_window <= timeout => {
                tracing::warn!(
                    ?duplicate_window,
                    ?timeout,
                    "publishes are not retried: the stream's duplicate window is not longer than PUBLISH_TIMEOUT_MS"
                );
                None
            }
            ms => Some(Duration::from_millis(ms)),
        };
        let publisher = JetStreamPublisher::new(
            nats.clone(),
            PublishTiming {
                timeout,
                retry_after,
            },
            config.nats.clone(),
        );
        let publisher: Arc<dyn Publish> = if config.connection.publish_batch_max_frames > 1 {
            Arc::new(GroupCommit::spawn(
                publisher,
                GroupCommitSettings {
                    max_frames: config.connection.publish_batch_max_frames,
                    max_delay: Duration::from_micros(config.connection.publish_batch_max_delay_us),
                    batches_in_flight: config.connection.publish_batches_in_flight,
                },
            ))
        } else {
            Arc::new(publisher)
        };
        let mut shared = Shared::new(config, limits, publisher, authenticator, drain);
        if !redaction.is_empty() {
            let rules: Vec<&str> = redaction
                .rules()
                .iter()
                .map(|rule| rule.path.as_str())
                .collect();
            tracing::info!(?rules, "redacting fields before they are published");
            shared.redaction = Some(redaction);
        }
        if config.late.late_events == sessionfold_common::settings::LatePolicy::Reject {
            shared.closed_sessions = Some(Arc::new(crate::closed::ClosedBucket::new(
                js.clone(),
                config.late.closed_sessions_bucket.as_str(),
            )));
        }
        Ok(Self {
            shared: Arc::new(shared),
            nats,
        })
    }

    /// The frame limit in force (see [`effective_frame_limit`]).
    pub fn max_frame_bytes(&self) -> usize {
        self.shared.limits.max_frame_bytes
    }

    /// The producer-facing routes (`/websocket`), without health checks, so
    /// that the all-in-one mode can merge them with the api's.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/websocket", get(websocket))
            .with_state(self.shared.clone())
    }

    /// Marks the service as stopping: readiness fails from now on.
    pub fn begin_shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Waits until every connection has answered its frames and closed.
    pub async fn drain(&self) {
        self.shared.connections.close();
        self.shared.connections.wait().await;
        if let Err(err) = self.nats.flush().await {
            tracing::warn!(error = %err, "flushing NATS at shutdown");
        }
    }
}

/// Runs ingest on `listener` until `shutdown` is cancelled, then answers
/// every in-flight frame, closes sockets with 1001 and returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let drain = CancellationToken::new();
    let ingest = Ingest::build(&config, drain.clone()).await?;
    let app = sessionfold_common::http::instrument(
        ingest.routes().merge(health::liveness_routes()).merge(
            ingest.shared.authenticator.guard_ops(
                health::readiness_routes(ingest.readiness(&config.nats)).merge(metrics::routes()),
            ),
        ),
    );
    tracing::info!(addr = %listener.local_addr()?, "ingest listening");
    let stopping = ingest.clone();
    let grace = config.shutdown.grace();
    sessionfold_common::http::serve(listener, app, &config.http, async move {
        shutdown::after_grace(shutdown, grace, || stopping.begin_shutdown()).await;
        drain.cancel();
    })
    .await?;
    ingest.drain().await;
    tracing::info!("ingest stopped");
    Ok(())
}

/// The request id of an HTTP request: the client's `X-Request-Id` when it is
/// short printable ASCII, else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    sessionfold_common::http::client_request_id(headers)
        .map(str::to_owned)
        .unwrap_or_else(sessionfold_common::http::new_request_id)
}

async fn websocket(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    credit: Option<axum::Extension<ReadCredit>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let request_id = request_id(&headers);
    let client_ip = shared.client_ip.client_ip(peer, &headers);
    let mut response = accept(
        shared,
        &headers,
        client_ip,
        query,
        upgrade,
        request_id.clone(),
        credit.map(|axum::Extension(credit)| credit),
    )
    .unwrap_or_else(|err| {
        tracing::info!(%request_id, error = %err, "refused a connection");
        err.into_response()
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn accept(
    shared: Arc<Shared>,
    headers: &HeaderMap,
    client_ip: IpAddr,
    query: Option<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    request_id: String,
    credit: Option<ReadCredit>,
) -> Result<Response, HttpError> {
    let session = SessionId::from_query(query.as_deref(), shared.max_session_id_bytes)
        .map_err(|err| HttpError::InvalidSessionId(err.to_string()))?;
    let token = query_value(query.as_deref().unwrap_or(""), "token")
        .map_err(|_| HttpError::Auth(sessionfold_common::auth::AuthError::Invalid))?;
    let origin = headers.get(ORIGIN).and_then(|value| value.to_str().ok());
    if !origin_allowed(&shared.guard.allowed_origins, origin) {
        return Err(HttpError::OriginNotAllowed);
    }
    let grant = shared.authenticator.authorize(
        bearer(headers, token.as_deref()),
        session.as_str(),
        Access::Write,
    )?;
    let upgrade = upgrade.map_err(|err| HttpError::NotAWebSocket(err.body_text()))?;
    if shared.shutting_down.load(Ordering::Relaxed) {
        return Err(HttpError::ShuttingDown);
    }
    shared
        .session_caps
        .admit(client_ip, grant.prefix, &session, std::time::Instant::now())
        .map_err(|crossed| match crossed {
            SessionCapCrossed::PerAddress { retry_after } => HttpError::TooManySessions {
                who: "this address",
                retry_after_secs: retry_after_secs(retry_after),
            },
            SessionCapCrossed::PerPrefix { retry_after } => HttpError::TooManySessions {
                who: "this token's prefix",
                retry_after_secs: retry_after_secs(retry_after),
            },
            SessionCapCrossed::Full => HttpError::SessionTableFull,
        })?;
    let slot = shared
        .connection_limits
        .try_open(client_ip)
        .map_err(|crossed| match crossed {
            Crossed::Total => HttpError::TooManyConnections,
            Crossed::PerIp => HttpError::TooManyConnectionsFromIp,
        })?;
    let cap = hard_message_cap(&shared.limits);
    let tracking = shared.connections.token();
    let span = tracing::info_span!("connection", session_id = %session, %request_id);
    Ok(upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| {
            async move {
                let _tracking = tracking;
                let _slot = slot;
                let (sink, source) = futures::StreamExt::split(socket);
                let closed_for_good = match &shared.closed_sessions {
                    Some(closed) => closed.is_closed(&session).await,
                    None => false,
                };
                let mut connection = Connection::new(shared, session, request_id, client_ip, grant);
                connection.read_credit = credit;
                connection.closed_for_good = closed_for_good;
                connection::run(sink, source, connection).await;
            }
            .instrument(span)
        }))
}
