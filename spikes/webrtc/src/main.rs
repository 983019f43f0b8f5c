//! WebRTC library spike (fairvox issue 6, item 3): measures memory per idle server-side session and CPU per
//! 50 pps audio stream for `str0m` (sans-IO) and `webrtc` (webrtc-rs, async over its sans-IO `rtc` core).
//! Standalone: not part of the fairvox crate. Figures go to docs/webrtc-choice.md.
//!
//! Usage: webrtc-spike <str0m-mem|webrtc-mem> N
//!        webrtc-spike <str0m-cpu|webrtc-cpu> K SECS

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A Chromium-style audio-only offer (Opus + PCMU/PCMA + telephone-event, transport-cc, rtcp-mux, BUNDLE),
/// with no candidates (trickle): the server answers and then sits idle, which is what we measure.
const CHROME_AUDIO_OFFER: &str = "v=0\r
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=group:BUNDLE 0\r
a=extmap-allow-mixed\r
a=msid-semantic: WMS\r
m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=ice-ufrag:SpKe\r
a=ice-pwd:spikepasswordspikepassword\r
a=ice-options:trickle\r
a=fingerprint:sha-256 2B:6F:41:8C:06:1A:97:E4:2D:4F:7C:55:3A:B0:91:0E:C4:7A:19:5D:8E:2F:33:61:A0:B7:5C:DE:04:13:88:F9\r
a=setup:actpass\r
a=mid:0\r
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r
a=sendrecv\r
a=msid:- 7b1f6c2e-3f0a-4a57-9d0e-6c1e2b7f8a90\r
a=rtcp-mux\r
a=rtcp-rsize\r
a=rtpmap:111 opus/48000/2\r
a=rtcp-fb:111 transport-cc\r
a=fmtp:111 minptime=10;useinbandfec=1\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:126 telephone-event/8000\r
a=ssrc:3735928559 cname:spikecname\r
a=ssrc:3735928559 msid:- 7b1f6c2e-3f0a-4a57-9d0e-6c1e2b7f8a90\r
";

const FRAME_BYTES: usize = 80;
const FRAME_INTERVAL: Duration = Duration::from_millis(20);

fn proc_status(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
fn rss_kib() -> u64 {
    proc_status("VmRSS:")
}
fn threads() -> u64 {
    proc_status("Threads:")
}
fn cpu_secs(who: i32) -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
fn process_cpu() -> f64 {
    cpu_secs(libc::RUSAGE_SELF)
}
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}
/// Open sockets of this process (fds whose link reads `socket:[..]`): how UDP sockets map to sessions.
fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}
/// The answer's audio m-line and codec, so a rejected (port 0) or codec-less answer shows in the output.
fn answer_summary(sdp: &str) -> String {
    let m = sdp.lines().find(|l| l.starts_with("m=audio")).unwrap_or("no m=audio");
    let opus = sdp.lines().any(|l| l.contains("opus/48000"));
    format!("answer: '{m}' opus={opus}")
}

fn report_mem(lib: &str, n: usize, rss0: u64, thr0: u64, fd0: usize, sock0: usize) {
    let rss1 = rss_kib();
    println!(
        "{lib} mem: sessions={n} rss_before={rss0}KiB rss_after={rss1}KiB per_session={:.1}KiB threads {thr0}->{} \
         fds {fd0}->{} sockets {sock0}->{}",
        (rss1.saturating_sub(rss0)) as f64 / n as f64,
        threads(),
        fds(),
        sockets()
    );
}

