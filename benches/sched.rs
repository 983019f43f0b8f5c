//! The per-frame cost of the scheduler: one push plus one pop (plus `done`) with 1, 10 and 1000 tenants that all
//! have work queued, for the fair queue and the FIFO side by side.
//!
//! Before measuring, it prints what the two disciplines do to a quiet tenant next to a noisy one (the fake-clock
//! scenario of the unit tests: 1 pop per ms, the noisy tenant pushing 2 frames per ms, the quiet one 1 per 20 ms,
//! 40 ms deadline), so a run shows the cost and the point of fairness together.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fairvox::sched::{Scheduler, SchedulerKind, TenantConfig};
use fairvox::tenant::TenantId;

const KINDS: [SchedulerKind; 2] = [SchedulerKind::Fair, SchedulerKind::Fifo];

fn isolation_summary() {
    for kind in KINDS {
        let mut q: Scheduler<u64> = Scheduler::new(kind, 1);
        let conf = TenantConfig { weight: 1, capacity: 100, max_wait: Duration::from_millis(40), max_in_flight: None };
        let (noisy, quiet) = (TenantId(0), TenantId(1));
        q.configure(noisy, conf).unwrap();
        q.configure(quiet, conf).unwrap();
        let start = Instant::now();
        for tick in 0..10_000u64 {
            let now = start + Duration::from_millis(tick);
            let _ = q.push(noisy, tick, 1, now);
            let _ = q.push(noisy, tick, 1, now);
            if tick % 20 == 0 {
                let _ = q.push(quiet, tick, 1, now);
            }
            if let Some(p) = q.pop(now, |_, _, _| {}) {
                q.done(p.tenant);
            }
        }
        for (name, t) in [("noisy", noisy), ("quiet", quiet)] {
            let s = q.stats(t).unwrap();
            eprintln!(
                "isolation {:>4} {name}: pushed {:>5}, served {:>5}, dropped deadline {:>5}, queue_full {:>4}, \
                 wait p50 <= {:?}, max {:?}",
                kind.label(),
                s.enqueued + s.dropped_queue_full,
                s.dequeued,
                s.dropped_deadline,
                s.dropped_queue_full,
                s.wait.quantile_upper_bound(0.5).unwrap_or_default(),
                s.wait.max(),
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    isolation_summary();
    let mut group = c.benchmark_group("sched_push_pop");
    group.throughput(Throughput::Elements(1));
    for kind in KINDS {
        for tenants in [1u32, 10, 1000] {
            let mut q: Scheduler<[u8; 160]> = Scheduler::new(kind, 1);
            let cfg =
                TenantConfig { weight: 1, capacity: 16, max_wait: Duration::from_secs(3600), max_in_flight: None };
            let now = Instant::now();
            for t in 0..tenants {
                q.configure(TenantId(t), cfg).unwrap();
                for _ in 0..8 {
                    q.push(TenantId(t), [0; 160], 1, now).unwrap();
                }
            }
            group.bench_function(BenchmarkId::new(kind.label(), tenants), |b| {
                b.iter(|| {
                    // Every tenant stays backlogged: what is popped is pushed back for the same tenant.
                    let p = q.pop(now, |_, _, _| {}).unwrap();
                    q.done(p.tenant);
                    q.push(p.tenant, black_box(p.item), 1, now).unwrap();
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
