//! Cores dedicated to the media workers (`media.cpus`): pinning a worker to its core, keeping every other thread of
//! the process (the tokio runtime with SIP, HTTP and the per-call tasks, the runners) off those cores, and the
//! workers' real-time priority on them (`media.realtime_priority`).
//!
//! Why: a media worker that shares its core with the control plane waits whenever a control thread holds the core.
//! With a 250 Hz tick and no kernel preemption, a tokio thread that wakes with a few milliseconds of accumulated
//! timers keeps the core that long, and every tenant's frames wait behind it, whatever the fair queue decided. The
//! measurements are in `docs/benchmarks.md` ("Results with the media worker on a core of its own").
//!
//! Why real-time too: a core of its own is not the worker's alone. The kernel's own threads (`rcu_preempt`, DAMON's
//! `kdamond`, `ksoftirqd`) run there when the scheduler places them there, and under the normal policy a worker at
//! any nice value shares the core with them for a slice of milliseconds. At `SCHED_FIFO` the worker is always picked
//! before them while it has work; they run in its idle time (`docs/benchmarks.md`, "Real-time media workers").
//!
//! Linux only (`sched_getaffinity`, `sched_setaffinity`), like the rest of the media path. The pure part,
//! [`control_cpus`], decides and validates; the two calls that touch the kernel are [`allowed_cpus`] and
//! [`pin_current_thread`].

use std::io;
use std::time::{Duration, Instant};

/// The most CPUs a `cpu_set_t` can name.
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// Why the dedicated cores cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("media.cpus: cpu {cpu} is not one this process may run on (allowed: {allowed})")]
    NotAllowed { cpu: usize, allowed: String },
    #[error(
        "media.cpus: {media} would take every cpu this process may run on ({allowed}); leave at least one for \
         SIP, HTTP and the control plane"
    )]
    NoneLeft { media: String, allowed: String },
    #[error("cpu affinity: {0}")]
    Os(#[from] io::Error),
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data and zeroed is the empty set; sched_getaffinity(0, ..) fills it for the
    // calling thread and CPU_ISSET reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..MAX_CPUS).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// Restricts the calling thread to `cpus`. Threads it starts afterwards inherit the restriction. Allocates nothing,
/// errors included (a CPU at or beyond [`MAX_CPUS`] is `EINVAL`), so it may run between `fork` and `exec`.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in allowed_cpus; CPU_SET writes inside `set`, and every cpu is below CPU_SETSIZE (checked).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c >= MAX_CPUS {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs the calling thread under `SCHED_FIFO` at `priority` (1..=99). Needs root, `CAP_SYS_NICE` or an
/// `RLIMIT_RTPRIO` of at least `priority`; the error is the kernel's (`EPERM`, or `EINVAL` out of range).
pub fn set_realtime(priority: u8) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: libc::c_int::from(priority) };
    // SAFETY: pid 0 is the calling thread; `param` is a live sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How long a real-time worker may run before [`RestGuard`] looks at how much it rested.
pub const REST_WINDOW: Duration = Duration::from_millis(10);

/// Keeps a real-time worker's share of its core under what the kernel allows real-time threads.
///
/// Why: the kernel throttles real-time threads that use more than `sched_rt_runtime_us` of each
/// `sched_rt_period_us` (95% of every second by default), and its fair server runs starved normal threads for up to
/// 50 ms at once. Either way a worker that stays busy for a whole second loses its core for about 50 ms in one
/// piece, and every tenant's frames miss their deadline together, which is worse than what the normal policy does
/// under the same overload. So a worker that in a [`REST_WINDOW`] of running was off its core for less than its
/// rest sleeps the difference: short rests often, never a long one. A worker under its threshold blocks for more
/// than that between turns anyway and never rests. Sans-IO: instants in, how long to sleep out.
#[derive(Debug)]
pub struct RestGuard {
    rest: Duration,
    window_start: Instant,
    idle: Duration,
}

impl RestGuard {
    /// A guard that asks for `rest` of idle time in every [`REST_WINDOW`].
    pub fn new(now: Instant, rest: Duration) -> RestGuard {
        RestGuard { rest, window_start: now, idle: Duration::ZERO }
    }

