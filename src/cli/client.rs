//! The CLI's side of the wire: where the API is (`--url`), which credential to present (`--token` and its
//! fallbacks), one synchronous HTTP request at a time (`ureq`), and how a failure maps to a message and an exit
//! code. The credential goes into the `Authorization` header and nowhere else: no message, log or error of this
//! module contains it.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::commands::{Saved, copy_hashed, refuse_overwrite};
use crate::config::{Config, DEFAULT_DATA_DIR, DEFAULT_HTTP_LISTEN, Overrides};
use crate::store::keys::KEY_TAG;

/// The environment variable a tenant's API key may come from (the operator's is `FAIRVOX_ADMIN_TOKEN`).
pub const API_KEY_ENV: &str = "FAIRVOX_API_KEY";
/// The environment variable of the operator token (the server reads the same one).
pub const ADMIN_TOKEN_ENV: &str = crate::api::auth::ADMIN_TOKEN_ENV;
/// Largest JSON or CSV response read into memory (downloads stream to their file instead).
const MAX_BODY_BYTES: u64 = 64 << 20;

/// How the command ended, as the process exit code.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Something local failed (writing the output file).
    Failure = 1,
    /// The command line or the local set-up is wrong (clap uses 2 for its own usage errors too).
    Usage = 2,
    /// The API refused the request (4xx): its code and message are printed.
    Refused = 3,
    /// The server failed (5xx) or answered something that is not the API's.
    Server = 4,
    /// The server could not be reached (connection refused, name not found, timeout).
    Unreachable = 5,
}

/// Why a command failed: printed to stderr as `error: ...`, and its exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Local(String),
    /// An error answer of the API (4xx or 5xx), with its JSON error when it had one.
    #[error("{}", describe_api_error(*.status, .code.as_deref(), .message, .field.as_deref(), .retry_after.as_deref(), .request_id.as_deref()))]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
        field: Option<String>,
        retry_after: Option<String>,
        request_id: Option<String>,
    },
    /// A 2xx that is not what the API sends (not JSON where JSON was expected).
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("cannot reach the fairvox API at {url}: {reason} (is the server running? set --url or FAIRVOX_URL)")]
    Unreachable { url: String, reason: String },
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage(_) => Exit::Usage,
            CliError::Local(_) => Exit::Failure,
            CliError::Api { status, .. } if *status < 500 => Exit::Refused,
            CliError::Api { .. } | CliError::BadResponse { .. } => Exit::Server,
            CliError::Unreachable { .. } => Exit::Unreachable,
        }
    }
}

fn describe_api_error(
    status: u16,
    code: Option<&str>,
    message: &str,
    field: Option<&str>,
    retry_after: Option<&str>,
    request_id: Option<&str>,
) -> String {
    let reason = ureq::http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let mut out = format!("the API answered {status} {reason}");
    if let Some(code) = code {
        out.push_str(&format!(": {code}: {message}"));
    } else if !message.is_empty() {
        out.push_str(&format!(": {message}"));
    }
    if let Some(field) = field {
        out.push_str(&format!(" (field: {field})"));
    }
    if let Some(secs) = retry_after {
        out.push_str(&format!(" (retry after {secs} s)"));
    }
    if status >= 500
        && let Some(id) = request_id
    {
        out.push_str(&format!(" (the server log has it under x-request-id {id})"));
    }
    out
}

/// Where to connect and with what, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub timeout: Duration,
}

/// The credential presented, and whether it is a tenant's key.
#[derive(Clone)]
pub struct Credential {
    token: String,
}

impl Credential {
    pub fn is_tenant_key(&self) -> bool {
        self.token.starts_with(KEY_TAG)
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_tenant_key() { "Credential(tenant key)" } else { "Credential(operator token)" })
    }
}

/// A response: status, headers (names lower-case) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The API client: a base URL, a credential, and a `ureq` agent that never follows redirects (a redirect could
/// carry the credential elsewhere) and ignores proxy environment variables (the token goes to the server named,
/// nowhere else).
pub struct Client {
    agent: ureq::Agent,
    base: String,
    credential: Credential,
}

