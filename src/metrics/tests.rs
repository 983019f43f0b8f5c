use super::*;
use crate::call::uas;
use crate::sched::{admission, wfq};

/// One family of a parsed exposition.
#[derive(Debug)]
struct ParsedFamily {
    name: String,
    kind: String,
    samples: Vec<Sample>,
}

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    is_metric_name(s) && !s.contains(':')
}

/// Parses `{a="x",b="y\"z"}` from the start of `s`; returns the labels (unescaped) and the rest after `}`.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    let mut labels = Vec::new();
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("raw newline in label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("duplicate label {name}"));
        }
        labels.push((name.to_owned(), value));
        rest = &rest[eq + 1 + 1 + end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected , or }".into());
        }
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parses and checks the Prometheus text format 0.0.4 as `promtool check metrics` would read it, plus the
/// conventions: HELP then TYPE before samples, counters named `_total`, histogram buckets cumulative up to `+Inf`
/// with `_count` equal to the `+Inf` bucket.
fn parse_exposition(text: &str) -> Result<Vec<ParsedFamily>, String> {
    if !text.ends_with('\n') {
        return Err("exposition does not end with a newline".into());
    }
    let mut families: Vec<ParsedFamily> = Vec::new();
    let mut pending_help: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or_else(|| err("HELP without text".into()))?;
            if help.is_empty() || help.contains('\\') {
                return Err(err("empty or escaped help".into()));
            }
            if families.iter().any(|f| f.name == name) {
                return Err(err("family seen twice".into()));
            }
            pending_help = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| err("TYPE without type".into()))?;
            if pending_help.take().as_deref() != Some(name) {
                return Err(err("TYPE not right after its HELP".into()));
            }
            if !is_metric_name(name) {
                return Err(err("bad metric name".into()));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err(format!("bad type {kind}")));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(err("counter not named _total".into()));
            }
            families.push(ParsedFamily { name: name.to_owned(), kind: kind.to_owned(), samples: Vec::new() });
        } else if line.starts_with('#') {
            return Err(err("unexpected comment".into()));
        } else {
            let family = families.last_mut().ok_or_else(|| err("sample before any TYPE".into()))?;
            let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(err)?
            } else {
                (Vec::new(), &line[name_end..])
            };
            let value = rest.strip_prefix(' ').ok_or_else(|| err("no space before value".into()))?;
            let value = parse_value(value).map_err(err)?;
            let allowed: Vec<String> = match family.kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{}{s}", family.name)).collect(),
                _ => vec![family.name.clone()],
            };
            if !allowed.iter().any(|a| a == name) {
                return Err(err(format!("sample does not belong to family {}", family.name)));
            }
            if name.ends_with("_bucket") && labels.iter().all(|(k, _)| k != "le") {
                return Err(err("bucket without le".into()));
            }
            family.samples.push(Sample { name: name.to_owned(), labels, value });
        }
    }
    if pending_help.is_some() {
        return Err("HELP without TYPE at the end".into());
    }
    for f in families.iter().filter(|f| f.kind == "histogram") {
        check_histogram(f)?;
    }
    Ok(families)
}

fn check_histogram(f: &ParsedFamily) -> Result<(), String> {
    // Per series (labels other than `le`): its buckets in order, its sums and its counts.
    type Series<'a> = (Vec<&'a Sample>, Vec<f64>, Vec<f64>);
    let mut series: HashMap<Labels, Series> = HashMap::new();
    for s in &f.samples {
        let mut key: Vec<_> = s.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
        key.sort();
        let entry = series.entry(key).or_default();
        match &s.name[f.name.len()..] {
            "_bucket" => entry.0.push(s),
            "_sum" => entry.1.push(s.value),
            _ => entry.2.push(s.value),
        }
    }
    for (labels, (buckets, sum, count)) in series {
        if count.len() != 1 || sum.len() != 1 || buckets.is_empty() {
            return Err(format!("{} {labels:?}: needs buckets, one _sum and one _count", f.name));
        }
        let mut last = (f64::NEG_INFINITY, 0.0);
        for b in &buckets {
            let le = parse_value(b.label("le").unwrap())?;
            if le <= last.0 || b.value < last.1 {
                return Err(format!("{} {labels:?}: buckets not ascending and cumulative at le={le}", f.name));
            }
            last = (le, b.value);
        }
        if last.0 != f64::INFINITY || last.1 != count[0] {
            return Err(format!("{} {labels:?}: last bucket is not +Inf or differs from _count", f.name));
        }
    }
    Ok(())
}

