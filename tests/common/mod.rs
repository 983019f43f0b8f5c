//! Shared integration-test harness for fairvox (`mod common;` in each `tests/*.rs`).
//!
//! Everything here is blocking and thread-backed, so it works the same from a plain `#[test]` and from a
//! `#[tokio::test]`: the [`Agent`] runs on its own thread with its own tokio runtime, [`RtpCapture`] reads on its
//! own thread, sipp and fairvox are child processes. Plain `#[test]` functions are the simplest; in a
//! `#[tokio::test]`, the blocking calls (`Server::start`, `Sipp::run`, `Agent::wait_for`, ...) park the test's
//! runtime thread while they wait, which is harmless because no harness part runs on that runtime
//! (`Agent::wait_for_async` and friends exist for tests that want to await).
//!
//! Pieces:
//! - ports: [`free_port`], [`free_port_pair`], [`free_port_block`], [`RtpWindow`] -- collision-free across
//!   parallel test processes (lock files + bind checks, see below).
//! - [`Server`]: runs `fairvox serve --config FILE` on free ports with its own RTP window, waits for `/healthz`.
//! - [`Agent`]: a scripted Twilio-Media-Streams agent (WebSocket server) that records every message.
//! - [`Sipp`] / [`sipp_scenario`]: runs a `tests/sipp/*.xml` scenario with free `-p`/`-mp` and message traces.
//! - [`RtpCapture`]: sees UDP datagrams to/from a port that another process owns (AF_PACKET on `lo`).
//! - [`sip_udp_exchange`], [`SipUdpClient`], [`options_ping`], [`sip_tcp_exchange`] and SIP text helpers.
//! - [`Baresip`]: a real softphone call that speaks a WAV and records what it hears.
//! - [`fixtures`]: paths, layout constants and a pcap reader for `tests/fixtures`; [`g711`]: decode/levels.
//!
//! Environment: `FAIRVOX_TEST_BIN` runs another fairvox binary than the one cargo built; `RUST_LOG` is passed
//! to the server (default `info,fairvox=debug`); `FAIRVOX_TEST_KEEP=1` keeps the temp dirs of servers and sipp
//! runs (config, data, logs) and prints where they are.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};

/// Loopback, where everything in these tests lives.
pub const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The caller number (From user part) of every `tests/sipp/uac_*.xml` scenario.
pub const CALLER_NUMBER: &str = "+15557770001";
/// The demo tenant's number on the embedded defaults (`echo` app).
pub const DEMO_NUMBER: &str = "+15550100";
/// Numbers of the tenant that [`acme_config`] writes.
pub const ACME_STREAM_NUMBER: &str = "+15551230001";
pub const ACME_ECHO_NUMBER: &str = "+15551230002";

fn keep_dirs() -> bool {
    std::env::var("FAIRVOX_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("create temp dir")
}

/// `secret` with its last character changed to another one: a credential that is almost right but must fail
/// (a plain `x` would leave a secret that already ends in `x` valid).
pub fn misspelt(secret: &str) -> String {
    let last = if secret.ends_with('x') { 'y' } else { 'x' };
    format!("{}{last}", &secret[..secret.len() - 1])
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; true if it held.
/// The header lines of an HTTP response head (after its status line), names lower-cased.
fn header_pairs(head: &str) -> impl Iterator<Item = (String, String)> + '_ {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
}

/// A `GET` whose body may be binary (an export bundle): status, lower-cased headers, body bytes.
pub fn http_download(addr: SocketAddr, path: &str, token: &str) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a header end");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head[9..12].parse().expect("a status code");
    let headers = header_pairs(&head).collect();
    (status, headers, buf[split + 4..].to_vec())
}

/// Strength of `hz` in `x` (one Goertzel bin, sampled at `rate`), normalised by length.
pub fn goertzel(x: &[i16], rate: u32, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = f64::from(v) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2).sqrt() / x.len().max(1) as f64
}

/// The files of a `.tar.gz` (an offboarding export bundle), by path, as text.
pub fn untar(bytes: &[u8]) -> HashMap<String, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut out = HashMap::new();
    for entry in archive.entries().expect("a tar.gz") {
        let mut entry = entry.expect("a tar entry");
        let name = entry.path().expect("a path").to_string_lossy().into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text).expect("a text file");
        out.insert(name, text);
    }
    out
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ================================================================================================ ports
//
// Tests run in parallel in many processes (nextest: one process per test). A port is handed out only if
// (1) this process can take an exclusive flock on <tmp>/fairvox-test-ports/<port>.lock, which it then holds
// until the process exits (or the lease drops), so no other harness user -- in this process or any other --
// gets it, and (2) it binds on 127.0.0.1 for UDP and TCP right now, so nothing else is on it. Candidates start
// at a per-process random offset. Signalling ports come from 61000-65499 (above Linux's ephemeral range
// 32768-60999, so no outgoing connection lands on them later); RTP windows of 200 ports from 10000-32599
// (below it). sipp's control port (8888 and up) is never handed out.

const PORT_LO: u16 = 61000;
const PORT_HI: u16 = 65499;
const RTP_LO: u16 = 10000;
const RTP_WINDOW: u16 = 200;
const RTP_WINDOWS: u16 = 113; // 10000..32600

static PORT_CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
static RTP_CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
static HELD_LOCKS: Mutex<Vec<File>> = Mutex::new(Vec::new());

fn process_seed() -> u32 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    // FNV-1a over pid and time: different processes start at different places.
    let mut h: u32 = 0x811c9dc5;
    for b in std::process::id().to_le_bytes().into_iter().chain(nanos.to_le_bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h
}

fn next_cursor(cursor: &AtomicU32) -> u32 {
    let _ = cursor.compare_exchange(u32::MAX, process_seed() & 0x7fff_ffff, Ordering::SeqCst, Ordering::SeqCst);
    cursor.fetch_add(1, Ordering::SeqCst)
}

fn lock_dir() -> PathBuf {
    let d = std::env::temp_dir().join("fairvox-test-ports");
    let _ = fs::create_dir_all(&d);
    d
}

/// An exclusive, non-blocking flock on `<tmp>/fairvox-test-ports/<name>.lock`; released when the File drops.
fn try_lock(name: &str) -> Option<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_dir().join(format!("{name}.lock")))
        .ok()?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(f)
}

fn port_is_free(port: u16) -> bool {
    UdpSocket::bind((LOCALHOST, port)).is_ok() && TcpListener::bind((LOCALHOST, port)).is_ok()
}

/// `n` consecutive ports, the first one even, each free on 127.0.0.1 for both UDP and TCP, reserved for the rest
/// of this process. `free_port_block(4)` is what sipp's `-mp` needs (it binds mp and mp+2).
pub fn free_port_block(n: u16) -> u16 {
    assert!((1..=64).contains(&n));
    let slots = (PORT_HI - PORT_LO).div_ceil(2) as u32; // even bases
    for _ in 0..slots {
        let base = PORT_LO + 2 * (next_cursor(&PORT_CURSOR) % slots) as u16;
        if base as u32 + n as u32 - 1 > PORT_HI as u32 {
            continue;
        }
        let mut locks = Vec::new();
        let ok = (base..base + n).all(|p| match try_lock(&p.to_string()) {
            Some(l) => {
                locks.push(l);
                port_is_free(p)
            }
            None => false,
        });
        if ok {
            HELD_LOCKS.lock().unwrap().extend(locks);
            // Skip past the block so this process does not walk into it again.
            for _ in 1..n.div_ceil(2) {
                next_cursor(&PORT_CURSOR);
            }
            return base;
        }
    }
    panic!("no block of {n} free ports in {PORT_LO}-{PORT_HI}");
}

/// One port free for both UDP and TCP on 127.0.0.1 (what a SIP listener needs), reserved for this process.
pub fn free_port() -> u16 {
    free_port_block(1)
}

/// Two consecutive ports `(p, p + 1)`, `p` even (an RTP/RTCP pair), both free for UDP and TCP.
pub fn free_port_pair() -> (u16, u16) {
    let p = free_port_block(2);
    (p, p + 1)
}

/// A port with nothing listening on it that no other harness user will take: a connection to it is refused.
pub fn closed_port() -> u16 {
    free_port()
}

/// A window of [`RTP_WINDOW`] UDP ports reserved for one server, released on drop.
#[derive(Debug)]
pub struct RtpWindow {
    pub lo: u16,
    pub hi: u16,
    _lock: File,
}

