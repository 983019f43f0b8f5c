//! Proves the test harness (`tests/common`) and the fixtures and sipp scenarios work, without fairvox: the
//! agent against a tokio-tungstenite client, RTP capture against plain sockets, the pcaps by parsing, and every
//! `tests/sipp/uac_*.xml` against a sipp peer (`tests/sipp/peer_*.xml` or sipp's built-in `uas`) that plays
//! fairvox's part, and a baresip call against such a peer.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use common::fixtures;
use common::g711;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SIPP_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------------------ ports

#[test]
fn ports_are_distinct_and_bindable() {
    let mut seen = BTreeSet::new();
    for _ in 0..50 {
        let p = free_port();
        assert!(seen.insert(p), "port {p} handed out twice");
        UdpSocket::bind(("127.0.0.1", p)).expect("udp bind");
        TcpListener::bind(("127.0.0.1", p)).expect("tcp bind");
    }
    let (a, b) = free_port_pair();
    assert_eq!(a % 2, 0);
    assert_eq!(b, a + 1);
    let base = free_port_block(4);
    assert_eq!(base % 2, 0);
    for p in base..base + 4 {
        assert!(!seen.contains(&p));
        UdpSocket::bind(("127.0.0.1", p)).expect("block port bind");
    }
}

#[test]
fn rtp_windows_are_exclusive() {
    let windows: Vec<RtpWindow> = (0..4).map(|_| RtpWindow::acquire()).collect();
    for (i, w) in windows.iter().enumerate() {
        assert_eq!(w.hi - w.lo + 1, 200);
        assert!(w.lo >= 10000 && w.hi < 32768, "{w:?} must stay below the ephemeral range");
        for v in &windows[i + 1..] {
            assert!(w.hi < v.lo || v.hi < w.lo, "{w:?} overlaps {v:?}");
        }
    }
}

// ------------------------------------------------------------------------------------------------ server

#[test]
fn server_that_exits_is_reported_at_once_with_its_log() {
    // True of the skeleton binary (exits at once) and of the real server (refuses a malformed config).
    let t = Instant::now();
    let err = Server::try_start("this is [[[ not toml").err().expect("a malformed config must not start");
    assert!(err.contains("fairvox exited before it was ready"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

// ------------------------------------------------------------------------------------------------ agent

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Client {
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect failed")
        .0
}

async fn next_text(c: &mut Client) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, c.next())
            .await
            .expect("no message from agent")
            .expect("stream ended")
            .expect("ws error");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).expect("agent sent JSON");
        }
    }
}