fn parse(m: &Metrics) -> Vec<ParsedFamily> {
    let text = m.encode();
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn value(families: &[ParsedFamily], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.iter().flat_map(|f| &f.samples).find_map(|s| {
        let same =
            s.name == name && s.labels.len() == labels.len() && labels.iter().all(|(k, v)| s.label(k) == Some(v));
        same.then_some(s.value)
    })
}

/// Every label value of `label` among all samples.
fn label_values(families: &[ParsedFamily], label: &str) -> HashSet<String> {
    families.iter().flat_map(|f| &f.samples).filter_map(|s| s.label(label).map(str::to_owned)).collect()
}

/// Samples with `tenant="<tenant>"`.
fn tenant_samples<'a>(families: &'a [ParsedFamily], tenant: &str) -> Vec<&'a Sample> {
    families.iter().flat_map(|f| &f.samples).filter(|s| s.label("tenant") == Some(tenant)).collect()
}

const FAMILIES: [(&str, &str); 22] = [
    ("fairvox_frame_latency_seconds", "histogram"),
    ("fairvox_sched_wait_seconds", "histogram"),
    ("fairvox_calls_active", "gauge"),
    ("fairvox_calls_total", "counter"),
    ("fairvox_calls_rejected_total", "counter"),
    ("fairvox_frames_total", "counter"),
    ("fairvox_frames_dropped_total", "counter"),
    ("fairvox_rtp_packets_lost_total", "counter"),
    ("fairvox_rtp_jitter_seconds", "histogram"),
    ("fairvox_provider_stream_errors_total", "counter"),
    ("fairvox_provider_circuit_open", "gauge"),
    ("fairvox_tenant_latency_budget_seconds", "gauge"),
    ("fairvox_billable_seconds_total", "counter"),
    ("fairvox_sip_messages_total", "counter"),
    ("fairvox_sip_malformed_total", "counter"),
    ("fairvox_metrics_tenants_folded_total", "counter"),
    ("fairvox_api_rate_limited_total", "counter"),
    ("fairvox_api_operator_rate_limited_total", "counter"),
    ("fairvox_call_records_total", "counter"),
    ("fairvox_media_workers_busy_ratio", "gauge"),
    ("fairvox_media_workers_hot", "gauge"),
    ("fairvox_media_worker_rests_total", "counter"),
];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Records a bit of everything for `t`.
fn exercise(t: &TenantMetrics) {
    for _ in 0..3 {
        t.frame(Direction::Inbound);
    }
    t.frame(Direction::Outbound);
    t.frame_latency(Direction::Inbound, Duration::from_micros(300));
    t.frame_latency(Direction::Inbound, ms(30));
    t.frame_latency(Direction::Outbound, ms(500));
    t.frame_dropped(FrameDropReason::SlowConsumer);
    t.frame_dropped(FrameDropReason::SlowConsumer);
    t.frame_dropped(FrameDropReason::Policed);
    t.sched_wait(ms(3));
    t.rtp_packets_lost(7);
    t.rtp_jitter(ms(12));
    t.call_ended(EndReason::CallerBye);
    t.call_ended(EndReason::RtpTimeout);
    t.call_rejected(RejectReason::Rate);
    t.api_rate_limited();
    t.add_billable_seconds(61);
    t.provider_stream_error("timeout");
    t.set_provider_circuit_open("support", true);
    t.set_latency_budget(ms(40));
}