impl Client {
    /// Resolves the URL and the credential from `target` (see `docs/operator-guide.md`, "The CLI"), without
    /// contacting the server.
    pub fn new(target: &Target) -> Result<Client, CliError> {
        let config = match &target.config {
            Some(path) => Some(
                Config::load(Some(path), &Overrides::default())
                    .map_err(|e| CliError::Usage(format!("--config: {e}")))?,
            ),
            None => None,
        };
        let base = base_url(target.url.as_deref(), config.as_ref().map(|c| c.http_listen))?;
        let data_dir = target
            .data_dir
            .clone()
            .or_else(|| config.as_ref().map(|c| c.data_dir.clone()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let credential = credential(
            target.token.as_deref(),
            target.token_file.as_deref(),
            std::env::var(ADMIN_TOKEN_ENV).ok().as_deref(),
            std::env::var(API_KEY_ENV).ok().as_deref(),
            &data_dir,
        )?;
        let timeout = if target.timeout.is_zero() { Duration::from_secs(30) } else { target.timeout };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(5).min(timeout)))
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout))
            .user_agent(format!("fairvox-cli/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client { agent: ureq::Agent::new_with_config(config), base, credential })
    }

    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The absolute URL of an API path (`/v1/...`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request; any status comes back as a [`Reply`] (the caller decides what is an error).
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply, CliError> {
        let url = self.url(path);
        let response = self.call(method, &url, body)?;
        let status = response.status().as_u16();
        let headers = headers(&response);
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_BODY_BYTES)
            .read_to_end(&mut body)
            .map_err(|e| classify(&url, ureq::Error::Io(e)))?;
        Ok(Reply { status, headers, body })
    }

    /// Sends one request and requires a 2xx answer (an error answer becomes [`CliError::Api`]).
    pub fn expect_ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply, CliError> {
        let reply = self.send(method, path, body)?;
        if (200..300).contains(&reply.status) { Ok(reply) } else { Err(api_error(&reply)) }
    }

    /// `GET path` into a file: `dest` names it from the answer's headers; it is written to a temporary file beside
    /// it and renamed when complete (an interrupted download leaves nothing under the name), hashed on the way.
    /// An existing file is replaced only with `force`. `path` must be on this API's server (the caller checks
    /// links before following them).
    pub fn download(
        &self,
        path: &str,
        dest: impl FnOnce(&[(String, String)]) -> PathBuf,
        force: bool,
    ) -> Result<Saved, CliError> {
        let url = self.url(path);
        let response = self.call("GET", &url, None)?;
        let status = response.status().as_u16();
        let headers = headers(&response);
        if !(200..300).contains(&status) {
            let mut body = Vec::new();
            let _ = response.into_body().into_reader().take(MAX_BODY_BYTES).read_to_end(&mut body);
            return Err(api_error(&Reply { status, headers, body }));
        }
        let dest = dest(&headers);
        refuse_overwrite(&dest, force)?;
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut tmp = tempfile_in(dir).map_err(|e| CliError::Local(format!("{}: {e}", dir.display())))?;
        let mut reader = response.into_body().into_reader();
        let (bytes, sha256) = copy_hashed(&mut reader, &mut tmp.file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::Other || e.kind() == std::io::ErrorKind::WriteZero {
                CliError::Local(format!("{}: {e}", tmp.path.display()))
            } else {
                classify(&url, ureq::Error::Io(e))
            }
        })?;
        tmp.file.sync_all().map_err(|e| CliError::Local(format!("{}: {e}", tmp.path.display())))?;
        refuse_overwrite(&dest, force)?;
        std::fs::rename(&tmp.path, &dest).map_err(|e| CliError::Local(format!("{}: {e}", dest.display())))?;
        tmp.keep = true;
        Ok(Saved { path: dest, bytes, sha256 })
    }

    fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<ureq::http::Response<ureq::Body>, CliError> {
        let auth = format!("Bearer {}", self.credential.token);
        let bytes = body.map(|b| b.to_string().into_bytes());
        let result = match (method, bytes) {
            ("GET", None) => self.agent.get(url).header("Authorization", &auth).call(),
            ("DELETE", None) => self.agent.delete(url).header("Authorization", &auth).call(),
            ("POST", b) => with_json(self.agent.post(url).header("Authorization", &auth), b),
            ("PATCH", b) => with_json(self.agent.patch(url).header("Authorization", &auth), b),
            (other, _) => return Err(CliError::Usage(format!("unsupported request {other} {url}"))),
        };
        result.map_err(|e| classify(url, e))
    }
}

fn with_json(
    request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    body: Option<Vec<u8>>,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    match body {
        Some(bytes) => request.header("Content-Type", "application/json").send(&bytes[..]),
        None => request.send_empty(),
    }
}