fn start_msg(sid: &str) -> Value {
    json!({"event": "start", "sequenceNumber": "1", "streamSid": sid,
           "start": {"accountSid": "acme", "streamSid": sid, "callSid": "CA1", "tracks": ["inbound"],
                     "customParameters": {"lang": "en"},
                     "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
}

#[tokio::test]
async fn agent_records_messages_and_sends_to_the_connection() {
    let agent = Agent::start();
    let mut c = connect(&format!("{}?tenant=acme", agent.url())).await;
    let t0 = Instant::now();
    c.send(Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()))
        .await
        .unwrap();
    c.send(Message::text(start_msg("MZ1").to_string())).await.unwrap();
    let audio = fixtures::speech_ulaw();
    for (i, chunk) in audio[..800].chunks(160).enumerate() {
        let mut m = media_message("MZ1", chunk);
        m["media"]["chunk"] = json!((i + 1).to_string());
        c.send(Message::text(m.to_string())).await.unwrap();
    }
    c.send(Message::text("not json")).await.unwrap();

    assert!(agent.wait_for_event_async("start", WAIT).await.is_some());
    assert!(
        agent
            .wait_for_async(WAIT, |m| m.iter().filter(|r| r.event() == "media").count() == 5
                && m.iter().any(|r| r.msg.get("_non_json").is_some()))
            .await,
        "{}",
        agent.dump()
    );
    let msgs = agent.messages();
    assert_eq!(msgs.len(), 8);
    assert_eq!(msgs[0].event(), "connected");
    assert!(msgs.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(msgs.iter().all(|r| r.at >= t0 && r.conn == 0));
    assert_eq!(agent.stream_sid(None).as_deref(), Some("MZ1"));
    assert_eq!(agent.inbound_audio(0), audio[..800].to_vec());
    let conn = agent.wait_for_connection(1, WAIT).unwrap();
    assert_eq!(conn.path, "/stream?tenant=acme");
    assert!(conn.headers.iter().any(|(k, _)| k == "sec-websocket-key"));

    // Test -> client: raw JSON, media with the start's streamSid, mark, clear, then close.
    agent.send(json!({"event": "hello"}));
    assert_eq!(next_text(&mut c).await["event"], "hello");
    agent.send_media(&audio[..320]);
    let m = next_text(&mut c).await;
    assert_eq!(m["event"], "media");
    assert_eq!(m["streamSid"], "MZ1");
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.decode(m["media"]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(b, audio[..320].to_vec());
    agent.send_mark("m1");
    assert_eq!(next_text(&mut c).await["mark"]["name"], "m1");
    agent.send_clear();
    assert_eq!(next_text(&mut c).await["event"], "clear");
    agent.close();
    let end = tokio::time::timeout(WAIT, async {
        while let Some(m) = c.next().await {
            if let Ok(Message::Close(f)) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("no close from agent");
    assert_eq!(end, Some(1000));
    // The client queued its close reply but only a poll would flush it: dropping it ends the TCP connection.
    drop(c);
    assert!(agent.wait_for_close(0, WAIT).is_some(), "{}", agent.dump());
}

#[tokio::test]
async fn agent_records_the_close_frame_a_client_sends() {
    let agent = Agent::start();
    let mut c = connect(&agent.url()).await;
    c.send(Message::text(start_msg("MZ2").to_string())).await.unwrap();
    c.close(None).await.unwrap();
    let conn = agent.wait_for_close(0, WAIT).expect("close not seen");
    assert!(conn.closed_at.is_some());
    assert_eq!(agent.events("start").len(), 1);
    // A second connection gets id 1.
    let mut c2 = connect(&agent.url()).await;
    c2.send(Message::text(start_msg("MZ3").to_string())).await.unwrap();
    assert!(agent.wait_for(WAIT, |m| m.iter().any(|r| r.conn == 1)));
    assert_eq!(agent.stream_sid(Some(1)).as_deref(), Some("MZ3"));
    assert_eq!(agent.stream_sid(Some(0)).as_deref(), Some("MZ2"));
}

#[tokio::test]
async fn agent_echo_mode_sends_media_back() {
    let agent = Agent::start_with(AgentMode::Echo);
    let mut c = connect(&agent.url()).await;
    c.send(Message::text(start_msg("MZ4").to_string())).await.unwrap();
    let tone = fixtures::tone1k_ulaw();
    c.send(Message::text(media_message("MZ4", &tone[..160]).to_string())).await.unwrap();
    let m = next_text(&mut c).await;
    assert_eq!(m, media_message("MZ4", &tone[..160]));
}

#[tokio::test]
async fn agent_close_after_n_messages() {
    let agent = Agent::start_with(AgentMode::CloseAfter(2));
    let mut c = connect(&agent.url()).await;
    for i in 0..2 {
        c.send(Message::text(json!({"event": "n", "i": i}).to_string())).await.unwrap();
    }
    let got_close = tokio::time::timeout(WAIT, async {
        while let Some(m) = c.next().await {
            if matches!(m, Ok(Message::Close(_))) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(got_close, "agent did not close after 2 messages");
    assert_eq!(agent.messages().len(), 2);
}

#[tokio::test]
async fn agent_never_handshake_times_the_client_out() {
    let agent = Agent::start_with(AgentMode::NeverHandshake);
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_millis(800), tokio_tungstenite::connect_async(agent.url())).await;
    assert!(r.is_err(), "handshake should hang, got {:?}", r.map(|r| r.is_ok()));
    assert!(t.elapsed() >= Duration::from_millis(800));
    assert!(agent.wait_for_tcp_accepts(1, WAIT));
    assert!(agent.connections().is_empty());
}

#[tokio::test]
async fn agent_refuse_mode_refuses() {
    let agent = Agent::start_with(AgentMode::Refuse);
    let t = Instant::now();
    let r = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(agent.url()))
        .await
        .expect("refused connect should fail fast");
    let err = r.expect_err("connect to a refusing agent succeeded");
    assert!(format!("{err:?}").contains("ConnectionRefused"), "unexpected error {err:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

// ------------------------------------------------------------------------------------------------ RTP capture

fn rtp_bytes(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x80, 0x00];
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
    b.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

#[test]
fn rtp_capture_sees_datagrams_to_a_port_nobody_owns() {
    let port = free_port();
    let cap = RtpCapture::to_port(port);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let other = free_port();
    for i in 0..10u16 {
        tx.send_to(&rtp_bytes(i, &[0xff; 160]), ("127.0.0.1", port)).unwrap();
        tx.send_to(b"noise", ("127.0.0.1", other)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(cap.wait_for_count(10, WAIT));
    std::thread::sleep(Duration::from_millis(100));
    let pk = cap.stop();
    assert_eq!(pk.len(), 10, "only datagrams to {port}, each once");
    let src = tx.local_addr().unwrap().port();
    for (i, c) in pk.iter().enumerate() {
        assert_eq!(c.dst.port(), port);
        assert_eq!(c.src.port(), src);
        let r = c.rtp().unwrap();
        assert_eq!((r.pt, r.seq, r.payload.len()), (0, i as u16, 160));
    }
    assert!(pk.windows(2).all(|w| w[0].at <= w[1].at));
}

#[test]
fn rtp_capture_sees_datagrams_to_a_port_another_socket_owns() {
    let owner = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = owner.local_addr().unwrap().port();
    let cap = RtpCapture::to_port(port);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let t0 = Instant::now();
    for i in 0..5u16 {
        tx.send_to(&rtp_bytes(i, &[0x55; 20]), owner.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    // The owner still gets every datagram.
    owner.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        owner.recv_from(&mut buf).unwrap();
    }
    assert!(cap.wait_for_count(5, WAIT));
    let rtp = cap.rtp();
    assert_eq!(rtp.len(), 5);
    // Kernel stamps: ~20 ms apart, after t0.
    assert!(rtp[0].0 >= t0 - Duration::from_millis(5));
    let gap = rtp[4].0 - rtp[0].0;
    assert!(gap >= Duration::from_millis(70) && gap < Duration::from_millis(300), "{gap:?}");
    // From-port filter sees the same datagrams.
    let cap2 = RtpCapture::from_port(tx.local_addr().unwrap().port());
    tx.send_to(&rtp_bytes(9, &[1]), owner.local_addr().unwrap()).unwrap();
    assert!(cap2.wait_for_count(1, WAIT));
}

// ------------------------------------------------------------------------------------------------ fixtures

#[test]
fn pcmu_pcap_layout_and_payload_sidecar() {
    let pk = fixtures::read_pcap(&fixtures::path("caller_pcmu_20ms.pcap"));
    assert_eq!(pk.len(), fixtures::PCMU_PACKETS);
    let audio: Vec<_> = pk.iter().filter(|p| p.rtp.pt == 0).collect();
    let dtmf: Vec<_> = pk.iter().filter(|p| p.rtp.pt == fixtures::DTMF_PT).collect();
    assert_eq!(audio.len(), fixtures::PCMU_AUDIO_PACKETS);
    assert_eq!(dtmf.len(), fixtures::PCMU_DTMF_PACKETS);
    assert!(audio.iter().all(|p| p.rtp.payload.len() == 160));
    // One SSRC, consecutive sequence numbers, one destination port (sipp maps ports by offset from it).
    assert!(pk.iter().all(|p| p.rtp.ssrc == fixtures::PCMU_SSRC));
    for (i, p) in pk.iter().enumerate() {
        assert_eq!(p.rtp.seq, fixtures::SEQ0 + i as u16);
    }
    assert_eq!(pk.iter().map(|p| p.dst_port).collect::<BTreeSet<_>>().len(), 1);
    // Audio: 20 ms apart in capture time and 160 in timestamp, both mapping to the same clock.
    for p in &audio {
        let ts_ms = (p.rtp.ts - fixtures::TS0) as u128 / 8;
        assert_eq!(p.t.as_millis(), ts_ms, "capture time must match the RTP clock");
    }
    assert!(audio[0].rtp.marker && audio[fixtures::PCMU_SPEECH_PACKETS].rtp.marker);
    assert_eq!(pk.last().unwrap().t, fixtures::PCMU_PCAP_SPAN);
    // DTMF: digit 5, one timestamp, growing durations, marker on the first, 3 end packets with the final
    // duration, 50 ms between updates.
    assert!(dtmf.iter().all(|p| p.rtp.ts == fixtures::DTMF_TS));
    let ev: Vec<_> = dtmf.iter().map(|p| p.rtp.dtmf().unwrap()).collect();
    assert!(ev.iter().all(|e| e.0 == fixtures::DTMF_DIGIT && e.2 == 10));
    assert!(dtmf[0].rtp.marker && dtmf[1..].iter().all(|p| !p.rtp.marker));
    let ends: Vec<_> = ev.iter().filter(|e| e.1).collect();
    assert_eq!(ends.len(), fixtures::PCMU_DTMF_END_PACKETS);
    assert!(ends.iter().all(|e| e.3 == fixtures::DTMF_DURATION));
    assert!(ev.windows(2).all(|w| w[0].3 <= w[1].3));
    assert!(ev[..4].iter().all(|e| !e.1));
    assert_eq!(dtmf[1].t - dtmf[0].t, Duration::from_millis(50));
    assert_eq!(dtmf[0].t, Duration::from_millis(3000));

    // The sidecar is exactly the PCMU payloads, in order: speech.ulaw then the first 0.5 s of tone1k.ulaw.
    let payload = fixtures::pcmu_payload();
    let concat: Vec<u8> = audio.iter().flat_map(|p| p.rtp.payload.clone()).collect();
    assert_eq!(payload.len(), fixtures::PCMU_PAYLOAD_BYTES);
    assert_eq!(payload, concat);
    assert_eq!(payload[..fixtures::SPEECH_BYTES], fixtures::speech_ulaw()[..]);
    assert_eq!(payload[fixtures::SPEECH_BYTES..], fixtures::tone1k_ulaw()[..4000]);
}

#[test]
fn pcma_pcap_layout() {
    let pk = fixtures::read_pcap(&fixtures::path("caller_pcma_30ms.pcap"));
    assert_eq!(pk.len(), fixtures::PCMA_PACKETS);
    let speech_a = fixtures::read("speech.alaw");
    for (i, p) in pk.iter().enumerate() {
        assert_eq!(p.rtp.pt, 8);
        assert_eq!(p.rtp.ssrc, fixtures::PCMA_SSRC);
        assert_eq!(p.rtp.seq, fixtures::SEQ0 + i as u16);
        assert_eq!(p.rtp.ts, fixtures::TS0 + 240 * i as u32);
        assert_eq!(p.t, Duration::from_millis(30 * i as u64));
        assert_eq!(p.rtp.payload, speech_a[240 * i..240 * (i + 1)]);
    }
}

#[test]
fn audio_fixtures_sound_right() {
    let speech = g711::decode_ulaw(&fixtures::speech_ulaw());
    assert_eq!(speech.len(), fixtures::SPEECH_BYTES);
    let level = g711::rms_dbfs(&speech);
    assert!((-35.0..-10.0).contains(&level), "speech level {level} dBFS");
    // A-law and mu-law carry the same speech.
    let speech_a = g711::decode_alaw(&fixtures::read("speech.alaw"));
    let diff = g711::rms_dbfs(&speech) - g711::rms_dbfs(&speech_a);
    assert!(diff.abs() < 0.5, "mu-law vs A-law level differ by {diff} dB");
    let tone = g711::decode_ulaw(&fixtures::tone1k_ulaw());
    assert_eq!(tone.len(), fixtures::TONE_BYTES);
    assert!((g711::rms_dbfs(&tone) + 9.0).abs() < 0.5, "tone at -6 dBFS peak = -9 dBFS rms");
    assert!(g711::tone_ratio(&tone, 1000.0) > 0.95);
    assert!(g711::tone_ratio(&speech, 1000.0) < 0.5);
    // speech.wav (for baresip) is the same audio at 16 bits.
    let wav = fixtures::read("speech.wav");
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 8000);
    assert_eq!(wav.len(), 44 + 2 * fixtures::SPEECH_BYTES);
}

#[test]
#[ignore = "needs espeak-ng, sox and python3; run after changing tests/tools/make_fixtures.py"]
fn fixtures_match_their_generator() {
    let st = std::process::Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/make_fixtures.py"))
        .arg("--check")
        .status()
        .expect("python3");
    assert!(st.success());
}

// ------------------------------------------------------------------------------------------------ raw SIP

/// A toy UDP+TCP "SIP server" on one port: answers anything with 200 OK copying Via/From/To/Call-ID/CSeq.
fn toy_sip_server() -> SocketAddr {
    let port = free_port();
    let udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
    fn answer(req: &[u8]) -> Vec<u8> {
        let mut r = String::from("SIP/2.0 200 OK\r\n");
        for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
            for v in sip_headers(req, h) {
                r.push_str(&format!("{h}: {v}\r\n"));
            }
        }
        r.push_str("Content-Length: 4\r\n\r\nbody");
        r.into_bytes()
    }
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&answer(&buf[..n]), from);
        }
    });
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in tcp.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 65536];
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write_all(&answer(&buf[..n]));
            }
        }
    });
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn raw_sip_helpers() {
    let addr = toy_sip_server();
    assert_eq!(options_ping(addr), Some(200));
    let req = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP {local};branch=z9hG4bK-x\r\nf: <sip:a@b>;tag=1\r\nt: <sip:x@127.0.0.1>\r\ni: raw-1\r\nCSeq: 7 OPTIONS\r\nl: 0\r\n\r\n";
    let resp = sip_udp_exchange(addr, req, WAIT).expect("no answer");
    assert_eq!(sip_status(&resp), Some(200));
    assert_eq!(sip_header(&resp, "call-id").as_deref(), Some("raw-1"));
    assert_eq!(sip_header(&resp, "CSeq").as_deref(), Some("7 OPTIONS"));
    let via = sip_header(&resp, "Via").unwrap();
    assert!(via.starts_with("SIP/2.0/UDP 127.0.0.1:") && !via.contains("{local}"), "{via}");
    assert_eq!(sip_body(&resp), b"body");
    let tcp = sip_tcp_exchange(addr, req, WAIT).expect("no tcp answer");
    assert_eq!(sip_status(&tcp), Some(200));
    assert_eq!(sip_body(&tcp), b"body");
    // Nothing listens: no answer, within the timeout.
    let t = Instant::now();
    assert!(
        sip_udp_exchange(SocketAddr::from(([127, 0, 0, 1], closed_port())), req, Duration::from_millis(300)).is_none()
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(sip_status(b"INVITE sip:a@b SIP/2.0\r\n\r\n"), None);
}

#[test]
fn http_get_reports_status_and_body() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
    });
    assert_eq!(http_get(addr, "/healthz", WAIT), Some((200, "ok".into())));
    assert_eq!(http_get(SocketAddr::from(([127, 0, 0, 1], closed_port())), "/", WAIT), None);
}

// ------------------------------------------------------------------------------------------------ sipp scenarios

/// A sipp UAS peer standing in for fairvox, listening before this returns.
fn peer(scenario: Sipp) -> SippRun {
    let run = scenario.spawn(SIPP_TIMEOUT);
    assert!(run.wait_listening(WAIT), "sipp peer did not start listening");
    run
}

fn peer_addr(p: &SippRun) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p.local_port()))
}