#[test]
fn family_names_lists_every_family_before_any_series() {
    let m = Metrics::default();
    let names = m.family_names();
    let mut want: Vec<&str> = FAMILIES.iter().map(|(n, _)| *n).chain(process::FAMILY_NAMES).collect();
    let mut have: Vec<&str> = names.iter().map(String::as_str).collect();
    want.sort_unstable();
    have.sort_unstable();
    assert_eq!(have, want);
    // Every family a full scrape shows is listed, under the name its TYPE line gives.
    exercise(&m.tenant(TenantId(0), "acme"));
    m.unattributed().call_rejected(RejectReason::UnknownNumber);
    m.sip_message(SipMethod::Invite, None);
    m.sip_malformed();
    m.call_record("written");
    let scraped: Vec<String> = parse(&m).into_iter().map(|f| f.name).collect();
    assert_eq!(scraped.len(), names.len(), "{scraped:?}");
    for name in &scraped {
        assert!(names.contains(name), "{name} scraped but not in family_names");
    }
}

#[test]
fn latency_budget_is_per_labelled_tenant_only() {
    let m = Metrics::new(&MetricsConfig { max_tenants: 1 });
    let (acme, folded) = (m.tenant(TenantId(0), "acme"), m.tenant(TenantId(1), "globex"));
    acme.set_latency_budget(ms(40));
    acme.set_latency_budget(ms(60));
    folded.set_latency_budget(ms(80));
    m.unattributed().set_latency_budget(ms(80));
    let f = parse(&m);
    assert_eq!(value(&f, "fairvox_tenant_latency_budget_seconds", &[("tenant", "acme")]), Some(0.06));
    let budgets = f.iter().find(|f| f.name == "fairvox_tenant_latency_budget_seconds").unwrap();
    assert_eq!(budgets.samples.len(), 1, "{:?}", budgets.samples);
    assert!(m.forget_tenant("acme"));
    acme.set_latency_budget(ms(40));
    let f = parse(&m);
    assert!(f.iter().all(|f| f.name != "fairvox_tenant_latency_budget_seconds"), "no budget series left");
}

