//! The operator CLI (`fairvox tenant|app|number|key|usage|calls|offboard ...`), the real binary against a real server
//! over HTTP: a tenant onboarded end to end with it (and a call placed to the number it claimed), listings as tables
//! and as the API's JSON byte for byte, the API's errors shown with their code and message and distinct exit codes
//! (usage 2, API refusal 3, unreachable 5), a revoked key failing, usage as CSV, and the URL and token found from the
//! server's config and data directory.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const SIPP_TIMEOUT: Duration = Duration::from_secs(30);

/// What one run of the CLI printed, and its exit code.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `fairvox ARGS` in a scratch directory with no FAIRVOX_* variables but `env`; asserts that nothing it
/// printed contains `secret` (the operator token must never be shown).
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)], secret: &str) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairvox"));
    cmd.args(args).current_dir(dir);
    for var in ["FAIRVOX_URL", "FAIRVOX_ADMIN_TOKEN", "FAIRVOX_API_KEY", "FAIRVOX_TENANT"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the fairvox CLI");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(secret) && !run.stderr.contains(secret),
        "fairvox {args:?} printed the operator token:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

/// The CLI against `server`, as its operator: `--url` and `--data-dir` (the token the server generated there).
struct Cli<'a> {
    server: &'a Server,
    scratch: tempfile::TempDir,
    url: String,
    token: String,
}

impl<'a> Cli<'a> {
    fn new(server: &'a Server) -> Cli<'a> {
        let scratch = tempfile::tempdir().unwrap();
        Cli { server, scratch, url: format!("http://{}", server.http_addr()), token: server.admin_token() }
    }

    /// As the operator: the token the server generated, found in its data dir. The connection flags come after the
    /// subcommand's words, the form the guide shows (`fairvox tenant list --url ...`).
    fn op(&self, args: &[&str]) -> Run {
        let data_dir = self.server.data_dir().display().to_string();
        let mut all = args.to_vec();
        all.extend(["--url", &self.url, "--data-dir", &data_dir]);
        run_in(self.scratch.path(), &all, &[], &self.token)
    }

    /// With a tenant's key, from the environment.
    fn with_key(&self, key: &str, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--url", self.url.as_str()]);
        run_in(self.scratch.path(), &all, &[("FAIRVOX_API_KEY", key)], &self.token)
    }

    /// A command that must succeed.
    fn ok(&self, args: &[&str]) -> Run {
        let r = self.op(args);
        assert_eq!(r.code, 0, "fairvox {args:?}: {}{}", r.stdout, r.stderr);
        r
    }
}

/// The body of `GET path` on the API, read directly (to compare with what the CLI printed).
fn api_get(server: &Server, path: &str, token: &str) -> HttpReply {
    http_call(server.http_addr(), "GET", path, Some(token), None, Duration::from_secs(5)).expect("HTTP answer")
}

#[test]
fn an_operator_onboards_a_tenant_end_to_end_with_the_cli() {
    let server = Server::start("");
    let cli = Cli::new(&server);

    // Tenant, app, number, key.
    let created = cli.ok(&["tenant", "create", "acme", "--name", "Acme Dental", "--plan", "pro"]);
    assert!(created.stdout.lines().any(|l| l.split_whitespace().eq(["id", "acme"])), "{}", created.stdout);
    assert!(created.stdout.contains("Acme Dental"), "{}", created.stdout);
    let app = cli.ok(&["app", "create", "--tenant", "acme", "--name", "front-desk", "--echo", "--json"]).json();
    assert_eq!(app["kind"], "echo");
    let app_id = app["id"].as_str().unwrap().to_owned();
    // --json is the API's body byte for byte.
    let shown = cli.ok(&["app", "get", &app_id, "--tenant", "acme", "--json"]);
    let direct = api_get(&server, &format!("/v1/tenants/acme/apps/{app_id}"), &cli.token);
    assert_eq!(shown.stdout.trim_end_matches('\n'), direct.body);
    cli.ok(&["number", "claim", ACME_ECHO_NUMBER, "--app", &app_id, "--tenant", "acme"]);
    let key_run = cli.ok(&["key", "create", "--tenant", "acme", "--name", "ci"]);
    let key = key_run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("key").map(str::trim))
        .filter(|k| k.starts_with("fvk_"))
        .unwrap_or_else(|| panic!("the key is printed: {}", key_run.stdout))
        .to_owned();
    assert!(key_run.stderr.contains("shown this once"), "{}", key_run.stderr);

