//! Caller-side RTP: one timer loop sends every call's 20 ms PCMU frames (spread over the 20 ms period by call
//! index, like independent phones), and one receive task per call socket accounts what comes back. A generator made
//! with [`Generator::with_flood`] sends each call's packets k times faster than its 20 ms packetization (a flooding
//! sender: every packet still a 20 ms PCMU packet with the next sequence number and timestamp).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::time::MissedTickBehavior;

use crate::stats::{Marker, PAYLOAD_LEN, Shared};

const PTIME: Duration = Duration::from_millis(20);
const HEADER_LEN: usize = 12;
/// A sender more than this many frames behind drops the rest instead of bursting them.
const MAX_CATCH_UP: u32 = 3;

struct Sender {
    call: u32,
    sock: Arc<UdpSocket>,
    dst: SocketAddr,
    ssrc: u32,
    seq: u16,
    ts: u32,
    k: u32,
    next_due: Instant,
}

/// Which path's `sent` counter the caller's frames feed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SentPath {
    /// Stream mode: caller → agent.
    Up,
    /// Echo mode: caller → server → caller.
    Back,
}

pub struct Generator {
    senders: Mutex<Vec<Sender>>,
    shared: Arc<Shared>,
    path: SentPath,
    /// Time between two packets of one call: 20 ms, or 20 ms / k for a flood of k packets per 20 ms.
    period: Duration,
}

impl Generator {
    pub fn new(shared: Arc<Shared>, path: SentPath) -> Arc<Self> {
        Self::with_flood(shared, path, 1)
    }

    /// A generator whose calls send `packets_per_ptime` 20 ms packets every 20 ms (1 = a well-behaved phone).
    pub fn with_flood(shared: Arc<Shared>, path: SentPath, packets_per_ptime: u32) -> Arc<Self> {
        let period = PTIME / packets_per_ptime.max(1);
        Arc::new(Generator { senders: Mutex::new(Vec::new()), shared, path, period })
    }

    /// Starts sending call `call`'s frames from `sock` to `dst`, in the 1 ms slot `call % 20` of the 20 ms grid.
    pub fn add(&self, call: u32, sock: Arc<UdpSocket>, dst: SocketAddr) {
        let now = Instant::now();
        let since = now.duration_since(self.shared.epoch).as_nanos() as u64;
        let period = PTIME.as_nanos() as u64;
        let slot = u64::from(call % 20) * 1_000_000;
        let mut first = since - since % period + slot;
        if first < since {
            first += period;
        }
        let next_due = self.shared.epoch + Duration::from_nanos(first);
        let seed = call.wrapping_mul(0x9E37_79B1) ^ 0x5EED_1234;
        self.senders.lock().push(Sender {
            call,
            sock,
            dst,
            ssrc: seed,
            seq: (seed >> 16) as u16,
            ts: seed.rotate_left(7),
            k: 0,
            next_due,
        });
    }

    pub fn remove(&self, call: u32) {
        self.senders.lock().retain(|s| s.call != call);
    }

    pub fn clear(&self) {
        self.senders.lock().clear();
    }

    /// The timer loop: wakes every millisecond and sends each frame that is due. Runs until aborted.
    pub async fn run(self: Arc<Self>) {
        let period = self.period;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut pkt = [0u8; HEADER_LEN + PAYLOAD_LEN];
        let mut payload = [0u8; PAYLOAD_LEN];
        let mut lateness = Vec::with_capacity(1024);
        let mut send_us = Vec::with_capacity(1024);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let (mut sent, mut in_window, mut errors, mut skipped) = (0u64, 0u64, 0u64, 0u64);
            {
                let mut senders = self.senders.lock();
                for s in senders.iter_mut() {
                    let mut burst = 0;
                    while s.next_due <= now {
                        if burst == MAX_CATCH_UP {
                            while s.next_due <= now {
                                s.next_due += period;
                                s.k += 1;
                                s.seq = s.seq.wrapping_add(1);
                                s.ts = s.ts.wrapping_add(PAYLOAD_LEN as u32);
                                skipped += 1;
                            }
                            break;
                        }
                        burst += 1;
                        pkt[0] = 0x80;
                        pkt[1] = if s.k == 0 { 0x80 } else { 0x00 }; // marker bit on the first packet, PT 0
                        pkt[2..4].copy_from_slice(&s.seq.to_be_bytes());
                        pkt[4..8].copy_from_slice(&s.ts.to_be_bytes());
                        pkt[8..12].copy_from_slice(&s.ssrc.to_be_bytes());
                        let send_ns = self.shared.now_ns();
                        Marker { call: s.call, seq: s.k, send_ns }.write(&mut payload);
                        pkt[HEADER_LEN..].copy_from_slice(&payload);
                        match s.sock.try_send_to(&pkt, s.dst) {
                            Ok(_) => {
                                let sent_ns = self.shared.now_ns();
                                sent += 1;
                                if self.shared.window.contains(send_ns) {
                                    in_window += 1;
                                    send_us
                                        .push((sent_ns.saturating_sub(send_ns) / 1000).min(u64::from(u32::MAX)) as u32);
                                    let late = Instant::now().saturating_duration_since(s.next_due);
                                    lateness.push(late.as_micros().min(u128::from(u32::MAX)) as u32);
                                }
                            }
                            Err(_) => errors += 1,
                        }
                        s.next_due += period;
                        s.k += 1;
                        s.seq = s.seq.wrapping_add(1);
                        s.ts = s.ts.wrapping_add(PAYLOAD_LEN as u32);
                    }
                }
            }
            if sent + errors + skipped > 0 {
                let mut g = self.shared.generator.lock();
                g.sent_total += sent;
                g.send_errors += errors;
                g.skipped += skipped;
                g.lateness_us.append(&mut lateness);
                g.send_us.append(&mut send_us);
            }
            if in_window > 0 {
                match self.path {
                    SentPath::Up => self.shared.up.lock().sent += in_window,
                    SentPath::Back => self.shared.back.lock().sent += in_window,
                }
            }
        }
    }
}

/// Receives what the server sends to call `call`'s RTP socket and accounts it on the "back" path. Runs until
/// aborted.
pub async fn receive(call: u32, sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = [0u8; 2048];
    loop {
        let len = match sock.recv_from(&mut buf).await {
            Ok((len, _)) => len,
            Err(_) => {
                // Unconnected UDP sockets see no ICMP errors on Linux; anything else is worth not spinning on.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let now_ns = shared.now_ns();
        match rtp_payload(&buf[..len]) {
            Some((0, payload)) => {
                shared.back.lock().on_payload(Some(call), payload, now_ns, &shared.window, shared.late_ns)
            }
            _ => {
                if shared.window.contains(now_ns) {
                    shared.back.lock().other += 1;
                }
            }
        }
    }
}

/// Payload type and payload of an RTP packet (RFC 3550 §5.1), or `None` if it is not one.
fn rtp_payload(p: &[u8]) -> Option<(u8, &[u8])> {
    if p.len() < HEADER_LEN || p[0] >> 6 != 2 {
        return None;
    }
    let pt = p[1] & 0x7f;
    if (72..=76).contains(&pt) {
        return None; // RTCP sent to the RTP port
    }
    let mut off = HEADER_LEN + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        let words = u16::from_be_bytes([*p.get(off + 2)?, *p.get(off + 3)?]);
        off += 4 + 4 * usize::from(words);
    }
    let mut end = p.len();
    if p[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*p.last()?))?;
    }
    (off <= end).then(|| (pt, &p[off..end]))
}