fn headers(response: &ureq::http::Response<ureq::Body>) -> Vec<(String, String)> {
    response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

/// A transport failure as the user should read it.
fn classify(url: &str, e: ureq::Error) -> CliError {
    let unreachable = |reason: String| CliError::Unreachable { url: url.to_owned(), reason };
    match e {
        ureq::Error::Io(io) => unreachable(match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "no answer in time".to_owned(),
            _ => io.to_string(),
        }),
        ureq::Error::Timeout(t) => unreachable(format!("timed out ({t})")),
        ureq::Error::HostNotFound => unreachable("host not found".to_owned()),
        ureq::Error::ConnectionFailed => unreachable("connection failed".to_owned()),
        ureq::Error::Tls(reason) => unreachable(format!("TLS: {reason}")),
        ureq::Error::BadUri(reason) => CliError::Usage(format!("--url: {reason}")),
        other => CliError::BadResponse { url: url.to_owned(), reason: other.to_string() },
    }
}

/// An error answer: the API's `{"error": {...}}` when the body is one.
pub fn api_error(reply: &Reply) -> CliError {
    let parsed: Option<Value> = serde_json::from_slice(&reply.body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error")).filter(|e| e.is_object());
    let text = |key: &str| error.and_then(|e| e.get(key)).and_then(Value::as_str).map(clean);
    let (code, message) = match (text("code"), text("message")) {
        (Some(code), message) => (Some(code), message.unwrap_or_default()),
        _ => (None, "not an error of the fairvox API (no JSON error body)".to_owned()),
    };
    CliError::Api {
        status: reply.status,
        code,
        message,
        field: text("field"),
        retry_after: reply.header("retry-after").map(clean),
        request_id: reply.header("x-request-id").map(clean),
    }
}

/// A string from the server with control characters shown escaped (a terminal must not act on them).
pub fn clean(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
    } else {
        s.to_owned()
    }
}

/// The API's base URL: `--url`/`FAIRVOX_URL`, else the config's `[http] listen` (a wildcard address reached on
/// loopback), else `http://127.0.0.1:8080`.
pub fn base_url(flag: Option<&str>, listen: Option<SocketAddr>) -> Result<String, CliError> {
    let url = match flag {
        Some(url) => {
            let url = url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(CliError::Usage(format!("--url: {url:?} must start with http:// or https://")));
            }
            if url.contains(['?', '#']) {
                return Err(CliError::Usage(format!("--url: {url:?} must be a base URL, without query or fragment")));
            }
            url.to_owned()
        }
        None => {
            let mut addr = match listen {
                Some(a) => a,
                None => DEFAULT_HTTP_LISTEN
                    .parse()
                    .map_err(|_| CliError::Usage("the default listen address does not parse".to_owned()))?,
            };
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!("http://{addr}")
        }
    };
    Ok(url.trim_end_matches('/').to_owned())
}

/// The credential, first found of: `--token`, `--token-file`, `FAIRVOX_API_KEY`, `FAIRVOX_ADMIN_TOKEN`, the
/// server's generated `<data_dir>/admin-token`.
pub fn credential(
    flag: Option<&str>,
    file: Option<&Path>,
    admin_env: Option<&str>,
    key_env: Option<&str>,
    data_dir: &Path,
) -> Result<Credential, CliError> {
    let usable = |token: &str, from: &str| -> Result<Credential, CliError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(CliError::Usage(format!("{from} is empty")));
        }
        if token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(CliError::Usage(format!("{from}: the token has spaces or control characters")));
        }
        Ok(Credential { token: token.to_owned() })
    };
    if let Some(t) = flag {
        return usable(t, "--token");
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("--token-file {}: {e}", path.display())))?;
        return usable(&text, &format!("--token-file {}", path.display()));
    }
    // The tenant key first: an operator's shell may export FAIRVOX_ADMIN_TOKEN for good, and setting
    // FAIRVOX_API_KEY for one command says "act as this tenant" more specifically.
    if let Some(t) = key_env.filter(|t| !t.trim().is_empty()) {
        return usable(t, API_KEY_ENV);
    }
    if let Some(t) = admin_env.filter(|t| !t.trim().is_empty()) {
        return usable(t, ADMIN_TOKEN_ENV);
    }
    let path = data_dir.join(crate::api::auth::ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => usable(&text, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::Usage(format!(
            "no credentials: give --token-file FILE, or set {ADMIN_TOKEN_ENV} (the operator token) or {API_KEY_ENV} \
             (a tenant's key), or point --data-dir (or --config) at the server's data directory, where it keeps its \
             generated token ({} does not exist)",
            path.display()
        ))),
        Err(e) => Err(CliError::Usage(format!("{}: {e}", path.display()))),
    }
}