fn both_succeed(caller: SippResult, peer: SippRun, what: &str) {
    caller.assert_success(&format!("{what} (caller)"));
    peer.wait().assert_success(&format!("{what} (peer)"));
}

/// A copy of peer_uas_reject.xml that answers `status` (sipp takes no variable in a status line).
fn reject_peer(status: u16) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let xml = std::fs::read_to_string(sipp_dir().join("peer_uas_reject.xml"))
        .unwrap()
        .replace("SIP/2.0 488 ", &format!("SIP/2.0 {status} "));
    let p = dir.path().join(format!("peer_uas_reject_{status}.xml"));
    std::fs::write(&p, xml).unwrap();
    (dir, p)
}

/// Checks what sipp's play_pcap_audio of caller_pcmu_20ms.pcap put on the wire.
fn check_pcmu_replay(pk: &[Captured], caller_media_port: u16) {
    assert_eq!(pk.len(), fixtures::PCMU_PACKETS, "every pcap packet arrives once");
    // sipp sends from its own -mp port.
    assert!(pk.iter().all(|c| c.src.port() == caller_media_port), "RTP source port is sipp's -mp");
    let rtp: Vec<RtpPacket> = pk.iter().map(|c| c.rtp().unwrap()).collect();
    let audio: Vec<u8> = rtp.iter().filter(|r| r.pt == 0).flat_map(|r| r.payload.clone()).collect();
    assert_eq!(audio, fixtures::pcmu_payload(), "payload as in the sidecar");
    let ends = rtp.iter().filter(|r| r.pt == 101 && r.dtmf().is_some_and(|d| d.1)).count();
    assert_eq!(ends, 3);
    // Paced in real time: the pcap spans 3.76 s.
    let span = pk.last().unwrap().at - pk[0].at;
    assert!(span > Duration::from_millis(3600) && span < Duration::from_millis(4200), "replay took {span:?}");
}

