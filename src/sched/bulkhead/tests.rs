//! Real threads, bounded time: every wait here polls with a deadline and fails loudly instead of hanging.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Once};
use std::time::Duration;

use super::*;

fn t(n: u32) -> TenantId {
    TenantId(n)
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn tenant(weight: u32, capacity: usize, max_wait: Duration) -> TenantConfig {
    TenantConfig { weight, capacity, max_wait, max_in_flight: None }
}

/// The payload of the panics these tests provoke; the hook below keeps them out of the test output.
struct SilentPanic;

fn silence_provoked_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<SilentPanic>().is_none() {
                previous(info);
            }
        }));
    });
}

fn config(workers: usize, scheduler: SchedulerKind) -> BulkheadConfig {
    BulkheadConfig { workers, scheduler, quantum: 1, pin: Vec::new(), realtime: None }
}

#[test]
fn every_item_is_processed_in_both_modes() {
    for kind in [SchedulerKind::Fair, SchedulerKind::Fifo] {
        let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let c = Arc::clone(&counts);
        let pool = Arc::new(
            Bulkhead::start(config(2, kind), move |tenant: TenantId, _: u32| {
                c[tenant.0 as usize].fetch_add(1, SeqCst);
            })
            .unwrap(),
        );
        assert_eq!(pool.scheduler(), kind);
        for i in 0..4 {
            pool.configure_tenant(t(i), tenant(i + 1, 1_000, Duration::from_secs(60))).unwrap();
        }
        let submitters: Vec<_> = (0..4u32)
            .map(|i| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    for k in 0..1_000 {
                        pool.submit(t(i), k, 1, Instant::now()).unwrap();
                    }
                })
            })
            .collect();
        for s in submitters {
            s.join().unwrap();
        }
        wait_until("all 4000 items are processed", || counts.iter().map(|c| c.load(SeqCst)).sum::<u64>() == 4_000);
        wait_until("both workers are idle again", || pool.pool_stats().idle_workers == 2);
        for i in 0..4 {
            let s = pool.stats(t(i)).unwrap();
            assert_eq!(counts[i as usize].load(SeqCst), 1_000);
            assert_eq!((s.queue.enqueued, s.queue.dequeued, s.processed, s.panics), (1_000, 1_000, 1_000, 0));
            assert_eq!(s.queue.wait.count(), 1_000);
            assert_eq!(s.queue.queued + s.queue.in_flight as usize, 0);
        }
        let p = pool.pool_stats();
        assert_eq!((p.workers, p.queued, p.shut_down), (2, 0, false));
    }
}