/// A temporary file in `dir`, removed on drop unless kept.
struct TempFile {
    file: std::fs::File,
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<TempFile> {
    for attempt in 0..100u32 {
        let path = dir.join(format!(".fairvox-download-{}-{attempt}.part", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok(TempFile { file, path, keep: false }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary file name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_from_flag_config_or_default() {
        assert_eq!(base_url(Some("http://h:1/"), None).unwrap(), "http://h:1");
        assert_eq!(base_url(Some(" https://api.example/fv "), None).unwrap(), "https://api.example/fv");
        assert!(matches!(base_url(Some("h:1"), None), Err(CliError::Usage(_))));
        assert!(matches!(base_url(Some("http://h/?x=1"), None), Err(CliError::Usage(_))));
        assert_eq!(base_url(None, Some("0.0.0.0:9000".parse().unwrap())).unwrap(), "http://127.0.0.1:9000");
        assert_eq!(base_url(None, Some("[::]:9000".parse().unwrap())).unwrap(), "http://[::1]:9000");
        assert_eq!(base_url(None, Some("10.0.0.5:8081".parse().unwrap())).unwrap(), "http://10.0.0.5:8081");
        assert_eq!(base_url(None, None).unwrap(), "http://127.0.0.1:8080");
    }

    #[test]
    fn credential_order_and_errors_never_show_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "s3cret-operator-token-0123456789abcdef";
        let none = credential(None, None, None, None, dir.path()).unwrap_err();
        assert!(matches!(none, CliError::Usage(_)), "{none}");
        std::fs::write(dir.path().join("admin-token"), format!("{secret}\n")).unwrap();
        let from_dir = credential(None, None, None, None, dir.path()).unwrap();
        assert_eq!(from_dir.token, secret);
        assert!(!from_dir.is_tenant_key());
        assert!(!format!("{from_dir:?}").contains(secret), "Debug hides the token");
        let key = credential(None, None, None, Some("fvk_abcdefgh_x"), dir.path()).unwrap();
        assert!(key.is_tenant_key(), "FAIRVOX_API_KEY before the data dir");
        let env = credential(None, None, Some("from-env"), None, dir.path()).unwrap();
        assert_eq!(env.token, "from-env", "FAIRVOX_ADMIN_TOKEN before the data dir");
        let both = credential(None, None, Some("from-env"), Some("fvk_abcdefgh_x"), dir.path()).unwrap();
        assert!(both.is_tenant_key(), "FAIRVOX_API_KEY before FAIRVOX_ADMIN_TOKEN");
        let file = dir.path().join("key");
        std::fs::write(&file, "fvk_filefile_y\n").unwrap();
        assert_eq!(credential(None, Some(&file), Some("from-env"), None, dir.path()).unwrap().token, "fvk_filefile_y");
        assert_eq!(credential(Some("flag"), Some(&file), Some("env"), None, dir.path()).unwrap().token, "flag");
        let bad = credential(Some("a b"), None, None, None, dir.path()).unwrap_err().to_string();
        assert!(!bad.contains("a b"), "{bad}");
        let missing = credential(None, Some(&dir.path().join("nope")), None, None, dir.path()).unwrap_err();
        assert!(matches!(missing, CliError::Usage(_)));
    }

    #[test]
    fn api_errors_are_described_with_code_message_field() {
        let reply = Reply {
            status: 409,
            headers: vec![("x-request-id".into(), "abc".into())],
            body: br#"{"error":{"code":"number_taken","message":"taken by another tenant","field":"number"}}"#.to_vec(),
        };
        let e = api_error(&reply);
        assert_eq!(e.exit(), Exit::Refused);
        assert_eq!(
            e.to_string(),
            "the API answered 409 Conflict: number_taken: taken by another tenant (field: number)"
        );
        let limited = Reply {
            status: 429,
            headers: vec![("retry-after".into(), "2".into())],
            body: br#"{"error":{"code":"rate_limited","message":"slow down"}}"#.to_vec(),
        };
        assert!(api_error(&limited).to_string().ends_with("rate_limited: slow down (retry after 2 s)"));
        let html = Reply { status: 502, headers: vec![("x-request-id".into(), "r1".into())], body: b"<html>".to_vec() };
        let e = api_error(&html);
        assert_eq!(e.exit(), Exit::Server);
        assert!(e.to_string().contains("502 Bad Gateway: not an error of the fairvox API"), "{e}");
        assert!(e.to_string().contains("x-request-id r1"), "{e}");
        let evil =
            Reply { status: 400, headers: vec![], body: br#"{"error":{"code":"x","message":"a\u001b[2Jb"}}"#.to_vec() };
        assert!(!api_error(&evil).to_string().contains('\u{1b}'), "control characters are escaped");
    }
}