#[test]
fn encode_is_valid_prometheus_text_with_every_family() {
    let m = Metrics::default();
    exercise(&m.tenant(TenantId(0), "acme"));
    let weird = "we\"ird\\name\nnext";
    exercise(&m.tenant(TenantId(1), weird));
    m.unattributed().call_rejected(RejectReason::UnknownNumber);
    m.sip_message(SipMethod::Invite, None);
    m.sip_malformed();
    m.call_record("written");
    let text = m.encode();
    let families = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    for (name, kind) in FAMILIES {
        let f = families.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{name} missing\n{text}"));
        assert_eq!(f.kind, kind, "{name}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        assert!(!f.samples.is_empty(), "{name} has no sample");
    }
    // Nothing but the listed families and the process ones.
    for f in &families {
        assert!(FAMILIES.iter().any(|(n, _)| *n == f.name) || f.name.starts_with("process_"), "{}", f.name);
    }
    // Label values are escaped on the wire and come back intact.
    assert!(text.contains(r#"tenant="we\"ird\\name\nnext""#), "{text}");
    assert!(label_values(&families, "tenant").contains(weird));
    assert_eq!(value(&families, "fairvox_frames_total", &[("tenant", weird), ("direction", "inbound")]), Some(3.0));
    // The latency histogram has exactly the documented buckets.
    let les: Vec<f64> = families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == "fairvox_frame_latency_seconds_bucket")
        .filter(|s| s.label("tenant") == Some("acme") && s.label("direction") == Some("inbound"))
        .map(|s| parse_value(s.label("le").unwrap()).unwrap())
        .collect();
    let mut want = LATENCY_BUCKETS.to_vec();
    want.push(f64::INFINITY);
    assert_eq!(les, want);
    // No UNIT or EOF lines in the 0.0.4 text; the OpenMetrics text has both.
    assert!(!text.contains("# UNIT") && !text.contains("# EOF"));
    let om = m.encode_openmetrics();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE fairvox_calls counter\n"));
    assert!(om.contains("# UNIT fairvox_frame_latency_seconds seconds\n"));
}

#[test]
fn per_tenant_series_carry_the_right_labels() {
    let m = Metrics::default();
    let acme = m.tenant(TenantId(0), "acme");
    exercise(&acme);
    let globex = m.tenant(TenantId(1), "globex");
    globex.frame(Direction::Outbound);
    let call = globex.call_started();
    let _call2 = globex.call_started();
    let f = parse(&m);
    let v = |name: &str, labels: &[(&str, &str)]| value(&f, name, labels);
    assert_eq!(v("fairvox_frames_total", &[("tenant", "acme"), ("direction", "inbound")]), Some(3.0));
    assert_eq!(v("fairvox_frames_total", &[("tenant", "acme"), ("direction", "outbound")]), Some(1.0));
    assert_eq!(v("fairvox_frames_total", &[("tenant", "globex"), ("direction", "outbound")]), Some(1.0));
    assert_eq!(v("fairvox_frames_total", &[("tenant", "globex"), ("direction", "inbound")]), Some(0.0));
    let lat = |dir: &str, le: &str| {
        v("fairvox_frame_latency_seconds_bucket", &[("tenant", "acme"), ("direction", dir), ("le", le)])
    };
    assert_eq!(lat("inbound", "0.00025"), Some(0.0));
    assert_eq!(lat("inbound", "0.0005"), Some(1.0));
    assert_eq!(lat("inbound", "0.04"), Some(2.0));
    assert_eq!(lat("outbound", "0.25"), Some(0.0));
    assert_eq!(lat("outbound", "+Inf"), Some(1.0));
    let count = v("fairvox_frame_latency_seconds_count", &[("tenant", "acme"), ("direction", "inbound")]);
    assert_eq!(count, Some(2.0));
    let sum = v("fairvox_frame_latency_seconds_sum", &[("tenant", "acme"), ("direction", "inbound")]).unwrap();
    assert!((sum - 0.0303).abs() < 1e-9, "{sum}");
    let dropped = |r: &str| v("fairvox_frames_dropped_total", &[("tenant", "acme"), ("reason", r)]);
    assert_eq!(dropped("slow_consumer"), Some(2.0));
    assert_eq!(dropped("policed"), Some(1.0));
    // Every drop reason exists from the start, so rate() works from the first drop.
    assert_eq!(dropped("deadline"), Some(0.0));
    assert_eq!(dropped("queue_full"), Some(0.0));
    assert_eq!(v("fairvox_sched_wait_seconds_count", &[("tenant", "acme")]), Some(1.0));
    assert_eq!(v("fairvox_sched_wait_seconds_bucket", &[("tenant", "acme"), ("le", "0.005")]), Some(1.0));
    assert_eq!(v("fairvox_rtp_packets_lost_total", &[("tenant", "acme")]), Some(7.0));
    assert_eq!(v("fairvox_rtp_jitter_seconds_bucket", &[("tenant", "acme"), ("le", "0.02")]), Some(1.0));
    assert_eq!(v("fairvox_calls_total", &[("tenant", "acme"), ("outcome", "caller_bye")]), Some(1.0));
    assert_eq!(v("fairvox_calls_total", &[("tenant", "acme"), ("outcome", "rtp_timeout")]), Some(1.0));
    assert_eq!(v("fairvox_calls_rejected_total", &[("tenant", "acme"), ("reason", "rate")]), Some(1.0));
    assert_eq!(v("fairvox_billable_seconds_total", &[("tenant", "acme")]), Some(61.0));
    assert_eq!(v("fairvox_provider_stream_errors_total", &[("tenant", "acme"), ("kind", "timeout")]), Some(1.0));
    assert_eq!(v("fairvox_provider_circuit_open", &[("tenant", "acme"), ("app", "support")]), Some(1.0));
    assert_eq!(v("fairvox_calls_active", &[("tenant", "globex")]), Some(2.0));
    assert_eq!(v("fairvox_calls_active", &[("tenant", "acme")]), Some(0.0));
    // Nothing of acme's leaked into globex.
    assert_eq!(v("fairvox_calls_total", &[("tenant", "globex"), ("outcome", "caller_bye")]), None);

    drop(call);
    acme.set_provider_circuit_open("support", false);
    let f = parse(&m);
    assert_eq!(value(&f, "fairvox_calls_active", &[("tenant", "globex")]), Some(1.0));
    assert_eq!(value(&f, "fairvox_provider_circuit_open", &[("tenant", "acme"), ("app", "support")]), Some(0.0));
}

#[test]
fn calls_without_a_tenant_are_unattributed() {
    let m = Metrics::default();
    m.unattributed().call_rejected(RejectReason::UnknownNumber);
    m.unattributed().call_rejected(&uas::Refusal::Forbidden);
    m.unattributed().call_rejected(&uas::Refusal::Forbidden);
    let anonymous = m.tenant(TenantId(3), "");
    assert_eq!(anonymous.label(), UNATTRIBUTED);
    let f = parse(&m);
    let rejected = |r: &str| value(&f, "fairvox_calls_rejected_total", &[("tenant", "unattributed"), ("reason", r)]);
    assert_eq!(rejected("unknown_number"), Some(1.0));
    assert_eq!(rejected("forbidden"), Some(2.0));
    // Unattributed calls never have media: no all-zero media series under tenant="unattributed".
    anonymous.frame(Direction::Inbound);
    let _active = anonymous.call_started();
    let f = parse(&m);
    for s in tenant_samples(&f, UNATTRIBUTED) {
        assert_eq!(s.name, "fairvox_calls_rejected_total", "{s:?}");
    }
    assert_eq!(m.tenants_labelled(), 0, "unattributed is not a tenant");
}

#[test]
fn guard_folds_tenants_beyond_max_into_other_and_counts_the_fold() {
    let m = Metrics::default();
    for i in 0..DEFAULT_MAX_TENANTS as u32 {
        let t = m.tenant(TenantId(i), &format!("t{i}"));
        assert!(!t.is_folded());
    }
    assert_eq!(m.tenants_labelled(), DEFAULT_MAX_TENANTS);
    let late = m.tenant(TenantId(1000), "t1000");
    assert!(late.is_folded());
    assert_eq!((late.label(), late.name()), (OTHER, "t1000"));
    late.frame(Direction::Inbound);
    late.call_ended(EndReason::AgentHangup);
    // The same tenant again (cached or not) is one fold; another late tenant is a second.
    m.tenant(TenantId(1000), "t1000").frame(Direction::Inbound);
    m.tenant(TenantId(5000), "t1000").frame(Direction::Inbound);
    m.tenant(TenantId(1001), "t1001").frame(Direction::Inbound);
    // A known tenant keeps its label.
    assert_eq!(m.tenant(TenantId(999), "t999").label(), "t999");
    let f = parse(&m);
    assert_eq!(value(&f, "fairvox_metrics_tenants_folded_total", &[]), Some(2.0));
    assert_eq!(value(&f, "fairvox_frames_total", &[("tenant", "other"), ("direction", "inbound")]), Some(4.0));
    assert_eq!(value(&f, "fairvox_calls_total", &[("tenant", "other"), ("outcome", "agent_hangup")]), Some(1.0));
    let tenants = label_values(&f, "tenant");
    assert!(!tenants.contains("t1000") && !tenants.contains("t1001"));
    // 1000 tenants, plus other.
    assert_eq!(tenants.len(), DEFAULT_MAX_TENANTS + 1);
}

#[test]
fn forget_tenant_removes_its_series_and_frees_its_place() {
    let m = Metrics::new(&MetricsConfig { max_tenants: 1 });
    let acme = m.tenant(TenantId(0), "acme");
    exercise(&acme);
    let globex = m.tenant(TenantId(1), "globex");
    assert!(globex.is_folded());
    globex.frame(Direction::Inbound);
    assert!(!tenant_samples(&parse(&m), "acme").is_empty());

    assert!(m.forget_tenant("acme"));
    assert!(!m.forget_tenant("acme"));
    assert!(!m.forget_tenant(OTHER) && !m.forget_tenant(UNATTRIBUTED) && !m.forget_tenant("nobody"));
    let f = parse(&m);
    assert_eq!(tenant_samples(&f, "acme").len(), 0, "{:?}", tenant_samples(&f, "acme"));
    assert_eq!(m.tenants_labelled(), 0);
    // A handle taken before the forget neither fails nor brings the series back.
    acme.frame(Direction::Inbound);
    acme.call_ended(EndReason::CallerBye);
    acme.call_rejected(RejectReason::Budget);
    acme.provider_stream_error("refused");
    acme.set_provider_circuit_open("support", true);
    assert_eq!(tenant_samples(&parse(&m), "acme").len(), 0);

    // The freed place goes to the next tenant that asks, folded ones included.
    let globex = m.tenant(TenantId(1), "globex");
    assert!(!globex.is_folded());
    globex.frame(Direction::Inbound);
    let f = parse(&m);
    assert_eq!(value(&f, "fairvox_frames_total", &[("tenant", "globex"), ("direction", "inbound")]), Some(1.0));
    // The fold is not undone: what globex did while folded stays under other.
    assert_eq!(value(&f, "fairvox_frames_total", &[("tenant", "other"), ("direction", "inbound")]), Some(1.0));
    // A forgotten tenant that comes back starts afresh.
    assert!(m.forget_tenant("globex"));
    let again = m.tenant(TenantId(0), "acme");
    again.call_ended(EndReason::CallerBye);
    let f = parse(&m);
    assert_eq!(value(&f, "fairvox_calls_total", &[("tenant", "acme"), ("outcome", "caller_bye")]), Some(1.0));
    assert_eq!(value(&f, "fairvox_frames_total", &[("tenant", "acme"), ("direction", "inbound")]), Some(0.0));
}

#[test]
fn folded_circuits_are_counted_together() {
    let m = Metrics::new(&MetricsConfig { max_tenants: 0 });
    let (a, b) = (m.tenant(TenantId(0), "a"), m.tenant(TenantId(1), "b"));
    assert!(a.is_folded() && b.is_folded());
    let open =
        |m: &Metrics| value(&parse(m), "fairvox_provider_circuit_open", &[("tenant", "other"), ("app", "other")]);
    a.set_provider_circuit_open("x", true);
    b.set_provider_circuit_open("x", true);
    a.set_provider_circuit_open("x", true); // no change
    a.set_provider_circuit_open("y", true);
    assert_eq!(open(&m), Some(3.0));
    a.set_provider_circuit_open("y", false);
    b.set_provider_circuit_open("z", false); // was not open
    assert_eq!(open(&m), Some(2.0));
    assert!(m.forget_tenant("b"));
    assert_eq!(open(&m), Some(1.0));
    assert_eq!(value(&parse(&m), "fairvox_metrics_tenants_folded_total", &[]), Some(2.0));
}

#[test]
fn tenant_handles_are_cached_by_id_and_checked_by_name() {
    let m = Metrics::default();
    let a = m.tenant(TenantId(7), "acme");
    let again = m.tenant(TenantId(7), "acme");
    assert!(Arc::ptr_eq(&a.0, &again.0));
    // After a snapshot rebuild, index 7 may be another tenant.
    let b = m.tenant(TenantId(7), "globex");
    assert_eq!(b.label(), "globex");
    // The same name under two ids shares its series.
    m.tenant(TenantId(8), "acme").frame(Direction::Inbound);
    a.frame(Direction::Inbound);
    let f = parse(&m);
    assert_eq!(value(&f, "fairvox_frames_total", &[("tenant", "acme"), ("direction", "inbound")]), Some(2.0));
    assert_eq!(m.tenants_labelled(), 2);
    // An absurd id is served, just not cached.
    assert_eq!(m.tenant(TenantId(u32::MAX), "acme").label(), "acme");
}

#[test]
fn sip_messages_by_method_and_status() {
    let m = Metrics::default();
    m.sip_message(SipMethod::from_name("INVITE"), None);
    m.sip_message(SipMethod::Invite, Some(100));
    m.sip_message(SipMethod::Invite, Some(200));
    m.sip_message(SipMethod::Invite, Some(200));
    m.sip_message(SipMethod::from(&crate::proto::sip::Method::Bye), Some(481));
    m.sip_message(SipMethod::from_name("FROBNICATE"), None);
    m.sip_message(SipMethod::from_name("invite"), None); // methods are case-sensitive
    m.sip_message(SipMethod::Options, Some(42));
    m.sip_malformed();
    m.sip_malformed();
    let f = parse(&m);
    let v =
        |method: &str, status: &str| value(&f, "fairvox_sip_messages_total", &[("method", method), ("status", status)]);
    assert_eq!(v("INVITE", "request"), Some(1.0));
    assert_eq!(v("INVITE", "100"), Some(1.0));
    assert_eq!(v("INVITE", "200"), Some(2.0));
    assert_eq!(v("BYE", "481"), Some(1.0));
    assert_eq!(v("OTHER", "request"), Some(2.0));
    assert_eq!(v("OPTIONS", "other"), Some(1.0));
    assert_eq!(value(&f, "fairvox_sip_malformed_total", &[]), Some(2.0));
}

#[cfg(target_os = "linux")]
#[test]
fn process_metrics_are_present_and_plausible() {
    let m = Metrics::default();
    let f = parse(&m);
    let kind = |name: &str| f.iter().find(|f| f.name == name).map(|f| f.kind.as_str());
    assert_eq!(kind("process_cpu_seconds_total"), Some("counter"));
    assert_eq!(kind("process_resident_memory_bytes"), Some("gauge"));
    assert_eq!(kind("process_open_fds"), Some("gauge"));
    assert!(value(&f, "process_cpu_seconds_total", &[]).unwrap() >= 0.0);
    assert!(value(&f, "process_resident_memory_bytes", &[]).unwrap() > 1024.0 * 1024.0);
    assert!(value(&f, "process_virtual_memory_bytes", &[]).unwrap() > 0.0);
    assert!(value(&f, "process_open_fds", &[]).unwrap() > 0.0);
    assert!(value(&f, "process_max_fds", &[]).unwrap() >= value(&f, "process_open_fds", &[]).unwrap());
    let start = value(&f, "process_start_time_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(start > 1_577_836_800.0 && start <= now + 1.0, "{start}");
}

#[test]
fn reject_and_drop_reasons_keep_their_sources_labels() {
    let admission = [
        admission::Refusal::Rate { retry_after: 1 },
        admission::Refusal::Concurrency { retry_after: 1 },
        admission::Refusal::Budget,
        admission::Refusal::NodeOverload { retry_after: 1 },
        admission::Refusal::CircuitOpen { retry_after: 1 },
        admission::Refusal::Unconfigured,
    ];
    for r in admission {
        assert_eq!(RejectReason::from(&r).label(), r.label());
        assert_eq!(RejectReason::from(&uas::Refusal::Admission(r)).label(), r.label());
    }
    for r in [
        uas::Refusal::UnknownNumber,
        uas::Refusal::Forbidden,
        uas::Refusal::Codec,
        uas::Refusal::BadSdp,
        uas::Refusal::NoOffer,
        uas::Refusal::Overload,
        uas::Refusal::Unsupported,
        uas::Refusal::NoDialog,
    ] {
        assert_eq!(RejectReason::from(&r).label(), r.label());
    }
    for r in [wfq::DropReason::Deadline, wfq::DropReason::QueueFull, wfq::DropReason::Drained] {
        assert_eq!(FrameDropReason::from(r).label(), r.label());
    }
    // The reasons the product names are all there, and labels are distinct.
    let labels: HashSet<&str> = RejectReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), RejectReason::ALL.len());
    for want in [
        "rate",
        "concurrency",
        "budget",
        "overload",
        "unknown_number",
        "forbidden",
        "codec",
        "provider_unavailable",
        "suspended",
    ] {
        assert!(labels.contains(want), "{want}");
    }
    let drops: Vec<&str> = FrameDropReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(drops, ["deadline", "queue_full", "policed", "slow_consumer", "drained"]);
    for (i, r) in FrameDropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
    for (i, d) in Direction::ALL.iter().enumerate() {
        assert_eq!(d.index(), i);
    }
}

#[test]
fn config_defaults_and_parses() {
    assert_eq!(MetricsConfig::default().max_tenants, 1000);
    let c: MetricsConfig = toml::from_str("max_tenants = 5").unwrap();
    assert_eq!(c.max_tenants, 5);
    let c: MetricsConfig = toml::from_str("").unwrap();
    assert_eq!(c, MetricsConfig::default());
    assert!(toml::from_str::<MetricsConfig>("max_tenant = 5").is_err());
}

#[test]
fn the_checker_rejects_what_promtool_would() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    assert!(parse_exposition(ok).is_ok());
    // OpenMetrics counter naming, as prometheus-client writes it.
    assert!(parse_exposition("# HELP a A.\n# TYPE a counter\na_total 2\n").is_err());
    assert!(parse_exposition("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\q\"} 2\n").is_err());
    assert!(parse_exposition("a_total 1\n").is_err());
    let h = |buckets: &str| format!("# HELP h H.\n# TYPE h histogram\n{buckets}h_sum 1\nh_count 3\n");
    assert!(parse_exposition(&h("h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 3\n")).is_ok());
    assert!(parse_exposition(&h("h_bucket{le=\"1\"} 4\nh_bucket{le=\"+Inf\"} 3\n")).is_err());
    assert!(parse_exposition(&h("h_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 3\n")).is_err());
}

