//! Each client subcommand as API requests and their output. Paths are built from the user's words with every
//! segment percent-encoded, so an id cannot walk to another route.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::client::{CliError, Client, Reply, clean};
use super::render::{self, Column, col, secs, short, time};
use super::{
    AppAction, Command, Connection, KeyAction, NumberAction, OffboardAction, Page, TenantAction, TimePage, TrunkAction,
    UsageArgs, usage,
};
use crate::store::UtcDay;

/// How to print: the API's body as received (`--json`) or for people.
#[derive(Copy, Clone, Debug)]
pub struct Out {
    pub json: bool,
}

const TENANTS: &[Column] = &[
    col("ID", "id"),
    col("NAME", "name"),
    col("PLAN", "plan"),
    col("STATUS", "status"),
    time("CREATED", "created_at_ms"),
];
const APPS: &[Column] = &[
    col("ID", "id"),
    col("NAME", "name"),
    col("KIND", "kind"),
    col("STREAM URL", "stream_url"),
    col("CODECS", "codecs"),
    col("FORMAT", "media_format"),
    time("UPDATED", "updated_at_ms"),
];
const NUMBERS: &[Column] = &[
    col("NUMBER", "number"),
    col("APP", "app_id"),
    time("CLAIMED", "claimed_at_ms"),
    time("UPDATED", "updated_at_ms"),
];
const RELEASES: &[Column] = &[
    col("NUMBER", "number"),
    col("APP", "app_id"),
    time("CLAIMED", "claimed_at_ms"),
    time("RELEASED", "released_at_ms"),
];
const TRUNKS: &[Column] = &[
    col("ID", "id"),
    col("NAME", "name"),
    col("ALLOWED SOURCES", "allowed_sources"),
    time("CREATED", "created_at_ms"),
];
const KEYS: &[Column] = &[
    col("PREFIX", "prefix"),
    col("NAME", "name"),
    col("SCOPES", "scopes"),
    col("STATUS", "status"),
    col("STALE", "stale"),
    time("CREATED", "created_at_ms"),
    time("LAST USED", "last_used_at_ms"),
    time("EXPIRES", "expires_at_ms"),
];
const CALLS: &[Column] = &[
    col("CALL SID", "call_sid"),
    col("FROM", "from"),
    col("TO", "to"),
    col("APP", "app"),
    time("STARTED", "invite_at_ms"),
    secs("DURATION", "duration_secs"),
    secs("BILLABLE", "billable_secs"),
    col("END", "end_reason"),
];
const AUDIT: &[Column] = &[
    time("AT", "at_ms"),
    col("ACTOR", "actor"),
    col("ACTION", "action"),
    col("TARGET", "target"),
    short("DETAIL", "detail"),
];
const USAGE_ROWS: &[Column] = &[
    col("DAY", "day"),
    col("APP", "app"),
    col("NUMBER", "number"),
    col("CALLS", "calls"),
    secs("BILLABLE", "billable_secs"),
];

pub fn execute(client: &Client, conn: &Connection, out: Out, command: Command) -> Result<(), CliError> {
    match command {
        Command::Tenant { action, .. } => tenant(client, out, action),
        Command::App { action, .. } => app(client, &tenant_base(client, conn)?, out, action),
        Command::Number { action, .. } => number(client, &tenant_base(client, conn)?, out, action),
        Command::Trunk { action, .. } => trunk(client, &tenant_base(client, conn)?, out, action),
        Command::Key { action, .. } => key(client, &tenant_base(client, conn)?, out, action),
        Command::Usage { args, .. } => usage_report(client, &tenant_base(client, conn)?, out, args),
        Command::Invoices { period, .. } => {
            let base = tenant_base(client, conn)?;
            let reply = client.expect_ok("GET", &format!("{base}/invoices{}", query(&[("period", period)])), None)?;
            print(out, &reply, client, render::object)
        }
        Command::Calls { sid: Some(sid), page, .. } => {
            if page.from.is_some() || page.to.is_some() || page.page.limit.is_some() || page.page.cursor.is_some() {
                return Err(usage("a call SID shows one call: --from, --to, --limit and --cursor are for the listing"));
            }
            let base = tenant_base(client, conn)?;
            let reply = client.expect_ok("GET", &format!("{base}/calls/{}", seg(&sid)), None)?;
            print(out, &reply, client, render::object)
        }
        Command::Calls { sid: None, page, .. } => {
            let base = tenant_base(client, conn)?;
            listing(client, out, &format!("{base}/calls{}", time_query(&page)), CALLS)
        }
        Command::Audit { page, .. } => {
            let base = tenant_base(client, conn)?;
            listing(client, out, &format!("{base}/audit{}", time_query(&page)), AUDIT)
        }
        Command::Offboard { action, .. } => offboard(client, out, action),
    }
}

