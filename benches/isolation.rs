//! Isolation benchmark (issue 3): does a noisy tenant add latency to a quiet one when they share the media workers?
//!
//! One invocation runs three phases on the same build, each on a fresh `fairvox serve` whose media workers are
//! limited (`[media] workers = 1` by default) so that two cores are enough to saturate them:
//!   (a) tenant `q` alone: Q calls at one 20 ms PCMU packet per 20 ms, its agent reading promptly;
//!   (b) `q` with the noisy tenant `n` under `scheduler = "fair"`;
//!   (c) the same under `scheduler = "fifo"`.
//! N tries more calls than its plan's `max_concurrent_calls` (the excess must be refused), floods each call beyond its
//! packetization, and its agent reads slowly. Latency is taken on one clock from the RTP payload markers (generator
//! send instant → agent receive instant, every frame sent in the window); drops and refusals by reason come from
//! the server's `GET /metrics`.
//!
//! ```text
//! cargo bench --bench isolation -- [--phases a,b,c] [--q-calls 20] [--n-calls 150] [--n-quota 100] [--seconds 15]
//! ```
//! `--help` lists every option. Writes `target/bench/isolation.json` and each phase's server log next to it.
//!
//! This file owns the phases, the two-tenant server config, the noisy tenant's generator thread, the targets and
//! the report. The server process, SIP UAC, RTP generator, Media Streams agent and per-frame statistics are the load
//! bench's modules (`benches/load/`); the `/metrics` scraper and parser is `benches/isolation/prom.rs`. Traffic goes
//! to 127.0.0.1 only; every wait has a timeout.

#[allow(dead_code)]
#[path = "load/agent.rs"]
mod agent;
#[allow(dead_code)]
#[path = "isolation/prom.rs"]
mod prom;
#[allow(dead_code)]
#[path = "load/rtp.rs"]
mod rtp;
#[allow(dead_code)]
#[path = "load/rxstamp.rs"]
mod rxstamp;
#[allow(dead_code)]
#[path = "load/server.rs"]
mod server;
#[allow(dead_code)]
#[path = "load/sip.rs"]
mod sip;
#[allow(dead_code)]
#[path = "load/stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::prom::{DROP_REASONS, Scrape, TenantFigures};
use crate::rtp::{Generator, SentPath};
use crate::server::{Mode, Server, ServerSpec};
use crate::sip::{Dialog, SetupError, Uac};
use crate::stats::{AgentCounters, PathSummary, Shared, percentile};