impl RtpWindow {
    pub fn acquire() -> RtpWindow {
        for _ in 0..RTP_WINDOWS as u32 * 2 {
            let idx = (next_cursor(&RTP_CURSOR) % RTP_WINDOWS as u32) as u16;
            let lo = RTP_LO + idx * RTP_WINDOW;
            let hi = lo + RTP_WINDOW - 1;
            let Some(lock) = try_lock(&format!("rtp-{lo}")) else {
                continue;
            };
            // A window where something already holds a few ports is still usable (the server skips busy
            // ports), but prefer clean ones.
            let busy = (lo..=hi).step_by(2).filter(|p| UdpSocket::bind((LOCALHOST, *p)).is_err()).count();
            if busy > 5 {
                continue;
            }
            return RtpWindow { lo, hi, _lock: lock };
        }
        panic!("no free RTP window in {RTP_LO}-{}", RTP_LO + RTP_WINDOWS * RTP_WINDOW - 1);
    }
}

/// Waits until something has bound `port` on 127.0.0.1 (UDP if `udp`, else a TCP listener).
pub fn wait_port_bound(port: u16, udp: bool, timeout: Duration) -> bool {
    wait_until(timeout, || {
        if udp { UdpSocket::bind((LOCALHOST, port)).is_err() } else { TcpListener::bind((LOCALHOST, port)).is_err() }
    })
}

// ================================================================================================ HTTP

/// `GET path` over HTTP/1.1 (Connection: close). Returns (status, body), or None if it could not connect or
/// the answer did not parse.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None, timeout)
}

/// One HTTP/1.1 request with an optional JSON body. Returns (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&Value>,
    timeout: Duration,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let body = json_body.map(|v| v.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if json_body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.strip_prefix("HTTP/1.")?.get(2..5)?.parse::<u16>().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// An HTTP answer: status, headers (names lowercased) and body.
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// One HTTP/1.1 request with `Authorization: Bearer <bearer>` (when given) and a raw body sent with
/// `content_type` (when given).
pub fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Option<HttpReply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = bearer {
        req.push_str(&format!("Authorization: Bearer {b}\r\n"));
    }
    let payload: &[u8] = match body {
        Some((content_type, bytes)) => {
            req.push_str(&format!("Content-Type: {content_type}\r\n"));
            bytes
        }
        None => b"",
    };
    req.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
    s.write_all(req.as_bytes()).ok()?;
    s.write_all(payload).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.strip_prefix("HTTP/1.")?.get(2..5)?.parse::<u16>().ok()?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let headers = header_pairs(head).collect();
    Some(HttpReply { status, headers, body: body.to_owned() })
}

// ================================================================================================ Server

/// Where the fairvox binary is: `FAIRVOX_TEST_BIN` if set, else the one cargo built for these tests.
pub fn fairvox_bin() -> PathBuf {
    match std::env::var_os("FAIRVOX_TEST_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_fairvox")),
    }
}

/// A running `fairvox serve`, killed on drop (its log is printed if the test is failing).
pub struct Server {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    sip: SocketAddr,
    http: SocketAddr,
    rtp: RtpWindow,
    log_path: PathBuf,
    config_path: PathBuf,
    data_dir: PathBuf,
    /// `FAIRVOX_ADMIN_TOKEN` when the test set it.
    admin_token_env: Option<String>,
}

/// Extra knobs for [`Server::start_with`].
#[derive(Default, Clone)]
pub struct ServerOptions {
    /// More command-line arguments after the harness's own.
    pub args: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// How long to wait for `/healthz` (default 20 s).
    pub ready_timeout: Option<Duration>,
    /// Start without `--config`, on the embedded defaults (tenant `demo`, `+15550100` -> echo); the config text
    /// is then ignored. An empty config *file* is not the same: it has no tenants.
    pub embedded_defaults: bool,
}

impl Server {
    /// Writes `config_toml` to a temp dir, starts `fairvox serve --config FILE --sip-listen 127.0.0.1:S
    /// --http-listen 127.0.0.1:H --rtp-ports LO-HI --data-dir DIR` with free ports and its own RTP window, and
    /// waits up to 20 s for `GET /healthz` to answer 200. Panics with the server's log if it exits or never
    /// gets ready.
    pub fn start(config_toml: &str) -> Server {
        Self::start_with(config_toml, ServerOptions::default())
    }

    /// The server on its embedded defaults (no `--config`): tenant `demo`, [`DEMO_NUMBER`] -> echo. Ports, RTP
    /// window and data dir are still the harness's.
    pub fn start_embedded_defaults() -> Server {
        Self::start_with("", ServerOptions { embedded_defaults: true, ..Default::default() })
    }