    /// The rest per window for a host that lets real-time threads run `runtime_us` of every `period_us`
    /// (`/proc/sys/kernel/sched_rt_*`; a negative runtime is no limit): enough that the worker stays 5 points under
    /// the limit, at most 90% of its core in any case (normal threads on the core need some of it too), and never
    /// less than 50%.
    pub fn rest_for(runtime_us: i64, period_us: i64) -> Duration {
        let allowed = if runtime_us < 0 || period_us <= 0 { 1.0 } else { runtime_us as f64 / period_us as f64 };
        let duty = (allowed - 0.05).clamp(0.5, 0.9);
        REST_WINDOW.mul_f64((1.0 - duty) / duty)
    }

    /// The rest per window for this host (the default kernel's 95% if the sysctls cannot be read).
    pub fn rest_for_host() -> Duration {
        let read = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).ok().and_then(|s| s.trim().parse().ok())
        };
        Self::rest_for(read("sched_rt_runtime_us").unwrap_or(950_000), read("sched_rt_period_us").unwrap_or(1_000_000))
    }

    /// The worker was off its core (blocked waiting for work) for `d`.
    pub fn idled(&mut self, d: Duration) {
        self.idle += d;
    }

    /// Called between items: how long the worker must sleep now (zero unless a window has passed with too little
    /// idle time in it). A new window starts after each look that closes one.
    pub fn due(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.window_start) < REST_WINDOW {
            return Duration::ZERO;
        }
        let owed = self.rest.saturating_sub(self.idle);
        self.window_start = now + owed;
        self.idle = Duration::ZERO;
        owed
    }
}

/// The calling thread's scheduling policy and priority (`SCHED_OTHER` is 0, priority 0).
pub fn current_policy() -> io::Result<(libc::c_int, libc::c_int)> {
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; both calls only read it.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        if policy < 0 || libc::sched_getparam(0, &mut param) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((policy, param.sched_priority))
    }
}

/// The CPUs left for everything but the media workers: `allowed` without `media`. Every media CPU must be allowed,
/// and at least one CPU must be left.
pub fn control_cpus(allowed: &[usize], media: &[usize]) -> Result<Vec<usize>, CpuError> {
    if let Some(&cpu) = media.iter().find(|c| !allowed.contains(c)) {
        return Err(CpuError::NotAllowed { cpu, allowed: cpu_list(allowed) });
    }
    let rest: Vec<usize> = allowed.iter().copied().filter(|c| !media.contains(c)).collect();
    if rest.is_empty() {
        return Err(CpuError::NoneLeft { media: cpu_list(media), allowed: cpu_list(allowed) });
    }
    Ok(rest)
}

/// Gives `media` to the media workers: the calling thread (at start-up, before the runtime and the runners exist,
/// so that they inherit it) is restricted to the other allowed CPUs. Returns those CPUs.
pub fn keep_off(media: &[usize]) -> Result<Vec<usize>, CpuError> {
    let rest = control_cpus(&allowed_cpus()?, media)?;
    pin_current_thread(&rest)?;
    Ok(rest)
}

