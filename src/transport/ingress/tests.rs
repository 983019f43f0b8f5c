//! The media workers on real loopback sockets: frames in order through a worker, deadline drops by kernel
//! receive time, both scheduler kinds, and the per-tenant metrics they record.

use std::net::UdpSocket as StdUdpSocket;

use super::*;
use crate::call::FRAME_SAMPLES;
use crate::metrics::{Metrics, MetricsConfig};
use crate::proto::rtp::RtpHeader;
use crate::proto::sdp::Direction;
use crate::sched::plan::PlanSet;

struct Rig {
    ingress: Arc<CallIngress>,
    workers: Arc<MediaWorkers>,
    rx: mpsc::Receiver<ToAgent>,
    counters: Arc<MediaCounters>,
    metrics: Arc<Metrics>,
    caller: StdUdpSocket,
    server_addr: SocketAddr,
}

async fn rig(scheduler: SchedulerKind, max_age: Duration) -> Rig {
    let workers = Arc::new(MediaWorkers::start(1, scheduler).unwrap());
    let plans = PlanSet::builtin();
    workers.configure_tenant(TenantId(0), plans.get("pro").unwrap()).unwrap();
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let server_addr = socket.local_addr().unwrap();
    let negotiated = Negotiated {
        codec: Codec::Pcmu,
        pt: 0,
        telephone_event_pt: Some(101),
        ptime_ms: 20,
        remote: None,
        answer_direction: Direction::SendRecv,
        audio_index: 0,
    };
    let (tx, rx) = mpsc::channel(64);
    let counters = Arc::new(MediaCounters::default());
    let metrics = Arc::new(Metrics::new(&MetricsConfig::default()));
    let ingress = CallIngress::new(
        TenantId(0),
        CallId(7),
        socket,
        negotiated,
        tx,
        Arc::clone(&counters),
        metrics.tenant(TenantId(0), "acme"),
        max_age,
        workers.turn_counts(TenantId(0)),
    );
    let caller = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    Rig { ingress, workers, rx, counters, metrics, caller, server_addr }
}

impl Rig {
    /// Runs the call task's RTP arm until dropped.
    fn drive(&self) -> tokio::task::JoinHandle<()> {
        let (ingress, workers) = (Arc::clone(&self.ingress), Arc::clone(&self.workers));
        tokio::spawn(async move {
            let mut state = TurnState::Idle;
            loop {
                state = ingress.next(state, &workers).await;
            }
        })
    }

    fn send(&self, seq: u16, fill: u8) {
        let header = RtpHeader { marker: false, payload_type: 0, seq, timestamp: u32::from(seq) * 160, ssrc: 42 };
        let mut packet = [0u8; 12 + FRAME_SAMPLES];
        let n = rtp::write_packet(&mut packet, &header, &[fill; FRAME_SAMPLES]).unwrap();
        self.caller.send_to(&packet[..n], self.server_addr).unwrap();
    }

    async fn frame(&mut self) -> Frame {
        match tokio::time::timeout(Duration::from_secs(2), self.rx.recv()).await {
            Ok(Some(ToAgent::Media(f))) => f,
            other => panic!("expected a media frame, got {other:?}"),
        }
    }
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

async fn frames_arrive_in_order(scheduler: SchedulerKind) {
    let mut rig = rig(scheduler, Duration::from_millis(500)).await;
    let task = rig.drive();
    // Bursts of 10 packets (200 ms of audio, within the policer's 240 ms burst), refilled between bursts.
    for seq in 0..30u16 {
        rig.send(seq, seq as u8);
        if seq % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for seq in 0..30u64 {
        let f = rig.frame().await;
        assert_eq!((f.seq, f.payload[0]), (seq, seq as u8), "{scheduler:?}");
        assert!(f.t_ingress.elapsed() < Duration::from_secs(2));
    }
    task.abort();
    let text = rig.metrics.encode();
    assert_eq!(sample(&text, "fairvox_frames_total{tenant=\"acme\",direction=\"inbound\"}"), 30.0, "{text}");
    // Every turn was timed in the queue (at least one per 10-packet burst, at most one per packet).
    let turns = sample(&text, "fairvox_sched_wait_seconds_count{tenant=\"acme\"}");
    assert!((3.0..=30.0).contains(&turns), "{turns} turns");
    assert_eq!(rig.counters.dropped_deadline.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_reach_the_agent_in_order_through_a_fair_worker() {
    frames_arrive_in_order(SchedulerKind::Fair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_reach_the_agent_in_order_through_a_fifo_worker() {
    frames_arrive_in_order(SchedulerKind::Fifo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_older_than_the_deadline_by_kernel_time_are_dropped_as_deadline() {
    let mut rig = rig(SchedulerKind::Fair, Duration::from_millis(20)).await;
    // Five packets sit in the socket for 80 ms before any turn reads them: older than 20 ms by their kernel stamp.
    for seq in 0..5u16 {
        rig.send(seq, 1);
    }
    tokio::time::sleep(Duration::from_millis(80)).await;
    let task = rig.drive();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rig.counters.dropped_deadline.load(Ordering::Relaxed), 5);
    assert!(rig.rx.try_recv().is_err(), "a stale packet reached the agent");
    // Fresh packets flow again.
    rig.send(5, 9);
    let f = rig.frame().await;
    assert_eq!(f.payload[0], 9);
    task.abort();
    let text = rig.metrics.encode();
    assert_eq!(sample(&text, "fairvox_frames_dropped_total{tenant=\"acme\",reason=\"deadline\"}"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_policed_on_the_worker_and_counted_for_its_tenant() {
    let mut rig = rig(SchedulerKind::Fair, Duration::from_millis(500)).await;
    let task = rig.drive();
    // 200 packets of 20 ms at once: the policer's burst (240 ms) passes about 12, the rest are policed.
    for seq in 0..200u16 {
        rig.send(seq, 3);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    let policed = rig.counters.policed.load(Ordering::Relaxed);
    let mut forwarded = 0;
    while let Ok(ToAgent::Media(_)) = rig.rx.try_recv() {
        forwarded += 1;
    }
    assert_eq!(policed + forwarded, 200, "{policed} policed, {forwarded} forwarded");
    assert!(policed >= 150, "{policed} policed");
    let text = rig.metrics.encode();
    assert_eq!(sample(&text, "fairvox_frames_dropped_total{tenant=\"acme\",reason=\"policed\"}"), policed as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_a_call_drains_its_socket_as_queue_full_and_does_not_spin() {
    let rig = rig(SchedulerKind::Fair, Duration::from_millis(500)).await;
    rig.workers.shutdown();
    let task = rig.drive();
    for seq in 0..10u16 {
        rig.send(seq, 1);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rig.counters.dropped_queue_full.load(Ordering::Relaxed), 10);
    task.abort();
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
