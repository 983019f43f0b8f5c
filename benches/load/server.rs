//! The server under test as a child process: config file, start pinned to a core, health wait, `/proc` samples,
//! and a SIGTERM/SIGKILL stop. Also pins and measures the generator itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How the tenant's app handles the call.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Stream,
    Echo,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Stream => "stream",
            Mode::Echo => "echo",
        }
    }
}

pub struct ServerSpec<'a> {
    pub mode: Mode,
    pub agent: Option<SocketAddr>,
    pub max_calls: usize,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub rtp_lo: u16,
    pub rtp_hi: u16,
    pub dir: &'a Path,
    pub log: &'a Path,
    /// Cores the server process may run on (empty: not pinned).
    pub cores: Vec<usize>,
    pub nice: i32,
    pub rust_log: &'a str,
}

pub struct Server {
    child: Child,
    pub pid: u32,
}

/// One `/proc` look at a process.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

pub fn write_config(spec: &ServerSpec) -> std::io::Result<PathBuf> {
    let app = match (spec.mode, spec.agent) {
        (Mode::Stream, Some(agent)) => {
            format!("kind = \"stream\"\nstream_url = \"ws://{agent}/stream\"\n")
        }
        _ => "kind = \"echo\"\n".to_owned(),
    };
    let toml = format!(
        "# Written by benches/load.rs\n[rtp]\ninactivity_timeout_secs = 30\n\n[limits]\nmax_calls = {}\n\
         # What one core carries, not where admission would stop the ramp (docs/plans.md, \"Media workers hot\").\n\
         worker_busy_pct = 100\n\n\
         # One tenant that may hold every call of the ramp and set them up at the generator's pace.\n\
         [plans.load]\nweight = 1\nmax_concurrent_calls = {}\ncalls_per_second = 1000\nburst = 1000\n\
         monthly_minutes = \"unlimited\"\n\n\
         [[tenants]]\nid = \"load\"\nplan = \"load\"\n\n[[tenants.apps]]\nname = \"agent\"\n{app}codecs = [\"PCMU\"]\n\n\
         [[tenants.numbers]]\nnumber = \"+15550100\"\napp = \"agent\"\n",
        spec.max_calls, spec.max_calls
    );
    let path = spec.dir.join("fairvox.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

impl Server {
    pub fn start(bin: &str, spec: &ServerSpec) -> std::io::Result<Server> {
        let config = write_config(spec)?;
        Self::start_with_config(bin, spec, &config)
    }

    /// Starts the server on a config file written by the caller; `spec`'s mode, agent and max_calls are not used.
    pub fn start_with_config(bin: &str, spec: &ServerSpec, config: &Path) -> std::io::Result<Server> {
        let data = spec.dir.join("data");
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(spec.log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--sip-listen")
            .arg(spec.sip.to_string())
            .arg("--http-listen")
            .arg(spec.http.to_string())
            .arg("--rtp-ports")
            .arg(format!("{}-{}", spec.rtp_lo, spec.rtp_hi))
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", spec.rust_log)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let (cores, nice) = (spec.cores.clone(), spec.nice);
        if !cores.is_empty() || nice != 0 {
            // SAFETY: the closure runs in the forked child before exec and only makes the sched_setaffinity and
            // setpriority system calls, which are async-signal-safe; it touches no memory shared with the parent.
            unsafe {
                cmd.pre_exec(move || {
                    if !cores.is_empty() {
                        fairvox::sched::cpus::pin_current_thread(&cores)?;
                    }
                    if nice != 0 {
                        renice_self(nice)?;
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        Ok(Server { child, pid })
    }

    /// Polls `GET /healthz` until 200, the child exits, or `timeout` passes.
    pub fn wait_healthy(&mut self, http: SocketAddr, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("server exited during start-up: {status}"));
            }
            if healthz(http).unwrap_or(false) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(format!("GET /healthz on {http} not 200 within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    pub fn sample(&self) -> Option<ProcSample> {
        proc_sample(self.pid)
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns how it ended.
    pub fn stop(mut self, grace: Duration) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited: {status}");
        }
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet (try_wait said it is running).
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!("SIGTERM: exited after {:.2} s, {status}", started.elapsed().as_secs_f64());
            }
            if started.elapsed() > grace {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return format!("did not exit within {grace:?} of SIGTERM: killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn healthz(http: SocketAddr) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&http, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    write!(s, "GET /healthz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
}

/// Reads `/proc/PID/stat` (utime, stime) and `/proc/PID/status` (VmRSS, Threads), and counts `/proc/PID/fd`.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    Some(ProcSample {
        cpu_s: (utime + stime) as f64 / hz,
        rss_kib: field("VmRSS:").unwrap_or(0),
        threads: field("Threads:").unwrap_or(0),
        fds,
    })
}

/// Sets the calling thread's nice value (threads it spawns later inherit it).
pub fn renice_self(nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority on the calling thread (who = 0) with a plain integer.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Puts the calling thread (and the threads it later spawns) under `SCHED_IDLE`: it runs only on what no normal
/// thread of its core wants, and a normal thread that wakes preempts it at once.
#[allow(dead_code)] // used by benches/isolation.rs, not by benches/load.rs
pub fn idle_self() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid, initialised sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Pins the calling thread (and the threads it later spawns) to one core.
pub fn pin_self(core: usize) -> std::io::Result<()> {
    fairvox::sched::cpus::pin_current_thread(&[core])
}

/// Raises the soft open-files limit to the hard one (each call costs the generator a UDP socket and a TCP socket).
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, initialised rlimit struct.
    unsafe {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        rl.rlim_cur
    }
}

/// Picks a loopback port free for both TCP and UDP (SIP listens on both) by binding port 0 and letting it go.
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..50 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no loopback port free for both TCP and UDP"))
}

/// One core's cumulative times from `/proc/stat`, in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreTicks {
    total: u64,
    idle: u64,
    softirq: u64,
    steal: u64,
}

/// How busy a core was between two samples.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CoreLoad {
    pub core: usize,
    /// Everything but idle and iowait, % of the interval.
    pub busy_pct: f64,
    /// Of which softirq (loopback packet processing lands here, often charged to no process).
    pub softirq_pct: f64,
    /// Of which stolen by the hypervisor.
    pub steal_pct: f64,
}

/// Per-core cumulative times (`cpuN` lines of `/proc/stat`), indexed by core.
pub fn core_ticks() -> Vec<CoreTicks> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return Vec::new() };
    let mut out = Vec::new();
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else { continue };
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            continue; // the all-cores line
        }
        let mut f = rest.split_whitespace();
        let Some(Ok(core)) = f.next().map(str::parse::<usize>) else { continue };
        let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
        if v.len() < 7 {
            continue;
        }
        // user nice system idle iowait irq softirq steal ...; guest time is already inside user.
        let total: u64 = v.iter().take(8).sum();
        if out.len() <= core {
            out.resize(core + 1, CoreTicks::default());
        }
        out[core] = CoreTicks { total, idle: v[3] + v[4], softirq: v[6], steal: v.get(7).copied().unwrap_or(0) };
    }
    out
}

