//! WHIP (RFC 9725) over HTTP: `POST /whip/{app_id}` with a tenant key and an SDP offer answers `201 Created` with
//! the SDP answer and the session's `Location`; `DELETE` on the `Location` hangs up; `PATCH` (trickle ICE) is
//! `405`, since the answer already carries our one host candidate (ICE-lite); `OPTIONS` answers CORS preflights,
//! so a web page on any origin can call (the bearer key, not a cookie, is the credential).
//!
//! Owns the HTTP side only: the call itself is `transport::webrtc`. Order of checks, as on `/v1`: credentials
//! (401), the key's rate limit (429), write permission (403), the app is the key's tenant's (404 otherwise, also
//! for another tenant's app), then the body (415, 413, 400), then the call's own admission (429/403/503 with
//! `Retry-After`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};

use super::ApiState;
use super::error::ApiError;
use super::extract::Caller;
use crate::sched::admission::Refusal;
use crate::store::{self, AppId, TenantScope};
use crate::transport::webrtc::session::OfferError;
use crate::transport::webrtc::{Whip, WhipRefusal};

/// The largest offer read: a browser's audio offer is 3-6 KiB.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Where a session lives; its id follows.
pub const SESSION_PATH: &str = "/whip/sessions/";

#[derive(Clone)]
pub struct WhipState {
    pub api: ApiState,
    pub whip: Whip,
}

/// The WHIP routes, with CORS headers on every answer.
pub fn router(state: WhipState) -> Router {
    Router::new()
        .route("/whip/{app_id}", post(offer).options(preflight))
        .route("/whip/sessions/{session_id}", delete(hang_up).patch(trickle).options(preflight))
        .layer(axum::middleware::map_response(cors))
        .with_state(state)
}

/// Every WHIP answer may be read by a page of any origin, `Location` included.
async fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Location, Retry-After"));
    response
}

async fn preflight() -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, DELETE, PATCH, OPTIONS"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Authorization, Content-Type"));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    (StatusCode::NO_CONTENT, headers).into_response()
}

/// The key's scope, allowed to place calls (a read-only key is 403; the operator token is not a tenant's key).
async fn calling_scope(parts: &mut axum::http::request::Parts, api: &ApiState) -> Result<TenantScope, ApiError> {
    match Caller::from_request_parts(parts, api).await? {
        Caller::Tenant(scope) => {
            scope.require_write()?;
            Ok(scope)
        }
        Caller::Operator(_) => Err(ApiError::Forbidden("WHIP takes a tenant's API key, not the operator token")),
    }
}

async fn offer(State(state): State<WhipState>, Path(app_id): Path<String>, req: Request) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let scope = calling_scope(&mut parts, &state.api).await?;
    // Another tenant's app, or a malformed id: the same 404 as an app that does not exist.
    let app_id = AppId::parse(&app_id).map_err(|_| ApiError::NotFound("app"))?;
    let store = state.api.store();
    let lookup = scope.clone();
    let app = store::blocking(store, move |s| s.app(&lookup, &app_id)).await?;
    let is_sdp = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp")));
    if !is_sdp {
        return Err(ApiError::CallRefused {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: "the offer must be sent as Content-Type: application/sdp".into(),
            retry_after_secs: None,
        });
    }
    let body =
        axum::body::to_bytes(body, MAX_OFFER_BYTES).await.map_err(|_| ApiError::PayloadTooLarge(MAX_OFFER_BYTES))?;
    let offer = sdp_text(&body)?;
    let answer = state.whip.offer(scope.tenant().as_str(), &app.name, offer).await.map_err(refusal_error)?;
    let location = format!("{SESSION_PATH}{}", answer.session_id);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers, answer.answer_sdp).into_response())
}

async fn hang_up(
    State(state): State<WhipState>,
    Path(session_id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    let scope = calling_scope(&mut parts, &state.api).await?;
    if state.whip.hang_up(scope.tenant().as_str(), &session_id) {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(ApiError::NotFound("session"))
    }
}

/// Trickle ICE is not needed (see the module docs): `405` with the methods the session takes, as RFC 9725 §4.3.1
/// allows.
async fn trickle(
    State(state): State<WhipState>,
    Path(_session_id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    calling_scope(&mut parts, &state.api).await?;
    let mut response = ApiError::MethodNotAllowed.into_response();
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("DELETE, OPTIONS"));
    Ok(response)
}

/// The offer as text: UTF-8 (SDP is), not empty.
fn sdp_text(body: &Bytes) -> Result<&str, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::BadRequest {
        code: "bad_sdp",
        field: None,
        message: "the offer is not UTF-8".into(),
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest { code: "bad_sdp", field: None, message: "the offer is empty".into() });
    }
    Ok(text)
}

/// The HTTP answer to a refused call.
fn refusal_error(refusal: WhipRefusal) -> ApiError {
    let refused = |status, code, message: String, retry_after_secs| ApiError::CallRefused {
        status,
        code,
        message,
        retry_after_secs,
    };
    match refusal {
        WhipRefusal::Offer(OfferError::NoAudio) => {
            ApiError::BadRequest { code: "no_audio", field: None, message: OfferError::NoAudio.to_string() }
        }
        WhipRefusal::Offer(e @ (OfferError::Malformed(_) | OfferError::Setup(_))) => {
            ApiError::BadRequest { code: "bad_sdp", field: None, message: e.to_string() }
        }
        WhipRefusal::Offer(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string(), None),
        WhipRefusal::UnknownApp => ApiError::NotFound("app"),
        WhipRefusal::Suspended => ApiError::Forbidden("the tenant is suspended"),
        WhipRefusal::Admission(r) => {
            let (status, code) = match r {
                Refusal::Rate { .. } => (StatusCode::TOO_MANY_REQUESTS, "call_rate_exceeded"),
                Refusal::Concurrency { .. } => (StatusCode::TOO_MANY_REQUESTS, "concurrent_call_limit"),
                Refusal::Budget => (StatusCode::FORBIDDEN, "monthly_minutes_exhausted"),
                Refusal::NodeOverload { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
                Refusal::CircuitOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "agent_failing"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "unconfigured"),
            };
            refused(status, code, r.to_string(), r.retry_after())
        }
        WhipRefusal::Unavailable { retry_after } => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "media_unavailable",
            "no media capacity for the call now".into(),
            Some(retry_after),
        ),
        WhipRefusal::AgentUnavailable { retry_after } => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "agent_unavailable",
            "the app's agent could not be reached".into(),
            Some(retry_after),
        ),
    }
}
