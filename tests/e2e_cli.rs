//! The operator CLI (`fairvox tenant|app|number|key|usage|calls|offboard ...`), the real binary against a real server
//! over HTTP: a tenant onboarded end to end with it (and a call placed to the number it claimed), listings as tables
//! and as the API's JSON byte for byte, the API's errors shown with their code and message and distinct exit codes
//! (usage 2, API refusal 3, unreachable 5), an app's media format set and changed, a revoked key failing, usage as
//! CSV, the URL and token found from the server's config and data directory, and a tenant offboarded with it while a
//! call is up (start, status in the drain and when finished, the export bundle, final invoice and certificate
//! downloaded, what is left afterwards).

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

    // The provider stream's audio format: chosen at create, shown in the object and the table, changed by update;
    // a name that is not one is refused before anything is sent.
    assert_eq!(app["media_format"], "mulaw_8k", "the default");
    let wide = cli.ok(&[
        "app",
        "create",
        "--tenant",
        "acme",
        "--name",
        "wide",
        "--stream-url",
        "ws://127.0.0.1:9/s",
        "--media-format",
        "l16_16k",
        "--json",
    ]);
    let wide_id = wide.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(wide.json()["media_format"], "l16_16k");
    let shown = cli.ok(&["app", "get", &wide_id, "--tenant", "acme"]);
    assert!(shown.stdout.lines().any(|l| l.split_whitespace().eq(["media_format", "l16_16k"])), "{}", shown.stdout);
    let apps = cli.ok(&["app", "list", "--tenant", "acme"]);
    let header = apps.stdout.lines().next().unwrap();
    let row = apps.stdout.lines().find(|l| l.contains(&wide_id)).expect("the app's row");
    assert_eq!(row.find("l16_16k"), header.find("FORMAT"), "a FORMAT column:\n{}", apps.stdout);
    let updated = cli.ok(&["app", "update", &wide_id, "--media-format", "mulaw_8k", "--tenant", "acme", "--json"]);
    assert_eq!(updated.json()["media_format"], "mulaw_8k");
    let bad = cli.op(&["app", "update", &wide_id, "--media-format", "l16", "--tenant", "acme"]);
    assert_eq!(bad.code, 2, "{}{}", bad.stdout, bad.stderr);
    assert!(bad.stderr.contains("[possible values: mulaw_8k, l16_16k]"), "{}", bad.stderr);
    let direct: Value =
        serde_json::from_str(&api_get(&server, &format!("/v1/tenants/acme/apps/{wide_id}"), &cli.token).body).unwrap();
    assert_eq!(direct["media_format"], "mulaw_8k");

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