/// Common CPU protocol: once all K sessions are connected, measure an idle window (connected, not sending),
/// then a sending window of the same length, and report (send - idle) per stream per second.
fn cpu_protocol(lib: &str, k: usize, secs: u64, sending: &AtomicBool, sent: &AtomicU64, received: &AtomicU64) {
    let c0 = process_cpu();
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = process_cpu();
    let r0 = received.load(Ordering::Relaxed);
    let s0 = sent.load(Ordering::Relaxed);
    sending.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(secs));
    let c2 = process_cpu();
    let r1 = received.load(Ordering::Relaxed);
    let s1 = sent.load(Ordering::Relaxed);
    let idle = c1 - c0;
    let busy = c2 - c1;
    let expected = k as u64 * secs * 50;
    println!(
        "{lib} cpu: streams={k} window={secs}s idle_cpu={idle:.3}s send_cpu={busy:.3}s \
         per_stream={:.3}ms_cpu/s ({:.3}% of a core) sent={} received={} (~{expected} expected) threads={} rss={}KiB",
        (busy - idle) * 1000.0 / (k as f64 * secs as f64),
        (busy - idle) * 100.0 / (k as f64 * secs as f64),
        s1 - s0,
        r1 - r0,
        threads(),
        rss_kib()
    );
}

// ---------------------------------------------------------------- str0m

