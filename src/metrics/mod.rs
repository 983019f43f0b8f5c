//! Prometheus metrics, per tenant.
//!
//! [`Metrics`] owns a `prometheus_client` [`Registry`] with every `fairvox_*` family and the `process_*` metrics,
//! and serves them as text ([`Metrics::encode`], for `GET /metrics`). `docs/metrics.md` lists the families, their
//! labels and units, and the queries SREs run on them.
//!
//! # The frame path does not allocate
//!
//! A call asks once for its tenant's handle, [`Metrics::tenant`], which is cached per [`TenantId`] (a read lock, a
//! string compare and a pointer clone on a hit). The handle, [`TenantMetrics`], holds clones of the tenant's
//! frame-path series (`Histogram` and `Counter` are `Arc`s), created when the tenant was first seen. Recording a
//! frame, its latency, a drop, a queue wait, jitter or lost packets is then an atomic add, or a histogram's short
//! lock and bucket scan: no label lookup, no string, no allocation (`tests/metrics_alloc.rs` counts).
//!
//! # Tenant labels
//!
//! Calls that belong to no tenant (unknown number, forbidden source, malformed) are counted under
//! `tenant="unattributed"` ([`Metrics::unattributed`]). At most `metrics.max_tenants` tenants get their own label
//! value; the ones seen after that share `tenant="other"`, and each such tenant is counted once in
//! `fairvox_metrics_tenants_folded_total`. [`Metrics::forget_tenant`] removes an offboarded tenant's series and
//! frees its place.

mod labels;
mod process;
#[cfg(test)]
mod tests;
mod text;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::call::record::EndReason;
use crate::tenant::TenantId;

pub use labels::{Direction, FrameDropReason, OTHER, RejectReason, SipMethod, UNATTRIBUTED};
use labels::{
    RecordResultLabels, SipLabels, SipStatus, TenantApp, TenantDirection, TenantDrop, TenantKind, TenantLabel,
    TenantLabels, TenantOutcome, TenantReject,
};
pub use process::ProcessStats;

/// Bucket upper bounds, in seconds, of every `fairvox_*_seconds` histogram: 100 µs to 250 ms, dense around the
/// 20 ms frame and the 40 ms default `max_wait`; one more bucket (`+Inf`) takes everything above.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.25];

/// Default of `metrics.max_tenants`.
pub const DEFAULT_MAX_TENANTS: usize = 1000;

/// Content type of [`Metrics::encode`]: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Content type of [`Metrics::encode_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Highest `TenantId` + 1 that [`Metrics::tenant`] caches (a bogus id must not grow the cache without bound).
const MAX_CACHED_IDS: usize = crate::sched::admission::MAX_TENANTS as usize;

/// The `[metrics]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// How many tenants get a `tenant` label value of their own; the others share `tenant="other"`.
    pub max_tenants: usize,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig { max_tenants: DEFAULT_MAX_TENANTS }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn histogram_family<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

/// Every `fairvox_*` family. Each is an `Arc`-backed handle; the registry holds clones of the same.
#[derive(Debug)]
struct Families {
    frame_latency: HistogramFamily<TenantDirection>,
    sched_wait: HistogramFamily<TenantLabels>,
    calls_active: Family<TenantLabels, Gauge>,
    calls: Family<TenantOutcome, Counter>,
    calls_rejected: Family<TenantReject, Counter>,
    frames: Family<TenantDirection, Counter>,
    frames_dropped: Family<TenantDrop, Counter>,
    rtp_packets_lost: Family<TenantLabels, Counter>,
    rtp_jitter: HistogramFamily<TenantLabels>,
    provider_stream_errors: Family<TenantKind, Counter>,
    provider_circuit_open: Family<TenantApp, Gauge>,
    latency_budget: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    billable_seconds: Family<TenantLabels, Counter>,
    sip_messages: Family<SipLabels, Counter>,
    sip_malformed: Counter,
    tenants_folded: Counter,
    api_rate_limited: Family<TenantLabels, Counter>,
    api_operator_rate_limited: Counter,
    call_records: Family<RecordResultLabels, Counter>,
    media_workers_busy: Gauge<f64, AtomicU64>,
    media_workers_hot: Gauge,
    media_worker_rests: Counter,
}

