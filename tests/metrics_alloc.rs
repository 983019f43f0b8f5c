//! The frame path of `fairvox::metrics` does not allocate: a counting global allocator, counting only on the test's
//! own thread, sees no allocation across 10k frames' worth of recording on warm handles.

use std::time::Duration;

use fairvox::call::record::EndReason;
use fairvox::metrics::{Direction, FrameDropReason, Metrics, RejectReason, SipMethod};
use fairvox::tenant::TenantId;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

/// Allocations made on this thread while running `f`.
fn allocations(f: impl FnOnce()) -> u64 {
    counting_alloc::allocations_during(f) as u64
}

#[test]
fn frame_path_does_not_allocate() {
    let metrics = Metrics::default();
    let tenant = metrics.tenant(TenantId(3), "acme");
    let other = metrics.tenant(TenantId(4), "globex");
    // Warm: series made, the cache filled, the SIP series created.
    tenant.frame(Direction::Inbound);
    tenant.call_ended(EndReason::CallerBye);
    tenant.call_rejected(RejectReason::Rate);
    metrics.sip_message(SipMethod::Invite, Some(200));
    assert!(allocations(|| drop(metrics.tenant(TenantId(5), "initech"))) > 0, "the allocator does not count");

    let n = allocations(|| {
        for i in 0..10_000u64 {
            let latency = Duration::from_micros(50 + (i % 400) * 700); // 50 µs .. 280 ms: every bucket
            for t in [&tenant, &other] {
                t.frame(Direction::Inbound);
                t.frame(Direction::Outbound);
                t.frame_latency(Direction::Inbound, latency);
                t.frame_latency(Direction::Outbound, latency);
                t.frame_dropped(FrameDropReason::ALL[i as usize % FrameDropReason::ALL.len()]);
                t.sched_wait(latency);
                t.rtp_jitter(latency / 10);
                t.rtp_packets_lost(i % 2);
            }
        }
    });
    assert_eq!(n, 0, "{n} allocations recording 10k frames");

    // Per call, on warm state: the cached handle, the active-call guard, billable time, series already made.
    let n = allocations(|| {
        for _ in 0..10_000 {
            let t = metrics.tenant(TenantId(3), "acme");
            let active = t.call_started();
            t.add_billable_seconds(1);
            t.call_ended(EndReason::CallerBye);
            t.call_rejected(RejectReason::Rate);
            metrics.sip_message(SipMethod::Invite, Some(200));
            metrics.sip_malformed();
            drop(active);
        }
    });
    assert_eq!(n, 0, "{n} allocations on the per-call path");

    let text = metrics.encode();
    assert!(text.contains(r#"fairvox_frames_total{tenant="acme",direction="inbound"} 10001"#), "{text}");
    assert!(text.contains(r#"fairvox_frame_latency_seconds_count{tenant="globex",direction="outbound"} 10000"#));
}
