//! The standard `process_*` metrics, read from `/proc/self` at scrape time (Linux).
//!
//! The names and meanings are those of the official Go and Python clients, so stock dashboards work. Each value is
//! read on its own; one that cannot be read (no `/proc`, another OS) is left out of the scrape, not reported as 0.

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second of the times in `/proc/<pid>/stat`. This is `USER_HZ`, which the kernel fixes at 100 for
/// user space on every architecture Linux runs servers on (what `sysconf(_SC_CLK_TCK)` returns), so no libc call is
/// needed to read it.
const USER_HZ: f64 = 100.0;

/// The exposed names of the metrics [`ProcessCollector`] writes (each only when its value could be read).
pub(crate) const FAMILY_NAMES: [&str; 6] = [
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// A snapshot of the process's resources; `None` where a value could not be read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    /// The soft limit on open files (`RLIMIT_NOFILE`); `None` too when unlimited.
    pub max_fds: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self/{stat,status,fd,limits}` and `/proc/stat`.
    pub fn read() -> ProcessStats {
        let stat = fs::read_to_string("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(StatFields::parse);
        let boot_time = fs::read_to_string("/proc/stat").ok().and_then(|s| parse_boot_time(&s));
        ProcessStats {
            cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / USER_HZ),
            resident_memory_bytes: fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_vm_rss(&s)),
            virtual_memory_bytes: stat.map(|s| s.vsize),
            open_fds: fs::read_dir("/proc/self/fd").ok().map(|dir| dir.count() as u64),
            max_fds: fs::read_to_string("/proc/self/limits").ok().and_then(|s| parse_max_open_files(&s)),
            start_time_seconds: stat.zip(boot_time).map(|(s, boot)| boot as f64 + s.starttime as f64 / USER_HZ),
        }
    }
}

/// The fields of `/proc/<pid>/stat` this module uses (proc(5)).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct StatFields {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

impl StatFields {
    fn parse(stat: &str) -> Option<StatFields> {
        // `pid (comm) state ...`: comm may hold spaces and parentheses, so fields are counted after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field 3 (state) is the first after the ')', so field n is at index n - 3.
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        let (utime, stime, starttime, vsize) = (field(14)?, field(15)?, field(22)?, field(23)?);
        Some(StatFields { utime, stime, starttime, vsize })
    }
}

/// `VmRSS:     1234 kB` from `/proc/<pid>/status`, in bytes (exact, unlike `statm`, which needs the page size).
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

/// `btime 1700000000` from `/proc/stat`: boot time in seconds since the epoch.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// The soft limit from the `Max open files` line of `/proc/<pid>/limits`.
fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Registers nothing itself: encodes a fresh [`ProcessStats`] on each scrape.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = ProcessStats::read();
        if let Some(v) = s.cpu_seconds {
            let m = ConstCounter::new(v);
            let help = "Total user and system CPU time spent in seconds.";
            m.encode(encoder.encode_descriptor("process_cpu", help, Some(&Unit::Seconds), m.metric_type())?)?;
        }
        let bytes = Some(&Unit::Bytes);
        gauge(
            &mut encoder,
            "process_resident_memory",
            "Resident memory size in bytes.",
            bytes,
            s.resident_memory_bytes,
        )?;
        gauge(&mut encoder, "process_virtual_memory", "Virtual memory size in bytes.", bytes, s.virtual_memory_bytes)?;
        gauge(&mut encoder, "process_open_fds", "Number of open file descriptors.", None, s.open_fds)?;
        gauge(&mut encoder, "process_max_fds", "Maximum number of open file descriptors.", None, s.max_fds)?;
        let help = "Start time of the process since unix epoch in seconds.";
        gauge(&mut encoder, "process_start_time", help, Some(&Unit::Seconds), s.start_time_seconds)
    }
}

fn gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: Option<N>,
) -> std::fmt::Result {
    let Some(v) = value else { return Ok(()) };
    let m = ConstGauge::new(v);
    m.encode(encoder.encode_descriptor(name, help, unit, m.metric_type())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        // Fields 14 (utime) = 250, 15 (stime) = 50, 22 (starttime) = 12345, 23 (vsize) = 4096000.
        let line = "4242 (my (weird) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 4096000 \
                    300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let f = StatFields::parse(line).unwrap();
        assert_eq!(f, StatFields { utime: 250, stime: 50, starttime: 12345, vsize: 4_096_000 });
        assert_eq!(StatFields::parse("4242 (x) S 1 2"), None);
        assert_eq!(StatFields::parse("garbage"), None);
    }

    #[test]
    fn parses_status_limits_and_boot_time() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t    1234 kB\nThreads: 3\n"), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 1048576              files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(
            parse_max_open_files("Max open files            unlimited            unlimited            files"),
            None
        );
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"), Some(1_700_000_000));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read();
        assert!(s.resident_memory_bytes.unwrap() > 0);
        assert!(s.virtual_memory_bytes.unwrap() >= s.resident_memory_bytes.unwrap());
        assert!(s.open_fds.unwrap() > 0);
        assert!(s.cpu_seconds.unwrap() >= 0.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = s.start_time_seconds.unwrap();
        // Started in the past, and not before 2020.
        assert!(start <= now + 1.0 && start > 1_577_836_800.0, "start {start} now {now}");
    }
}
