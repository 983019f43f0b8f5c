//! End to end with sipp: per-tenant admission. A tenant at its concurrency cap gets `486 Busy Here` while another
//! tenant still connects; a burst over a tenant's call rate gets `503` with `Retry-After`; once its calls end, the
//! tenant connects again. And while one tenant keeps the media workers hot (`limits.worker_busy_pct`), its new calls
//! get `503` and another tenant still connects.

mod common;
#[path = "support/prom.rs"]
mod prom;

use std::time::Duration;

use common::*;

const SIPP_TIMEOUT: Duration = Duration::from_secs(30);

const PLAN_SMALL: &str = r#"
[rtp]
inactivity_timeout_secs = 2

[plans.small]
weight = 1
max_concurrent_calls = 1
calls_per_second = 0.2
burst = 3
monthly_minutes = 1000
"#;

/// Tenants A (`+15550001`) and B (`+15550002`), each with an echo app, both on `plan`.
fn two_tenants(plan: &str) -> String {
    ["tenant-a", "tenant-b"]
        .iter()
        .zip(["+15550001", "+15550002"])
        .map(|(id, number)| {
            format!(
                "[[tenants]]\nid = \"{id}\"\nplan = \"{plan}\"\n[[tenants.apps]]\nname = \"echo\"\nkind = \"echo\"\n\
                 [[tenants.numbers]]\nnumber = \"{number}\"\napp = \"echo\"\n\n"
            )
        })
        .collect()
}

fn expect(server: &Server, number: &str, status: u16) -> SippResult {
    let res = Sipp::new(server, "uac_expect_status.xml")
        .service(number)
        .set("expected_status", &status.to_string())
        .run(SIPP_TIMEOUT);
    res.assert_success(&format!("{number} answered {status}"));
    res
}

#[test]
fn cap_rate_and_release_per_tenant() {
    let server = Server::start(&format!("{PLAN_SMALL}\n{}", two_tenants("small")));
    // A's only slot is held by a call that sends no RTP: the 2 s inactivity timeout ends it with BYE.
    let holder = Sipp::new(&server, "uac_wait_for_bye.xml").service("15550001").spawn(SIPP_TIMEOUT);
    assert!(wait_until(Duration::from_secs(5), || server.log().contains("incoming call")));
    let busy = expect(&server, "15550001", 486);
    assert!(busy.messages.contains("Retry-After: 5"), "{}", busy.messages);
    // B is not affected by A's cap.
    Sipp::builtin("uac", Some(server.sip_addr())).service("15550002").run(SIPP_TIMEOUT).assert_success("tenant B");
    holder.wait().assert_success("A's holder hung up by the inactivity timeout");
    // A has used 1 of its burst of 3 (the 486 spent no token): two more get in, the fourth is over the rate.
    for _ in 0..2 {
        Sipp::builtin("uac", Some(server.sip_addr())).service("15550001").run(SIPP_TIMEOUT).assert_success("A again");
    }
    let limited = expect(&server, "15550001", 503);
    // 0.2 calls/s: the next token is up to 5 s away.
    let retry = limited
        .messages
        .lines()
        .find_map(|l| l.trim().strip_prefix("Retry-After:").map(|v| v.trim().parse::<u32>().unwrap()))
        .expect("Retry-After on the 503");
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    // Refusals were counted per tenant and reason in the log.
    let log = server.log();
    assert!(log.contains("\"reason\":\"concurrency\"") && log.contains("\"reason\":\"rate\""), "{log}");
    assert!(log.contains("\"tenant\":\"tenant-a\""));
}