    pub fn start_with(config_toml: &str, opts: ServerOptions) -> Server {
        match Self::try_start_with(config_toml, opts) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Server::start`] but returns the failure (with the log) instead of panicking: for tests where
    /// the server must refuse to start (bad config).
    pub fn try_start(config_toml: &str) -> Result<Server, String> {
        Self::try_start_with(config_toml, ServerOptions::default())
    }

    pub fn try_start_with(config_toml: &str, opts: ServerOptions) -> Result<Server, String> {
        let dir = tempdir("fairvox-server-");
        let dir_path = dir.path().to_path_buf();
        let config_path = dir_path.join("fairvox.toml");
        let data_dir = dir_path.join("data");
        let log_path = dir_path.join("server.log");
        fs::write(&config_path, config_toml).expect("write config");
        fs::create_dir_all(&data_dir).expect("create data dir");
        let sip = SocketAddr::from((LOCALHOST, free_port()));
        let http = SocketAddr::from((LOCALHOST, free_port()));
        let rtp = RtpWindow::acquire();
        File::create(&log_path).expect("create server log");
        let mut server = Server {
            child: None,
            dir: Some(dir),
            dir_path,
            sip,
            http,
            rtp,
            log_path,
            config_path,
            data_dir,
            admin_token_env: None,
        };
        server.spawn(&opts)?;
        Ok(server)
    }

    /// SIGKILL, as a crash: no drain, nothing flushed. Returns once the process is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again after [`Server::kill9`] or [`Server::stop`]: the same config, ports, RTP window
    /// and data dir, its log going on in the same file; waits for `/healthz` as [`Server::start`] does.
    pub fn restart(&mut self, opts: ServerOptions) -> Result<(), String> {
        assert!(self.child.is_none(), "restart a server that is not running");
        self.spawn(&opts)
    }

    fn spawn(&mut self, opts: &ServerOptions) -> Result<(), String> {
        let log = fs::OpenOptions::new().append(true).open(&self.log_path).expect("open server log");
        let mut cmd = Command::new(fairvox_bin());
        cmd.arg("serve");
        if !opts.embedded_defaults {
            cmd.arg("--config").arg(&self.config_path);
        }
        cmd.arg("--sip-listen")
            .arg(self.sip.to_string())
            .arg("--http-listen")
            .arg(self.http.to_string())
            .arg("--rtp-ports")
            .arg(format!("{}-{}", self.rtp.lo, self.rtp.hi))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&opts.args)
            .current_dir(&self.dir_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,fairvox=debug");
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", fairvox_bin().display()))?;
        self.child = Some(child);
        self.admin_token_env = opts.env.iter().find(|(k, _)| k == "FAIRVOX_ADMIN_TOKEN").map(|(_, v)| v.clone());
        let server = self;
        let timeout = opts.ready_timeout.unwrap_or(Duration::from_secs(20));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = server.child.as_mut().unwrap().try_wait().ok().flatten() {
                return Err(format!("fairvox exited before it was ready ({status}); its log:\n{}", server.log()));
            }
            if let Some((200, _)) = http_get(server.http, "/healthz", Duration::from_millis(500)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "fairvox not ready (GET http://{}/healthz != 200) after {timeout:?}; its log:\n{}",
                    server.http,
                    server.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }
    /// The `--rtp-ports` window, inclusive.
    pub fn rtp_range(&self) -> (u16, u16) {
        (self.rtp.lo, self.rtp.hi)
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
    /// The temp dir holding config, data dir and log.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }
    /// `GET path` on the server's HTTP listener.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path, Duration::from_secs(5))
    }
    /// The operator token: `FAIRVOX_ADMIN_TOKEN` when the test set it, else the one the server generated into
    /// `<data dir>/admin-token` at its first start.
    pub fn admin_token(&self) -> String {
        match &self.admin_token_env {
            Some(t) => t.clone(),
            None => fs::read_to_string(self.admin_token_path())
                .unwrap_or_else(|e| panic!("{}: {e}", self.admin_token_path().display()))
                .trim()
                .to_owned(),
        }
    }
    /// Where the server keeps the operator token it generated.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin-token")
    }
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
    /// Sends a signal (e.g. `libc::SIGHUP`, `libc::SIGTERM`) to the server.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }
    /// SIGTERM, then waits up to `grace` for the exit (SIGKILL after). Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- fairvox log ({}) -----\n{}\n----- end of fairvox log -----",
                self.log_path.display(),
                self.log()
            );
        }
        if keep_dirs()
            && let Some(d) = self.dir.take()
        {
            eprintln!("fairvox test dir kept: {}", d.keep().display());
        }
    }
}

/// A config with tenant `acme`: `+15551230001` goes to stream app `receptionist` at `stream_url` (codecs
/// PCMU, PCMA; customParameters lang=en), `+15551230002` to an `echo` app; no trunks (any source).
pub fn acme_config(stream_url: &str) -> String {
    format!(
        r#"[provider]
connect_timeout_ms = 2000

[[tenants]]
id = "acme"

[[tenants.apps]]
name = "receptionist"
kind = "stream"
stream_url = "{stream_url}"
codecs = ["PCMU", "PCMA"]
custom_parameters = {{ lang = "en" }}

[[tenants.apps]]
name = "echo"
kind = "echo"

[[tenants.numbers]]
number = "{ACME_STREAM_NUMBER}"
app = "receptionist"

[[tenants.numbers]]
number = "{ACME_ECHO_NUMBER}"
app = "echo"
"#
    )
}

// ================================================================================================ Agent

/// How the test agent behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentMode {
    /// Accepts WebSocket connections, records everything, sends only what the test sends.
    Normal,
    /// Like `Normal`, and answers every inbound `media` with a `media` carrying the same payload.
    Echo,
    /// Nothing listens: `url()` points at a closed port, so connecting is refused.
    Refuse,
    /// Accepts TCP and holds the connection, but never reads or answers the WebSocket handshake.
    NeverHandshake,
    /// Sends a Close frame (1000) after receiving this many messages on a connection.
    CloseAfter(usize),
}

/// One message the agent received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Index of the connection (0 = first accepted WebSocket).
    pub conn: usize,
    pub at: Instant,
    /// The message as JSON; a text frame that is not JSON is `{"_non_json": text}`, a binary frame
    /// `{"_binary": base64}`.
    pub msg: Value,
}

impl Received {
    /// The `event` field, or "".
    pub fn event(&self) -> &str {
        self.msg.get("event").and_then(Value::as_str).unwrap_or("")
    }
}

/// One WebSocket connection the agent accepted.
#[derive(Clone, Debug)]
pub struct AgentConn {
    pub id: usize,
    /// Request path and query of the handshake, e.g. `/stream?x=1`.
    pub path: String,
    /// Handshake headers, names lowercased.
    pub headers: Vec<(String, String)>,
    pub opened_at: Instant,
    /// When the connection ended (close frame, EOF or error).
    pub closed_at: Option<Instant>,
    /// The close frame the server sent, if any: (code, reason).
    pub close_frame: Option<(u16, String)>,
}

#[derive(Default)]
struct AgentState {
    msgs: Vec<Received>,
    conns: Vec<AgentConn>,
    senders: Vec<Option<tokio::sync::mpsc::UnboundedSender<tokio_tungstenite::tungstenite::Message>>>,
    tcp_accepts: usize,
}

struct AgentShared {
    state: Mutex<AgentState>,
    cond: Condvar,
    notify: tokio::sync::Notify,
}

impl AgentShared {
    fn changed(&self) {
        self.cond.notify_all();
        self.notify.notify_waiters();
    }
}

/// A scripted Twilio Media Streams agent: a WebSocket server on 127.0.0.1 that records every message of every
/// connection with its arrival time, and sends what the test tells it to.
pub struct Agent {
    mode: AgentMode,
    port: u16,
    shared: Arc<AgentShared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Agent {
    /// A `Normal` agent.
    pub fn start() -> Agent {
        Self::start_with(AgentMode::Normal)
    }

    pub fn start_with(mode: AgentMode) -> Agent {
        let shared = Arc::new(AgentShared {
            state: Mutex::new(AgentState::default()),
            cond: Condvar::new(),
            notify: tokio::sync::Notify::new(),
        });
        if mode == AgentMode::Refuse {
            return Agent { mode, port: closed_port(), shared, shutdown: None, thread: None };
        }
        let listener = TcpListener::bind((LOCALHOST, 0)).expect("bind agent listener");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-agent-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("agent runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let mut held = Vec::new();
                    tokio::select! {
                        _ = rx => {}
                        _ = async {
                            loop {
                                let Ok((stream, _)) = listener.accept().await else { continue };
                                let _ = stream.set_nodelay(true);
                                sh.state.lock().unwrap().tcp_accepts += 1;
                                sh.changed();
                                if mode == AgentMode::NeverHandshake {
                                    held.push(stream);
                                    continue;
                                }
                                tokio::spawn(agent_connection(stream, sh.clone(), mode));
                            }
                        } => {}
                    }
                });
            })
            .expect("spawn agent thread");
        Agent { mode, port, shared, shutdown: Some(tx), thread: Some(thread) }
    }

    pub fn mode(&self) -> AgentMode {
        self.mode
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.port))
    }
    /// `ws://127.0.0.1:PORT/stream`
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/stream", self.port)
    }

    /// All messages so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        self.shared.state.lock().unwrap().msgs.clone()
    }
    /// The messages whose `event` is `name`.
    pub fn events(&self, name: &str) -> Vec<Received> {
        self.messages().into_iter().filter(|r| r.event() == name).collect()
    }
    pub fn connections(&self) -> Vec<AgentConn> {
        self.shared.state.lock().unwrap().conns.clone()
    }
    /// TCP connections accepted (also counts the ones `NeverHandshake` holds).
    pub fn tcp_accepts(&self) -> usize {
        self.shared.state.lock().unwrap().tcp_accepts
    }
    /// The `streamSid` of the latest `start` on connection `conn` (or of any, if `None`).
    pub fn stream_sid(&self, conn: Option<usize>) -> Option<String> {
        self.messages().iter().rev().filter(|r| conn.is_none_or(|c| r.conn == c) && r.event() == "start").find_map(
            |r| {
                r.msg
                    .get("streamSid")
                    .or_else(|| r.msg.pointer("/start/streamSid"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            },
        )
    }
    /// The base64-decoded `media.payload`s of connection `conn`'s inbound `media` events, concatenated in
    /// arrival order (undecodable payloads are skipped).
    pub fn inbound_audio(&self, conn: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for r in self.messages() {
            if r.conn == conn
                && r.event() == "media"
                && let Some(p) = r.msg.pointer("/media/payload").and_then(Value::as_str)
                && let Ok(b) = base64::engine::general_purpose::STANDARD.decode(p)
            {
                out.extend_from_slice(&b);
            }
        }
        out
    }

    fn current_conn(&self) -> Option<usize> {
        let st = self.shared.state.lock().unwrap();
        st.senders.iter().rposition(|s| s.is_some())
    }

    /// Sends `msg` (as a text frame) on the latest open connection. Panics if there is none.
    pub fn send(&self, msg: Value) {
        let c = self.current_conn().expect("agent has no open connection to send on");
        self.send_to(c, msg);
    }
    /// Sends `msg` on connection `conn`; false if it is closed.
    pub fn send_to(&self, conn: usize, msg: Value) -> bool {
        self.send_raw(conn, tokio_tungstenite::tungstenite::Message::text(msg.to_string()))
    }
    /// Sends any WebSocket message (e.g. a non-JSON text frame, a binary frame) on connection `conn`.
    pub fn send_raw(&self, conn: usize, msg: tokio_tungstenite::tungstenite::Message) -> bool {
        let st = self.shared.state.lock().unwrap();
        match st.senders.get(conn) {
            Some(Some(tx)) => tx.send(msg).is_ok(),
            _ => false,
        }
    }
    /// `{"event":"media","streamSid":..,"media":{"payload":base64(ulaw)}}` on the latest open connection.
    pub fn send_media(&self, ulaw: &[u8]) {
        let c = self.current_conn().expect("agent has no open connection");
        let sid = self.stream_sid(Some(c)).unwrap_or_default();
        self.send_to(c, media_message(&sid, ulaw));
    }
    /// `{"event":"mark","streamSid":..,"mark":{"name":name}}` on the latest open connection.
    pub fn send_mark(&self, name: &str) {
        let c = self.current_conn().expect("agent has no open connection");
        let sid = self.stream_sid(Some(c)).unwrap_or_default();
        self.send_to(c, json!({"event": "mark", "streamSid": sid, "mark": {"name": name}}));
    }
    /// `{"event":"clear","streamSid":..}` on the latest open connection.
    pub fn send_clear(&self) {
        let c = self.current_conn().expect("agent has no open connection");
        let sid = self.stream_sid(Some(c)).unwrap_or_default();
        self.send_to(c, json!({"event": "clear", "streamSid": sid}));
    }
    /// Closes the latest open connection with a Close frame (1000).
    pub fn close(&self) {
        if let Some(c) = self.current_conn() {
            self.close_conn(c);
        }
    }
    pub fn close_conn(&self, conn: usize) {
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
        self.send_raw(
            conn,
            tokio_tungstenite::tungstenite::Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "test agent closes".into(),
            })),
        );
    }

    /// Blocks until `pred(messages)` holds (true) or `timeout` passes (false).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if pred(&st.msgs) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.shared.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
    /// The first message with `"event": name`, waiting up to `timeout` for it.
    pub fn wait_for_event(&self, name: &str, timeout: Duration) -> Option<Received> {
        self.wait_for(timeout, |m| m.iter().any(|r| r.event() == name));
        self.events(name).into_iter().next()
    }
    /// Waits for `n` messages with `"event": name` (all connections); returns them (maybe fewer on timeout).
    pub fn wait_for_events(&self, name: &str, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_for(timeout, |m| m.iter().filter(|r| r.event() == name).count() >= n);
        self.events(name)
    }
    /// Waits for the `n`-th (1-based) WebSocket connection.
    pub fn wait_for_connection(&self, n: usize, timeout: Duration) -> Option<AgentConn> {
        self.wait_state(timeout, |st| st.conns.len() >= n);
        self.connections().get(n - 1).cloned()
    }
    /// Waits until connection `conn` has ended; returns it.
    pub fn wait_for_close(&self, conn: usize, timeout: Duration) -> Option<AgentConn> {
        self.wait_state(timeout, |st| st.conns.get(conn).is_some_and(|c| c.closed_at.is_some()));
        self.connections().get(conn).cloned().filter(|c| c.closed_at.is_some())
    }
    /// Waits for `n` accepted TCP connections (any mode).
    pub fn wait_for_tcp_accepts(&self, n: usize, timeout: Duration) -> bool {
        self.wait_state(timeout, |st| st.tcp_accepts >= n)
    }

    fn wait_state(&self, timeout: Duration, pred: impl Fn(&AgentState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if pred(&st) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.shared.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Async [`Agent::wait_for`].
    pub async fn wait_for_async(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(&self.shared.state.lock().unwrap().msgs) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.shared.state.lock().unwrap().msgs);
            }
        }
    }
    /// Async [`Agent::wait_for_event`].
    pub async fn wait_for_event_async(&self, name: &str, timeout: Duration) -> Option<Received> {
        self.wait_for_async(timeout, |m| m.iter().any(|r| r.event() == name)).await;
        self.events(name).into_iter().next()
    }

    /// A readable dump of everything received (for assertion messages); media payloads are shortened.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let t0 = self.connections().first().map(|c| c.opened_at);
        for c in self.connections() {
            out.push_str(&format!(
                "conn {} path={} closed={:?} close={:?}\n",
                c.id,
                c.path,
                c.closed_at.map(|t| t.duration_since(c.opened_at)),
                c.close_frame
            ));
        }
        for r in self.messages() {
            let mut m = r.msg.clone();
            if let Some(p) = m.pointer_mut("/media/payload")
                && let Some(s) = p.as_str()
            {
                *p = Value::String(format!("<{} b64 chars>", s.len()));
            }
            let dt = t0.map(|t| r.at.saturating_duration_since(t)).unwrap_or_default();
            out.push_str(&format!("[{:>8.3}s] conn {} {}\n", dt.as_secs_f64(), r.conn, m));
        }
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if std::thread::panicking() && self.mode != AgentMode::Refuse {
            eprintln!("----- test agent ({}) -----\n{}----- end of test agent -----", self.url(), self.dump());
        }
    }
}

