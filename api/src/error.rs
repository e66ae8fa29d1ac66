//! Errors of the api, each with its HTTP status and a stable code, answered
//! as `{"error":{"code":"...","message":"..."}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::read::{ReadError, Unavailable};

/// Where clients are sent for documents over the size limit.
pub const PAGING_HINT: &str =
    "read its children in pages from GET /data/children?session_id=…&from=0&limit=…";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidSessionId(String),
    #[error("no document for this session_id")]
    NotFound,
    #[error("the document store is unavailable: {0}")]
    Unavailable(Unavailable),
    #[error(
        "the document is {bytes} bytes, over this api's limit of {limit} (API_MAX_DOCUMENT_BYTES); {PAGING_HINT}"
    )]
    DocumentTooLarge { bytes: u64, limit: u64 },
    #[error("{0}")]
    Auth(#[from] sessionfold_common::auth::AuthError),
    #[error("rate limit reached; retry after {0} s")]
    RateLimited(u64),
    #[error("{}", if *per_ip { "too many live streams from this address" } else { "too many live streams are open" })]
    TooManyStreams { per_ip: bool },
    #[error("live updates are not available: {0}")]
    LiveUnavailable(String),
    /// A query parameter other than `session_id` is malformed or over its
    /// cap; the code names it (`invalid_min_seq`, `invalid_wait_ms`).
    #[error("{1}")]
    InvalidParameter(&'static str, String),
    #[error(
        "the frames up to stream sequence {min_seq} are not all applied yet (applied up to {ack_floor}); retry, or wait longer with wait_ms"
    )]
    NotYetApplied { min_seq: u64, ack_floor: u64 },
    #[error("min_seq reads are not available: {0}")]
    WaitUnavailable(String),
    #[error("{}", if *per_ip { "too many min_seq reads are waiting from this address" } else { "too many min_seq reads are waiting" })]
    TooManyWaiters { per_ip: bool },
    #[error("{0}")]
    InvalidQuery(String),
    #[error(
        "finding sessions needs the query engine's index of sessions, which this Redis does not have ({0}); every other route works"
    )]
    SearchUnavailable(String),
    #[error(
        "the page is {bytes} bytes, over this api's limit of {limit} (API_MAX_DOCUMENT_BYTES); ask for fewer children"
    )]
    PageTooLarge { bytes: u64, limit: u64 },
    #[error(
        "finding sessions has used its share of Redis's time (API_SEARCH_BUDGET_MS per second); retry after {0} s, or narrow the query"
    )]
    SearchBusy(u64),
}

impl From<ReadError> for ApiError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Unavailable(reason) => Self::Unavailable(reason),
            ReadError::TooLarge { bytes, limit } => Self::DocumentTooLarge { bytes, limit },
        }
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidSessionId(_) => (StatusCode::BAD_REQUEST, "invalid_session_id"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::DocumentTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "document_too_large"),
            Self::Auth(err) => (err.status(), err.code()),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::TooManyStreams { per_ip: true } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_streams")
            }
            Self::TooManyStreams { per_ip: false } => {
                (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams")
            }
            Self::LiveUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::WaitUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::InvalidParameter(code, _) => (StatusCode::BAD_REQUEST, code),
            Self::NotYetApplied { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_yet_applied"),
            Self::TooManyWaiters { per_ip: true } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_waiters")
            }
            Self::TooManyWaiters { per_ip: false } => {
                (StatusCode::SERVICE_UNAVAILABLE, "too_many_waiters")
            }
            Self::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            Self::SearchUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "search_unavailable"),
            Self::PageTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "page_too_large"),
            Self::SearchBusy(_) => (StatusCode::SERVICE_UNAVAILABLE, "search_busy"),
        }
    }

    /// The stable code of this error, as its body says.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    /// Seconds a client should wait before trying again, for the refusals
    /// that pass.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited(seconds) | Self::SearchBusy(seconds) => Some(*seconds),
            Self::Unavailable(_)
            | Self::TooManyStreams { .. }
            | Self::LiveUnavailable(_)
            | Self::WaitUnavailable(_)
            | Self::NotYetApplied { .. }
            | Self::TooManyWaiters { .. } => Some(1),
            // The index appears when a processor starts on a Redis with the
            // query engine: not within a second.
            Self::SearchUnavailable(_) => Some(60),
            _ => None,
        }
    }
}

/// The error body of a document over the size limit, also sent as the
/// `error` event of a live stream.
pub fn too_large_body(bytes: u64, limit: u64) -> Value {
    let err = ApiError::DocumentTooLarge { bytes, limit };
    json!({"error": {
        "code": "document_too_large",
        "message": err.to_string(),
        "document_bytes": bytes,
        "max_document_bytes": limit,
    }})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Unavailable(Unavailable::Redis(err)) => {
                tracing::warn!(error = %err, "Redis read failed");
            }
            Self::Unavailable(reason) => tracing::debug!(reason = %reason, "read refused"),
            _ => {}
        }
        let body = match &self {
            Self::DocumentTooLarge { bytes, limit } => too_large_body(*bytes, *limit),
            _ => json!({"error": {"code": code, "message": self.to_string()}}),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
