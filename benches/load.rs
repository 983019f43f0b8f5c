//! End-to-end load benchmark: a fresh `fairvox serve` per ramp step, pinned to one core, driven from the other by
//! an in-process SIP UAC (one UDP socket, like sipp), an RTP generator (one timer loop for every call) and a Twilio
//! Media Streams agent (tokio-tungstenite). Every RTP payload carries a marker (call, frame number, send instant),
//! so each hop's latency is measured on one clock, and loss, reordering and cross-talk are counted per frame.
//!
//! ```text
//! cargo bench --bench load -- [--calls 50,100,200] [--seconds 15] [--mode stream|echo|both]
//! ```
//! Run `cargo bench --bench load -- --help` for every option. Writes `target/bench/load.json` and the server's log
//! for each step next to it. Traffic goes to 127.0.0.1 only; every wait has a timeout.

#[path = "load/agent.rs"]
mod agent;
#[path = "load/rtp.rs"]
mod rtp;
#[path = "load/rxstamp.rs"]
mod rxstamp;
#[path = "load/server.rs"]
mod server;
#[path = "load/sip.rs"]
mod sip;
#[path = "load/stats.rs"]
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::rtp::{Generator, SentPath};
use crate::server::{Mode, ProcSample, Server, ServerSpec};
use crate::sip::{Dialog, SipCounters, Uac};
use crate::stats::{AgentCounters, PathSummary, Shared, percentile};

const USAGE: &str = "\
usage: cargo bench --bench load -- [options]
  --calls LIST         concurrent calls per ramp step, comma-separated (default 50,100,200)
  --seconds S          measurement window per step (default 15)
  --mode M             stream | echo | both (default both)
  --warmup S           seconds between the last call set up and the window (default 2)
  --cps R              call set-up (and BYE) rate, calls per second (default 50)
  --setup-timeout S    per-call INVITE → 200 limit; one failure ends the step (default 10)
  --late-ms MS         a frame slower than this counts as late (default 50)
  --talk-back on|off   stream mode: the agent returns every frame it gets, exercising the paced path back to the
                       caller and measuring the round trip (default on)
  --rtp-base PORT      first port of the server's RTP range (default 12000; the range is max(4N,1000) ports, kept
                       below the kernel's ephemeral range that the generator's own sockets use)
  --server-log LEVEL   RUST_LOG for the server (default warn)
  --server-core C      core the server is pinned to (default 0)
  --gen-core C         core this generator is pinned to (default 1)
  --no-pin             pin nothing
  --nice N             nice value for the server and the generator, e.g. -10 to win the pinned cores from other
                       people's builds on a shared machine (default 0: no change)
  --quiet-wait S       before each step wait up to S seconds for the two cores to fall below 25% busy from
                       others' work; the step runs anyway after that, its background load recorded (default 30)
  --waves K            after the measured round, K-1 more rounds of N calls (set up, 2 s, BYE) on the same
                       server, with RSS and fds after each: a leak grows round after round (default 1)
  --keep-going         run the higher steps of a mode even after a step failed
  --server-bin PATH    benchmark this binary instead of the one cargo built
  --out PATH           JSON report (default <target>/bench/load.json)";

#[derive(Clone, Debug, Serialize)]
struct Args {
    calls: Vec<usize>,
    seconds: f64,
    modes: Vec<Mode>,
    warmup: f64,
    cps: f64,
    setup_timeout: f64,
    late_ms: u64,
    talk_back: bool,
    rtp_base: u16,
    server_log: String,
    server_core: usize,
    gen_core: usize,
    pin: bool,
    nice: i32,
    quiet_wait: f64,
    keep_going: bool,
    waves: usize,
    server_bin: String,
    out: PathBuf,
}