mod s0 {
    use super::*;
    use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output, Rtc};

    pub fn mem(n: usize) -> anyhow::Result<()> {
        str0m::crypto::from_feature_flags().install_process_default();
        // One shared server socket for all sessions: its address is every session's host candidate.
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        let addr = sock.local_addr()?;
        let offer_text = CHROME_AUDIO_OFFER.to_string();
        // Warm up one session so lazily initialised globals (crypto provider, cert gen) are not counted.
        let (_warm, answer) = answer_one(&offer_text, addr)?;
        println!("str0m {}", answer_summary(&answer));
        let (rss0, thr0, fd0, sock0) = (rss_kib(), threads(), fds(), sockets());
        let mut sessions = Vec::with_capacity(n);
        for _ in 0..n {
            sessions.push(answer_one(&offer_text, addr)?.0);
        }
        report_mem("str0m", n, rss0, thr0, fd0, sock0);
        drop(sessions);
        Ok(())
    }

    fn answer_one(offer_text: &str, addr: SocketAddr) -> anyhow::Result<(Rtc, String)> {
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp")?);
        let offer = str0m::change::SdpOffer::from_sdp_string(offer_text)?;
        let answer = rtc.sdp_api().accept_offer(offer)?.to_sdp_string();
        // Drain to the first timeout, as a server loop would after answering.
        loop {
            if let Output::Timeout(_) = rtc.poll_output()? {
                break;
            }
        }
        Ok((rtc, answer))
    }

    /// One UDP socket and the sessions behind it; `accepts()` demultiplexes.
    struct Group {
        sock: UdpSocket,
        rtcs: Vec<Rtc>,
        next: Vec<Instant>,
    }

    struct Sender {
        mid: Mid,
        pt: str0m::media::Pt,
        ts: u64,
        next_frame: Instant,
    }

    pub fn cpu(k: usize, secs: u64) -> anyhow::Result<()> {
        str0m::crypto::from_feature_flags().install_process_default();
        let now = Instant::now();
        let server_sock = UdpSocket::bind("127.0.0.1:0")?;
        let server_addr = server_sock.local_addr()?;
        let mut server = Group { sock: server_sock, rtcs: vec![], next: vec![] };
        let mut clients = vec![];
        let mut senders = vec![];
        for _ in 0..k {
            let csock = UdpSocket::bind("127.0.0.1:0")?;
            let caddr = csock.local_addr()?;
            let mut c = Rtc::builder().build(now);
            c.add_local_candidate(Candidate::host(caddr, "udp")?);
            let mut change = c.sdp_api();
            let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            let (offer, pending) = change.apply().context("no offer")?;
            let mut s = Rtc::builder().build(now);
            s.add_local_candidate(Candidate::host(server_addr, "udp")?);
            let answer = s.sdp_api().accept_offer(offer)?;
            c.sdp_api().accept_answer(pending, answer)?;
            let pt = c
                .codec_config()
                .find(|p| p.spec().codec == str0m::format::Codec::Opus)
                .map(|p| p.pt())
                .context("no opus")?;
            server.rtcs.push(s);
            server.next.push(now);
            clients.push(Group { sock: csock, rtcs: vec![c], next: vec![now] });
            senders.push(Sender { mid, pt, ts: 0, next_frame: now });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sending = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let server_thread = {
            let (stop, received, connected) = (stop.clone(), received.clone(), connected.clone());
            std::thread::spawn(move || run_loop(vec![server], None, &stop, &received, &connected))
        };
        let client_thread = {
            let (stop, sending, connected, sent) = (stop.clone(), sending.clone(), connected.clone(), sent.clone());
            std::thread::spawn(move || run_loop(clients, Some((senders, sending)), &stop, &sent, &connected))
        };
        let t0 = Instant::now();
        while connected.load(Ordering::SeqCst) < 2 * k as u64 {
            if t0.elapsed() > Duration::from_secs(20) {
                stop.store(true, Ordering::SeqCst);
                bail!("str0m: only {} of {} peers connected", connected.load(Ordering::SeqCst), 2 * k);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        println!(
            "str0m: {k} sessions connected in {:?} (sockets={}: 1 shared server + {k} client)",
            t0.elapsed(),
            sockets()
        );
        cpu_protocol("str0m", k, secs, &sending, &sent, &received);
        stop.store(true, Ordering::SeqCst);
        let server_cpu = server_thread.join().map_err(|_| anyhow::anyhow!("server panicked"))??;
        let client_cpu = client_thread.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        println!("str0m thread cpu totals: server_thread={server_cpu:.3}s client_thread={client_cpu:.3}s");
        Ok(())
    }

    /// A single-threaded poll(2) loop over groups of sessions; returns this thread's CPU seconds.
    fn run_loop(
        mut groups: Vec<Group>,
        mut senders: Option<(Vec<Sender>, Arc<AtomicBool>)>,
        stop: &AtomicBool,
        received: &AtomicU64,
        connected: &AtomicU64,
    ) -> anyhow::Result<f64> {
        for g in &groups {
            g.sock.set_nonblocking(true)?;
        }
        let payload: Arc<[u8]> = Arc::from(vec![0x5au8; FRAME_BYTES]);
        let mut buf = vec![0u8; 2000];
        let mut pfds: Vec<libc::pollfd> =
            groups.iter().map(|g| libc::pollfd { fd: g.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            // Media writes (client side only), each stream every 20 ms.
            if let Some((senders, sending)) = senders.as_mut()
                && sending.load(Ordering::Relaxed)
            {
                for (i, s) in senders.iter_mut().enumerate() {
                    if now >= s.next_frame {
                        let rtc = &mut groups[i].rtcs[0];
                        if let Some(w) = rtc.writer(s.mid) {
                            let t = MediaTime::new(s.ts, Frequency::FORTY_EIGHT_KHZ);
                            w.write(s.pt, now, t, payload.clone())?;
                            // On the client thread `received` counts frames written.
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        s.ts += 960;
                        s.next_frame += FRAME_INTERVAL;
                        if s.next_frame < now {
                            s.next_frame = now + FRAME_INTERVAL;
                        }
                        groups[i].next[0] = now;
                    }
                }
            }
            // Timeouts and output.
            for g in groups.iter_mut() {
                for (j, rtc) in g.rtcs.iter_mut().enumerate() {
                    if g.next[j] <= now {
                        rtc.handle_input(Input::Timeout(now))?;
                        g.next[j] = drain(rtc, &g.sock, received, connected)?;
                    }
                }
            }
            // Sleep until the next deadline or a datagram.
            let mut deadline = groups.iter().flat_map(|g| g.next.iter().copied()).min().unwrap_or(now);
            if let Some((senders, sending)) = senders.as_ref()
                && sending.load(Ordering::Relaxed)
                && let Some(nf) = senders.iter().map(|s| s.next_frame).min()
            {
                deadline = deadline.min(nf);
            }
            let wait_ms = deadline.saturating_duration_since(Instant::now()).as_millis().min(50) as i32;
            for p in pfds.iter_mut() {
                p.revents = 0;
            }
            // SAFETY: pfds is a valid slice of pollfd for the duration of the call.
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, wait_ms) };
            for (gi, g) in groups.iter_mut().enumerate() {
                if pfds[gi].revents == 0 {
                    continue;
                }
                let local = g.sock.local_addr()?;
                loop {
                    let (n, source) = match g.sock.recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    };
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(
                        Instant::now(),
                        Receive { proto: Protocol::Udp, source, destination: local, contents },
                    );
                    if let Some(j) = g.rtcs.iter().position(|r| r.accepts(&input)) {
                        g.rtcs[j].handle_input(input)?;
                        g.next[j] = drain(&mut g.rtcs[j], &g.sock, received, connected)?;
                    }
                }
            }
        }
        Ok(cpu_secs(libc::RUSAGE_THREAD))
    }

    fn drain(rtc: &mut Rtc, sock: &UdpSocket, received: &AtomicU64, connected: &AtomicU64) -> anyhow::Result<Instant> {
        loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    let _ = sock.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => {
                    connected.fetch_add(1, Ordering::SeqCst);
                }
                Output::Event(Event::MediaData(_)) => {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                Output::Event(_) => {}
            }
        }
    }
}