const USAGE: &str = "\
usage: cargo bench --bench isolation -- [options]
  --phases LIST        which phases to run, comma-separated subset of a,b,c (default a,b,c):
                       a = Q alone, b = Q + N under scheduler \"fair\", c = Q + N under scheduler \"fifo\"
  --q-calls N          the quiet tenant's calls, one 20 ms packet per 20 ms each (default 20)
  --n-calls N          calls the noisy tenant tries to place (default 900)
  --n-quota N          the noisy tenant's plan max_concurrent_calls: the calls beyond it must be refused (default 800)
  --n-flood K          packets each noisy call sends per 20 ms; all but one per 20 ms are beyond its
                       packetization and should be policed (default 2; up to 11 the re-framer fills the policed
                       packets' gaps with silence, above it resynchronises instead)
  --n-slow-every K     every K-th of the noisy tenant's calls has a slow agent (default 10; 1 = all, 0 = none)
  --n-agent-delay-ms MS  a slow agent sleeps this long before each WebSocket read (default 100)
  --n-weight W         the noisy tenant's plan weight; the quiet tenant's is 1 (default 1)
  --workers N          [media] workers of the server (default 1; 0 = one per core)
  --worker-busy-pct P  [limits] worker_busy_pct of the server: from P% busy on, tenants at or above their share of
                       the workers get no new calls (default: the server's, 70; 100 = off)
  --seconds S          measurement window per phase (default 15)
  --warmup S           seconds between the last call set up and the window (default 2)
  --cps R              call set-up rate per tenant, calls per second (default 50)
  --setup-timeout S    per-call INVITE → final response limit (default 10)
  --rtp-base PORT      first port of the server's RTP range (default 12000)
  --server-log LEVEL   RUST_LOG for the server (default warn)
  --server-core C      core the server's media worker(s) own, [media] cpus = [C] (default 0); the server's other
                       threads (SIP, HTTP, the runtime) run on the generator core
  --gen-core C         core this generator and both agents are pinned to (default 1)
  --realtime-priority P  [media] realtime_priority of the server: its media worker(s) run under SCHED_FIFO at P
                       on their own core (needs root or CAP_SYS_NICE; not with --shared-core or --no-pin; default:
                       the normal policy)
  --shared-core        the whole server on the server core, media worker and control plane together, without
                       [media] cpus (the layout of the runs before 2026-11-24)
  --no-pin             pin nothing
  --nice N             nice value for the server and the generator, e.g. -20 on a shared VM (default 0); the
                       noisy tenant's generator thread runs under SCHED_IDLE (5 nicer if that is refused), so its
                       flood cannot delay the quiet tenant's sends or its agent's receive timestamps
  --quiet-wait S       before each phase wait up to S seconds for the two cores to fall below 25% busy from others'
                       work; the phase runs anyway after that, its background load recorded (default 30)
  --server-bin PATH    benchmark this binary instead of the one cargo built
  --out PATH           JSON report (default <target>/bench/isolation.json)";

/// The noisy tenant's generator thread runs this much nicer than the quiet tenant's (see `--nice`).
const NOISY_NICE_OFFSET: i32 = 5;
/// Receive buffer of the noisy agent's sockets: small, so that its slow reads back up to the server within a second
/// or two instead of after megabytes of kernel buffering.
const NOISY_AGENT_RCVBUF: usize = 4096;
/// In-window frames still in flight are counted until this long after the window closes.
const GRACE: Duration = Duration::from_secs(1);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
const Q_NUMBER: &str = "+15550101";
const N_NUMBER: &str = "+15550102";

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    A,
    B,
    C,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::A => "a",
            Phase::B => "b",
            Phase::C => "c",
        }
    }

    fn noisy(self) -> bool {
        self != Phase::A
    }

    fn scheduler(self) -> &'static str {
        if self == Phase::C { "fifo" } else { "fair" }
    }

    fn title(self) -> &'static str {
        match self {
            Phase::A => "Q alone (fair)",
            Phase::B => "Q + N, fair",
            Phase::C => "Q + N, fifo",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
struct Args {
    phases: Vec<Phase>,
    q_calls: usize,
    n_calls: usize,
    n_quota: usize,
    n_flood: u32,
    n_agent_delay_ms: u64,
    n_slow_every: u32,
    n_weight: u32,
    workers: usize,
    worker_busy_pct: Option<u8>,
    seconds: f64,
    warmup: f64,
    cps: f64,
    setup_timeout: f64,
    rtp_base: u16,
    server_log: String,
    server_core: usize,
    gen_core: usize,
    /// The whole server on `server_core`, instead of the media workers alone there (`[media] cpus`).
    shared_core: bool,
    /// `[media] realtime_priority` (only with the media workers on a core of their own).
    realtime_priority: Option<u8>,
    pin: bool,
    nice: i32,
    quiet_wait: f64,
    server_bin: String,
    out: PathBuf,
}

impl Args {
    fn parse(raw: impl Iterator<Item = String>) -> Result<Args, String> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        let mut a = Args {
            phases: vec![Phase::A, Phase::B, Phase::C],
            q_calls: 20,
            n_calls: 900,
            n_quota: 800,
            n_flood: 2,
            n_agent_delay_ms: 100,
            n_slow_every: 10,
            n_weight: 1,
            workers: 1,
            worker_busy_pct: None,
            seconds: 15.0,
            warmup: 2.0,
            cps: 50.0,
            setup_timeout: 10.0,
            rtp_base: 12000,
            server_log: "warn".to_owned(),
            server_core: 0,
            gen_core: 1,
            shared_core: false,
            realtime_priority: None,
            pin: true,
            nice: 0,
            quiet_wait: 30.0,
            server_bin: env!("CARGO_BIN_EXE_fairvox").to_owned(),
            out: target.join("bench").join("isolation.json"),
        };
        let mut it = raw.peekable();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{name} needs a value"))
            };
            fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
                v.parse().map_err(|_| format!("{flag}: cannot parse {v:?}"))
            }
            match flag.as_str() {
                "--bench" => {}
                "--help" | "-h" => return Err(String::new()),
                "--phases" => {
                    let mut phases = Vec::new();
                    for p in value(&flag)?.split(',') {
                        let p = match p.trim() {
                            "a" => Phase::A,
                            "b" => Phase::B,
                            "c" => Phase::C,
                            other => return Err(format!("--phases: a, b or c, not {other:?}")),
                        };
                        if !phases.contains(&p) {
                            phases.push(p);
                        }
                    }
                    phases.sort_by_key(|p| p.name());
                    a.phases = phases;
                }
                "--q-calls" => a.q_calls = num(&flag, value(&flag)?)?,
                "--n-calls" => a.n_calls = num(&flag, value(&flag)?)?,
                "--n-quota" => a.n_quota = num(&flag, value(&flag)?)?,
                "--n-flood" => a.n_flood = num(&flag, value(&flag)?)?,
                "--n-agent-delay-ms" => a.n_agent_delay_ms = num(&flag, value(&flag)?)?,
                "--n-slow-every" => a.n_slow_every = num(&flag, value(&flag)?)?,
                "--n-weight" => a.n_weight = num(&flag, value(&flag)?)?,
                "--workers" => a.workers = num(&flag, value(&flag)?)?,
                "--worker-busy-pct" => a.worker_busy_pct = Some(num(&flag, value(&flag)?)?),
                "--seconds" => a.seconds = num(&flag, value(&flag)?)?,
                "--warmup" => a.warmup = num(&flag, value(&flag)?)?,
                "--cps" => a.cps = num(&flag, value(&flag)?)?,
                "--setup-timeout" => a.setup_timeout = num(&flag, value(&flag)?)?,
                "--rtp-base" => a.rtp_base = num(&flag, value(&flag)?)?,
                "--server-log" => a.server_log = value(&flag)?,
                "--server-core" => a.server_core = num(&flag, value(&flag)?)?,
                "--gen-core" => a.gen_core = num(&flag, value(&flag)?)?,
                "--shared-core" => a.shared_core = true,
                "--realtime-priority" => a.realtime_priority = Some(num(&flag, value(&flag)?)?),
                "--no-pin" => a.pin = false,
                "--nice" => a.nice = num(&flag, value(&flag)?)?,
                "--quiet-wait" => a.quiet_wait = num(&flag, value(&flag)?)?,
                "--server-bin" => a.server_bin = value(&flag)?,
                "--out" => a.out = PathBuf::from(value(&flag)?),
                "--smoke" => a.out = target.join("bench").join("isolation-smoke.json"),
                other if other.starts_with('-') => return Err(format!("unknown option {other}")),
                other => eprintln!("isolation: ignoring argument {other:?}"),
            }
        }
        if a.phases.is_empty() {
            return Err("--phases: name at least one phase".to_owned());
        }
        if a.q_calls == 0 || a.n_calls == 0 || a.n_quota == 0 || a.n_flood == 0 || a.n_weight == 0 {
            return Err("--q-calls, --n-calls, --n-quota, --n-flood and --n-weight must be > 0".to_owned());
        }
        if !(a.seconds > 0.0 && a.cps > 0.0 && a.setup_timeout > 0.0 && a.warmup >= 0.0 && a.quiet_wait >= 0.0) {
            return Err("--seconds, --cps and --setup-timeout must be > 0, --warmup and --quiet-wait >= 0".to_owned());
        }
        if a.realtime_priority.is_some() && (a.shared_core || !a.pin) {
            return Err("--realtime-priority needs the media worker on a core of its own (no --shared-core, --no-pin)"
                .to_owned());
        }
        Ok(a)
    }
}

// ---- the report ----

#[derive(Serialize, Clone, Debug)]
struct PhaseResult {
    phase: Phase,
    title: &'static str,
    /// The `[media] scheduler` written into the server's config.
    scheduler: Option<&'static str>,
    workers: Option<usize>,
    /// "ok", or why the phase could not run.
    status: String,
    measured_s: f64,
    q: TenantResult,
    n: Option<TenantResult>,
    /// "ok", or why `/metrics` figures are missing ("n/a: 404" on a server without `/metrics`).
    metrics: String,
    server: ServerFigures,
    generator: GeneratorFigures,
    /// Every core's load over the window, whoever used it.
    cores: Vec<server::CoreLoad>,
    /// The same over one idle second before the first call: other people's load.
    background: Vec<server::CoreLoad>,
    top_processes: Vec<server::Consumer>,
    quiet_wait_s: f64,
}

#[derive(Serialize, Clone, Debug, Default)]
struct TenantResult {
    tenant: &'static str,
    /// The plan's max_concurrent_calls.
    quota: usize,
    calls_attempted: usize,
    calls_admitted: usize,
    /// Final non-2xx answers to INVITE, by status code.
    refused: BTreeMap<u16, usize>,
    /// Set-ups that ended without a final answer (timeout, socket error, bad 200).
    setup_errors: usize,
    first_setup_error: Option<String>,
    setup_ms_p50: Option<f64>,
    setup_ms_max: Option<f64>,
    packets_per_20ms: u32,
    agent_read_delay_ms: u64,
    /// Every K-th call's agent reads with that delay (0: none).
    slow_agent_every: u32,
    /// Generator → agent over the window: frames sent (every packet, flood included) and received with a marker,
    /// latency percentiles over every received frame, to the instant the agent's thread read the frame.
    up: Option<PathSummary>,
    /// The same frames, latency to the kernel's receive stamp of the frame's bytes at the agent's socket: the
    /// ingress-to-provider latency the targets are judged on (see `load/rxstamp.rs`).
    up_wire: Option<PathSummary>,
    agent: AgentCounters,
    /// The server's counters at the end of the phase (after the window and its grace second).
    metrics: Option<TenantFigures>,
    /// The change of those counters over the window (+ grace).
    metrics_window: Option<TenantFigures>,
    bye_200: usize,
    bye_failed: usize,
}

