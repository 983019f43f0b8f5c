//! Fake-clock tests of the fair queue and of the FIFO it is compared with. Time only moves when a test moves it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn t(n: u32) -> TenantId {
    TenantId(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A tenant that never hits its deadline.
fn cfg(weight: u32, capacity: usize) -> TenantConfig {
    TenantConfig { weight, capacity, max_wait: Duration::from_secs(3600), max_in_flight: None }
}

fn no_drop<T: fmt::Debug>(tenant: TenantId, item: T, reason: DropReason) {
    panic!("unexpected drop of {item:?} of {tenant:?}: {reason:?}");
}

fn assert_within_1pct(what: &str, got: f64, want: f64) {
    assert!(((got - want) / want).abs() < 0.01, "{what}: got {got}, want {want} (±1%)");
}

/// Pops `n` items, putting each back at once (so every tenant stays backlogged) and marking it done; returns the
/// items served per tenant.
fn serve_backlogged(q: &mut Wfq<u32>, n: usize, now: Instant) -> Vec<u64> {
    let mut served = vec![0u64; 8];
    for _ in 0..n {
        let p = q.pop(now, no_drop).expect("backlogged queue returned nothing");
        served[p.tenant.0 as usize] += 1;
        q.done(p.tenant);
        q.push(p.tenant, p.item, p.cost, now).expect("refill");
    }
    served
}

#[test]
fn long_run_shares_match_weights_within_1pct() {
    let now = Instant::now();
    let weights = [1u32, 2, 5];
    for quantum in [1, 3, 10] {
        let mut q = Wfq::new(quantum);
        for (i, w) in weights.iter().enumerate() {
            q.configure(t(i as u32), cfg(*w, 16)).unwrap();
            for _ in 0..16 {
                q.push(t(i as u32), 1, 1, now).unwrap();
            }
        }
        let served = serve_backlogged(&mut q, 100_000, now);
        for (i, w) in weights.iter().enumerate() {
            let want = 100_000.0 * f64::from(*w) / 8.0;
            assert_within_1pct(&format!("quantum {quantum} tenant {i}"), served[i] as f64, want);
            let s = q.stats(t(i as u32)).unwrap();
            assert_eq!(s.dequeued, served[i]);
            assert_eq!(s.served_cost, served[i]);
        }
    }
}

#[test]
fn idle_tenant_share_goes_to_busy_ones() {
    let now = Instant::now();
    let mut q = Wfq::new(1);
    for (i, w) in [1u32, 2, 5].iter().enumerate() {
        q.configure(t(i as u32), cfg(*w, 16)).unwrap();
    }
    // Tenant 2 (weight 5) is idle: 0 and 1 split everything 1:2, and the queue never idles while they have work.
    for i in 0..2 {
        for _ in 0..16 {
            q.push(t(i), 1, 1, now).unwrap();
        }
    }
    let served = serve_backlogged(&mut q, 30_000, now);
    assert_eq!(served[2], 0);
    assert_eq!(served[0] + served[1], 30_000, "work-conserving: every pop served someone");
    assert_within_1pct("tenant 0", served[0] as f64, 10_000.0);
    assert_within_1pct("tenant 1", served[1] as f64, 20_000.0);
    // Tenant 2 wakes up: it takes its 5/8 at once.
    for _ in 0..16 {
        q.push(t(2), 1, 1, now).unwrap();
    }
    let served = serve_backlogged(&mut q, 80_000, now);
    assert_within_1pct("tenant 2 after waking", served[2] as f64, 50_000.0);
    // Both others go idle: tenant 2 gets everything.
    q.remove(t(0), drop);
    q.remove(t(1), drop);
    let served = serve_backlogged(&mut q, 1_000, now);
    assert_eq!(served[2], 1_000);
}

#[test]
fn no_backlogged_tenant_starves() {
    // A weight-1 tenant among heavy ones, with mixed costs: between two of its services, the others can only use
    // one turn's credit each, quantum * weight plus the carry-over of less than one item.
    let now = Instant::now();
    let quantum = 4;
    let weights = [1u32, 50, 100];
    let mut q = Wfq::new(quantum);
    let mut k = 0u32;
    for (i, w) in weights.iter().enumerate() {
        q.configure(t(i as u32), cfg(*w, 32)).unwrap();
        for _ in 0..32 {
            k += 1;
            q.push(t(i as u32), k, 1 + k % 4, now).unwrap();
        }
    }
    let bound: u64 = weights[1..].iter().map(|w| u64::from(quantum) * u64::from(w + 1)).sum();
    let (mut gap, mut max_gap, mut low_served) = (0u64, 0u64, 0u64);
    for _ in 0..200_000 {
        let p = q.pop(now, no_drop).unwrap();
        if p.tenant == t(0) {
            max_gap = max_gap.max(gap);
            gap = 0;
            low_served += 1;
        } else {
            gap += 1;
        }
        q.done(p.tenant);
        k += 1;
        q.push(p.tenant, k, 1 + k % 4, now).unwrap();
    }
    assert!(low_served > 0);
    assert!(max_gap <= bound, "tenant 0 waited {max_gap} pops, bound {bound}");
    // And it is not a vacuous bound: the heavy tenants do fill most of it.
    assert!(max_gap >= bound / 3, "max gap {max_gap} suspiciously small for bound {bound}");
}

/// The noisy/quiet scenario on a fake clock, 1 ms per tick for 10 s: the server pops one item per tick; the noisy
/// tenant pushes 2 per tick (twice what the server can do), the quiet one 1 every 20 ms (a single call). Both
/// weight 1, capacity 100, `max_wait` 40 ms. Returns (noisy, quiet) stats.
fn noisy_and_quiet(q: &mut Scheduler<u64>) -> (TenantStats, TenantStats) {
    let (noisy, quiet) = (t(0), t(1));
    let conf = TenantConfig { weight: 1, capacity: 100, max_wait: ms(40), max_in_flight: None };
    q.configure(noisy, conf).unwrap();
    q.configure(quiet, conf).unwrap();
    let start = Instant::now();
    let mut id = 0u64;
    let mut dropped_quiet = 0u64;
    for tick in 0..10_000u64 {
        let now = start + ms(tick);
        for _ in 0..2 {
            id += 1;
            let _ = q.push(noisy, id, 1, now);
        }
        if tick % 20 == 0 {
            id += 1;
            let _ = q.push(quiet, id, 1, now);
        }
        let popped = q.pop(now, |tenant, _, reason| {
            assert_eq!(reason, DropReason::Deadline);
            if tenant == quiet {
                dropped_quiet += 1;
            }
        });
        if let Some(p) = popped {
            q.done(p.tenant);
        }
    }
    let (n, s) = (q.stats(noisy).unwrap(), q.stats(quiet).unwrap());
    assert_eq!(s.dropped_deadline, dropped_quiet, "the callback saw every quiet drop");
    (n, s)
}

#[test]
fn deadline_drops_hit_only_the_late_tenant() {
    let (noisy, quiet) = noisy_and_quiet(&mut Scheduler::new(SchedulerKind::Fair, 1));
    // The quiet tenant: every frame served, within one round (≤ 1 ms here), nothing dropped or refused.
    assert_eq!(quiet.enqueued, 500);
    assert_eq!(quiet.dequeued + quiet.queued as u64, 500);
    assert_eq!(quiet.dropped_deadline, 0);
    assert_eq!(quiet.dropped_queue_full, 0);
    assert!(quiet.wait.max() <= ms(1), "quiet max wait {:?}", quiet.wait.max());
    // The noisy tenant pays for its own backlog: about half its frames are too late, and what it gets is
    // everything the quiet one leaves.
    assert!(noisy.dropped_deadline > 8_000, "noisy deadline drops {}", noisy.dropped_deadline);
    assert!(noisy.dequeued >= 10_000 - 500 - 1, "noisy served {}", noisy.dequeued);
    assert!(noisy.wait.max() <= ms(40), "nothing is served past its deadline");
}

#[test]
fn fifo_makes_the_quiet_tenant_wait_and_drop() {
    let (noisy, quiet) = noisy_and_quiet(&mut Scheduler::new(SchedulerKind::Fifo, 1));
    // The opposite of the fair queue: each quiet frame queues behind about 80 noisy ones that are served at 40 ms
    // of age, so it reaches the head just past its deadline. Nearly all quiet frames are lost (496 of 500 as
    // built); the queue drops the quiet tenant's frames for the noisy tenant's backlog.
    assert_eq!(quiet.enqueued + quiet.dropped_queue_full, 500);
    let lost = quiet.dropped_deadline + quiet.dropped_queue_full;
    assert!(lost >= 450, "quiet frames lost in fifo mode: {lost}");
    assert!(quiet.dequeued <= 10, "quiet frames served in fifo mode: {}", quiet.dequeued);
    assert!(noisy.dropped_deadline > 0);
    assert!(noisy.dequeued > 9_900, "the noisy tenant gets nearly all the service: {}", noisy.dequeued);
}

#[test]
fn queue_bound_refuses_returns_and_counts() {
    let now = Instant::now();
    let mut q = Wfq::new(4);
    q.configure(t(0), cfg(1, 3)).unwrap();
    for i in 0..3 {
        q.push(t(0), i, 1, now).unwrap();
    }
    for i in 3..5 {
        let r = q.push(t(0), i, 1, now).unwrap_err();
        assert_eq!(r.reason, RefuseReason::QueueFull);
        assert_eq!(r.reason.label(), "queue_full");
        assert_eq!(r.into_item(), i);
    }
    assert_eq!(q.tenant_len(t(0)), 3);
    assert_eq!(q.stats(t(0)).unwrap().dropped_queue_full, 2);
    assert_eq!(q.stats(t(0)).unwrap().dropped(DropReason::QueueFull), 2);
    assert_eq!(q.pop(now, no_drop).unwrap().item, 0);
    q.push(t(0), 5, 1, now).unwrap();
    // Other bounds: unknown tenant, cost above the quantum (cost 0 counts as 1).
    let r = q.push(t(7), 9, 1, now).unwrap_err();
    assert_eq!((r.reason, r.item), (RefuseReason::UnknownTenant, 9));
    assert_eq!(q.refused_unknown_tenant(), 1);
    q.configure(t(1), cfg(1, 3)).unwrap();
    let r = q.push(t(1), 10, 5, now).unwrap_err();
    assert_eq!(r.reason, RefuseReason::CostTooLarge { cost: 5, max: 4 });
    assert_eq!(q.stats(t(1)).unwrap().refused_too_costly, 1);
    q.push(t(1), 11, 0, now).unwrap();
    assert_eq!(q.pop(now, no_drop).map(|p| (p.item, p.cost)), Some((1, 1)));
    assert_eq!(q.len(), 3);
    // Lowering the capacity keeps what is queued and refuses until below it.
    q.configure(t(0), cfg(1, 1)).unwrap();
    assert_eq!(q.tenant_len(t(0)), 2);
    assert_eq!(q.push(t(0), 12, 1, now).unwrap_err().reason, RefuseReason::QueueFull);
}

#[test]
fn fifo_bound_is_the_total_and_counts_the_pusher() {
    let now = Instant::now();
    let mut q = Fifo::new(1);
    q.configure(t(0), cfg(1, 2)).unwrap();
    q.configure(t(1), cfg(1, 3)).unwrap();
    assert_eq!(q.capacity(), 5);
    for i in 0..5 {
        q.push(t(0), i, 1, now).unwrap();
    }
    assert_eq!(q.push(t(1), 5, 1, now).unwrap_err().reason, RefuseReason::QueueFull);
    assert_eq!(q.stats(t(1)).unwrap().dropped_queue_full, 1);
    assert_eq!(q.stats(t(0)).unwrap().dropped_queue_full, 0);
    // Removing a tenant drains its items from the middle and lowers the bound.
    let mut q = Fifo::new(1);
    for i in 0..3 {
        q.configure(t(i), cfg(1, 4)).unwrap();
    }
    for i in 0..9u32 {
        q.push(t(i % 3), i, 1, now).unwrap();
    }
    let mut drained = Vec::new();
    assert_eq!(q.remove(t(1), |x| drained.push(x)), 3);
    assert_eq!(drained, vec![1, 4, 7]);
    assert_eq!(q.capacity(), 8);
    assert_eq!(q.tenant_len(t(1)), 0);
    assert_eq!(q.stats(t(1)).unwrap().dropped_drained, 3);
    let order: Vec<u32> = std::iter::from_fn(|| q.pop(now, no_drop).map(|p| p.item)).collect();
    assert_eq!(order, vec![0, 2, 3, 5, 6, 8]);
}

#[test]
fn cost_weighting_gives_bigger_items_proportionally_fewer_turns() {
    let now = Instant::now();
    let mut q = Wfq::new(4);
    q.configure(t(0), cfg(1, 8)).unwrap();
    q.configure(t(1), cfg(1, 8)).unwrap();
    for _ in 0..8 {
        q.push(t(0), 0, 1, now).unwrap();
        q.push(t(1), 0, 4, now).unwrap();
    }
    let served = serve_backlogged(&mut q, 50_000, now);
    assert_within_1pct("items, small vs big", served[0] as f64, 4.0 * served[1] as f64);
    let (a, b) = (q.stats(t(0)).unwrap(), q.stats(t(1)).unwrap());
    assert_within_1pct("cost served", a.served_cost as f64, b.served_cost as f64);
}

#[test]
fn weight_change_applies_from_the_next_turn() {
    let now = Instant::now();
    let mut q = Wfq::new(1);
    q.configure(t(0), cfg(1, 8)).unwrap();
    q.configure(t(1), cfg(1, 8)).unwrap();
    for _ in 0..8 {
        q.push(t(0), 0, 1, now).unwrap();
        q.push(t(1), 0, 1, now).unwrap();
    }
    let served = serve_backlogged(&mut q, 1_001, now);
    assert!(served[0].abs_diff(served[1]) <= 1);
    q.configure(t(0), cfg(3, 8)).unwrap();
    let served = serve_backlogged(&mut q, 40_000, now);
    assert_within_1pct("after reweighting", served[0] as f64, 30_000.0);
    // The exact sequence: tenant 0 gets 3 per round from its next turn on.
    let mut q = Wfq::new(1);
    q.configure(t(0), cfg(1, 8)).unwrap();
    q.configure(t(1), cfg(1, 8)).unwrap();
    for _ in 0..8 {
        q.push(t(0), 0, 1, now).unwrap();
        q.push(t(1), 0, 1, now).unwrap();
    }
    let mut seq = Vec::new();
    let mut take = |q: &mut Wfq<u32>, n: usize| {
        for _ in 0..n {
            let p = q.pop(now, no_drop).unwrap();
            seq.push(p.tenant.0);
            q.push(p.tenant, 0, 1, now).unwrap();
        }
    };
    take(&mut q, 1); // tenant 0's turn (weight 1) is used up
    q.configure(t(0), cfg(3, 8)).unwrap();
    take(&mut q, 8);
    assert_eq!(seq, vec![0, 1, 0, 0, 0, 1, 0, 0, 0]);
}

#[test]
fn a_tenant_at_its_in_flight_cap_is_skipped_and_keeps_its_place() {
    let now = Instant::now();
    let mut q = Wfq::new(1);
    let capped = TenantConfig { max_in_flight: Some(1), ..cfg(1, 8) };
    q.configure(t(0), capped).unwrap();
    q.configure(t(1), cfg(1, 8)).unwrap();
    for i in 0..4 {
        q.push(t(0), i, 1, now).unwrap();
        q.push(t(1), 10 + i, 1, now).unwrap();
    }
    // Tenant 0 gets one item, then is skipped while it holds it; tenant 1 flows.
    assert_eq!(q.pop(now, no_drop).map(|p| p.tenant), Some(t(0)));
    assert_eq!(q.stats(t(0)).unwrap().in_flight, 1);
    assert_eq!(q.pop(now, no_drop).map(|p| p.tenant), Some(t(1)));
    assert_eq!(q.pop(now, no_drop).map(|p| p.tenant), Some(t(1)));
    // Done: it is back, and served next (its turn was over, tenant 1's too).
    q.done(t(0));
    assert_eq!(q.pop(now, no_drop).map(|p| p.item), Some(1));
    // Only the capped tenant has work and it is at its cap: nothing to hand out, though items are queued.
    assert_eq!(q.pop(now, no_drop).map(|p| p.tenant), Some(t(1)));
    assert_eq!(q.pop(now, no_drop).map(|p| p.tenant), Some(t(1)));
    assert_eq!(q.tenant_len(t(1)), 0);
    assert!(q.pop(now, no_drop).is_none());
    assert!(!q.has_ready());
    assert_eq!(q.len(), 2);
    q.done(t(0));
    assert!(q.has_ready());
    assert_eq!(q.pop(now, no_drop).map(|p| p.item), Some(2));
    // Raising the cap applies at once.
    assert!(q.pop(now, no_drop).is_none());
    q.set_max_in_flight(t(0), Some(2)).unwrap();
    assert_eq!(q.pop(now, no_drop).map(|p| p.item), Some(3));
    assert_eq!(q.stats(t(0)).unwrap().in_flight, 2);
}

#[test]
fn a_capped_tenant_keeps_its_deficit_and_weighted_share() {
    // Tenant 0 (weight 3) may hold one item at a time, and each finishes at once: it is parked after every pop and
    // unparked by `done`. Resuming its interrupted turn keeps the 3:1 share; going to the back each time would give
    // 1:1, and re-crediting on each return would let its deficit grow without bound.
    let now = Instant::now();
    let mut q = Wfq::new(1);
    q.configure(t(0), TenantConfig { max_in_flight: Some(1), ..cfg(3, 8) }).unwrap();
    q.configure(t(1), cfg(1, 8)).unwrap();
    for _ in 0..8 {
        q.push(t(0), 0, 1, now).unwrap();
        q.push(t(1), 0, 1, now).unwrap();
    }
    let served = serve_backlogged(&mut q, 40_000, now);
    assert_within_1pct("capped weight-3 tenant", served[0] as f64, 30_000.0);
    assert!(q.slots[0].deficit <= 3, "deficit {} exceeds one turn", q.slots[0].deficit);
    // With the other tenant mid-turn when the capped one returns, the other one resumes afterwards.
    let mut q = Wfq::new(4);
    q.configure(t(0), TenantConfig { max_in_flight: Some(1), ..cfg(1, 8) }).unwrap();
    q.configure(t(1), cfg(1, 8)).unwrap();
    for i in 0..8 {
        q.push(t(0), i, 1, now).unwrap();
        q.push(t(1), 10 + i, 1, now).unwrap();
    }
    let mut seq = Vec::new();
    for k in 0..10 {
        let p = q.pop(now, no_drop).unwrap();
        seq.push(p.tenant.0);
        if k == 1 || k == 4 {
            q.done(t(0)); // its item finishes while tenant 1 is serving
        }
    }
    // 0 starts a turn (4 credit) and is parked after one item; 1 starts its turn; 0 returns with 3 credit left and
    // resumes at the front for one item (parked again); 1 resumes its turn (2 more); 0 resumes (1 left after);
    // 1 finishes its turn, then, with 0 still parked (no second `done`), takes a new one.
    assert_eq!(seq, vec![0, 1, 0, 1, 1, 0, 1, 1, 1, 1]);
}

#[test]
fn deadline_drops_at_pop_only_from_the_late_tenants_head() {
    let start = Instant::now();
    let mut q = Wfq::new(1);
    q.configure(t(0), TenantConfig { max_wait: ms(40), ..cfg(1, 8) }).unwrap();
    q.configure(t(1), TenantConfig { max_wait: ms(100), ..cfg(1, 8) }).unwrap();
    q.push(t(0), 0, 1, start).unwrap();
    q.push(t(0), 1, 1, start + ms(10)).unwrap();
    q.push(t(0), 2, 1, start + ms(30)).unwrap();
    q.push(t(1), 10, 1, start).unwrap();
    // At 50 ms: tenant 0's first item is late (50 ms > 40 ms); its second waited exactly 40 ms, which is not late;
    // tenant 1's item (100 ms budget) is not late either.
    let mut dropped = Vec::new();
    let p = q.pop(start + ms(50), |tenant, item, reason| dropped.push((tenant, item, reason))).unwrap();
    assert_eq!(dropped, vec![(t(0), 0, DropReason::Deadline)]);
    assert_eq!((p.tenant, p.item, p.waited), (t(0), 1, ms(40)));
    let p = q.pop(start + ms(50), no_drop).unwrap();
    assert_eq!((p.tenant, p.item, p.waited), (t(1), 10, ms(50)));
    // At 71 ms tenant 0's last item (pushed at 30 ms) is late too, and tenant 1 has nothing: `None`.
    assert!(q.pop(start + ms(71), |_, item, _| assert_eq!(item, 2)).is_none());
    assert_eq!(q.stats(t(0)).unwrap().dropped_deadline, 2);
    assert_eq!(q.stats(t(1)).unwrap().dropped_deadline, 0);
    assert_eq!(DropReason::Deadline.label(), "deadline");
    // A queue emptied by drops leaves the active list; the next tenant is served in the same pop.
    q.push(t(0), 3, 1, start).unwrap();
    q.push(t(1), 11, 1, start + ms(60)).unwrap();
    let p = q.pop(start + ms(100), |_, item, _| assert_eq!(item, 3)).unwrap();
    assert_eq!(p.item, 11);
    assert!(q.is_empty());
    assert_eq!(q.stats(t(0)).unwrap().wait.max(), ms(40));
}

#[test]
fn remove_drains_counts_and_refuses_until_reconfigured() {
    let now = Instant::now();
    let mut q = Wfq::new(1);
    q.configure(t(0), cfg(1, 4)).unwrap();
    q.configure(t(1), cfg(1, 4)).unwrap();
    for i in 0..3 {
        q.push(t(0), i, 1, now).unwrap();
        q.push(t(1), 10 + i, 1, now).unwrap();
    }
    let mut drained = Vec::new();
    assert_eq!(q.remove(t(0), |x| drained.push(x)), 3);
    assert_eq!(drained, vec![0, 1, 2]);
    assert_eq!(q.len(), 3);
    assert!(!q.is_configured(t(0)));
    let s = q.stats(t(0)).unwrap();
    assert_eq!((s.enqueued, s.dropped_drained, s.queued), (3, 3, 0));
    assert_eq!(q.push(t(0), 9, 1, now).unwrap_err().reason, RefuseReason::UnknownTenant);
    assert_eq!(q.remove(t(0), drop), 0);
    let order: Vec<u32> = std::iter::from_fn(|| q.pop(now, no_drop).map(|p| p.item)).collect();
    assert_eq!(order, vec![10, 11, 12]);
    q.configure(t(0), cfg(1, 4)).unwrap();
    q.push(t(0), 20, 1, now).unwrap();
    assert_eq!(q.stats(t(0)).unwrap().enqueued, 4, "counters continue");
    assert_eq!(q.stats(t(5)), None);
    // drain: everything, counted per tenant, tenants stay configured.
    q.push(t(1), 21, 1, now).unwrap();
    let mut all = Vec::new();
    assert_eq!(q.drain(|tenant, item, reason| all.push((tenant.0, item, reason.label()))), 2);
    assert_eq!(all, vec![(0, 20, "drained"), (1, 21, "drained")]);
    assert!(q.is_empty() && !q.has_ready());
    q.push(t(1), 22, 1, now).unwrap();
    assert_eq!(q.pop(now, no_drop).map(|p| p.item), Some(22));
}

#[test]
fn config_errors_are_typed() {
    let mut q: Wfq<()> = Wfq::new(0);
    assert_eq!(q.quantum(), 1);
    assert_eq!(q.configure(t(0), cfg(0, 1)), Err(ConfigError::ZeroWeight));
    assert_eq!(q.configure(t(0), cfg(1, 0)), Err(ConfigError::ZeroCapacity));
    assert_eq!(
        q.configure(t(0), cfg(1, MAX_CAPACITY + 1)),
        Err(ConfigError::CapacityTooLarge { capacity: MAX_CAPACITY + 1, max: MAX_CAPACITY })
    );
    assert_eq!(q.configure(t(0), TenantConfig { max_in_flight: Some(0), ..cfg(1, 1) }), Err(ConfigError::ZeroInFlight));
    assert_eq!(
        q.configure(t(MAX_TENANTS), cfg(1, 1)),
        Err(ConfigError::TenantOutOfRange { tenant: MAX_TENANTS, max: MAX_TENANTS })
    );
    assert_eq!(q.set_max_in_flight(t(3), Some(1)), Err(ConfigError::UnknownTenant(3)));
    assert!(q.push(t(u32::MAX), (), 1, Instant::now()).is_err());
    assert_eq!(TenantConfig::default().max_wait, ms(40));
    assert!(TenantConfig::default().validate().is_ok());
}

#[test]
fn scheduler_kind_parses_from_config() {
    #[derive(serde::Deserialize)]
    struct C {
        scheduler: SchedulerKind,
    }
    let c: C = toml::from_str("scheduler = \"fifo\"").unwrap();
    assert_eq!(c.scheduler, SchedulerKind::Fifo);
    assert!(toml::from_str::<C>("scheduler = \"lottery\"").is_err());
    assert_eq!("fair".parse(), Ok(SchedulerKind::Fair));
    assert!("FIFO".parse::<SchedulerKind>().is_err());
    assert_eq!(SchedulerKind::default().label(), "fair");
    let s: Scheduler<()> = Scheduler::new(SchedulerKind::Fifo, 1);
    assert_eq!(s.kind(), SchedulerKind::Fifo);
}

#[derive(Debug, Clone)]
enum Op {
    Configure { tenant: u32, weight: u32, capacity: usize, max_wait_ms: u64, cap: Option<u32> },
    Push { tenant: u32, cost: u32 },
    Pop,
    Done { tenant: u32 },
    Remove { tenant: u32 },
    Advance { ms: u64 },
}

/// Tenants 0..4 get configured by the ops; tenant 4 never is.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..4u32, 0..4u32, 0..6usize, 0..60u64, prop::option::of(0..3u32)).prop_map(
            |(tenant, weight, capacity, max_wait_ms, cap)| Op::Configure { tenant, weight, capacity, max_wait_ms, cap }
        ),
        10 => (0..5u32, 0..5u32).prop_map(|(tenant, cost)| Op::Push { tenant, cost }),
        8 => Just(Op::Pop),
        4 => (0..4u32).prop_map(|tenant| Op::Done { tenant }),
        1 => (0..5u32).prop_map(|tenant| Op::Remove { tenant }),
        3 => (0..30u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Runs random ops against a queue and a ledger: every pushed item is popped, dropped with a reason, returned, or
/// still queued, exactly once; counters and gauges agree with the ledger; the fair queue only returns `None`
/// when every tenant with work is at its cap, and never serves a tenant above its cap or past its deadline.
fn check_ops(kind: SchedulerKind, ops: &[Op]) {
    const QUANTUM: u32 = 3;
    let mut q: Scheduler<u64> = Scheduler::new(kind, QUANTUM);
    let mut now = Instant::now();
    let mut next_id = 0u64;
    let mut queued: HashMap<u64, TenantId> = HashMap::new();
    let mut in_flight = [0u32; 5];
    let mut conf: [Option<TenantConfig>; 5] = [None; 5];
    for op in ops {
        match *op {
            Op::Configure { tenant, weight, capacity, max_wait_ms, cap } => {
                let c = TenantConfig { weight, capacity, max_wait: ms(max_wait_ms), max_in_flight: cap };
                let valid = weight > 0 && capacity > 0 && cap != Some(0);
                assert_eq!(q.configure(t(tenant), c).is_ok(), valid);
                if valid {
                    conf[tenant as usize] = Some(c);
                }
            }
            Op::Push { tenant, cost } => {
                next_id += 1;
                match q.push(t(tenant), next_id, cost, now) {
                    Ok(()) => {
                        assert!(conf[tenant as usize].is_some());
                        queued.insert(next_id, t(tenant));
                    }
                    Err(r) => {
                        assert_eq!(r.item, next_id);
                        match r.reason {
                            RefuseReason::UnknownTenant => assert!(conf[tenant as usize].is_none()),
                            RefuseReason::CostTooLarge { .. } => assert!(cost > QUANTUM),
                            RefuseReason::QueueFull => {}
                            other => panic!("unexpected refusal {other:?}"),
                        }
                    }
                }
            }
            Op::Pop => {
                let popped = q.pop(now, |tenant, item, reason| {
                    assert_eq!(reason, DropReason::Deadline);
                    assert_eq!(queued.remove(&item), Some(tenant), "dropped item {item} not queued for {tenant:?}");
                });
                match popped {
                    Some(p) => {
                        assert_eq!(queued.remove(&p.item), Some(p.tenant), "popped item not queued");
                        let c = conf[p.tenant.0 as usize].expect("served an unconfigured tenant");
                        assert!(p.waited <= c.max_wait, "served past its deadline");
                        if kind == SchedulerKind::Fair {
                            assert!(c.max_in_flight.is_none_or(|m| in_flight[p.tenant.0 as usize] < m));
                        }
                        in_flight[p.tenant.0 as usize] += 1;
                    }
                    None if kind == SchedulerKind::Fair => {
                        for (i, c) in conf.iter().enumerate() {
                            if q.tenant_len(t(i as u32)) > 0 {
                                let m = c.and_then(|c| c.max_in_flight);
                                assert!(m.is_some_and(|m| in_flight[i] >= m), "tenant {i} has work and room");
                            }
                        }
                    }
                    None => assert!(q.is_empty()),
                }
            }
            Op::Done { tenant } => {
                if in_flight[tenant as usize] > 0 {
                    in_flight[tenant as usize] -= 1;
                    q.done(t(tenant));
                }
            }
            Op::Remove { tenant } => {
                q.remove(t(tenant), |item| assert_eq!(queued.remove(&item), Some(t(tenant))));
                conf[tenant as usize] = None;
            }
            Op::Advance { ms: d } => now += ms(d),
        }
        assert_eq!(q.len(), queued.len());
        for i in 0..5u32 {
            let n = queued.values().filter(|x| **x == t(i)).count();
            assert_eq!(q.tenant_len(t(i)), n);
            if let Some(s) = q.stats(t(i)) {
                assert_eq!(s.queued, n);
                assert_eq!(s.in_flight, in_flight[i as usize]);
                assert_eq!(s.enqueued, s.dequeued + s.dropped_deadline + s.dropped_drained + n as u64);
                assert_eq!(s.wait.count(), s.dequeued);
            }
        }
    }
    q.drain(|tenant, item, reason| {
        assert_eq!(reason, DropReason::Drained);
        assert_eq!(queued.remove(&item), Some(tenant));
    });
    assert!(queued.is_empty() && q.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_ops_never_panic_or_lose_an_item(ops in prop::collection::vec(op(), 0..300)) {
        check_ops(SchedulerKind::Fair, &ops);
        check_ops(SchedulerKind::Fifo, &ops);
    }
}
