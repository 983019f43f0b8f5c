//! Offboarding a tenant in one operator call: `POST /v1/tenants/{id}/offboard` starts a persisted job (or returns
//! the one the tenant has: never a second), `GET` shows its steps, and three links download what it produced: the
//! export bundle, the final invoice and the deletion certificate. The job itself runs on the runner's thread
//! ([`runner`]); the bundle is written by [`bundle`]. `docs/offboarding.md` is the operator's guide.
//!
//! Operator only: a tenant key gets 404 on these routes, its own tenant's included, exactly as for a tenant it
//! cannot see (checks in the API's order: credentials 401, then the path 404, then the input 400). The job is the
//! operator's record about a tenant, kept after the tenant's rows are deleted, so it is read with operator authority
//! (like the tenant row), not through a tenant scope.

pub mod bundle;
pub mod runner;

use std::path::PathBuf;

use axum::Json;
use axum::body::{Body as HttpBody, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::extract::{Caller, parse_json, path_param};
use crate::store::{self, OffboardJob, Operator, TenantSlug};

/// What the API needs to start and serve jobs.
#[derive(Clone, Debug)]
pub struct OffboardSettings {
    /// The grace of new jobs (`offboard.grace_secs`).
    pub grace_secs: u64,
    /// Where the jobs' files live (`<data_dir>/offboarding/<tenant>/`).
    pub data_dir: PathBuf,
    /// Wakes the runner when a job starts.
    pub nudge: runner::RunnerNudge,
}

/// The optional body of `POST .../offboard`: nothing to set today, and nothing unknown accepted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartOffboard {}

/// The operator, on a route about one tenant's offboarding; the tenant named in the path. A tenant key is 404
/// (whichever tenant it names), an id that is not a tenant id too.
pub struct OperatorOnTenant(Operator, TenantSlug);

impl FromRequestParts<ApiState> for OperatorOnTenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<OperatorOnTenant, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Caller::Operator(operator) = caller else { return Err(ApiError::NotFound("tenant")) };
        let named = path_param(parts, "tenant_id").await?.unwrap_or_default();
        let slug = TenantSlug::parse(&named).map_err(|_| ApiError::NotFound("tenant"))?;
        tracing::Span::current().record("tenant", slug.as_str());
        Ok(OperatorOnTenant(operator, slug))
    }
}

/// `POST /v1/tenants/{id}/offboard`: 202 with the job, started now or before.
pub async fn start(
    State(state): State<ApiState>,
    OperatorOnTenant(operator, tenant): OperatorOnTenant,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(super::extract::MAX_BODY_BYTES)
        } else {
            ApiError::BadRequest { code: "malformed_json", field: None, message: "unreadable body".to_owned() }
        }
    })?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json::<StartOffboard>(&body)?;
    }
    let grace = state.offboard().grace_secs;
    let slug = tenant.clone();
    let (job, created) = store::blocking(state.store(), move |s| s.start_offboarding(&operator, &slug, grace)).await?;
    if created {
        tracing::info!(grace_secs = grace, "offboarding started");
        state.offboard().nudge.nudge();
    }
    let location = HeaderValue::from_str(&self_link(&tenant)).map_err(|_| ApiError::NotFound("tenant"))?;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(job_json(&job))).into_response())
}

/// `GET /v1/tenants/{id}/offboard`: the job, its steps and links.
pub async fn status(
    State(state): State<ApiState>,
    OperatorOnTenant(operator, tenant): OperatorOnTenant,
) -> Result<Json<Value>, ApiError> {
    let job = store::blocking(state.store(), move |s| s.offboard_job(&operator, &tenant)).await?;
    Ok(Json(job_json(&job)))
}

/// `GET .../offboard/export`: the bundle (`application/gzip`), once written.
pub async fn export(
    State(state): State<ApiState>,
    OperatorOnTenant(operator, tenant): OperatorOnTenant,
) -> Result<Response, ApiError> {
    let slug = tenant.clone();
    let job = store::blocking(state.store(), move |s| s.offboard_job(&operator, &slug)).await?;
    let info = job.export.ok_or(ApiError::NotFound("export"))?;
    // The name is the job's own (`<tenant>-export.tar.gz`), never a client's.
    let path = bundle::job_dir(&state.offboard().data_dir, tenant.as_str()).join(&info.file_name);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::NotFound("export")),
        Err(e) => {
            return Err(ApiError::Store(store::StoreError::Backend(store::BackendError::new(format!(
                "{}: {e}",
                path.display()
            )))));
        }
    };
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", info.file_name))
        .map_err(|_| ApiError::NotFound("export"))?;
    let body = HttpBody::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/gzip")),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_LENGTH, HeaderValue::from(info.bytes)),
        ],
        body,
    )
        .into_response())
}

/// `GET .../offboard/invoice`: the final invoice, once computed.
pub async fn final_invoice(
    State(state): State<ApiState>,
    OperatorOnTenant(operator, tenant): OperatorOnTenant,
) -> Result<Json<Value>, ApiError> {
    let job = store::blocking(state.store(), move |s| s.offboard_job(&operator, &tenant)).await?;
    job.final_invoice.map(Json).ok_or(ApiError::NotFound("final invoice"))
}

/// `GET .../offboard/certificate`: the deletion certificate, once the rows are deleted.
pub async fn certificate(
    State(state): State<ApiState>,
    OperatorOnTenant(operator, tenant): OperatorOnTenant,
) -> Result<Json<Value>, ApiError> {
    let job = store::blocking(state.store(), move |s| s.offboard_job(&operator, &tenant)).await?;
    job.certificate.map(Json).ok_or(ApiError::NotFound("certificate"))
}

fn self_link(tenant: &TenantSlug) -> String {
    format!("/v1/tenants/{tenant}/offboard")
}

/// The job as the API shows it (documented field by field in `docs/offboarding.md` and the OpenAPI document).
pub fn job_json(job: &OffboardJob) -> Value {
    let base = self_link(&job.tenant);
    let steps: Vec<Value> = job
        .steps
        .iter()
        .map(|s| {
            let state = match (s.started_at_ms, s.finished_at_ms) {
                (_, Some(_)) => "done",
                (Some(_), None) => "running",
                (None, None) if s.name == job.step => "running",
                (None, None) => "pending",
            };
            json!({
                "name": s.name,
                "state": state,
                "started_at_ms": s.started_at_ms,
                "finished_at_ms": s.finished_at_ms,
                "detail": s.detail,
            })
        })
        .collect();
    json!({
        "tenant": job.tenant,
        "status": if job.finished() { "finished" } else { "running" },
        "step": job.step,
        "started_by": job.started_by,
        "grace_secs": job.grace_secs,
        "created_at_ms": job.created_at_ms,
        "updated_at_ms": job.updated_at_ms,
        "finished_at_ms": job.finished_at_ms,
        "drain_deadline_ms": job.drain_deadline_ms,
        "steps": steps,
        "error": job.last_error,
        "export": job.export,
        "links": {
            "self": base,
            "export": job.export.as_ref().map(|_| format!("{base}/export")),
            "final_invoice": job.final_invoice.as_ref().map(|_| format!("{base}/invoice")),
            "certificate": job.certificate.as_ref().map(|_| format!("{base}/certificate")),
        },
    })
}

/// Every step name, in order.
#[cfg(test)]
pub fn step_names() -> Vec<&'static str> {
    crate::store::OffboardStep::STEPS.iter().map(crate::store::OffboardStep::as_str).collect()
}
