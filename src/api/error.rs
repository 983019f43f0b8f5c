//! The API's one error type and its JSON shape: `{"error": {"code": "...", "message": "...", "field": "..."}}`
//! (`field` only when one input is to blame; `429` and refused calls add `Retry-After`). Store errors map to statuses here and nowhere
//! else: `NotFound` 404, `Conflict` 409, `Invalid` 400, `ReadOnly` 403, `Backend` 500 (its message goes to the log,
//! not to the client).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::{Conflict, InvalidInput, StoreError};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No credentials, or credentials that grant nothing (unknown, revoked, expired key; wrong token). One answer
    /// for all, so a client cannot tell a revoked key from a made-up one.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// Authenticated, but not allowed to do this (a tenant key on an operator route).
    #[error("{0}")]
    Forbidden(&'static str),
    /// What was asked for does not exist for the caller (never "exists but is another tenant's").
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A value the client sent is unusable; `code` is `invalid` for a value, `malformed_json` for a body that
    /// does not parse.
    #[error("{message}")]
    BadRequest { code: &'static str, field: Option<String>, message: String },
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    /// The credential used up its request rate (`api.requests_per_second`, `api.burst`): `429` with `Retry-After`.
    #[error("too many requests with this credential: retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u32 },
    /// A call was refused (WHIP): by admission (`429` rate or concurrency, `403` budget, `503` node or agent), the
    /// tenant's status, or the media side; `Retry-After` when waiting helps.
    #[error("{message}")]
    CallRefused { status: StatusCode, code: &'static str, message: String, retry_after_secs: Option<u32> },
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest { code: "invalid", field: Some(field.to_owned()), message: message.into() }
    }

    /// The HTTP status and the stable `code` of the JSON body.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Store(e) => match e {
                StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                StoreError::Conflict(c) => (StatusCode::CONFLICT, conflict_code(c)),
                StoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
                StoreError::ReadOnly => (StatusCode::FORBIDDEN, "read_only"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::CallRefused { status, code, .. } => (*status, code),
        }
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> ApiError {
        ApiError::Store(StoreError::Invalid(e))
    }
}

fn conflict_code(c: &Conflict) -> &'static str {
    match c {
        Conflict::TenantExists => "tenant_exists",
        Conflict::StatusTransition { .. } => "status_transition",
        Conflict::NumberTakenByAnotherTenant => "number_taken",
        Conflict::NumberAlreadyClaimed => "number_already_claimed",
        Conflict::NameTaken => "name_taken",
        Conflict::AppInUse => "app_in_use",
        Conflict::CallAlreadyRecorded => "call_already_recorded",
        Conflict::TenantOffboarding => "tenant_offboarding",
        Conflict::OffboardStep => "offboard_step",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let (message, field) = match &self {
            ApiError::Store(StoreError::Invalid(e)) => (e.reason.clone(), Some(e.field.to_owned())),
            ApiError::Store(StoreError::Backend(e)) => {
                tracing::error!(error = %e, "store failure");
                ("internal error: the server log has the details (see x-request-id)".to_owned(), None)
            }
            ApiError::BadRequest { message, field, .. } => (message.clone(), field.clone()),
            other => (other.to_string(), None),
        };
        let mut body = json!({ "code": code, "message": message });
        if let Some(f) = field {
            body["field"] = json!(f);
        }
        let mut response = (status, axum::Json(json!({ "error": body }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let retry_after = match self {
            ApiError::RateLimited { retry_after_secs } => Some(retry_after_secs),
            ApiError::CallRefused { retry_after_secs, .. } => retry_after_secs,
            _ => None,
        };
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The answer to a path no route matches under `/v1`.
pub async fn no_route() -> ApiError {
    ApiError::NotFound("route")
}

/// The answer to a known path with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
