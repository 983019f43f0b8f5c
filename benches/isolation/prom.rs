//! The server's `GET /metrics`, as the isolation bench reads it: one scrape over a plain TCP socket (HTTP/1.0, so
//! the body is never chunked, though a chunked one is decoded too), a parser of the Prometheus text format 0.0.4,
//! and the per-tenant figures the bench reports (frames, drops and refusals by reason, scheduler wait).
//!
//! Everything here reads what the server sent: no `unwrap`, no panics; a line that does not parse is skipped and
//! counted. Unit tests: `tests/bench_prom.rs`, which compiles this file as a module (a `harness = false` bench runs
//! no tests of its own).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The frame-drop reasons the bench reports for every tenant, 0 when the server has no series for one.
pub const DROP_REASONS: [&str; 4] = ["deadline", "queue_full", "policed", "slow_consumer"];
/// Largest `/metrics` response read.
const MAX_RESPONSE: usize = 32 << 20;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition: the samples, and the (1-based) numbers of lines that were not comments, blank or samples.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub bad_lines: Vec<usize>,
}

/// What `GET /metrics` answered.
#[derive(Debug)]
pub enum Scrape {
    Text(String),
    /// 404: the server has no `/metrics` (yet).
    Absent,
}

/// `GET /metrics` on `http`, all of it within `timeout`, with `Authorization: Bearer <operator_token>` when given
/// (the server's `/metrics` is operator-only; a server from before that needs none).
pub fn scrape(http: SocketAddr, operator_token: Option<&str>, timeout: Duration) -> Result<Scrape, String> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&http, timeout).map_err(|e| format!("connect {http}: {e}"))?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let auth = operator_token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {http}\r\n{auth}Accept: text/plain\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(|e| format!("GET /metrics: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("GET /metrics: no complete response within {timeout:?}"));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_RESPONSE {
                    return Err(format!("GET /metrics: response over {MAX_RESPONSE} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("GET /metrics: reading: {e}")),
        }
    }
    let (status, body) = http_response(&raw)?;
    match status {
        200 => String::from_utf8(body).map(Scrape::Text).map_err(|_| "GET /metrics: body is not UTF-8".to_owned()),
        404 => Ok(Scrape::Absent),
        401 => Err("GET /metrics: HTTP 401: the operator token is missing or wrong".to_owned()),
        other => Err(format!("GET /metrics: HTTP {other}")),
    }
}

/// Status and body of a complete HTTP/1.x response read until the peer closed.
pub fn http_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("HTTP response without a header end")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "HTTP header is not UTF-8")?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("bad HTTP status line {status_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad HTTP status line {status_line:?}"));
    }
    let status: u16 = code.parse().map_err(|_| format!("bad HTTP status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?);
        }
    }
    if chunked {
        return dechunk(body).map(|b| (status, b));
    }
    match length {
        Some(n) if body.len() < n => Err(format!("HTTP body cut short: {} of {n} bytes", body.len())),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

/// Decodes a chunked body (RFC 9112 §7.1), trailers ignored.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or("chunked body: size line without CRLF")?;
        let size_line = std::str::from_utf8(&rest[..eol]).map_err(|_| "chunked body: size line is not UTF-8")?;
        let hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| format!("chunked body: bad size {hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("chunked body cut short")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size..).and_then(|r| r.strip_prefix(b"\r\n")).ok_or("chunked body: chunk without CRLF")?;
    }
}

/// Parses Prometheus text: `#` lines and blank lines are skipped, anything else must be a sample.
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_sample(line) {
            Some(s) => out.samples.push(s),
            None => out.bad_lines.push(i + 1),
        }
    }
    out
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = line[name_end..].trim_start();
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let key_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            let key = &rest[..key_end];
            if key.is_empty() {
                return None;
            }
            rest = rest[key_end..].trim_start().strip_prefix('=')?.trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other), // `\\` and `\"`; any other escape keeps its character
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            rest = rest[close + 1..].trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return None;
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    // An optional timestamp (integer ms); nothing may follow it.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample { name: name.to_owned(), labels, value })
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok().filter(|x: &f64| x.is_finite()),
    }
}

/// A histogram family's series for one tenant.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub count: f64,
    pub sum_s: f64,
    /// `(le, cumulative count)`, in the server's order; `le` as the server wrote it ("0.001", "+Inf").
    pub buckets: Vec<(String, f64)>,
}

impl Histogram {
    pub fn mean_us(&self) -> Option<f64> {
        (self.count > 0.0).then(|| 1e6 * self.sum_s / self.count)
    }

