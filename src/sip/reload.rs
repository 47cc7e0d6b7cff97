//! Reloading the profile while calls go on (SIGHUP, `POST /reload`): the
//! profile is read again (with the command line's overrides) and, when it is
//! valid, its users, routes, trunks and webhooks replace the running ones.
//! Calls in progress keep what they started with (the call driver holds a
//! clone of its route). Settings bound at start (listeners, RTP ports, API
//! address, state dir...) are not applied: they are reported as needing a
//! restart. A profile that does not load or validate changes nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::server::SipHandle;
use super::trunk::TrunkTask;
use crate::agent::webhooks::{WebhookError, Webhooks};
use crate::config::{
    prepare_credentials, store_generated, trunk_password, Config, ConfigError, SipTransport,
    TrunkConfig,
};

/// Reads the profile again, as the server was started (file and overrides).
pub type Loader = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Webhooks(#[from] WebhookError),
    #[error("this server was started without a profile to re-read")]
    NoLoader,
}

/// What a reload changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadSummary {
    pub profile: String,
    pub users: usize,
    pub routes: usize,
    pub trunks: usize,
    pub webhooks: bool,
    /// Registrations of users the new profile no longer has, dropped.
    pub registrations_dropped: usize,
    pub trunks_added: Vec<String>,
    pub trunks_removed: Vec<String>,
    pub trunks_changed: Vec<String>,
    /// Changed settings that only a restart applies (the running values stay).
    pub needs_restart: Vec<&'static str>,
}

/// Applies reloads to a running SIP side, one at a time.
pub struct Reloader {
    sip: SipHandle,
    load: Option<Loader>,
    lock: tokio::sync::Mutex<()>,
}

/// Keeps the running value of each setting that is bound at start, and
/// names the ones the new profile changes.
fn keep_start_settings(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($field:ident => $key:literal),* $(,)?) => {$(
            if format!("{:?}", old.$field) != format!("{:?}", new.$field) {
                changed.push($key);
                new.$field = old.$field.clone();
            }
        )*};
    }
    keep!(
        sip_listen => "sip.listen",
        domain => "sip.domain",
        external_ip => "sip.external_ip",
        user_agent => "sip.user_agent",
        nonce_lifetime_s => "sip.nonce_lifetime_s",
        auth_algorithms => "sip.auth_algorithms",
        tls_cert => "sip.tls_cert",
        tls_key => "sip.tls_key",
        tls_ca => "sip.tls_ca",
        rtp_ports => "rtp.ports",
        rtp_bind => "rtp.bind",
        api_listen => "api.listen",
        log_format => "log.format",
        state_dir => "state.dir",
        store => "store",
    );
    let tls = |c: &Config| c.trunks.iter().any(|t| t.transport == SipTransport::Tls);
    if tls(new) && !tls(old) {
        // The CA for outgoing TLS is loaded at start, when a trunk needs it.
        changed.push("trunks over TLS (none at start)");
    }
    changed
}

fn same_trunk(a: &(TrunkConfig, String), b: &(TrunkConfig, String)) -> bool {
    format!("{:?}", a.0) == format!("{:?}", b.0) && a.1 == b.1
}