#[test]
fn sipp_uac_pcmu_media_against_builtin_uas() {
    let p = peer(Sipp::builtin("uas", None));
    let cap = RtpCapture::to_port(p.media_port());
    let caller = Sipp::to(peer_addr(&p), "uac_pcmu_media.xml").service("15551230001");
    let caller_mp = caller.media_port();
    let res = caller.run(SIPP_TIMEOUT);
    res.assert_success("uac_pcmu_media vs sipp -sn uas");
    // The INVITE offered the caller's -mp; the answer's [media_port] is where the RTP went.
    assert!(res.messages.contains(&format!("m=audio {caller_mp} RTP/AVP 0 8 101")));
    check_pcmu_replay(&cap.stop(), caller_mp);
    p.wait().assert_success("sipp -sn uas");
}

#[test]
fn sipp_uac_pcma_30ms_against_peer() {
    let p = peer(Sipp::uas("peer_uas_answer.xml").set("answer_pt", "8"));
    let cap = RtpCapture::to_port(p.media_port());
    let res = Sipp::to(peer_addr(&p), "uac_pcma_30ms.xml").service("15551230001").run(SIPP_TIMEOUT);
    let pk = cap.stop();
    both_succeed(res, p, "uac_pcma_30ms");
    assert_eq!(pk.len(), fixtures::PCMA_PACKETS);
    assert!(pk.iter().all(|c| {
        let r = c.rtp().unwrap();
        r.pt == 8 && r.payload.len() == 240
    }));
}

