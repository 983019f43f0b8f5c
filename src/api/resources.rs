//! A tenant's apps, numbers, trunks and API keys. Every handler takes a [`ReadScope`] or [`WriteScope`]: the rows
//! it can reach are the scope's tenant's, and any other id is 404 exactly as one that does not exist.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::extract::{Body, Ids, ReadScope, WriteScope};
use crate::store::Clock as _;
use crate::store::{
    self, Access, AppId, AppTarget, AppUpdate, AppView, AuthHeader, CodecPreference, CustomParameters, KeyPrefix,
    KeyView, NewApp, NewKey, NewTrunk, ResourceName, SourceCidrs, StreamUrl, SystemClock, TrunkId, TrunkUpdate,
    parse_media_format,
};
use crate::tenant::{Codec, E164};

/// Milliseconds in a day, for the stale rule.
const DAY_MS: i64 = 86_400_000;

/// `Some(None)` for an explicit `null`, `None` for an absent field (with `#[serde(default)]`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// ---- apps ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    name: String,
    /// `stream` (default when `stream_url` is given) or `echo`.
    kind: Option<String>,
    stream_url: Option<String>,
    auth_header: Option<String>,
    codecs: Option<Vec<String>>,
    custom_parameters: Option<BTreeMap<String, Value>>,
    /// `mulaw_8k` (default) or `l16_16k`.
    media_format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    name: Option<String>,
    stream_url: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    auth_header: Option<Option<String>>,
    codecs: Option<Vec<String>>,
    custom_parameters: Option<BTreeMap<String, Value>>,
    media_format: Option<String>,
}

fn codecs(names: Vec<String>) -> Result<CodecPreference, ApiError> {
    let mut out = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        out.push(match n.to_ascii_uppercase().as_str() {
            "PCMU" => Codec::Pcmu,
            "PCMA" => Codec::Pcma,
            _ => return Err(ApiError::invalid(&format!("codecs[{i}]"), format!("{n:?} is not \"PCMU\" or \"PCMA\""))),
        });
    }
    Ok(CodecPreference::new(out)?)
}

/// Custom parameters from a JSON object of strings, numbers or booleans.
fn custom_parameters(map: BTreeMap<String, Value>) -> Result<CustomParameters, ApiError> {
    let mut pairs = Vec::with_capacity(map.len());
    for (k, v) in map {
        let value = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::invalid(
                    &format!("custom_parameters.{k}"),
                    "must be a string, number or boolean",
                ));
            }
        };
        pairs.push((k, value));
    }
    Ok(CustomParameters::new(pairs)?)
}

pub(crate) fn app_json(a: &AppView) -> Value {
    let params: serde_json::Map<String, Value> =
        a.custom_parameters.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    json!({
        "id": a.id,
        "name": a.name,
        "kind": a.kind,
        "stream_url": a.stream_url,
        "auth_header": a.auth_header_masked,
        "codecs": a.codecs,
        "custom_parameters": params,
        "media_format": a.media_format.name(),
        "created_at_ms": a.created_at_ms,
        "updated_at_ms": a.updated_at_ms,
    })
}

fn app_id(ids: &Ids) -> Result<AppId, ApiError> {
    AppId::parse(ids.get("app_id")).map_err(|_| ApiError::NotFound("app"))
}

pub async fn create_app(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    Body(body): Body<CreateApp>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kind = body.kind.as_deref().unwrap_or(if body.stream_url.is_some() { "stream" } else { "" });
    let target = match kind {
        "stream" => {
            let url = body.stream_url.as_deref().ok_or_else(|| ApiError::invalid("stream_url", "required"))?;
            AppTarget::Stream {
                url: StreamUrl::parse(url)?,
                auth_header: body.auth_header.as_deref().map(AuthHeader::parse).transpose()?,
            }
        }
        "echo" => {
            if body.stream_url.is_some() || body.auth_header.is_some() {
                return Err(ApiError::invalid("kind", "an echo app takes no stream_url or auth_header"));
            }
            AppTarget::Echo
        }
        "" => return Err(ApiError::invalid("stream_url", "required (or \"kind\": \"echo\")")),
        other => return Err(ApiError::invalid("kind", format!("{other:?} is not \"stream\" or \"echo\""))),
    };
    let app = NewApp {
        name: ResourceName::parse(&body.name)?,
        target,
        codecs: body.codecs.map(codecs).transpose()?.unwrap_or_default(),
        custom_parameters: body.custom_parameters.map(custom_parameters).transpose()?.unwrap_or_default(),
        media_format: body.media_format.as_deref().map(parse_media_format).transpose()?.unwrap_or_default(),
    };
    let view = store::blocking(state.store(), move |s| s.create_app(&scope, app)).await?;
    state.routing_changed();
    Ok((StatusCode::CREATED, Json(app_json(&view))))
}

