//! Configuration: embedded defaults, the TOML file, command-line overrides, and validation.
//!
//! With no file, the server runs a `demo` tenant whose number `+15550100` reaches the built-in echo app, so a
//! newcomer can place a call at once. A config file replaces the tenant list wholesale (it does not merge with the
//! demo tenant). Every validation error names the file, the key and the reason.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::logging::LogConfig;
use crate::metrics::{MetricsConfig, OTHER, UNATTRIBUTED};
use crate::proto::media_streams::MediaFormat;
use crate::sched::plan::{PlanSet, RawPlan, build_plans};
use crate::sched::wfq::SchedulerKind;
use crate::store::{AuthHeader, CustomParameters, ResourceName, StreamUrl, parse_media_format};
use crate::tenant::{App, AppKind, Codec, E164, Route, Snapshot, Tenant, TenantId, Trunk};

/// A configuration problem, located by file and key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {key}: {reason}")]
    Invalid { file: String, key: String, reason: String },
}

/// The validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub sip_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// `sip.advertise_ip` when set; see [`Config::advertise_ip`].
    pub advertise_ip_setting: Option<IpAddr>,
    pub rtp_ports: RtpPorts,
    pub rtp_inactivity_timeout: Duration,
    pub provider_connect_timeout: Duration,
    /// Bound on agent audio queued for playout per call, in samples (8 kHz).
    pub playout_max_samples: usize,
    pub max_calls: usize,
    /// `limits.worker_busy_pct` / 100: from this busy fraction on, the media workers are hot and the tenants at or
    /// above their weighted share of them get no new calls (`transport::ingress::CapacityTracker`); 1.0 = never.
    pub worker_busy_threshold: f64,
    /// Media worker threads that read calls' RTP (`media.workers`; 0 = one per core).
    pub media_workers: usize,
    /// How the media workers order tenants' work (`media.scheduler`).
    pub scheduler: SchedulerKind,
    /// CPUs dedicated to the media workers (`media.cpus`; empty: none). `fairvox serve` keeps its other threads off
    /// them (`sched::cpus`).
    pub media_cpus: Vec<usize>,
    /// `SCHED_FIFO` priority of the media workers (`media.realtime_priority`, 1..=99; `None`: the normal policy).
    /// Only with `media.cpus`, so that the control plane keeps cores the real-time workers never take.
    pub media_realtime_priority: Option<u8>,
    pub sip_max_message_bytes: usize,
    pub data_dir: PathBuf,
    /// The built-in plans with the file's overrides and additions.
    pub plans: PlanSet,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// How long a drain (SIGTERM) lets active calls go on before it ends them.
    pub drain_grace: Duration,
    pub api: ApiSettings,
    /// How long an offboarding lets the tenant's active calls go on before it ends them (`offboard.grace_secs`).
    pub offboard_grace: Duration,
    pub tenants: Vec<TenantConfig>,
}

/// The control-plane API's settings (`[api]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSettings {
    /// A live API key unused for this many days is listed as `stale` (`api.stale_key_days`, 1..=3650).
    pub stale_key_days: u32,
    /// Requests per second each API key may make in the long run (`api.requests_per_second`).
    pub requests_per_second: u32,
    /// Requests an API key may make at once after a quiet spell (`api.burst`).
    pub burst: u32,
    /// The same two for the operator token (`api.operator_requests_per_second`, `api.operator_burst`).
    pub operator_requests_per_second: u32,
    pub operator_burst: u32,
}