/// Writes a sample exposition for checking by hand:
/// `cargo test --lib metrics::tests::write_sample -- --ignored --nocapture`, then
/// `promtool check metrics < $TMPDIR/fairvox-metrics.prom`.
#[test]
#[ignore = "writes a file for promtool; run by hand"]
fn write_sample_for_promtool() {
    let m = Metrics::new(&MetricsConfig { max_tenants: 2 });
    exercise(&m.tenant(TenantId(0), "acme"));
    exercise(&m.tenant(TenantId(1), "we\"ird\\name\nnext"));
    exercise(&m.tenant(TenantId(2), "late"));
    let _active = m.tenant(TenantId(0), "acme").call_started();
    m.unattributed().call_rejected(RejectReason::UnknownNumber);
    m.sip_message(SipMethod::Invite, None);
    m.sip_message(SipMethod::Invite, Some(200));
    m.sip_malformed();
    let path = std::env::temp_dir().join("fairvox-metrics.prom");
    std::fs::write(&path, m.encode()).unwrap();
    println!("wrote {}", path.display());
}

#[test]
fn handles_are_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Metrics>();
    send_sync::<TenantMetrics>();
    send_sync::<ActiveCall>();
    let m = Arc::new(Metrics::new(&MetricsConfig { max_tenants: 2 }));
    // t0 and t1 take the two places first; the late tenants fold whatever order the threads run in.
    m.tenant(TenantId(0), "t0");
    m.tenant(TenantId(1), "t1");
    let threads: Vec<_> = (0..4u32)
        .map(|i| {
            let m = m.clone();
            std::thread::spawn(move || {
                // Threads 0 and 2 share tenant t0, 1 and 3 share t1; all of them also hit a folded tenant.
                let t = m.tenant(TenantId(i % 2), &format!("t{}", i % 2));
                let late = m.tenant(TenantId(10 + i), &format!("late{i}"));
                for _ in 0..1000 {
                    t.frame(Direction::Inbound);
                    t.frame_latency(Direction::Inbound, ms(1));
                    late.frame(Direction::Outbound);
                }
                t.call_ended(EndReason::CallerBye);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let f = parse(&m);
    for t in ["t0", "t1"] {
        assert_eq!(value(&f, "fairvox_frames_total", &[("tenant", t), ("direction", "inbound")]), Some(2000.0));
        let count = value(&f, "fairvox_frame_latency_seconds_count", &[("tenant", t), ("direction", "inbound")]);
        assert_eq!(count, Some(2000.0));
        assert_eq!(value(&f, "fairvox_calls_total", &[("tenant", t), ("outcome", "caller_bye")]), Some(2.0));
    }
    assert_eq!(value(&f, "fairvox_frames_total", &[("tenant", "other"), ("direction", "outbound")]), Some(4000.0));
    assert_eq!(value(&f, "fairvox_metrics_tenants_folded_total", &[]), Some(4.0));
}

#[test]
fn worker_rests_follow_the_workers_own_total_and_never_go_back() {
    let m = Metrics::default();
    let rests = |m: &Metrics| value(&parse(m), "fairvox_media_worker_rests_total", &[]);
    assert_eq!(rests(&m), Some(0.0));
    m.set_media_worker_rests(5);
    assert_eq!(rests(&m), Some(5.0));
    // A lower total (a pool started again) leaves the counter where it was: counters only grow.
    m.set_media_worker_rests(3);
    assert_eq!(rests(&m), Some(5.0));
    m.set_media_worker_rests(8);
    assert_eq!(rests(&m), Some(8.0));
}
