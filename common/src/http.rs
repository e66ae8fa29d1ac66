//! What every HTTP route of every service gets, as one middleware
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
//!   labelled by the matched route (never the raw path, so labels stay
//!   bounded), method and status.

use std::collections::HashMap;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Query, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use tracing::Instrument;

use crate::metrics::{HTTP_REQUEST_SECONDS, HTTP_REQUESTS_TOTAL};

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

/// The `session_id` query parameter, if the query names one.
fn session_id_of(uri: &Uri) -> Option<String> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .ok()
        .and_then(|Query(mut query)| query.remove("session_id"))
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
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        request_id = %id,
        session_id = tracing::field::Empty,
    );
    if let Some(session_id) = session_id_of(request.uri()) {
        span.record("session_id", session_id.as_str());
    }
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    let labels = [
        ("route", route),
        ("method", method.as_str().to_owned()),
        ("status", status.as_u16().to_string()),
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
    }
}