/// A Twilio `media` message for the agent to send: `{"event":"media","streamSid":sid,"media":{"payload":..}}`.
pub fn media_message(stream_sid: &str, ulaw: &[u8]) -> Value {
    json!({
        "event": "media",
        "streamSid": stream_sid,
        "media": {"payload": base64::engine::general_purpose::STANDARD.encode(ulaw)}
    })
}

#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
async fn agent_connection(stream: tokio::net::TcpStream, sh: Arc<AgentShared>, mode: AgentMode) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    type Handshake = (String, Vec<(String, String)>);
    let captured: Arc<Mutex<Handshake>> = Arc::default();
    let cap = captured.clone();
    let cb = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        *cap.lock().unwrap() = (path, headers);
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
        return;
    };
    let (path, headers) = captured.lock().unwrap().clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
    let id = {
        let mut st = sh.state.lock().unwrap();
        let id = st.conns.len();
        st.conns.push(AgentConn { id, path, headers, opened_at: Instant::now(), closed_at: None, close_frame: None });
        st.senders.push(Some(tx.clone()));
        id
    };
    sh.changed();
    let (mut sink, mut source) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let is_close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() {
                break;
            }
            if is_close {
                // Keep the sink alive so the close handshake completes; the reader ends the connection.
                while rx.recv().await.is_some() {}
                break;
            }
        }
    });
    let mut count = 0usize;
    let mut close_frame = None;
    while let Some(item) = source.next().await {
        let Ok(m) = item else { break };
        let value = match &m {
            Message::Text(t) => {
                serde_json::from_str::<Value>(t.as_str()).unwrap_or_else(|_| json!({"_non_json": t.as_str()}))
            }
            Message::Binary(b) => {
                json!({"_binary": base64::engine::general_purpose::STANDARD.encode(b)})
            }
            Message::Close(f) => {
                close_frame = f.as_ref().map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                break;
            }
            _ => continue,
        };
        if mode == AgentMode::Echo
            && value.get("event").and_then(Value::as_str) == Some("media")
            && let Some(p) = value.pointer("/media/payload").and_then(Value::as_str)
        {
            let sid = value.get("streamSid").and_then(Value::as_str).unwrap_or("");
            let echo = json!({"event": "media", "streamSid": sid, "media": {"payload": p}});
            let _ = tx.send(Message::text(echo.to_string()));
        }
        {
            let mut st = sh.state.lock().unwrap();
            st.msgs.push(Received { conn: id, at: Instant::now(), msg: value });
        }
        sh.changed();
        count += 1;
        if let AgentMode::CloseAfter(n) = mode
            && count == n
        {
            use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
            let _ = tx.send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "test agent closes after N messages".into(),
            })));
        }
    }
    {
        let mut st = sh.state.lock().unwrap();
        st.senders[id] = None;
        let c = &mut st.conns[id];
        c.closed_at = Some(Instant::now());
        c.close_frame = close_frame;
    }
    sh.changed();
    drop(tx);
    writer.abort();
}

// ================================================================================================ sipp

/// `tests/sipp`.
pub fn sipp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

/// The outcome of one sipp run.
#[derive(Debug)]
pub struct SippResult {
    pub status: ExitStatus,
    /// The harness killed sipp after the timeout (sipp's own `-timeout` does not end a call in progress).
    pub killed: bool,
    pub stdout: String,
    pub stderr: String,
    /// `-trace_msg`: every SIP message sent and received.
    pub messages: String,
    /// `-trace_err`: unexpected messages and errors.
    pub errors: String,
    /// `-trace_logs`: the scenario's `<log>` lines.
    pub logs: String,
    pub command: String,
    pub local_port: u16,
    pub media_port: u16,
}