#[test]
fn sipp_uac_pcma_30ms_fails_when_the_answer_is_not_pcma() {
    let p = peer(Sipp::uas("peer_uas_answer.xml").set("answer_pt", "0"));
    let res = Sipp::to(peer_addr(&p), "uac_pcma_30ms.xml").service("15551230001").run(SIPP_TIMEOUT);
    assert!(!res.success(), "a PCMU answer must fail uac_pcma_30ms\n{}", res.report());
    let _ = p.kill();
}

#[test]
fn sipp_uac_tcp_against_peer() {
    let p = peer(Sipp::uas("peer_uas_answer.xml").set("answer_pt", "0").tcp());
    let cap = RtpCapture::to_port(p.media_port());
    let caller = Sipp::to(peer_addr(&p), "uac_tcp_pcmu_media.xml").service("15551230001").tcp();
    let caller_mp = caller.media_port();
    let res = caller.run(SIPP_TIMEOUT);
    assert!(res.messages.contains("Via: SIP/2.0/TCP"), "{}", res.report());
    let pk = cap.stop();
    both_succeed(res, p, "uac_tcp_pcmu_media");
    check_pcmu_replay(&pk, caller_mp);
}

#[test]
fn sipp_uac_codec_g729_gets_488() {
    let p = peer(Sipp::uas("peer_uas_reject.xml"));
    let res = Sipp::to(peer_addr(&p), "uac_codec_g729.xml").service("15551230001").run(SIPP_TIMEOUT);
    assert!(res.messages.contains("RTP/AVP 18"));
    both_succeed(res, p, "uac_codec_g729");
}