impl Default for ApiSettings {
    fn default() -> ApiSettings {
        ApiSettings {
            stale_key_days: DEFAULT_STALE_KEY_DAYS,
            requests_per_second: DEFAULT_KEY_REQUESTS_PER_SECOND,
            burst: DEFAULT_KEY_BURST,
            operator_requests_per_second: DEFAULT_OPERATOR_REQUESTS_PER_SECOND,
            operator_burst: DEFAULT_OPERATOR_BURST,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RtpPorts {
    pub lo: u16,
    pub hi: u16,
}

impl RtpPorts {
    pub fn parse(s: &str) -> Result<RtpPorts, String> {
        let (lo, hi) = s.split_once('-').ok_or_else(|| format!("expected LO-HI, got {s:?}"))?;
        let lo: u16 = lo.trim().parse().map_err(|_| format!("bad low port in {s:?}"))?;
        let hi: u16 = hi.trim().parse().map_err(|_| format!("bad high port in {s:?}"))?;
        if lo < 1024 || hi < lo || hi - lo < 3 {
            return Err(format!("range {s:?} must lie in 1024-65535 with room for at least two RTP/RTCP pairs"));
        }
        Ok(RtpPorts { lo, hi })
    }

    /// Number of RTP/RTCP pairs (even port + odd port) in the range.
    pub fn pairs(&self) -> usize {
        let first = self.lo + (self.lo % 2);
        if first >= self.hi { 0 } else { (self.hi - first).div_ceil(2) as usize }
    }
}

#[derive(Clone, Debug)]
pub struct TenantConfig {
    pub id: String,
    /// A plan name that exists in [`Config::plans`].
    pub plan: String,
    pub apps: Vec<AppConfig>,
    pub numbers: Vec<(E164, String)>,
    pub trunks: Vec<Trunk>,
}

#[derive(Clone, Debug)]
pub struct AppConfig {
    pub name: String,
    pub kind: AppKind,
    pub codecs: Vec<Codec>,
    pub custom_parameters: Vec<(String, String)>,
    /// `media_format` (`mulaw_8k` when not given).
    pub media_format: MediaFormat,
}

/// Command-line overrides, applied after the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub sip_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub rtp_ports: Option<RtpPorts>,
    pub data_dir: Option<PathBuf>,
    pub drain_grace: Option<Duration>,
}

impl Config {
    /// Loads `file` (or the embedded defaults when `None`) and applies the overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (name, raw) = match file {
            Some(path) => {
                let name = path.display().to_string();
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: name.clone(), source })?;
                let raw: RawConfig = toml::from_str(&text)
                    .map_err(|e| ConfigError::Syntax { file: name.clone(), message: e.to_string() })?;
                (name, raw)
            }
            None => ("<embedded defaults>".to_owned(), RawConfig::embedded_demo()),
        };
        let mut config = raw.validate(&name)?;
        if let Some(a) = overrides.sip_listen {
            config.sip_listen = a;
        }
        if let Some(a) = overrides.http_listen {
            config.http_listen = a;
        }
        if let Some(r) = overrides.rtp_ports {
            config.rtp_ports = r;
        }
        if let Some(d) = &overrides.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(g) = overrides.drain_grace {
            config.drain_grace = g;
        }
        Ok(config)
    }

    /// Parses a TOML text as if it were the file `name` (used by tests and `fairvox check-config`).
    pub fn from_toml(name: &str, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax { file: name.to_owned(), message: e.to_string() })?;
        raw.validate(name)
    }

    /// The address written into SDP answers (c=) and Contact/Via: where carriers send media and in-dialog
    /// requests. Defaults to the SIP listen address, or 127.0.0.1 when that is unspecified.
    pub fn advertise_ip(&self) -> IpAddr {
        match self.advertise_ip_setting {
            Some(ip) => ip,
            None if self.sip_listen.ip().is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            None => self.sip_listen.ip(),
        }
    }

    /// The routing snapshot for the SIP path.
    pub fn snapshot(&self) -> Snapshot {
        let mut tenants = Vec::with_capacity(self.tenants.len());
        let mut numbers = HashMap::new();
        for (index, t) in self.tenants.iter().enumerate() {
            let id = TenantId(index as u32);
            let apps: Vec<App> = t
                .apps
                .iter()
                .map(|a| App {
                    name: Arc::from(a.name.as_str()),
                    kind: a.kind.clone(),
                    codecs: a.codecs.clone(),
                    custom_parameters: a.custom_parameters.clone(),
                    media_format: a.media_format,
                })
                .collect();
            for (number, app_name) in &t.numbers {
                if let Some(app) = t.apps.iter().position(|a| &a.name == app_name) {
                    numbers.insert(number.clone(), Route { tenant: id, app });
                }
            }
            tenants.push(Tenant {
                id,
                name: Arc::from(t.id.as_str()),
                apps,
                trunks: t.trunks.clone(),
                plan: Arc::from(t.plan.as_str()),
                suspended: false,
            });
        }
        Snapshot::new(tenants, numbers)
    }
}