    // The tenant's key acts for its own tenant without --tenant: tables and JSON.
    let apps = cli.with_key(&key, &["app", "list"]);
    assert_eq!(apps.code, 0, "{}", apps.stderr);
    let header = apps.stdout.lines().next().unwrap();
    assert!(header.starts_with("ID") && header.contains("NAME") && header.contains("KIND"), "{}", apps.stdout);
    let row = apps.stdout.lines().find(|l| l.contains(&app_id)).expect("the app's row");
    assert_eq!(row.find("front-desk"), header.find("NAME"), "columns are aligned:\n{}", apps.stdout);
    let numbers = cli.with_key(&key, &["number", "list", "--json"]).json();
    assert_eq!(numbers["items"][0]["number"], ACME_ECHO_NUMBER);
    assert_eq!(numbers["items"][0]["app_id"], app_id.as_str());

    // The operator's listing, both ways.
    let tenants = cli.ok(&["tenant", "list"]);
    let header = tenants.stdout.lines().next().unwrap();
    let row = tenants.stdout.lines().find(|l| l.starts_with("acme ")).expect("acme's row");
    assert_eq!(row.find("Acme Dental"), header.find("NAME"), "{}", tenants.stdout);
    assert!(row.contains(" UTC"), "times are readable: {row}");
    let listed = cli.ok(&["tenant", "list", "--json"]).json();
    assert!(listed["items"].as_array().unwrap().iter().any(|t| t["id"] == "acme" && t["status"] == "active"));

    // Another tenant cannot claim acme's number: the API's 409, its code and message, and exit code 3.
    cli.ok(&["tenant", "create", "bravo", "--name", "Bravo"]);
    let b_app = cli.ok(&["app", "create", "--tenant", "bravo", "--name", "e", "--echo", "--json"]).json();
    let b_app = b_app["id"].as_str().unwrap();
    let taken = cli.op(&["number", "claim", ACME_ECHO_NUMBER, "--app", b_app, "--tenant", "bravo"]);
    assert_eq!(taken.code, 3, "{}{}", taken.stdout, taken.stderr);
    assert!(taken.stdout.is_empty(), "{}", taken.stdout);
    let body = format!(r#"{{"number":"{ACME_ECHO_NUMBER}","app_id":"{b_app}"}}"#);
    let direct = http_call(
        server.http_addr(),
        "POST",
        "/v1/tenants/bravo/numbers",
        Some(&cli.token),
        Some(("application/json", body.as_bytes())),
        Duration::from_secs(5),
    )
    .unwrap();
    let message: Value = serde_json::from_str(&direct.body).unwrap();
    let message = message["error"]["message"].as_str().unwrap();
    assert!(taken.stderr.contains("409") && taken.stderr.contains("number_taken"), "{}", taken.stderr);
    assert!(taken.stderr.contains(message), "the API's message {message:?}: {}", taken.stderr);

    // A call to the number: the onboarding works end to end, and shows in calls and usage.
    std::thread::sleep(Duration::from_secs(1)); // the routing snapshot follows the store within a second
    Sipp::builtin("uac", Some(server.sip_addr()))
        .service(&ACME_ECHO_NUMBER[1..])
        .pause_ms(1500)
        .run(SIPP_TIMEOUT)
        .assert_success("a call to the number claimed with the CLI");
    let mut calls = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            calls = cli.with_key(&key, &["calls", "--json"]).json();
            calls["items"].as_array().is_some_and(|a| a.len() == 1)
        }),
        "{calls}"
    );
    let sid = calls["items"][0]["call_sid"].as_str().unwrap().to_owned();
    let table = cli.with_key(&key, &["calls"]);
    assert!(
        table.stdout.lines().nth(1).is_some_and(|l| l.starts_with(&sid) && l.contains("caller_bye")),
        "{}",
        table.stdout
    );
    let one = cli.with_key(&key, &["calls", &sid, "--json"]).json();
    assert_eq!(one, calls["items"][0]);

    // Usage as CSV: the API's CSV as it came, with the call's row.
    let csv = cli.with_key(&key, &["usage", "--csv"]);
    assert_eq!(csv.code, 0, "{}", csv.stderr);
    let direct = api_get(&server, "/v1/usage?format=csv", &key);
    assert_eq!(csv.stdout, direct.body);
    assert!(csv.stdout.starts_with("day,month,app,number,calls,billable_secs\r\n"), "{}", csv.stdout);
    let billable = calls["items"][0]["billable_secs"].as_i64().unwrap();
    assert!(csv.stdout.contains(&format!(",front-desk,{ACME_ECHO_NUMBER},1,{billable}\r\n")), "{}", csv.stdout);
    let human = cli.with_key(&key, &["usage"]);
    assert!(human.stdout.contains(&format!("1 calls, {billable} billable seconds")), "{}", human.stdout);

    // Revoked by the operator, the key fails on its next use: 401 from the API, exit code 3.
    let prefix = &key[..12];
    cli.ok(&["key", "revoke", prefix, "--tenant", "acme"]);
    let refused = cli.with_key(&key, &["app", "list"]);
    assert_eq!(refused.code, 3, "{}{}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("401") && refused.stderr.contains("unauthorized"), "{}", refused.stderr);
    let keys = cli.ok(&["key", "list", "--tenant", "acme"]);
    assert!(keys.stdout.lines().any(|l| l.starts_with(prefix) && l.contains("revoked")), "{}", keys.stdout);
}