impl Families {
    fn new() -> Families {
        Families {
            frame_latency: histogram_family(),
            sched_wait: histogram_family(),
            calls_active: Family::default(),
            calls: Family::default(),
            calls_rejected: Family::default(),
            frames: Family::default(),
            frames_dropped: Family::default(),
            rtp_packets_lost: Family::default(),
            rtp_jitter: histogram_family(),
            provider_stream_errors: Family::default(),
            provider_circuit_open: Family::default(),
            latency_budget: Family::default(),
            billable_seconds: Family::default(),
            sip_messages: Family::default(),
            sip_malformed: Counter::default(),
            tenants_folded: Counter::default(),
            api_rate_limited: Family::default(),
            api_operator_rate_limited: Counter::default(),
            call_records: Family::default(),
            media_workers_busy: Gauge::default(),
            media_workers_hot: Gauge::default(),
            media_worker_rests: Counter::default(),
        }
    }

    /// Registers every family. Names are given without their unit and without `_total`: the encoder appends the
    /// unit (`with_unit`) and, for counters, `_total`. Help texts get a final `.` from the registry.
    fn register(&self, r: &mut Registrar<'_>) {
        let s = Unit::Seconds;
        r.register_with_unit(
            "fairvox_frame_latency",
            "Time a frame spends inside fairvox: inbound from its RTP packet's arrival to its write to the \
             agent's WebSocket, outbound from the agent's media message to its RTP packet",
            s.clone(),
            self.frame_latency.clone(),
        );
        r.register_with_unit(
            "fairvox_sched_wait",
            "Time a frame waited in its tenant's fair-queue before its work started",
            s.clone(),
            self.sched_wait.clone(),
        );
        r.register("fairvox_calls_active", "Calls in progress (answered or being set up)", self.calls_active.clone());
        r.register("fairvox_calls", "Calls that reached media setup and ended, by how they ended", self.calls.clone());
        r.register("fairvox_calls_rejected", "INVITEs refused, by reason", self.calls_rejected.clone());
        r.register("fairvox_frames", "20 ms audio frames forwarded", self.frames.clone());
        r.register("fairvox_frames_dropped", "Audio frames dropped, by reason", self.frames_dropped.clone());
        r.register(
            "fairvox_rtp_packets_lost",
            "RTP packets lost from callers, from sequence-number gaps",
            self.rtp_packets_lost.clone(),
        );
        r.register_with_unit(
            "fairvox_rtp_jitter",
            "RFC 3550 interarrival jitter of callers' RTP, one observation per call per report interval",
            s.clone(),
            self.rtp_jitter.clone(),
        );
        r.register(
            "fairvox_provider_stream_errors",
            "Failures of the agent WebSocket (connect, protocol, write), by kind",
            self.provider_stream_errors.clone(),
        );
        r.register(
            "fairvox_provider_circuit_open",
            "1 while the circuit breaker of a tenant's app is open (for tenant other: the number of open circuits)",
            self.provider_circuit_open.clone(),
        );
        r.register_with_unit(
            "fairvox_tenant_latency_budget",
            "The tenant's frame-latency budget: its plan's max_frame_queue_ms (alerts compare p99 latency with it)",
            s.clone(),
            self.latency_budget.clone(),
        );
        r.register_with_unit(
            "fairvox_billable",
            "Billable call time, in whole seconds",
            s,
            self.billable_seconds.clone(),
        );
        r.register(
            "fairvox_sip_messages",
            "SIP messages received and sent, by method and status (status is request for requests)",
            self.sip_messages.clone(),
        );
        r.register("fairvox_sip_malformed", "SIP messages that did not parse", self.sip_malformed.clone());
        r.register(
            "fairvox_metrics_tenants_folded",
            "Tenants counted under tenant other because metrics.max_tenants tenants already have their own label",
            self.tenants_folded.clone(),
        );
        r.register(
            "fairvox_api_rate_limited",
            "Control-plane API requests refused with 429 because the API key had used up its rate limit, by the \
             key's tenant",
            self.api_rate_limited.clone(),
        );
        r.register(
            "fairvox_api_operator_rate_limited",
            "Control-plane API requests with the operator token refused with 429 (its own rate limit)",
            self.api_operator_rate_limited.clone(),
        );
        r.register(
            "fairvox_call_records",
            "Call records on their way to the store, by result: written (with their usage), duplicate (already \
             recorded), failed (not written), dropped (the writer's queue was full; the JSONL file has them)",
            self.call_records.clone(),
        );
        r.register(
            "fairvox_media_workers_busy_ratio",
            "Share of their cores' time the media worker threads used over the last quarter-second (CPU clocks)",
            self.media_workers_busy.clone(),
        );
        r.register(
            "fairvox_media_workers_hot",
            "1 while the media workers are hot (limits.worker_busy_pct): tenants at or above their share get 503",
            self.media_workers_hot.clone(),
        );
        r.register(
            "fairvox_media_worker_rests",
            "Rests real-time media workers (media.realtime_priority) took after a 10 ms window with too little idle \
             time, to stay under the kernel's real-time limit: growing means the workers are saturated",
            self.media_worker_rests.clone(),
        );
    }

