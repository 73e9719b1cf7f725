//! The one error type of the HTTP API, answered as `{"error": code, "detail": …}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    InvalidJson(String),
    InvalidEvent(String),
    InvalidParameter {
        name: String,
        detail: String,
    },
    /// The store cannot answer now; the client should retry.
    Unavailable,
}

impl ApiError {
    pub fn parameter(name: &str, detail: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            name: name.to_string(),
            detail: detail.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "store error");
        ApiError::Unavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"})),
            ApiError::NotFound => (StatusCode::NOT_FOUND, json!({"error": "not_found"})),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed"}),
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload_too_large"}),
            ),
            ApiError::InvalidJson(detail) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_json", "detail": detail}),
            ),
            ApiError::InvalidEvent(detail) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "invalid_event", "detail": detail}),
            ),
            ApiError::InvalidParameter { name, detail } => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_parameter", "parameter": name, "detail": format!("{name}: {detail}")}),
            ),
            ApiError::Unavailable => {
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": "unavailable"})),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        };
        (status, Json(body)).into_response()
    }
}
