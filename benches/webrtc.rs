//! Memory per session and CPU per stream of WebRTC calls on the real server (issue 6).
//!
//! Starts the release `fairvox` binary with one tenant whose app is the built-in echo (so each call decodes the
//! caller's Opus, frames it, hands it to the echo agent, and encodes the echoed audio back to Opus: both
//! directions of the media path). The callers are `str0m` peers in this process, each with its own UDP socket,
//! sending a 440 Hz tone as 20 ms Opus packets, one per 20 ms. Everything is on 127.0.0.1.
//!
//! Phases, in one run:
//! 1. memory: `--sessions` WHIP sessions answered (offer -> 201), not connected; server RSS growth / sessions;
//! 2. idle: the server's CPU for `--secs` with no call;
//! 3. streams: `--streams` callers connected (ICE, DTLS-SRTP) and sending for `--secs`; server CPU minus idle, per
//!    stream, and RSS growth per connected call; frames each way, to show the media really flowed.
//!
//! `cargo bench --bench webrtc -- [--sessions 100] [--streams 20] [--secs 10]`; JSON in `target/bench/webrtc.json`.

#[path = "load/server.rs"]
#[allow(dead_code)]
mod server;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const ADMIN: &str = "fvadm_webrtc_bench_operator_token_0123456789";

struct Args {
    sessions: usize,
    streams: usize,
    secs: u64,
}