#[test]
fn errors_are_clear_and_exit_codes_tell_them_apart() {
    let server = Server::start("");
    let cli = Cli::new(&server);
    cli.ok(&["tenant", "create", "acme", "--name", "Acme"]);

    // Unreachable server: exit 5, and says so.
    let closed = format!("http://127.0.0.1:{}", closed_port());
    let down =
        run_in(cli.scratch.path(), &["tenant", "list", "--url", &closed, "--token", &cli.token], &[], &cli.token);
    assert_eq!(down.code, 5, "{}", down.stderr);
    assert!(
        down.stderr.contains("cannot reach the fairvox API") && down.stderr.contains("connection refused"),
        "{}",
        down.stderr
    );

    // Usage errors: exit 2. The operator must name the tenant; no credentials at all; a flag clap does not know.
    let no_tenant = cli.op(&["app", "list"]);
    assert_eq!(no_tenant.code, 2, "{}", no_tenant.stderr);
    assert!(no_tenant.stderr.contains("--tenant"), "{}", no_tenant.stderr);
    let url = cli.url.clone();
    let no_token = run_in(cli.scratch.path(), &["tenant", "list", "--url", &url], &[], &cli.token);
    assert_eq!(no_token.code, 2, "{}", no_token.stderr);
    assert!(no_token.stderr.contains("no credentials"), "{}", no_token.stderr);
    assert_eq!(cli.op(&["tenant", "list", "--no-such-flag"]).code, 2);

    // API refusals: exit 3 with the API's status, code and message.
    let missing = cli.op(&["tenant", "get", "nobody"]);
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    assert!(missing.stderr.contains("404") && missing.stderr.contains("not_found"), "{}", missing.stderr);
    let bad = cli.op(&["app", "create", "--tenant", "acme", "--name", "x", "--stream-url", "https://not-a-websocket/"]);
    assert_eq!(bad.code, 3, "{}", bad.stderr);
    assert!(bad.stderr.contains("400") && bad.stderr.contains("(field: stream_url)"), "{}", bad.stderr);

    // `offboard status` of a tenant with no offboarding job: the API's 404, stated as the API states it.
    let status = cli.op(&["offboard", "status", "acme"]);
    assert_eq!(status.code, 3, "{}{}", status.stdout, status.stderr);
    let direct = api_get(&server, "/v1/tenants/acme/offboard", &cli.token);
    assert_eq!(direct.status, 404);
    let error: Value = serde_json::from_str(&direct.body).unwrap();
    let (code, message) = (error["error"]["code"].as_str().unwrap(), error["error"]["message"].as_str().unwrap());
    assert!(
        status.stderr.contains("404 Not Found") && status.stderr.contains(&format!("{code}: {message}")),
        "{}",
        status.stderr
    );
    assert!(status.stdout.is_empty());
}

#[test]
fn url_and_token_come_from_the_servers_config_and_data_dir() {
    let server = Server::start("");
    let token = server.admin_token();
    // A config naming the server's HTTP address and data dir, as the operator's /etc/fairvox.toml would.
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("fairvox.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\n[http]\nlisten = \"{}\"\n", server.data_dir().display(), server.http_addr()),
    )
    .unwrap();
    let config = config.display().to_string();
    let listed = run_in(scratch.path(), &["tenant", "list", "--config", &config, "--json"], &[], &token);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.stdout.trim_end(), api_get(&server, "/v1/tenants", &token).body);
    // FAIRVOX_URL and FAIRVOX_ADMIN_TOKEN from the environment do the same.
    let url = format!("http://{}", server.http_addr());
    let env = run_in(
        scratch.path(),
        &["tenant", "create", "acme", "--name", "Acme", "--json"],
        &[("FAIRVOX_URL", &url), ("FAIRVOX_ADMIN_TOKEN", &token)],
        &token,
    );
    assert_eq!(env.code, 0, "{}", env.stderr);
    assert_eq!(env.json()["id"], "acme");
    // A token that is not the server's: the API's 401.
    let wrong = run_in(
        scratch.path(),
        &["tenant", "list"],
        &[("FAIRVOX_URL", &url), ("FAIRVOX_ADMIN_TOKEN", "not-the-operator-token-0123456789abcdef")],
        &token,
    );
    assert_eq!(wrong.code, 3, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("401") && !wrong.stderr.contains("not-the-operator-token"), "{}", wrong.stderr);
}
