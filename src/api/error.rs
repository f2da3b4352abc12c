//! The one error type handlers return: each variant maps to a status code and a
//! JSON body `{"error": "<sentence>", "code": "<snake_case>"}`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

/// Every error: a sentence a person can act on, and a stable code.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidTenantId(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PoolRequired(String),
    #[error("no pool named {0:?}; GET /pools lists the pools")]
    PoolNotFound(String),
    #[error("tenant {0:?} holds no claim{1}")]
    TenantNotFound(String, String),
    #[error("no container with id {0:?}")]
    ContainerNotFound(String),
    #[error("{0}")]
    Conflict(&'static str, String),
    #[error("{message}")]
    PoolExhausted {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    PoolUnavailable(String),
    #[error("{0}")]
    SyncFailed(String),
    #[error("{0}")]
    SyncNotConfigured(String),
    #[error("{0}")]
    ManualSyncDisabled(String),
    #[error("missing or wrong bearer token; send 'Authorization: Bearer <BOILERHOUSE_API_TOKEN>'")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("request body is larger than 1 MiB")]
    PayloadTooLarge,
    #[error("no route for {0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    DockerUnavailable(String),
    #[error("the request took longer than {} ms (BOILERHOUSE_HTTP_REQUEST_TIMEOUT_MS) and was stopped", .0.as_millis())]
    RequestTimeout(Duration),
    #[error("{0}")]
    LedgerUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidTenantId(_)
            | BadRequest(_)
            | PoolRequired(_)
            | SyncNotConfigured(_)
            | ManualSyncDisabled(_) => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            PoolNotFound(_) | TenantNotFound(..) | ContainerNotFound(_) | NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Conflict(..) => StatusCode::CONFLICT,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            SyncFailed(_) => StatusCode::BAD_GATEWAY,
            PoolExhausted { .. }
            | PoolUnavailable(_)
            | DockerUnavailable(_)
            | LedgerUnavailable(_)
            | RequestTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidTenantId(_) => "invalid_tenant_id",
            BadRequest(_) => "invalid_request",
            PoolRequired(_) => "pool_required",
            PoolNotFound(_) => "pool_not_found",
            TenantNotFound(..) => "tenant_not_found",
            ContainerNotFound(_) => "container_not_found",
            Conflict(code, _) => code,
            PoolExhausted { .. } => "pool_exhausted",
            PoolUnavailable(_) => "pool_unavailable",
            SyncFailed(_) => "sync_failed",
            SyncNotConfigured(_) => "sync_not_configured",
            ManualSyncDisabled(_) => "manual_sync_disabled",
            Unauthorized => "unauthorized",
            Forbidden(_) => "forbidden",
            PayloadTooLarge => "payload_too_large",
            NotFound(_) => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            DockerUnavailable(_) => "docker_unavailable",
            LedgerUnavailable(_) => "ledger_unavailable",
            RequestTimeout(_) => "request_timeout",
            Internal(_) => "internal_error",
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::Conflict("conflict", message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        }
        let body = Json(json!({ "error": self.to_string(), "code": self.code() }));
        let mut response = (status, body).into_response();
        match &self {
            ApiError::PoolExhausted { retry_after, .. } => {
                let secs = retry_after.as_secs().max(1);
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<crate::pool::PoolError> for ApiError {
    fn from(e: crate::pool::PoolError) -> Self {
        use crate::pool::PoolError as P;
        match e {
            P::Exhausted(m) => ApiError::PoolExhausted {
                message: m,
                retry_after: Duration::from_secs(1),
            },
            P::Unavailable(m) => ApiError::PoolUnavailable(m),
            P::SyncFailed(m) => ApiError::SyncFailed(m),
            P::NotClaimed => ApiError::TenantNotFound(String::new(), String::new()),
            P::Busy(m) => ApiError::Conflict("claim_busy", m),
            P::ContainerNotFound(id) => ApiError::ContainerNotFound(id),
            e @ P::ContainerClaimed(..) => ApiError::Conflict("container_claimed", e.to_string()),
            P::Invalid(m) => ApiError::BadRequest(m),
            P::Ledger(m) => ApiError::LedgerUnavailable(m),
            P::Internal(m) => ApiError::Internal(m),
            P::Stopped => ApiError::DockerUnavailable("the daemon is shutting down".into()),
            P::Removed(id) => ApiError::PoolNotFound(id),
        }
    }
}