pub fn core_load(before: &[CoreTicks], after: &[CoreTicks]) -> Vec<CoreLoad> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(core, (b, a))| {
            let total = a.total.saturating_sub(b.total).max(1) as f64;
            let idle = a.idle.saturating_sub(b.idle) as f64;
            CoreLoad {
                core,
                busy_pct: 100.0 * (total - idle) / total,
                softirq_pct: 100.0 * a.softirq.saturating_sub(b.softirq) as f64 / total,
                steal_pct: 100.0 * a.steal.saturating_sub(b.steal) as f64 / total,
            }
        })
        .collect()
}

/// CPU seconds used so far by every process, by pid, with its command name.
pub fn all_processes_cpu() -> std::collections::HashMap<u32, (String, f64)> {
    cpu_by_id("/proc")
}

/// CPU seconds used so far by each thread of process `pid`, by thread id, with the thread's name.
#[allow(dead_code)] // used by benches/isolation.rs, not by benches/load.rs
pub fn threads_cpu(pid: u32) -> std::collections::HashMap<u32, (String, f64)> {
    cpu_by_id(&format!("/proc/{pid}/task"))
}

/// utime + stime of every numbered entry of `root` (`/proc`, or `/proc/PID/task`), with its `comm`.
fn cpu_by_id(root: &str) -> std::collections::HashMap<u32, (String, f64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir(root) else { return out };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("{root}/{pid}/stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let (Some(Ok(u)), Some(Ok(s))) =
            (fields.get(11).map(|v| v.parse::<u64>()), fields.get(12).map(|v| v.parse::<u64>()))
        else {
            continue;
        };
        out.insert(pid, (comm, (u + s) as f64 / hz));
    }
    out
}

/// A process that used CPU during the window.
#[derive(Clone, Debug, Serialize)]
pub struct Consumer {
    pub pid: u32,
    pub comm: String,
    /// Share of one core over the window.
    pub cpu_pct: f64,
}

/// The `n` processes that used the most CPU between two `all_processes_cpu` samples.
pub fn top_consumers(
    before: &std::collections::HashMap<u32, (String, f64)>,
    after: &std::collections::HashMap<u32, (String, f64)>,
    secs: f64,
    n: usize,
) -> Vec<Consumer> {
    let mut v: Vec<Consumer> = after
        .iter()
        .map(|(&pid, (comm, cpu))| {
            let was = before.get(&pid).map_or(0.0, |b| b.1);
            Consumer { pid, comm: comm.clone(), cpu_pct: 100.0 * (cpu - was) / secs }
        })
        .filter(|c| c.cpu_pct >= 1.0)
        .collect();
    v.sort_by(|a, b| b.cpu_pct.total_cmp(&a.cpu_pct));
    v.truncate(n);
    v
}

/// Waits (at most `limit`) until every core in `cores` is below 25% busy over a second; returns the time waited.
pub async fn wait_quiet(cores: &[usize], limit: Duration) -> Duration {
    let started = Instant::now();
    let mut said = false;
    while started.elapsed() < limit {
        let before = core_ticks();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let load = core_load(&before, &core_ticks());
        let busy: Vec<f64> = cores.iter().filter_map(|&c| load.get(c).map(|l| l.busy_pct)).collect();
        if busy.iter().all(|&b| b < 25.0) {
            return started.elapsed();
        }
        if !said {
            println!("  waiting up to {limit:?} for cores {cores:?} to go quiet (busy now {busy:.0?} %)");
            said = true;
        }
    }
    println!("  cores still busy after {limit:?}: running anyway, see the background figures");
    started.elapsed()
}
