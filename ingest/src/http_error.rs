//! Refused HTTP requests, answered with a JSON body
//! `{"error":{"code":"...","message":"..."}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    InvalidSessionId(String),
    #[error("this endpoint expects a WebSocket upgrade: {0}")]
    NotAWebSocket(String),
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Auth(#[from] sessionfold_common::auth::AuthError),
    #[error("connections from this origin are not allowed")]
    OriginNotAllowed,
    #[error("too many open connections")]
    TooManyConnections,
    #[error("too many open connections from this address")]
    TooManyConnectionsFromIp,
    #[error(
        "{who} opened the most sessions it may within the window; retry after {retry_after_secs} s"
    )]
    TooManySessions {
        who: &'static str,
        retry_after_secs: u64,
    },
    #[error("ingest tracks as many sessions as it can; try again later")]
    SessionTableFull,
}

impl HttpError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidSessionId(_) => (StatusCode::BAD_REQUEST, "invalid_session_id"),
            Self::NotAWebSocket(_) => (StatusCode::BAD_REQUEST, "not_a_websocket"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Auth(err) => (err.status(), err.code()),
            Self::OriginNotAllowed => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            Self::TooManyConnections => (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections"),
            Self::TooManyConnectionsFromIp => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_connections")
            }
            Self::TooManySessions { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_sessions"),
            Self::SessionTableFull => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = json!({"error": {"code": code, "message": self.to_string()}});
        let mut response = (status, Json(body)).into_response();
        if let Self::TooManySessions {
            retry_after_secs, ..
        } = self
            && let Ok(value) = retry_after_secs.to_string().parse()
        {
            response.headers_mut().insert("retry-after", value);
        }
        response
    }
}