// ---- the file format ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    sip: RawSip,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    rtp: RawRtp,
    #[serde(default)]
    provider: RawProvider,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    media: RawMedia,
    data_dir: Option<String>,
    #[serde(default)]
    plans: toml::Table,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    drain: RawDrain,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    offboard: RawOffboard,
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrain {
    grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffboard {
    grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    stale_key_days: Option<u32>,
    requests_per_second: Option<u32>,
    burst: Option<u32>,
    operator_requests_per_second: Option<u32>,
    operator_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    listen: Option<String>,
    advertise_ip: Option<String>,
    max_message_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRtp {
    ports: Option<String>,
    inactivity_timeout_secs: Option<u64>,
    playout_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    connect_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    workers: Option<usize>,
    scheduler: Option<String>,
    cpus: Option<Vec<usize>>,
    realtime_priority: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_calls: Option<usize>,
    worker_busy_pct: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    plan: Option<String>,
    #[serde(default)]
    apps: Vec<RawApp>,
    #[serde(default)]
    numbers: Vec<RawNumber>,
    #[serde(default)]
    trunks: Vec<RawTrunk>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    kind: String,
    stream_url: Option<String>,
    auth_header: Option<String>,
    codecs: Option<Vec<String>>,
    #[serde(default)]
    custom_parameters: toml::Table,
    media_format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNumber {
    number: String,
    app: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrunk {
    name: String,
    #[serde(default)]
    allowed_sources: Vec<String>,
}

pub const DEFAULT_SIP_LISTEN: &str = "127.0.0.1:5060";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_RTP_PORTS: &str = "20000-29999";
pub const DEFAULT_DATA_DIR: &str = "./fairvox-data";
/// Seconds a drain lets active calls go on (`drain.grace_secs`).
pub const DEFAULT_DRAIN_GRACE_SECS: u64 = 10;
/// Default `limits.worker_busy_pct`: the headroom at which one tenant's load stopped showing in another's p99 on
/// the isolation benchmark (see `docs/plans.md`, "Media workers hot", and `docs/benchmarks.md`).
pub const DEFAULT_WORKER_BUSY_PCT: u8 = 70;
/// Seconds an offboarding lets the tenant's active calls go on before ending them (`offboard.grace_secs`): long
/// enough for a caller to finish a sentence and the agent to say goodbye, short enough that the job is not held up.
pub const DEFAULT_OFFBOARD_GRACE_SECS: u64 = 30;
/// The plan of a tenant whose configuration names none.
pub const DEFAULT_PLAN: &str = "pro";
/// `api.stale_key_days` by default: a key unused for 30 days is flagged stale.
pub const DEFAULT_STALE_KEY_DAYS: u32 = 30;
/// `api.requests_per_second` by default: each API key's sustained rate. A script polling a listing every 50 ms
/// stays within it; a loop without a pause does not.
pub const DEFAULT_KEY_REQUESTS_PER_SECOND: u32 = 50;
/// `api.burst` by default: two seconds' worth at the sustained rate.
pub const DEFAULT_KEY_BURST: u32 = 100;
/// `api.operator_requests_per_second` by default: ten keys' worth (the operator acts for every tenant).
pub const DEFAULT_OPERATOR_REQUESTS_PER_SECOND: u32 = 500;
/// `api.operator_burst` by default.
pub const DEFAULT_OPERATOR_BURST: u32 = 1000;
/// The largest `api.*requests_per_second` and `api.*burst` (the limiter's arithmetic is in nanoseconds per
/// request: beyond this the limit no longer limits anything an HTTP server on one node can serve).
pub const MAX_API_RATE: u32 = 1_000_000;

impl RawConfig {
    fn embedded_demo() -> RawConfig {
        RawConfig {
            tenants: vec![RawTenant {
                id: "demo".to_owned(),
                plan: None,
                apps: vec![RawApp {
                    name: "echo".to_owned(),
                    kind: "echo".to_owned(),
                    stream_url: None,
                    auth_header: None,
                    codecs: None,
                    custom_parameters: toml::Table::new(),
                    media_format: None,
                }],
                numbers: vec![RawNumber { number: "+15550100".to_owned(), app: "echo".to_owned() }],
                trunks: vec![],
            }],
            ..RawConfig::default()
        }
    }

    fn validate(&self, file: &str) -> Result<Config, ConfigError> {
        let invalid =
            |key: &str, reason: String| ConfigError::Invalid { file: file.to_owned(), key: key.to_owned(), reason };
        let addr = |key: &str, value: Option<&String>, default: &str| -> Result<SocketAddr, ConfigError> {
            let v = value.map(String::as_str).unwrap_or(default);
            v.parse().map_err(|_| invalid(key, format!("{v:?} is not an IP:port address")))
        };
        let sip_listen = addr("sip.listen", self.sip.listen.as_ref(), DEFAULT_SIP_LISTEN)?;
        let http_listen = addr("http.listen", self.http.listen.as_ref(), DEFAULT_HTTP_LISTEN)?;
        let advertise_ip_setting: Option<IpAddr> = match &self.sip.advertise_ip {
            Some(v) => Some(v.parse().map_err(|_| invalid("sip.advertise_ip", format!("{v:?} is not an IP address")))?),
            None => None,
        };
        if advertise_ip_setting.is_some_and(|ip| ip.is_unspecified()) {
            return Err(invalid("sip.advertise_ip", "must be an address peers can reach, not unspecified".into()));
        }
        let rtp_ports = RtpPorts::parse(self.rtp.ports.as_deref().unwrap_or(DEFAULT_RTP_PORTS))
            .map_err(|r| invalid("rtp.ports", r))?;
        let inactivity = self.rtp.inactivity_timeout_secs.unwrap_or(30);
        if inactivity == 0 || inactivity > 3600 {
            return Err(invalid("rtp.inactivity_timeout_secs", format!("{inactivity} must be within 1..=3600")));
        }
        let playout_ms = self.rtp.playout_max_ms.unwrap_or(20_000);
        if !(100..=600_000).contains(&playout_ms) {
            return Err(invalid("rtp.playout_max_ms", format!("{playout_ms} must be within 100..=600000")));
        }
        let connect_ms = self.provider.connect_timeout_ms.unwrap_or(2_000);
        if !(10..=30_000).contains(&connect_ms) {
            return Err(invalid("provider.connect_timeout_ms", format!("{connect_ms} must be within 10..=30000")));
        }
        let max_calls = self.limits.max_calls.unwrap_or(rtp_ports.pairs());
        if max_calls == 0 {
            return Err(invalid("limits.max_calls", "must be at least 1".into()));
        }
        let worker_busy_pct = self.limits.worker_busy_pct.unwrap_or(DEFAULT_WORKER_BUSY_PCT);
        if !(10..=100).contains(&worker_busy_pct) {
            return Err(invalid(
                "limits.worker_busy_pct",
                format!("{worker_busy_pct} must be within 10..=100 (100: never refuse for it)"),
            ));
        }
        let media_workers = self.media.workers.unwrap_or(0);
        if media_workers > 256 {
            return Err(invalid("media.workers", format!("{media_workers} must be within 0..=256 (0: one per core)")));
        }
        let scheduler = match self.media.scheduler.as_deref() {
            None => SchedulerKind::Fair,
            Some(s) => {
                s.parse().map_err(|_| invalid("media.scheduler", format!("{s:?} must be \"fair\" or \"fifo\"")))?
            }
        };
        let media_cpus = self.media.cpus.clone().unwrap_or_default();
        if let Some(&cpu) = media_cpus.iter().find(|&&c| c >= crate::sched::cpus::MAX_CPUS) {
            let max = crate::sched::cpus::MAX_CPUS;
            return Err(invalid("media.cpus", format!("cpu {cpu} must be below {max}")));
        }
        if let Some((i, &cpu)) = media_cpus.iter().enumerate().find(|(i, c)| media_cpus[..*i].contains(c)) {
            return Err(invalid("media.cpus", format!("cpu {cpu} is listed twice (entry {i})")));
        }
        let media_realtime_priority = self.media.realtime_priority;
        if let Some(p) = media_realtime_priority {
            if !(1..=99).contains(&p) {
                return Err(invalid("media.realtime_priority", format!("{p} must be within 1..=99 (SCHED_FIFO)")));
            }
            if media_cpus.is_empty() {
                return Err(invalid(
                    "media.realtime_priority",
                    "needs media.cpus: a real-time worker takes its core from every normal thread, so SIP, HTTP and \
                     the control plane must have cores of their own"
                        .to_string(),
                ));
            }
        }
        let sip_max = self.sip.max_message_bytes.unwrap_or(16 * 1024);
        if !(1024..=65_535).contains(&sip_max) {
            return Err(invalid("sip.max_message_bytes", format!("{sip_max} must be within 1024..=65535")));
        }

        let mut raw_plans = Vec::with_capacity(self.plans.len());
        for (name, value) in &self.plans {
            let raw: RawPlan = value
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| invalid(&format!("plans.{name}"), e.message().to_owned()))?;
            raw_plans.push((name.clone(), raw));
        }
        let plans = build_plans(&raw_plans).map_err(|e| invalid(&e.key, e.reason.clone()))?;
        if self.metrics.max_tenants == 0 {
            return Err(invalid("metrics.max_tenants", "must be at least 1".into()));
        }
        self.log.check().map_err(|e| invalid("log.level", e.to_string()))?;
        let drain_grace = self.drain.grace_secs.unwrap_or(DEFAULT_DRAIN_GRACE_SECS);
        if drain_grace > 3600 {
            return Err(invalid("drain.grace_secs", format!("{drain_grace} must be within 0..=3600")));
        }
        let offboard_grace = self.offboard.grace_secs.unwrap_or(DEFAULT_OFFBOARD_GRACE_SECS);
        if offboard_grace > 86_400 {
            return Err(invalid("offboard.grace_secs", format!("{offboard_grace} must be within 0..=86400")));
        }
        let stale_key_days = self.api.stale_key_days.unwrap_or(DEFAULT_STALE_KEY_DAYS);
        if !(1..=3650).contains(&stale_key_days) {
            return Err(invalid("api.stale_key_days", format!("{stale_key_days} must be within 1..=3650")));
        }
        let rate = |key: &str, value: Option<u32>, default: u32| -> Result<u32, ConfigError> {
            let v = value.unwrap_or(default);
            if !(1..=MAX_API_RATE).contains(&v) {
                return Err(invalid(key, format!("{v} must be within 1..={MAX_API_RATE}")));
            }
            Ok(v)
        };
        let api = ApiSettings {
            stale_key_days,
            requests_per_second: rate(
                "api.requests_per_second",
                self.api.requests_per_second,
                DEFAULT_KEY_REQUESTS_PER_SECOND,
            )?,
            burst: rate("api.burst", self.api.burst, DEFAULT_KEY_BURST)?,
            operator_requests_per_second: rate(
                "api.operator_requests_per_second",
                self.api.operator_requests_per_second,
                DEFAULT_OPERATOR_REQUESTS_PER_SECOND,
            )?,
            operator_burst: rate("api.operator_burst", self.api.operator_burst, DEFAULT_OPERATOR_BURST)?,
        };

        let mut tenants = Vec::with_capacity(self.tenants.len());
        let mut tenant_ids = HashSet::new();
        let mut all_numbers: HashMap<E164, String> = HashMap::new();
        for (ti, t) in self.tenants.iter().enumerate() {
            let tkey = format!("tenants[{ti}]");
            if !valid_id(&t.id) {
                return Err(invalid(
                    &format!("{tkey}.id"),
                    format!("{:?} must be 1-64 characters of a-z, 0-9, '-' or '_'", t.id),
                ));
            }
            if t.id == OTHER || t.id == UNATTRIBUTED {
                return Err(invalid(
                    &format!("{tkey}.id"),
                    format!("{:?} is reserved: metrics use it for tenants without a label of their own", t.id),
                ));
            }
            if !tenant_ids.insert(t.id.clone()) {
                return Err(invalid(&format!("{tkey}.id"), format!("tenant {:?} is declared twice", t.id)));
            }
            let plan = t.plan.clone().unwrap_or_else(|| DEFAULT_PLAN.to_owned());
            if plans.get(&plan).is_none() {
                return Err(invalid(
                    &format!("{tkey}.plan"),
                    format!("no plan named {plan:?} (known: {})", plans.names().join(", ")),
                ));
            }
            let mut apps = Vec::with_capacity(t.apps.len());
            for (ai, a) in t.apps.iter().enumerate() {
                let akey = format!("{tkey}.apps[{ai}]");
                apps.push(validate_app(a, &akey).map_err(|(k, r)| invalid(&k, r))?);
            }
            let mut app_names = HashSet::new();
            for (ai, a) in apps.iter().enumerate() {
                if !app_names.insert(a.name.clone()) {
                    return Err(invalid(
                        &format!("{tkey}.apps[{ai}].name"),
                        format!("app {:?} is declared twice", a.name),
                    ));
                }
            }
            let mut numbers = Vec::with_capacity(t.numbers.len());
            for (ni, n) in t.numbers.iter().enumerate() {
                let nkey = format!("{tkey}.numbers[{ni}]");
                let number = E164::parse(&n.number).map_err(|e| invalid(&format!("{nkey}.number"), e.to_string()))?;
                if !app_names.contains(&n.app) {
                    return Err(invalid(
                        &format!("{nkey}.app"),
                        format!("no app named {:?} in tenant {:?}", n.app, t.id),
                    ));
                }
                if let Some(owner) = all_numbers.insert(number.clone(), t.id.clone()) {
                    return Err(invalid(
                        &format!("{nkey}.number"),
                        format!("{number} is already assigned to tenant {owner:?}"),
                    ));
                }
                numbers.push((number, n.app.clone()));
            }
            let mut trunks = Vec::with_capacity(t.trunks.len());
            let mut trunk_names = HashSet::new();
            for (ri, r) in t.trunks.iter().enumerate() {
                let rkey = format!("{tkey}.trunks[{ri}]");
                ResourceName::parse(&r.name).map_err(|e| invalid(&format!("{rkey}.name"), e.reason))?;
                if !trunk_names.insert(r.name.clone()) {
                    return Err(invalid(&format!("{rkey}.name"), format!("trunk {:?} is declared twice", r.name)));
                }
                if r.allowed_sources.len() > 64 {
                    return Err(invalid(&format!("{rkey}.allowed_sources"), "at most 64 networks".into()));
                }
                let mut allowed = Vec::with_capacity(r.allowed_sources.len());
                for (ci, c) in r.allowed_sources.iter().enumerate() {
                    allowed
                        .push(parse_cidr(c).map_err(|reason| {
                            invalid(&format!("{tkey}.trunks[{ri}].allowed_sources[{ci}]"), reason)
                        })?);
                }
                trunks.push(Trunk { name: Arc::from(r.name.as_str()), allowed_sources: allowed });
            }
            tenants.push(TenantConfig { id: t.id.clone(), plan, apps, numbers, trunks });
        }

        Ok(Config {
            sip_listen,
            http_listen,
            advertise_ip_setting,
            rtp_ports,
            rtp_inactivity_timeout: Duration::from_secs(inactivity),
            provider_connect_timeout: Duration::from_millis(connect_ms),
            playout_max_samples: (playout_ms as usize) * 8,
            max_calls,
            worker_busy_threshold: f64::from(worker_busy_pct) / 100.0,
            media_workers,
            scheduler,
            media_cpus,
            media_realtime_priority,
            sip_max_message_bytes: sip_max,
            data_dir: PathBuf::from(self.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)),
            plans,
            metrics: self.metrics.clone(),
            log: self.log.clone(),
            drain_grace: Duration::from_secs(drain_grace),
            api,
            offboard_grace: Duration::from_secs(offboard_grace),
            tenants,
        })
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not a CIDR (e.g. 192.0.2.0/24) or an IP address"))
}

/// Apps are held to the same rules as the store's (`store::model`), so every config tenant can be seeded into it.
fn validate_app(a: &RawApp, key: &str) -> Result<AppConfig, (String, String)> {
    ResourceName::parse(&a.name).map_err(|e| (format!("{key}.name"), e.reason))?;
    let kind = match a.kind.as_str() {
        "echo" => {
            if a.stream_url.is_some() {
                return Err((format!("{key}.stream_url"), "an echo app takes no stream_url".into()));
            }
            if a.auth_header.is_some() {
                return Err((format!("{key}.auth_header"), "an echo app takes no auth_header".into()));
            }
            AppKind::Echo
        }
        "stream" => {
            let Some(url) = &a.stream_url else {
                return Err((format!("{key}.stream_url"), "required for kind = \"stream\"".into()));
            };
            StreamUrl::parse(url).map_err(|e| (format!("{key}.stream_url"), format!("{url:?} {}", e.reason)))?;
            if let Some(h) = &a.auth_header {
                AuthHeader::parse(h).map_err(|e| (format!("{key}.auth_header"), e.reason))?;
            }
            AppKind::Stream { url: url.clone(), auth_header: a.auth_header.clone() }
        }
        other => return Err((format!("{key}.kind"), format!("{other:?} is not one of \"echo\", \"stream\""))),
    };
    let codecs = match &a.codecs {
        None => vec![Codec::Pcmu, Codec::Pcma],
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, c) in list.iter().enumerate() {
                let codec = match c.to_ascii_uppercase().as_str() {
                    "PCMU" => Codec::Pcmu,
                    "PCMA" => Codec::Pcma,
                    _ => return Err((format!("{key}.codecs[{i}]"), format!("{c:?} is not one of \"PCMU\", \"PCMA\""))),
                };
                if !out.contains(&codec) {
                    out.push(codec);
                }
            }
            if out.is_empty() {
                return Err((format!("{key}.codecs"), "must list at least one codec".into()));
            }
            out
        }
    };
    let mut custom_parameters = Vec::with_capacity(a.custom_parameters.len());
    for (k, v) in &a.custom_parameters {
        let value = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            _ => return Err((format!("{key}.custom_parameters.{k}"), "must be a string, number or boolean".into())),
        };
        if k == "from_number" || k == "to_number" {
            return Err((format!("{key}.custom_parameters.{k}"), "is reserved: the server sets it per call".into()));
        }
        custom_parameters.push((k.clone(), value));
    }
    CustomParameters::new(custom_parameters.clone()).map_err(|e| (format!("{key}.custom_parameters"), e.reason))?;
    let media_format = match &a.media_format {
        None => MediaFormat::default(),
        Some(name) => parse_media_format(name)
            .map_err(|e| (format!("{key}.media_format"), format!("{} (app {:?})", e.reason, a.name)))?,
    };
    Ok(AppConfig { name: a.name.clone(), kind, codecs, custom_parameters, media_format })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_route_the_demo_number_to_echo() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.sip_listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(c.http_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./fairvox-data"));
        let snap = c.snapshot();
        match snap.route(&E164::parse("+15550100").unwrap(), "127.0.0.1".parse().unwrap()) {
            crate::tenant::RouteDecision::Accept { tenant, app, .. } => {
                assert_eq!(&*tenant.name, "demo");
                assert_eq!(app.kind, AppKind::Echo);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn media_workers_and_scheduler_default_parse_and_are_validated() {
        let c = Config::from_toml("t.toml", "").unwrap();
        assert_eq!((c.media_workers, c.scheduler), (0, SchedulerKind::Fair));
        let c = Config::from_toml("t.toml", "[media]\nworkers = 1\nscheduler = \"fifo\"\n").unwrap();
        assert_eq!((c.media_workers, c.scheduler), (1, SchedulerKind::Fifo));
        let e = Config::from_toml("t.toml", "[media]\nscheduler = \"lottery\"\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml: media.scheduler: \"lottery\" must be"), "{e}");
        let e = Config::from_toml("t.toml", "[media]\nworkers = 1000\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml: media.workers: "), "{e}");
        assert!(c.media_cpus.is_empty(), "no cpus are dedicated unless configured");
        let c = Config::from_toml("t.toml", "[media]\ncpus = [2, 0]\n").unwrap();
        assert_eq!(c.media_cpus, vec![2, 0]);
        let e = Config::from_toml("t.toml", "[media]\ncpus = [1, 3, 1]\n").unwrap_err().to_string();
        assert_eq!(e, "t.toml: media.cpus: cpu 1 is listed twice (entry 2)");
        let e = Config::from_toml("t.toml", "[media]\ncpus = [4096]\n").unwrap_err().to_string();
        assert_eq!(e, "t.toml: media.cpus: cpu 4096 must be below 1024");
        let e = Config::from_toml("t.toml", "[media]\ncpus = [-1]\n").unwrap_err().to_string();
        assert!(e.contains("cpus = [-1]") && e.contains("expected usize"), "{e}");
        assert_eq!(c.media_realtime_priority, None, "the normal policy unless configured");
        let c = Config::from_toml("t.toml", "[media]\ncpus = [1]\nrealtime_priority = 10\n").unwrap();
        assert_eq!(c.media_realtime_priority, Some(10));
        let e = Config::from_toml("t.toml", "[media]\nrealtime_priority = 10\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml: media.realtime_priority: needs media.cpus"), "{e}");
        let e = Config::from_toml("t.toml", "[media]\ncpus = [1]\nrealtime_priority = 0\n").unwrap_err().to_string();
        assert_eq!(e, "t.toml: media.realtime_priority: 0 must be within 1..=99 (SCHED_FIFO)");
        assert_eq!(c.worker_busy_threshold, 0.70);
        let c = Config::from_toml("t.toml", "[limits]\nworker_busy_pct = 100\n").unwrap();
        assert_eq!(c.worker_busy_threshold, 1.0);
        let e = Config::from_toml("t.toml", "[limits]\nworker_busy_pct = 5\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml: limits.worker_busy_pct: 5 must be within 10..=100"), "{e}");
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_toml(
            "t.toml",
            r#"
data_dir = "/tmp/x"
[sip]
listen = "127.0.0.1:5070"
[rtp]
ports = "30000-30099"
inactivity_timeout_secs = 5
[[tenants]]
id = "acme"
[[tenants.apps]]
name = "rx"
kind = "stream"
stream_url = "ws://127.0.0.1:9000/s"
codecs = ["PCMA"]
custom_parameters = { lang = "en", n = 3 }
[[tenants.numbers]]
number = "+1 555 123 0001"
app = "rx"
[[tenants.trunks]]
name = "c"
allowed_sources = ["10.0.0.0/8", "192.0.2.1"]
"#,
        )
        .unwrap();
        assert_eq!(c.rtp_ports, RtpPorts { lo: 30000, hi: 30099 });
        assert_eq!(c.rtp_ports.pairs(), 50);
        assert_eq!(c.tenants[0].numbers[0].0.as_str(), "+15551230001");
        assert_eq!(c.tenants[0].apps[0].codecs, vec![Codec::Pcma]);
        assert_eq!(
            c.tenants[0].apps[0].custom_parameters,
            vec![("lang".into(), "en".into()), ("n".into(), "3".into())]
        );
        assert_eq!(c.tenants[0].trunks[0].allowed_sources.len(), 2);
        assert_eq!(c.metrics.max_tenants, 1000, "default");
        let c = Config::from_toml("m.toml", "[metrics]\nmax_tenants = 50\n").unwrap();
        assert_eq!(c.metrics.max_tenants, 50);
    }

    #[test]
    fn log_and_drain_sections() {
        let c = Config::from_toml("d.toml", "").unwrap();
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.drain_grace, Duration::from_secs(DEFAULT_DRAIN_GRACE_SECS));
        let c = Config::from_toml(
            "l.toml",
            "[log]\nlevel = \"warn,fairvox=debug\"\nformat = \"text\"\n[drain]\ngrace_secs = 0\n",
        )
        .unwrap();
        assert_eq!(c.log.level, "warn,fairvox=debug");
        assert_eq!(c.log.format, crate::logging::LogFormat::Text);
        assert_eq!(c.drain_grace, Duration::ZERO);
        let o = Overrides { drain_grace: Some(Duration::from_secs(3)), ..Overrides::default() };
        let path = std::env::temp_dir().join(format!("fairvox-config-drain-{}.toml", std::process::id()));
        std::fs::write(&path, "[drain]\ngrace_secs = 30\n").unwrap();
        let c = Config::load(Some(&path), &o);
        let _ = std::fs::remove_file(&path);
        assert_eq!(c.unwrap().drain_grace, Duration::from_secs(3), "--drain-secs overrides the file");
        assert!(err("[log]\nlevel = \"fairvox=loud\"\n").starts_with("bad.toml: log.level: "));
        assert!(err("[log]\nformat = \"xml\"\n").starts_with("bad.toml: "));
        assert_eq!(err("[drain]\ngrace_secs = 7200\n"), "bad.toml: drain.grace_secs: 7200 must be within 0..=3600");
    }

    fn err(text: &str) -> String {
        Config::from_toml("bad.toml", text).unwrap_err().to_string()
    }

    /// Config apps and trunks obey the store's rules, so that every config tenant can be seeded into the store.
    #[test]
    fn apps_and_trunks_follow_the_store_rules() {
        let app = |fields: &str| err(&format!("[[tenants]]\nid = \"a\"\n[[tenants.apps]]\n{fields}\n"));
        assert!(app("name = \" x\"\nkind = \"echo\"").starts_with("bad.toml: tenants[0].apps[0].name: "));
        assert!(app("name = \"x\"\nkind = \"stream\"\nstream_url = \"ws://\"").contains("apps[0].stream_url: "));
        assert!(app("name = \"x\"\nkind = \"echo\"\nauth_header = \"Bearer t\"").contains("apps[0].auth_header: "));
        let e = app("name = \"x\"\nkind = \"stream\"\nstream_url = \"ws://h/\"\nauth_header = \"a\\nb\"");
        assert!(e.contains("apps[0].auth_header: "), "{e}");
        let e = app("name = \"x\"\nkind = \"echo\"\ncustom_parameters = { \"a b\" = \"1\" }");
        assert!(e.contains("apps[0].custom_parameters: "), "{e}");
        let e = err("[[tenants]]\nid = \"a\"\n[[tenants.trunks]]\nname = \"t\"\n[[tenants.trunks]]\nname = \"t\"\n");
        assert_eq!(e, "bad.toml: tenants[0].trunks[1].name: trunk \"t\" is declared twice");
        assert_eq!(err("[api]\nstale_key_days = 0\n"), "bad.toml: api.stale_key_days: 0 must be within 1..=3650");
        assert_eq!(Config::from_toml("t.toml", "").unwrap().api.stale_key_days, 30);
        assert_eq!(Config::from_toml("t.toml", "").unwrap().offboard_grace, Duration::from_secs(30));
        assert_eq!(Config::from_toml("t.toml", "[offboard]\ngrace_secs = 0\n").unwrap().offboard_grace, Duration::ZERO);
        assert_eq!(
            err("[offboard]\ngrace_secs = 90000\n"),
            "bad.toml: offboard.grace_secs: 90000 must be within 0..=86400"
        );
        assert!(err("[offboard]\ngrace = 3\n").contains("unknown field"));
    }

    #[test]
    fn an_apps_media_format_is_read_and_checked() {
        let apps = |wide: &str| {
            format!(
                "[[tenants]]\nid = \"a\"\n[[tenants.apps]]\nname = \"plain\"\nkind = \"echo\"\n\
                 [[tenants.apps]]\nname = \"wide\"\nkind = \"stream\"\nstream_url = \"ws://h/s\"\nmedia_format = {wide}\n\
                 [[tenants.numbers]]\nnumber = \"+15550001\"\napp = \"wide\"\n"
            )
        };
        let c = Config::from_toml("t.toml", &apps("\"l16_16k\"")).unwrap();
        let formats: Vec<MediaFormat> = c.tenants[0].apps.iter().map(|a| a.media_format).collect();
        assert_eq!(formats, [MediaFormat::Mulaw8k, MediaFormat::L16Wide], "mulaw_8k unless given");
        match c.snapshot().route(&E164::parse("+15550001").unwrap(), "127.0.0.1".parse().unwrap()) {
            crate::tenant::RouteDecision::Accept { app, .. } => assert_eq!(app.media_format, MediaFormat::L16Wide),
            other => panic!("unexpected {other:?}"),
        }
        let c = Config::from_toml("t.toml", &apps("\"mulaw_8k\"")).unwrap();
        assert_eq!(c.tenants[0].apps[1].media_format, MediaFormat::Mulaw8k);
        assert_eq!(
            err(&apps("\"l16\"")),
            "bad.toml: tenants[0].apps[1].media_format: \"l16\" is not one of \"mulaw_8k\", \"l16_16k\" (app \"wide\")"
        );
        assert!(err(&apps("16000")).starts_with("bad.toml: "), "a number is not a format name");
    }

    #[test]
    fn api_rate_limits_have_defaults_and_bounds() {
        assert_eq!(Config::from_toml("t.toml", "").unwrap().api, ApiSettings::default());
        let c = Config::from_toml("t.toml", "[api]\nrequests_per_second = 2\nburst = 3\noperator_burst = 7\n").unwrap();
        assert_eq!((c.api.requests_per_second, c.api.burst), (2, 3));
        assert_eq!((c.api.operator_requests_per_second, c.api.operator_burst), (500, 7));
        assert_eq!(
            err("[api]\nrequests_per_second = 0\n"),
            "bad.toml: api.requests_per_second: 0 must be within 1..=1000000"
        );
        assert_eq!(err("[api]\nburst = 0\n"), "bad.toml: api.burst: 0 must be within 1..=1000000");
        assert!(
            err("[api]\noperator_requests_per_second = 1000001\n")
                .starts_with("bad.toml: api.operator_requests_per_second: ")
        );
        assert!(err("[api]\noperator_burst = -1\n").starts_with("bad.toml: "));
        assert!(err("[api]\nrequests_per_minute = 5\n").starts_with("bad.toml: "), "unknown keys are errors");
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        assert_eq!(err("[sip]\nlisten = \"nope\"\n"), "bad.toml: sip.listen: \"nope\" is not an IP:port address");
        assert!(err("[rtp]\nports = \"5-3\"\n").starts_with("bad.toml: rtp.ports: "));
        assert!(err("[[tenants]]\nid = \"Bad Id\"\n").starts_with("bad.toml: tenants[0].id: "));
        let e = err("[[tenants]]\nid = \"a\"\n[[tenants.numbers]]\nnumber = \"+1555\"\napp = \"missing\"\n");
        assert_eq!(e, "bad.toml: tenants[0].numbers[0].app: no app named \"missing\" in tenant \"a\"");
        let e = err(
            "[[tenants]]\nid = \"a\"\n[[tenants.apps]]\nname = \"x\"\nkind = \"stream\"\nstream_url = \"http://h\"\n",
        );
        assert!(e.starts_with("bad.toml: tenants[0].apps[0].stream_url: "), "{e}");
        let e = err(
            "[[tenants]]\nid = \"a\"\n[[tenants.apps]]\nname = \"x\"\nkind = \"echo\"\n[[tenants.numbers]]\nnumber = \"+1555\"\napp = \"x\"\n[[tenants]]\nid = \"b\"\n[[tenants.apps]]\nname = \"x\"\nkind = \"echo\"\n[[tenants.numbers]]\nnumber = \"1555\"\napp = \"x\"\n",
        );
        assert_eq!(e, "bad.toml: tenants[1].numbers[0].number: +1555 is already assigned to tenant \"a\"");
        let e = err("[[tenants]]\nid = \"a\"\n[[tenants.trunks]]\nname = \"t\"\nallowed_sources = [\"x/8\"]\n");
        assert!(e.starts_with("bad.toml: tenants[0].trunks[0].allowed_sources[0]: "), "{e}");
        assert!(err("bogus = 1\n").starts_with("bad.toml: "));
        let e = err("[[tenants]]\nid = \"other\"\n");
        assert!(e.starts_with("bad.toml: tenants[0].id: \"other\" is reserved"), "{e}");
        assert!(err("[[tenants]]\nid = \"unattributed\"\n").contains("is reserved"));
        assert_eq!(err("[metrics]\nmax_tenants = 0\n"), "bad.toml: metrics.max_tenants: must be at least 1");
    }
}