/// The path prefix of the tenant's resources: `/v1/tenants/{--tenant}`, or `/v1` for a key's own tenant.
fn tenant_base(client: &Client, conn: &Connection) -> Result<String, CliError> {
    match &conn.tenant {
        Some(t) => Ok(format!("/v1/tenants/{}", seg(t))),
        None if client.credential().is_tenant_key() => Ok("/v1".to_owned()),
        None => Err(usage(
            "this command acts on one tenant: give --tenant ID (or set FAIRVOX_TENANT); the operator token names the \
             tenant, a tenant key does not need to",
        )),
    }
}

// ---- tenants ----

fn tenant(client: &Client, out: Out, action: TenantAction) -> Result<(), CliError> {
    let one = |id: &str| format!("/v1/tenants/{}", seg(id));
    let reply = match action {
        TenantAction::Create { id, name, plan } => {
            let mut body = json!({"id": id, "name": name});
            if let Some(p) = plan {
                body["plan"] = json!(p);
            }
            client.expect_ok("POST", "/v1/tenants", Some(&body))?
        }
        TenantAction::Get { id } => client.expect_ok("GET", &one(&id), None)?,
        TenantAction::List { page } => {
            return listing(client, out, &format!("/v1/tenants{}", page_query(&page)), TENANTS);
        }
        TenantAction::SetPlan { id, plan } => client.expect_ok("PATCH", &one(&id), Some(&json!({"plan": plan})))?,
        TenantAction::Suspend { id } => client.expect_ok("PATCH", &one(&id), Some(&json!({"status": "suspended"})))?,
        TenantAction::Resume { id } => client.expect_ok("PATCH", &one(&id), Some(&json!({"status": "active"})))?,
    };
    print(out, &reply, client, render::object)
}

// ---- apps ----

/// `KEY=VALUE` pairs as a JSON object of strings.
fn parameters(pairs: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut map = Map::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| usage(format!("--param {p:?}: give KEY=VALUE")))?;
        if map.insert(k.to_owned(), json!(v)).is_some() {
            return Err(usage(format!("--param {k:?} is given twice")));
        }
    }
    Ok(map)
}

fn app(client: &Client, base: &str, out: Out, action: AppAction) -> Result<(), CliError> {
    let one = |id: &str| format!("{base}/apps/{}", seg(id));
    let reply = match action {
        AppAction::Create { name, stream_url, echo, auth_header, codecs, params, media_format } => {
            let mut body = json!({"name": name, "kind": if echo { "echo" } else { "stream" }});
            if let Some(u) = stream_url {
                body["stream_url"] = json!(u);
            }
            if let Some(h) = auth_header {
                body["auth_header"] = json!(h);
            }
            if !codecs.is_empty() {
                body["codecs"] = json!(codecs);
            }
            if !params.is_empty() {
                body["custom_parameters"] = Value::Object(parameters(&params)?);
            }
            if let Some(f) = media_format {
                body["media_format"] = json!(f);
            }
            client.expect_ok("POST", &format!("{base}/apps"), Some(&body))?
        }
        AppAction::List => return listing(client, out, &format!("{base}/apps"), APPS),
        AppAction::Get { id } => client.expect_ok("GET", &one(&id), None)?,
        AppAction::Update { id, name, stream_url, auth_header, clear_auth_header, codecs, params, media_format } => {
            let mut body = Map::new();
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            if let Some(u) = stream_url {
                body.insert("stream_url".into(), json!(u));
            }
            if let Some(h) = auth_header {
                body.insert("auth_header".into(), json!(h));
            }
            if clear_auth_header {
                body.insert("auth_header".into(), Value::Null);
            }
            if !codecs.is_empty() {
                body.insert("codecs".into(), json!(codecs));
            }
            if !params.is_empty() {
                body.insert("custom_parameters".into(), Value::Object(parameters(&params)?));
            }
            if let Some(f) = media_format {
                body.insert("media_format".into(), json!(f));
            }
            if body.is_empty() {
                return Err(usage(
                    "nothing to change: give --name, --stream-url, --auth-header, --codecs, --param or --media-format",
                ));
            }
            client.expect_ok("PATCH", &one(&id), Some(&Value::Object(body)))?
        }
        AppAction::Delete { id } => {
            let reply = client.expect_ok("DELETE", &one(&id), None)?;
            return done(out, &reply, client, &format!("app {} deleted", clean(&id)));
        }
    };
    print(out, &reply, client, render::object)
}

