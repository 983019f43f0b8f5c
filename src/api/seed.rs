//! Config tenants into the store. A tenant of the config file that the store does not have (offboarded ones count
//! as had: ids are never reused) is created with its apps, numbers and trunks, in the name of `system:config`. A
//! tenant the store has is left alone: from its first start on, the store is the source of truth and changes made
//! through the API survive restarts; later edits of that tenant in the file are not applied, and a warning names
//! what the file has that the store lacks. See `docs/store.md`, "Config and store".

use std::collections::HashMap;

use super::ControlPlaneError;
use crate::config::{Config, TenantConfig};
use crate::store::{
    AppTarget, AuthHeader, CodecPreference, CustomParameters, DisplayName, NewApp, NewTenant, NewTrunk, Operator,
    PlanName, ResourceName, SourceCidrs, Store, StoreError, StreamUrl, TenantSlug,
};
use crate::tenant::AppKind;

pub fn seed_config_tenants(store: &dyn Store, config: &Config) -> Result<(), ControlPlaneError> {
    let operator = Operator::system("config");
    for tenant in &config.tenants {
        let fail = |reason: String| ControlPlaneError::Seed { tenant: tenant.id.clone(), reason };
        let slug = TenantSlug::parse(&tenant.id).map_err(|e| fail(e.to_string()))?;
        match store.tenant(&operator, &slug) {
            Ok(_) => warn_about_drift(store, &operator, &slug, tenant),
            // Offboarded: its rows are gone and its id stays taken (the job is filed under it).
            Err(StoreError::NotFound(_)) if store.offboard_job(&operator, &slug).is_ok() => {
                tracing::warn!(tenant = %tenant.id, "config tenant was offboarded; its config entry is not applied");
            }
            Err(StoreError::NotFound(_)) => {
                seed_one(store, &operator, slug, tenant).map_err(fail)?;
                tracing::info!(tenant = %tenant.id, "config tenant seeded into the store");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn seed_one(store: &dyn Store, operator: &Operator, slug: TenantSlug, t: &TenantConfig) -> Result<(), String> {
    let e = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
    let new = NewTenant {
        id: slug.clone(),
        name: DisplayName::parse(&t.id).map_err(|x| e("name", &x))?,
        plan: PlanName::parse(&t.plan).map_err(|x| e("plan", &x))?,
    };
    store.create_tenant(operator, new).map_err(|x| e("tenant", &x))?;
    let scope = store.operator_scope(operator, &slug).map_err(|x| e("tenant", &x))?;
    let mut app_ids = HashMap::new();
    for a in &t.apps {
        let target = match &a.kind {
            AppKind::Echo => AppTarget::Echo,
            AppKind::Stream { url, auth_header } => AppTarget::Stream {
                url: StreamUrl::parse(url).map_err(|x| e(&a.name, &x))?,
                auth_header: auth_header.as_deref().map(AuthHeader::parse).transpose().map_err(|x| e(&a.name, &x))?,
            },
        };
        let app = NewApp {
            name: ResourceName::parse(&a.name).map_err(|x| e(&a.name, &x))?,
            target,
            codecs: CodecPreference::new(a.codecs.clone()).map_err(|x| e(&a.name, &x))?,
            custom_parameters: CustomParameters::new(a.custom_parameters.clone()).map_err(|x| e(&a.name, &x))?,
            media_format: a.media_format,
        };
        let view = store.create_app(&scope, app).map_err(|x| e(&format!("app {}", a.name), &x))?;
        app_ids.insert(a.name.clone(), view.id);
    }
    for (number, app_name) in &t.numbers {
        let app = app_ids.get(app_name).ok_or_else(|| format!("number {number}: no app {app_name:?}"))?;
        store.claim_number(&scope, number, app).map_err(|x| e(&format!("number {number}"), &x))?;
    }
    for trunk in &t.trunks {
        let new = NewTrunk {
            name: ResourceName::parse(&trunk.name).map_err(|x| e(&trunk.name, &x))?,
            allowed_sources: SourceCidrs::new(trunk.allowed_sources.clone()).map_err(|x| e(&trunk.name, &x))?,
        };
        store.create_trunk(&scope, new).map_err(|x| e(&format!("trunk {}", trunk.name), &x))?;
    }
    Ok(())
}

/// Warns (once per start) about apps, numbers and trunks of a config tenant that its store copy lacks.
fn warn_about_drift(store: &dyn Store, operator: &Operator, slug: &TenantSlug, t: &TenantConfig) {
    let Ok(scope) = store.operator_scope(operator, slug) else {
        tracing::warn!(tenant = %t.id, "config tenant is deleted in the store; its config entry is not applied");
        return;
    };
    let apps: Vec<String> =
        store.list_apps(&scope).map(|v| v.into_iter().map(|a| a.name).collect()).unwrap_or_default();
    let numbers: Vec<String> =
        store.list_numbers(&scope).map(|v| v.into_iter().map(|n| n.number).collect()).unwrap_or_default();
    let trunks: Vec<String> =
        store.list_trunks(&scope).map(|v| v.into_iter().map(|t| t.name).collect()).unwrap_or_default();
    let mut missing: Vec<String> = Vec::new();
    missing.extend(t.apps.iter().filter(|a| !apps.contains(&a.name)).map(|a| format!("app {}", a.name)));
    missing.extend(
        t.numbers.iter().filter(|(n, _)| !numbers.iter().any(|m| m == n.as_str())).map(|(n, _)| format!("number {n}")),
    );
    missing.extend(
        t.trunks.iter().filter(|r| !trunks.iter().any(|m| m.as_str() == &*r.name)).map(|r| format!("trunk {}", r.name)),
    );
    if !missing.is_empty() {
        tracing::warn!(
            tenant = %t.id, missing = %missing.join(", "),
            "config tenant is already in the store, which is authoritative: these config entries are not applied \
             (use the API)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::media_streams::MediaFormat;
    use crate::store::sqlite::SqliteStore;
    use crate::tenant::E164;

    const CONFIG: &str = r#"
[[tenants]]
id = "acme"
plan = "free"
[[tenants.apps]]
name = "rx"
kind = "stream"
stream_url = "ws://127.0.0.1:9/s"
auth_header = "Bearer 0123456789abcdef"
custom_parameters = { lang = "en" }
media_format = "l16_16k"
[[tenants.apps]]
name = "echo"
kind = "echo"
[[tenants.numbers]]
number = "+15551230001"
app = "rx"
[[tenants.trunks]]
name = "carrier"
allowed_sources = ["10.0.0.0/8"]
"#;

    #[test]
    fn config_tenants_are_seeded_once_then_the_store_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let config = Config::from_toml("t.toml", CONFIG).unwrap();
        seed_config_tenants(&store, &config).unwrap();
        let op = Operator::system("test");
        let slug = TenantSlug::parse("acme").unwrap();
        assert_eq!(store.tenant(&op, &slug).unwrap().plan, "free");
        let scope = store.operator_scope(&op, &slug).unwrap();
        let apps = store.list_apps(&scope).unwrap();
        assert_eq!(apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), vec!["echo", "rx"]);
        let rx = apps.iter().find(|a| a.name == "rx").unwrap();
        assert_eq!(rx.auth_header_masked.as_deref(), Some("****cdef"));
        assert_eq!(rx.custom_parameters, vec![("lang".to_owned(), "en".to_owned())]);
        assert_eq!(rx.media_format, MediaFormat::L16Wide);
        let echo = apps.iter().find(|a| a.name == "echo").unwrap();
        assert_eq!(echo.media_format, MediaFormat::Mulaw8k, "the default");
        let routing = store.load_routing(&op).unwrap();
        let formats: Vec<(&str, MediaFormat)> =
            routing.tenants[0].apps.iter().map(|a| (&*a.name, a.media_format)).collect();
        assert_eq!(formats, [("echo", MediaFormat::Mulaw8k), ("rx", MediaFormat::L16Wide)]);
        let number = store.number(&scope, &E164::parse("+15551230001").unwrap()).unwrap();
        assert_eq!(number.app_id, rx.id);
        assert_eq!(store.list_trunks(&scope).unwrap()[0].allowed_sources.nets().len(), 1);

        // Released through the API: a restart with the same config does not bring it back.
        store.release_number(&scope, &E164::parse("+15551230001").unwrap()).unwrap();
        seed_config_tenants(&store, &config).unwrap();
        assert!(store.list_numbers(&scope).unwrap().is_empty());
        let audit = store.list_audit(&scope, Default::default()).unwrap();
        assert!(audit.items.iter().any(|e| e.actor == "system:config" && e.action == "tenant.create"));
    }
}
