//! How every service serves HTTP: [`serve`] (the accept loop with its
//! limits, [`HttpLimits`]), and what every route gets, as one middleware
//! ([`instrument`]):
//!
//! - a request id: the client's `X-Request-Id` when it is short printable
//!   ASCII, else a new one. It replaces the request's header (so handlers
//!   that read `X-Request-Id` see the same id), is available as the
//!   [`RequestId`] extension, and is returned in the response's
//!   `X-Request-Id`;
//! - a tracing span `request{method, route, request_id, session_id}` around
//!   the handler, so every log line of the request (and of a WebSocket
//!   connection started by it) carries `request_id` and, when the query names
//!   one, `session_id`; a debug line when the request is answered;
//! - the [`HTTP_REQUESTS_TOTAL`] and [`HTTP_REQUEST_SECONDS`] metrics,
//!   labelled by the matched route (never the raw path), the method (one of
//!   the standard ones, else `other`) and the status, so that no client can
//!   grow the label sets.
//!
//! [`serve`] is HTTP/1.1 on hyper with a header-read timeout (hyper starts
//! it whenever it waits for a request head: on a new connection and after
//! each response of a keep-alive connection, so it also closes idle
//! keep-alive connections), a cap on open connections that counts every
//! kind: plain requests, SSE streams, and WebSockets, whose upgraded socket
//! keeps its place until it closes, and a cap on the bytes read from
//! sockets but not yet consumed, across all connections ([`ReadCredit`]).
//! A write the client does not take for `HTTP_WRITE_TIMEOUT_SECS` ends the
//! connection, so a client that never reads cannot hold a response (or a
//! stream, or a WebSocket) forever.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::metrics::{
    HTTP_CONNECTIONS_OPEN, HTTP_CONNECTIONS_REFUSED_TOTAL, HTTP_REQUEST_SECONDS,
    HTTP_REQUESTS_TOTAL,
};
use crate::rate_limit::IpKey;

/// What every HTTP listener enforces; 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HttpLimits {
    /// Longest wait for a request's head, in seconds: from a connection's
    /// start, and on keep-alive connections from the end of the previous
    /// response (so it is also their idle timeout). Stops slowloris clients
    /// that send headers a byte at a time.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,
    /// Open connections of all kinds (HTTP, SSE streams, WebSockets) on one
    /// listener; past it new connections are closed at once.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,
    /// Open connections from one client address (IPv6: one /64), counted
    /// at the TCP level; leave it 0 behind a reverse proxy, where every
    /// connection comes from the proxy.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub http_max_connections_per_ip: usize,
    /// Longest a connection may go without the client taking any of the
    /// bytes the server has to send, in seconds; then it is closed. Stops
    /// clients that ask for a large response or a stream and never read,
    /// which would otherwise hold its memory for as long as they like.
    #[arg(long, env = "HTTP_WRITE_TIMEOUT_SECS", default_value_t = 30)]
    pub http_write_timeout_secs: u64,
    /// Bytes read from sockets and not yet consumed (a half-received
    /// WebSocket message, say), over all connections. Each connection may
    /// hold 64 KiB outside this budget; past it, reading waits for budget,
    /// and a connection that waits 5 s is closed.
    #[arg(long, env = "HTTP_MAX_BUFFERED_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub http_max_buffered_bytes: usize,
}

crate::defaults_from_flags!(HttpLimits);

impl HttpLimits {
    /// The names of the limits that are off, for a start-up warning.
    pub fn off(&self) -> Vec<&'static str> {
        let mut off = Vec::new();
        if self.http_header_timeout_secs == 0 {
            off.push("HTTP_HEADER_TIMEOUT_SECS");
        }
        if self.http_max_connections == 0 {
            off.push("HTTP_MAX_CONNECTIONS");
        }
        if self.http_max_connections_per_ip == 0 {
            off.push("HTTP_MAX_CONNECTIONS_PER_IP");
        }
        if self.http_write_timeout_secs == 0 {
            off.push("HTTP_WRITE_TIMEOUT_SECS");
        }
        if self.http_max_buffered_bytes == 0 {
            off.push("HTTP_MAX_BUFFERED_BYTES");
        }
        off
    }
}

/// Largest buffer hyper keeps for one connection's request head (its
/// minimum is 8 KiB); no route takes a request body.
const MAX_REQUEST_BUFFER_BYTES: usize = 64 * 1024;