impl Args {
    fn parse(raw: impl Iterator<Item = String>) -> Result<Args, String> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        let mut a = Args {
            calls: vec![50, 100, 200],
            seconds: 15.0,
            modes: vec![Mode::Stream, Mode::Echo],
            warmup: 2.0,
            cps: 50.0,
            setup_timeout: 10.0,
            late_ms: 50,
            talk_back: true,
            rtp_base: 12000,
            server_log: "warn".to_owned(),
            server_core: 0,
            gen_core: 1,
            pin: true,
            nice: 0,
            quiet_wait: 30.0,
            keep_going: false,
            waves: 1,
            server_bin: env!("CARGO_BIN_EXE_fairvox").to_owned(),
            out: target.join("bench").join("load.json"),
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
                "--calls" => {
                    a.calls = value(&flag)?
                        .split(',')
                        .map(|s| num::<usize>("--calls", s.trim().to_owned()))
                        .collect::<Result<_, _>>()?;
                    if a.calls.is_empty() || a.calls.contains(&0) {
                        return Err("--calls: give positive counts".to_owned());
                    }
                }
                "--seconds" => a.seconds = num(&flag, value(&flag)?)?,
                "--warmup" => a.warmup = num(&flag, value(&flag)?)?,
                "--cps" => a.cps = num(&flag, value(&flag)?)?,
                "--setup-timeout" => a.setup_timeout = num(&flag, value(&flag)?)?,
                "--late-ms" => a.late_ms = num(&flag, value(&flag)?)?,
                "--rtp-base" => a.rtp_base = num(&flag, value(&flag)?)?,
                "--server-core" => a.server_core = num(&flag, value(&flag)?)?,
                "--gen-core" => a.gen_core = num(&flag, value(&flag)?)?,
                "--server-log" => a.server_log = value(&flag)?,
                "--server-bin" => a.server_bin = value(&flag)?,
                "--out" => a.out = PathBuf::from(value(&flag)?),
                "--no-pin" => a.pin = false,
                "--nice" => a.nice = num(&flag, value(&flag)?)?,
                "--quiet-wait" => a.quiet_wait = num(&flag, value(&flag)?)?,
                "--keep-going" => a.keep_going = true,
                "--smoke" => a.out = target.join("bench").join("load-smoke.json"),
                "--waves" => a.waves = num(&flag, value(&flag)?)?,
                "--talk-back" => {
                    a.talk_back = match value(&flag)?.as_str() {
                        "on" | "true" | "1" => true,
                        "off" | "false" | "0" => false,
                        v => return Err(format!("--talk-back: on or off, not {v:?}")),
                    }
                }
                "--mode" => {
                    a.modes = match value(&flag)?.as_str() {
                        "stream" => vec![Mode::Stream],
                        "echo" => vec![Mode::Echo],
                        "both" => vec![Mode::Stream, Mode::Echo],
                        v => return Err(format!("--mode: stream, echo or both, not {v:?}")),
                    }
                }
                other if other.starts_with('-') => return Err(format!("unknown option {other}")),
                other => eprintln!("load: ignoring argument {other:?}"),
            }
        }
        if !(a.seconds > 0.0 && a.cps > 0.0 && a.setup_timeout > 0.0 && a.warmup >= 0.0) {
            return Err("--seconds, --cps and --setup-timeout must be > 0, --warmup >= 0".to_owned());
        }
        Ok(a)
    }
}