impl Reloader {
    pub fn new(sip: SipHandle, load: Option<Loader>) -> Reloader {
        Reloader {
            sip,
            load,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads the profile again and applies it, or changes nothing and says
    /// why.
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self.lock.lock().await;
        let load = self.load.as_ref().ok_or(ReloadError::NoLoader)?;
        let mut new = load()?;
        let shared = &self.sip.shared;
        let old = shared.cfg();
        let needs_restart = keep_start_settings(&old, &mut new);
        // Everything that can fail, before anything is applied.
        let (creds, fresh) = prepare_credentials(&new)?;
        let passwords = (0..new.trunks.len())
            .map(|i| trunk_password(&new, i))
            .collect::<Result<Vec<_>, _>>()?;
        let webhooks = new.webhooks.as_ref().map(Webhooks::new).transpose()?;
        store_generated(&new, &fresh)?;
        for c in &fresh {
            info!(
                user = %c.name,
                password = %c.password,
                file = %new.state_dir.join("credentials").join(&c.name).display(),
                "generated a password for local user (shown only this once)"
            );
        }

        let old_accounts = shared.trunks.accounts();
        let new_accounts: Vec<(TrunkConfig, String)> =
            new.trunks.iter().cloned().zip(passwords.clone()).collect();
        let find = |list: &[(TrunkConfig, String)], name: &str| {
            list.iter().find(|(t, _)| t.name == name).cloned()
        };
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for a in &new_accounts {
            match find(&old_accounts, &a.0.name) {
                None => added.push(a.0.name.clone()),
                Some(o) if !same_trunk(&o, a) => changed.push(a.0.name.clone()),
                Some(_) => {}
            }
        }
        let removed: Vec<String> = old_accounts
            .iter()
            .filter(|(t, _)| find(&new_accounts, &t.name).is_none())
            .map(|(t, _)| t.name.clone())
            .collect();

        // Apply: new calls see the new profile from here on.
        shared.auth.set_users(&creds);
        let registrations_dropped = shared
            .registrar
            .retain_users(|u| creds.iter().any(|c| c.name == u));
        shared.webhooks.store(webhooks.map(Arc::new));
        let new = Arc::new(new);
        shared.config.store(new.clone());

        // Trunks: the removed and changed ones un-REGISTER (and end) first,
        // so a changed one's new registration is not undone by the old one.
        let restarted: Vec<String> = added.iter().chain(&changed).cloned().collect();
        let stopping: Vec<TrunkTask> = {
            let mut tasks = self
                .sip
                .trunk_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let (stop, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *tasks)
                .into_iter()
                .partition(|t| removed.contains(&t.name) || changed.contains(&t.name));
            *tasks = keep;
            stop
        };
        for t in &stopping {
            t.stop.cancel();
        }
        for t in stopping {
            let _ = tokio::time::timeout(Duration::from_secs(6), t.handle).await;
        }
        shared.trunks.replace(&new.trunks, &passwords, &restarted);
        for (t, pw) in &new_accounts {
            if restarted.contains(&t.name) {
                self.sip.start_trunk(t, pw);
            }
        }

        let summary = ReloadSummary {
            profile: new.origin.clone(),
            users: creds.len(),
            routes: new.routes.len(),
            trunks: new.trunks.len(),
            webhooks: new.webhooks.is_some(),
            registrations_dropped,
            trunks_added: added,
            trunks_removed: removed,
            trunks_changed: changed,
            needs_restart,
        };
        info!(
            profile = %summary.profile,
            users = summary.users,
            routes = summary.routes,
            trunks = summary.trunks,
            registrations_dropped = summary.registrations_dropped,
            trunks_added = %summary.trunks_added.join(","),
            trunks_removed = %summary.trunks_removed.join(","),
            trunks_changed = %summary.trunks_changed.join(","),
            "profile reloaded"
        );
        if !summary.needs_restart.is_empty() {
            warn!(
                settings = %summary.needs_restart.join(","),
                "changed settings not applied: they need a restart"
            );
        }
        Ok(summary)
    }
}

impl SipHandle {
    /// Starts `t`'s registration (when it registers), stopped at shutdown or
    /// when a reload removes or changes the trunk.
    pub fn start_trunk(&self, t: &TrunkConfig, password: &str) {
        // Nothing registers once shutdown has stopped the trunks.
        if !t.register || self.trunks_stop.is_cancelled() {
            return;
        }
        let stop = self.trunks_stop.child_token();
        let handle = super::trunk::spawn_registration(
            self.endpoint.clone(),
            self.first_udp.clone(),
            t.clone(),
            password.to_string(),
            self.shared.trunks.clone(),
            stop.clone(),
        );
        self.trunk_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(TrunkTask {
                name: t.name.clone(),
                stop,
                handle,
            });
    }
}

/// Reloads on each SIGHUP until `stop`; a refused profile is logged and the
/// running one stays.
pub fn reload_on_sighup(reloader: Arc<Reloader>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP: reload only by POST /reload");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            info!("SIGHUP: reloading the profile");
            if let Err(e) = reloader.reload().await {
                error!(error = %e, "reload refused; the running profile stays");
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn parse(text: &str) -> Config {
        Config::parse(text, "test", &Overrides::default()).unwrap()
    }

    #[test]
    fn start_settings_keep_their_running_values_and_are_named() {
        let old = parse("[rtp]\nports = \"10000-10099\"\n[[routes]]\ndial = \"a\"\nagent = { kind = \"echo\" }\n");
        let mut new = parse(
            "[rtp]\nports = \"12000-12099\"\n[sip]\nmax_calls = 7\n[[routes]]\ndial = \"b\"\nagent = { kind = \"echo\" }\n",
        );
        let changed = keep_start_settings(&old, &mut new);
        assert_eq!(changed, ["rtp.ports"]);
        assert_eq!(new.rtp_ports, old.rtp_ports);
        // Reloadable settings keep their new values.
        assert_eq!(new.max_calls, 7);
        assert_eq!(new.routes[0].dial, "b");
    }
}
