//! Tenants and what they own (numbers, apps, trunks), and the read-mostly routing snapshot the SIP path reads
//! without taking a lock or touching the store.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::proto::media_streams::MediaFormat;

/// Interned tenant identity: an index into the snapshot's tenant table. `Copy`, so every frame can carry it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u32);

/// An E.164 number, normalised to `+` followed by 1 to 15 digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an E.164 number: {0:?}")]
pub struct InvalidE164(pub String);

impl E164 {
    /// Parses a number as it appears in config or a SIP Request-URI user part: an optional leading `+`,
    /// digits, and the visual separators `-`, `.`, `(`, `)` and space (RFC 3966), which are dropped.
    /// A number without `+` is taken as already international (`15550100` -> `+15550100`).
    pub fn parse(input: &str) -> Result<E164, InvalidE164> {
        let trimmed = input.trim();
        let rest = trimmed.strip_prefix('+').unwrap_or(trimmed);
        let mut digits = String::with_capacity(16);
        digits.push('+');
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                '-' | '.' | '(' | ')' | ' ' => {}
                _ => return Err(InvalidE164(input.to_owned())),
            }
        }
        let n = digits.len() - 1;
        if !(1..=15).contains(&n) || digits.as_bytes()[1] == b'0' {
            return Err(InvalidE164(input.to_owned()));
        }
        Ok(E164(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Codecs an app may prefer, in the order it lists them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Codec {
    Pcmu,
    Pcma,
}

/// What an app does with a call's audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppKind {
    /// Built-in: the caller's audio is played back to them through the whole pipeline.
    Echo,
    /// The tenant's agent, reached over a WebSocket speaking the Twilio Media Streams protocol.
    Stream { url: String, auth_header: Option<String> },
}

#[derive(Clone, Debug)]
pub struct App {
    pub name: Arc<str>,
    pub kind: AppKind,
    pub codecs: Vec<Codec>,
    pub custom_parameters: Vec<(String, String)>,
    /// The audio format of the app's provider stream (µ-law 8 kHz unless the app chose L16 16 kHz).
    pub media_format: MediaFormat,
}

/// A trunk: where a tenant's carrier calls may come from. An empty list allows any source.
#[derive(Clone, Debug, Default)]
pub struct Trunk {
    pub name: Arc<str>,
    pub allowed_sources: Vec<IpNet>,
}

impl Trunk {
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allowed_sources.is_empty() || self.allowed_sources.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: TenantId,
    /// The tenant's public id (`accountSid` in the provider stream).
    pub name: Arc<str>,
    pub apps: Vec<App>,
    pub trunks: Vec<Trunk>,
    /// The name of the tenant's plan (its limits live in `sched::plan`).
    pub plan: Arc<str>,
    /// Suspended or being offboarded: its numbers still route to it, so that its calls are refused as such (403
    /// `Tenant Suspended`) rather than as unknown numbers.
    pub suspended: bool,
}

impl Tenant {
    /// A call from `ip` is allowed when the tenant has no trunks, or any trunk allows it.
    pub fn allows_source(&self, ip: IpAddr) -> bool {
        self.trunks.is_empty() || self.trunks.iter().any(|t| t.allows(ip))
    }
}

/// Where a called number leads.
#[derive(Clone, Debug)]
pub struct Route {
    pub tenant: TenantId,
    pub app: usize,
}

/// Immutable routing view, swapped whole on change (`arc_swap`), read on every INVITE without a lock.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    tenants: Vec<Tenant>,
    numbers: HashMap<E164, Route>,
}

/// What routing a call to `number` from `source` decided.
#[derive(Debug)]
pub enum RouteDecision<'a> {
    Accept {
        tenant: &'a Tenant,
        app: &'a App,
        app_index: usize,
    },
    UnknownNumber,
    ForbiddenSource {
        tenant: &'a Tenant,
    },
    /// The number is the tenant's, the source is allowed, and the tenant takes no calls.
    Suspended {
        tenant: &'a Tenant,
    },
}

impl Snapshot {
    pub fn new(tenants: Vec<Tenant>, numbers: HashMap<E164, Route>) -> Snapshot {
        Snapshot { tenants, numbers }
    }

    pub fn tenant(&self, id: TenantId) -> Option<&Tenant> {
        self.tenants.get(id.0 as usize)
    }

    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    pub fn route(&self, number: &E164, source: IpAddr) -> RouteDecision<'_> {
        let Some(route) = self.numbers.get(number) else {
            return RouteDecision::UnknownNumber;
        };
        let Some(tenant) = self.tenant(route.tenant) else {
            return RouteDecision::UnknownNumber;
        };
        let Some(app) = tenant.apps.get(route.app) else {
            return RouteDecision::UnknownNumber;
        };
        if !tenant.allows_source(source) {
            return RouteDecision::ForbiddenSource { tenant };
        }
        // After the source check: a source the tenant does not admit learns nothing of its status.
        if tenant.suspended {
            return RouteDecision::Suspended { tenant };
        }
        RouteDecision::Accept { tenant, app, app_index: route.app }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_normalises_and_rejects() {
        assert_eq!(E164::parse("15550100").unwrap().as_str(), "+15550100");
        assert_eq!(E164::parse("+1 (555) 010-0").unwrap().as_str(), "+15550100");
        assert!(E164::parse("").is_err());
        assert!(E164::parse("+").is_err());
        assert!(E164::parse("+0123").is_err());
        assert!(E164::parse("alice").is_err());
        assert!(E164::parse("+1234567890123456").is_err());
    }

    #[test]
    fn trunk_acl() {
        let t = Trunk { name: "t".into(), allowed_sources: vec!["10.0.0.0/8".parse().unwrap()] };
        assert!(t.allows("10.1.2.3".parse().unwrap()));
        assert!(!t.allows("127.0.0.1".parse().unwrap()));
        assert!(Trunk::default().allows("127.0.0.1".parse().unwrap()));
    }
}
