//! The media workers on real loopback sockets, through their own epoll set: frames in order through fair and fifo
//! workers, deadline drops by kernel receive time, policing, refused turns, registration and deregistration, no
//! lost wake-up, a call ending while its turn is queued, many calls on one worker, and the per-tenant metrics.
//! No async runtime is involved: the workers read the sockets themselves. Every wait polls with a deadline.

use std::net::UdpSocket as StdUdpSocket;

use super::*;
use crate::call::{FRAME_SAMPLES, Frame};
use crate::metrics::{Metrics, MetricsConfig};
use crate::proto::media_streams::MediaFormat;
use crate::proto::rtp::RtpHeader;
use crate::proto::sdp::Direction;
use crate::sched::plan::PlanSet;
use crate::stream::provider::ToAgent;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

fn negotiated() -> Negotiated {
    Negotiated {
        codec: Codec::Pcmu,
        pt: 0,
        telephone_event_pt: Some(101),
        ptime_ms: 20,
        remote: None,
        answer_direction: Direction::SendRecv,
        audio_index: 0,
    }
}

/// `n` workers with tenants 0 and 1 on the built-in `enterprise` plan (room for 500 calls each) (tenant 2 and up are never configured).
fn workers(n: usize, scheduler: SchedulerKind) -> Arc<MediaWorkers> {
    let workers = Arc::new(MediaWorkers::start(n, scheduler, Vec::new(), None).unwrap());
    let plans = PlanSet::builtin();
    for t in 0..2 {
        workers.configure_tenant(TenantId(t), plans.get("enterprise").unwrap()).unwrap();
    }
    workers
}

/// One call: its registration with the workers, the provider channel's far end, and a caller socket.
struct Call {
    inbound: Option<CallInbound>,
    rx: mpsc::Receiver<ToAgent>,
    counters: Arc<MediaCounters>,
    caller: StdUdpSocket,
    server_addr: SocketAddr,
    next_seq: u16,
}

fn bind() -> StdUdpSocket {
    StdUdpSocket::bind("127.0.0.1:0").unwrap()
}

fn register(workers: &MediaWorkers, tenant: u32, socket: StdUdpSocket, max_age: Duration, metrics: &Metrics) -> Call {
    let server_addr = socket.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(256);
    let counters = Arc::new(MediaCounters::default());
    let setup = InboundSetup {
        tenant: TenantId(tenant),
        call: CallId(u64::from(tenant) << 32 | u64::from(server_addr.port())),
        negotiated: negotiated(),
        sink: AgentSink::Channel(tx),
        counters: Arc::clone(&counters),
        metrics: metrics.tenant(TenantId(tenant), if tenant == 0 { "acme" } else { "other" }),
        max_age,
        webrtc: None,
        format: MediaFormat::Mulaw8k,
    };
    let inbound = workers.register(socket, setup).unwrap();
    Call { inbound: Some(inbound), rx, counters, caller: bind(), server_addr, next_seq: 0 }
}

fn call(workers: &MediaWorkers, tenant: u32, metrics: &Metrics) -> Call {
    register(workers, tenant, bind(), Duration::from_millis(500), metrics)
}

fn send_to(caller: &StdUdpSocket, to: SocketAddr, seq: u16, fill: u8) {
    let header = RtpHeader { marker: false, payload_type: 0, seq, timestamp: u32::from(seq) * 160, ssrc: 42 };
    let mut packet = [0u8; 12 + FRAME_SAMPLES];
    let n = rtp::write_packet(&mut packet, &header, &[fill; FRAME_SAMPLES]).unwrap();
    caller.send_to(&packet[..n], to).unwrap();
}

impl Call {
    fn send(&mut self, fill: u8) {
        send_to(&self.caller, self.server_addr, self.next_seq, fill);
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    fn ingress(&self) -> &CallIngress {
        self.inbound.as_ref().unwrap()
    }

    /// Valid RTP packets the workers have read (before policing).
    fn received(&self) -> u64 {
        self.ingress().state.lock().stats.received()
    }

    fn frame(&mut self) -> Frame {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.rx.try_recv() {
                Ok(ToAgent::Media(f)) => return f,
                Ok(other) => panic!("expected a media frame, got {other:?}"),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("no media frame within {WAIT:?}: {e:?}"),
            }
        }
    }