impl SippResult {
    /// Exit code 0 (all calls succeeded) and not killed.
    pub fn success(&self) -> bool {
        self.status.success() && !self.killed
    }
    /// Panics with everything sipp said unless [`SippResult::success`].
    pub fn assert_success(&self, what: &str) {
        assert!(self.success(), "{what}: sipp failed\n{}", self.report());
    }
    pub fn report(&self) -> String {
        format!(
            "command: {}\nstatus: {} killed: {}\n--- stderr ---\n{}\n--- errors ---\n{}\n--- logs ---\n{}\n--- messages ---\n{}\n--- stdout (last 3000 chars) ---\n{}",
            self.command,
            self.status,
            self.killed,
            self.stderr,
            self.errors,
            self.logs,
            self.messages,
            tail(&self.stdout, 3000)
        )
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// A sipp invocation. `Sipp::new(&server, "uac_pcmu_media.xml").service("15551230001").run(timeout)`.
///
/// Always passes `-sf SCENARIO [TARGET] -i 127.0.0.1 -p LPORT -mi 127.0.0.1 -mp MPORT -nostdin
/// -timeout Ns -timeout_error -m 1 -d 0 -trace_msg -trace_err -trace_logs` (with the trace files in a temp dir),
/// `-p`/`-mp` chosen free (`-mp` with mp..mp+3 free: sipp binds mp and mp+2), runs in `tests/fixtures`, and kills
/// sipp if it outlives the timeout by 5 s. Arguments given with `arg`/`args` come last; `-m` and `-d` given there
/// replace the defaults.
pub struct Sipp {
    scenario: Option<PathBuf>,
    builtin: Option<String>,
    target: Option<SocketAddr>,
    args: Vec<String>,
    local_port: u16,
    media_port: u16,
    tcp: bool,
}

impl Sipp {
    /// A scenario against the server's SIP address. `scenario` is a file name in `tests/sipp` or a path.
    pub fn new(server: &Server, scenario: impl AsRef<Path>) -> Sipp {
        Self::to(server.sip_addr(), scenario)
    }
    /// A scenario against any address.
    pub fn to(target: SocketAddr, scenario: impl AsRef<Path>) -> Sipp {
        let mut s = Self::bare(Some(target));
        s.scenario = Some(resolve_scenario(scenario.as_ref()));
        s
    }
    /// A UAS-side scenario (no target): it waits for calls on [`Sipp::local_port`].
    pub fn uas(scenario: impl AsRef<Path>) -> Sipp {
        let mut s = Self::bare(None);
        s.scenario = Some(resolve_scenario(scenario.as_ref()));
        s
    }
    /// One of sipp's embedded scenarios (`-sn uas`, `-sn uac`, ...), against `target` or as a server.
    pub fn builtin(name: &str, target: Option<SocketAddr>) -> Sipp {
        let mut s = Self::bare(target);
        s.builtin = Some(name.to_owned());
        s
    }
    fn bare(target: Option<SocketAddr>) -> Sipp {
        Sipp {
            scenario: None,
            builtin: None,
            target,
            args: Vec::new(),
            local_port: free_port(),
            media_port: free_port_block(4),
            tcp: false,
        }
    }
    /// `-s NUMBER`: the user part of the Request-URI ([service]).
    pub fn service(self, number: &str) -> Sipp {
        self.args(&["-s", number])
    }
    /// `-set NAME VALUE`: a scenario variable `[$NAME]`.
    pub fn set(self, name: &str, value: &str) -> Sipp {
        self.args(&["-set", name, value])
    }
    /// `-d MS`: the length of the scenario's `<pause/>` without attributes.
    pub fn pause_ms(self, ms: u64) -> Sipp {
        self.args(&["-d", &ms.to_string()])
    }
    /// `-t t1`: SIP over one TCP connection.
    pub fn tcp(mut self) -> Sipp {
        self.tcp = true;
        self.args(&["-t", "t1"])
    }
    pub fn arg(mut self, a: &str) -> Sipp {
        self.args.push(a.to_owned());
        self
    }
    pub fn args(mut self, a: &[&str]) -> Sipp {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    /// sipp's SIP port (`-p`).
    pub fn local_port(&self) -> u16 {
        self.local_port
    }
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.local_port))
    }
    /// sipp's media port (`-mp`): the `m=audio` port of its SDP, where RTP for it arrives, and the source
    /// port of the RTP its `play_pcap_audio` sends.
    pub fn media_port(&self) -> u16 {
        self.media_port
    }

    fn command(&self, timeout: Duration, dir: &Path) -> Command {
        let mut c = Command::new("sipp");
        if let Some(s) = &self.scenario {
            c.arg("-sf").arg(s);
        }
        if let Some(b) = &self.builtin {
            c.arg("-sn").arg(b);
        }
        if let Some(t) = self.target {
            c.arg(t.to_string());
        }
        let secs = timeout.as_secs().max(1);
        c.args(["-i", "127.0.0.1", "-p", &self.local_port.to_string()])
            .args(["-mi", "127.0.0.1", "-mp", &self.media_port.to_string()])
            .args(["-nostdin", "-timeout", &format!("{secs}s"), "-timeout_error"]);
        if !self.args.iter().any(|a| a == "-m") {
            c.args(["-m", "1"]);
        }
        if !self.args.iter().any(|a| a == "-d") {
            c.args(["-d", "0"]);
        }
        c.arg("-trace_msg")
            .arg("-message_file")
            .arg(dir.join("messages.log"))
            .arg("-trace_err")
            .arg("-error_file")
            .arg(dir.join("errors.log"))
            .arg("-trace_logs")
            .arg("-log_file")
            .arg(dir.join("logs.log"))
            .args(&self.args)
            .current_dir(fixtures::dir())
            .stdin(Stdio::null());
        c
    }

    /// Starts sipp and returns at once; [`SippRun::wait`] collects the result.
    pub fn spawn(self, timeout: Duration) -> SippRun {
        let dir = tempdir("fairvox-sipp-");
        let mut cmd = self.command(timeout, dir.path());
        let out = File::create(dir.path().join("stdout.log")).unwrap();
        let err = File::create(dir.path().join("stderr.log")).unwrap();
        cmd.stdout(out).stderr(err);
        let command = format!("(cd {} && {:?})", fixtures::dir().display(), cmd).replace('"', "");
        let child =
            cmd.spawn().unwrap_or_else(|e| panic!("cannot run sipp ({e}); install it: apt-get install sip-tester"));
        SippRun {
            child: Some(child),
            dir: Some(dir),
            deadline: Instant::now() + timeout + Duration::from_secs(5),
            command,
            local_port: self.local_port,
            media_port: self.media_port,
            tcp: self.tcp,
        }
    }

    /// Runs sipp to the end (or kills it `timeout` + 5 s after the start).
    pub fn run(self, timeout: Duration) -> SippResult {
        self.spawn(timeout).wait()
    }
}

fn resolve_scenario(p: &Path) -> PathBuf {
    let p =
        if p.is_absolute() || p.exists() && p.components().count() > 1 { p.to_path_buf() } else { sipp_dir().join(p) };
    assert!(p.exists(), "no sipp scenario {}", p.display());
    p
}

/// A running sipp.
pub struct SippRun {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    deadline: Instant,
    command: String,
    local_port: u16,
    media_port: u16,
    tcp: bool,
}

impl SippRun {
    pub fn local_port(&self) -> u16 {
        self.local_port
    }
    pub fn media_port(&self) -> u16 {
        self.media_port
    }
    /// For a UAS-side run: waits until sipp listens on its port (UDP, or TCP with `-t t1`).
    pub fn wait_listening(&self, timeout: Duration) -> bool {
        wait_port_bound(self.local_port, !self.tcp, timeout)
    }
    /// Whether sipp has exited.
    pub fn is_done(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))) | None)
    }
    /// Waits for the exit (killing sipp at the deadline) and collects the result.
    pub fn wait(mut self) -> SippResult {
        let mut child = self.child.take().unwrap();
        let mut killed = false;
        let status = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break st;
            }
            if Instant::now() >= self.deadline {
                killed = true;
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                std::thread::sleep(Duration::from_millis(300));
                let _ = child.kill();
                break child.wait().expect("wait sipp");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.collect(status, killed)
    }
    /// Stops sipp now (SIGTERM, then SIGKILL) and collects the result.
    pub fn kill(mut self) -> SippResult {
        self.deadline = Instant::now();
        self.wait()
    }

    fn collect(&mut self, status: ExitStatus, killed: bool) -> SippResult {
        let dir = self.dir.take().unwrap();
        let read = |n: &str| {
            fs::read(dir.path().join(n)).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
        };
        let res = SippResult {
            status,
            killed,
            stdout: read("stdout.log"),
            stderr: read("stderr.log"),
            messages: read("messages.log"),
            errors: read("errors.log"),
            logs: read("logs.log"),
            command: self.command.clone(),
            local_port: self.local_port,
            media_port: self.media_port,
        };
        if keep_dirs() {
            eprintln!("sipp dir kept: {}", dir.keep().display());
        }
        res
    }
}

impl Drop for SippRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `scenario` (a `tests/sipp` file name or a path) against the server with `args` (e.g.
/// `&["-s", "15551230001"]`), blocking until it ends or `timeout` (+5 s) passes.
pub fn sipp_scenario(server: &Server, scenario: &Path, args: &[&str], timeout: Duration) -> SippResult {
    Sipp::new(server, scenario).args(args).run(timeout)
}

// ================================================================================================ RTP capture
//
// Why AF_PACKET and not tshark: the datagrams we need to see go to a port that sipp owns, so a plain socket
// cannot read them. A packet socket on `lo` bound to ETH_P_IP gets a copy of every IPv4 packet the loopback
// delivers (once: the copy of the outgoing direction goes only to ETH_P_ALL taps), needs no extra package, no
// process to start and wait for, gives kernel receive timestamps (SIOCGSTAMPNS), and we filter by port here.
// It needs CAP_NET_RAW: root, as in CI (sipp's play_pcap_audio needs root too).

/// One UDP datagram seen on loopback.
#[derive(Clone, Debug)]
pub struct Captured {
    /// When the kernel received it (falls back to the read time).
    pub at: Instant,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

impl Captured {
    pub fn rtp(&self) -> Option<RtpPacket> {
        RtpPacket::parse(&self.payload)
    }
}

/// An RTP packet (RFC 3550), header fields and payload (padding removed, extension skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpPacket {
    pub marker: bool,
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

impl RtpPacket {
    pub fn parse(b: &[u8]) -> Option<RtpPacket> {
        if b.len() < 12 || b[0] >> 6 != 2 {
            return None;
        }
        let cc = (b[0] & 0x0f) as usize;
        let mut off = 12 + 4 * cc;
        if b[0] & 0x10 != 0 {
            let ext = b.get(off + 2..off + 4)?;
            off += 4 + 4 * u16::from_be_bytes([ext[0], ext[1]]) as usize;
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            end = end.checked_sub(*b.last()? as usize)?;
        }
        if off > end {
            return None;
        }
        Some(RtpPacket {
            marker: b[1] & 0x80 != 0,
            pt: b[1] & 0x7f,
            seq: u16::from_be_bytes([b[2], b[3]]),
            ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload: b[off..end].to_vec(),
        })
    }

    /// For PT 101 (RFC 4733): (event, end, volume, duration).
    pub fn dtmf(&self) -> Option<(u8, bool, u8, u16)> {
        let p = &self.payload;
        (p.len() >= 4).then(|| (p[0], p[1] & 0x80 != 0, p[1] & 0x3f, u16::from_be_bytes([p[2], p[3]])))
    }
}

/// Which datagrams [`RtpCapture`] keeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureFilter {
    pub dst_port: Option<u16>,
    pub src_port: Option<u16>,
}

/// Captures UDP datagrams on loopback in a background thread for a bounded time, without owning the port.
pub struct RtpCapture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<(Mutex<Vec<Captured>>, Condvar)>,
}