/// One ramp step's results, as written to the JSON report.
#[derive(Serialize, Clone, Debug)]
struct StepResult {
    mode: Mode,
    calls: usize,
    established: usize,
    /// "ok", or why the step ended early.
    status: String,
    setup_failures: usize,
    setup_ms: Quantiles,
    measured_s: f64,
    /// Caller → agent (stream mode only): RTP send → `media` decoded by the agent.
    up: Option<PathSummary>,
    /// Back to the caller: echo mode, RTP send → echoed RTP received (includes the server's playout tick);
    /// stream mode with talk-back, RTP send → agent → server → RTP received (the whole round trip).
    back: Option<PathSummary>,
    server: ServerFigures,
    generator: GeneratorFigures,
    /// Every core's load over the window, whoever used it (other engineers' jobs included).
    cores: Vec<server::CoreLoad>,
    /// The same over one second before the first call, with the server idle: other people's load.
    background: Vec<server::CoreLoad>,
    /// The processes that used the most CPU over the window (the server and this generator among them): anything
    /// else was competing for the machine.
    top_processes: Vec<server::Consumer>,
    /// How long the step waited for the cores to go quiet first.
    quiet_wait_s: f64,
    sip: SipCounters,
    agent: Option<AgentCounters>,
    teardown: Teardown,
    /// Rounds 2..=K of `--waves K`: RSS and fds after each.
    waves: Vec<WaveSample>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct Quantiles {
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct ServerFigures {
    pid: u32,
    startup_ms: Option<f64>,
    /// (utime + stime over the window) ÷ (established calls × window seconds), in µs of CPU per call-second.
    cpu_us_per_call_s: Option<f64>,
    /// Share of one core over the window.
    cpu_pct: Option<f64>,
    /// (VmRSS at the end of the window − VmRSS idle) ÷ established calls.
    rss_per_call_kib: Option<f64>,
    idle: Option<ProcSample>,
    loaded: Option<ProcSample>,
    after_teardown: Option<ProcSample>,
    exit: String,
    log: String,
    log_panics: usize,
    log_errors: usize,
}

#[derive(Serialize, Clone, Debug, Default)]
struct GeneratorFigures {
    /// This whole process (UAC, RTP generator and receivers, agent) over the window, share of one core.
    cpu_pct: Option<f64>,
    frames_sent_total: u64,
    send_errors: u64,
    skipped: u64,
    /// How late the generator's in-window frames left against their 20 ms grid, µs.
    pacing_lateness_us: Quantiles,
}

#[derive(Serialize, Clone, Debug, Default)]
struct Teardown {
    bye_200: usize,
    bye_other: Vec<u16>,
    bye_failed: usize,
    first_bye_failure: Option<String>,
    /// Stream mode: `stop` events and closed agent sockets counted after the BYEs.
    agent_stops: u64,
    agent_closed: u64,
}

/// A further round of the same calls on the same server (`--waves`).
#[derive(Serialize, Clone, Debug)]
struct WaveSample {
    wave: usize,
    established: usize,
    bye_200: usize,
    loaded_rss_kib: Option<u64>,
    after_rss_kib: Option<u64>,
    after_fds: Option<u64>,
}

#[derive(Serialize)]
struct Report<'a> {
    machine: Machine,
    args: &'a Args,
    steps: &'a [StepResult],
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
    // `cargo test --benches` (or `--all-targets`) runs a bench with no arguments: do a short smoke run that fails
    // the test if calls cannot be set up or media does not flow, as criterion runs each benchmark once as a test.
    let smoke = raw.is_empty();
    let raw = if smoke {
        println!(
            "load: no arguments (cargo test?): smoke run, 5 calls for 2 s per mode; `cargo bench --bench load` to measure"
        );
        ["--calls", "5", "--seconds", "2", "--warmup", "0.5", "--quiet-wait", "0", "--smoke"].map(String::from).to_vec()
    } else {
        raw
    };
    let args = match Args::parse(raw.into_iter()) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("load: {e}");
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
            eprintln!("load: could not pin the generator to core {}: {e}", args.gen_core);
        }
    } else if args.pin {
        eprintln!("load: {nproc} core(s): server and generator share them, figures are not isolated");
    }
    if args.nice != 0
        && let Err(e) = server::renice_self(args.nice)
    {
        eprintln!("load: could not set nice {} for the generator: {e}", args.nice);
    }
    let nofile = server::raise_nofile();
    let max_calls = args.calls.iter().copied().max().unwrap_or(0);
    if nofile > 0 && (nofile as usize) < 2 * max_calls + 64 {
        eprintln!("load: open-files limit {nofile} is too low for {max_calls} calls (2 sockets each)");
    }
    let out_dir = args.out.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("load: cannot create {}: {e}", out_dir.display());
        std::process::exit(1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let machine = Machine { nproc, cpu: cpu_model(), kernel: read_trim("/proc/sys/kernel/osrelease") };
    println!(
        "load: server {} | {} core(s), {} | kernel {} | server core {}, generator core {}",
        args.server_bin,
        nproc,
        machine.cpu,
        machine.kernel,
        if pin { args.server_core.to_string() } else { "-".into() },
        if pin { args.gen_core.to_string() } else { "-".into() },
    );
    let mut steps = Vec::new();
    let mut step_no = 0;
    for &mode in &args.modes {
        for &n in &args.calls {
            step_no += 1;
            println!(
                "\n== {} mode, {n} calls: set-up at {} calls/s, {} s warm-up, {} s window ==",
                mode.name(),
                args.cps,
                args.warmup,
                args.seconds
            );
            let r = runtime.block_on(run_step(&args, mode, n, step_no, pin, &out_dir));
            print_step(&r);
            let failed = r.status != "ok";
            steps.push(r);
            if failed && !args.keep_going {
                println!(
                    "load: {} ramp stops at {n} calls (step did not complete; --keep-going to go on)",
                    mode.name()
                );
                break;
            }
        }
    }
    println!();
    print_table(&steps);
    let report = Report { machine, args: &args, steps: &steps };
    match serde_json::to_string_pretty(&report).map(|j| std::fs::write(&args.out, j)) {
        Ok(Ok(())) => println!("\nload: wrote {}", args.out.display()),
        Ok(Err(e)) => eprintln!("load: writing {}: {e}", args.out.display()),
        Err(e) => eprintln!("load: JSON: {e}"),
    }
    if smoke {
        let failed: Vec<String> = steps
            .iter()
            .filter(|r| {
                let flowed = [&r.up, &r.back].iter().filter_map(|p| p.as_ref()).all(|p| p.received > 0);
                r.status != "ok" || !flowed || r.established != r.calls
            })
            .map(|r| format!("{} {}: {}", r.mode.name(), r.calls, r.status))
            .collect();
        println!("load smoke: {} passed, {} failed", steps.len() - failed.len(), failed.len());
        if !failed.is_empty() {
            eprintln!("load smoke failed: {}", failed.join("; "));
            std::process::exit(1);
        }
    }
}