    /// Removes every series of one tenant label: the fixed ones, and the `dynamic` ones it created.
    fn remove_tenant(&self, tenant: &TenantLabel, dynamic: &HashSet<DynamicSeries>) {
        for direction in Direction::ALL {
            let l = TenantDirection { tenant: tenant.clone(), direction };
            self.frame_latency.remove(&l);
            self.frames.remove(&l);
        }
        for reason in FrameDropReason::ALL {
            self.frames_dropped.remove(&TenantDrop { tenant: tenant.clone(), reason });
        }
        let l = TenantLabels { tenant: tenant.clone() };
        self.sched_wait.remove(&l);
        self.calls_active.remove(&l);
        self.rtp_packets_lost.remove(&l);
        self.rtp_jitter.remove(&l);
        self.billable_seconds.remove(&l);
        self.latency_budget.remove(&l);
        for series in dynamic {
            let tenant = tenant.clone();
            match series {
                DynamicSeries::Outcome(outcome) => self.calls.remove(&TenantOutcome { tenant, outcome }),
                DynamicSeries::Rejected(reason) => {
                    self.calls_rejected.remove(&TenantReject { tenant, reason: *reason })
                }
                DynamicSeries::ProviderError(kind) => self.provider_stream_errors.remove(&TenantKind { tenant, kind }),
                DynamicSeries::Circuit(app) => {
                    self.provider_circuit_open.remove(&TenantApp { tenant, app: app.clone() })
                }
                DynamicSeries::ApiRateLimited => self.api_rate_limited.remove(&TenantLabels { tenant }),
            };
        }
    }
}

/// Registers families and notes the name each is exposed under in the text format 0.0.4 (unit and `_total`
/// appended as the encoder does), so that [`Metrics::family_names`] lists them whether or not they have series yet
/// (the encoder skips a family without series).
struct Registrar<'a> {
    registry: &'a mut Registry,
    names: Vec<String>,
}

impl Registrar<'_> {
    fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.note(name, None, &metric);
        self.registry.register(name, help, metric);
    }

    fn register_with_unit(&mut self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.note(name, Some(&unit), &metric);
        self.registry.register_with_unit(name, help, unit, metric);
    }

    fn note(&mut self, name: &str, unit: Option<&Unit>, metric: &impl Metric) {
        let mut exposed = name.to_owned();
        if let Some(unit) = unit {
            exposed.push('_');
            exposed.push_str(unit.as_str());
        }
        if matches!(metric.metric_type(), MetricType::Counter) {
            exposed.push_str("_total");
        }
        self.names.push(exposed);
    }
}

