//! Request extractors: who is calling ([`Caller`]), which tenant's rows they may touch ([`ReadScope`],
//! [`WriteScope`]), and the inputs (JSON [`Body`], query [`Params`], path [`Ids`]), each failing with an
//! [`ApiError`] (JSON), never axum's plain-text rejections. Plus the middleware that gives each request an id and a
//! span with `request_id` and `tenant`.
//!
//! Order of checks, the same on every route: credentials (401), then the credential's rate limit (429), then the
//! tenant named in the path (404 unless it is the caller's or the caller is the operator), then write permission
//! (403 for a read-only key), then the inputs (400). So another tenant's path answers 404 whatever else is wrong with the request.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::ApiState;
use super::error::ApiError;
use super::ratelimit::Credential;
use crate::store::{self, Actor, AuthError, Operator, TenantScope, TenantSlug};

/// The largest request body the API reads (apps with many custom parameters are the largest bodies).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Who presented what: the operator token, or a tenant's API key (already turned into its scope).
pub enum Caller {
    Operator(Operator),
    Tenant(TenantScope),
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    /// Authenticates (401), then spends one request of the credential's rate limit (429): in that order, so that
    /// only a valid credential has a budget and nobody can spend another's.
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Caller, ApiError> {
        let caller = authenticate(parts, state).await?;
        // Once per request, however many extractors ask who the caller is.
        if parts.extensions.get::<RateCounted>().is_none() {
            let who = match &caller {
                Caller::Operator(_) => Credential::Operator,
                Caller::Tenant(scope) => match scope.actor() {
                    Actor::ApiKey(prefix) => {
                        Credential::Key { prefix: prefix.as_str(), tenant: scope.tenant().as_str() }
                    }
                    // Scopes made from a key always carry it; anything else acts with operator authority.
                    _ => Credential::Operator,
                },
            };
            if let Err(limited) = state.rate_limits().check(who) {
                tracing::info!(retry_after_secs = limited.retry_after_secs, "API request refused: rate limit");
                return Err(ApiError::RateLimited { retry_after_secs: limited.retry_after_secs });
            }
            parts.extensions.insert(RateCounted);
        }
        Ok(caller)
    }
}

/// Marks a request already counted against its credential's rate limit.
#[derive(Clone, Copy)]
struct RateCounted;

/// Who presented what: the operator token, or a valid key of a tenant (401 otherwise).
async fn authenticate(parts: &Parts, state: &ApiState) -> Result<Caller, ApiError> {
    let presented = bearer(parts).ok_or(ApiError::Unauthorized)?;
    if presented.starts_with(store::keys::KEY_TAG) {
        let store = state.store();
        let key = presented.to_owned();
        let scope = store::blocking(store, move |s| Ok(s.authenticate_key(&key))).await?;
        match scope {
            Ok(scope) => {
                let span = tracing::Span::current();
                span.record("tenant", scope.tenant().as_str());
                span.record("actor", tracing::field::display(scope.actor()));
                Ok(Caller::Tenant(scope))
            }
            Err(AuthError::Backend(e)) => Err(ApiError::Store(store::StoreError::Backend(e))),
            Err(e) => {
                tracing::info!(reason = %e, "API key refused");
                Err(ApiError::Unauthorized)
            }
        }
    } else {
        let operator = state.operator_token().verify(presented).ok_or(ApiError::Unauthorized)?;
        tracing::Span::current().record("actor", "operator");
        Ok(Caller::Operator(operator))
    }
}

/// Middleware for routes outside `/v1` that only the operator may read (`GET /metrics`): the operator token or
/// `401`. A tenant key is `401` too, without a store lookup (it can never be the operator's token), and there is
/// no rate limit: a busy operator script must not make the scrape fail.
pub async fn require_operator(
    axum::extract::State(state): axum::extract::State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let allowed = bearer(&parts).is_some_and(|token| {
        !token.starts_with(store::keys::KEY_TAG) && state.operator_token().verify(token).is_some()
    });
    if !allowed {
        tracing::debug!(path = %parts.uri.path(), "operator-only route refused: no operator token");
        return axum::response::IntoResponse::into_response(ApiError::Unauthorized);
    }
    next.run(Request::from_parts(parts, body)).await
}

/// The token of `Authorization: Bearer <token>`, if the header is there and well formed.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The scope a request acts in: the `{tenant_id}` of the path for the operator; the key's own tenant for a key,
/// which must be the path's `{tenant_id}` when there is one (any other id is 404, like one that does not exist).
async fn resolve_scope(parts: &mut Parts, state: &ApiState) -> Result<TenantScope, ApiError> {
    let caller = Caller::from_request_parts(parts, state).await?;
    let named = path_param(parts, "tenant_id").await?;
    match (caller, named) {
        (Caller::Tenant(scope), None) => Ok(scope),
        (Caller::Tenant(scope), Some(id)) if id == scope.tenant().as_str() => Ok(scope),
        (Caller::Tenant(_), Some(_)) => Err(ApiError::NotFound("tenant")),
        (Caller::Operator(_), None) => Err(ApiError::BadRequest {
            code: "tenant_required",
            field: None,
            message: "the operator names the tenant: use /v1/tenants/{tenant_id}/...".to_owned(),
        }),
        (Caller::Operator(operator), Some(id)) => {
            let slug = TenantSlug::parse(&id).map_err(|_| ApiError::NotFound("tenant"))?;
            tracing::Span::current().record("tenant", slug.as_str());
            let store = state.store();
            Ok(store::blocking(store, move |s| s.operator_scope(&operator, &slug)).await?)
        }
    }
}