/// `cpus` in the kernel's list form (`0-2,5`), as `Cpus_allowed_list` and `taskset` show it.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if sorted[i] == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{}", sorted[i]));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_cpus_are_the_allowed_ones_the_media_workers_do_not_take() {
        assert_eq!(control_cpus(&[0, 1, 2, 3], &[0, 2]).unwrap(), vec![1, 3]);
        assert_eq!(control_cpus(&[4, 5], &[]).unwrap(), vec![4, 5]);
    }

    #[test]
    fn a_cpu_outside_the_allowed_set_or_none_left_is_refused_with_the_sets_named() {
        let e = control_cpus(&[0, 1], &[3]).unwrap_err().to_string();
        assert_eq!(e, "media.cpus: cpu 3 is not one this process may run on (allowed: 0-1)");
        let e = control_cpus(&[0, 1], &[1, 0]).unwrap_err().to_string();
        assert!(e.starts_with("media.cpus: 0-1 would take every cpu this process may run on (0-1)"), "{e}");
    }

    #[test]
    fn cpu_lists_read_like_the_kernels() {
        assert_eq!(cpu_list(&[]), "");
        assert_eq!(cpu_list(&[3]), "3");
        assert_eq!(cpu_list(&[5, 0, 1, 2, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn a_pinned_thread_runs_only_where_it_was_pinned() {
        // On its own thread, so the test harness's threads keep their affinity.
        std::thread::spawn(|| {
            let allowed = allowed_cpus().unwrap();
            let last = *allowed.last().unwrap();
            pin_current_thread(&[last]).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![last]);
            assert!(pin_current_thread(&[MAX_CPUS]).is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_worker_busy_for_a_whole_window_rests_and_one_that_blocked_enough_does_not() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut g = RestGuard::new(t0, ms(1));
        // Inside a window: nothing is owed, however busy.
        assert_eq!(g.due(t0 + ms(9)), Duration::ZERO);
        // A window with no idle time: the whole rest.
        assert_eq!(g.due(t0 + ms(10)), ms(1));
        // The next window starts after the rest; 0.4 ms blocked in it: the other 0.6 ms are owed.
        g.idled(Duration::from_micros(400));
        assert_eq!(g.due(t0 + ms(20)), ms(0));
        assert_eq!(g.due(t0 + ms(21)), Duration::from_micros(600));
        // Blocked for more than the rest: nothing owed, and the window starts over at the look.
        g.idled(ms(3));
        assert_eq!(g.due(t0 + ms(40)), Duration::ZERO);
        assert_eq!(g.due(t0 + ms(49)), Duration::ZERO);
        // Sustained: at most 10 ms running for each rest, a duty cycle of 10 / 11.
        let mut g = RestGuard::new(t0, ms(1));
        let (mut now, mut slept) = (t0, Duration::ZERO);
        while now < t0 + Duration::from_secs(1) {
            now += Duration::from_micros(50); // one turn
            let rest = g.due(now);
            slept += rest;
            now += rest;
        }
        let share = 1.0 - slept.as_secs_f64() / now.duration_since(t0).as_secs_f64();
        assert!((0.90..0.92).contains(&share), "{share}");
    }

    #[test]
    fn the_rest_keeps_a_worker_five_points_under_the_hosts_real_time_limit() {
        // The default kernel: 95% allowed, the worker kept to 90%: 10 ms running, 1.11 ms resting.
        let r = RestGuard::rest_for(950_000, 1_000_000);
        assert!((r.as_secs_f64() - 0.010 / 9.0).abs() < 1e-6, "{r:?}");
        // No limit: still at most 90%.
        assert_eq!(RestGuard::rest_for(-1, 1_000_000), r);
        // 80% allowed: 75%, so 3.33 ms per 10 ms.
        let r = RestGuard::rest_for(800_000, 1_000_000);
        assert!((r.as_secs_f64() - 0.010 / 3.0).abs() < 1e-6, "{r:?}");
        // Almost nothing allowed: never below half the core (the kernel then throttles; the operator asked for it).
        assert_eq!(RestGuard::rest_for(10_000, 1_000_000), REST_WINDOW);
    }

    #[test]
    fn a_realtime_thread_reports_its_policy_and_a_bad_priority_is_the_kernels_einval() {
        std::thread::spawn(|| {
            assert_eq!(current_policy().unwrap(), (libc::SCHED_OTHER, 0));
            assert_eq!(set_realtime(0).unwrap_err().raw_os_error(), Some(libc::EINVAL));
            match set_realtime(3) {
                Ok(()) => assert_eq!(current_policy().unwrap(), (libc::SCHED_FIFO, 3)),
                // Not root and no CAP_SYS_NICE or RLIMIT_RTPRIO: refused, and the thread is unchanged.
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                    assert_eq!(current_policy().unwrap(), (libc::SCHED_OTHER, 0));
                }
            }
        })
        .join()
        .unwrap();
    }
}