/// Two workers; tenant 0's handler sleeps 50 ms per item, tenant 1's returns at once. Returns the most workers
/// tenant 0 held at once and tenant 1's worst wait (submit to handler start).
fn slow_and_fast(kind: SchedulerKind) -> (u32, Duration) {
    let current = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let worst_fast_wait_us = Arc::new(AtomicU64::new(0));
    let (c, m, w) = (Arc::clone(&current), Arc::clone(&most), Arc::clone(&worst_fast_wait_us));
    let pool = Bulkhead::start(config(2, kind), move |tenant: TenantId, submitted: Instant| {
        if tenant == t(0) {
            let now = c.fetch_add(1, SeqCst) + 1;
            m.fetch_max(now, SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            c.fetch_sub(1, SeqCst);
        } else {
            w.fetch_max(submitted.elapsed().as_micros() as u64, SeqCst);
        }
    })
    .unwrap();
    pool.configure_tenant(t(0), tenant(1, 100, Duration::from_secs(60))).unwrap();
    pool.configure_tenant(t(1), tenant(1, 100, Duration::from_secs(60))).unwrap();
    if kind == SchedulerKind::Fair {
        assert_eq!(pool.stats(t(0)).unwrap().max_in_flight, 1, "weights 1:1 on 2 workers: one worker each");
    }
    for _ in 0..6 {
        pool.submit(t(0), Instant::now(), 1, Instant::now()).unwrap();
    }
    // A call's worth of frames, sped up: one every 5 ms for as long as the slow backlog lasts.
    for _ in 0..60 {
        pool.submit(t(1), Instant::now(), 1, Instant::now()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_until("all items are processed", || {
        pool.stats(t(0)).unwrap().processed == 6 && pool.stats(t(1)).unwrap().processed == 60
    });
    assert_eq!(pool.stats(t(1)).unwrap().queue.dropped_deadline, 0);
    (most.load(SeqCst), Duration::from_micros(worst_fast_wait_us.load(SeqCst)))
}

#[test]
fn a_slow_tenant_holds_at_most_its_share_and_others_keep_flowing() {
    let (most, worst) = slow_and_fast(SchedulerKind::Fair);
    assert_eq!(most, 1, "the slow tenant held {most} workers at once");
    // The fast tenant always finds the other worker free; 25 ms is half a slow item, a generous margin for a
    // loaded test machine (unloaded it is tens of microseconds).
    assert!(worst < Duration::from_millis(25), "fast tenant waited up to {worst:?}");
}

#[test]
fn without_the_bulkhead_a_slow_tenant_takes_every_worker() {
    // The comparison: FIFO enforces no cap, so the slow tenant's backlog occupies both workers.
    let (most, _) = slow_and_fast(SchedulerKind::Fifo);
    assert_eq!(most, 2);
}

#[test]
fn a_panicking_handler_is_counted_and_the_workers_survive() {
    silence_provoked_panics();
    let done = Arc::new(AtomicU64::new(0));
    let d = Arc::clone(&done);
    let pool = Bulkhead::start(config(2, SchedulerKind::Fair), move |_: TenantId, item: u32| {
        if item.is_multiple_of(2) {
            std::panic::panic_any(SilentPanic);
        }
        d.fetch_add(1, SeqCst);
    })
    .unwrap();
    pool.configure_tenant(t(0), tenant(1, 200, Duration::from_secs(60))).unwrap();
    pool.configure_tenant(t(1), tenant(1, 200, Duration::from_secs(60))).unwrap();
    for k in 0..100 {
        pool.submit(t(0), k, 1, Instant::now()).unwrap();
    }
    wait_until("100 items end", || {
        let s = pool.stats(t(0)).unwrap();
        s.processed + s.panics == 100
    });
    let s = pool.stats(t(0)).unwrap();
    assert_eq!((s.processed, s.panics, s.queue.in_flight), (50, 50, 0));
    // Both workers are still there and serve everyone.
    wait_until("both workers are idle", || pool.pool_stats().idle_workers == 2);
    for k in 0..10 {
        pool.submit(t(1), 2 * k + 1, 1, Instant::now()).unwrap();
    }
    wait_until("the next items are processed", || pool.stats(t(1)).unwrap().processed == 10);
    assert_eq!(pool.stats(t(1)).unwrap().panics, 0);
    assert_eq!(done.load(SeqCst), 60);
}

#[test]
fn shutdown_joins_workers_and_counts_what_it_dropped() {
    let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
    let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(1);
    let finished = Arc::new(AtomicU64::new(0));
    let f = Arc::clone(&finished);
    let pool = Bulkhead::start(config(1, SchedulerKind::Fair), move |_: TenantId, item: u32| {
        if item == 0 {
            let _ = started_tx.send(());
            let _ = gate_rx.recv_timeout(Duration::from_secs(10));
        }
        f.fetch_add(1, SeqCst);
    })
    .unwrap();
    pool.configure_tenant(t(0), tenant(1, 20, Duration::from_secs(60))).unwrap();
    pool.submit(t(0), 0, 1, Instant::now()).unwrap();
    started_rx.recv_timeout(Duration::from_secs(10)).expect("the worker started item 0");
    for k in 1..10 {
        pool.submit(t(0), k, 1, Instant::now()).unwrap();
    }
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        gate_tx.send(()).unwrap();
    });
    // Drops the 9 queued, then waits for item 0 to finish and the worker to exit.
    assert_eq!(pool.shutdown(), 9);
    opener.join().unwrap();
    assert_eq!(finished.load(SeqCst), 1, "shutdown returned only after the running item finished");
    let s = pool.stats(t(0)).unwrap();
    assert_eq!((s.processed, s.queue.dropped_drained, s.queue.queued), (1, 9, 0));
    let p = pool.pool_stats();
    assert_eq!((p.shut_down, p.dropped_at_shutdown, p.idle_workers), (true, 9, 0));
    let r = pool.submit(t(0), 99, 1, Instant::now()).unwrap_err();
    assert_eq!((r.reason, r.item), (RefuseReason::ShutDown, 99));
    assert_eq!(pool.pool_stats().refused_shut_down, 1);
    assert_eq!(pool.shutdown(), 0, "idempotent");
}

#[test]
fn worker_shares_follow_weights_and_caps() {
    let pool = Bulkhead::start(config(4, SchedulerKind::Fair), |_: TenantId, _: ()| {}).unwrap();
    let long = Duration::from_secs(60);
    pool.configure_tenant(t(0), tenant(1, 10, long)).unwrap();
    assert_eq!(pool.stats(t(0)).unwrap().max_in_flight, 4, "alone, a tenant may use every worker");
    pool.configure_tenant(t(1), tenant(1, 10, long)).unwrap();
    pool.configure_tenant(t(2), tenant(2, 10, long)).unwrap();
    let limits =
        |pool: &Bulkhead<()>| -> Vec<u32> { (0..3).map(|i| pool.stats(t(i)).unwrap().max_in_flight).collect() };
    assert_eq!(limits(&pool), vec![1, 1, 2], "ceil(4 * w / 4)");
    pool.configure_tenant(t(0), TenantConfig { max_in_flight: Some(3), ..tenant(1, 10, long) }).unwrap();
    assert_eq!(limits(&pool), vec![3, 1, 2], "an explicit cap wins");
    pool.configure_tenant(t(1), TenantConfig { max_in_flight: Some(99), ..tenant(1, 10, long) }).unwrap();
    assert_eq!(limits(&pool), vec![3, 4, 2], "never more than the workers");
    pool.configure_tenant(t(3), tenant(1000, 10, long)).unwrap();
    assert_eq!(pool.stats(t(2)).unwrap().max_in_flight, 1, "never less than one");
    assert_eq!(pool.stats(t(3)).unwrap().max_in_flight, 4);
    pool.remove_tenant(t(3));
    assert_eq!(pool.stats(t(2)).unwrap().max_in_flight, 2, "a removed tenant's share goes back");
    assert_eq!(pool.submit(t(3), (), 1, Instant::now()).unwrap_err().reason, RefuseReason::UnknownTenant);
    assert_eq!(pool.submit(t(9), (), 1, Instant::now()).unwrap_err().reason, RefuseReason::UnknownTenant);
    assert_eq!(pool.pool_stats().refused_unknown_tenant, 2);
    assert_eq!(pool.configure_tenant(t(0), tenant(0, 10, long)), Err(ConfigError::ZeroWeight));
    assert_eq!(pool.stats(t(0)).unwrap().max_in_flight, 3, "a refused configuration changes nothing");
    assert!(pool.stats(t(8)).is_none());
}

#[test]
fn late_items_are_dropped_by_the_pool_not_processed() {
    // One worker busy for 100 ms; items with a 10 ms budget queued behind it are dropped as late when it frees.
    let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
    let pool = Bulkhead::start(config(1, SchedulerKind::Fair), move |tenant: TenantId, _: ()| {
        if tenant == t(0) {
            let _ = started_tx.try_send(());
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .unwrap();
    pool.configure_tenant(t(0), tenant(1, 10, Duration::from_secs(60))).unwrap();
    pool.configure_tenant(t(1), tenant(1, 10, Duration::from_millis(10))).unwrap();
    pool.submit(t(0), (), 1, Instant::now()).unwrap();
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    for _ in 0..5 {
        pool.submit(t(1), (), 1, Instant::now()).unwrap();
    }
    wait_until("the late items are dropped", || pool.stats(t(1)).unwrap().queue.dropped_deadline == 5);
    assert_eq!(pool.stats(t(1)).unwrap().processed, 0);
    assert_eq!(pool.stats(t(0)).unwrap().queue.dropped_deadline, 0);
}

/// An in-memory [`Source`]: items pushed by the test become ready; a blocked poll waits on a condvar until an item
/// or a wake-up comes. Refused items are kept for the test to look at.
#[derive(Default)]
struct TestSource {
    ready: parking_lot::Mutex<(std::collections::VecDeque<(TenantId, u32)>, bool)>,
    cv: parking_lot::Condvar,
    blocked_polls: AtomicU64,
    wakes: AtomicU64,
    refused: parking_lot::Mutex<Vec<(TenantId, u32, RefuseReason)>>,
}

impl TestSource {
    fn push(&self, tenant: TenantId, item: u32) {
        self.ready.lock().0.push_back((tenant, item));
        self.cv.notify_all();
    }
}

impl Source<u32> for TestSource {
    fn poll(&self, ready: &mut Vec<(TenantId, u32)>, block: bool) {
        let mut g = self.ready.lock();
        if block {
            self.blocked_polls.fetch_add(1, SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            while g.0.is_empty() && !g.1 && Instant::now() < deadline {
                self.cv.wait_until(&mut g, deadline);
            }
            g.1 = false;
        }
        while ready.len() < ready.capacity()
            && let Some(x) = g.0.pop_front()
        {
            ready.push(x);
        }
    }

    fn wake(&self) {
        self.wakes.fetch_add(1, SeqCst);
        self.ready.lock().1 = true;
        self.cv.notify_all();
    }

    fn refused(&self, tenant: TenantId, item: u32, reason: RefuseReason) {
        self.refused.lock().push((tenant, item, reason));
    }
}

#[test]
fn a_source_feeds_the_workers_and_handed_back_items_run_again() {
    let source = Arc::new(TestSource::default());
    let served = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let s = Arc::clone(&served);
    let dyn_source: Arc<dyn Source<u32>> = source.clone();
    // Items below 100 are handed back once, as 100 + item.
    let pool = Bulkhead::start_with_source(config(2, SchedulerKind::Fair), dyn_source, move |tenant, item: u32| {
        s.lock().push((tenant, item));
        (item < 100).then_some(item + 100)
    })
    .unwrap();
    pool.configure_tenant(t(0), tenant(1, 1_000, Duration::from_secs(60))).unwrap();
    wait_until("a worker waits in the source", || source.blocked_polls.load(SeqCst) >= 1);
    for k in 0..50 {
        source.push(t(0), k);
    }
    wait_until("100 items served", || served.lock().len() == 100);
    let mut items: Vec<u32> = served.lock().iter().map(|&(_, i)| i).collect();
    items.sort_unstable();
    assert_eq!(items, (0..50).chain(100..150).collect::<Vec<_>>());
    let s = pool.stats(t(0)).unwrap();
    assert_eq!((s.queue.enqueued, s.processed), (100, 100));
    // A submit while the only idle worker waits in the source wakes it.
    wait_until("both workers idle", || pool.pool_stats().idle_workers == 2);
    let wakes = source.wakes.load(SeqCst);
    pool.submit(t(0), 500, 1, Instant::now()).unwrap();
    wait_until("the submitted item served", || served.lock().iter().any(|&(_, i)| i == 500));
    assert!(source.wakes.load(SeqCst) > wakes || pool.pool_stats().workers == 2, "a worker was woken");
    assert!(source.refused.lock().is_empty());
    // Shutdown wakes the worker blocked in the source and joins it.
    assert_eq!(pool.shutdown(), 0);
    assert!(pool.pool_stats().shut_down);
}

#[test]
fn a_submit_wakes_a_lone_worker_blocked_in_the_source() {
    let source = Arc::new(TestSource::default());
    let served = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&served);
    let dyn_source: Arc<dyn Source<u32>> = source.clone();
    let pool = Bulkhead::start_with_source(config(1, SchedulerKind::Fair), dyn_source, move |_, _: u32| {
        s.fetch_add(1, SeqCst);
        None
    })
    .unwrap();
    pool.configure_tenant(t(0), tenant(1, 10, Duration::from_secs(60))).unwrap();
    wait_until("the worker waits in the source", || source.blocked_polls.load(SeqCst) >= 1);
    let t0 = Instant::now();
    pool.submit(t(0), 1, 1, Instant::now()).unwrap();
    wait_until("the item served", || served.load(SeqCst) == 1);
    // Woken, not found by the source's 10 s safety timeout.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(source.wakes.load(SeqCst) >= 1);
}

#[test]
fn items_the_queue_refuses_go_back_to_the_source() {
    let source = Arc::new(TestSource::default());
    let dyn_source: Arc<dyn Source<u32>> = source.clone();
    let pool = Bulkhead::start_with_source(config(1, SchedulerKind::Fair), dyn_source, |_, _: u32| None).unwrap();
    pool.configure_tenant(t(0), tenant(1, 10, Duration::from_secs(60))).unwrap();
    // Tenant 3 is not configured.
    source.push(t(3), 7);
    source.push(t(0), 8);
    wait_until("tenant 0's item served", || pool.stats(t(0)).unwrap().processed == 1);
    wait_until("the refusal handed back", || !source.refused.lock().is_empty());
    assert_eq!(source.refused.lock().as_slice(), &[(t(3), 7, RefuseReason::UnknownTenant)]);
    assert_eq!(pool.pool_stats().refused_unknown_tenant, 1);
}

#[test]
fn load_counts_each_tenants_handler_time_and_the_workers_cpu() {
    /// Spins (uses CPU) for `ms`, or sleeps (uses none) when `ms` is negative.
    fn work(ms: i64) {
        let until = Instant::now() + Duration::from_millis(ms.unsigned_abs());
        while Instant::now() < until {
            if ms < 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let pool = Bulkhead::start(config(1, SchedulerKind::Fair), |_, ms: i64| work(ms)).unwrap();
    pool.configure_tenant(t(0), tenant(1, 10, Duration::from_secs(60))).unwrap();
    pool.configure_tenant(t(1), tenant(3, 10, Duration::from_secs(60))).unwrap();
    let start = pool.load();
    for _ in 0..4 {
        pool.submit(t(0), 25, 1, Instant::now()).unwrap();
    }
    pool.submit(t(1), -100, 1, Instant::now()).unwrap();
    wait_until("all 5 items are processed", || {
        pool.stats(t(0)).unwrap().processed == 4 && pool.stats(t(1)).unwrap().processed == 1
    });
    let done = pool.load();
    assert_eq!(done.workers, 1);
    assert_eq!((done.tenants[0].weight, done.tenants[1].weight), (1, 3));
    // Handler time is wall time, spinning or sleeping.
    assert!(done.tenants[0].busy >= Duration::from_millis(100), "{done:?}");
    assert!(done.tenants[1].busy >= Duration::from_millis(100), "{done:?}");
    // CPU time counts the 100 ms of spinning, not the 100 ms of sleep (a loaded CI core may give the spin less).
    let cpu = done.cpu - start.cpu;
    assert!(cpu >= Duration::from_millis(30) && cpu < Duration::from_millis(180), "{cpu:?}");
    // An idle worker uses next to none.
    std::thread::sleep(Duration::from_millis(200));
    let idle = pool.load().cpu - done.cpu;
    assert!(idle < Duration::from_millis(50), "{idle:?}");
}

#[test]
fn pinned_workers_run_only_on_their_cpus_round_robin() {
    let allowed = cpus::allowed_cpus().unwrap();
    let (first, last) = (allowed[0], *allowed.last().unwrap());
    // Each item reports the CPUs its worker may run on, keyed by the worker's thread name.
    let seen = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let s = Arc::clone(&seen);
    let pin = vec![last, first];
    let pool = Bulkhead::start(
        BulkheadConfig { workers: 3, scheduler: SchedulerKind::Fair, quantum: 1, pin, realtime: None },
        move |_, _: u32| {
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            s.lock().insert(name, cpus::allowed_cpus().unwrap());
            // Long enough that the other workers take the next items.
            std::thread::sleep(Duration::from_millis(20));
        },
    )
    .unwrap();
    assert_eq!(pool.workers(), 3);
    pool.configure_tenant(t(0), TenantConfig { max_in_flight: Some(3), ..tenant(1, 100, Duration::from_secs(60)) })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().len() < 3 {
        assert!(Instant::now() < deadline, "not every worker took an item: {:?}", seen.lock());
        for k in 0..3 {
            let _ = pool.submit(t(0), k, 1, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = seen.lock();
    assert_eq!(seen["fairvox-sched-0"], vec![last]);
    assert_eq!(seen["fairvox-sched-1"], vec![first]);
    assert_eq!(seen["fairvox-sched-2"], vec![last]);

    // Unpinned, and workers = 0 with CPUs named: one worker per CPU.
    let pool =
        Bulkhead::start(BulkheadConfig { pin: vec![first], ..BulkheadConfig::default() }, |_, _: u32| {}).unwrap();
    assert_eq!(pool.workers(), 1);
}

#[test]
fn workers_run_at_the_realtime_priority_asked_or_the_pool_does_not_start() {
    let policy = Arc::new(Mutex::new(None));
    let p = Arc::clone(&policy);
    let started = Bulkhead::start(BulkheadConfig { workers: 2, realtime: Some(7), ..BulkheadConfig::default() }, {
        move |_, _: u32| {
            *p.lock() = Some(cpus::current_policy().unwrap());
        }
    });
    // As root (CI) the policy applies; without the privilege the pool refuses to start, naming the setting.
    let privileged = std::thread::spawn(|| cpus::set_realtime(7).is_ok()).join().unwrap();
    match started {
        Ok(pool) => {
            assert!(privileged, "a pool asked for SCHED_FIFO started without the privilege to have it");
            pool.configure_tenant(t(0), tenant(1, 100, Duration::from_secs(60))).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while policy.lock().is_none() {
                assert!(Instant::now() < deadline, "no item served");
                let _ = pool.submit(t(0), 1, 1, Instant::now());
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(*policy.lock(), Some((libc::SCHED_FIFO, 7)));
        }
        Err(e) => {
            assert!(!privileged, "{e}");
            let text = e.to_string();
            assert!(text.starts_with("media.realtime_priority: scheduler worker "), "{text}");
            assert!(matches!(e, BulkheadError::Realtime { priority: 7, .. }), "{e:?}");
        }
    }

    // A CPU the process may not use: the pool does not start half-placed.
    let e =
        Bulkhead::start(BulkheadConfig { workers: 1, pin: vec![cpus::MAX_CPUS - 1], ..BulkheadConfig::default() }, {
            |_, _: u32| {}
        })
        .err()
        .expect("pinned to a cpu outside the allowed set");
    assert!(matches!(e, BulkheadError::Pin { worker: 0, .. }), "{e:?}");
}

#[test]
fn a_realtime_worker_kept_busy_rests_and_a_normal_one_does_not() {
    // Each item keeps the worker on its core for 1 ms; 400 of them queued at once keep it busy for 400 ms straight.
    let spin = |_, _: u32| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1) {
            std::hint::spin_loop();
        }
    };
    let busy_run = |realtime: Option<u8>| -> Option<PoolLoad> {
        let pool = Bulkhead::start(BulkheadConfig { workers: 1, realtime, ..BulkheadConfig::default() }, spin).ok()?;
        pool.configure_tenant(t(0), tenant(1, 500, Duration::from_secs(60))).unwrap();
        for k in 0..400 {
            pool.submit(t(0), k, 1, Instant::now()).unwrap();
        }
        wait_until("every item served", || pool.stats(t(0)).is_some_and(|s| s.processed == 400));
        Some(pool.load())
    };
    assert_eq!(busy_run(None).unwrap().rests, 0, "the normal policy needs no rests");
    // Without the privilege the pool does not start (covered above); as root (CI) it rests.
    if let Some(load) = busy_run(Some(5)) {
        // 200 ms on the banked credit, then a 1 ms rest per 9 ms of running: about 20 in the other 200 ms.
        assert!((12..=30).contains(&load.rests), "{load:?}");
    }
}