/// Aborts the step's background tasks when dropped, whatever path the step leaves by.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

type SetupOutcome = (u32, Result<(Dialog, JoinHandle<()>), String>);

/// The set-up phase's outcomes so far.
#[derive(Default)]
struct SetupTally {
    dialogs: Vec<Dialog>,
    setup_ms: Vec<f64>,
    failures: usize,
    first_failure: Option<String>,
}

impl SetupTally {
    fn record(&mut self, (idx, outcome): SetupOutcome, tasks: &mut Tasks) {
        match outcome {
            Ok((d, rx_task)) => {
                self.setup_ms.push(d.setup.as_secs_f64() * 1000.0);
                self.dialogs.push(d);
                tasks.0.push(rx_task);
            }
            Err(e) => {
                self.failures += 1;
                self.first_failure.get_or_insert_with(|| format!("call {idx}: {e}"));
            }
        }
    }
}

async fn run_step(
    args: &Args,
    mode: Mode,
    n: usize,
    step_no: usize,
    pin: bool,
    out_dir: &std::path::Path,
) -> StepResult {
    let cores: Vec<usize> = if pin { vec![args.server_core, args.gen_core] } else { vec![0, 1] };
    let waited = server::wait_quiet(&cores, Duration::from_secs_f64(args.quiet_wait)).await;
    let shared = Arc::new(Shared::new(n, args.late_ms * 1_000_000));
    let mut r = StepResult {
        mode,
        calls: n,
        established: 0,
        status: "ok".to_owned(),
        setup_failures: 0,
        setup_ms: Quantiles::default(),
        measured_s: 0.0,
        up: None,
        back: None,
        server: ServerFigures::default(),
        generator: GeneratorFigures::default(),
        cores: Vec::new(),
        background: Vec::new(),
        quiet_wait_s: waited.as_secs_f64(),
        top_processes: Vec::new(),
        sip: SipCounters::default(),
        agent: None,
        teardown: Teardown::default(),
        waves: Vec::new(),
    };
    let mut tasks = Tasks(Vec::new());

    // The agent (stream mode).
    let agent_addr = if mode == Mode::Stream {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => return fail(r, format!("agent listener: {e}")),
        };
        let addr = listener.local_addr().ok();
        tasks.0.push(tokio::spawn(agent::serve(listener, shared.clone(), args.talk_back)));
        addr
    } else {
        None
    };

    // The server.
    let (Ok(sip_port), Ok(http_port)) = (server::free_port(), server::free_port()) else {
        return fail(r, "no free loopback port".to_owned());
    };
    let sip_addr: SocketAddr = ([127, 0, 0, 1], sip_port).into();
    let http_addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let rtp_span = (4 * n).max(1000).min(usize::from(u16::MAX - args.rtp_base)) as u16;
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(r, format!("temp dir: {e}")),
    };
    let log = out_dir.join(format!("load-{}-{n}.server.log", mode.name()));
    r.server.log = log.display().to_string();
    let spec = ServerSpec {
        mode,
        agent: agent_addr,
        max_calls: (2 * n).max(4000),
        sip: sip_addr,
        http: http_addr,
        rtp_lo: args.rtp_base,
        rtp_hi: args.rtp_base + rtp_span - 1,
        dir: dir.path(),
        log: &log,
        cores: if pin { vec![args.server_core] } else { Vec::new() },
        nice: args.nice,
        rust_log: &args.server_log,
    };
    let mut srv = match Server::start(&args.server_bin, &spec) {
        Ok(s) => s,
        Err(e) => return fail(r, format!("starting {}: {e}", args.server_bin)),
    };
    r.server.pid = srv.pid;
    match srv.wait_healthy(http_addr, Duration::from_secs(20)) {
        Ok(t) => r.server.startup_ms = Some(t.as_secs_f64() * 1000.0),
        Err(e) => {
            r.server.exit = srv.stop(Duration::from_secs(5));
            scan_log(&mut r);
            return fail(r, e);
        }
    }
    // One idle second: the cores' load now is everybody else's (the machine is shared).
    let idle_ticks = server::core_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.background = server::core_load(&idle_ticks, &server::core_ticks());
    r.server.idle = srv.sample();

    // The caller side.
    let path = if mode == Mode::Stream { SentPath::Up } else { SentPath::Back };
    let generator = Generator::new(shared.clone(), path);
    tasks.0.push(tokio::spawn(generator.clone().run()));
    let uac = match Uac::bind(sip_addr, &format!("{}x{step_no}", std::process::id())).await {
        Ok(u) => u,
        Err(e) => {
            r.server.exit = srv.stop(Duration::from_secs(5));
            return fail(r, format!("SIP socket: {e}"));
        }
    };
    tasks.0.push(tokio::spawn(uac.clone().dispatch()));

    // Set-up, paced; the first failure ends the step.
    let setup_timeout = Duration::from_secs_f64(args.setup_timeout);
    let started = Instant::now();
    let setup = set_up_calls(n, args.cps, setup_timeout, &uac, &shared, &generator, &mut srv, &mut tasks).await;
    let setup_elapsed = started.elapsed();
    let SetupTally { dialogs, mut setup_ms, failures, first_failure } = setup;
    r.established = dialogs.len();
    r.setup_failures = failures;
    setup_ms.sort_by(f64::total_cmp);
    r.setup_ms =
        Quantiles { p50: percentile(&setup_ms, 0.50), p99: percentile(&setup_ms, 0.99), max: setup_ms.last().copied() };
    println!(
        "  set-up: {}/{n} established in {:.1} s (INVITE → 200 p50 {} ms, p99 {} ms)",
        r.established,
        setup_elapsed.as_secs_f64(),
        fmt_opt(r.setup_ms.p50, 1),
        fmt_opt(r.setup_ms.p99, 1)
    );
    if let Some(f) = first_failure {
        r.status = format!("set-up failed after {} established: {f}", r.established);
        println!("  STOP: {}", r.status);
    }

    // Warm-up and the measurement window.
    if r.status == "ok" {
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        if let Some(status) = srv.exited() {
            r.status = format!("server exited during warm-up: {status}");
        }
    }
    if r.status == "ok" {
        let all0 = server::all_processes_cpu();
        let (s0, g0, c0) = (srv.sample(), server::proc_sample(std::process::id()), server::core_ticks());
        let t0 = shared.now_ns();
        shared.window.open(t0);
        tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
        let t1 = shared.now_ns();
        shared.window.close(t1);
        let (s1, g1, c1) = (srv.sample(), server::proc_sample(std::process::id()), server::core_ticks());
        r.cores = server::core_load(&c0, &c1);
        r.top_processes = server::top_consumers(&all0, &server::all_processes_cpu(), (t1 - t0) as f64 / 1e9, 6);
        let secs = (t1 - t0) as f64 / 1e9;
        r.measured_s = secs;
        let est = r.established.max(1) as f64;
        if let (Some(s0), Some(s1)) = (s0, s1) {
            let cpu = s1.cpu_s - s0.cpu_s;
            r.server.cpu_pct = Some(100.0 * cpu / secs);
            r.server.cpu_us_per_call_s = Some(1e6 * cpu / (est * secs));
            if let Some(idle) = r.server.idle {
                r.server.rss_per_call_kib = Some((s1.rss_kib as f64 - idle.rss_kib as f64) / est);
            }
        }
        r.server.loaded = s1;
        if let (Some(g0), Some(g1)) = (g0, g1) {
            r.generator.cpu_pct = Some(100.0 * (g1.cpu_s - g0.cpu_s) / secs);
        }
        // Let in-window frames still in flight arrive.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(status) = srv.exited() {
            r.status = format!("server exited during the window: {status}");
        }
        if mode == Mode::Stream {
            r.up = Some(shared.up.lock().summary(&shared.window));
        }
        if mode == Mode::Echo || args.talk_back {
            r.back = Some(shared.back.lock().summary(&shared.window));
        }
        let mut g = shared.generator.lock();
        g.lateness_us.sort_unstable();
        r.generator.pacing_lateness_us = Quantiles {
            p50: percentile(&g.lateness_us, 0.5).map(f64::from),
            p99: percentile(&g.lateness_us, 0.99).map(f64::from),
            max: g.lateness_us.last().map(|&v| f64::from(v)),
        };
    }

    // Tear-down: BYE every established call, paced like the set-up.
    let dialog_count = dialogs.len();
    r.teardown = tear_down_calls(dialogs, 2.0 * args.cps, &uac, &generator).await;
    if mode == Mode::Stream {
        // Give the server time to send `stop` and close each agent socket.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let a = shared.agent.lock().clone();
            if a.closes + a.errors >= a.connections && a.stop_events >= dialog_count as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.server.after_teardown = srv.sample();
    r.sip = uac.counters.lock().clone();
    if mode == Mode::Stream {
        let a = shared.agent.lock().clone();
        r.teardown.agent_stops = a.stop_events;
        r.teardown.agent_closed = a.closes + a.errors;
        r.agent = Some(a);
    }
    {
        let g = shared.generator.lock();
        r.generator.frames_sent_total = g.sent_total;
        r.generator.send_errors = g.send_errors;
        r.generator.skipped = g.skipped;
    }
    // More rounds of the same calls on the same server: a leak keeps RSS (or fds) growing round after round,
    // allocator retention levels off.
    for wave in 1..args.waves {
        if r.status != "ok" || srv.exited().is_some() {
            break;
        }
        let Ok(uac) = Uac::bind(sip_addr, &format!("{}x{step_no}w{wave}", std::process::id())).await else { break };
        let dispatcher = tokio::spawn(uac.clone().dispatch());
        let mut wave_tasks = Tasks(vec![dispatcher]);
        let tally =
            set_up_calls(n, args.cps, setup_timeout, &uac, &shared, &generator, &mut srv, &mut wave_tasks).await;
        let established = tally.dialogs.len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let loaded = srv.sample();
        let td = tear_down_calls(tally.dialogs, 2.0 * args.cps, &uac, &generator).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(wave_tasks);
        let after = srv.sample();
        let w = WaveSample {
            wave: wave + 1,
            established,
            bye_200: td.bye_200,
            loaded_rss_kib: loaded.map(|p| p.rss_kib),
            after_rss_kib: after.map(|p| p.rss_kib),
            after_fds: after.map(|p| p.fds),
        };
        println!(
            "  wave {}: {}/{n} established, {} BYE 200 | RSS loaded {} KiB, after tear-down {} KiB | fds {}",
            w.wave,
            w.established,
            w.bye_200,
            w.loaded_rss_kib.map_or("-".into(), |v| v.to_string()),
            w.after_rss_kib.map_or("-".into(), |v| v.to_string()),
            w.after_fds.map_or("-".into(), |v| v.to_string()),
        );
        r.waves.push(w);
        if let Some(f) = tally.first_failure {
            println!("  wave {}: set-up failed: {f}", wave + 1);
            break;
        }
    }
    drop(tasks);
    r.server.exit = srv.stop(Duration::from_secs(15));
    scan_log(&mut r);
    r
}