#[derive(Serialize, Clone, Debug, Default)]
struct ServerFigures {
    pid: u32,
    startup_ms: Option<f64>,
    /// All threads, share of one core over the window.
    cpu_pct: Option<f64>,
    /// The busiest threads over the window: a media worker at ~100% is saturated.
    top_threads: Vec<server::Consumer>,
    /// Rests the real-time media workers took (`fairvox_media_worker_rests_total`): in the window, and since start.
    worker_rests_window: Option<f64>,
    worker_rests_total: Option<f64>,
    exit: String,
    log: String,
    log_panics: usize,
    log_errors: usize,
}

#[derive(Serialize, Clone, Debug, Default)]
struct GeneratorFigures {
    /// This process (both tenants' generators and agents, the UACs) over the window, share of one core.
    cpu_pct: Option<f64>,
    top_threads: Vec<server::Consumer>,
    q_pacing_lateness_us_p99: Option<f64>,
    /// Q's send calls, marker instant to return (µs): p99, p999, max. Part of Q's measured latency that is the
    /// generator's own (its thread, and the kernel's loopback delivery on the generator's core).
    q_send_call_us: [Option<f64>; 3],
    q_send_errors: u64,
    q_skipped: u64,
    n_send_errors: u64,
    /// Packets the noisy generator skipped because it fell behind: N's load was that much lower than asked.
    n_skipped: u64,
}

#[derive(Serialize, Clone, Debug)]
struct Target {
    name: String,
    /// `None`: could not be decided (a phase missing or failed, or a figure unavailable).
    pass: Option<bool>,
    detail: String,
}

#[derive(Serialize)]
struct Report<'a> {
    machine: Machine,
    args: &'a Args,
    phases: &'a [PhaseResult],
    targets: &'a [Target],
}

#[derive(Serialize)]
struct Machine {
    nproc: usize,
    cpu: String,
    kernel: String,
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // `cargo nextest` lists each target's tests first: this one has none.
    if raw.iter().any(|a| a == "--list") {
        return;
    }
    // `cargo test --benches` runs a bench with no arguments: a short smoke run of every phase, failing if one cannot
    // run or the quiet tenant's media does not flow.
    let smoke = raw.is_empty();
    let raw = if smoke {
        println!("isolation: no arguments (cargo test?): smoke run; `cargo bench --bench isolation` to measure");
        [
            "--q-calls",
            "3",
            "--n-calls",
            "6",
            "--n-quota",
            "4",
            "--seconds",
            "2",
            "--warmup",
            "0.5",
            "--quiet-wait",
            "0",
            "--smoke",
        ]
        .map(String::from)
        .to_vec()
    } else {
        raw
    };
    let args = match Args::parse(raw.into_iter()) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("isolation: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    stats::self_check();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let pin = args.pin && nproc >= 2;
    if pin {
        if let Err(e) = server::pin_self(args.gen_core) {
            eprintln!("isolation: could not pin the generator to core {}: {e}", args.gen_core);
        }
    } else if args.pin {
        eprintln!("isolation: {nproc} core(s): server and generator share them, figures are not isolated");
    }
    if args.nice != 0
        && let Err(e) = server::renice_self(args.nice)
    {
        eprintln!("isolation: could not set nice {} for the generator: {e}", args.nice);
    }
    let nofile = server::raise_nofile();
    let sockets = 2 * (args.q_calls + args.n_calls) + 64;
    if nofile > 0 && (nofile as usize) < sockets {
        eprintln!("isolation: open-files limit {nofile} is too low for {sockets} sockets");
    }
    let out_dir = args.out.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("isolation: cannot create {}: {e}", out_dir.display());
        std::process::exit(1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("isolation: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let machine = Machine { nproc, cpu: cpu_model(), kernel: read_trim("/proc/sys/kernel/osrelease") };
    println!(
        "isolation: server {} | {} core(s), {} | kernel {} | {}",
        args.server_bin,
        nproc,
        machine.cpu,
        machine.kernel,
        match (pin, args.shared_core) {
            (false, _) => "not pinned".to_owned(),
            (true, true) =>
                format!("server core {} (all its threads), generator core {}", args.server_core, args.gen_core),
            (true, false) => format!(
                "media worker core {} ([media] cpus{}), the server's other threads and the generator core {}",
                args.server_core,
                args.realtime_priority.map_or(String::new(), |p| format!(", SCHED_FIFO {p}")),
                args.gen_core
            ),
        },
    );
    println!(
        "isolation: Q {} calls x 1 packet/20 ms | N tries {} calls (quota {}), {} packets/20 ms each, every {}th \
         call's agent slow (read delay {} ms), weight {} | [media] workers = {} | [limits] worker_busy_pct = {}",
        args.q_calls,
        args.n_calls,
        args.n_quota,
        args.n_flood,
        args.n_slow_every,
        args.n_agent_delay_ms,
        args.n_weight,
        args.workers,
        args.worker_busy_pct.map_or("default".to_owned(), |p| p.to_string()),
    );
    let mut phases = Vec::new();
    for &phase in &args.phases {
        println!(
            "\n== phase ({}) {}: set-up at {} calls/s per tenant, {} s warm-up, {} s window ==",
            phase.name(),
            phase.title(),
            args.cps,
            args.warmup,
            args.seconds
        );
        let r = runtime.block_on(run_phase(&args, phase, pin, &out_dir));
        print_phase(&r);
        phases.push(r);
    }
    let targets = targets(&args, &phases);
    println!();
    print_table(&phases);
    println!();
    print_targets(&targets);
    let report = Report { machine, args: &args, phases: &phases, targets: &targets };
    match serde_json::to_string_pretty(&report).map(|j| std::fs::write(&args.out, j)) {
        Ok(Ok(())) => println!("\nisolation: wrote {}", args.out.display()),
        Ok(Err(e)) => eprintln!("isolation: writing {}: {e}", args.out.display()),
        Err(e) => eprintln!("isolation: JSON: {e}"),
    }
    let failed: Vec<String> = phases
        .iter()
        .filter(|r| r.status != "ok" || (smoke && r.q.up.as_ref().is_none_or(|u| u.received == 0)))
        .map(|r| format!("phase ({}): {}", r.phase.name(), r.status))
        .collect();
    if !failed.is_empty() {
        eprintln!("isolation: {} phase(s) did not run: {}", failed.len(), failed.join("; "));
        std::process::exit(1);
    }
    if smoke {
        println!("isolation smoke: {} phase(s) ran", phases.len());
    }
}

// ---- one phase ----

/// Aborts the phase's background tasks when dropped, whatever path the phase leaves by.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The noisy tenant's own thread and runtime (pinned with the generator, under `SCHED_IDLE`, or `NOISY_NICE_OFFSET`
/// nicer where that is refused): its flood and its slow agent run there, on whatever core time the quiet tenant's
/// measuring tasks leave, and the quiet tenant's agent preempts it the moment its socket has data. What is measured
/// is the server's isolation, not the two generators' fight over one core; the noisy tenant's achieved send rate is
/// reported, so a starved flood would show. Dropping it ends every task on it.
struct NoisyThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NoisyThread {
    fn start(nice: i32) -> Result<NoisyThread, String> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("noisy".to_owned())
            .spawn(move || {
                if server::idle_self().is_err() {
                    let _ = server::renice_self(nice);
                }
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(format!("noisy runtime: {e}")));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| format!("noisy thread: {e}"))?;
        let handle = handle_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "noisy thread did not start".to_owned())
            .and_then(|r| r)?;
        Ok(NoisyThread { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Runs `f` on the noisy thread and waits for it (at most `timeout`).
    async fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, String> {
        let task = self.handle.spawn(f);
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("noisy task: {e}")),
            Err(_) => Err(format!("noisy task did not finish within {timeout:?}")),
        }
    }
}

impl Drop for NoisyThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One tenant's calls: placed, fed by `generator`, and hung up.
struct Placement {
    dialogs: Vec<Dialog>,
    setup_ms: Vec<f64>,
    refused: BTreeMap<u16, usize>,
    errors: usize,
    first_error: Option<String>,
}

/// Places `n` calls through `uac` at `cps` calls/s and adds each answered one to `generator`. Every attempt is made,
/// whatever the earlier ones got; each outcome is awaited within `timeout` (+2 s for the last).
async fn place_calls(uac: Arc<Uac>, generator: Arc<Generator>, n: usize, cps: f64, timeout: Duration) -> Placement {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Result<Dialog, SetupError>)>();
    let started = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / cps)).into()).await;
        let (uac, generator, tx) = (uac.clone(), generator.clone(), tx.clone());
        let idx = i as u32;
        tokio::spawn(async move {
            let outcome = async {
                let sock = UdpSocket::bind("127.0.0.1:0").await.map_err(|e| SetupError::Io(e.to_string()))?;
                let local = sock.local_addr().map_err(|e| SetupError::Io(e.to_string()))?;
                let d = uac.invite(idx, local, timeout).await?;
                // What the server plays back to the caller is not read: this bench measures caller → agent only.
                generator.add(idx, Arc::new(sock), d.remote_rtp);
                Ok(d)
            }
            .await;
            let _ = tx.send((idx, outcome));
        });
    }
    drop(tx);
    let mut p =
        Placement { dialogs: Vec::new(), setup_ms: Vec::new(), refused: BTreeMap::new(), errors: 0, first_error: None };
    let deadline = Instant::now() + timeout + Duration::from_secs(2);
    for _ in 0..n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((_, Ok(d)))) => {
                p.setup_ms.push(d.setup.as_secs_f64() * 1000.0);
                p.dialogs.push(d);
            }
            Ok(Some((_, Err(SetupError::Rejected(code, _))))) => *p.refused.entry(code).or_default() += 1,
            Ok(Some((idx, Err(e)))) => {
                p.errors += 1;
                p.first_error.get_or_insert_with(|| format!("call {idx}: {e}"));
            }
            Ok(None) | Err(_) => {
                p.errors += 1;
                p.first_error.get_or_insert_with(|| "a set-up never finished".to_owned());
            }
        }
    }
    p.setup_ms.sort_by(f64::total_cmp);
    p
}

