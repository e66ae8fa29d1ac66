//! Errors of the api, each with its HTTP status and a stable code, answered
//! as `{"error":{"code":"...","message":"..."}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidSessionId(String),
    #[error("no document for this session_id")]
    NotFound,
    #[error("the document store is unavailable")]
    Unavailable(#[source] redis::RedisError),
    #[error("{0}")]
    Auth(#[from] sessionfold_common::auth::AuthError),
    #[error("rate limit reached; retry after {0} s")]
    RateLimited(u64),
    #[error("live updates are not available: {0}")]
    LiveUnavailable(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidSessionId(_) => (StatusCode::BAD_REQUEST, "invalid_session_id"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Auth(err) => (err.status(), err.code()),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::LiveUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Unavailable(err) = &self {
            tracing::warn!(error = %err, "Redis read failed");
        }
        let body = json!({"error": {"code": code, "message": self.to_string()}});
        let mut response = (status, Json(body)).into_response();
        if let Self::RateLimited(seconds) = self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}
