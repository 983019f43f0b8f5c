//! The operator CLI: `fairvox tenant|app|number|trunk|key|usage|invoices|calls|audit|offboard ...`.
//!
//! Owns: the client subcommands and their flags ([`Command`]), turning each into requests to the control-plane API
//! over HTTP ([`client`]), and printing the answer: human tables by default ([`render`]), the API's JSON body as
//! received with `--json`. Must not: open the SQLite store (the API is the only way in, with its tenant scoping,
//! audit log and rate limits), print or log the credential, or run inside the server (it is a synchronous client;
//! nothing here is on the server's request or media path).
//!
//! Exit codes ([`client::Exit`]): 0 done; 1 a local failure (writing a file, or a download the offboarding job has
//! not produced yet); 2 a usage error (flags, missing credentials); 3 the API refused the request (4xx, its code and
//! message printed); 4 the server failed (5xx) or answered something that is not the API's; 5 the server could not be
//! reached.

pub mod client;
mod commands;
pub mod render;

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};

use client::{CliError, Client, Exit, Target};

use crate::proto::media_streams::MediaFormat;

/// Where the API is and who is asking; every client subcommand takes these (before or after its own).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Connection and output")]
pub struct Connection {
    /// The API's base URL (default: the --config file's [http] listen, else http://127.0.0.1:8080).
    #[arg(long, env = "FAIRVOX_URL", global = true, value_name = "URL")]
    pub url: Option<String>,
    /// The credential: the operator token, or a tenant's API key (fvk_...), which acts for its own tenant only.
    /// Prefer --token-file or the environment: a command line is visible to other users of the machine. Without
    /// it: --token-file, then $FAIRVOX_API_KEY (a tenant key), then $FAIRVOX_ADMIN_TOKEN, then the token the server
    /// generated in its data directory (--data-dir).
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// A file holding the credential (the server's data_dir/admin-token, or a file with a tenant key).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The server's data directory, where it keeps the operator token it generated (default: --config's data_dir,
    /// else ./fairvox-data).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The server's config file: its [http] listen and data_dir serve as defaults for --url and --data-dir.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the API's JSON body as it came, for scripts (no table).
    #[arg(long, global = true)]
    pub json: bool,
    /// The tenant to act on. Required with the operator token on tenant resources; a tenant key acts on its own
    /// tenant without it.
    #[arg(long, env = "FAIRVOX_TENANT", global = true, value_name = "ID")]
    pub tenant: Option<String>,
    /// Seconds to wait for the server's answer.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
}

/// The client subcommands, flattened into the binary's command line next to `serve` and `check-config`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Tenants (operator): create, get, list, set-plan, suspend, resume.
    Tenant {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        action: TenantAction,
    },
    /// A tenant's apps: where its calls' audio is streamed.
    App {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        action: AppAction,
    },
    /// A tenant's phone numbers: claim, list, assign to an app, release.
    Number {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        action: NumberAction,
    },
    /// A tenant's SIP trunks: the source addresses its calls may come from.
    Trunk {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        action: TrunkAction,
    },
    /// A tenant's API keys: create (the key is shown once), list, revoke.
    Key {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Billable usage per day, app and number (UTC days).
    Usage {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: UsageArgs,
    },
    /// A month's invoice: usage times the plan's price.
    Invoices {
        #[command(flatten)]
        conn: Connection,
        /// The month, YYYY-MM (default: this month, UTC).
        #[arg(long, value_name = "YYYY-MM")]
        period: Option<String>,
    },
    /// Call records, newest first; with a call SID, that one call.
    Calls {
        #[command(flatten)]
        conn: Connection,
        /// One call's SID (CA...).
        sid: Option<String>,
        #[command(flatten)]
        page: TimePage,
    },
    /// The audit log: who changed what, when (newest first).
    Audit {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        page: TimePage,
    },
    /// Offboarding a tenant (operator): start the job, follow it, download its export bundle, final invoice and
    /// deletion certificate.
    Offboard {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        action: OffboardAction,
    },
}