/// Stops the calls' RTP and hangs them up (BYE) at `rate` calls/s; returns (200s, others and failures).
async fn hang_up(dialogs: Vec<Dialog>, rate: f64, uac: Arc<Uac>, generator: Arc<Generator>) -> (usize, usize) {
    generator.clear();
    let bye_timeout = Duration::from_secs(5);
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<u16, String>>();
    let started = Instant::now();
    let count = dialogs.len();
    for (j, d) in dialogs.into_iter().enumerate() {
        tokio::time::sleep_until((started + Duration::from_secs_f64(j as f64 / rate)).into()).await;
        let (uac, tx) = (uac.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(uac.bye(&d, bye_timeout).await);
        });
    }
    let deadline = Instant::now() + bye_timeout + Duration::from_secs(1);
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..count {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(Ok(200))) => ok += 1,
            _ => failed += 1,
        }
    }
    (ok, failed)
}

/// A per-tenant measurement state on the bench's one clock.
fn shared(calls: usize, epoch: Instant) -> Arc<Shared> {
    let mut s = Shared::new(calls, 50_000_000);
    s.set_epoch(epoch);
    Arc::new(s)
}

fn tenant_result(
    tenant: &'static str,
    quota: usize,
    attempted: usize,
    flood: u32,
    (delay_ms, slow_every): (u64, u32),
) -> TenantResult {
    TenantResult {
        tenant,
        quota,
        calls_attempted: attempted,
        packets_per_20ms: flood,
        agent_read_delay_ms: delay_ms,
        slow_agent_every: slow_every,
        ..TenantResult::default()
    }
}

fn record_placement(t: &mut TenantResult, p: &Placement) {
    t.calls_admitted = p.dialogs.len();
    t.refused = p.refused.clone();
    t.setup_errors = p.errors;
    t.first_setup_error = p.first_error.clone();
    t.setup_ms_p50 = percentile(&p.setup_ms, 0.5);
    t.setup_ms_max = p.setup_ms.last().copied();
}