#[test]
fn sipp_uac_expect_status_passes_on_the_expected_status() {
    for status in [404u16, 503] {
        let (_d, scen) = reject_peer(status);
        let p = peer(Sipp::uas(&scen));
        let res = Sipp::to(peer_addr(&p), "uac_expect_status.xml")
            .service("15551239999")
            .set("expected_status", &status.to_string())
            .run(SIPP_TIMEOUT);
        both_succeed(res, p, &format!("uac_expect_status {status}"));
    }
}

#[test]
fn sipp_uac_expect_status_fails_on_another_status_or_an_answer() {
    let (_d, scen) = reject_peer(480);
    let p = peer(Sipp::uas(&scen));
    let res = Sipp::to(peer_addr(&p), "uac_expect_status.xml")
        .service("15551239999")
        .set("expected_status", "404")
        .run(SIPP_TIMEOUT);
    assert!(!res.success(), "480 when 404 is expected must fail\n{}", res.report());
    assert!(res.logs.contains("expected final status 404, got SIP/2.0 480"), "{}", res.report());
    let _ = p.kill();

    let p = peer(Sipp::uas("peer_uas_answer.xml").set("answer_pt", "0"));
    let res = Sipp::to(peer_addr(&p), "uac_expect_status.xml")
        .service("15551239999")
        .set("expected_status", "404")
        .run(SIPP_TIMEOUT);
    assert!(!res.success(), "a 200 when 404 is expected must fail\n{}", res.report());
    assert!(res.messages.contains("CSeq: 2 BYE"), "the answered call is hung up");
    let _ = p.kill();
}