    /// The `le` of the first bucket holding at least the fraction `p` of the observations: an upper bound of the
    /// p-quantile, as precise as the buckets ("+Inf" when it lies beyond the last finite bucket).
    pub fn quantile_le(&self, p: f64) -> Option<&str> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = p * self.count;
        self.buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| le.as_str())
    }

    /// `self − before`, bucket by bucket (`le` matched by text).
    fn minus(&self, before: &Histogram) -> Histogram {
        let was = |le: &str| before.buckets.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
        Histogram {
            count: self.count - before.count,
            sum_s: self.sum_s - before.sum_s,
            buckets: self.buckets.iter().map(|(le, c)| (le.clone(), c - was(le))).collect(),
        }
    }
}

/// What `/metrics` says about one tenant.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct TenantFigures {
    /// `fairvox_frames_total{direction="inbound"}`: frames handed to the tenant's agent stream.
    pub frames_inbound: f64,
    /// `fairvox_frames_dropped_total` by reason; [`DROP_REASONS`] are always present.
    pub drops: BTreeMap<String, f64>,
    /// `fairvox_calls_rejected_total` by reason.
    pub rejected: BTreeMap<String, f64>,
    /// `fairvox_sched_wait_seconds`: time the tenant's frames waited for a media worker.
    pub sched_wait: Option<Histogram>,
    /// `fairvox_frame_latency_seconds{direction="inbound"}`: RTP arrival to the agent's WebSocket write.
    pub inbound_latency: Option<Histogram>,
}

impl TenantFigures {
    pub fn from_samples(samples: &[Sample], tenant: &str) -> TenantFigures {
        let mine = || samples.iter().filter(move |s| s.label("tenant") == Some(tenant));
        let mut f = TenantFigures {
            drops: DROP_REASONS.iter().map(|r| ((*r).to_owned(), 0.0)).collect(),
            ..TenantFigures::default()
        };
        for s in mine() {
            match s.name.as_str() {
                "fairvox_frames_total" if s.label("direction") == Some("inbound") => f.frames_inbound += s.value,
                "fairvox_frames_dropped_total" => {
                    *f.drops.entry(s.label("reason").unwrap_or("?").to_owned()).or_default() += s.value
                }
                "fairvox_calls_rejected_total" => {
                    *f.rejected.entry(s.label("reason").unwrap_or("?").to_owned()).or_default() += s.value
                }
                _ => {}
            }
        }
        f.sched_wait = histogram(samples, "fairvox_sched_wait_seconds", &|s| s.label("tenant") == Some(tenant));
        f.inbound_latency = histogram(samples, "fairvox_frame_latency_seconds", &|s| {
            s.label("tenant") == Some(tenant) && s.label("direction") == Some("inbound")
        });
        f
    }

    pub fn dropped_total(&self) -> f64 {
        self.drops.values().sum()
    }

    /// The change from `before` to `self` (e.g. over the measurement window).
    pub fn minus(&self, before: &TenantFigures) -> TenantFigures {
        let diff = |now: &BTreeMap<String, f64>, was: &BTreeMap<String, f64>| {
            now.iter().map(|(k, v)| (k.clone(), v - was.get(k).copied().unwrap_or(0.0))).collect()
        };
        let hist = |now: &Option<Histogram>, was: &Option<Histogram>| match (now, was) {
            (Some(n), Some(w)) => Some(n.minus(w)),
            (Some(n), None) => Some(n.clone()),
            (None, _) => None,
        };
        TenantFigures {
            frames_inbound: self.frames_inbound - before.frames_inbound,
            drops: diff(&self.drops, &before.drops),
            rejected: diff(&self.rejected, &before.rejected),
            sched_wait: hist(&self.sched_wait, &before.sched_wait),
            inbound_latency: hist(&self.inbound_latency, &before.inbound_latency),
        }
    }
}

/// The `_bucket`, `_sum` and `_count` series of `family` among the samples `keep` selects (summed if several match).
fn histogram(samples: &[Sample], family: &str, keep: &dyn Fn(&Sample) -> bool) -> Option<Histogram> {
    let (bucket, sum, count) = (format!("{family}_bucket"), format!("{family}_sum"), format!("{family}_count"));
    let mut h = Histogram::default();
    let mut seen = false;
    for s in samples.iter().filter(|s| keep(s)) {
        if s.name == bucket {
            let Some(le) = s.label("le") else { continue };
            match h.buckets.iter_mut().find(|(l, _)| l == le) {
                Some((_, c)) => *c += s.value,
                None => h.buckets.push((le.to_owned(), s.value)),
            }
            seen = true;
        } else if s.name == sum {
            h.sum_s += s.value;
            seen = true;
        } else if s.name == count {
            h.count += s.value;
            seen = true;
        }
    }
    seen.then_some(h)
}