/// Pause after a failed accept (out of file descriptors, say), so that the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Bytes a connection may hold unconsumed outside the shared budget, so
/// that requests and small WebSocket messages never wait for it.
pub const UNCHARGED_READ_BYTES: usize = 64 * 1024;
/// Budget taken from the shared pool at a time.
const BUDGET_CHUNK_BYTES: usize = 64 * 1024;
/// Longest wait of a connection for read budget before it is closed.
pub const READ_BUDGET_WAIT: Duration = Duration::from_secs(5);

/// A connection's account with the shared read budget. Bytes read from its
/// socket are charged to it; whoever consumes them (hyper, when a request
/// head is parsed; a WebSocket handler, when a message is complete) calls
/// [`release`](Self::release). Handlers find it as a request extension;
/// dropping the connection returns whatever it still holds.
#[derive(Clone)]
pub struct ReadCredit(Arc<CreditAccount>);

struct CreditAccount {
    budget: Option<Arc<Semaphore>>,
    state: Mutex<CreditState>,
}

#[derive(Default)]
struct CreditState {
    /// Bytes read since the last release.
    unconsumed: usize,
    /// Permits taken from the budget and not yet returned.
    held: usize,
}

impl ReadCredit {
    fn new(budget: Option<Arc<Semaphore>>) -> Self {
        Self(Arc::new(CreditAccount {
            budget,
            state: Mutex::new(CreditState::default()),
        }))
    }

    /// Everything read so far has been consumed: give the budget back.
    pub fn release(&self) {
        let held = {
            let mut state = self.0.lock_state();
            state.unconsumed = 0;
            std::mem::take(&mut state.held)
        };
        if let (Some(budget), true) = (&self.0.budget, held > 0) {
            budget.add_permits(held);
        }
    }

    /// Bytes this connection may still read before it needs more budget.
    fn room(&self) -> usize {
        let state = self.0.lock_state();
        (UNCHARGED_READ_BYTES + state.held).saturating_sub(state.unconsumed)
    }

    fn charge(&self, bytes: usize) {
        self.0.lock_state().unconsumed += bytes;
    }

    fn credit(&self, permits: usize) {
        self.0.lock_state().held += permits;
    }
}

impl CreditAccount {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, CreditState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for CreditAccount {
    fn drop(&mut self) {
        let held = self.lock_state().held;
        if let (Some(budget), true) = (&self.budget, held > 0) {
            budget.add_permits(held);
        }
    }
}

/// Serves `app` on `listener` with `limits` until `shutdown` resolves, then
/// stops accepting, lets open HTTP connections finish their requests and
/// returns once they have closed (upgraded WebSockets are their service's
/// to drain). Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let total = match limits.http_max_connections {
        0 => Semaphore::MAX_PERMITS,
        max => max,
    };
    let places = Arc::new(Semaphore::new(total));
    let read_budget = (limits.http_max_buffered_bytes > 0).then(|| {
        Arc::new(Semaphore::new(
            limits.http_max_buffered_bytes.min(Semaphore::MAX_PERMITS),
        ))
    });
    let per_ip = PerIpConnections::new(limits.http_max_connections_per_ip);
    let header_timeout = match limits.http_header_timeout_secs {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    };
    let write_timeout = match limits.http_write_timeout_secs {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    };
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            refuse(stream, "total");
            continue;
        };
        let Some(ip_place) = per_ip.try_open(peer.ip()) else {
            refuse(stream, "per_ip");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let credit = ReadCredit::new(read_budget.clone());
        let io = TokioIo::new(CountedStream {
            inner: stream,
            credit: credit.clone(),
            budget: read_budget
                .clone()
                .map(tokio_util::sync::PollSemaphore::new),
            waiting_since: None,
            _places: (place, ip_place, OpenHttpConnection::open()),
            write_timeout,
            stalled: None,
        });
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                // The head is parsed: what was read for it is consumed.
                credit.release();
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request.extensions_mut().insert(credit.clone());
                tower::ServiceExt::oneshot(app.clone(), request)
            });
        let stopping = stopping.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_REQUEST_BUFFER_BYTES);
            let connection = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
            }
        });
    }
    stopping.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

fn refuse(stream: TcpStream, limit: &'static str) {
    ::metrics::counter!(HTTP_CONNECTIONS_REFUSED_TOTAL, "limit" => limit).increment(1);
    drop(stream);
}