/// A series of a tenant label made on demand (its other labels are not known in advance), remembered so that
/// [`Metrics::forget_tenant`] can remove it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum DynamicSeries {
    Outcome(&'static str),
    Rejected(RejectReason),
    ProviderError(&'static str),
    Circuit(Arc<str>),
    ApiRateLimited,
}

/// A `tenant` label value that has series.
#[derive(Debug)]
struct Labelled {
    /// Distinguishes this life of the label from an earlier one that was forgotten: a handle of a forgotten life
    /// must not make its series again.
    generation: u64,
    dynamic: HashSet<DynamicSeries>,
}

/// The cardinality guard's state.
#[derive(Debug, Default)]
struct TenantTable {
    /// Label values with series: tenants within the guard, and the reserved `unattributed` and `other`.
    labelled: HashMap<Arc<str>, Labelled>,
    /// How many entries of `labelled` are tenants (the reserved values do not count against the limit).
    tenants: usize,
    /// Tenants folded into `other`, each with the apps whose circuit it reported open.
    folded: HashMap<Arc<str>, HashSet<Arc<str>>>,
    next_generation: u64,
}

impl TenantTable {
    /// The generation of `label`'s entry, making the entry if there is none.
    fn generation(&mut self, label: &Arc<str>) -> u64 {
        if let Some(e) = self.labelled.get(label) {
            return e.generation;
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        self.labelled.insert(label.clone(), Labelled { generation, dynamic: HashSet::new() });
        generation
    }

    /// The entry of `label` if it is still in the life `generation`.
    fn live(&mut self, label: &str, generation: u64) -> Option<&mut Labelled> {
        self.labelled.get_mut(label).filter(|e| e.generation == generation)
    }
}

/// The metrics of one fairvox node. Share it (`Arc<Metrics>`); every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Every family's exposed name, `process_*` included (see [`Metrics::family_names`]).
    family_names: Vec<String>,
    families: Arc<Families>,
    table: Arc<Mutex<TenantTable>>,
    /// Handles by `TenantId` index, each with the name it was made for (an index may be reused by another tenant
    /// after a routing snapshot is rebuilt, so a hit is checked by name).
    cache: RwLock<Vec<Option<TenantMetrics>>>,
    unattributed: TenantMetrics,
    max_tenants: usize,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(&MetricsConfig::default())
    }
}

impl Metrics {
    pub fn new(config: &MetricsConfig) -> Metrics {
        let families = Arc::new(Families::new());
        let mut registry = Registry::default();
        let mut registrar = Registrar { registry: &mut registry, names: Vec::new() };
        families.register(&mut registrar);
        let mut family_names = registrar.names;
        family_names.extend(process::FAMILY_NAMES.iter().map(|n| (*n).to_owned()));
        registry.register_collector(Box::new(process::ProcessCollector));
        let table = Arc::new(Mutex::new(TenantTable::default()));
        let unattributed = {
            let label: Arc<str> = UNATTRIBUTED.into();
            let generation = table.lock().generation(&label);
            TenantMetrics::build(&families, &table, label.clone(), label, false, generation, false)
        };
        Metrics {
            registry,
            family_names,
            families,
            table,
            cache: RwLock::new(Vec::new()),
            unattributed,
            max_tenants: config.max_tenants,
        }
    }

    /// The handle of tenant `id`, whose public name is `name`: take it once per call and record through it.
    ///
    /// Cached per `id`: a hit takes a read lock, compares the name and clones a pointer (no allocation). A miss
    /// (first call of the tenant, or `id` now names another tenant) resolves the name through the cardinality
    /// guard and creates the tenant's series. An empty name gives [`Metrics::unattributed`].
    pub fn tenant(&self, id: TenantId, name: &str) -> TenantMetrics {
        let index = id.0 as usize;
        if let Some(Some(hit)) = self.cache.read().get(index)
            && *hit.0.name == *name
        {
            return hit.clone();
        }
        // Resolve and fill the cache under the table lock, so that a concurrent `forget_tenant` (which clears the
        // cache under it too) cannot be overtaken by a stale handle.
        let mut table = self.table.lock();
        let handle = self.resolve(&mut table, name);
        if index < MAX_CACHED_IDS {
            let mut cache = self.cache.write();
            if cache.len() <= index {
                cache.resize(index + 1, None);
            }
            cache[index] = Some(handle.clone());
        }
        handle
    }

