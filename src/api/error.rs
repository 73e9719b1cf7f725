//! The one error type of the HTTP API, answered as `{"error": code, "detail": …}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    /// Authenticated, but not allowed to do this (the viewer role, a missing CSRF token).
    Forbidden(String),
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    /// The request was not answered within its time limit.
    RequestTimeout,
    InvalidJson(String),
    InvalidEvent(String),
    InvalidParameter {
        name: String,
        detail: String,
    },
    /// The store cannot answer now; the client should retry.
    Unavailable,
    /// A limit is reached; the client should retry later. The detail says which.
    Busy(String),
}

impl ApiError {
    pub fn parameter(name: &str, detail: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            name: name.to_string(),
            detail: detail.into(),
        }
    }
}

/// What went wrong, for people (the command line says it this way).
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unauthorized => write!(f, "unauthorized"),
            ApiError::Forbidden(detail) => write!(f, "forbidden: {detail}"),
            ApiError::NotFound => write!(f, "not found"),
            ApiError::MethodNotAllowed => write!(f, "method not allowed"),
            ApiError::PayloadTooLarge => write!(f, "payload too large"),
            ApiError::RequestTimeout => write!(f, "the request took too long"),
            ApiError::InvalidJson(detail) | ApiError::InvalidEvent(detail) => write!(f, "{detail}"),
            ApiError::InvalidParameter { name, detail } => write!(f, "{name}: {detail}"),
            ApiError::Unavailable => write!(f, "the database is unavailable (the log says why)"),
            ApiError::Busy(detail) => write!(f, "{detail}"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "store error");
        ApiError::Unavailable
    }
}

/// `{"error": code, "detail": …}`, in that order.
#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl ErrorBody {
    fn code(error: &'static str) -> Self {
        ErrorBody {
            error,
            parameter: None,
            detail: None,
        }
    }

    fn detail(error: &'static str, detail: String) -> Self {
        ErrorBody {
            error,
            parameter: None,
            detail: Some(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorBody::code("unauthorized")),
            ApiError::Forbidden(detail) => (
                StatusCode::FORBIDDEN,
                ErrorBody::detail("forbidden", detail),
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, ErrorBody::code("not_found")),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorBody::code("method_not_allowed"),
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorBody::code("payload_too_large"),
            ),
            ApiError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                ErrorBody::code("request_timeout"),
            ),
            ApiError::InvalidJson(detail) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::detail("invalid_json", detail),
            ),
            ApiError::InvalidEvent(detail) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody::detail("invalid_event", detail),
            ),
            ApiError::InvalidParameter { name, detail } => (
                StatusCode::BAD_REQUEST,
                ErrorBody {
                    error: "invalid_parameter",
                    detail: Some(format!("{name}: {detail}")),
                    parameter: Some(name),
                },
            ),
            ApiError::Unavailable | ApiError::Busy(_) => {
                let body = match self {
                    ApiError::Busy(detail) => ErrorBody::detail("unavailable", detail),
                    _ => ErrorBody::code("unavailable"),
                };
                let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        };
        (status, Json(body)).into_response()
    }
}