pub async fn list_apps(State(state): State<ApiState>, ReadScope(scope): ReadScope) -> Result<Json<Value>, ApiError> {
    let apps = store::blocking(state.store(), move |s| s.list_apps(&scope)).await?;
    Ok(Json(json!({ "items": apps.iter().map(app_json).collect::<Vec<_>>() })))
}

pub async fn get_app(
    State(state): State<ApiState>,
    ReadScope(scope): ReadScope,
    ids: Ids,
) -> Result<Json<Value>, ApiError> {
    let id = app_id(&ids)?;
    let app = store::blocking(state.store(), move |s| s.app(&scope, &id)).await?;
    Ok(Json(app_json(&app)))
}

pub async fn update_app(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    ids: Ids,
    Body(body): Body<UpdateApp>,
) -> Result<Json<Value>, ApiError> {
    let id = app_id(&ids)?;
    let update = AppUpdate {
        name: body.name.as_deref().map(ResourceName::parse).transpose()?,
        stream_url: body.stream_url.as_deref().map(StreamUrl::parse).transpose()?,
        auth_header: body.auth_header.map(|h| h.as_deref().map(AuthHeader::parse).transpose()).transpose()?,
        codecs: body.codecs.map(codecs).transpose()?,
        custom_parameters: body.custom_parameters.map(custom_parameters).transpose()?,
        media_format: body.media_format.as_deref().map(parse_media_format).transpose()?,
    };
    let app = store::blocking(state.store(), move |s| s.update_app(&scope, &id, update)).await?;
    state.routing_changed();
    Ok(Json(app_json(&app)))
}

pub async fn delete_app(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    ids: Ids,
) -> Result<StatusCode, ApiError> {
    let id = app_id(&ids)?;
    store::blocking(state.store(), move |s| s.delete_app(&scope, &id)).await?;
    state.routing_changed();
    Ok(StatusCode::NO_CONTENT)
}

// ---- numbers ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimNumber {
    number: String,
    app_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignNumber {
    app_id: String,
}

fn body_number(text: &str) -> Result<E164, ApiError> {
    E164::parse(text).map_err(|_| ApiError::invalid("number", format!("{text:?} is not an E.164 number")))
}

fn body_app_id(text: &str) -> Result<AppId, ApiError> {
    AppId::parse(text).map_err(|e| ApiError::invalid("app_id", e.reason))
}

fn path_number(ids: &Ids) -> Result<E164, ApiError> {
    E164::parse(ids.get("number")).map_err(|_| ApiError::NotFound("number"))
}

pub async fn claim_number(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    Body(body): Body<ClaimNumber>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let number = body_number(&body.number)?;
    let app = body_app_id(&body.app_id)?;
    let view = store::blocking(state.store(), move |s| s.claim_number(&scope, &number, &app)).await?;
    state.routing_changed();
    Ok((StatusCode::CREATED, Json(json!(view))))
}

pub async fn list_numbers(State(state): State<ApiState>, ReadScope(scope): ReadScope) -> Result<Json<Value>, ApiError> {
    let numbers = store::blocking(state.store(), move |s| s.list_numbers(&scope)).await?;
    Ok(Json(json!({ "items": numbers })))
}

pub async fn get_number(
    State(state): State<ApiState>,
    ReadScope(scope): ReadScope,
    ids: Ids,
) -> Result<Json<Value>, ApiError> {
    let number = path_number(&ids)?;
    let view = store::blocking(state.store(), move |s| s.number(&scope, &number)).await?;
    Ok(Json(json!(view)))
}

pub async fn assign_number(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    ids: Ids,
    Body(body): Body<AssignNumber>,
) -> Result<Json<Value>, ApiError> {
    let number = path_number(&ids)?;
    let app = body_app_id(&body.app_id)?;
    let view = store::blocking(state.store(), move |s| s.assign_number(&scope, &number, &app)).await?;
    state.routing_changed();
    Ok(Json(json!(view)))
}