#[test]
fn sipp_uac_cancel_against_peer() {
    let p = peer(Sipp::uas("peer_uas_cancel.xml"));
    let res = Sipp::to(peer_addr(&p), "uac_cancel.xml").service("15551230001").run(SIPP_TIMEOUT);
    assert!(res.messages.contains("487 Request Terminated"), "{}", res.report());
    both_succeed(res, p, "uac_cancel");
}

#[test]
fn sipp_uac_reinvite_hold_against_peer() {
    let p = peer(Sipp::uas("peer_uas_reinvite.xml"));
    let res = Sipp::to(peer_addr(&p), "uac_reinvite_hold.xml").service("15551230001").run(SIPP_TIMEOUT);
    assert!(res.messages.contains("a=sendonly") && res.messages.contains("a=recvonly"));
    both_succeed(res, p, "uac_reinvite_hold");
}

#[test]
fn sipp_uac_info_dtmf_against_peer() {
    let p = peer(Sipp::uas("peer_uas_info.xml"));
    let res = Sipp::to(peer_addr(&p), "uac_info_dtmf.xml").service("15551230001").run(SIPP_TIMEOUT);
    assert!(res.messages.contains("Signal=7"));
    both_succeed(res, p, "uac_info_dtmf");
}

#[test]
fn sipp_uac_wait_for_bye_against_peer() {
    let p = peer(Sipp::uas("peer_uas_bye.xml"));
    let cap = RtpCapture::to_port(p.media_port());
    let res = Sipp::to(peer_addr(&p), "uac_wait_for_bye.xml").service("15551230001").run(SIPP_TIMEOUT);
    assert!(cap.stop().is_empty(), "uac_wait_for_bye sends no RTP");
    both_succeed(res, p, "uac_wait_for_bye");
}