const ETH_P_IP: u16 = 0x0800;
const PACKET_OUTGOING: u8 = 4;
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

impl RtpCapture {
    /// Datagrams sent to 127.0.0.1:`port` (e.g. sipp's `-mp`: "audio played back to the caller"), for at most
    /// 120 s.
    pub fn to_port(port: u16) -> RtpCapture {
        Self::start(CaptureFilter { dst_port: Some(port), src_port: None }, Duration::from_secs(120))
    }
    /// Datagrams sent from `port`.
    pub fn from_port(port: u16) -> RtpCapture {
        Self::start(CaptureFilter { dst_port: None, src_port: Some(port) }, Duration::from_secs(120))
    }
    /// Starts capturing now (the socket is open when this returns) until `stop()`/drop or `max` passes.
    pub fn start(filter: CaptureFilter, max: Duration) -> RtpCapture {
        let fd = open_packet_socket()
            .unwrap_or_else(|e| panic!("RtpCapture needs an AF_PACKET socket (root / CAP_NET_RAW): {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let shared: Arc<(Mutex<Vec<Captured>>, Condvar)> = Arc::default();
        let (st, sh) = (stop.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("rtp-capture".into())
            .spawn(move || capture_loop(fd, filter, max, st, sh))
            .expect("spawn capture thread");
        RtpCapture { stop, thread: Some(thread), shared }
    }
    /// What was captured so far.
    pub fn packets(&self) -> Vec<Captured> {
        self.shared.0.lock().unwrap().clone()
    }
    /// The captured datagrams that parse as RTP.
    pub fn rtp(&self) -> Vec<(Instant, RtpPacket)> {
        self.packets().iter().filter_map(|c| c.rtp().map(|r| (c.at, r))).collect()
    }
    /// Waits until at least `n` datagrams were captured.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut v = self.shared.0.lock().unwrap();
        loop {
            if v.len() >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            v = self.shared.1.wait_timeout(v, deadline - now).unwrap().0;
        }
    }
    /// Stops and returns everything captured.
    pub fn stop(mut self) -> Vec<Captured> {
        self.halt();
        self.packets()
    }
    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RtpCapture {
    fn drop(&mut self) {
        self.halt();
    }
}

fn open_packet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2)/setsockopt(2)/bind(2) calls with valid arguments; the fd is owned right away.
    unsafe {
        let raw =
            libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, (ETH_P_IP.to_be()) as libc::c_int);
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let rcvbuf: libc::c_int = 8 << 20;
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &rcvbuf as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let ifindex = libc::if_nametoindex(c"lo".as_ptr());
        if ifindex == 0 {
            return Err(std::io::Error::other("no loopback interface 'lo'"));
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_IP.to_be();
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(raw, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32)
            < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn capture_loop(
    fd: OwnedFd,
    filter: CaptureFilter,
    max: Duration,
    stop: Arc<AtomicBool>,
    shared: Arc<(Mutex<Vec<Captured>>, Condvar)>,
) {
    let started = Instant::now();
    // Kernel stamps are wall-clock: map them onto Instant through one paired reading.
    let (base_i, base_s) = (Instant::now(), SystemTime::now());
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) && started.elapsed() < max {
        // SAFETY: recvfrom into our buffer and a zeroed sockaddr_ll of the right size.
        let (n, sll) = unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let n = libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut sll as *mut _ as *mut libc::sockaddr,
                &mut len,
            );
            (n, sll)
        };
        if n <= 0 {
            continue; // timeout (EAGAIN) or EINTR: check stop and go on
        }
        if sll.sll_pkttype == PACKET_OUTGOING {
            continue;
        }
        let pkt = &buf[..n as usize];
        let Some((src, dst, payload)) = parse_ipv4_udp(pkt) else {
            continue;
        };
        if filter.dst_port.is_some_and(|p| p != dst.port()) || filter.src_port.is_some_and(|p| p != src.port()) {
            continue;
        }
        let at = kernel_stamp(&fd)
            .and_then(|t| t.duration_since(base_s).ok())
            .map(|d| base_i + d)
            .unwrap_or_else(Instant::now);
        let c = Captured { at, src, dst, payload: payload.to_vec() };
        shared.0.lock().unwrap().push(c);
        shared.1.notify_all();
    }
}

fn kernel_stamp(fd: &OwnedFd) -> Option<SystemTime> {
    // SAFETY: ioctl(SIOCGSTAMPNS) writes one timespec.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS as _, &mut ts) == 0 {
            Some(UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
        } else {
            None
        }
    }
}

/// (src, dst, UDP payload) of an IPv4/UDP packet (unfragmented).
pub fn parse_ipv4_udp(p: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, &[u8])> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let ihl = (p[0] & 0x0f) as usize * 4;
    let total = (u16::from_be_bytes([p[2], p[3]]) as usize).min(p.len());
    let frag = u16::from_be_bytes([p[6], p[7]]) & 0x3fff;
    if frag != 0 || total < ihl + 8 {
        return None;
    }
    let u = &p[ihl..total];
    let ulen = (u16::from_be_bytes([u[4], u[5]]) as usize).clamp(8, u.len());
    let src = SocketAddrV4::new(Ipv4Addr::new(p[12], p[13], p[14], p[15]), u16::from_be_bytes([u[0], u[1]]));
    let dst = SocketAddrV4::new(Ipv4Addr::new(p[16], p[17], p[18], p[19]), u16::from_be_bytes([u[2], u[3]]));
    Some((src, dst, &u[8..ulen]))
}

// ================================================================================================ raw SIP

/// A UDP socket on 127.0.0.1 for hand-made SIP: build messages with [`SipUdpClient::local_addr`] in the Via.
pub struct SipUdpClient {
    pub sock: UdpSocket,
    pub target: SocketAddr,
}

impl SipUdpClient {
    pub fn new(target: SocketAddr) -> SipUdpClient {
        let sock = UdpSocket::bind((LOCALHOST, 0)).expect("bind udp");
        SipUdpClient { sock, target }
    }
    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }
    pub fn send(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.target).expect("udp send");
    }
    /// The next datagram within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).ok()?;
        let mut buf = vec![0u8; 65536];
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }
    /// Every datagram until none came for `quiet` (or `max` passed in all).
    pub fn recv_all(&self, quiet: Duration, max: Duration) -> Vec<Vec<u8>> {
        let end = Instant::now() + max;
        let mut out = Vec::new();
        while Instant::now() < end {
            match self.recv(quiet.min(end.saturating_duration_since(Instant::now()))) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }
    /// The next response whose status is final (>= 200), skipping provisionals.
    pub fn recv_final(&self, timeout: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let m = self.recv(end.saturating_duration_since(Instant::now()))?;
            if sip_status(&m).is_some_and(|s| s >= 200) {
                return Some(m);
            }
        }
        None
    }
}

/// Sends `bytes` in one UDP datagram from an ephemeral 127.0.0.1 port and returns the first datagram that
/// comes back within `timeout`. `{local}` in `bytes` is replaced with that port's `127.0.0.1:PORT` first, so a
/// Via can point at it: `b"OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK1\r\n..."`.
pub fn sip_udp_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let c = SipUdpClient::new(addr);
    c.send(&fill_local(bytes, c.local_addr()));
    c.recv(timeout)
}