/// The SHA-256 of a file, in hex.
fn sha256_of(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_operator_offboards_a_tenant_end_to_end_with_the_cli() {
    // A grace long enough for the CLI to see the job in the drain with a call up, short enough for a test.
    let server = Server::start("[offboard]\ngrace_secs = 4\n");
    let cli = Cli::new(&server);
    let here = |name: &str| cli.scratch.path().join(name);

    // What it does, as its help says.
    let help = cli.op(&["offboard", "--help"]);
    assert_eq!(help.code, 0, "{}", help.stderr);
    for (command, says) in [
        ("start", "Start offboarding a tenant; starting it again shows the same job"),
        ("status", "steps"),
        ("export", "export bundle"),
        ("invoice", "final invoice"),
        ("certificate", "deletion certificate"),
    ] {
        assert!(
            help.stdout.lines().any(|l| l.trim_start().starts_with(command) && l.contains(says)),
            "`{command}` in the help: {}",
            help.stdout
        );
    }

    // A tenant with an echo app on a number, a key, and a finished call of known length.
    cli.ok(&["tenant", "create", "acme", "--name", "Acme Dental"]);
    let app = cli.ok(&["app", "create", "--tenant", "acme", "--name", "front-desk", "--echo", "--json"]).json();
    let app_id = app["id"].as_str().unwrap().to_owned();
    cli.ok(&["number", "claim", ACME_ECHO_NUMBER, "--app", &app_id, "--tenant", "acme"]);
    let key = cli.ok(&["key", "create", "--tenant", "acme", "--name", "ci", "--json"]).json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_secs(1)); // the number routes within a second
    Sipp::builtin("uac", Some(server.sip_addr()))
        .service(&ACME_ECHO_NUMBER[1..])
        .pause_ms(2500)
        .run(SIPP_TIMEOUT)
        .assert_success("a 2 s call");
    assert!(wait_until(Duration::from_secs(10), || {
        cli.with_key(&key, &["calls", "--json"]).json()["items"].as_array().is_some_and(|a| a.len() == 1)
    }));
    // And a call still up when the offboarding starts: the drain gives it the grace, then hangs it up.
    let up = Sipp::new(&server, "uac_wait_for_bye.xml").service(&ACME_ECHO_NUMBER[1..]).spawn(SIPP_TIMEOUT);
    assert!(wait_until(Duration::from_secs(10), || server.log().matches("incoming call").count() == 2));
    std::thread::sleep(Duration::from_millis(500)); // answered and acknowledged

    // start: the job, shown as its state and its steps.
    let started = cli.ok(&["offboard", "start", "acme"]);
    let first = |out: &str, field: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(field).filter(|rest| rest.starts_with(' ')).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {field} line in:\n{out}"))
    };
    assert_eq!(first(&started.stdout, "tenant"), "acme");
    assert_eq!(first(&started.stdout, "status"), "running");
    assert_eq!(first(&started.stdout, "grace_secs"), "4 s");
    let header = started.stdout.lines().find(|l| l.starts_with("STEP ")).expect("the steps table");
    assert!(header.split_whitespace().eq(["STEP", "STATE", "STARTED", "FINISHED", "DETAIL"]), "{header}");
    let steps = ["suspend", "drain_calls", "export", "final_invoice", "release_numbers", "revoke_keys", "delete_rows"];
    for step in steps.iter().chain(["certificate"].iter()) {
        assert!(started.stdout.lines().any(|l| l.starts_with(&format!("{step} "))), "{step}: {}", started.stdout);
    }
    assert!(started.stderr.contains("fairvox offboard status acme"), "{}", started.stderr);
    // Starting it again is the same job; --json is the API's body (the job as POST answers it).
    let again = cli.ok(&["offboard", "start", "acme", "--json"]).json();
    let direct: Value = serde_json::from_str(&api_get(&server, "/v1/tenants/acme/offboard", &cli.token).body).unwrap();
    assert_eq!(again["created_at_ms"], direct["created_at_ms"]);
    assert_eq!(again["tenant"], "acme");

    // In the drain: status shows it, with the step running; nothing to download yet (exit 1, and why).
    let mut in_drain = Value::Null;
    assert!(
        wait_until(Duration::from_secs(5), || {
            in_drain = cli.ok(&["offboard", "status", "acme", "--json"]).json();
            in_drain["step"] == "drain_calls" && in_drain["drain_deadline_ms"].is_i64()
        }),
        "{in_drain:#}"
    );
    let status = cli.ok(&["offboard", "status", "acme"]);
    assert_eq!(first(&status.stdout, "step"), "drain_calls");
    assert!(status.stdout.lines().any(|l| l.starts_with("suspend ") && l.contains(" done ")), "{}", status.stdout);
    assert!(
        status.stdout.lines().any(|l| l.starts_with("drain_calls ") && l.contains(" running ")),
        "{}",
        status.stdout
    );
    assert!(!status.stdout.contains("downloads:"), "{}", status.stdout);
    let early = cli.op(&["offboard", "export", "acme"]);
    assert_eq!(early.code, 1, "{}{}", early.stdout, early.stderr);
    assert!(early.stderr.contains("no export bundle yet (job status: running, step: drain_calls)"), "{}", early.stderr);
    assert!(!here("acme-export.tar.gz").exists());
    // The tenant's key already fails: exit 3, the API's 401.
    let refused = cli.with_key(&key, &["calls"]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);

    // status until done; then --json is the API's body byte for byte, and the table says what each step did.
    let mut job = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(200)); // a CLI process per poll: not too many
            job = cli.ok(&["offboard", "status", "acme", "--json"]).json();
            job["status"] == "finished"
        }),
        "{job:#}"
    );
    up.wait().assert_success("the call up got its BYE at the end of the grace");
    let as_json = cli.ok(&["offboard", "status", "acme", "--json"]);
    let direct = api_get(&server, "/v1/tenants/acme/offboard", &cli.token);
    assert_eq!(as_json.stdout.trim_end_matches('\n'), direct.body);
    let done = cli.ok(&["offboard", "status", "acme"]);
    assert_eq!(first(&done.stdout, "status"), "finished");
    assert_eq!(first(&done.stdout, "step"), "done");
    for step in steps.iter().chain(["certificate"].iter()) {
        assert!(
            done.stdout.lines().any(|l| l.starts_with(&format!("{step} ")) && l.contains(" done ")),
            "{step} done: {}",
            done.stdout
        );
    }
    let row = |step: &str| done.stdout.lines().find(|l| l.starts_with(&format!("{step} "))).unwrap().to_owned();
    assert!(row("suspend").ends_with("status_before=active"), "{}", row("suspend"));
    assert!(row("drain_calls").contains("calls_ended_at_deadline=yes"), "{}", row("drain_calls"));
    assert!(row("release_numbers").ends_with(&format!("released={ACME_ECHO_NUMBER}")), "{}", row("release_numbers"));
    assert!(row("revoke_keys").contains(&format!("revoked={}", &key[..12])), "{}", row("revoke_keys"));
    assert!(row("delete_rows").contains("rows_deleted={api_keys=1 apps=1 "), "{}", row("delete_rows"));
    let sha = job["export"]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(
        first(&done.stdout, "export"),
        format!("acme-export.tar.gz ({} bytes, SHA-256 {sha})", job["export"]["bytes"])
    );
    for (what, command) in [("export", "export"), ("final_invoice", "invoice"), ("certificate", "certificate")] {
        let link = job["links"][what].as_str().unwrap();
        assert!(
            done.stdout.lines().any(|l| l.starts_with(what)
                && l.contains(link)
                && l.ends_with(&format!("fairvox offboard {command} acme"))),
            "{what}: {}",
            done.stdout
        );
    }

    // export: the bundle, named as the server names it, its SHA-256 the one the job and the certificate give.
    let export = cli.ok(&["offboard", "export", "acme"]);
    let bundle = here("acme-export.tar.gz");
    let bytes = std::fs::metadata(&bundle).expect("the bundle is written").len();
    assert_eq!(sha256_of(&bundle), sha);
    assert_eq!(export.stdout, format!("wrote acme-export.tar.gz ({bytes} bytes, SHA-256 {sha})\n"));
    // Not replaced without --force (exit 1); with --force and --json, the file's facts as JSON.
    let twice = cli.op(&["offboard", "export", "acme"]);
    assert_eq!(twice.code, 1, "{}", twice.stderr);
    assert!(twice.stderr.contains("exists: give --force"), "{}", twice.stderr);
    let forced = cli.ok(&["offboard", "export", "acme", "--force", "--json"]).json();
    assert_eq!(forced, serde_json::json!({"file": "acme-export.tar.gz", "bytes": bytes, "sha256": sha}));

    // certificate: the API's certificate as it came, carrying the bundle's SHA-256 and what was deleted.
    let cert_out = here("cert.json");
    let cert_run = cli.ok(&["offboard", "certificate", "acme", "--output", cert_out.to_str().unwrap()]);
    assert!(cert_run.stdout.starts_with(&format!("wrote {}", cert_out.display())), "{}", cert_run.stdout);
    let cert_text = std::fs::read_to_string(&cert_out).unwrap();
    assert_eq!(cert_text, api_get(&server, "/v1/tenants/acme/offboard/certificate", &cli.token).body);
    let cert: Value = serde_json::from_str(&cert_text).unwrap();
    assert_eq!(cert["export"]["sha256"], sha.as_str(), "the certificate carries the downloaded bundle's SHA-256");
    assert_eq!(cert["tenant"], "acme");
    assert_eq!(cert["rows_deleted"]["tenants"], 1);
    assert_eq!(cert["keys_revoked"], serde_json::json!([&key[..12]]));

    // invoice: the final invoice, both calls billed (the finished one and the one the drain ended).
    let invoice_run = cli.ok(&["offboard", "invoice", "acme"]);
    let invoice_file = here("acme-final-invoice.json");
    assert!(invoice_run.stdout.starts_with("wrote acme-final-invoice.json ("), "{}", invoice_run.stdout);
    let invoice_text = std::fs::read_to_string(&invoice_file).unwrap();
    assert_eq!(invoice_text, api_get(&server, "/v1/tenants/acme/offboard/invoice", &cli.token).body);
    let invoice: Value = serde_json::from_str(&invoice_text).unwrap();
    assert_eq!((invoice["status"].as_str(), invoice["calls"].as_i64()), (Some("final"), Some(2)), "{invoice:#}");
    assert_eq!(invoice["billable_secs"], cert["final_invoice"]["billable_secs"]);
    assert!(invoice["billable_secs"].as_i64().unwrap() >= 2 + 4, "the 2 s call and the grace: {invoice:#}");

    // After: the tenant is gone for the API (404, not listed), its key fails, its number is free; its job stays.
    let gone = cli.op(&["tenant", "get", "acme"]);
    assert_eq!(gone.code, 3, "{}", gone.stderr);
    assert!(gone.stderr.contains("404") && gone.stderr.contains("not_found"), "{}", gone.stderr);
    assert!(!cli.ok(&["tenant", "list"]).stdout.lines().any(|l| l.starts_with("acme ")));
    let dead = cli.with_key(&key, &["app", "list"]);
    assert_eq!(dead.code, 3, "{}", dead.stderr);
    assert!(dead.stderr.contains("401") && dead.stderr.contains("unauthorized"), "{}", dead.stderr);
    cli.ok(&["tenant", "create", "bravo", "--name", "Bravo"]);
    let b_app = cli.ok(&["app", "create", "--tenant", "bravo", "--name", "e", "--echo", "--json"]).json();
    cli.ok(&["number", "claim", ACME_ECHO_NUMBER, "--app", b_app["id"].as_str().unwrap(), "--tenant", "bravo"]);
    assert_eq!(first(&cli.ok(&["offboard", "status", "acme"]).stdout, "status"), "finished");
    // A tenant key never sees an offboarding, its own or another's: the API's 404.
    let b_key = cli.ok(&["key", "create", "--tenant", "bravo", "--name", "ci", "--json"]).json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for tenant in ["acme", "bravo"] {
        let hidden = cli.with_key(&b_key, &["offboard", "status", tenant]);
        assert_eq!(hidden.code, 3, "{}", hidden.stderr);
        assert!(hidden.stderr.contains("404"), "{}", hidden.stderr);
    }
}