#[derive(Args, Clone, Debug, Default)]
pub struct Page {
    /// At most this many items (1-1000; default 100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue a listing where the previous page ended (its `next`).
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Args, Clone, Debug, Default)]
pub struct TimePage {
    /// From this time on (inclusive): YYYY-MM-DD (00:00 UTC) or Unix milliseconds.
    #[arg(long)]
    pub from: Option<String>,
    /// Before this time (exclusive): YYYY-MM-DD or Unix milliseconds.
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub page: Page,
}

#[derive(Subcommand, Debug)]
pub enum TenantAction {
    /// Create a tenant.
    Create {
        /// Its id: 1-64 of a-z, 0-9, '-', '_' (the `tenant` label in metrics, `accountSid` to agents).
        id: String,
        /// Its display name.
        #[arg(long)]
        name: String,
        /// Its plan (default: pro).
        #[arg(long)]
        plan: Option<String>,
    },
    /// Show one tenant.
    Get { id: String },
    /// List tenants (an offboarded tenant is gone from the list; `fairvox offboard status` still shows its job).
    List {
        #[command(flatten)]
        page: Page,
    },
    /// Move a tenant to another plan of the config.
    SetPlan { id: String, plan: String },
    /// Suspend a tenant: new calls to its numbers get 403 Tenant Suspended until it is resumed (its keys still work).
    Suspend { id: String },
    /// Resume a suspended tenant.
    Resume { id: String },
}

