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

/// How much running ahead of its duty cycle a real-time worker may bank ([`RestGuard`]): at a duty of 90%, 200 ms
/// at 100% before its first rest. A second then holds at most `duty` of the core plus this, under the kernel's limit.
pub const REST_CREDIT: Duration = Duration::from_millis(20);
/// The shortest rest: long enough that a normal thread woken on the core gets to run, short next to a frame.
pub const REST_MIN: Duration = Duration::from_millis(1);

/// Keeps a real-time worker's share of its core under what the kernel allows real-time threads.
///
/// Why: the kernel throttles real-time threads that use more than `sched_rt_runtime_us` of each
/// `sched_rt_period_us` (95% of every second by default), and its fair server runs starved normal threads for up to
/// 50 ms at once. Either way a worker that stays busy for a whole second loses its core for about 50 ms in one
/// piece, and every tenant's frames miss their deadline together, which is worse than what the normal policy does
/// under the same overload. So the worker keeps a budget: time off its core (blocked waiting for work, or resting)
/// earns `duty` of itself, time running costs `1 - duty`, and the balance is capped at [`REST_CREDIT`]. A worker
/// whose balance runs out sleeps until it is back in credit, at least [`REST_MIN`]: short rests, about one per
/// `REST_MIN / (1 - duty)` of running, instead of one 50 ms gap. Load that is bursty but below `duty` on average
/// (a tick's worth of packets at once) never empties the budget and never rests, which a fixed window would not
/// allow. Sans-IO: instants and idle time in, how long to sleep out.
#[derive(Debug)]
pub struct RestGuard {
    duty: f64,
    /// Seconds of credit: positive is running the worker may still do ahead of its duty cycle.
    balance: f64,
    last: Instant,
    idle: Duration,
}

impl RestGuard {
    /// A guard that holds the worker to `duty` of its core (beyond [`REST_CREDIT`] of banked credit), starting in
    /// full credit.
    pub fn new(now: Instant, duty: f64) -> RestGuard {
        RestGuard { duty, balance: REST_CREDIT.as_secs_f64(), last: now, idle: Duration::ZERO }
    }

    /// The duty cycle for a host that lets real-time threads run `runtime_us` of every `period_us`
    /// (`/proc/sys/kernel/sched_rt_*`; a negative runtime is no limit): 5 points under the limit, which leaves room
    /// for [`REST_CREDIT`] (2 points of a second), at most 90% in any case (the normal threads on the core need some
    /// of it too), and never under 50%.
    pub fn duty_for(runtime_us: i64, period_us: i64) -> f64 {
        let allowed = if runtime_us < 0 || period_us <= 0 { 1.0 } else { runtime_us as f64 / period_us as f64 };
        (allowed - 0.05).clamp(0.5, 0.9)
    }

    /// The duty cycle for this host (the default kernel's 95% if the sysctls cannot be read).
    pub fn duty_for_host() -> f64 {
        let read = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).ok().and_then(|s| s.trim().parse().ok())
        };
        Self::duty_for(read("sched_rt_runtime_us").unwrap_or(950_000), read("sched_rt_period_us").unwrap_or(1_000_000))
    }

    /// The worker was off its core (blocked waiting for work, or resting) for `d`.
    pub fn idled(&mut self, d: Duration) {
        self.idle += d;
    }

    /// Called between items: how long the worker must rest now (zero while it is in credit). Everything since the
    /// last call that was not [`RestGuard::idled`] counts as running.
    pub fn due(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last);
        let idle = self.idle.min(elapsed);
        let running = elapsed - idle;
        self.last = now;
        self.idle = Duration::ZERO;
        self.balance += self.duty * idle.as_secs_f64() - (1.0 - self.duty) * running.as_secs_f64();
        self.balance = self.balance.min(REST_CREDIT.as_secs_f64());
        if self.balance >= 0.0 {
            return Duration::ZERO;
        }
        // Resting earns `duty` of itself: rest until the debt is paid.
        Duration::from_secs_f64(-self.balance / self.duty).max(REST_MIN)
    }
}

/// The calling thread's scheduling policy and priority (`SCHED_OTHER` is 0, priority 0); for tests.
#[cfg(test)]
pub(crate) fn current_policy() -> io::Result<(libc::c_int, libc::c_int)> {
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

    /// Runs `guard` over `secs` of a worker that is busy `busy` of every `cycle` (blocked the rest), serving items
    /// of 50 µs; returns its share of the core and how many rests it took.
    fn simulate(guard: &mut RestGuard, t0: Instant, secs: f64, cycle: Duration, busy: Duration) -> (f64, u32) {
        let turn = Duration::from_micros(50);
        let (mut now, mut ran, mut rests) = (t0, Duration::ZERO, 0);
        let end = t0 + Duration::from_secs_f64(secs);
        let mut cycle_start = t0;
        while now < end {
            if now.duration_since(cycle_start) >= busy {
                // The rest of the cycle blocked, waiting for work.
                let wait = (cycle_start + cycle).saturating_duration_since(now);
                guard.idled(wait);
                now += wait;
                cycle_start = now;
            }
            now += turn;
            ran += turn;
            let rest = guard.due(now);
            if !rest.is_zero() {
                rests += 1;
                guard.idled(rest);
                now += rest;
            }
        }
        (ran.as_secs_f64() / now.duration_since(t0).as_secs_f64(), rests)
    }

    #[test]
    fn a_worker_kept_busy_rests_to_its_duty_and_bursty_load_under_it_never_rests() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Busy without a break: 200 ms on the banked credit, then short rests holding it to 90%.
        let mut g = RestGuard::new(t0, 0.9);
        assert_eq!(g.due(t0 + ms(199)), Duration::ZERO);
        let rest = g.due(t0 + ms(202));
        assert!(rest >= REST_MIN && rest < ms(2), "{rest:?}");
        let (share, rests) = simulate(&mut RestGuard::new(t0, 0.9), t0, 2.0, ms(20), ms(20));
        assert!((0.90..0.92).contains(&share), "{share}");
        // One rest of 1 ms per 9 ms of running after the first 200 ms: about 180 in 2 s.
        assert!((150..=200).contains(&rests), "{rests}");
        // A second holds at most duty + credit of running, under the kernel's 95%, even starting in full credit.
        let (share, _) = simulate(&mut RestGuard::new(t0, 0.9), t0, 1.0, ms(20), ms(20));
        assert!(share < 0.93, "{share}");
        // Bursts of 15 ms in every 20 (75%, a tick's packets at once): never a rest.
        let (share, rests) = simulate(&mut RestGuard::new(t0, 0.9), t0, 5.0, ms(20), ms(15));
        assert_eq!(rests, 0, "{share}");
        // 89%: still none.
        let (_, rests) = simulate(&mut RestGuard::new(t0, 0.9), t0, 5.0, ms(100), ms(89));
        assert_eq!(rests, 0);
    }

    #[test]
    fn the_duty_keeps_a_worker_five_points_under_the_hosts_real_time_limit() {
        assert!((RestGuard::duty_for(950_000, 1_000_000) - 0.90).abs() < 1e-9);
        // No limit: still at most 90%.
        assert!((RestGuard::duty_for(-1, 1_000_000) - 0.90).abs() < 1e-9);
        // 80% allowed: 75%.
        assert!((RestGuard::duty_for(800_000, 1_000_000) - 0.75).abs() < 1e-9);
        // Almost nothing allowed: never under half the core (the kernel then throttles; the operator asked for it).
        assert!((RestGuard::duty_for(10_000, 1_000_000) - 0.5).abs() < 1e-9);
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