// ---- numbers ----

fn number(client: &Client, base: &str, out: Out, action: NumberAction) -> Result<(), CliError> {
    let one = |n: &str| format!("{base}/numbers/{}", seg(n));
    let reply = match action {
        NumberAction::Claim { number, app } => {
            client.expect_ok("POST", &format!("{base}/numbers"), Some(&json!({"number": number, "app_id": app})))?
        }
        NumberAction::List => return listing(client, out, &format!("{base}/numbers"), NUMBERS),
        NumberAction::Get { number } => client.expect_ok("GET", &one(&number), None)?,
        NumberAction::Assign { number, app } => {
            client.expect_ok("PATCH", &one(&number), Some(&json!({"app_id": app})))?
        }
        NumberAction::Release { number } => client.expect_ok("DELETE", &one(&number), None)?,
        NumberAction::Releases => return listing(client, out, &format!("{base}/number-releases"), RELEASES),
    };
    print(out, &reply, client, render::object)
}

// ---- trunks ----

fn trunk(client: &Client, base: &str, out: Out, action: TrunkAction) -> Result<(), CliError> {
    let one = |id: &str| format!("{base}/trunks/{}", seg(id));
    let reply = match action {
        TrunkAction::Create { name, sources } => client.expect_ok(
            "POST",
            &format!("{base}/trunks"),
            Some(&json!({"name": name, "allowed_sources": sources})),
        )?,
        TrunkAction::List => return listing(client, out, &format!("{base}/trunks"), TRUNKS),
        TrunkAction::Get { id } => client.expect_ok("GET", &one(&id), None)?,
        TrunkAction::Update { id, name, sources, any_source } => {
            let mut body = Map::new();
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            if !sources.is_empty() {
                body.insert("allowed_sources".into(), json!(sources));
            }
            if any_source {
                body.insert("allowed_sources".into(), json!([]));
            }
            if body.is_empty() {
                return Err(usage("nothing to change: give --name, --source or --any-source"));
            }
            client.expect_ok("PATCH", &one(&id), Some(&Value::Object(body)))?
        }
        TrunkAction::Delete { id } => {
            let reply = client.expect_ok("DELETE", &one(&id), None)?;
            return done(out, &reply, client, &format!("trunk {} deleted", clean(&id)));
        }
    };
    print(out, &reply, client, render::object)
}

// ---- keys ----

/// `YYYY-MM-DD` (00:00 UTC) or Unix milliseconds, as milliseconds.
fn instant_ms(flag: &str, text: &str) -> Result<i64, CliError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    UtcDay::parse(text)
        .map(|d| d.start_unix_ms())
        .map_err(|_| usage(format!("{flag} {text:?}: give YYYY-MM-DD or Unix milliseconds")))
}

fn key(client: &Client, base: &str, out: Out, action: KeyAction) -> Result<(), CliError> {
    let one = |p: &str| format!("{base}/keys/{}", seg(p));
    let reply = match action {
        KeyAction::Create { name, read_only, expires } => {
            let scopes: &[&str] = if read_only { &["read"] } else { &["read", "write"] };
            let mut body = json!({"name": name, "scopes": scopes});
            if let Some(e) = expires {
                body["expires_at_ms"] = json!(instant_ms("--expires", &e)?);
            }
            let reply = client.expect_ok("POST", &format!("{base}/keys"), Some(&body))?;
            print(out, &reply, client, render::object)?;
            if !out.json {
                eprintln!("The key is shown this once: store it now (the server keeps only a keyed hash of it).");
            }
            return Ok(());
        }
        KeyAction::List => return listing(client, out, &format!("{base}/keys"), KEYS),
        KeyAction::Get { prefix } => client.expect_ok("GET", &one(&prefix), None)?,
        KeyAction::Revoke { prefix } => client.expect_ok("DELETE", &one(&prefix), None)?,
    };
    print(out, &reply, client, render::object)
}

// ---- reports ----

