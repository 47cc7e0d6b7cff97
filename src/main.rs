//! The `agentline` command line: parse arguments, load the profile, start the
//! runtime. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;

use agentline::config::{Config, ListenAddr, LogFormat, Overrides, PasswordSource, PortRange};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// `eprintln!` that ignores a closed stderr (`eprintln!` panics on it).
macro_rules! err_line {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// `println!` that ignores a closed stdout (`agentline cdrs | head -1`).
macro_rules! out_line {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "agentline",
    version,
    about = "SIP/RTP media server for AI voice agents"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (with the embedded default profile unless --profile is given).
    #[command(args_override_self = true)]
    Run(ProfileArgs),
    /// Validate a profile and exit: 0 when valid, 1 with the bad key named.
    #[command(args_override_self = true)]
    CheckConfig(ProfileArgs),
    /// List call records (newest first) from the profile's store, or show one.
    Cdrs(CdrsArgs),
    /// Write a self-signed development certificate and key for SIP over TLS
    /// (certs/agentline.crt, certs/agentline.key).
    GenCert(GenCertArgs),
}

#[derive(Args)]
struct GenCertArgs {
    /// Folder to write into (the profile's `certs/`).
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// DNS name or IP the certificate is for, repeatable
    /// (default: localhost, 127.0.0.1, ::1, this host's name and address).
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Replace an existing pair.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CdrsArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    /// One record, whole (JSON).
    id: Option<String>,
    /// Calls that arrived at or after: Unix ms, 2026-12-03 or 2026-12-03T14:00:00Z.
    #[arg(long)]
    from: Option<String>,
    /// Calls that arrived before this.
    #[arg(long)]
    to: Option<String>,
    /// Only this route (its dial).
    #[arg(long)]
    route: Option<String>,
    /// How many (at most 1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Print JSON (one page with next_cursor) instead of a table.
    #[arg(long)]
    json: bool,
    /// Continue after a previous page (its next_cursor).
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(Args, Clone)]
struct ProfileArgs {
    /// Profile TOML (e.g. sip-profiles/default.toml). Default: the embedded one.
    #[arg(long, env = "AGENTLINE_PROFILE")]
    profile: Option<PathBuf>,
    /// SIP listener, repeatable: udp:IP:PORT or tcp:IP:PORT (replaces sip.listen).
    #[arg(long = "sip-listen", value_name = "TRANSPORT:IP:PORT")]
    sip_listen: Vec<ListenAddr>,
    /// RTP port range, e.g. 10000-20000 (replaces rtp.ports).
    #[arg(long = "rtp-ports", value_name = "FIRST-LAST")]
    rtp_ports: Option<PortRange>,
    /// HTTP API address (replaces api.listen).
    #[arg(long = "api-listen", value_name = "IP:PORT")]
    api_listen: Option<SocketAddr>,
    /// Log format: text or json (replaces log.format).
    #[arg(long = "log-format", value_name = "text|json")]
    log_format: Option<LogFormat>,
    /// Where generated credentials are kept (replaces state.dir).
    #[arg(long = "state-dir", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl ProfileArgs {
    fn load(&self) -> Result<Config, agentline::config::ConfigError> {
        let ov = Overrides {
            sip_listen: self.sip_listen.clone(),
            rtp_ports: self.rtp_ports,
            api_listen: self.api_listen,
            log_format: self.log_format,
            state_dir: self.state_dir.clone(),
            config_root: None,
        };
        Config::load(self.profile.as_deref(), &ov)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::GenCert(a) => {
            let names = if a.names.is_empty() {
                agentline::tls::default_names()
            } else {
                a.names
            };
            match agentline::tls::write_pair(&a.dir, &names, a.force) {
                Ok((c, k)) => {
                    out_line!(
                        "wrote {} and {} (self-signed, for {})",
                        c.display(),
                        k.display(),
                        names.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    err_line!("agentline gen-cert: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Cdrs(a) => cdrs(a),
        Cmd::CheckConfig(args) => match args.load() {
            Ok(cfg) => {
                for (i, u) in cfg.users.iter().enumerate() {
                    if let PasswordSource::Env(var) = &u.password {
                        if std::env::var(var).map(|v| v.is_empty()).unwrap_or(true) {
                            err_line!(
                                "profile {}: key `users[{i}].password_env`: environment variable `{var}` is not set or empty",
                                cfg.origin
                            );
                            return ExitCode::from(1);
                        }
                    }
                }
                out_line!(
                    "{}: ok ({} listeners, {} users, {} routes)",
                    cfg.origin,
                    cfg.sip_listen.len(),
                    cfg.users.len(),
                    cfg.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                err_line!("{e}");
                ExitCode::from(1)
            }
        },
        Cmd::Run(args) => {
            let cfg = match args.load() {
                Ok(c) => c,
                Err(e) => {
                    err_line!("{e}");
                    return ExitCode::from(1);
                }
            };
            // Logging never blocks or panics, whatever stderr is; the guard
            // writes out the queued lines at exit.
            let log = agentline::logging::init(cfg.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the runtime");
                    return ExitCode::from(1);
                }
            };
            // SIGHUP and POST /reload read the same file with the same flags.
            let reload_args = args.clone();
            let load: agentline::sip::reload::Loader =
                std::sync::Arc::new(move || reload_args.load());
            let result = rt.block_on(async move {
                let shutdown = CancellationToken::new();
                let s = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    s.cancel();
                });
                agentline::server::run_reloadable(cfg, Some(load), shutdown).await
            });
            let code = match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "agentline failed");
                    log.flush(std::time::Duration::from_secs(2));
                    err_line!("agentline: {e}");
                    ExitCode::from(1)
                }
            };
            drop(log);
            code
        }
    }
}

/// `agentline cdrs`: reads the store directly (the server need not run).
fn cdrs(a: CdrsArgs) -> ExitCode {
    use agentline::store::{CdrFilter, Store};
    let cfg = match a.profile.load() {
        Ok(c) => c,
        Err(e) => {
            err_line!("{e}");
            return ExitCode::from(1);
        }
    };
    let time = |name: &str, v: &Option<String>| -> Result<Option<i64>, String> {
        v.as_deref()
            .map(|s| {
                agentline::clock::parse_time_ms(s).ok_or_else(|| {
                    format!(
                        "--{name}: expected Unix ms, 2026-12-03 or 2026-12-03T14:00:00Z, got `{s}`"
                    )
                })
            })
            .transpose()
    };
    let filter = match (time("from", &a.from), time("to", &a.to)) {
        (Ok(from_ms), Ok(to_ms)) => CdrFilter {
            from_ms,
            to_ms,
            route: a.route.clone(),
            limit: Some(a.limit),
            cursor: a.cursor.clone(),
        },
        (Err(e), _) | (_, Err(e)) => {
            err_line!("agentline cdrs: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            err_line!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let out = rt.block_on(async {
        let store = Store::reader(&cfg.store, &cfg.state_dir).await?;
        match &a.id {
            Some(id) => Ok(store
                .get(id)
                .await?
                .map(|c| serde_json::to_string_pretty(&c).unwrap_or_default())),
            None => {
                let page = store.list(&filter).await?;
                Ok(Some(if a.json {
                    serde_json::to_string_pretty(&page).unwrap_or_default()
                } else {
                    agentline::store::table(&page)
                }))
            }
        }
    });
    match out {
        Ok(Some(text)) => {
            out_line!("{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            err_line!("agentline cdrs: no record `{}`", a.id.unwrap_or_default());
            ExitCode::from(1)
        }
        Err(e) => {
            let e: agentline::store::StoreError = e;
            err_line!("agentline cdrs: {e}");
            ExitCode::from(1)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}
