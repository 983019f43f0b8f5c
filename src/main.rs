//! The `fairvox` binary: the command line, logging set-up, and signal handling. No business logic here: `serve`
//! starts the server (`fairvox::server`), the client subcommands (`tenant`, `app`, `number`, ...) are the operator
//! CLI (`fairvox::cli`), which talks to a running server's API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fairvox::config::{Config, Overrides, RtpPorts};
use fairvox::logging::LogConfig;

#[derive(Parser)]
#[command(name = "fairvox", version, about = "Real-time audio media server for multi-tenant voice AI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SIP calls and stream their audio to each tenant's agent.
    Serve(ServeArgs),
    /// Validate a configuration file and exit.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    #[command(flatten)]
    Client(fairvox::cli::Command),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; without it the embedded defaults (demo tenant, echo app) are used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// SIP listen address, UDP and TCP (default 127.0.0.1:5060).
    #[arg(long)]
    sip_listen: Option<SocketAddr>,
    /// HTTP listen address (default 127.0.0.1:8080).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// RTP port range LO-HI (default 20000-29999).
    #[arg(long, value_parser = parse_ports)]
    rtp_ports: Option<RtpPorts>,
    /// Data directory (default ./fairvox-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds to let active calls end by themselves after SIGTERM/SIGINT before hanging them up (default
    /// `drain.grace_secs` of the config, 10).
    #[arg(long)]
    drain_secs: Option<u64>,
}

fn parse_ports(s: &str) -> Result<RtpPorts, String> {
    RtpPorts::parse(s)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Client(command) => std::process::exit(fairvox::cli::run(command)),
        Command::CheckConfig { config } => {
            fairvox::logging::init(&LogConfig::default());
            Config::load(Some(&config), &Overrides::default())?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Serve(args) => {
            let overrides = Overrides {
                sip_listen: args.sip_listen,
                http_listen: args.http_listen,
                rtp_ports: args.rtp_ports,
                data_dir: args.data_dir,
                drain_grace: args.drain_secs.map(Duration::from_secs),
            };
            let config = Config::load(args.config.as_deref(), &overrides)?;
            fairvox::logging::init(&config.log);
            if !config.media_cpus.is_empty() {
                // Before any other thread exists, so that the runtime and the runners inherit it; the media workers
                // pin themselves to `media.cpus` when they start.
                let control = fairvox::sched::cpus::keep_off(&config.media_cpus)?;
                tracing::info!(
                    media_cpus = %fairvox::sched::cpus::cpu_list(&config.media_cpus),
                    control_cpus = %fairvox::sched::cpus::cpu_list(&control),
                    realtime_priority = ?config.media_realtime_priority,
                    "media workers get cores of their own"
                );
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
            let grace = config.drain_grace;
            runtime.block_on(serve(config, grace))
        }
    }
}

async fn serve(config: Config, drain: Duration) -> anyhow::Result<()> {
    let running = fairvox::server::start(config).await?;
    wait_for_signal().await;
    tracing::info!(grace_secs = drain.as_secs(), "shutting down: draining");
    running.shutdown(drain).await;
    tracing::info!("drained; exiting");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
