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
}

impl HttpError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidSessionId(_) => (StatusCode::BAD_REQUEST, "invalid_session_id"),
            Self::NotAWebSocket(_) => (StatusCode::BAD_REQUEST, "not_a_websocket"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = json!({"error": {"code": code, "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}