#[test]
fn an_rtp_flood_is_policed_at_the_calls_socket() {
    // A 2 s inactivity timeout ends the call soon after the flood, so that it logs its media counts.
    let server =
        Server::start(&format!("[rtp]\ninactivity_timeout_secs = 2\n\n{}", acme_config("ws://127.0.0.1:9/unused")));
    let holder = Sipp::new(&server, "uac_wait_for_bye.xml").service("15551230002").spawn(SIPP_TIMEOUT);
    assert!(wait_until(Duration::from_secs(5), || server.log().contains("incoming call")));
    std::thread::sleep(Duration::from_millis(300));
    // The first call gets the first even port of the server's RTP range.
    let (lo, _) = server.rtp_range();
    let port = lo + lo % 2;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    // 1000 packets of 20 ms in about 200 ms: 100x real time. We are the first sender, so the call latches onto us.
    let flood_start = std::time::Instant::now();
    for i in 0..1000u16 {
        let mut pkt = vec![0x80, 0x00];
        pkt.extend_from_slice(&i.to_be_bytes());
        pkt.extend_from_slice(&(u32::from(i) * 160).to_be_bytes());
        pkt.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        pkt.extend_from_slice(&[0x55; 160]);
        sock.send_to(&pkt, ("127.0.0.1", port)).unwrap();
        if i % 5 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let flood_took = flood_start.elapsed();
    // The echo plays back what got in, at 20 ms a frame. Count what comes back over the next 3 s.
    let start = std::time::Instant::now();
    let mut buf = [0u8; 2048];
    let mut echoed = 0;
    while start.elapsed() < Duration::from_secs(3) {
        if sock.recv_from(&mut buf).is_ok() {
            echoed += 1;
        }
    }
    // What the policer may let in: its burst (240 ms, 12 frames) plus the negotiated rate over the time the flood
    // took (about 200 ms, 10 frames; longer on a loaded machine), and a few frames of slack. Not 150 (3 s of the
    // flood), let alone 1000.
    let allowed = 12 + (flood_took.as_millis() / 20) as usize + 8;
    assert!((5..=allowed.min(140)).contains(&echoed), "{echoed} frames echoed after a flood of 1000 in {flood_took:?}");
    drop(holder.kill());
    assert!(wait_until(Duration::from_secs(8), || server.log().contains("\"policed\":")), "{}", server.log());
    let log = server.log();
    let policed: u64 = log
        .split("\"policed\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(policed >= 900, "policed {policed}");
}

const HOT_PLAN_ROOMY: &str = r#"
[rtp]
inactivity_timeout_secs = 5

[media]
workers = 1

[limits]
# Low enough that one flooded call makes a debug build's single worker hot.
worker_busy_pct = 10

[plans.roomy]
weight = 1
max_concurrent_calls = 10
calls_per_second = 100
burst = 100
monthly_minutes = 1000
"#;

#[test]
fn hot_media_workers_refuse_the_tenant_using_them_and_admit_the_other() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let server = Server::start(&format!("{HOT_PLAN_ROOMY}\n{}", two_tenants("roomy")));
    // A's first call holds the first even port of the RTP range; a flood into it keeps the one worker busy.
    let holder = Sipp::new(&server, "uac_wait_for_bye.xml").service("15550001").spawn(SIPP_TIMEOUT);
    assert!(wait_until(Duration::from_secs(5), || server.log().contains("incoming call")));
    std::thread::sleep(Duration::from_millis(300));
    let (lo, _) = server.rtp_range();
    let port = lo + lo % 2;
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut pkt = [0x55u8; 172];
            pkt[..2].copy_from_slice(&[0x80, 0x00]);
            pkt[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            let mut i = 0u16;
            // Bounded: the test stops it, and it stops by itself after 20 s in any case.
            let until = std::time::Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                i = i.wrapping_add(1);
                pkt[2..4].copy_from_slice(&i.to_be_bytes());
                pkt[4..8].copy_from_slice(&(u32::from(i) * 160).to_be_bytes());
                let _ = sock.send_to(&pkt, ("127.0.0.1", port));
            }
        })
    };
    let hot = wait_until(Duration::from_secs(8), || server.log().contains("media workers hot"));
    // Whatever happens next, the flood stops when this test does.
    let stop_flood = || {
        stop.store(true, Ordering::Relaxed);
    };
    if !hot {
        stop_flood();
        panic!("the flood never made the worker hot: {}", server.log());
    }
    // An SRE sees it: the gauge says hot, and how busy.
    let (_, text) = prom::scrape(server.http_addr(), &server.admin_token());
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or_else(|| panic!("{name} in the scrape:\n{text}"))
    };
    assert_eq!(gauge("fairvox_media_workers_hot "), 1.0);
    let busy = gauge("fairvox_media_workers_busy_ratio ");
    assert!((0.05..=1.0).contains(&busy), "busy ratio {busy}");
    // A uses all of the busy time: its new call is refused with 503 and told when to retry.
    let refused = expect(&server, "15550001", 503);
    // B has no part of the busy time: it still gets in while A floods.
    let b = Sipp::builtin("uac", Some(server.sip_addr())).service("15550002").run(SIPP_TIMEOUT);
    stop_flood();
    flood.join().unwrap();
    assert!(refused.messages.contains("Retry-After: 5"), "{}", refused.messages);
    b.assert_success("tenant B while tenant A keeps the worker hot");
    let log = server.log();
    assert!(log.contains("\"reason\":\"overload\"") && log.contains("\"tenant\":\"tenant-a\""), "{log}");
    // Once the worker cools down, A connects again: the capacity check lets go 5 s (the Retry-After it sent) after
    // the last sample that found A over its share, and the lateness check, if the flood made A's turns late too,
    // after two on-time seconds.
    std::thread::sleep(Duration::from_millis(6000));
    Sipp::builtin("uac", Some(server.sip_addr())).service("15550001").run(SIPP_TIMEOUT).assert_success("A again");
    drop(holder.kill());
}