/// Sets up `n` calls (indices 0..n) at `cps` calls/s, each with its own RTP socket fed by `generator` and drained
/// by a receive task in `tasks`. Stops launching at the first failure or if the server exits; every outcome is
/// collected, each within `timeout` (+2 s).
#[allow(clippy::too_many_arguments)]
async fn set_up_calls(
    n: usize,
    cps: f64,
    timeout: Duration,
    uac: &Arc<Uac>,
    shared: &Arc<Shared>,
    generator: &Arc<Generator>,
    srv: &mut Server,
    tasks: &mut Tasks,
) -> SetupTally {
    let (tx, mut rx) = mpsc::unbounded_channel::<SetupOutcome>();
    let mut setup = SetupTally::default();
    let started = Instant::now();
    let mut launched = 0usize;
    for i in 0..n {
        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / cps)).into()).await;
        while let Ok(o) = rx.try_recv() {
            setup.record(o, tasks);
        }
        if setup.first_failure.is_some() {
            break;
        }
        if let Some(status) = srv.exited() {
            setup.first_failure = Some(format!("server exited during set-up: {status}"));
            break;
        }
        let (uac, shared, generator, tx) = (uac.clone(), shared.clone(), generator.clone(), tx.clone());
        let idx = i as u32;
        launched += 1;
        tokio::spawn(async move {
            let outcome = async {
                let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.map_err(|e| format!("RTP socket: {e}"))?);
                let local = sock.local_addr().map_err(|e| e.to_string())?;
                let d = uac.invite(idx, local, timeout).await.map_err(|e| e.to_string())?;
                generator.add(idx, sock.clone(), d.remote_rtp);
                let rx_task = tokio::spawn(rtp::receive(idx, sock, shared));
                Ok((d, rx_task))
            }
            .await;
            let _ = tx.send((idx, outcome));
        });
    }
    let mut outstanding = launched - (setup.dialogs.len() + setup.failures);
    let collect_deadline = Instant::now() + timeout + Duration::from_secs(2);
    while outstanding > 0 {
        match tokio::time::timeout_at(collect_deadline.into(), rx.recv()).await {
            Ok(Some(o)) => {
                setup.record(o, tasks);
                outstanding -= 1;
            }
            _ => {
                setup.first_failure.get_or_insert_with(|| format!("{outstanding} set-ups never finished"));
                break;
            }
        }
    }
    setup
}

