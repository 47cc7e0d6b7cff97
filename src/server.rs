//! Runs the whole server: SIP, media, HTTP API, and the drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::calls::CallRegistry;
use crate::config::{prepare_credentials, store_generated, trunk_password, Config, ConfigError};
use crate::control::{self, ApiState};
use crate::sip::reload::{Loader, Reloader};
use crate::sip::server::{self as sip_server, SipError};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sip(#[from] SipError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("HTTP API on {addr}: {source}")]
    Api {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Starts everything and runs until `shutdown` fires; then stops taking
/// calls, hangs up the active ones, waits for them (up to the configured
/// grace) and returns.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    run_reloadable(cfg, None, shutdown).await
}

/// [`run`], with `load` re-reading the profile on SIGHUP and `POST /reload`.
pub async fn run_reloadable(
    cfg: Config,
    load: Option<Loader>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    // Generated passwords are stored and shown only once every listener is
    // bound: a start that fails (a busy port) must not announce passwords
    // the running server does not know.
    let (creds, fresh) = prepare_credentials(&cfg)?;
    let trunk_passwords = (0..cfg.trunks.len())
        .map(|i| trunk_password(&cfg, i))
        .collect::<Result<Vec<_>, _>>()?;
    let api_listener = control::bind(cfg.api_listen)
        .await
        .map_err(|source| ServerError::Api {
            addr: cfg.api_listen,
            source,
        })?;
    let (store, opened) =
        Store::open(&cfg.store, &cfg.state_dir, crate::clock::unix_ms() as i64).await?;
    if !opened.lost.is_empty() {
        warn!(
            calls = opened.lost.len(),
            "calls cut short by the previous run's end (crash, kill -9, power loss) recorded as lost"
        );
    }
    // Recordings a crash left with a stale header, fixed before new calls.
    let lost_recordings = opened
        .lost
        .iter()
        .filter_map(|l| l.recording.as_ref().map(std::path::PathBuf::from))
        .collect();
    crate::sip::recorder::repair_at_startup(cfg.record_dir.clone(), lost_recordings).await;
    if opened.purged > 0 {
        crate::store::remove_recordings(&opened.purged_recordings);
        info!(
            records = opened.purged,
            keep_days = cfg.store.keep_days,
            "old call records deleted"
        );
    }
    let cfg = Arc::new(cfg);
    let calls = CallRegistry::with_store(store.clone());
    let sip = sip_server::start(cfg.clone(), &creds, trunk_passwords, calls.clone()).await?;
    if let Err(e) = store_generated(&cfg, &fresh) {
        sip.stop.cancel();
        return Err(e.into());
    }
    for c in &fresh {
        // Printed once, on the start that generated it.
        info!(
            user = %c.name,
            password = %c.password,
            file = %cfg.state_dir.join("credentials").join(&c.name).display(),
            "generated a password for local user (shown only this once)"
        );
    }
    let api_stop = CancellationToken::new();
    let readiness = control::ready::Readiness::default();
    {
        // A node that cannot write call records takes no new calls.
        let store = store.clone();
        readiness.add_check(
            "call store",
            Arc::new(move || match store.writable() {
                true => Ok(()),
                false => Err("the last write failed"),
            }),
        );
    }
    {
        // An overloaded node takes no new calls: a dispatcher in front
        // sends them elsewhere.
        let overload = sip.shared.overload.clone();
        readiness.add_check(
            "overload",
            Arc::new(move || match overload.overloaded() {
                false => Ok(()),
                true => Err("CPU or media lag over the ceiling ([sip] max_cpu, max_media_lag_ms)"),
            }),
        );
    }
    let reloader = Arc::new(Reloader::new(sip.clone(), load));
    let api_task = tokio::spawn(control::serve_on(
        api_listener,
        ApiState {
            sip: sip.clone(),
            readiness: readiness.clone(),
            reloader: reloader.clone(),
        },
        api_stop.clone(),
    ));
    info!(
        profile = %cfg.origin,
        users = creds.len(),
        routes = cfg.routes.len(),
        rtp = %cfg.rtp_ports,
        api_token = cfg.api_token.is_some(),
        "agentline ready"
    );
    let notify_stop = CancellationToken::new();
    // Heap freed by bursts (floods, fuzz, call churn) goes back to the OS.
    crate::memory::spawn_trim(notify_stop.clone());
    readiness.set_listeners_up();
    crate::systemd::ready(&calls);
    crate::sip::reload::reload_on_sighup(reloader, notify_stop.clone());
    crate::systemd::spawn(
        calls.clone(),
        sip.shared.draining.clone(),
        notify_stop.clone(),
    );

    shutdown.cancelled().await;
    crate::systemd::stopping(&calls);
    let grace = Duration::from_secs(sip.shared.cfg().shutdown_grace_s);
    let waits = sip.shared.cfg().drain_waits;
    info!(
        active = calls.len(),
        grace_s = grace.as_secs(),
        wait_for_calls = waits,
        "draining"
    );
    sip.shared.draining.cancel();
    let wait_ends = |until: tokio::time::Instant| {
        let calls = calls.clone();
        async move {
            while !calls.is_empty() && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let deadline = tokio::time::Instant::now() + grace;
    if waits {
        // New calls are refused; those up end on their own within the grace.
        wait_ends(deadline).await;
        if !calls.is_empty() {
            info!(
                left = calls.len(),
                "grace period over: hanging up the calls left"
            );
        }
        calls.hangup_all();
        wait_ends(tokio::time::Instant::now() + Duration::from_secs(5)).await;
    } else {
        calls.hangup_all();
        wait_ends(deadline).await;
    }
    if !calls.is_empty() {
        warn!(left = calls.len(), "grace period over with calls still up");
    }
    // Trunks un-REGISTER while the endpoint still runs.
    sip.trunks_stop.cancel();
    let tasks: Vec<_> =
        std::mem::take(&mut *sip.trunk_tasks.lock().unwrap_or_else(|p| p.into_inner()));
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(6), t.handle).await;
    }
    // Let the last BYE transactions see their 200 before the sockets close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Every call's record is written before we go.
    match tokio::time::timeout(Duration::from_secs(10), store.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "call records not all written at exit"),
        Err(_) => warn!("call records not all written within 10 s at exit"),
    }
    sip.stop.cancel();
    api_stop.cancel();
    notify_stop.cancel();
    let _ = api_task.await;
    info!("stopped");
    Ok(())
}