#[test]
fn sipp_uac_media_wait_for_bye_against_peer() {
    let p = peer(Sipp::uas("peer_uas_bye.xml"));
    let cap = RtpCapture::to_port(p.media_port());
    let res = Sipp::to(peer_addr(&p), "uac_media_wait_for_bye.xml").service("15551230001").run(SIPP_TIMEOUT);
    // The peer hangs up after 1 s, in the middle of the replay: the rest of it is cut off.
    let n = cap.stop().len();
    assert!(n > 20 && n < fixtures::PCMU_PACKETS, "{n} packets");
    both_succeed(res, p, "uac_media_wait_for_bye");
}

#[test]
fn sipp_run_is_killed_at_its_timeout() {
    // Nothing answers: sipp would retransmit the INVITE for 32 s; the harness stops it at timeout + 5 s.
    let t = Instant::now();
    let res = Sipp::to(SocketAddr::from(([127, 0, 0, 1], closed_port())), "uac_wait_for_bye.xml")
        .service("1")
        .run(Duration::from_secs(1));
    assert!(!res.success());
    assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
}

#[test]
fn baresip_calls_a_sipp_peer_speaks_and_hangs_up() {
    let p = peer(Sipp::uas("peer_uas_answer.xml").set("answer_pt", "0"));
    let cap = RtpCapture::to_port(p.media_port());
    let phone = Baresip::new();
    let (lo, hi) = phone.rtp_ports();
    let res = phone.call(peer_addr(&p), "15551230001", Duration::from_secs(20));
    assert!(res.established && res.terminated, "{}", res.log);
    // It spoke speech.wav as PCMU from one of its RTP ports, ~3 s of 20 ms packets.
    let pk = cap.stop();
    assert!(pk.len() >= 140 && pk.len() <= 155, "{} packets\n{}", pk.len(), res.log);
    assert!(pk.iter().all(|c| (lo..=hi).contains(&c.src.port())));
    let audio: Vec<u8> = pk.iter().filter_map(|c| c.rtp()).filter(|r| r.pt == 0).flat_map(|r| r.payload).collect();
    let level = g711::rms_dbfs(&g711::decode_ulaw(&audio));
    let want = g711::rms_dbfs(&g711::decode_ulaw(&fixtures::speech_ulaw()));
    assert!((level - want).abs() < 1.5, "sent at {level:.1} dBFS, speech is {want:.1}");
    assert!(res.sent.len() >= 23_000, "enc dump has {} samples", res.sent.len());
    // The peer sends no audio: baresip heard nothing.
    assert!(res.heard.iter().all(|&s| s == 0));
    p.wait().assert_success("peer (the BYE came from baresip)");
}

#[test]
fn baresip_reports_a_rejected_call_at_once() {
    let (_d, scen) = reject_peer(404);
    let p = peer(Sipp::uas(&scen));
    let t = Instant::now();
    let res = Baresip::new().call(peer_addr(&p), "15559999999", Duration::from_secs(20));
    assert!(!res.established);
    assert_eq!(res.closed.as_deref(), Some("404 Rejected By Test Peer"), "{}", res.log);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    p.wait().assert_success("404 peer");
}

#[test]
fn baresip_over_tcp() {
    let p = peer(Sipp::uas("peer_uas_answer.xml").set("answer_pt", "8").tcp());
    let res = Baresip::new().tcp().codecs("PCMA/8000/1").call(peer_addr(&p), "15551230001", Duration::from_secs(20));
    assert!(res.established && res.terminated, "{}", res.log);
    assert!(res.log.contains("PCMA"), "{}", res.log);
    p.wait().assert_success("TCP peer");
}

#[test]
fn every_uac_scenario_has_a_self_test() {
    let tested = [
        "uac_pcmu_media.xml",
        "uac_pcma_30ms.xml",
        "uac_tcp_pcmu_media.xml",
        "uac_codec_g729.xml",
        "uac_expect_status.xml",
        "uac_cancel.xml",
        "uac_reinvite_hold.xml",
        "uac_info_dtmf.xml",
        "uac_wait_for_bye.xml",
        "uac_media_wait_for_bye.xml",
    ];
    for e in std::fs::read_dir(sipp_dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with("uac_") {
            assert!(tested.contains(&name.as_str()), "{name} has no self-test in harness_selftest.rs");
        }
    }
}
