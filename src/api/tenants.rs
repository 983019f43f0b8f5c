//! Operator routes on tenants: create, list, get, change plan or status. A tenant key may read its own tenant
//! (`GET /v1/tenants/{own id}`); any other tenant id is 404 for it, and the operator-only actions are 403.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::extract::{Body, Caller, Ids, Params, path_param};
use super::reports::page_request;
use crate::config::DEFAULT_PLAN;
use crate::store::{self, DisplayName, NewTenant, Operator, PlanName, TenantSlug, TenantStatus, TenantView};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    id: String,
    name: String,
    plan: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    plan: Option<String>,
    status: Option<String>,
}

/// The operator, for operator-only routes: a tenant key is 403 (before its body is read).
pub struct OperatorOnly(Operator);

impl FromRequestParts<ApiState> for OperatorOnly {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<OperatorOnly, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Operator(op) => Ok(OperatorOnly(op)),
            Caller::Tenant(_) => Err(ApiError::Forbidden("only the operator may do this")),
        }
    }
}

/// The operator, on a route that names a tenant: a key is 403 on its own tenant and 404 on any other (exactly as
/// on a tenant that does not exist), before its body is read.
pub struct OperatorOn(Operator);

impl FromRequestParts<ApiState> for OperatorOn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<OperatorOn, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let named = path_param(parts, "tenant_id").await?;
        match caller {
            Caller::Operator(op) => Ok(OperatorOn(op)),
            Caller::Tenant(scope) if named.as_deref() == Some(scope.tenant().as_str()) => {
                Err(ApiError::Forbidden("only the operator may change a tenant"))
            }
            Caller::Tenant(_) => Err(ApiError::NotFound("tenant")),
        }
    }
}

/// A plan the config knows.
fn plan(state: &ApiState, name: &str) -> Result<PlanName, ApiError> {
    let parsed = PlanName::parse(name)?;
    if state.plans().get(name).is_none() {
        let known = state.plans().names().join(", ");
        return Err(ApiError::invalid("plan", format!("no plan named {name:?} (known: {known})")));
    }
    Ok(parsed)
}

pub fn tenant_json(t: &TenantView) -> Value {
    json!(t)
}

pub async fn create(
    State(state): State<ApiState>,
    OperatorOnly(operator): OperatorOnly,
    Body(body): Body<CreateTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = NewTenant {
        id: TenantSlug::parse(&body.id)?,
        name: DisplayName::parse(&body.name)?,
        plan: plan(&state, body.plan.as_deref().unwrap_or(DEFAULT_PLAN))?,
    };
    let view = store::blocking(state.store(), move |s| s.create_tenant(&operator, new)).await?;
    state.routing_changed();
    Ok((StatusCode::CREATED, Json(tenant_json(&view))))
}

pub async fn list(
    State(state): State<ApiState>,
    OperatorOnly(operator): OperatorOnly,
    mut params: Params,
) -> Result<Json<Value>, ApiError> {
    let page = page_request(&mut params)?;
    params.finish()?;
    let page = store::blocking(state.store(), move |s| s.list_tenants(&operator, page)).await?;
    Ok(Json(json!({ "items": page.items, "next": page.next })))
}

pub async fn get(State(state): State<ApiState>, caller: Caller, ids: Ids) -> Result<Json<Value>, ApiError> {
    let id = ids.get("tenant_id").to_owned();
    let view = match caller {
        Caller::Operator(operator) => {
            let slug = TenantSlug::parse(&id).map_err(|_| ApiError::NotFound("tenant"))?;
            store::blocking(state.store(), move |s| s.tenant(&operator, &slug)).await?
        }
        Caller::Tenant(scope) if scope.tenant().as_str() == id => {
            store::blocking(state.store(), move |s| s.own_tenant(&scope)).await?
        }
        Caller::Tenant(_) => return Err(ApiError::NotFound("tenant")),
    };
    Ok(Json(tenant_json(&view)))
}

pub async fn update(
    State(state): State<ApiState>,
    OperatorOn(operator): OperatorOn,
    ids: Ids,
    Body(body): Body<UpdateTenant>,
) -> Result<Json<Value>, ApiError> {
    let id = ids.get("tenant_id");
    let slug = TenantSlug::parse(id).map_err(|_| ApiError::NotFound("tenant"))?;
    let plan = body.plan.as_deref().map(|p| plan(&state, p)).transpose()?;
    let status = match body.status.as_deref() {
        None => None,
        Some("active") => Some(TenantStatus::Active),
        Some("suspended") => Some(TenantStatus::Suspended),
        Some("offboarding" | "deleted") => {
            return Err(ApiError::invalid("status", "offboarding and deletion are the offboarding job's, not PATCH's"));
        }
        Some(other) => {
            return Err(ApiError::invalid("status", format!("{other:?} is not \"active\" or \"suspended\"")));
        }
    };
    if plan.is_none() && status.is_none() {
        return Err(ApiError::invalid("plan", "nothing to change: give plan and/or status"));
    }
    let view = store::blocking(state.store(), move |s| {
        let mut view = s.tenant(&operator, &slug)?;
        if view.status == TenantStatus::Deleted {
            return Err(store::StoreError::NotFound(store::Entity::Tenant));
        }
        if let Some(plan) = plan {
            view = s.set_tenant_plan(&operator, &slug, plan)?;
        }
        if let Some(status) = status {
            view = s.set_tenant_status(&operator, &slug, status)?;
        }
        Ok(view)
    })
    .await?;
    state.routing_changed();
    Ok(Json(tenant_json(&view)))
}