    /// The handle for calls that belong to no tenant: unknown number, source not on any trunk, malformed. Such a
    /// call is refused before it has media, so only its per-call series are exported (`calls_rejected`,
    /// `calls_total`, `provider_stream_errors`); what its frame-path methods, `call_started` and
    /// `add_billable_seconds` record is not exported, so that no all-zero media series carry
    /// `tenant="unattributed"`.
    pub fn unattributed(&self) -> TenantMetrics {
        self.unattributed.clone()
    }

    /// The handle of the tenant named `name`, for a caller that knows the tenant by name only (the API's rate
    /// limits, which take it once per key and keep it). Takes the table lock: not for a per-frame or per-request
    /// path.
    pub fn tenant_named(&self, name: &str) -> TenantMetrics {
        let mut table = self.table.lock();
        self.resolve(&mut table, name)
    }

    /// Counts one call record by what became of it on its way to the store: `written`, `duplicate`, `failed` or
    /// `dropped` (`api::sink`). Per call, not per frame.
    pub fn call_record(&self, result: &'static str) {
        self.families.call_records.get_or_create(&RecordResultLabels { result }).inc();
    }

    /// Counts one API request with the operator token refused for its rate limit.
    pub fn api_operator_rate_limited(&self) {
        self.families.api_operator_rate_limited.inc();
    }

    fn resolve(&self, table: &mut TenantTable, name: &str) -> TenantMetrics {
        if name.is_empty() || name == UNATTRIBUTED {
            return self.unattributed.clone();
        }
        let name: Arc<str> = name.into();
        let (label, folded) = if &*name == OTHER || table.labelled.contains_key(&name) {
            (name.clone(), false)
        } else if table.tenants < self.max_tenants {
            table.tenants += 1;
            (name.clone(), false)
        } else {
            if !table.folded.contains_key(&name) {
                table.folded.insert(name.clone(), HashSet::new());
                self.families.tenants_folded.inc();
            }
            (Arc::from(OTHER), true)
        };
        let generation = table.generation(&label);
        TenantMetrics::build(&self.families, &self.table, name, label, folded, generation, true)
    }

    /// Offboards tenant `name`: removes every series with its label and frees its place under `max_tenants` (or,
    /// if it was folded into `other`, withdraws its open circuits from `other`'s gauge). Call it once the tenant
    /// has no calls left: handles still held keep working, but what they record is no longer exported. Returns
    /// false for a name that has no series, and for the reserved `unattributed` and `other`.
    pub fn forget_tenant(&self, name: &str) -> bool {
        if name.is_empty() || name == UNATTRIBUTED || name == OTHER {
            return false;
        }
        let mut table = self.table.lock();
        let forgotten = if let Some(entry) = table.labelled.remove(name) {
            table.tenants -= 1;
            self.families.remove_tenant(&TenantLabel(name.into()), &entry.dynamic);
            true
        } else if let Some(open) = table.folded.remove(name) {
            if !open.is_empty() {
                let other = TenantApp { tenant: TenantLabel(OTHER.into()), app: OTHER.into() };
                self.families.provider_circuit_open.get_or_create(&other).dec_by(open.len() as i64);
            }
            true
        } else {
            false
        };
        if forgotten {
            // Drop its cached handle, and those of folded tenants, which may now get the freed place.
            for slot in self.cache.write().iter_mut() {
                if slot.as_ref().is_some_and(|h| h.0.folded || *h.0.name == *name) {
                    *slot = None;
                }
            }
        }
        forgotten
    }