/// A connection's socket with the places it holds under the connection
/// caps: they are freed when the socket closes, which for a WebSocket is
/// long after its HTTP request ended. Reads are charged to its
/// [`ReadCredit`]; writes that make no progress for `write_timeout` fail
/// with `TimedOut`, which ends the connection.
struct CountedStream {
    inner: TcpStream,
    credit: ReadCredit,
    budget: Option<tokio_util::sync::PollSemaphore>,
    waiting_since: Option<Pin<Box<tokio::time::Sleep>>>,
    _places: (OwnedSemaphorePermit, PerIpPlace, OpenHttpConnection),
    write_timeout: Option<Duration>,
    /// Armed while a write waits for the client to take bytes.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CountedStream {
    /// What a write that is not ready yet answers: still pending, or the
    /// end of the connection once it has waited `write_timeout`.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let Some(timeout) = self.write_timeout else {
            return Poll::Pending;
        };
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no bytes within HTTP_WRITE_TIMEOUT_SECS",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        result: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match result {
            Poll::Pending => self.stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl CountedStream {
    /// Ready once the connection may read: it has room, or got more budget.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(budget) = self.budget.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while self.credit.room() == 0 {
            match budget.poll_acquire_many(cx, BUDGET_CHUNK_BYTES as u32) {
                Poll::Ready(Some(permit)) => {
                    permit.forget();
                    self.credit.credit(BUDGET_CHUNK_BYTES);
                    self.waiting_since = None;
                }
                Poll::Ready(None) => return Poll::Ready(Err(std::io::ErrorKind::Other.into())),
                Poll::Pending => {
                    let waiting = self
                        .waiting_since
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(READ_BUDGET_WAIT)));
                    if waiting.as_mut().poll(cx).is_ready() {
                        ::metrics::counter!(HTTP_CONNECTIONS_REFUSED_TOTAL, "limit" => "read_budget")
                            .increment(1);
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "waited too long for read budget (HTTP_MAX_BUFFERED_BYTES)",
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_room(cx))?;
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        // Charged after the fact: a read may go past the room by at most
        // one buffer, which the next read then needs budget for.
        let bytes = buf.filled().len() - before;
        if bytes > 0 {
            self.credit.charge(bytes);
        }
        read
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(result, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Counts open HTTP connections for the gauge.
struct OpenHttpConnection;

impl OpenHttpConnection {
    fn open() -> Self {
        ::metrics::gauge!(HTTP_CONNECTIONS_OPEN).increment(1.0);
        Self
    }
}

impl Drop for OpenHttpConnection {
    fn drop(&mut self) {
        ::metrics::gauge!(HTTP_CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// Open connections per client address (IPv6 per /64).
#[derive(Clone)]
struct PerIpConnections {
    max: usize,
    open: Arc<Mutex<HashMap<IpKey, usize>>>,
}

/// One connection's place under the per-address cap.
struct PerIpPlace(Option<(PerIpConnections, IpKey)>);

impl PerIpConnections {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    fn try_open(&self, ip: IpAddr) -> Option<PerIpPlace> {
        if self.max == 0 {
            return Some(PerIpPlace(None));
        }
        let key = IpKey::of(ip);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PerIpPlace(Some((self.clone(), key))))
    }
}

impl Drop for PerIpPlace {
    fn drop(&mut self) {
        if let Some((connections, key)) = self.0.take() {
            let mut open = connections
                .open
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(count) = open.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

/// The `method` label: a standard method, else `other`, so that made-up
/// methods cannot grow the label set.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The `route` label: the matched route, else `other`.
fn route_label(request: &Request) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |path| path.as_str().to_owned())
}

/// The `status` label: a status code is three digits by construction, and
/// hyper answers only standard ones.
fn status_label(status: axum::http::StatusCode) -> String {
    status.as_u16().to_string()
}

/// The request-id header, in both directions.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-chosen request id that is kept.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// The id of the request being served (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The client's `X-Request-Id` when it is 1–64 bytes of printable ASCII
/// without spaces.
pub fn client_request_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_BYTES
                && id.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// A new request id: 32 lowercase hex digits.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `session_id` query parameter, if the query names a valid one
/// (strictly decoded; a refused id is not recorded in the span).
fn session_id_of(uri: &Uri) -> Option<String> {
    sessionfold_core::session::query_value(uri.query().unwrap_or(""), "session_id")
        .ok()
        .flatten()
        .filter(|raw| sessionfold_core::SessionId::parse_with_max(raw, 1024).is_ok())
}

/// Adds request ids, the request span and the HTTP metrics to every route of
/// `router` (and its fallback). Apply it once, to the finished router.
pub fn instrument(router: Router) -> Router {
    router.layer(middleware::from_fn(observe))
}

async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = client_request_id(request.headers())
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let header = HeaderValue::from_str(&id).expect("request ids are visible ASCII");
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER, header.clone());
    request.extensions_mut().insert(RequestId(id.clone()));
    let route = route_label(&request);
    let method = request.method().clone();
    // Every field is given when the span is made: recording one later
    // makes the JSON log format parse and write the span's fields again.
    let session_id = session_id_of(request.uri());
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        request_id = %id,
        session_id = session_id.as_deref(),
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    let labels = [
        ("route", route),
        ("method", method_label(&method).to_owned()),
        ("status", status_label(status)),
    ];
    ::metrics::counter!(HTTP_REQUESTS_TOTAL, &labels).increment(1);
    ::metrics::histogram!(HTTP_REQUEST_SECONDS, &labels).record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request answered"
        );
    });
    response.headers_mut().insert(REQUEST_ID_HEADER, header);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    fn app() -> Router {
        instrument(Router::new().route(
            "/echo",
            get(
                |headers: HeaderMap, axum::Extension(id): axum::Extension<RequestId>| async move {
                    // The handler sees the same id in the header and the extension.
                    assert_eq!(client_request_id(&headers), Some(id.0.as_str()));
                    id.0
                },
            ),
        ))
    }

    async fn call(request: axum::http::Request<Body>) -> (Option<String>, String) {
        let response = app().oneshot(request).await.unwrap();
        let header = response
            .headers()
            .get(REQUEST_ID_HEADER)
            .map(|value| value.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (header, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_client_request_id_is_kept_and_returned() {
        let request = axum::http::Request::get("/echo?session_id=s")
            .header("x-request-id", "abc-123")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            call(request).await,
            (Some("abc-123".to_owned()), "abc-123".to_owned())
        );
    }

    #[tokio::test]
    async fn a_missing_or_unusable_request_id_is_replaced_by_a_new_one() {
        for header in [None, Some("has space"), Some(&*"x".repeat(65))] {
            let mut request = axum::http::Request::get("/echo");
            if let Some(header) = header {
                request = request.header("x-request-id", header);
            }
            let (returned, seen) = call(request.body(Body::empty()).unwrap()).await;
            let returned = returned.expect("a request id header");
            assert_eq!(returned, seen);
            assert_eq!(returned.len(), 32, "{returned}");
            assert!(returned.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[tokio::test]
    async fn unmatched_requests_get_a_request_id_too() {
        let request = axum::http::Request::get("/nowhere")
            .header("x-request-id", "lost")
            .body(Body::empty())
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), axum::http::StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[REQUEST_ID_HEADER], "lost");
    }

    #[test]
    fn the_session_id_comes_from_the_query() {
        let uri: Uri = "/data?x=1&session_id=a%20b".parse().unwrap();
        assert_eq!(session_id_of(&uri).as_deref(), Some("a b"));
        assert_eq!(session_id_of(&"/data".parse().unwrap()), None);
        let lossy: Uri = "/data?session_id=%ff%fe".parse().unwrap();
        assert_eq!(session_id_of(&lossy), None);
    }

    #[test]
    fn the_limits_default_to_the_flags_defaults() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            limits: HttpLimits,
        }
        let parsed = <Flags as clap::Parser>::try_parse_from(["test"]).unwrap();
        assert_eq!(parsed.limits, HttpLimits::default());
    }

    #[test]
    fn read_credit_returns_its_budget_on_release_and_on_drop() {
        let budget = Arc::new(Semaphore::new(4 * BUDGET_CHUNK_BYTES));
        let credit = ReadCredit::new(Some(budget.clone()));
        assert_eq!(credit.room(), UNCHARGED_READ_BYTES);
        credit.charge(UNCHARGED_READ_BYTES);
        assert_eq!(credit.room(), 0);
        budget
            .try_acquire_many(BUDGET_CHUNK_BYTES as u32)
            .unwrap()
            .forget();
        credit.credit(BUDGET_CHUNK_BYTES);
        assert_eq!(credit.room(), BUDGET_CHUNK_BYTES);
        credit.release();
        assert_eq!(credit.room(), UNCHARGED_READ_BYTES);
        assert_eq!(budget.available_permits(), 4 * BUDGET_CHUNK_BYTES);
        budget
            .try_acquire_many(BUDGET_CHUNK_BYTES as u32)
            .unwrap()
            .forget();
        credit.credit(BUDGET_CHUNK_BYTES);
        drop(credit);
        assert_eq!(budget.available_permits(), 4 * BUDGET_CHUNK_BYTES);
    }

    #[test]
    fn made_up_methods_fold_into_other() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"M00000001").unwrap()),
            "other"
        );
    }
}
