//! Prometheus helpers for the observability tests: scrape and parse fairvox's `/metrics`, find `promtool`, and run
//! a real `prometheus` server on loopback (killed when dropped, and by the kernel if the test process dies).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One sample line of an exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition in the Prometheus text format 0.0.4.
#[derive(Debug, Default)]
pub struct Exposition {
    /// `# TYPE` lines: family name -> type.
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses the text; panics (with the line) on anything that is not HELP, TYPE, a sample or empty.
    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if line.is_empty() || line.starts_with("# HELP ") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
                e.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment line {line:?}");
            e.samples.push(parse_sample(line).unwrap_or_else(|| panic!("bad sample line {line:?}")));
        }
        e
    }

    /// The value of the one sample named `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
    }

    /// Every sample named `name` whose labels include all of `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    /// The sum of [`Exposition::matching`].
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().map(|s| s.value).sum()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let r2 = r.strip_prefix(',').unwrap_or(r);
            let (key, after) = r2.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            r = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `GET path` over HTTP/1.1: (status, headers with lower-case names, body).
pub fn http_get_full(addr: SocketAddr, path: &str) -> Option<(u16, HashMap<String, String>, String)> {
    http_get_bearer(addr, path, None)
}

/// `GET path` over HTTP/1.1 with `Authorization: Bearer <bearer>` when given.
pub fn http_get_bearer(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Option<(u16, HashMap<String, String>, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = bearer.map(|b| format!("Authorization: Bearer {b}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.get(9..12)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<HashMap<_, _>>();
    let body = if headers.get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Some((status, headers, body))
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// fairvox's `/metrics`, read with the operator token (it is operator-only): (content type, text). Panics unless
/// it answers 200.
pub fn scrape(http: SocketAddr, operator_token: &str) -> (String, String) {
    let (status, headers, body) =
        http_get_bearer(http, "/metrics", Some(operator_token)).expect("GET /metrics answers");
    assert_eq!(status, 200, "GET /metrics: {body}");
    (headers.get("content-type").cloned().unwrap_or_default(), body)
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool of the Debian `prometheus` package (`promtool`, `prometheus`). Missing is a failure, not a skip: `.ci/run`
/// installs the package, so without it the checks this suite promises would silently not run.
pub fn prometheus_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => p,
        None => panic!(
            "{name} not found on PATH{}: install the Debian package `prometheus` (apt-get install -y prometheus; \
             bash .ci/run does)",
            if std::env::var("CI").is_ok_and(|v| v == "true") { " under CI" } else { "" }
        ),
    }
}

/// A `prometheus` server on 127.0.0.1 with its own temp dir, scraping `targets` every second as job `fairvox` and
/// loading `rule_files`; with `credentials_file`, each scrape sends `Authorization: Bearer <the file's content>`
/// (how a scrape config reads fairvox's operator token: `authorization: {type: Bearer, credentials_file: ...}`).
/// Killed when dropped; `PR_SET_PDEATHSIG` kills it too if the test process dies first.
pub struct Prometheus {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(
        targets: &[SocketAddr],
        rule_files: &[&Path],
        credentials_file: Option<&Path>,
        port: u16,
    ) -> Prometheus {
        let bin = prometheus_tool("prometheus");
        let dir = tempfile::Builder::new().prefix("fairvox-prometheus-").tempdir().expect("temp dir");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let rules: Vec<String> = rule_files.iter().map(|r| format!("\"{}\"", r.display())).collect();
        let authorization = credentials_file
            .map(|f| format!("    authorization:\n      type: Bearer\n      credentials_file: \"{}\"\n", f.display()))
            .unwrap_or_default();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: fairvox\n{authorization}    static_configs:\n      - targets: [{}]\n",
            rules.join(", "),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child when its parent dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start prometheus");
        let mut p = Prometheus { child: Some(child), addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("prometheus exited ({st}); its log:\n{}", p.log());
            }
            if http_get_full(addr, "/-/ready").is_some_and(|(s, _, _)| s == 200) {
                return p;
            }
            assert!(Instant::now() < deadline, "prometheus not ready after 30 s; its log:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`; the parsed JSON body.
    pub fn api(&self, path: &str) -> Value {
        let (status, _, body) =
            http_get_full(self.addr, &format!("/api/v1/{path}")).unwrap_or_else(|| panic!("GET /api/v1/{path}"));
        assert_eq!(status, 200, "GET /api/v1/{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// An instant query: each series' labels and value.
    pub fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let v = self.api(&format!("query?query={}", url_encode(promql)));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
                    .unwrap_or_default();
                let value = r["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// Polls `promql` every 500 ms until `accept` holds for its result; the last result either way.
    pub fn query_until(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool,
    ) -> Vec<(BTreeMap<String, String>, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(promql);
            if accept(&r) || Instant::now() >= deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- prometheus log -----\n{}\n----- end of prometheus log -----", self.log());
        }
    }
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `fairvox_*` and `process_*` metric names in a PromQL expression, with `_bucket`, `_sum` and `_count`
/// taken off (the series of a histogram family). Recording-rule names (`level:metric:op`) are not metric names
/// of fairvox and are left out.
pub fn metric_names_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| !t.contains(':') && (t.starts_with("fairvox_") || t.starts_with("process_")))
        .map(|t| ["_bucket", "_sum", "_count"].iter().find_map(|s| t.strip_suffix(s)).unwrap_or(t).to_owned())
        .collect()
}