pub async fn release_number(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    ids: Ids,
) -> Result<Json<Value>, ApiError> {
    let number = path_number(&ids)?;
    let release = store::blocking(state.store(), move |s| s.release_number(&scope, &number)).await?;
    state.routing_changed();
    Ok(Json(json!(release)))
}

pub async fn list_releases(
    State(state): State<ApiState>,
    ReadScope(scope): ReadScope,
) -> Result<Json<Value>, ApiError> {
    let releases = store::blocking(state.store(), move |s| s.list_number_releases(&scope)).await?;
    Ok(Json(json!({ "items": releases })))
}

// ---- trunks ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTrunk {
    name: String,
    #[serde(default)]
    allowed_sources: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTrunk {
    name: Option<String>,
    allowed_sources: Option<Vec<String>>,
}

fn sources(texts: &[String]) -> Result<SourceCidrs, ApiError> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    Ok(SourceCidrs::parse(&refs)?)
}

fn trunk_id(ids: &Ids) -> Result<TrunkId, ApiError> {
    TrunkId::parse(ids.get("trunk_id")).map_err(|_| ApiError::NotFound("trunk"))
}

pub async fn create_trunk(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    Body(body): Body<CreateTrunk>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let trunk = NewTrunk { name: ResourceName::parse(&body.name)?, allowed_sources: sources(&body.allowed_sources)? };
    let view = store::blocking(state.store(), move |s| s.create_trunk(&scope, trunk)).await?;
    state.routing_changed();
    Ok((StatusCode::CREATED, Json(json!(view))))
}

pub async fn list_trunks(State(state): State<ApiState>, ReadScope(scope): ReadScope) -> Result<Json<Value>, ApiError> {
    let trunks = store::blocking(state.store(), move |s| s.list_trunks(&scope)).await?;
    Ok(Json(json!({ "items": trunks })))
}

pub async fn get_trunk(
    State(state): State<ApiState>,
    ReadScope(scope): ReadScope,
    ids: Ids,
) -> Result<Json<Value>, ApiError> {
    let id = trunk_id(&ids)?;
    let view = store::blocking(state.store(), move |s| s.trunk(&scope, &id)).await?;
    Ok(Json(json!(view)))
}

pub async fn update_trunk(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    ids: Ids,
    Body(body): Body<UpdateTrunk>,
) -> Result<Json<Value>, ApiError> {
    let id = trunk_id(&ids)?;
    let update = TrunkUpdate {
        name: body.name.as_deref().map(ResourceName::parse).transpose()?,
        allowed_sources: body.allowed_sources.as_deref().map(sources).transpose()?,
    };
    let view = store::blocking(state.store(), move |s| s.update_trunk(&scope, &id, update)).await?;
    state.routing_changed();
    Ok(Json(json!(view)))
}

pub async fn delete_trunk(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    ids: Ids,
) -> Result<StatusCode, ApiError> {
    let id = trunk_id(&ids)?;
    store::blocking(state.store(), move |s| s.delete_trunk(&scope, &id)).await?;
    state.routing_changed();
    Ok(StatusCode::NO_CONTENT)
}

// ---- keys ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    /// `["read"]` (read-only) or `["read", "write"]` (read-write; `["write"]` alone means the same).
    scopes: Vec<String>,
    expires_at_ms: Option<i64>,
}

fn access(scopes: &[String]) -> Result<Access, ApiError> {
    if scopes.is_empty() {
        return Err(ApiError::invalid("scopes", "give [\"read\"] or [\"read\", \"write\"]"));
    }
    let mut write = false;
    for (i, s) in scopes.iter().enumerate() {
        match s.as_str() {
            "read" => {}
            "write" => write = true,
            other => {
                return Err(ApiError::invalid(
                    &format!("scopes[{i}]"),
                    format!("{other:?} is not \"read\" or \"write\""),
                ));
            }
        }
    }
    Ok(if write { Access::ReadWrite } else { Access::ReadOnly })
}

/// Whether a key is stale: live (neither revoked nor expired) and not used, or never used since creation, for
/// `days` days or more.
pub fn is_stale(key: &KeyView, now_ms: i64, days: u32) -> bool {
    let live = key.revoked_at_ms.is_none() && key.expires_at_ms.is_none_or(|at| at > now_ms);
    let last = key.last_used_at_ms.unwrap_or(key.created_at_ms);
    live && now_ms - last >= i64::from(days) * DAY_MS
}