    fn frames_now(&mut self) -> usize {
        let mut n = 0;
        while let Ok(ToAgent::Media(_)) = self.rx.try_recv() {
            n += 1;
        }
        n
    }
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

fn frames_arrive_in_order(scheduler: SchedulerKind) {
    let workers = workers(1, scheduler);
    let metrics = Metrics::new(&MetricsConfig::default());
    let mut call = call(&workers, 0, &metrics);
    // Bursts of 10 packets (200 ms of audio, within the policer's 240 ms burst), refilled between bursts; the
    // socket goes idle between bursts, so each burst needs the re-armed socket to raise its event again.
    for seq in 0..30u16 {
        call.send(seq as u8);
        if seq % 10 == 9 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for seq in 0..30u64 {
        let f = call.frame();
        assert_eq!((f.seq, f.payload.as_bytes()[0]), (seq, seq as u8), "{scheduler:?}");
        assert!(f.t_ingress.elapsed() < WAIT);
    }
    let text = metrics.encode();
    assert_eq!(sample(&text, "fairvox_frames_total{tenant=\"acme\",direction=\"inbound\"}"), 30.0, "{text}");
    // Every turn was timed in the queue: at least one per 10-packet burst (a turn reads up to 4), at most one per
    // packet plus the turns that found the socket empty after a full batch.
    let turns = sample(&text, "fairvox_sched_wait_seconds_count{tenant=\"acme\"}");
    assert!((9.0..=40.0).contains(&turns), "{turns} turns");
    assert_eq!(call.counters.dropped_deadline.load(Ordering::Relaxed), 0);
}

#[test]
fn frames_reach_the_agent_in_order_through_a_fair_worker() {
    frames_arrive_in_order(SchedulerKind::Fair);
}

#[test]
fn frames_reach_the_agent_in_order_through_a_fifo_worker() {
    frames_arrive_in_order(SchedulerKind::Fifo);
}

#[test]
fn packets_older_than_the_deadline_by_kernel_time_are_dropped_as_deadline() {
    let workers = workers(1, SchedulerKind::Fair);
    let metrics = Metrics::new(&MetricsConfig::default());
    // Five packets sit in the socket for 80 ms before it is registered: older than 20 ms by their kernel stamp.
    // Registering a socket with packets already waiting raises its event at once.
    let socket = bind();
    let sender = bind();
    // Stamps are only taken once the option is on: the registration sets it, so set it here first too.
    enable_receive_timestamps(&socket).unwrap();
    for seq in 0..5u16 {
        send_to(&sender, socket.local_addr().unwrap(), seq, 1);
    }
    std::thread::sleep(Duration::from_millis(80));
    let mut call = register(&workers, 0, socket, Duration::from_millis(20), &metrics);
    wait_until("5 deadline drops", || call.counters.dropped_deadline.load(Ordering::Relaxed) == 5);
    assert_eq!(call.frames_now(), 0, "a stale packet reached the agent");
    // Fresh packets flow again.
    send_to(&call.caller, call.server_addr, 5, 9);
    assert_eq!(call.frame().payload.as_bytes()[0], 9);
    let text = metrics.encode();
    assert_eq!(sample(&text, "fairvox_frames_dropped_total{tenant=\"acme\",reason=\"deadline\"}"), 5.0);
}

#[test]
fn a_flood_is_policed_on_the_worker_and_counted_for_its_tenant() {
    let workers = workers(1, SchedulerKind::Fair);
    let metrics = Metrics::new(&MetricsConfig::default());
    let mut call = call(&workers, 0, &metrics);
    // 200 packets of 20 ms at once: the policer's burst (240 ms) passes about 12, the rest are policed.
    for _ in 0..200 {
        call.send(3);
    }
    wait_until("all 200 packets read", || call.received() == 200);
    let policed = call.counters.policed.load(Ordering::Relaxed);
    let forwarded = call.frames_now() as u64;
    assert_eq!(policed + forwarded, 200, "{policed} policed, {forwarded} forwarded");
    assert!(policed >= 150, "{policed} policed");
    let text = metrics.encode();
    assert_eq!(sample(&text, "fairvox_frames_dropped_total{tenant=\"acme\",reason=\"policed\"}"), policed as f64);
}

#[test]
fn a_refused_turn_drains_the_socket_as_queue_full_and_does_not_spin() {
    let workers = workers(1, SchedulerKind::Fair);
    let metrics = Metrics::new(&MetricsConfig::default());
    // Tenant 2 was never configured on the workers (an offboarded tenant's call, say): its turns are refused.
    let mut call = call(&workers, 2, &metrics);
    for _ in 0..10 {
        call.send(1);
    }
    wait_until("10 packets drained", || call.counters.dropped_queue_full.load(Ordering::Relaxed) == 10);
    let refused = workers.pool_stats().refused_unknown_tenant;
    assert!((1..=10).contains(&refused), "{refused} refusals for 10 packets");
    // Re-armed, not spinning: no more refusals while nothing arrives, and a later packet is drained too.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(workers.pool_stats().refused_unknown_tenant, refused);
    call.send(1);
    wait_until("the 11th packet drained", || call.counters.dropped_queue_full.load(Ordering::Relaxed) == 11);
    assert_eq!(call.frames_now(), 0);
    assert_eq!(call.received(), 0, "a refused turn reads nothing into the call's state");
}

#[test]
fn a_deregistered_socket_is_not_read_and_its_slot_serves_the_next_call_alone() {
    let workers = workers(1, SchedulerKind::Fair);
    let metrics = Metrics::new(&MetricsConfig::default());
    let mut first = call(&workers, 0, &metrics);
    first.send(1);
    assert_eq!(first.frame().payload.as_bytes()[0], 1);
    assert_eq!(workers.registered_calls(), 1);
    // The call ends: its inbound handle is dropped. It keeps its socket open here (the test holds a clone of the
    // descriptor) so that packets can still land in it.
    let kept = first.ingress().socket.try_clone().unwrap();
    drop(first.inbound.take());
    assert_eq!(workers.registered_calls(), 0);
    first.send(2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(first.frames_now(), 0, "a deregistered call's socket was read");
    let mut buf = [0u8; 2048];
    kept.set_nonblocking(true).unwrap();
    assert!(kept.recv_from(&mut buf).is_ok(), "the packet is still in the socket, unread");
    drop(kept);
    // The next call reuses the registry slot (and, likely, the descriptor number): it gets its own packets only.
    let mut second = call(&workers, 0, &metrics);
    assert_eq!(workers.registered_calls(), 1);
    second.send(7);
    assert_eq!(second.frame().payload.as_bytes()[0], 7);
    first.send(3);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!((first.frames_now(), second.frames_now()), (0, 0));
}

#[test]
fn packets_that_arrive_during_a_turn_are_never_left_unread() {
    // The last packet of every burst must be read without any later packet to raise the event again: if the
    // re-arm after a turn lost the readiness of packets that came in during the turn, they would sit in the socket.
    let workers = workers(1, SchedulerKind::Fair);
    let metrics = Metrics::new(&MetricsConfig::default());
    let mut calls: Vec<Call> = (0..3).map(|_| call(&workers, 0, &metrics)).collect();
    let mut sent = 0u64;
    // Bursts of 1 to 30 packets over three calls: some turns end on a short batch (re-arm), some on a full one
    // (handed back), with packets landing while turns run.
    for burst in 0..150u32 {
        let size = 1 + (burst * 7 % 30) as usize;
        for k in 0..size {
            let c = &mut calls[k % 3];
            c.send(5);
            if k % 2 == 1 {
                std::thread::sleep(Duration::from_micros(u64::from(burst % 5) * 40));
            }
        }
        sent += size as u64;
        wait_until(&format!("every packet of burst {burst} read"), || {
            calls.iter().map(|c| c.received()).sum::<u64>() == sent
        });
    }
}

#[test]
fn a_call_that_ends_while_its_turn_is_queued_reads_nothing_more_and_closes_its_socket() {
    // Two workers, two tenants of weight 1: each tenant may hold one worker at once.
    let workers = workers(2, SchedulerKind::Fair);
    let metrics = Metrics::new(&MetricsConfig::default());
    let mut busy = call(&workers, 0, &metrics);
    let mut ending = call(&workers, 0, &metrics);
    // Holding the busy call's state keeps its turn running (blocked) on one worker, so tenant 0 is at its cap.
    let busy_state = Arc::clone(&busy.inbound.as_ref().unwrap().0);
    let hold = busy_state.state.lock();
    busy.send(1);
    let turns = workers.turn_counts(TenantId(0));
    wait_until("the busy call's turn started", || turns.turns.load(Ordering::Relaxed) == 1);
    ending.send(2);
    wait_until("the ending call's turn is queued", || workers.pool_stats().queued == 1);
    let addr = ending.server_addr;
    let weak = Arc::downgrade(&ending.inbound.as_ref().unwrap().0);
    drop(ending.inbound.take());
    assert_eq!(workers.registered_calls(), 1);
    drop(hold);
    assert_eq!(busy.frame().payload.as_bytes()[0], 1);
    wait_until("the queued turn is gone", || workers.pool_stats().queued == 0 && weak.strong_count() == 0);
    assert_eq!(ending.frames_now(), 0, "an ended call's packet was forwarded");
    // The last holder gone, the socket is closed: its port can be bound again.
    StdUdpSocket::bind(addr).expect("the ended call's socket is closed");
    // The workers carry on.
    busy.send(3);
    assert_eq!(busy.frame().payload.as_bytes()[0], 3);
}

#[test]
fn many_calls_of_two_tenants_on_one_worker_each_get_their_frames_in_order() {
    let workers = workers(1, SchedulerKind::Fair);
    let metrics = Metrics::new(&MetricsConfig::default());
    // More calls than one poll collects (SOURCE_BATCH), so their events arrive over several batches.
    let mut calls: Vec<Call> = (0..150).map(|i| call(&workers, i % 2, &metrics)).collect();
    assert_eq!(workers.registered_calls(), 150);
    for round in 0..10u8 {
        for c in calls.iter_mut() {
            c.send(round);
        }
    }
    for (i, c) in calls.iter_mut().enumerate() {
        for seq in 0..10u64 {
            let f = c.frame();
            let c2 = &c.counters;
            assert_eq!(
                (f.seq, f.payload.as_bytes()[0]),
                (seq, seq as u8),
                "call {i}: policed {} deadline {} ignored {} malformed {} slow {}",
                c2.policed.load(Ordering::Relaxed),
                c2.dropped_deadline.load(Ordering::Relaxed),
                c2.packets_ignored.load(Ordering::Relaxed),
                c2.rtp_malformed.load(Ordering::Relaxed),
                c2.dropped_slow_consumer.load(Ordering::Relaxed)
            );
        }
    }
    let counts = workers.totals();
    assert!(counts[0].0 >= 75 * 3 && counts[1].0 >= 75 * 3, "turns per tenant: {counts:?}");
    calls.clear();
    assert_eq!(workers.registered_calls(), 0);
}

#[test]
fn shutdown_stops_the_workers_and_calls_still_deregister() {
    let workers = workers(2, SchedulerKind::Fair);
    let metrics = Metrics::new(&MetricsConfig::default());
    let mut call = call(&workers, 0, &metrics);
    call.send(1);
    assert_eq!(call.frame().payload.as_bytes()[0], 1);
    workers.shutdown();
    assert!(workers.pool_stats().shut_down);
    call.send(2);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(call.frames_now(), 0, "nothing is read after shutdown");
    drop(call.inbound.take());
    assert_eq!(workers.registered_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_stream_is_written_in_the_turn_and_flushed_by_the_workers_when_the_agent_lags() {
    use crate::proto::media_streams::{self, StreamStart};
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    // An agent that does not read until the gate opens, then reads every media message until `stop`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    socket2::SockRef::from(&listener).set_recv_buffer_size(4096).unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let _ = gate_rx.await;
        let mut payloads = Vec::new();
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            match v["event"].as_str() {
                Some("media") => payloads.push(v["media"]["chunk"].as_str().unwrap().parse::<u64>().unwrap()),
                Some("stop") => break,
                _ => {}
            }
        }
        payloads
    });
    let start = StreamStart {
        account_sid: "acme".into(),
        call_sid: media_streams::call_sid(1),
        stream_sid: media_streams::stream_sid(2),
        from: "+1".into(),
        to: "+2".into(),
        custom_parameters: Vec::new(),
        media_format: MediaFormat::Mulaw8k,
    };
    let socket = crate::stream::provider::connect(&url, None, Duration::from_secs(2)).await.unwrap();
    let mut handle = socket.spawn(start, 8);
    let outbox = Arc::clone(handle.sink.outbox().expect("a ws:// stream is written directly"));
    // A small send buffer, so the lagging agent backs the stream up into the outbox within a second of audio.
    // SAFETY: the outbox's descriptor is open while `outbox` lives; the borrow ends within this statement.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(outbox.fd()) };
    socket2::SockRef::from(&fd).set_send_buffer_size(4096).unwrap();

    let workers = workers(1, SchedulerKind::Fair);
    let metrics = Metrics::new(&MetricsConfig::default());
    let rtp = bind();
    let to = rtp.local_addr().unwrap();
    let counters = Arc::new(MediaCounters::default());
    let setup = InboundSetup {
        tenant: TenantId(0),
        call: CallId(1),
        negotiated: negotiated(),
        sink: handle.sink.clone(),
        counters: Arc::clone(&counters),
        metrics: metrics.tenant(TenantId(0), "acme"),
        max_age: Duration::from_millis(500),
        webrtc: None,
        format: MediaFormat::Mulaw8k,
    };
    let inbound = workers.register(rtp, setup).unwrap();
    let caller = bind();
    let mut gate = Some(gate_tx);
    // Two seconds of audio at its real rate; the agent starts reading after one.
    for seq in 0..100u16 {
        if seq == 50
            && let Some(gate) = gate.take()
        {
            let _ = gate.send(());
        }
        send_to(&caller, to, seq, seq as u8);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.tx.send(ToAgent::Stop).await.unwrap();
    let chunks = tokio::time::timeout(WAIT, agent).await.unwrap().unwrap();
    let framed = counters.frames_in.load(Ordering::Relaxed);
    let refused = counters.dropped_slow_consumer.load(Ordering::Relaxed);
    // Every frame the outbox took reached the agent, in order (a refused one was never numbered).
    assert_eq!(chunks, (1..=framed - refused).collect::<Vec<_>>(), "{refused} refused");
    assert!(framed >= 90, "{framed} frames");
    // The outbox backed up, and the workers flushed it: turns served beyond the reads.
    let served = workers.tenant_stats(TenantId(0)).unwrap().processed;
    let reads = workers.turn_counts(TenantId(0)).turns.load(Ordering::Relaxed);
    assert!(served > reads, "{served} turns served, {reads} of them reads: no flush turn");
    drop(inbound);
    assert_eq!(workers.registered_calls(), 0);
    let _ = handle.rx.recv().await;
}

#[test]
fn behind_needs_three_late_seconds_and_clears_after_two_on_time() {
    let mut t = BehindTracker::default();
    // Tenant 0 late (10% of 100 turns a second), tenant 1 on time.
    let mut totals = [(0u64, 0u64), (0, 0)];
    let mut step = |t: &mut BehindTracker, late0: u64| {
        totals[0].0 += 100;
        totals[0].1 += late0;
        totals[1].0 += 100;
        let (behind, node) = t.update(&totals);
        (behind.to_vec(), node)
    };
    assert_eq!(step(&mut t, 10), (vec![false, false], false));
    assert_eq!(step(&mut t, 10), (vec![false, false], false));
    assert_eq!(step(&mut t, 10), (vec![true, false], false), "third late second");
    assert_eq!(step(&mut t, 0), (vec![true, false], false), "one on-time second is not enough");
    assert_eq!(step(&mut t, 0), (vec![false, false], false));
    // 5% exactly is not late.
    for _ in 0..4 {
        assert_eq!(step(&mut t, 5).0, vec![false, false]);
    }
}

#[test]
fn the_node_is_behind_only_when_every_busy_tenant_is() {
    let mut t = BehindTracker::default();
    let mut totals = [(0u64, 0u64), (0, 0), (0, 0)];
    for second in 0..4 {
        for (turns, late) in totals.iter_mut().take(2) {
            *turns += 100;
            *late += 50;
        }
        // Tenant 2 is idle (too few turns to judge) and does not keep the node "on time".
        totals[2].0 += 3;
        let (_, node) = t.update(&totals);
        assert_eq!(node, second >= 2, "second {second}");
    }
    // One busy tenant served on time again: after its two on-time seconds the workers have room again, and only
    // the still-late tenant is behind.
    for second in 0..3 {
        totals[0].0 += 100;
        totals[1].0 += 100;
        totals[1].1 += 50;
        let (behind, node) = t.update(&totals);
        assert_eq!((behind[0], behind[1], node), (second == 0, true, second == 0), "second {second}");
    }
}

/// A pool load: `cpu_ms` of worker CPU time in all, and per tenant (weight, busy ms).
fn pool_load(workers: usize, cpu_ms: u64, tenants: &[(u32, u64)]) -> PoolLoad {
    PoolLoad {
        workers,
        cpu: Duration::from_millis(cpu_ms),
        tenants: tenants
            .iter()
            .map(|&(weight, busy)| crate::sched::TenantLoad { weight, busy: Duration::from_millis(busy) })
            .collect(),
        rests: 0,
    }
}

#[test]
fn capacity_tracker_refuses_only_tenants_at_or_above_their_share_while_the_workers_are_hot() {
    let t0 = Instant::now();
    let s = |k: u64| t0 + Duration::from_secs(k);
    let mut c = CapacityTracker::new(0.85);
    // The first sample only sets the baseline.
    assert_eq!(c.update(s(0), pool_load(1, 0, &[(1, 0), (1, 0)])), [false, false]);
    // 80% busy (800 ms of CPU in 1 s): not hot, whoever uses it.
    assert_eq!(c.update(s(1), pool_load(1, 800, &[(1, 790), (1, 10)])), [false, false]);
    assert!(!c.hot());
    assert!((c.utilisation() - 0.80).abs() < 1e-9);
    // 95% busy, the noisy tenant 0 takes 90 of it and the quiet tenant 1 takes 5: only 0 is refused.
    assert_eq!(c.update(s(2), pool_load(1, 1750, &[(1, 1690), (1, 60)])), [true, false]);
    assert!(c.hot());
    // Still hot at 82% (within the 5-point margin), cool at 78%.
    assert_eq!(c.update(s(3), pool_load(1, 2570, &[(1, 2490), (1, 80)])), [true, false]);
    assert_eq!(c.update(s(4), pool_load(1, 3350, &[(1, 3250), (1, 100)])), [true, false]);
    assert!(!c.hot());
    // Cool, but tenant 0 was last over its share at s(3): it stays refused for the hold, the Retry-After it was
    // given, and is let in again once that has passed.
    assert_eq!(CapacityTracker::HOLD, Duration::from_secs(5));
    assert_eq!(c.update(s(7), pool_load(1, 3650, &[(1, 3500), (1, 150)])), [true, false]);
    assert_eq!(c.update(s(8), pool_load(1, 3750, &[(1, 3590), (1, 160)])), [false, false]);
    // Found over its share again while hot: the hold starts over from that sample.
    assert_eq!(c.update(s(9), pool_load(1, 4700, &[(1, 4500), (1, 200)])), [true, false]);
    assert_eq!(c.update(s(10), pool_load(1, 5000, &[(1, 4790), (1, 210)])), [true, false]);
    assert!(!c.hot());
    assert_eq!(c.update(s(14), pool_load(1, 5400, &[(1, 5180), (1, 220)])), [false, false]);
}

#[test]
fn capacity_tracker_shares_follow_weights_of_busy_tenants_and_a_lone_tenant_is_at_its_share() {
    let t0 = Instant::now();
    let s = |k: u64| t0 + Duration::from_secs(k);
    // Two workers, 90% busy over 2 s of worker time: tenant 0 (weight 3) 70% of the busy time is under its 75%;
    // tenant 1 (weight 1) 30% is over its 25%; tenant 2 (weight 5) was idle and does not dilute the others' shares.
    let mut c = CapacityTracker::new(0.85);
    c.update(s(0), pool_load(2, 0, &[(3, 0), (1, 0), (5, 0)]));
    assert_eq!(c.update(s(1), pool_load(2, 1800, &[(3, 1260), (1, 540), (5, 0)])), [false, true, false]);
    // A lone busy tenant on hot workers has all the busy time and all of the share: refused.
    let mut c = CapacityTracker::new(0.85);
    c.update(s(0), pool_load(1, 0, &[(1, 0), (1, 0)]));
    assert_eq!(c.update(s(1), pool_load(1, 950, &[(1, 950), (1, 0)])), [true, false]);
    // A slot that is not configured (weight 0) is never refused here.
    let mut c = CapacityTracker::new(0.85);
    c.update(s(0), pool_load(1, 0, &[(0, 0), (1, 0)]));
    assert_eq!(c.update(s(1), pool_load(1, 1000, &[(0, 500), (1, 500)])), [false, true]);
    // 100% turns the check off.
    let mut c = CapacityTracker::new(1.0);
    c.update(s(0), pool_load(1, 0, &[(1, 0)]));
    assert_eq!(c.update(s(1), pool_load(1, 1000, &[(1, 1000)])), [false]);
    assert!(!c.hot());
}