// ---------------------------------------------------------------- webrtc (webrtc-rs)

mod wr {
    use super::*;
    use rtc::media_stream::MediaStreamTrack;
    use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
    use rtc::rtp_transceiver::rtp_sender::{
        RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    };
    use webrtc::media_stream::track_local::TrackLocal;
    use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
    use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
    use webrtc::peer_connection::{
        MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
        RTCPeerConnectionState, RTCSessionDescription,
    };
    use webrtc::runtime::{Runtime, Sender, channel, default_runtime};

    struct Handler {
        gathered: Sender<()>,
        connected: Arc<AtomicU64>,
        received: Arc<AtomicU64>,
        runtime: Arc<dyn Runtime>,
    }

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Handler {
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            if state == RTCIceGatheringState::Complete {
                let _ = self.gathered.try_send(());
            }
        }
        async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
            if state == RTCPeerConnectionState::Connected {
                self.connected.fetch_add(1, Ordering::SeqCst);
            }
        }
        async fn on_track(&self, track: Arc<dyn TrackRemote>) {
            let received = self.received.clone();
            self.runtime.spawn(Box::pin(async move {
                while let Some(event) = track.poll().await {
                    match event {
                        TrackRemoteEvent::OnRtpPacket(_) => {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        TrackRemoteEvent::OnEnded => break,
                        _ => {}
                    }
                }
            }));
        }
    }

    struct Counters {
        connected: Arc<AtomicU64>,
        received: Arc<AtomicU64>,
    }

    async fn new_pc(
        rt: &Arc<dyn Runtime>,
        c: &Counters,
    ) -> anyhow::Result<(Arc<dyn PeerConnection>, webrtc::runtime::Receiver<()>)> {
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let (tx, rx) = channel::<()>(1);
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_handler(Arc::new(Handler {
                gathered: tx,
                connected: c.connected.clone(),
                received: c.received.clone(),
                runtime: rt.clone(),
            }))
            .with_runtime(rt.clone())
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await?;
        Ok((Arc::new(pc), rx))
    }

    async fn wait(rx: &mut webrtc::runtime::Receiver<()>) {
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    }

    pub fn mem(n: usize) -> anyhow::Result<()> {
        let rt = default_runtime().context("no runtime")?;
        let tokio_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        tokio_rt.block_on(async move {
            let c = Counters { connected: Arc::new(AtomicU64::new(0)), received: Arc::new(AtomicU64::new(0)) };
            let warm = answer_one(&rt, &c).await?;
            let answer = warm.local_description().await.map(|d| d.sdp).unwrap_or_default();
            println!("webrtc {}", answer_summary(&answer));
            let (rss0, thr0, fd0, sock0) = (rss_kib(), threads(), fds(), sockets());
            let mut sessions = Vec::with_capacity(n);
            for _ in 0..n {
                sessions.push(answer_one(&rt, &c).await?);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            report_mem("webrtc", n, rss0, thr0, fd0, sock0);
            for pc in sessions {
                let _ = pc.close().await;
            }
            anyhow::Ok(())
        })
    }

    async fn answer_one(rt: &Arc<dyn Runtime>, c: &Counters) -> anyhow::Result<Arc<dyn PeerConnection>> {
        let (pc, mut gathered) = new_pc(rt, c).await?;
        pc.set_remote_description(RTCSessionDescription::offer(CHROME_AUDIO_OFFER.to_string())?).await?;
        let answer = pc.create_answer(None).await?;
        pc.set_local_description(answer).await?;
        wait(&mut gathered).await;
        Ok(pc)
    }

    fn opus_track(ssrc: u32) -> Arc<TrackLocalStaticRTP> {
        Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("stream-{ssrc}"),
            format!("audio-{ssrc}"),
            format!("track-{ssrc}"),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![],
                },
                ..Default::default()
            }],
        )))
    }

    pub fn cpu(k: usize, secs: u64) -> anyhow::Result<()> {
        let rt = default_runtime().context("no runtime")?;
        let tokio_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let c = Counters { connected: Arc::new(AtomicU64::new(0)), received: Arc::new(AtomicU64::new(0)) };
        let sending = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let pcs = tokio_rt.block_on(async {
            let mut pcs = vec![];
            for i in 0..k {
                let (client, mut cg) = new_pc(&rt, &c).await?;
                let (server, mut sg) = new_pc(&rt, &c).await?;
                let ssrc = 1000 + i as u32;
                let track = opus_track(ssrc);
                client.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>).await?;
                let offer = client.create_offer(None).await?;
                client.set_local_description(offer).await?;
                wait(&mut cg).await;
                let offer = client.local_description().await.context("no offer")?;
                server.set_remote_description(offer).await?;
                let answer = server.create_answer(None).await?;
                server.set_local_description(answer).await?;
                wait(&mut sg).await;
                let answer = server.local_description().await.context("no answer")?;
                client.set_remote_description(answer).await?;
                // One sender task per stream: 50 pps of 80-byte payloads once `sending` flips.
                let (sending, stop, sent) = (sending.clone(), stop.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(FRAME_INTERVAL);
                    let payload = bytes::Bytes::from(vec![0x5au8; FRAME_BYTES]);
                    let mut seq: u16 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        if !sending.load(Ordering::Relaxed) {
                            continue;
                        }
                        let pkt = rtc::rtp::packet::Packet {
                            header: rtc::rtp::header::Header {
                                version: 2,
                                payload_type: 111,
                                sequence_number: seq,
                                timestamp: seq as u32 * 960,
                                ssrc,
                                ..Default::default()
                            },
                            payload: payload.clone(),
                        };
                        if track.write_rtp(pkt).await.is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        seq = seq.wrapping_add(1);
                    }
                });
                pcs.push((client, server));
            }
            anyhow::Ok(pcs)
        })?;
        let t0 = Instant::now();
        while c.connected.load(Ordering::SeqCst) < 2 * k as u64 {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("webrtc: only {} of {} peers connected", c.connected.load(Ordering::SeqCst), 2 * k);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        println!(
            "webrtc: {k} sessions connected in {:?} (sockets={} for {} PeerConnections)",
            t0.elapsed(),
            sockets(),
            2 * k
        );
        cpu_protocol("webrtc", k, secs, &sending, &sent, &c.received);
        stop.store(true, Ordering::SeqCst);
        tokio_rt.block_on(async {
            for (a, b) in pcs {
                let _ = a.close().await;
                let _ = b.close().await;
            }
        });
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(d);
    match args.get(1).map(String::as_str) {
        Some("str0m-mem") => s0::mem(num(2, 200) as usize),
        Some("webrtc-mem") => wr::mem(num(2, 200) as usize),
        Some("str0m-cpu") => s0::cpu(num(2, 20) as usize, num(3, 10)),
        Some("webrtc-cpu") => wr::cpu(num(2, 20) as usize, num(3, 10)),
        _ => bail!("usage: webrtc-spike <str0m-mem|webrtc-mem> N | <str0m-cpu|webrtc-cpu> K SECS"),
    }
}