/// A scope to read a tenant's rows with (any valid key of the tenant, or the operator).
pub struct ReadScope(pub TenantScope);

impl FromRequestParts<ApiState> for ReadScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<ReadScope, ApiError> {
        resolve_scope(parts, state).await.map(ReadScope)
    }
}

/// A scope that may change a tenant's rows: a read-only key is refused here (403), before its input is looked at.
pub struct WriteScope(pub TenantScope);

impl FromRequestParts<ApiState> for WriteScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<WriteScope, ApiError> {
        let scope = resolve_scope(parts, state).await?;
        scope.require_write()?;
        Ok(WriteScope(scope))
    }
}

/// A named path parameter, percent-decoded (`None` when the route has no such parameter).
pub async fn path_param(parts: &mut Parts, name: &str) -> Result<Option<String>, ApiError> {
    let raw = RawPathParams::from_request_parts(parts, &()).await.map_err(|_| ApiError::BadRequest {
        code: "invalid",
        field: None,
        message: "unreadable path".to_owned(),
    })?;
    Ok(raw.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_owned()))
}

/// The path's parameters by name: `ids.get("app_id")`.
pub struct Ids(std::collections::HashMap<String, String>);

impl Ids {
    /// The parameter; routes only ask for the ones their path has.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map(String::as_str).unwrap_or("")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ids {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Ids, ApiError> {
        let Path(map) =
            Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state).await.map_err(
                |_| ApiError::BadRequest { code: "invalid", field: None, message: "unreadable path".to_owned() },
            )?;
        Ok(Ids(map))
    }
}

/// The query string's parameters. Handlers [`Params::take`] the ones they know and then call [`Params::finish`],
/// which refuses any left over (a typo like `?form=csv` is an error, not silently ignored).
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn take(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut found = None;
        let mut i = 0;
        while i < self.0.len() {
            if self.0[i].0 == name {
                let (_, v) = self.0.remove(i);
                if found.replace(v).is_some() {
                    return Err(ApiError::invalid(name, "is given twice"));
                }
            } else {
                i += 1;
            }
        }
        Ok(found)
    }

    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(ApiError::invalid(k, "unknown query parameter")),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Params, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state).await.map_err(|_| {
            ApiError::BadRequest { code: "invalid", field: None, message: "unreadable query string".to_owned() }
        })?;
        Ok(Params(pairs))
    }
}

/// A JSON request body. Unlike `axum::Json`, every failure is a JSON error: no or another content type 415,
/// too large 413, not JSON (or trailing bytes) 400 `malformed_json`, JSON of the wrong shape 400 `invalid` with
/// the field that is wrong (`custom_parameters.lang`, or the missing or unknown field's name).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Body<T>, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(MAX_BODY_BYTES)
            } else {
                ApiError::BadRequest { code: "malformed_json", field: None, message: "unreadable body".to_owned() }
            }
        })?;
        parse_json(&bytes).map(Body)
    }
}

/// Parses a body, naming what is wrong with it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            ApiError::BadRequest { code: "malformed_json", field: None, message: format!("not JSON: {inner}") }
        } else {
            let field = if path == "." { backticked(&inner.to_string()) } else { Some(path) };
            ApiError::BadRequest { code: "invalid", field, message: strip_position(&inner.to_string()) }
        }
    })?;
    de.end().map_err(|e| ApiError::BadRequest {
        code: "malformed_json",
        field: None,
        message: format!("not JSON: {e}"),
    })?;
    Ok(value)
}

/// The first `` `name` `` in a serde message ("missing field `name`", "unknown field `nmae`, expected ...").
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// serde_json's " at line 1 column 9" says nothing to an API client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Gives each request an id (`x-request-id` on the response) and a span with `request_id`, `method`, `path` (the
/// route's template, so no id or number of the request is logged), `tenant` and `actor` (filled in once known);
/// logs one line per request with its status and duration. Never logs a header or a body.
pub async fn request_span(req: Request, next: Next) -> Response {
    let request_id = store::keys::random_base32(16).unwrap_or_else(|_| "unavailable".to_owned());
    let path = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "api",
        request_id = %request_id,
        method = %req.method(),
        path = %path,
        tenant = tracing::field::Empty,
        actor = tracing::field::Empty,
    );
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(status, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "api request");
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shape {
        name: String,
        #[serde(default)]
        params: std::collections::BTreeMap<String, String>,
    }

    fn field_and_code(body: &str) -> (Option<String>, &'static str) {
        match parse_json::<Shape>(body.as_bytes()) {
            Err(ApiError::BadRequest { code, field, .. }) => (field, code),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(field_and_code(r#"{"nmae":"x"}"#), (Some("nmae".into()), "invalid"));
        assert_eq!(field_and_code(r#"{}"#), (Some("name".into()), "invalid"));
        assert_eq!(field_and_code(r#"{"name":"x","params":{"a":1}}"#), (Some("params.a".into()), "invalid"));
        assert_eq!(field_and_code(r#"{"name":"x""#), (None, "malformed_json"));
        assert_eq!(field_and_code(r#"{"name":"x"} trailing"#), (None, "malformed_json"));
        assert_eq!(field_and_code("\u{0}"), (None, "malformed_json"));
        assert!(parse_json::<Shape>(br#"{"name":"x"}"#).is_ok());
    }
}