#[derive(Subcommand, Debug)]
pub enum AppAction {
    /// Create an app: a stream to an agent's WebSocket (--stream-url), or the built-in echo (--echo).
    Create {
        /// Its name, unique within the tenant.
        #[arg(long)]
        name: String,
        /// ws:// or wss:// URL of the agent.
        #[arg(long, required_unless_present = "echo", conflicts_with = "echo")]
        stream_url: Option<String>,
        /// The built-in echo app (no agent).
        #[arg(long)]
        echo: bool,
        /// Sent as `Authorization` to the agent (stored, never shown again in full).
        #[arg(long)]
        auth_header: Option<String>,
        /// Codec preference, e.g. PCMU,PCMA.
        #[arg(long, value_delimiter = ',')]
        codecs: Vec<String>,
        /// A custom parameter passed to the agent in the stream's start message (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// The stream's audio format: mulaw_8k (the Twilio format, the default) or l16_16k (16 kHz 16-bit PCM).
        #[arg(long, value_name = "FORMAT", value_parser = PossibleValuesParser::new(MediaFormat::NAMES))]
        media_format: Option<String>,
    },
    /// List apps.
    List,
    /// Show one app.
    Get { id: String },
    /// Change an app: only the fields given.
    Update {
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new agent URL (ws:// or wss://).
        #[arg(long)]
        stream_url: Option<String>,
        /// A new auth header for the agent.
        #[arg(long, conflicts_with = "clear_auth_header")]
        auth_header: Option<String>,
        /// Remove the app's auth header.
        #[arg(long)]
        clear_auth_header: bool,
        /// A new codec preference, e.g. PCMA,PCMU.
        #[arg(long, value_delimiter = ',')]
        codecs: Vec<String>,
        /// Replace the custom parameters with these (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// A new audio format for the stream: mulaw_8k or l16_16k.
        #[arg(long, value_name = "FORMAT", value_parser = PossibleValuesParser::new(MediaFormat::NAMES))]
        media_format: Option<String>,
    },
    /// Delete an app (refused while a number points at it).
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum NumberAction {
    /// Claim a number (E.164) for an app.
    Claim {
        number: String,
        /// The app its calls go to.
        #[arg(long, value_name = "APP_ID")]
        app: String,
    },
    /// List the tenant's numbers.
    List,
    /// Show one number.
    Get { number: String },
    /// Point a number at another app.
    Assign {
        number: String,
        #[arg(long, value_name = "APP_ID")]
        app: String,
    },
    /// Release a number: anyone may claim it afterwards.
    Release { number: String },
    /// The tenant's released numbers.
    Releases,
}

#[derive(Subcommand, Debug)]
pub enum TrunkAction {
    /// Create a trunk: the source addresses (CIDR) its calls may come from.
    Create {
        /// Its name, unique within the tenant.
        #[arg(long)]
        name: String,
        /// An allowed source, e.g. 203.0.113.0/24 (repeatable).
        #[arg(long = "source", value_name = "CIDR")]
        sources: Vec<String>,
    },
    /// List trunks.
    List,
    /// Show one trunk.
    Get { id: String },
    /// Change a trunk's name and/or its sources.
    Update {
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// Replace the allowed sources with these (repeatable).
        #[arg(long = "source", value_name = "CIDR", conflicts_with = "any_source")]
        sources: Vec<String>,
        /// Allow calls from any source (an empty list).
        #[arg(long)]
        any_source: bool,
    },
    /// Delete a trunk.
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Create an API key; the key itself is printed this once.
    Create {
        /// What it is for (shown in listings).
        #[arg(long)]
        name: String,
        /// Read-only (default: read and write).
        #[arg(long)]
        read_only: bool,
        /// Expiry: YYYY-MM-DD (00:00 UTC) or Unix milliseconds.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Show one key by its prefix (fvk_xxxxxxxx).
    Get { prefix: String },
    /// Revoke a key: it fails from its next request on.
    Revoke { prefix: String },
}

#[derive(Args, Clone, Debug, Default)]
pub struct UsageArgs {
    /// First UTC day, YYYY-MM-DD (default: the first of this month).
    #[arg(long)]
    pub from: Option<String>,
    /// Day after the last, YYYY-MM-DD (default: tomorrow).
    #[arg(long)]
    pub to: Option<String>,
    /// A whole month, YYYY-MM (instead of --from/--to).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub month: Option<String>,
    /// The rows as CSV (the API's CSV as it came).
    #[arg(long)]
    pub csv: bool,
}

#[derive(Subcommand, Debug)]
pub enum OffboardAction {
    /// Start offboarding a tenant; starting it again shows the same job.
    ///
    /// The API's job suspends the tenant (its keys fail, new calls get 403), lets its calls go on for the grace
    /// ([offboard] grace_secs) and then hangs them up, exports its data, makes its final invoice, releases its
    /// numbers, revokes its keys, deletes its rows and issues a deletion certificate. It survives restarts.
    Start {
        /// The tenant's id.
        tenant: String,
    },
    /// The job's state, its steps (what each did) and the downloads it has produced so far.
    Status {
        /// The tenant's id.
        tenant: String,
    },
    /// Download the export bundle (tar.gz of the tenant's data as JSON and CSV), once the export step ran.
    Export {
        /// The tenant's id.
        tenant: String,
        /// Where to write it (default: the file name the server gives, TENANT-export.tar.gz).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Download the final invoice (JSON), once the final_invoice step ran.
    Invoice {
        /// The tenant's id.
        tenant: String,
        /// Where to write it (default: TENANT-final-invoice.json).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Download the deletion certificate (JSON), once the job finished.
    Certificate {
        /// The tenant's id.
        tenant: String,
        /// Where to write it (default: TENANT-certificate.json).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
}

impl Command {
    fn connection(&self) -> &Connection {
        match self {
            Command::Tenant { conn, .. }
            | Command::App { conn, .. }
            | Command::Number { conn, .. }
            | Command::Trunk { conn, .. }
            | Command::Key { conn, .. }
            | Command::Usage { conn, .. }
            | Command::Invoices { conn, .. }
            | Command::Calls { conn, .. }
            | Command::Audit { conn, .. }
            | Command::Offboard { conn, .. } => conn,
        }
    }
}

/// Runs a client subcommand: prints its result to stdout, or `error: ...` to stderr; returns the exit code.
pub fn run(command: Command) -> i32 {
    let conn = command.connection().clone();
    let target = Target {
        url: conn.url.clone(),
        token: conn.token.clone(),
        token_file: conn.token_file.clone(),
        data_dir: conn.data_dir.clone(),
        config: conn.config.clone(),
        timeout: Duration::from_secs(conn.timeout.max(1)),
    };
    let result = Client::new(&target).and_then(|client| {
        let out = commands::Out { json: conn.json };
        commands::execute(&client, &conn, out, command)
    });
    match result {
        Ok(()) => Exit::Ok as i32,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit() as i32
        }
    }
}

/// A usage error of a command, in clap's words.
pub(crate) fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}