pub(crate) fn key_json(k: &KeyView, now_ms: i64, stale_days: u32) -> Value {
    let status = if k.revoked_at_ms.is_some() {
        "revoked"
    } else if k.expires_at_ms.is_some_and(|at| at <= now_ms) {
        "expired"
    } else {
        "active"
    };
    let scopes: &[&str] = match k.access {
        Access::ReadOnly => &["read"],
        Access::ReadWrite => &["read", "write"],
    };
    json!({
        "prefix": k.prefix,
        "name": k.name,
        "scopes": scopes,
        "status": status,
        "stale": is_stale(k, now_ms, stale_days),
        "created_at_ms": k.created_at_ms,
        "expires_at_ms": k.expires_at_ms,
        "last_used_at_ms": k.last_used_at_ms,
        "revoked_at_ms": k.revoked_at_ms,
    })
}

fn key_prefix(ids: &Ids) -> Result<KeyPrefix, ApiError> {
    KeyPrefix::parse(ids.get("prefix")).map_err(|_| ApiError::NotFound("key"))
}

pub async fn create_key(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    Body(body): Body<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = NewKey {
        name: ResourceName::parse(&body.name)?,
        access: access(&body.scopes)?,
        expires_at_ms: body.expires_at_ms,
    };
    let created = store::blocking(state.store(), move |s| s.create_key(&scope, key)).await?;
    let mut out = key_json(&created.view, SystemClock.now_ms(), state.stale_key_days());
    out["key"] = json!(created.key.expose());
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn list_keys(State(state): State<ApiState>, ReadScope(scope): ReadScope) -> Result<Json<Value>, ApiError> {
    let keys = store::blocking(state.store(), move |s| s.list_keys(&scope)).await?;
    let now = SystemClock.now_ms();
    let items: Vec<Value> = keys.iter().map(|k| key_json(k, now, state.stale_key_days())).collect();
    Ok(Json(json!({ "items": items, "stale_after_days": state.stale_key_days() })))
}

pub async fn get_key(
    State(state): State<ApiState>,
    ReadScope(scope): ReadScope,
    ids: Ids,
) -> Result<Json<Value>, ApiError> {
    let prefix = key_prefix(&ids)?;
    let key = store::blocking(state.store(), move |s| s.key(&scope, &prefix)).await?;
    Ok(Json(key_json(&key, SystemClock.now_ms(), state.stale_key_days())))
}

pub async fn revoke_key(
    State(state): State<ApiState>,
    WriteScope(scope): WriteScope,
    ids: Ids,
) -> Result<Json<Value>, ApiError> {
    let prefix = key_prefix(&ids)?;
    let key = store::blocking(state.store(), move |s| s.revoke_key(&scope, &prefix)).await?;
    Ok(Json(key_json(&key, SystemClock.now_ms(), state.stale_key_days())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(created: i64, used: Option<i64>, expires: Option<i64>, revoked: Option<i64>) -> KeyView {
        KeyView {
            prefix: KeyPrefix::parse("fvk_abcdefgh").unwrap(),
            name: "k".into(),
            access: Access::ReadOnly,
            created_at_ms: created,
            expires_at_ms: expires,
            last_used_at_ms: used,
            revoked_at_ms: revoked,
        }
    }

    #[test]
    fn the_stale_rule() {
        let now = 100 * DAY_MS;
        assert!(!is_stale(&key(now - 29 * DAY_MS, None, None, None), now, 30), "new, unused for 29 days");
        assert!(is_stale(&key(now - 30 * DAY_MS, None, None, None), now, 30), "never used in 30 days");
        assert!(!is_stale(&key(0, Some(now - DAY_MS), None, None), now, 30), "used yesterday");
        assert!(is_stale(&key(0, Some(now - 31 * DAY_MS), None, None), now, 30));
        assert!(!is_stale(&key(0, None, None, Some(1)), now, 30), "revoked keys are not stale, they are revoked");
        assert!(!is_stale(&key(0, None, Some(now), None), now, 30), "expired keys neither");
        assert!(is_stale(&key(0, None, Some(now + 1), None), now, 30));
        assert!(is_stale(&key(now - 7 * DAY_MS, None, None, None), now, 7), "N is the setting");
    }

    #[test]
    fn scopes() {
        let s = |v: &[&str]| access(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["read"]).unwrap(), Access::ReadOnly);
        assert_eq!(s(&["read", "write"]).unwrap(), Access::ReadWrite);
        assert_eq!(s(&["write"]).unwrap(), Access::ReadWrite);
        assert!(s(&[]).is_err());
        assert!(s(&["admin"]).is_err());
    }
}