fn usage_report(client: &Client, base: &str, out: Out, args: UsageArgs) -> Result<(), CliError> {
    if args.csv && out.json {
        return Err(usage("--csv and --json: choose one"));
    }
    let mut params = vec![("from", args.from), ("to", args.to), ("month", args.month)];
    if args.csv {
        params.push(("format", Some("csv".to_owned())));
    }
    let reply = client.expect_ok("GET", &format!("{base}/usage{}", query(&params)), None)?;
    if args.csv || out.json {
        return raw(&reply);
    }
    let body = parse(&reply, client)?;
    let total = &body["total"];
    println!(
        "Usage from {} to {} (UTC days, the last excluded): {} calls, {} billable seconds",
        render::cell(body.get("from"), render::Show::Plain),
        render::cell(body.get("to"), render::Show::Plain),
        render::cell(total.get("calls"), render::Show::Plain),
        render::cell(total.get("billable_secs"), render::Show::Plain),
    );
    let rows = body.get("rows").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    print!("{}", render::items_table(rows, USAGE_ROWS));
    Ok(())
}

fn listing(client: &Client, out: Out, path: &str, columns: &[Column]) -> Result<(), CliError> {
    let reply = client.expect_ok("GET", path, None)?;
    if out.json {
        return raw(&reply);
    }
    let body = parse(&reply, client)?;
    print!("{}", render::items_table(render::items(&body), columns));
    if let Some(next) = render::next_cursor(&body) {
        eprintln!("(more: add --cursor {next})");
    }
    Ok(())
}

// ---- offboarding ----

fn offboard(client: &Client, out: Out, action: OffboardAction) -> Result<(), CliError> {
    let job = |t: &str| format!("/v1/tenants/{}/offboard", seg(t));
    match action {
        OffboardAction::Start { tenant } => {
            let reply = client.expect_ok("POST", &job(&tenant), None)?;
            print(out, &reply, client, render::offboard_job)?;
            if !out.json {
                eprintln!("Follow it with: fairvox offboard status {}", clean(&tenant));
            }
            Ok(())
        }
        OffboardAction::Status { tenant } => {
            let reply = client.expect_ok("GET", &job(&tenant), None)?;
            print(out, &reply, client, render::offboard_job)
        }
        OffboardAction::Export { tenant, output, force } => {
            download_link(client, out, &job(&tenant), &tenant, Artifact::Export, output, force)
        }
        OffboardAction::Invoice { tenant, output, force } => {
            download_link(client, out, &job(&tenant), &tenant, Artifact::FinalInvoice, output, force)
        }
        OffboardAction::Certificate { tenant, output, force } => {
            download_link(client, out, &job(&tenant), &tenant, Artifact::Certificate, output, force)
        }
    }
}

/// What an offboarding job produces, each downloaded from its link in the job's `links`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Artifact {
    Export,
    FinalInvoice,
    Certificate,
}

impl Artifact {
    fn name(self) -> &'static str {
        match self {
            Artifact::Export => "export bundle",
            Artifact::FinalInvoice => "final invoice",
            Artifact::Certificate => "deletion certificate",
        }
    }

    /// Its key in the job's `links`.
    fn link(self) -> &'static str {
        match self {
            Artifact::Export => "export",
            Artifact::FinalInvoice => "final_invoice",
            Artifact::Certificate => "certificate",
        }
    }

    /// The file written when neither `--output` nor the server names one.
    fn default_file(self, tenant: &str) -> String {
        match self {
            Artifact::Export => format!("{tenant}-export"),
            Artifact::FinalInvoice => format!("{tenant}-final-invoice.json"),
            Artifact::Certificate => format!("{tenant}-certificate.json"),
        }
    }
}

/// The API path to download `what` from: the job's `links.<what>`, a path on this server (an absolute link
/// elsewhere would receive the credential). `null` until the job has produced it.
fn artifact_path(client: &Client, state: &Value, what: Artifact) -> Result<String, CliError> {
    let bad = |reason: String| CliError::BadResponse { url: client.url("/"), reason };
    let link = match state.get("links").and_then(|l| l.get(what.link())) {
        Some(Value::String(link)) => link,
        Some(Value::Null) => {
            return Err(CliError::Local(format!(
                "the offboarding job has no {} yet (job status: {}, step: {}); `fairvox offboard status` shows its steps",
                what.name(),
                render::cell(state.get("status"), render::Show::Plain),
                render::cell(state.get("step"), render::Show::Plain),
            )));
        }
        _ => return Err(bad(format!("the offboarding job has no links.{}", what.link()))),
    };
    if link.starts_with('/') {
        return Ok(link.clone());
    }
    let base = client.base();
    match link.strip_prefix(base) {
        Some(rest) if rest.starts_with('/') => Ok(rest.to_owned()),
        _ => Err(bad(format!(
            "the {} link {} is not on this server ({base}): not sending the credential there",
            what.name(),
            clean(link)
        ))),
    }
}