fn args() -> Args {
    let mut a = Args { sessions: 100, streams: 20, secs: 10 };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (argv[i].as_str(), next) {
            ("--sessions", Some(v)) => a.sessions = v as usize,
            ("--streams", Some(v)) => a.streams = v as usize,
            ("--secs", Some(v)) => a.secs = v,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// One request; (status, body, Location).
fn http(addr: SocketAddr, method: &str, path: &str, token: &str, body: Option<(&str, &str)>) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("http://{addr}{path}");
    let auth = format!("Bearer {token}");
    let result = match (method, body) {
        ("POST", Some((ct, b))) => {
            agent.post(&url).header("Authorization", &auth).header("Content-Type", ct).send(b.as_bytes())
        }
        ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
        _ => agent.get(&url).header("Authorization", &auth).call(),
    };
    match result {
        Ok(mut r) => {
            let location = r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default(), location)
        }
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// One caller: its socket, its peer connection, what it sent and got.
struct Caller {
    sock: UdpSocket,
    rtc: Rtc,
    mid: Mid,
    pt: Pt,
    location: String,
    next_timeout: Instant,
    connected: bool,
    sent: u64,
    received: u64,
}

fn new_caller(http_addr: SocketAddr, app: &str, key: &str) -> Caller {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_nonblocking(true).expect("nonblocking");
    let now = Instant::now();
    let mut rtc = str0m::RtcConfig::new().clear_codecs().enable_opus(true, false).build(now);
    rtc.add_local_candidate(Candidate::host(sock.local_addr().expect("addr"), "udp").expect("candidate"));
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().expect("offer");
    let (status, answer, location) =
        http(http_addr, "POST", &format!("/whip/{app}"), key, Some(("application/sdp", &offer.to_sdp_string())));
    assert_eq!(status, 201, "WHIP POST: {answer}");
    let answer = str0m::change::SdpAnswer::from_sdp_string(&answer).expect("answer parses");
    rtc.sdp_api().accept_answer(pending, answer).expect("answer accepted");
    let pt = rtc.codec_config().find(|p| p.spec().codec == str0m::format::Codec::Opus).map(|p| p.pt()).expect("opus");
    Caller { sock, rtc, mid, pt, location, next_timeout: now, connected: false, sent: 0, received: 0 }
}

/// 50 Opus packets (1 s) of a 440 Hz tone, as a browser would send them (48 kHz encoder).
fn tone_packets() -> Vec<Arc<[u8]>> {
    let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    (0..50)
        .map(|f| {
            let pcm: Vec<i16> = (0..960)
                .map(|i| (9000.0 * (2.0 * std::f64::consts::PI * 440.0 * (f * 960 + i) as f64 / 48_000.0).sin()) as i16)
                .collect();
            let mut out = [0u8; 1275];
            let n = enc.encode(&pcm, &mut out).expect("encode");
            Arc::from(&out[..n])
        })
        .collect()
}

/// Drives every caller until `until`: timers, one packet per 20 ms each once connected, datagrams both ways.
fn run_callers(callers: &mut [Caller], packets: &[Arc<[u8]>], until: Instant, send: bool) {
    let mut buf = vec![0u8; 2000];
    let mut next_frame = Instant::now();
    while Instant::now() < until {
        let now = Instant::now();
        let frame_due = send && now >= next_frame;
        if frame_due {
            next_frame += Duration::from_millis(20);
        }
        for c in callers.iter_mut() {
            if now >= c.next_timeout {
                let _ = c.rtc.handle_input(Input::Timeout(now));
            }
            if frame_due && c.connected {
                let time = MediaTime::new(c.sent * 960, Frequency::FORTY_EIGHT_KHZ);
                if let Some(w) = c.rtc.writer(c.mid)
                    && w.write(c.pt, now, time, Arc::clone(&packets[(c.sent % 50) as usize])).is_ok()
                {
                    c.sent += 1;
                }
            }
            let local = c.sock.local_addr().expect("addr");
            while let Ok((n, from)) = c.sock.recv_from(&mut buf) {
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(
                    Instant::now(),
                    Receive { proto: Protocol::Udp, source: from, destination: local, contents },
                );
                let _ = c.rtc.handle_input(input);
            }
            loop {
                match c.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => {
                        c.next_timeout = t;
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        let _ = c.sock.send_to(&t.contents, t.destination);
                    }
                    Ok(Output::Event(Event::Connected)) => c.connected = true,
                    Ok(Output::Event(Event::MediaData(_))) => c.received += 1,
                    Ok(Output::Event(_)) => {}
                    Err(_) => break,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn main() {
    let args = args();
    let dir = std::env::temp_dir().join(format!("fairvox-webrtc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let max = args.sessions.max(args.streams) + 10;
    let config = dir.join("fairvox.toml");
    std::fs::write(
        &config,
        format!(
            "[rtp]\ninactivity_timeout_secs = 300\n\n[limits]\nmax_calls = {max}\n\n[api]\nrequests_per_second = 1000\nburst = 1000\n\n\
             [plans.bench]\nweight = 1\nmax_concurrent_calls = {max}\ncalls_per_second = 1000\nburst = 1000\n\
             monthly_minutes = \"unlimited\"\n\n[[tenants]]\nid = \"web\"\nplan = \"bench\"\n\n\
             [[tenants.apps]]\nname = \"echo\"\nkind = \"echo\"\n"
        ),
    )
    .expect("config");
    let (http_port, sip_port) = (server::free_port().expect("port"), server::free_port().expect("port"));
    let http_addr: SocketAddr = format!("127.0.0.1:{http_port}").parse().expect("addr");
    let log = dir.join("server.log");
    let spec = server::ServerSpec {
        mode: server::Mode::Echo,
        agent: None,
        max_calls: max,
        sip: format!("127.0.0.1:{sip_port}").parse().expect("addr"),
        http: http_addr,
        rtp_lo: 30000,
        rtp_hi: 30000 + 2 * max as u16 + 20,
        dir: &dir,
        log: &log,
        cores: Vec::new(),
        nice: 0,
        rust_log: "warn",
    };
    // SAFETY: no other thread runs yet; the child inherits the variable.
    unsafe { std::env::set_var("FAIRVOX_ADMIN_TOKEN", ADMIN) };
    let mut srv = server::Server::start_with_config(env!("CARGO_BIN_EXE_fairvox"), &spec, &config).expect("server");
    srv.wait_healthy(http_addr, Duration::from_secs(20)).expect("healthy");
    let (status, key, _) = http(
        http_addr,
        "POST",
        "/v1/tenants/web/keys",
        ADMIN,
        Some(("application/json", r#"{"name":"bench","scopes":["read","write"]}"#)),
    );
    assert_eq!(status, 201, "{key}");
    let key: Value = serde_json::from_str(&key).expect("json");
    let key = key["key"].as_str().expect("key").to_owned();
    let (_, apps, _) = http(http_addr, "GET", "/v1/apps", &key, None);
    let apps: Value = serde_json::from_str(&apps).expect("json");
    let app = apps["items"].as_array().and_then(|a| a.iter().find(|x| x["name"] == "echo")).expect("echo app")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let packets = tone_packets();

    // Warm-up: one session made and ended, so one-time allocations (crypto provider, first DTLS cert) are not
    // counted per session.
    let hang_up = |callers: &mut Vec<Caller>| {
        for c in callers.drain(..) {
            let _ = http(http_addr, "DELETE", &c.location, &key, None);
        }
    };
    let mut warm = vec![new_caller(http_addr, &app, &key)];
    hang_up(&mut warm);
    std::thread::sleep(Duration::from_secs(2));

    // 1. Memory per answered session.
    let before = srv.sample().expect("sample");
    let mut idle_sessions: Vec<Caller> = Vec::new();
    for _ in 0..args.sessions {
        idle_sessions.push(new_caller(http_addr, &app, &key));
    }
    std::thread::sleep(Duration::from_secs(1));
    let with_sessions = srv.sample().expect("sample");
    let kib_per_session = (with_sessions.rss_kib as f64 - before.rss_kib as f64) / args.sessions as f64;
    hang_up(&mut idle_sessions);
    std::thread::sleep(Duration::from_secs(3));

    // 2. Idle CPU.
    let idle0 = srv.sample().expect("sample");
    std::thread::sleep(Duration::from_secs(args.secs));
    let idle1 = srv.sample().expect("sample");
    let idle_ms_per_s = (idle1.cpu_s - idle0.cpu_s) * 1000.0 / args.secs as f64;

    // 3. Streams.
    let rss0 = srv.sample().expect("sample").rss_kib;
    let mut callers: Vec<Caller> = (0..args.streams).map(|_| new_caller(http_addr, &app, &key)).collect();
    let setup_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < setup_until && callers.iter().any(|c| !c.connected) {
        run_callers(&mut callers, &packets, Instant::now() + Duration::from_millis(100), false);
    }
    let connected = callers.iter().filter(|c| c.connected).count();
    run_callers(&mut callers, &packets, Instant::now() + Duration::from_secs(2), true); // reach steady state
    let (sent0, got0): (u64, u64) = (callers.iter().map(|c| c.sent).sum(), callers.iter().map(|c| c.received).sum());
    let s0 = srv.sample().expect("sample");
    run_callers(&mut callers, &packets, Instant::now() + Duration::from_secs(args.secs), true);
    let s1 = srv.sample().expect("sample");
    let sent = callers.iter().map(|c| c.sent).sum::<u64>() - sent0;
    let got = callers.iter().map(|c| c.received).sum::<u64>() - got0;
    let busy_ms_per_s = (s1.cpu_s - s0.cpu_s) * 1000.0 / args.secs as f64;
    let per_stream = (busy_ms_per_s - idle_ms_per_s) / args.streams as f64;
    let kib_per_call = (s1.rss_kib as f64 - rss0 as f64) / args.streams as f64;
    hang_up(&mut callers);

    println!("fairvox WebRTC calls (str0m =0.25.0, libopus via opus 0.4), echo app, 127.0.0.1");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| answered sessions (not connected) | {} |", args.sessions);
    println!("| server RSS per answered session | {kib_per_session:.1} KiB |");
    println!("| connected streams (20 ms Opus each way) | {connected} of {} |", args.streams);
    println!("| server RSS per connected call | {kib_per_call:.1} KiB |");
    println!("| server CPU, idle | {idle_ms_per_s:.1} ms/s |");
    println!("| server CPU, {} streams | {busy_ms_per_s:.1} ms/s |", args.streams);
    println!("| server CPU per stream (minus idle) | {per_stream:.2} ms/s ({:.2}% of a core) |", per_stream / 10.0);
    println!("| packets sent by callers / echoed back in {} s | {sent} / {got} |", args.secs);
    let report = json!({
        "sessions": args.sessions, "kib_per_session": kib_per_session,
        "streams": args.streams, "connected": connected, "kib_per_call": kib_per_call,
        "idle_cpu_ms_per_s": idle_ms_per_s, "busy_cpu_ms_per_s": busy_ms_per_s, "cpu_ms_per_s_per_stream": per_stream,
        "secs": args.secs, "packets_sent": sent, "packets_echoed": got,
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("webrtc.json"), serde_json::to_string_pretty(&report).unwrap_or_default());
    let _ = srv.stop(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(connected, args.streams, "every caller connected");
    assert!(got * 10 >= sent * 9, "the echo came back: {got} of {sent}");
}