    /// How many tenants have a label value of their own (at most `max_tenants`).
    pub fn tenants_labelled(&self) -> usize {
        self.table.lock().tenants
    }

    /// Counts one SIP message, received or sent: `status` is `None` for a request, the code for a response.
    pub fn sip_message(&self, method: SipMethod, status: Option<u16>) {
        self.families.sip_messages.get_or_create(&SipLabels { method, status: SipStatus::new(status) }).inc();
    }

    /// The media workers' capacity check, as of its last sample: busy share of their cores, and whether hot.
    pub fn set_media_workers_load(&self, busy_ratio: f64, hot: bool) {
        self.families.media_workers_busy.set(busy_ratio);
        self.families.media_workers_hot.set(i64::from(hot));
    }

    /// Brings `fairvox_media_worker_rests_total` up to `total`, the workers' own count (it only grows).
    pub fn set_media_worker_rests(&self, total: u64) {
        let counter = &self.families.media_worker_rests;
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// Counts one SIP message that did not parse (it has no tenant).
    pub fn sip_malformed(&self) {
        self.families.sip_malformed.inc();
    }

    /// The name of every family this registry exports, as the `# TYPE` lines of [`Metrics::encode`] give them
    /// (counters with their `_total`, histograms without `_bucket`, `_sum` and `_count`), `process_*` included:
    /// what dashboards and rules may refer to. Noted as each family is registered, because the encoder prints no
    /// `# TYPE` line for a family that has no series yet: a scrape alone does not list them all.
    pub fn family_names(&self) -> &[String] {
        &self.family_names
    }

    /// Every metric in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]): what `GET /metrics` serves. Reads
    /// `/proc/self` for the process metrics.
    pub fn encode(&self) -> String {
        text::openmetrics_to_prometheus(&self.encode_openmetrics())
    }

    /// Every metric in the OpenMetrics 1.0 text format ([`OPENMETRICS_CONTENT_TYPE`]), for a scraper that asks
    /// for it in `Accept`.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// One tenant's metrics: cheap to clone (one `Arc`), `Send + Sync`. Frame-path methods only touch series held
/// here; per-call methods may look a series up (and create it the first time).
#[derive(Clone, Debug)]
pub struct TenantMetrics(Arc<TenantInner>);

#[derive(Debug)]
struct TenantInner {
    /// The tenant's own name (`unattributed` for the unattributed handle).
    name: Arc<str>,
    /// The label value its series carry: its name, or `other` when folded.
    label: TenantLabel,
    folded: bool,
    generation: u64,
    families: Arc<Families>,
    table: Arc<Mutex<TenantTable>>,
    frame_latency: [Histogram; 2],
    frames: [Counter; 2],
    frames_dropped: [Counter; FrameDropReason::ALL.len()],
    sched_wait: Histogram,
    rtp_jitter: Histogram,
    rtp_packets_lost: Counter,
    calls_active: Gauge,
    billable_seconds: Counter,
}

impl TenantMetrics {
    /// Creates (or finds) the label's fixed series and holds them; with `exported` false, holds series of its own
    /// that no family exports. Called with the table lock held.
    fn build(
        families: &Arc<Families>,
        table: &Arc<Mutex<TenantTable>>,
        name: Arc<str>,
        label: Arc<str>,
        folded: bool,
        generation: u64,
        exported: bool,
    ) -> TenantMetrics {
        let tenant = TenantLabel(label);
        let by_direction = |d: Direction| TenantDirection { tenant: tenant.clone(), direction: d };
        let one = TenantLabels { tenant: tenant.clone() };
        let f = &**families;
        let histogram = |family: &HistogramFamily<TenantLabels>| {
            if exported { family.get_or_create_owned(&one) } else { latency_histogram() }
        };
        let counter = |family: &Family<TenantLabels, Counter>| {
            if exported { family.get_or_create_owned(&one) } else { Counter::default() }
        };
        TenantMetrics(Arc::new(TenantInner {
            frame_latency: Direction::ALL.map(|d| {
                if exported { f.frame_latency.get_or_create_owned(&by_direction(d)) } else { latency_histogram() }
            }),
            frames: Direction::ALL
                .map(|d| if exported { f.frames.get_or_create_owned(&by_direction(d)) } else { Counter::default() }),
            frames_dropped: FrameDropReason::ALL.map(|reason| {
                let labels = TenantDrop { tenant: tenant.clone(), reason };
                if exported { f.frames_dropped.get_or_create_owned(&labels) } else { Counter::default() }
            }),
            sched_wait: histogram(&f.sched_wait),
            rtp_jitter: histogram(&f.rtp_jitter),
            rtp_packets_lost: counter(&f.rtp_packets_lost),
            calls_active: if exported { f.calls_active.get_or_create_owned(&one) } else { Gauge::default() },
            billable_seconds: counter(&f.billable_seconds),
            name,
            label: tenant,
            folded,
            generation,
            families: families.clone(),
            table: table.clone(),
        }))
    }

    /// The tenant's own name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The `tenant` label value its series carry: its name, `other` or `unattributed`.
    pub fn label(&self) -> &str {
        &self.0.label.0
    }

    /// Whether the tenant is counted under `other` (it came after `max_tenants` others).
    pub fn is_folded(&self) -> bool {
        self.0.folded
    }

    // Frame path: no allocation, no lookup.

    /// Counts one frame forwarded in `direction`.
    #[inline]
    pub fn frame(&self, direction: Direction) {
        self.0.frames[direction.index()].inc();
    }

    /// Observes one frame's latency (see `fairvox_frame_latency_seconds` in `docs/metrics.md` for the endpoints).
    #[inline]
    pub fn frame_latency(&self, direction: Direction, latency: Duration) {
        self.0.frame_latency[direction.index()].observe(latency.as_secs_f64());
    }

    /// Counts one dropped frame.
    #[inline]
    pub fn frame_dropped(&self, reason: FrameDropReason) {
        self.0.frames_dropped[reason.index()].inc();
    }

    /// Observes how long a frame waited in the fair queue.
    #[inline]
    pub fn sched_wait(&self, wait: Duration) {
        self.0.sched_wait.observe(wait.as_secs_f64());
    }

    /// Adds `lost` RTP packets (new losses since the last report, not a running total).
    #[inline]
    pub fn rtp_packets_lost(&self, lost: u64) {
        self.0.rtp_packets_lost.inc_by(lost);
    }

    /// Observes a call's current RFC 3550 interarrival jitter estimate.
    #[inline]
    pub fn rtp_jitter(&self, jitter: Duration) {
        self.0.rtp_jitter.observe(jitter.as_secs_f64());
    }

    // Per call.

    /// Counts a call as active until the returned guard is dropped (keep it in the call's task).
    pub fn call_started(&self) -> ActiveCall {
        self.0.calls_active.inc();
        ActiveCall { gauge: self.0.calls_active.clone() }
    }

    /// Counts a call that ended, by its end reason (`outcome` label).
    pub fn call_ended(&self, outcome: EndReason) {
        let labels = TenantOutcome { tenant: self.0.label.clone(), outcome: outcome.label() };
        self.bump(&self.0.families.calls, &labels, || DynamicSeries::Outcome(outcome.label()));
    }

    /// Counts a refused INVITE. `reason` converts from `call::uas::Refusal` and `sched::admission::Refusal`.
    pub fn call_rejected(&self, reason: impl Into<RejectReason>) {
        let reason = reason.into();
        let labels = TenantReject { tenant: self.0.label.clone(), reason };
        self.bump(&self.0.families.calls_rejected, &labels, || DynamicSeries::Rejected(reason));
    }

    /// Adds billable call time, in whole seconds.
    pub fn add_billable_seconds(&self, seconds: u64) {
        self.0.billable_seconds.inc_by(seconds);
    }

    /// Counts one failure of an agent stream. `kind` is a `label()` of the provider stream's error types (for
    /// example `ConnectError::label()`: `timeout`, `refused`, `handshake`, ...).
    pub fn provider_stream_error(&self, kind: &'static str) {
        let labels = TenantKind { tenant: self.0.label.clone(), kind };
        self.bump(&self.0.families.provider_stream_errors, &labels, || DynamicSeries::ProviderError(kind));
    }

    /// Counts one API request of one of the tenant's keys refused for the key's rate limit.
    pub fn api_rate_limited(&self) {
        let labels = TenantLabels { tenant: self.0.label.clone() };
        self.bump(&self.0.families.api_rate_limited, &labels, || DynamicSeries::ApiRateLimited);
    }

    /// Sets the tenant's frame-latency budget (`fairvox_tenant_latency_budget_seconds`; its plan's
    /// `max_frame_queue_ms`), which the `FairvoxTenantLatencyOverBudget` alert compares its p99 with. Not exported
    /// for a folded tenant (`other` mixes tenants of several plans) nor for `unattributed`.
    pub fn set_latency_budget(&self, budget: Duration) {
        let inner = &*self.0;
        if inner.folded || &*inner.label.0 == UNATTRIBUTED {
            return;
        }
        let labels = TenantLabels { tenant: inner.label.clone() };
        if let Some(gauge) = inner.families.latency_budget.get(&labels) {
            gauge.set(budget.as_secs_f64());
            return;
        }
        // First time: under the table lock, so that a forgotten tenant's handle does not make the series again.
        let mut table = inner.table.lock();
        if table.live(&inner.label.0, inner.generation).is_some() {
            inner.families.latency_budget.get_or_create(&labels).set(budget.as_secs_f64());
        }
    }

    /// Sets whether the circuit breaker of the tenant's app `app` is open (from `Breakers::open_flags`, on each
    /// change or before each scrape). A folded tenant's circuits are counted together under
    /// `{tenant="other",app="other"}`, which then holds the number of open circuits.
    pub fn set_provider_circuit_open(&self, app: &str, open: bool) {
        let inner = &*self.0;
        let mut guard = inner.table.lock();
        let table = &mut *guard;
        if inner.folded {
            let Some(open_apps) = table.folded.get_mut(&*inner.name) else { return };
            let changed = if open { open_apps.insert(app.into()) } else { open_apps.remove(app) };
            let Some(entry) = table.live(OTHER, inner.generation) else { return };
            if changed {
                let other: Arc<str> = OTHER.into();
                entry.dynamic.insert(DynamicSeries::Circuit(other.clone()));
                let gauge = inner
                    .families
                    .provider_circuit_open
                    .get_or_create_owned(&TenantApp { tenant: inner.label.clone(), app: other });
                if open {
                    gauge.inc()
                } else {
                    gauge.dec()
                };
            }
        } else if let Some(entry) = table.live(&inner.label.0, inner.generation) {
            let app: Arc<str> = app.into();
            entry.dynamic.insert(DynamicSeries::Circuit(app.clone()));
            inner
                .families
                .provider_circuit_open
                .get_or_create(&TenantApp { tenant: inner.label.clone(), app })
                .set(i64::from(open));
        }
    }

    /// Increments a series made on demand: found with a read lock; made (and remembered for `forget_tenant`)
    /// the first time, unless this handle's tenant has been forgotten since.
    fn bump<L>(&self, family: &Family<L, Counter>, labels: &L, series: impl FnOnce() -> DynamicSeries)
    where
        L: Clone + std::hash::Hash + Eq,
    {
        if let Some(counter) = family.get(labels) {
            counter.inc();
            return;
        }
        let mut table = self.0.table.lock();
        if let Some(entry) = table.live(&self.0.label.0, self.0.generation) {
            entry.dynamic.insert(series());
            family.get_or_create(labels).inc();
        }
    }
}

/// A call counted in `fairvox_calls_active` until dropped.
#[derive(Debug)]
#[must_use = "the call stops counting as active when this is dropped"]
pub struct ActiveCall {
    gauge: Gauge,
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