async fn run_phase(args: &Args, phase: Phase, pin: bool, out_dir: &Path) -> PhaseResult {
    let cores: Vec<usize> = if pin { vec![args.server_core, args.gen_core] } else { vec![0, 1] };
    let waited = server::wait_quiet(&cores, Duration::from_secs_f64(args.quiet_wait)).await;
    let mut r = PhaseResult {
        phase,
        title: phase.title(),
        scheduler: Some(phase.scheduler()),
        workers: Some(args.workers),
        status: "ok".to_owned(),
        measured_s: 0.0,
        q: tenant_result("q", args.q_calls, args.q_calls, 1, (0, 0)),
        n: phase.noisy().then(|| {
            let slow = (args.n_agent_delay_ms, args.n_slow_every);
            tenant_result("n", args.n_quota, args.n_calls, args.n_flood, slow)
        }),
        metrics: "not scraped".to_owned(),
        server: ServerFigures::default(),
        generator: GeneratorFigures::default(),
        cores: Vec::new(),
        background: Vec::new(),
        top_processes: Vec::new(),
        quiet_wait_s: waited.as_secs_f64(),
    };
    let epoch = Instant::now();
    let q_shared = shared(args.q_calls, epoch);
    let n_shared = shared(args.n_calls, epoch);
    let mut tasks = Tasks(Vec::new());

    // The agents: Q's on this thread, N's (slow, small receive buffer) on the noisy thread, idle in phase (a).
    let q_listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => return fail(r, format!("Q agent listener: {e}")),
    };
    let Ok(q_agent) = q_listener.local_addr() else { return fail(r, "Q agent listener has no address".to_owned()) };
    tasks.0.push(tokio::spawn(agent::serve(q_listener, q_shared.clone(), false)));
    let noisy = match NoisyThread::start((args.nice + NOISY_NICE_OFFSET).clamp(-20, 19)) {
        Ok(t) => t,
        Err(e) => return fail(r, e),
    };
    let n_listener = match slow_listener(NOISY_AGENT_RCVBUF) {
        Ok(l) => l,
        Err(e) => return fail(r, format!("N agent listener: {e}")),
    };
    let Ok(n_agent) = n_listener.local_addr() else { return fail(r, "N agent listener has no address".to_owned()) };
    {
        let (shared, delay, slow_every) =
            (n_shared.clone(), Duration::from_millis(args.n_agent_delay_ms), args.n_slow_every);
        tasks.0.push(noisy.handle.spawn(async move {
            match TcpListener::from_std(n_listener) {
                Ok(l) => agent::serve_with(l, shared, false, delay, slow_every).await,
                Err(e) => eprintln!("isolation: N agent listener: {e}"),
            }
        }));
    }

    // The server.
    let (Ok(sip_port), Ok(http_port)) = (server::free_port(), server::free_port()) else {
        return fail(r, "no free loopback port".to_owned());
    };
    let sip_addr: SocketAddr = ([127, 0, 0, 1], sip_port).into();
    let http_addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let calls = args.q_calls + args.n_calls;
    let rtp_span = (4 * calls).max(1000).min(usize::from(u16::MAX - args.rtp_base)) as u16;
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(r, format!("temp dir: {e}")),
    };
    let config = match write_config(dir.path(), args, pin, phase, q_agent, n_agent) {
        Ok(c) => c,
        Err(e) => return fail(r, format!("writing the config: {e}")),
    };
    let log = out_dir.join(format!("isolation-{}.server.log", phase.name()));
    r.server.log = log.display().to_string();
    let spec = ServerSpec {
        mode: Mode::Stream,
        agent: None,
        max_calls: calls,
        sip: sip_addr,
        http: http_addr,
        rtp_lo: args.rtp_base,
        rtp_hi: args.rtp_base + rtp_span - 1,
        dir: dir.path(),
        log: &log,
        cores: match (pin, args.shared_core) {
            (false, _) => Vec::new(),
            (true, true) => vec![args.server_core],
            (true, false) => vec![args.server_core, args.gen_core],
        },
        nice: args.nice,
        rust_log: &args.server_log,
    };
    let mut srv = match Server::start_with_config(&args.server_bin, &spec, &config) {
        Ok(s) => s,
        Err(e) => return fail(r, format!("starting {}: {e}", args.server_bin)),
    };
    r.server.pid = srv.pid;
    match srv.wait_healthy(http_addr, Duration::from_secs(20)) {
        Ok(t) => r.server.startup_ms = Some(t.as_secs_f64() * 1000.0),
        Err(e) => {
            r.server.exit = srv.stop(Duration::from_secs(5));
            scan_log(&mut r.server);
            return fail(r, format!("{e}; see {}", log.display()));
        }
    }
    // `/metrics` is operator-only: the token the server generated into its data dir at start (none on a server
    // from before the API, whose `/metrics` is open).
    let operator_token =
        std::fs::read_to_string(dir.path().join("data").join("admin-token")).ok().map(|t| t.trim().to_owned());
    let idle_ticks = server::core_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.background = server::core_load(&idle_ticks, &server::core_ticks());

    // Q's calls first, all of them: Q is the tenant measured, and it must not be refused.
    let run = format!("{}{}", std::process::id(), phase.name());
    let setup_timeout = Duration::from_secs_f64(args.setup_timeout);
    let q_gen = Generator::new(q_shared.clone(), SentPath::Up);
    tasks.0.push(tokio::spawn(q_gen.clone().run()));
    let q_uac = match Uac::bind_calling(sip_addr, &format!("{run}q"), Q_NUMBER).await {
        Ok(u) => u,
        Err(e) => return stop_and_fail(r, srv, format!("Q SIP socket: {e}")),
    };
    tasks.0.push(tokio::spawn(q_uac.clone().dispatch()));
    let started = Instant::now();
    let q_placed = place_calls(q_uac.clone(), q_gen.clone(), args.q_calls, args.cps, setup_timeout).await;
    record_placement(&mut r.q, &q_placed);
    println!(
        "  Q set-up: {}/{} admitted in {:.1} s, refused {:?}, errors {}{}",
        r.q.calls_admitted,
        args.q_calls,
        started.elapsed().as_secs_f64(),
        r.q.refused,
        r.q.setup_errors,
        r.q.first_setup_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    if r.q.calls_admitted != args.q_calls {
        r.status = format!("only {} of Q's {} calls set up", r.q.calls_admitted, args.q_calls);
    }

    // Then N's, on the noisy thread: every attempt is made, the excess over its quota should be refused.
    let mut n_side: Option<(Arc<Uac>, Arc<Generator>, Vec<Dialog>)> = None;
    if phase.noisy() && r.status == "ok" {
        let n_gen = Generator::with_flood(n_shared.clone(), SentPath::Up, args.n_flood);
        tasks.0.push(noisy.handle.spawn(n_gen.clone().run()));
        let name = format!("{run}n");
        let bind = async move { Uac::bind_calling(sip_addr, &name, N_NUMBER).await };
        let n_uac = match noisy.run(Duration::from_secs(5), bind).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => return stop_and_fail(r, srv, format!("N SIP socket: {e}")),
            Err(e) => return stop_and_fail(r, srv, e),
        };
        tasks.0.push(noisy.handle.spawn(n_uac.clone().dispatch()));
        let started = Instant::now();
        let budget = Duration::from_secs_f64(args.n_calls as f64 / args.cps) + setup_timeout + Duration::from_secs(5);
        let placed =
            noisy.run(budget, place_calls(n_uac.clone(), n_gen.clone(), args.n_calls, args.cps, setup_timeout)).await;
        let placed = match placed {
            Ok(p) => p,
            Err(e) => return stop_and_fail(r, srv, format!("N set-up: {e}")),
        };
        let n = r.n.get_or_insert_with(TenantResult::default);
        record_placement(n, &placed);
        println!(
            "  N set-up: {}/{} admitted in {:.1} s (quota {}), refused {:?}, errors {}{}",
            n.calls_admitted,
            args.n_calls,
            started.elapsed().as_secs_f64(),
            args.n_quota,
            n.refused,
            n.setup_errors,
            n.first_setup_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
        );
        if n.calls_admitted == 0 {
            r.status = "none of N's calls was admitted: there is no noise to measure against".to_owned();
        }
        n_side = Some((n_uac, n_gen, placed.dialogs));
    }

    // Warm-up, then the window.
    if r.status == "ok" {
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        if let Some(status) = srv.exited() {
            r.status = format!("server exited during warm-up: {status}");
        }
    }
    if r.status == "ok" {
        let before = scrape(http_addr, operator_token.clone()).await;
        let all0 = server::all_processes_cpu();
        let (st0, gt0) = (server::threads_cpu(srv.pid), server::threads_cpu(std::process::id()));
        let (s0, g0, c0) = (srv.sample(), server::proc_sample(std::process::id()), server::core_ticks());
        let t0 = q_shared.now_ns();
        q_shared.window.open(t0);
        n_shared.window.open(t0);
        tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
        let t1 = q_shared.now_ns();
        q_shared.window.close(t1);
        n_shared.window.close(t1);
        let (s1, g1, c1) = (srv.sample(), server::proc_sample(std::process::id()), server::core_ticks());
        let (st1, gt1) = (server::threads_cpu(srv.pid), server::threads_cpu(std::process::id()));
        let secs = (t1 - t0) as f64 / 1e9;
        r.measured_s = secs;
        r.cores = server::core_load(&c0, &c1);
        r.top_processes = server::top_consumers(&all0, &server::all_processes_cpu(), secs, 6);
        r.server.top_threads = server::top_consumers(&st0, &st1, secs, 4);
        r.generator.top_threads = server::top_consumers(&gt0, &gt1, secs, 4);
        if let (Some(s0), Some(s1)) = (s0, s1) {
            r.server.cpu_pct = Some(100.0 * (s1.cpu_s - s0.cpu_s) / secs);
        }
        if let (Some(g0), Some(g1)) = (g0, g1) {
            r.generator.cpu_pct = Some(100.0 * (g1.cpu_s - g0.cpu_s) / secs);
        }
        tokio::time::sleep(GRACE).await;
        let after = scrape(http_addr, operator_token.clone()).await;
        if let Some(status) = srv.exited() {
            r.status = format!("server exited during the window: {status}");
        }
        r.q.up = Some(q_shared.up.lock().summary(&q_shared.window));
        r.q.up_wire = Some(q_shared.up_wire.lock().summary(&q_shared.window));
        if let Some(n) = r.n.as_mut() {
            n.up = Some(n_shared.up.lock().summary(&n_shared.window));
            n.up_wire = Some(n_shared.up_wire.lock().summary(&n_shared.window));
        }
        match (before, after) {
            (Ok(Some(b)), Ok(Some(a))) => {
                r.metrics = "ok".to_owned();
                let rests = |s: &[prom::Sample]| {
                    s.iter().find(|s| s.name == "fairvox_media_worker_rests_total").map(|s| s.value)
                };
                r.server.worker_rests_total = rests(&a);
                r.server.worker_rests_window = rests(&a).zip(rests(&b)).map(|(a, b)| a - b);
                let (qb, qa) = (TenantFigures::from_samples(&b, "q"), TenantFigures::from_samples(&a, "q"));
                r.q.metrics_window = Some(qa.minus(&qb));
                r.q.metrics = Some(qa);
                if let Some(n) = r.n.as_mut() {
                    let (nb, na) = (TenantFigures::from_samples(&b, "n"), TenantFigures::from_samples(&a, "n"));
                    n.metrics_window = Some(na.minus(&nb));
                    n.metrics = Some(na);
                }
            }
            (Ok(None), _) | (_, Ok(None)) => r.metrics = "n/a: GET /metrics is 404 on this server".to_owned(),
            (Err(e), _) | (_, Err(e)) => r.metrics = format!("n/a: {e}"),
        }
        let mut g = q_shared.generator.lock();
        g.lateness_us.sort_unstable();
        r.generator.q_pacing_lateness_us_p99 = percentile(&g.lateness_us, 0.99).map(f64::from);
        g.send_us.sort_unstable();
        r.generator.q_send_call_us = [0.99, 0.999, 1.0].map(|q| percentile(&g.send_us, q).map(f64::from));
    }

    // Tear-down: both tenants' calls hung up at once, each at twice the set-up rate.
    let q_bye = hang_up(q_placed.dialogs, 2.0 * args.cps, q_uac, q_gen.clone());
    let n_bye = async {
        match n_side {
            Some((uac, gen_, dialogs)) => {
                noisy.run(Duration::from_secs(30), hang_up(dialogs, 2.0 * args.cps, uac, gen_)).await.ok()
            }
            None => None,
        }
    };
    let ((q_ok, q_failed), n_bye) = tokio::join!(q_bye, n_bye);
    (r.q.bye_200, r.q.bye_failed) = (q_ok, q_failed);
    if let (Some(n), Some((ok, failed))) = (r.n.as_mut(), n_bye) {
        (n.bye_200, n.bye_failed) = (ok, failed);
    }
    // Give the server a moment to send Q's agent its `stop`s (N's slow agent would take its backlog's time).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if q_shared.agent.lock().stop_events >= r.q.calls_admitted as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.q.agent = q_shared.agent.lock().clone();
    if let Some(n) = r.n.as_mut() {
        n.agent = n_shared.agent.lock().clone();
    }
    {
        let g = q_shared.generator.lock();
        (r.generator.q_send_errors, r.generator.q_skipped) = (g.send_errors, g.skipped);
        let g = n_shared.generator.lock();
        (r.generator.n_send_errors, r.generator.n_skipped) = (g.send_errors, g.skipped);
    }
    drop(tasks);
    drop(noisy);
    r.server.exit = srv.stop(Duration::from_secs(15));
    scan_log(&mut r.server);
    r
}