/// Stops each call's RTP and hangs it up (BYE) at `rate` calls/s; waits for every BYE's outcome (5 s each + 1 s).
async fn tear_down_calls(dialogs: Vec<Dialog>, rate: f64, uac: &Arc<Uac>, generator: &Arc<Generator>) -> Teardown {
    let mut t = Teardown::default();
    let bye_timeout = Duration::from_secs(5);
    let (btx, mut brx) = mpsc::unbounded_channel::<Result<u16, String>>();
    let started = Instant::now();
    let count = dialogs.len();
    for (j, d) in dialogs.into_iter().enumerate() {
        tokio::time::sleep_until((started + Duration::from_secs_f64(j as f64 / rate)).into()).await;
        generator.remove(d.idx);
        let (uac, btx) = (uac.clone(), btx.clone());
        tokio::spawn(async move {
            let _ = btx.send(uac.bye(&d, bye_timeout).await);
        });
    }
    generator.clear();
    let deadline = Instant::now() + bye_timeout + Duration::from_secs(1);
    for _ in 0..count {
        match tokio::time::timeout_at(deadline.into(), brx.recv()).await {
            Ok(Some(Ok(200))) => t.bye_200 += 1,
            Ok(Some(Ok(code))) => t.bye_other.push(code),
            Ok(Some(Err(e))) => {
                t.bye_failed += 1;
                t.first_bye_failure.get_or_insert(e);
            }
            _ => {
                t.bye_failed += 1;
                t.first_bye_failure.get_or_insert_with(|| "BYE task never reported".to_owned());
            }
        }
    }
    t
}

