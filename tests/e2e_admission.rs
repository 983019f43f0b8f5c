//! End to end with sipp: per-tenant admission. A tenant at its concurrency cap gets `486 Busy Here` while another
//! tenant still connects; a burst over a tenant's call rate gets `503` with `Retry-After`; once its calls end, the
//! tenant connects again.

mod common;

use std::time::Duration;

use common::*;

const SIPP_TIMEOUT: Duration = Duration::from_secs(30);

const CONFIG: &str = r#"
[rtp]
inactivity_timeout_secs = 2

[plans.small]
weight = 1
max_concurrent_calls = 1
calls_per_second = 0.2
burst = 3
monthly_minutes = 1000

[[tenants]]
id = "tenant-a"
plan = "small"
[[tenants.apps]]
name = "echo"
kind = "echo"
[[tenants.numbers]]
number = "+15550001"
app = "echo"

[[tenants]]
id = "tenant-b"
plan = "small"
[[tenants.apps]]
name = "echo"
kind = "echo"
[[tenants.numbers]]
number = "+15550002"
app = "echo"
"#;

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
    let server = Server::start(CONFIG);
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
