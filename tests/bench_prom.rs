//! Unit tests of the isolation bench's `/metrics` scraper and Prometheus text parser (`benches/isolation/prom.rs`):
//! a `harness = false` bench runs no tests of its own, so they are compiled and run here.

#[allow(dead_code)]
#[path = "../benches/isolation/prom.rs"]
mod prom;

use prom::{Sample, TenantFigures, http_response, parse};

const SAMPLE: &str = r#"# HELP fairvox_frames_total 20 ms frames forwarded.
# TYPE fairvox_frames_total counter
fairvox_frames_total{tenant="q",direction="inbound"} 15000
fairvox_frames_total{tenant="q",direction="outbound"} 12
fairvox_frames_total{tenant="n",direction="inbound"} 2.5e5
# TYPE fairvox_frames_dropped_total counter
fairvox_frames_dropped_total{tenant="n",reason="policed"} 300000
fairvox_frames_dropped_total{tenant="n",reason="slow_consumer"} 41234
fairvox_frames_dropped_total{tenant="n",reason="drained"} 7 1700000000000
fairvox_frames_dropped_total{tenant="we \"ird\"\\,x",reason="deadline"} 1
# TYPE fairvox_calls_rejected_total counter
fairvox_calls_rejected_total{tenant="n",reason="concurrency"} 50
# TYPE fairvox_sched_wait_seconds histogram
fairvox_sched_wait_seconds_bucket{tenant="q",le="0.0001"} 10
fairvox_sched_wait_seconds_bucket{tenant="q",le="0.001"} 99
fairvox_sched_wait_seconds_bucket{tenant="q",le="+Inf"} 100
fairvox_sched_wait_seconds_sum{tenant="q"} 0.02
fairvox_sched_wait_seconds_count{tenant="q"} 100
process_cpu_seconds_total 4.25
this line is broken
fairvox_frames_total{tenant="q" 3
"#;

#[test]
fn parses_samples_labels_escapes_and_skips_bad_lines() {
    let e = parse(SAMPLE);
    assert_eq!(e.bad_lines, vec![20, 21]);
    assert_eq!(e.samples.len(), 14);
    let weird = e.samples.iter().find(|s| s.label("reason") == Some("deadline")).expect("weird tenant");
    assert_eq!(weird.label("tenant"), Some("we \"ird\"\\,x"));
    let p = e.samples.iter().find(|s| s.name == "process_cpu_seconds_total").expect("unlabelled sample");
    assert!(p.labels.is_empty());
    assert_eq!(p.value, 4.25);
    let inf = e.samples.iter().find(|s| s.label("le") == Some("+Inf")).expect("+Inf bucket");
    assert_eq!(inf.value, 100.0);
}

#[test]
fn tenant_figures() {
    let e = parse(SAMPLE);
    let n = TenantFigures::from_samples(&e.samples, "n");
    assert_eq!(n.frames_inbound, 250_000.0);
    assert_eq!(n.drops["policed"], 300_000.0);
    assert_eq!(n.drops["slow_consumer"], 41_234.0);
    assert_eq!(n.drops["deadline"], 0.0, "a reason without a series is 0");
    assert_eq!(n.drops["queue_full"], 0.0);
    assert_eq!(n.drops["drained"], 7.0, "other reasons are kept");
    assert_eq!(n.dropped_total(), 341_241.0);
    assert_eq!(n.rejected["concurrency"], 50.0);
    assert_eq!(n.sched_wait, None);

    let q = TenantFigures::from_samples(&e.samples, "q");
    assert_eq!(q.frames_inbound, 15_000.0, "outbound frames are not inbound");
    assert_eq!(q.dropped_total(), 0.0);
    let w = q.sched_wait.clone().expect("q has a sched wait histogram");
    assert_eq!(w.count, 100.0);
    assert_eq!(w.mean_us(), Some(200.0));
    assert_eq!(w.quantile_le(0.5), Some("0.001"));
    assert_eq!(w.quantile_le(0.05), Some("0.0001"));
    assert_eq!(w.quantile_le(0.999), Some("+Inf"));

    let none = TenantFigures::from_samples(&e.samples, "absent");
    assert_eq!(none.frames_inbound, 0.0);
    assert_eq!(none.sched_wait, None);

    let before = TenantFigures::from_samples(&parse(&SAMPLE.replace("} 99\n", "} 49\n")).samples, "q");
    let d = q.minus(&before);
    assert_eq!(d.frames_inbound, 0.0);
    assert_eq!(d.sched_wait.expect("delta histogram").buckets[1], ("0.001".to_owned(), 50.0));
}

#[test]
fn rejects_malformed_sample_lines() {
    for bad in [
        "x{a=\"1\"",
        "x{a=1} 2",
        "x{a=\"1\" b=\"2\"} 3",
        "x 1 2 3",
        "x one",
        "x 1 12.5",
        "{a=\"1\"} 1",
        "9x 1",
        "x{a=\"unterminated} 1",
    ] {
        assert_eq!(parse(bad).samples.first().cloned(), None, "{bad:?}");
    }
    assert_eq!(
        parse("x{a=\"1\",} 2").samples.first().cloned(),
        Some(Sample { name: "x".into(), labels: vec![("a".into(), "1".into())], value: 2.0 })
    );
    assert_eq!(parse("x NaN").samples.first().map(|s| s.value.is_nan()), Some(true));
    assert_eq!(parse("x -Inf").samples.first().map(|s| s.value), Some(f64::NEG_INFINITY));
}

#[test]
fn http_responses() {
    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(http_response(ok), Ok((200, b"hello".to_vec())));
    let close_delimited = b"HTTP/1.0 200 OK\r\n\r\nall of it";
    assert_eq!(http_response(close_delimited), Ok((200, b"all of it".to_vec())));
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
    assert_eq!(http_response(chunked), Ok((200, b"hello world".to_vec())));
    let not_found = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
    assert_eq!(http_response(not_found), Ok((404, Vec::new())));
    assert!(http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    assert!(http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    assert!(http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc").is_err());
    assert!(http_response(b"SIP/2.0 200 OK\r\n\r\n").is_err());
    assert!(http_response(b"garbage").is_err());
}

/// Serves one canned HTTP response on a loopback port, reading the request first.
fn one_response(response: &'static [u8]) -> std::net::SocketAddr {
    one_response_seen(response).0
}

/// [`one_response`], and the request's head as it was received.
fn one_response_seen(response: &'static [u8]) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (seen_tx, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = seen_tx.send(String::from_utf8_lossy(&request).into_owned());
            let _ = s.write_all(response);
        }
    });
    (addr, seen)
}

#[test]
fn scrape_reads_text_and_reports_a_missing_endpoint() {
    let timeout = std::time::Duration::from_secs(5);
    let (ok, seen) = one_response_seen(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nx{tenant=\"q\"} 1\n");
    match prom::scrape(ok, Some("operator-token"), timeout) {
        Ok(prom::Scrape::Text(t)) => assert_eq!(parse(&t).samples.len(), 1),
        other => panic!("unexpected {other:?}"),
    }
    let request = seen.recv_timeout(timeout).expect("the request");
    assert!(request.contains("\r\nAuthorization: Bearer operator-token\r\n"), "{request}");
    let refused = one_response(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
    let got = prom::scrape(refused, Some("wrong"), timeout);
    assert!(got.as_ref().is_err_and(|e| e.contains("401")), "{got:?}");
    let absent = one_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let got = prom::scrape(absent, None, timeout);
    assert!(matches!(got, Ok(prom::Scrape::Absent)), "{got:?}");
    let broken = one_response(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n");
    assert!(prom::scrape(broken, None, timeout).is_err());
}