fn download_link(
    client: &Client,
    out: Out,
    job: &str,
    tenant: &str,
    what: Artifact,
    output: Option<PathBuf>,
    force: bool,
) -> Result<(), CliError> {
    let state = parse(&client.expect_ok("GET", job, None)?, client)?;
    let path = artifact_path(client, &state, what)?;
    let fallback = what.default_file(tenant);
    let name = |headers: &[(String, String)]| match &output {
        Some(p) => p.clone(),
        None => PathBuf::from(file_name_from(headers).unwrap_or_else(|| with_extension(&fallback, headers))),
    };
    let saved = client.download(&path, name, force)?;
    if out.json {
        println!("{}", json!({"file": saved.path.display().to_string(), "bytes": saved.bytes, "sha256": saved.sha256}));
    } else {
        println!("wrote {} ({} bytes, SHA-256 {})", saved.path.display(), saved.bytes, saved.sha256);
    }
    Ok(())
}

/// The file name of `Content-Disposition: attachment; filename="..."`, if it is a plain file name.
fn file_name_from(headers: &[(String, String)]) -> Option<String> {
    let value = headers.iter().find(|(k, _)| k == "content-disposition")?.1.as_str();
    let name = value.split(';').map(str::trim).find_map(|p| p.strip_prefix("filename="))?;
    let name = name.trim_matches('"');
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c));
    plain.then(|| name.to_owned())
}

fn with_extension(stem: &str, headers: &[(String, String)]) -> String {
    if stem.ends_with(".json") {
        return stem.to_owned();
    }
    let content_type = headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.as_str()).unwrap_or("");
    let ext = match content_type.split(';').next().unwrap_or("").trim() {
        "application/gzip" | "application/x-gzip" | "application/x-tar+gzip" => ".tar.gz",
        "application/zip" => ".zip",
        "application/x-tar" => ".tar",
        "application/json" => ".json",
        _ => "",
    };
    format!("{stem}{ext}")
}

// ---- output ----

/// Prints a 2xx answer: its body as received with `--json`, else `human` of its JSON.
fn print(out: Out, reply: &Reply, client: &Client, human: fn(&Value) -> String) -> Result<(), CliError> {
    if out.json {
        return raw(reply);
    }
    let body = parse(reply, client)?;
    print!("{}", human(&body));
    Ok(())
}

/// A 2xx answer that may have no body (`204`): the body as received with `--json`, else `message`.
fn done(out: Out, reply: &Reply, client: &Client, message: &str) -> Result<(), CliError> {
    if out.json || !reply.body.is_empty() {
        return print(out, reply, client, render::object);
    }
    println!("{message}");
    Ok(())
}

/// The body exactly as received (a newline added when it has none, for the terminal).
fn raw(reply: &Reply) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    let newline = !reply.body.is_empty() && !reply.body.ends_with(b"\n");
    stdout
        .write_all(&reply.body)
        .and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::Local(format!("writing to stdout: {e}")))
}

fn parse(reply: &Reply, client: &Client) -> Result<Value, CliError> {
    serde_json::from_slice(&reply.body)
        .map_err(|e| CliError::BadResponse { url: client.base().to_owned(), reason: format!("not JSON: {e}") })
}

// ---- paths and queries ----

/// A path segment, percent-encoded (`+` kept: E.164 numbers read better, and the API takes both).
pub fn seg(s: &str) -> String {
    encode(s, b"-._~+")
}

fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&...` of the parameters that are set (empty when none is).
fn query(params: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> =
        params.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v, b"-._~")))).collect();
    if set.is_empty() { String::new() } else { format!("?{}", set.join("&")) }
}

fn page_query(page: &Page) -> String {
    query(&[("limit", page.limit.map(|l| l.to_string())), ("cursor", page.cursor.clone())])
}

fn time_query(t: &TimePage) -> String {
    query(&[
        ("from", t.from.clone()),
        ("to", t.to.clone()),
        ("limit", t.page.limit.map(|l| l.to_string())),
        ("cursor", t.page.cursor.clone()),
    ])
}

/// What [`Client::download`] wrote.
pub struct Saved {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// Copies `reader` to `file`, hashing what passes; the bytes copied and their SHA-256 in hex.
pub fn copy_hashed(reader: &mut impl std::io::Read, file: &mut impl Write) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        total += n as u64;
    }
    let hex = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((total, hex))
}

/// Whether writing to `path` would replace a file the user did not ask to replace.
pub fn refuse_overwrite(path: &Path, force: bool) -> Result<(), CliError> {
    if path.exists() && !force {
        return Err(CliError::Local(format!("{} exists: give --force to replace it, or --output", path.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_queries_are_encoded() {
        assert_eq!(seg("+15551230001"), "+15551230001");
        assert_eq!(seg("../tenants"), "..%2Ftenants");
        assert_eq!(seg("a b?c#d"), "a%20b%3Fc%23d");
        assert_eq!(query(&[("from", Some("2026-11-01".into())), ("to", None)]), "?from=2026-11-01");
        assert_eq!(query(&[("cursor", Some("a+b/c=".into()))]), "?cursor=a%2Bb%2Fc%3D");
        assert_eq!(query(&[("to", None)]), "");
    }

    #[test]
    fn parameters_are_key_value_pairs() {
        assert_eq!(
            parameters(&["lang=en".into(), "x=a=b".into()]).unwrap(),
            json!({"lang": "en", "x": "a=b"}).as_object().unwrap().clone()
        );
        assert!(parameters(&["nope".into()]).is_err());
        assert!(parameters(&["a=1".into(), "a=2".into()]).is_err());
    }

    #[test]
    fn offboard_downloads_follow_the_jobs_links_on_this_server_only() {
        let target = super::super::client::Target {
            url: Some("http://127.0.0.1:8080".into()),
            token: Some("operator-token-0123456789abcdef0123456789".into()),
            token_file: None,
            data_dir: None,
            config: None,
            timeout: std::time::Duration::from_secs(1),
        };
        let client = Client::new(&target).unwrap();
        let state = json!({"status": "finished", "step": "done",
                           "export": {"file_name": "acme-export.tar.gz"},
                           "links": {"self": "/v1/tenants/acme/offboard", "export": "/v1/tenants/acme/offboard/export",
                                     "final_invoice": "http://127.0.0.1:8080/v1/tenants/acme/offboard/invoice",
                                     "certificate": "http://elsewhere.example/v1/tenants/acme/offboard/certificate"}});
        assert_eq!(artifact_path(&client, &state, Artifact::Export).unwrap(), "/v1/tenants/acme/offboard/export");
        assert_eq!(
            artifact_path(&client, &state, Artifact::FinalInvoice).unwrap(),
            "/v1/tenants/acme/offboard/invoice"
        );
        let elsewhere = artifact_path(&client, &state, Artifact::Certificate).unwrap_err();
        assert!(matches!(elsewhere, CliError::BadResponse { .. }), "{elsewhere}");
        assert!(elsewhere.to_string().contains("not on this server"), "{elsewhere}");

        let running = json!({"status": "running", "step": "drain_calls",
                             "links": {"self": "/v1/tenants/acme/offboard", "export": null}});
        let not_yet = artifact_path(&client, &running, Artifact::Export).unwrap_err();
        assert!(matches!(not_yet, CliError::Local(_)), "{not_yet}");
        assert!(
            not_yet.to_string().contains("no export bundle yet (job status: running, step: drain_calls)"),
            "{not_yet}"
        );
        let missing = artifact_path(&client, &running, Artifact::Certificate).unwrap_err();
        assert!(matches!(missing, CliError::BadResponse { .. }), "{missing}");
    }

    #[test]
    fn file_names_from_the_server_are_plain_or_ignored() {
        let h = |v: &str| vec![("content-disposition".to_owned(), v.to_owned())];
        assert_eq!(
            file_name_from(&h("attachment; filename=\"acme-export.tar.gz\"")).as_deref(),
            Some("acme-export.tar.gz")
        );
        assert_eq!(file_name_from(&h("attachment; filename=\"../../etc/passwd\"")), None);
        assert_eq!(file_name_from(&h("attachment; filename=\".bashrc\"")), None);
        assert_eq!(file_name_from(&h("inline")), None);
        let ct = vec![("content-type".to_owned(), "application/gzip".to_owned())];
        assert_eq!(with_extension("acme-export", &ct), "acme-export.tar.gz");
        assert_eq!(with_extension("acme-certificate.json", &ct), "acme-certificate.json");
    }

    #[test]
    fn copies_hash_what_they_copy() {
        let mut out = Vec::new();
        let (n, hex) = copy_hashed(&mut &b"abc"[..], &mut out).unwrap();
        assert_eq!((n, out.as_slice()), (3, &b"abc"[..]));
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
