//! The one error shape of the API: `{"error": {"code": "…", "message": "…"}}` with a status
//! from an explicit table. Internal details (database, IO) never reach the client.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mica_identity::IdentityError;
use serde::Serialize;

/// An error as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_credentials`, `rate_limited`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// For `rate_limited` and similar: seconds to wait (also in the `Retry-After` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "there is nothing at this address",
        )
    }
    pub fn unauthenticated(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on the server; it has been logged, please try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self
            .retry_after
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .map(|s| s.max(1));
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                retry_after: retry,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = retry {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mica\""),
            );
        }
        resp
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        if let IdentityError::Internal(detail) = &e {
            tracing::error!(error = %detail, "internal error");
            return ApiError::internal();
        }
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
            retry_after: e.retry_after(),
        }
    }
}

impl From<mica_commerce::CommerceError> for ApiError {
    fn from(e: mica_commerce::CommerceError) -> Self {
        if let mica_commerce::CommerceError::Store(e) = e {
            return ApiError::from(e);
        }
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<mica_store::StoreError> for ApiError {
    fn from(e: mica_store::StoreError) -> Self {
        if matches!(e, mica_store::StoreError::UnstorableText) {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                e.to_string(),
            );
        }
        if matches!(e, mica_store::StoreError::Gone) {
            return ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string());
        }
        tracing::error!(error = %e, "storage error");
        ApiError::internal()
    }
}