fn fill_local(bytes: &[u8], local: SocketAddr) -> Vec<u8> {
    let pat = b"{local}";
    let rep = local.to_string().into_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(pat) {
            out.extend_from_slice(&rep);
            i += pat.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Sends `bytes` over a new TCP connection and returns the first complete SIP message that comes back (headers
/// and Content-Length body) within `timeout`, or whatever arrived before the peer closed. `{local}` as in
/// [`sip_udp_exchange`].
pub fn sip_tcp_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    let local = s.local_addr().ok()?;
    s.write_all(&fill_local(bytes, local)).ok()?;
    let end = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while Instant::now() < end {
        s.set_read_timeout(Some(end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))).ok()?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(len) = complete_sip_len(&buf) {
                    buf.truncate(len);
                    return Some(buf);
                }
            }
            Err(_) => break,
        }
    }
    (!buf.is_empty()).then_some(buf)
}

fn complete_sip_len(buf: &[u8]) -> Option<usize> {
    let hdr_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let clen = sip_header(&buf[..hdr_end], "Content-Length").and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0);
    (buf.len() >= hdr_end + clen).then_some(hdr_end + clen)
}

/// Sends an OPTIONS and returns the status code of the first answer (None if nothing came in 5 s).
pub fn options_ping(addr: SocketAddr) -> Option<u16> {
    let c = SipUdpClient::new(addr);
    c.send(options_request(addr, c.local_addr(), "UDP").as_bytes());
    c.recv(Duration::from_secs(5)).and_then(|m| sip_status(&m))
}

/// A well-formed OPTIONS from `local` to `target`.
pub fn options_request(target: SocketAddr, local: SocketAddr, transport: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    format!(
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK-fvt-{n}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:tester@{local}>;tag=fvt{n}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: fvt-options-{n}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The status code of a SIP response (`SIP/2.0 NNN ...`), None for a request or garbage.
pub fn sip_status(msg: &[u8]) -> Option<u16> {
    let line = msg.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix("SIP/2.0 ")?;
    rest.get(..3)?.parse().ok()
}

/// The first value of header `name` (case-insensitive; the compact form `i`, `f`, `t`, `v`, `l`, `c`, `m` of
/// Call-ID, From, To, Via, Content-Length, Content-Type, Contact also matches).
pub fn sip_header(msg: &[u8], name: &str) -> Option<String> {
    sip_headers(msg, name).into_iter().next()
}

/// All values of header `name` (see [`sip_header`]), in order; comma-joined values are not split.
pub fn sip_headers(msg: &[u8], name: &str) -> Vec<String> {
    let compact = match name.to_ascii_lowercase().as_str() {
        "call-id" => Some("i"),
        "from" => Some("f"),
        "to" => Some("t"),
        "via" => Some("v"),
        "content-length" => Some("l"),
        "content-type" => Some("c"),
        "contact" => Some("m"),
        _ => None,
    };
    let text = String::from_utf8_lossy(msg);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let k = k.trim();
            (k.eq_ignore_ascii_case(name) || compact.is_some_and(|c| k.eq_ignore_ascii_case(c)))
                .then(|| v.trim().to_owned())
        })
        .collect()
}

/// The body (after the blank line) of a SIP message.
pub fn sip_body(msg: &[u8]) -> &[u8] {
    match msg.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &msg[i + 4..],
        None => &[],
    }
}

// ================================================================================================ baresip

/// What one baresip call did.
#[derive(Debug)]
pub struct BaresipResult {
    /// None if the harness had to kill baresip.
    pub status: Option<ExitStatus>,
    /// baresip's console output (SIP progress, "Call established", "terminated", codec choice).
    pub log: String,
    /// The log said "Call established".
    pub established: bool,
    /// The log said the call "terminated" (baresip hangs up when the source WAV ends).
    pub terminated: bool,
    /// Why the call ended without being established, from baresip's "session closed: 404 Not Found".
    pub closed: Option<String>,
    /// What baresip heard (decoded, 8 kHz mono; sndfile's `dump-*-dec.wav`), i.e. the audio fairvox sent it.
    pub heard: Vec<i16>,
    /// What it sent (before encoding; `dump-*-enc.wav`).
    pub sent: Vec<i16>,
}

/// A real softphone call with baresip 1.0 (`apt-get install baresip-core`): it dials `sip:NUMBER@target`, plays
/// a WAV (default `tests/fixtures/speech.wav`) as its microphone, records what it hears, and hangs up when the WAV
/// ends. `Baresip::new().call(server.sip_addr(), "+15551230002", timeout)`.
pub struct Baresip {
    source: PathBuf,
    codecs: String,
    tcp: bool,
    sip_port: u16,
    rtp_lo: u16,
}

impl Default for Baresip {
    fn default() -> Self {
        Self::new()
    }
}

impl Baresip {
    pub fn new() -> Baresip {
        Baresip {
            source: fixtures::path("speech.wav"),
            codecs: "PCMU/8000/1,PCMA/8000/1".into(),
            tcp: false,
            sip_port: free_port(),
            rtp_lo: free_port_block(10),
        }
    }
    /// The WAV (8 kHz 16-bit mono) baresip speaks; the call lasts as long as it.
    pub fn source(mut self, wav: impl AsRef<Path>) -> Baresip {
        self.source = wav.as_ref().to_path_buf();
        self
    }
    /// baresip's `audio_codecs` in preference order, e.g. "PCMA/8000/1".
    pub fn codecs(mut self, codecs: &str) -> Baresip {
        self.codecs = codecs.to_owned();
        self
    }
    /// SIP over TCP (`;transport=tcp`).
    pub fn tcp(mut self) -> Baresip {
        self.tcp = true;
        self
    }
    /// baresip's RTP ports (inclusive): the source port of what it sends, where fairvox's RTP for it arrives.
    pub fn rtp_ports(&self) -> (u16, u16) {
        (self.rtp_lo, self.rtp_lo + 9)
    }
    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }

    /// Dials `number` at `target`, waits for the call to end (or `timeout`), and collects what happened.
    pub fn call(self, target: SocketAddr, number: &str, timeout: Duration) -> BaresipResult {
        let dir = tempdir("fairvox-baresip-");
        let rec = dir.path().join("rec");
        fs::create_dir_all(&rec).unwrap();
        let config = format!(
            "sip_listen\t\t127.0.0.1:{sip}\n\
             net_interface\t\t127.0.0.1\n\
             audio_player\t\taufile,{heard}\n\
             audio_source\t\taufile,{src}\n\
             audio_alert\t\taufile,/dev/null\n\
             rtp_ports\t\t{lo}-{hi}\n\
             module_path\t\t/usr/lib/baresip/modules\n\
             module\t\t\taufile.so\n\
             module\t\t\tg711.so\n\
             module\t\t\tsndfile.so\n\
             module\t\t\taccount.so\n\
             module\t\t\tcontact.so\n\
             module\t\t\tmenu.so\n\
             module\t\t\tuuid.so\n\
             snd_path\t\t{rec}\n",
            sip = self.sip_port,
            heard = dir.path().join("heard.wav").display(),
            src = self.source.display(),
            lo = self.rtp_lo,
            hi = self.rtp_lo + 9,
            rec = rec.display(),
        );
        fs::write(dir.path().join("config"), config).unwrap();
        let transport = if self.tcp { ";transport=tcp" } else { "" };
        fs::write(
            dir.path().join("accounts"),
            format!("<sip:{CALLER_NUMBER}@127.0.0.1{transport}>;regint=0;audio_codecs={}\n", self.codecs),
        )
        .unwrap();
        fs::write(dir.path().join("contacts"), "").unwrap();
        let log_path = dir.path().join("baresip.log");
        let log = File::create(&log_path).unwrap();
        let secs = timeout.as_secs().max(2);
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(dir.path())
            .arg("-e")
            .arg(format!("/dial sip:{number}@{target}{transport}"))
            .arg("-t")
            .arg(secs.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run baresip ({e}); install it: apt-get install baresip-core"));
        let read_log = || fs::read(&log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        // baresip stays up after the call (until -t): stop it once the call is over.
        let deadline = Instant::now() + timeout + Duration::from_secs(2);
        let mut status = None;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                status = Some(st);
                break;
            }
            let l = read_log();
            if l.contains(" terminated") || l.contains("session closed") || Instant::now() >= deadline {
                std::thread::sleep(Duration::from_millis(300)); // let sndfile close its dumps
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGINT);
                }
                let end = Instant::now() + Duration::from_secs(3);
                while Instant::now() < end {
                    if let Ok(Some(st)) = child.try_wait() {
                        status = Some(st);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = read_log();
        let dump = |suffix: &str| {
            fs::read_dir(&rec)
                .ok()
                .and_then(|d| {
                    d.filter_map(Result::ok).map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(suffix))
                })
                .map(|p| wav_samples(&fs::read(p).unwrap_or_default()))
                .unwrap_or_default()
        };
        let res = BaresipResult {
            status,
            established: log.contains("Call established"),
            terminated: log.contains(" terminated"),
            closed: log.lines().find_map(|l| l.split_once("session closed: ").map(|(_, r)| r.trim().to_owned())),
            heard: dump("-dec.wav"),
            sent: dump("-enc.wav"),
            log,
        };
        if keep_dirs() {
            eprintln!("baresip dir kept: {}", dir.keep().display());
        }
        res
    }
}