/// `GET /metrics` off the runtime's thread (the quiet agent keeps reading meanwhile): the samples, `None` on 404.
async fn scrape(http: SocketAddr, operator_token: Option<String>) -> Result<Option<Vec<prom::Sample>>, String> {
    let got = tokio::task::spawn_blocking(move || prom::scrape(http, operator_token.as_deref(), SCRAPE_TIMEOUT))
        .await
        .map_err(|e| format!("scrape task: {e}"))??;
    match got {
        Scrape::Absent => Ok(None),
        Scrape::Text(text) => {
            let e = prom::parse(&text);
            if !e.bad_lines.is_empty() {
                eprintln!("isolation: /metrics: {} line(s) did not parse, first {}", e.bad_lines.len(), e.bad_lines[0]);
            }
            Ok(Some(e.samples))
        }
    }
}

/// A loopback listener whose accepted sockets get a receive buffer of `rcvbuf` bytes (set before `listen`, so the
/// TCP window is negotiated small), non-blocking for tokio.
fn slow_listener(rcvbuf: usize) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_recv_buffer_size(rcvbuf)?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Two tenants on plans of their own: `q` (weight 1, room for exactly its calls) and `n` (`--n-weight`, quota
/// `--n-quota`); call rates far above the set-up pace and a node cap above both, so the only refusals are N's
/// concurrency cap.
fn write_config(
    dir: &Path,
    args: &Args,
    pin: bool,
    phase: Phase,
    q_agent: SocketAddr,
    n_agent: SocketAddr,
) -> std::io::Result<PathBuf> {
    let cpus = if pin && !args.shared_core {
        let realtime = args.realtime_priority.map_or(String::new(), |p| format!("realtime_priority = {p}\n"));
        format!("cpus = [{}]\n{realtime}", args.server_core)
    } else {
        String::new()
    };
    let media = format!("[media]\nworkers = {}\nscheduler = \"{}\"\n{cpus}\n", args.workers, phase.scheduler());
    let tenant = |id: &str, plan: &str, agent: SocketAddr, number: &str| {
        format!(
            "[[tenants]]\nid = \"{id}\"\nplan = \"{plan}\"\n\n[[tenants.apps]]\nname = \"agent\"\nkind = \"stream\"\n\
             stream_url = \"ws://{agent}/stream\"\ncodecs = [\"PCMU\"]\n\n[[tenants.numbers]]\nnumber = \"{number}\"\n\
             app = \"agent\"\n\n"
        )
    };
    let plan = |name: &str, weight: u32, quota: usize| {
        format!(
            "[plans.{name}]\nweight = {weight}\nmax_concurrent_calls = {quota}\ncalls_per_second = 1000\nburst = 1000\n\
             monthly_minutes = \"unlimited\"\n\n"
        )
    };
    let toml = format!(
        "# Written by benches/isolation.rs, phase ({phase}): {title}\n[rtp]\ninactivity_timeout_secs = 30\n\n\
         [limits]\nmax_calls = {node_cap}\n{busy}\n{media}{q_plan}{n_plan}{q_tenant}{n_tenant}",
        phase = phase.name(),
        title = phase.title(),
        node_cap = args.q_calls + args.n_calls + 16,
        busy = args.worker_busy_pct.map_or(String::new(), |p| format!("worker_busy_pct = {p}\n")),
        q_plan = plan("quiet", 1, args.q_calls),
        n_plan = plan("noisy", args.n_weight, args.n_quota),
        q_tenant = tenant("q", "quiet", q_agent, Q_NUMBER),
        n_tenant = tenant("n", "noisy", n_agent, N_NUMBER),
    );
    let path = dir.join("fairvox.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

fn fail(mut r: PhaseResult, why: String) -> PhaseResult {
    println!("  STOP: {why}");
    r.status = why;
    r
}

fn stop_and_fail(mut r: PhaseResult, srv: Server, why: String) -> PhaseResult {
    r.server.exit = srv.stop(Duration::from_secs(15));
    scan_log(&mut r.server);
    fail(r, why)
}

fn scan_log(s: &mut ServerFigures) {
    if let Ok(text) = std::fs::read_to_string(&s.log) {
        s.log_panics = text.lines().filter(|l| l.contains("panicked")).count();
        s.log_errors = text.lines().filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains(" ERROR ")).count();
    }
}

// ---- targets ----

/// Q's ingress-to-provider p99: generator send to the frame's bytes in the agent's socket.
fn q_p99(phases: &[PhaseResult], p: Phase) -> Option<f64> {
    phases.iter().find(|r| r.phase == p && r.status == "ok")?.q.up_wire.as_ref()?.p99_us
}

/// Q's p99 to the agent's thread reading the frame (includes the agent's wake-up on the generator's core).
fn q_p99_read(phases: &[PhaseResult], p: Phase) -> Option<f64> {
    phases.iter().find(|r| r.phase == p && r.status == "ok")?.q.up.as_ref()?.p99_us
}

fn targets(args: &Args, phases: &[PhaseResult]) -> Vec<Target> {
    let mut out = Vec::new();
    let (a, b, c) = (q_p99(phases, Phase::A), q_p99(phases, Phase::B), q_p99(phases, Phase::C));
    out.push(match (a, b) {
        (Some(a), Some(b)) if a > 0.0 => Target {
            name: "Q p99 (b) <= 1.25 x Q p99 (a)".to_owned(),
            pass: Some(b <= 1.25 * a),
            detail: format!("{b:.0} µs vs {a:.0} µs: {:.2}x (aim 1.10x)", b / a),
        },
        _ => Target {
            name: "Q p99 (b) <= 1.25 x Q p99 (a)".to_owned(),
            pass: None,
            detail: "needs phases (a) and (b), both run".to_owned(),
        },
    });
    let phase_b = phases.iter().find(|r| r.phase == Phase::B && r.status == "ok");
    out.push(match phase_b.and_then(|r| r.q.up.as_ref().map(|u| (r, u))) {
        Some((r, up)) => {
            let frames_ok = up.received == up.sent && up.duplicate == 0;
            let drops = r.q.metrics.as_ref().map(TenantFigures::dropped_total);
            let detail = format!(
                "frames sent {} received {} in the window; server drop counters {}",
                up.sent,
                up.received,
                match (&r.q.metrics, drops) {
                    (Some(m), Some(_)) => fmt_drops(m),
                    _ => r.metrics.clone(),
                }
            );
            let pass = match drops {
                _ if !frames_ok => Some(false),
                Some(d) => Some(d == 0.0),
                None => None,
            };
            Target { name: "zero Q drops in (b)".to_owned(), pass, detail }
        }
        None => {
            Target { name: "zero Q drops in (b)".to_owned(), pass: None, detail: "phase (b) did not run".to_owned() }
        }
    });
    for r in phases.iter().filter(|r| r.phase.noisy() && r.status == "ok") {
        if let Some(n) = &r.n {
            out.push(Target {
                name: format!("N admitted <= its quota in ({})", r.phase.name()),
                pass: Some(n.calls_admitted <= args.n_quota),
                detail: format!(
                    "{} of {} attempts admitted, quota {}, refused {:?}",
                    n.calls_admitted, n.calls_attempted, args.n_quota, n.refused
                ),
            });
        }
    }
    if let (Some(a), Some(c)) = (a, c)
        && a > 0.0
    {
        out.push(Target {
            name: "(no target) Q p99 (c) / Q p99 (a): what FIFO does".to_owned(),
            pass: None,
            detail: format!("{c:.0} µs vs {a:.0} µs: {:.2}x", c / a),
        });
    }
    let read = |p| q_p99_read(phases, p);
    if let (Some(a), Some(b)) = (read(Phase::A), read(Phase::B))
        && a > 0.0
    {
        let c = read(Phase::C).map_or(String::new(), |c| format!(", (c) {c:.0} µs: {:.2}x", c / a));
        out.push(Target {
            name: "(no target) Q p99 to the agent's read, generator core shared with N".to_owned(),
            pass: None,
            detail: format!("(a) {a:.0} µs, (b) {b:.0} µs: {:.2}x{c}", b / a),
        });
    }
    out
}

// ---- printing ----

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn fmt_drops(m: &TenantFigures) -> String {
    let mut parts: Vec<String> =
        DROP_REASONS.iter().map(|r| format!("{r} {}", m.drops.get(*r).copied().unwrap_or(0.0))).collect();
    parts.extend(m.drops.iter().filter(|(k, _)| !DROP_REASONS.contains(&k.as_str())).map(|(k, v)| format!("{k} {v}")));
    parts.join(", ")
}

fn print_phase(r: &PhaseResult) {
    for t in std::iter::once(&r.q).chain(r.n.as_ref()) {
        if let Some(up) = &t.up {
            println!(
                "  {}: sent {} received {} | p50 {} p99 {} p999 {} max {} µs | p50 first/last fifth {} → {} µs | \
                 ooo {} dup {} crossed {} corrupt {} filler {}",
                t.tenant,
                up.sent,
                up.received,
                fmt_opt(up.p50_us, 0),
                fmt_opt(up.p99_us, 0),
                fmt_opt(up.p999_us, 0),
                fmt_opt(up.max_us, 0),
                fmt_opt(up.p50_first_fifth_us, 0),
                fmt_opt(up.p50_last_fifth_us, 0),
                up.out_of_order,
                up.duplicate,
                up.crossed,
                up.corrupt,
                up.filler
            );
        }
        if let Some(w) = &t.up_wire {
            println!(
                "  {} at the agent's socket (kernel stamp): received {} | p50 {} p99 {} p999 {} max {} µs",
                t.tenant,
                w.received,
                fmt_opt(w.p50_us, 0),
                fmt_opt(w.p99_us, 0),
                fmt_opt(w.p999_us, 0),
                fmt_opt(w.max_us, 0),
            );
        }
        match &t.metrics {
            Some(m) => println!(
                "  {} /metrics: frames inbound {} | dropped: {} | rejected {:?} | sched wait {}",
                t.tenant,
                m.frames_inbound,
                fmt_drops(m),
                m.rejected,
                m.sched_wait.as_ref().map_or("n/a".to_owned(), |h| format!(
                    "count {} mean {} µs p99 ≤ {} s",
                    h.count,
                    fmt_opt(h.mean_us(), 0),
                    h.quantile_le(0.99).unwrap_or("-")
                ))
            ),
            None => println!("  {} /metrics: {}", t.tenant, r.metrics),
        }
        println!(
            "  {} agent: {} connections, {} media, {} stops, {} errors | BYE 200 {} failed {}",
            t.tenant,
            t.agent.connections,
            t.agent.media_events,
            t.agent.stop_events,
            t.agent.errors + t.agent.handshake_failures + t.agent.bad_json,
            t.bye_200,
            t.bye_failed
        );
    }
    let threads = |v: &[server::Consumer]| {
        v.iter().map(|c| format!("{}[{}] {:.1}%", c.comm, c.pid, c.cpu_pct)).collect::<Vec<_>>().join(", ")
    };
    println!(
        "  server: {}% of a core; busiest threads {} | generator {}% ({}) | Q pacing p99 {} µs, Q send call \
         p99/p999/max {}/{}/{} µs, N skipped {} | worker rests {} in the window, {} since start",
        fmt_opt(r.server.cpu_pct, 1),
        threads(&r.server.top_threads),
        fmt_opt(r.generator.cpu_pct, 1),
        threads(&r.generator.top_threads),
        fmt_opt(r.generator.q_pacing_lateness_us_p99, 0),
        fmt_opt(r.generator.q_send_call_us[0], 0),
        fmt_opt(r.generator.q_send_call_us[1], 0),
        fmt_opt(r.generator.q_send_call_us[2], 0),
        r.generator.n_skipped,
        fmt_opt(r.server.worker_rests_window, 0),
        fmt_opt(r.server.worker_rests_total, 0)
    );
    if r.phase.noisy() && r.status == "ok" && r.server.cpu_pct.is_some_and(|c| c < 90.0) {
        println!(
            "  NOTE: the server used only {}% of its core over the window: its media worker(s) may not have been \
             saturated; raise --n-flood or --n-calls/--n-quota (or check what else ran on the generator core)",
            fmt_opt(r.server.cpu_pct, 0)
        );
    }
    let load =
        |c: &[server::CoreLoad]| c.iter().map(|c| format!("core {} {:.0}%", c.core, c.busy_pct)).collect::<Vec<_>>();
    println!("  cores busy before the calls: {:?} | over the window: {:?}", load(&r.background), load(&r.cores));
    let top: Vec<String> = r.top_processes.iter().map(|c| format!("{}[{}] {:.1}%", c.comm, c.pid, c.cpu_pct)).collect();
    println!("  top processes over the window: {}", top.join(", "));
    println!(
        "  server {} | log panics {} errors {} | phase {}",
        r.server.exit, r.server.log_panics, r.server.log_errors, r.status
    );
}

fn print_table(phases: &[PhaseResult]) {
    println!(
        "{:<8} {:<6} {:>9} {:>17} {:>34} {:>22} {:>22} {:>11} {:>18}",
        "phase",
        "tenant",
        "calls a/a",
        "frames sent/recv",
        "drops deadl/qfull/policed/slow",
        "to socket p50/p99/p999",
        "to read p50/p99/p999",
        "sched p99≤",
        "server p50/p99≤ s"
    );
    for r in phases {
        let label = format!("({}) {}", r.phase.name(), r.scheduler.unwrap_or(""));
        for t in std::iter::once(&r.q).chain(r.n.as_ref()) {
            let (frames, lat) = t.up.as_ref().map_or(("-".to_owned(), "-".to_owned()), |u| {
                (
                    format!("{}/{}", u.sent, u.received),
                    format!("{}/{}/{}", fmt_opt(u.p50_us, 0), fmt_opt(u.p99_us, 0), fmt_opt(u.p999_us, 0)),
                )
            });
            let wire = t.up_wire.as_ref().map_or("-".to_owned(), |u| {
                format!("{}/{}/{}", fmt_opt(u.p50_us, 0), fmt_opt(u.p99_us, 0), fmt_opt(u.p999_us, 0))
            });
            let (drops, wait, server) = match &t.metrics {
                Some(m) => (
                    DROP_REASONS
                        .iter()
                        .map(|k| format!("{}", m.drops.get(*k).copied().unwrap_or(0.0)))
                        .collect::<Vec<_>>()
                        .join("/"),
                    m.sched_wait
                        .as_ref()
                        .and_then(|h| h.quantile_le(0.99))
                        .map_or("n/a".to_owned(), |le| format!("{le} s")),
                    // The server's own figure: kernel receive stamp to the agent's WebSocket write, as bucket bounds.
                    m.inbound_latency.as_ref().map_or("n/a".to_owned(), |h| {
                        format!("{}/{}", h.quantile_le(0.5).unwrap_or("-"), h.quantile_le(0.99).unwrap_or("-"))
                    }),
                ),
                None => ("n/a".to_owned(), "n/a".to_owned(), "n/a".to_owned()),
            };
            println!(
                "{:<8} {:<6} {:>9} {:>17} {:>34} {:>22} {:>22} {:>11} {:>18}{}",
                label,
                t.tenant,
                format!("{}/{}", t.calls_attempted, t.calls_admitted),
                frames,
                drops,
                wire,
                lat,
                wait,
                server,
                if r.status == "ok" { String::new() } else { format!("  [{}]", r.status) }
            );
        }
    }
}

fn print_targets(targets: &[Target]) {
    for t in targets {
        let verdict = match t.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => " -- ",
        };
        println!("[{verdict}] {}: {}", t.name, t.detail);
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn cpu_model() -> String {
    read_trim("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_default()
}