fn fail(mut r: StepResult, why: String) -> StepResult {
    println!("  STOP: {why}");
    r.status = why;
    r
}

/// Counts panics and ERROR lines in the server's log for the step.
fn scan_log(r: &mut StepResult) {
    if let Ok(text) = std::fs::read_to_string(&r.server.log) {
        r.server.log_panics = text.lines().filter(|l| l.contains("panicked")).count();
        r.server.log_errors =
            text.lines().filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains(" ERROR ")).count();
    }
}

fn print_step(r: &StepResult) {
    let path = |name: &str, p: &Option<PathSummary>| {
        if let Some(p) = p {
            println!(
                "  {name}: sent {} received {} loss {}% | p50 {} p99 {} p999 {} max {} µs | p50 first/last fifth {} → {} \
                 µs | late {} ooo {} dup {} crossed {} corrupt {} filler {} other {}",
                p.sent,
                p.received,
                fmt_opt(p.loss_pct, 3),
                fmt_opt(p.p50_us, 0),
                fmt_opt(p.p99_us, 0),
                fmt_opt(p.p999_us, 0),
                fmt_opt(p.max_us, 0),
                fmt_opt(p.p50_first_fifth_us, 0),
                fmt_opt(p.p50_last_fifth_us, 0),
                p.late,
                p.out_of_order,
                p.duplicate,
                p.crossed,
                p.corrupt,
                p.filler,
                p.other
            );
        }
    };
    path("up  ", &r.up);
    path("back", &r.back);
    let s = &r.server;
    println!(
        "  server: CPU {}% of a core, {} µs/call·s | RSS idle {} KiB, loaded {} KiB, {} KiB/call, after tear-down {} \
         KiB | fds {} → {} → {} | threads {}",
        fmt_opt(s.cpu_pct, 1),
        fmt_opt(s.cpu_us_per_call_s, 1),
        s.idle.map_or("-".into(), |p| p.rss_kib.to_string()),
        s.loaded.map_or("-".into(), |p| p.rss_kib.to_string()),
        fmt_opt(s.rss_per_call_kib, 1),
        s.after_teardown.map_or("-".into(), |p| p.rss_kib.to_string()),
        s.idle.map_or("-".into(), |p| p.fds.to_string()),
        s.loaded.map_or("-".into(), |p| p.fds.to_string()),
        s.after_teardown.map_or("-".into(), |p| p.fds.to_string()),
        s.loaded.map_or("-".into(), |p| p.threads.to_string()),
    );
    let g = &r.generator;
    println!(
        "  generator: CPU {}% of a core | pacing lateness p50 {} p99 {} max {} µs | send errors {} skipped {}",
        fmt_opt(g.cpu_pct, 1),
        fmt_opt(g.pacing_lateness_us.p50, 0),
        fmt_opt(g.pacing_lateness_us.p99, 0),
        fmt_opt(g.pacing_lateness_us.max, 0),
        g.send_errors,
        g.skipped
    );
    let load = |c: &[server::CoreLoad]| -> String {
        c.iter()
            .map(|c| {
                format!("core {} {:.1}% (softirq {:.1}%, steal {:.1}%)", c.core, c.busy_pct, c.softirq_pct, c.steal_pct)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  cores busy before the calls (others' load): {}", load(&r.background));
    println!(
        "  cores busy over the window (anyone's work): {} | server {}% + generator {}% of a core",
        load(&r.cores),
        fmt_opt(r.server.cpu_pct, 1),
        fmt_opt(r.generator.cpu_pct, 1)
    );
    let top: Vec<String> = r.top_processes.iter().map(|c| format!("{}[{}] {:.1}%", c.comm, c.pid, c.cpu_pct)).collect();
    println!("  top processes over the window: {}", top.join(", "));
    println!("  sip: {:?}", r.sip);
    if let Some(a) = &r.agent {
        println!("  agent: {a:?}");
    }
    println!(
        "  tear-down: BYE 200 {} other {:?} failed {}{} | agent stops {} closed {} | server {} | log panics {} errors {}",
        r.teardown.bye_200,
        r.teardown.bye_other,
        r.teardown.bye_failed,
        r.teardown.first_bye_failure.as_ref().map(|e| format!(" ({e})")).unwrap_or_default(),
        r.teardown.agent_stops,
        r.teardown.agent_closed,
        r.server.exit,
        r.server.log_panics,
        r.server.log_errors
    );
}

fn print_table(steps: &[StepResult]) {
    println!(
        "{:<6} {:>5} {:>5} {:>9} | {:>27} {:>8} | {:>27} {:>8} | {:>9} | {:>9} {:>6} {:>8} | {:>5}",
        "mode",
        "calls",
        "est",
        "setup p50",
        "up p50/p99/p999 µs",
        "up loss%",
        "back p50/p99/p999 µs",
        "bk loss%",
        "late/ooo",
        "µs/call·s",
        "srv%",
        "KiB/call",
        "gen%"
    );
    for r in steps {
        let lat = |p: &Option<PathSummary>| {
            p.as_ref().map_or("-".to_owned(), |p| {
                format!("{}/{}/{}", fmt_opt(p.p50_us, 0), fmt_opt(p.p99_us, 0), fmt_opt(p.p999_us, 0))
            })
        };
        let loss = |p: &Option<PathSummary>| p.as_ref().map_or("-".to_owned(), |p| fmt_opt(p.loss_pct, 3));
        // The primary path: caller → agent in stream mode, the echo in echo mode.
        let primary = if r.mode == Mode::Stream { &r.up } else { &r.back };
        let (late, ooo) = primary.as_ref().map_or((0, 0), |p| (p.late, p.out_of_order));
        println!(
            "{:<6} {:>5} {:>5} {:>9} | {:>27} {:>8} | {:>27} {:>8} | {:>9} | {:>9} {:>6} {:>8} | {:>5}{}",
            r.mode.name(),
            r.calls,
            r.established,
            fmt_opt(r.setup_ms.p50, 1),
            lat(&r.up),
            loss(&r.up),
            lat(&r.back),
            loss(&r.back),
            format!("{late}/{ooo}"),
            fmt_opt(r.server.cpu_us_per_call_s, 0),
            fmt_opt(r.server.cpu_pct, 1),
            fmt_opt(r.server.rss_per_call_kib, 1),
            fmt_opt(r.generator.cpu_pct, 1),
            if r.status == "ok" { String::new() } else { format!("  [{}]", r.status) }
        );
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
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