/// The 16-bit PCM samples of a WAV file (first channel layout as stored; a `data` chunk whose size was never
/// written counts to the end of the file).
pub fn wav_samples(b: &[u8]) -> Vec<i16> {
    if b.len() < 12 || &b[..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Vec::new();
    }
    let mut i = 12;
    while i + 8 <= b.len() {
        let id = &b[i..i + 4];
        let size = u32::from_le_bytes([b[i + 4], b[i + 5], b[i + 6], b[i + 7]]) as usize;
        let body = i + 8;
        if id == b"data" {
            let end = if size == 0 || body + size > b.len() { b.len() } else { body + size };
            return b[body..end].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
        }
        i = body + size + (size & 1);
    }
    Vec::new()
}

// ================================================================================================ fixtures

pub mod fixtures {
    //! `tests/fixtures`: paths, what the generated files hold (keep in step with
    //! `tests/tools/make_fixtures.py`), and a pcap reader.
    use super::RtpPacket;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    pub const SPEECH_BYTES: usize = 24_000; // 3.000 s at 8 kHz, one byte a sample
    pub const TONE_BYTES: usize = 8_000; // 1.000 s
    /// caller_pcmu_20ms.pcap: 150 speech packets, 7 DTMF packets (4 updates + 3 end), 25 tone packets.
    pub const PCMU_SPEECH_PACKETS: usize = 150;
    pub const PCMU_DTMF_PACKETS: usize = 7;
    pub const PCMU_DTMF_END_PACKETS: usize = 3;
    pub const PCMU_TAIL_PACKETS: usize = 25;
    pub const PCMU_PACKETS: usize = PCMU_SPEECH_PACKETS + PCMU_DTMF_PACKETS + PCMU_TAIL_PACKETS;
    pub const PCMU_AUDIO_PACKETS: usize = PCMU_SPEECH_PACKETS + PCMU_TAIL_PACKETS;
    /// Length of caller_pcmu_20ms.payload: (150 + 25) * 160.
    pub const PCMU_PAYLOAD_BYTES: usize = PCMU_AUDIO_PACKETS * 160;
    /// Time from the first to the last packet of caller_pcmu_20ms.pcap.
    pub const PCMU_PCAP_SPAN: Duration = Duration::from_millis(3760);
    pub const DTMF_DIGIT: u8 = 5;
    pub const DTMF_PT: u8 = 101;
    /// RTP timestamp of the DTMF event (all its packets) and its final duration in timestamp units.
    pub const DTMF_TS: u32 = TS0 + 24_000;
    pub const DTMF_DURATION: u16 = 1600;
    /// caller_pcma_30ms.pcap: 100 packets of 240 bytes, PT 8.
    pub const PCMA_PACKETS: usize = 100;
    pub const SEQ0: u16 = 1000;
    pub const TS0: u32 = 16000;
    pub const PCMU_SSRC: u32 = 0x0FA1_F0C5;
    pub const PCMA_SSRC: u32 = 0x0FA1_F0C8;

    pub fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }
    pub fn path(name: &str) -> PathBuf {
        dir().join(name)
    }
    pub fn read(name: &str) -> Vec<u8> {
        std::fs::read(path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }
    /// speech.ulaw: 3 s of espeak-ng speech, raw mu-law.
    pub fn speech_ulaw() -> Vec<u8> {
        read("speech.ulaw")
    }
    /// tone1k.ulaw: 1 s of 1 kHz at -6 dBFS, raw mu-law.
    pub fn tone1k_ulaw() -> Vec<u8> {
        read("tone1k.ulaw")
    }
    /// The PCMU payload bytes caller_pcmu_20ms.pcap carries, concatenated (speech, then 0.5 s tone).
    pub fn pcmu_payload() -> Vec<u8> {
        read("caller_pcmu_20ms.payload")
    }

    /// One RTP packet of a pcap, with its capture time relative to the first packet.
    #[derive(Clone, Debug)]
    pub struct PcapRtp {
        pub t: Duration,
        pub src_port: u16,
        pub dst_port: u16,
        pub rtp: RtpPacket,
    }

    /// Reads a classic pcap (Ethernet or Linux cooked link type, micro- or nanosecond stamps) of IPv4/UDP/RTP.
    pub fn read_pcap(p: &Path) -> Vec<PcapRtp> {
        let b = std::fs::read(p).unwrap_or_else(|e| panic!("pcap {}: {e}", p.display()));
        assert!(b.len() >= 24, "short pcap");
        let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let (le, nanos) = match magic {
            0xa1b2c3d4 => (true, false),
            0xa1b23c4d => (true, true),
            0xd4c3b2a1 => (false, false),
            0x4d3cb2a1 => (false, true),
            m => panic!("not a pcap (magic {m:#x})"),
        };
        let u32_at = |i: usize| {
            let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
            if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
        };
        let link = u32_at(20);
        let l2 = match link {
            1 => 14,   // Ethernet
            113 => 16, // Linux cooked
            0 => 4,    // BSD loopback
            l => panic!("unsupported pcap link type {l}"),
        };
        let mut out = Vec::new();
        let mut i = 24;
        let mut t0 = None;
        while i + 16 <= b.len() {
            let sec = u32_at(i) as u64;
            let frac = u32_at(i + 4) as u64;
            let incl = u32_at(i + 8) as usize;
            let t =
                Duration::from_secs(sec) + if nanos { Duration::from_nanos(frac) } else { Duration::from_micros(frac) };
            let data = &b[i + 16..(i + 16 + incl).min(b.len())];
            i += 16 + incl;
            let t0 = *t0.get_or_insert(t);
            if data.len() <= l2 {
                continue;
            }
            if let Some((src, dst, payload)) = super::parse_ipv4_udp(&data[l2..])
                && let Some(rtp) = RtpPacket::parse(payload)
            {
                out.push(PcapRtp { t: t - t0, src_port: src.port(), dst_port: dst.port(), rtp });
            }
        }
        out
    }
}

// ================================================================================================ G.711

pub mod g711 {
    //! Decoding and level measurement, to check audio by ear-equivalent numbers.

    /// mu-law byte to 16-bit linear (ITU-T G.711).
    pub fn ulaw_to_linear(u: u8) -> i16 {
        let u = !u;
        let t = (((u & 0x0f) as i16) << 3) + 0x84;
        let t = t << ((u & 0x70) >> 4);
        if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }
    }

    /// A-law byte to 16-bit linear (ITU-T G.711).
    pub fn alaw_to_linear(a: u8) -> i16 {
        let a = a ^ 0x55;
        let mut t = ((a & 0x0f) as i16) << 4;
        let seg = (a & 0x70) >> 4;
        match seg {
            0 => t += 8,
            1 => t += 0x108,
            _ => {
                t += 0x108;
                t <<= seg - 1;
            }
        }
        if a & 0x80 != 0 { t } else { -t }
    }

    pub fn decode_ulaw(b: &[u8]) -> Vec<i16> {
        b.iter().map(|&u| ulaw_to_linear(u)).collect()
    }
    pub fn decode_alaw(b: &[u8]) -> Vec<i16> {
        b.iter().map(|&a| alaw_to_linear(a)).collect()
    }

    /// RMS level in dBFS (-inf for empty or digital silence).
    pub fn rms_dbfs(s: &[i16]) -> f64 {
        if s.is_empty() {
            return f64::NEG_INFINITY;
        }
        let sum: f64 = s.iter().map(|&x| (x as f64) * (x as f64)).sum();
        let rms = (sum / s.len() as f64).sqrt();
        20.0 * (rms / 32768.0).log10()
    }

    /// Share (0..1) of the signal's power at `freq` Hz (Goertzel at 8 kHz): ~1 for a pure tone at `freq`.
    pub fn tone_ratio(s: &[i16], freq: f64) -> f64 {
        if s.is_empty() {
            return 0.0;
        }
        let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in s {
            let s0 = x as f64 + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        let total: f64 = s.iter().map(|&x| (x as f64) * (x as f64)).sum();
        if total == 0.0 { 0.0 } else { (2.0 * power / (s.len() as f64 * total)).min(1.0) }
    }
}

/// Resolves `host:port` to the first address (test convenience).
pub fn addr(s: &str) -> SocketAddr {
    s.to_socket_addrs().expect("resolve").next().expect("no address")
}

/// Groups messages by connection: conn id -> messages in order.
pub fn by_connection(msgs: &[Received]) -> HashMap<usize, Vec<Received>> {
    let mut m: HashMap<usize, Vec<Received>> = HashMap::new();
    for r in msgs {
        m.entry(r.conn).or_default().push(r.clone());
    }
    m
}
