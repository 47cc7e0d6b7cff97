//! SIP trunks: registration to the provider (RFC 3261 section 10) with
//! digest auth, refresh before the granted expiry, 423 Min-Expires,
//! exponential back-off with jitter and Retry-After, un-REGISTER on
//! shutdown; and recognising INVITEs that come from a trunk.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::registration::Registration;
use rsipstack::sip::{Header, StatusCode};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::config::{SipTransport, TrunkConfig};

/// Why a trunk cannot register or ping.
#[derive(Debug, thiserror::Error)]
pub enum TrunkError {
    #[error("trunk host `{host}` is not a SIP URI host: {reason}")]
    BadHost { host: String, reason: String },
    #[error("keep-alive over UDP but no UDP listener")]
    NoUdpListener,
    #[error("keep-alive not sent: {0}")]
    Send(String),
    #[error("keep-alive expected a stream flow, found a {0} connection")]
    NoStreamFlow(String),
}

/// Where a trunk's registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrunkState {
    /// IP-authenticated: nothing to register.
    Static,
    Registering,
    Registered,
    /// The last attempt failed; retrying after a back-off.
    Failed,
    Unregistered,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrunkStatus {
    pub name: String,
    pub state: TrunkState,
    pub last_code: Option<u16>,
    pub last_error: Option<String>,
    /// Seconds the registrar granted at the last success.
    pub granted_expires_s: Option<u32>,
    /// Successful REGISTERs (first one and refreshes).
    pub registrations: u64,
    /// Failed attempts in a row.
    pub failures: u32,
    pub next_attempt_in_ms: Option<u64>,
    /// NAT keep-alive pings sent.
    pub keepalives_sent: u64,
}

/// When to refresh: well before the granted expiry (at 3/4 of it, and at
/// least 5 s early when the grant is long enough).
pub fn refresh_after(granted_s: u32) -> Duration {
    let g = granted_s.max(1) as u64 * 1000;
    let early = (g / 4).max(5000.min(g / 2));
    Duration::from_millis(g - early)
}

/// Back-off after `failures` failed attempts in a row: 2, 4, 8 ... 300 s,
/// times `jitter` (0.8-1.2 from the caller), or the server's Retry-After.
pub fn backoff(failures: u32, retry_after_s: Option<u64>, jitter: f64) -> Duration {
    if let Some(s) = retry_after_s {
        return Duration::from_secs(s.clamp(1, 3600));
    }
    let base = 2u64.saturating_pow(failures.clamp(1, 16)).min(300) as f64;
    Duration::from_secs_f64(base * jitter.clamp(0.5, 1.5))
}

/// The addresses whose INVITEs belong to this trunk: `allow`, else the
/// host's own addresses.
pub fn trunk_sources(t: &TrunkConfig) -> Vec<ipnet::IpNet> {
    if !t.allow.is_empty() {
        return t.allow.clone();
    }
    std::iter::once(&t.host)
        .chain(t.outbound_proxy.as_ref())
        .flat_map(|h| resolve(h, 5060))
        .map(|a| ipnet::IpNet::from(a.ip()))
        .collect()
}

/// `host[:port]` to socket addresses (`default_port` when none is given).
pub fn resolve(host: &str, default_port: u16) -> Vec<SocketAddr> {
    let hp = if host.contains(':') && !host.starts_with('[') {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    };
    hp.to_socket_addrs()
        .map(|it| it.collect())
        .unwrap_or_default()
}

/// Where requests to the trunk go: its outbound proxy, else its host.
pub fn next_hop(t: &TrunkConfig) -> Option<SocketAddr> {
    let port = if t.transport == SipTransport::Tls {
        5061
    } else {
        5060
    };
    resolve(t.outbound_proxy.as_deref().unwrap_or(&t.host), port)
        .into_iter()
        .next()
}

pub struct Trunks {
    pub status: Mutex<Vec<TrunkStatus>>,
    /// Swapped whole by a reload ([`Trunks::replace`]).
    sources: arc_swap::ArcSwap<Vec<(String, Vec<ipnet::IpNet>)>>,
    /// Each trunk's config and password, for outbound calls.
    accounts: arc_swap::ArcSwap<Vec<(TrunkConfig, String)>>,
}

fn fresh_status(t: &TrunkConfig) -> TrunkStatus {
    TrunkStatus {
        name: t.name.clone(),
        state: if t.register {
            TrunkState::Registering
        } else {
            TrunkState::Static
        },
        last_code: None,
        last_error: None,
        granted_expires_s: None,
        registrations: 0,
        failures: 0,
        next_attempt_in_ms: None,
        keepalives_sent: 0,
    }
}

fn accounts_of(trunks: &[TrunkConfig], passwords: &[String]) -> Vec<(TrunkConfig, String)> {
    trunks
        .iter()
        .cloned()
        .zip(
            passwords
                .iter()
                .cloned()
                .chain(std::iter::repeat(String::new())),
        )
        .collect()
}

fn sources_of(trunks: &[TrunkConfig]) -> Vec<(String, Vec<ipnet::IpNet>)> {
    trunks
        .iter()
        .map(|t| (t.name.clone(), trunk_sources(t)))
        .collect()
}

impl Trunks {
    pub fn new(trunks: &[TrunkConfig], passwords: &[String]) -> Self {
        Trunks {
            accounts: arc_swap::ArcSwap::from_pointee(accounts_of(trunks, passwords)),
            status: Mutex::new(trunks.iter().map(fresh_status).collect()),
            sources: arc_swap::ArcSwap::from_pointee(sources_of(trunks)),
        }
    }

    /// Takes a reloaded trunk list: accounts and sources are replaced; a
    /// trunk in `restarted` (added or changed) starts with a fresh status,
    /// the others keep theirs; removed trunks' statuses go.
    pub fn replace(&self, trunks: &[TrunkConfig], passwords: &[String], restarted: &[String]) {
        self.accounts
            .store(Arc::new(accounts_of(trunks, passwords)));
        self.sources.store(Arc::new(sources_of(trunks)));
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::take(&mut *st);
        *st = trunks
            .iter()
            .map(|t| {
                old.iter()
                    .find(|s| s.name == t.name && !restarted.contains(&t.name))
                    .cloned()
                    .unwrap_or_else(|| fresh_status(t))
            })
            .collect();
    }

    /// Every trunk's config and password.
    pub fn accounts(&self) -> Arc<Vec<(TrunkConfig, String)>> {
        self.accounts.load_full()
    }

    /// A trunk's config and password by name.
    pub fn account(&self, name: &str) -> Option<(TrunkConfig, String)> {
        self.accounts
            .load()
            .iter()
            .find(|(t, _)| t.name == name)
            .cloned()
    }

    /// The trunk an INVITE from `ip` belongs to, if any.
    pub fn trunk_for(&self, ip: IpAddr) -> Option<String> {
        self.sources
            .load()
            .iter()
            .find(|(_, nets)| nets.iter().any(|n| n.contains(&ip)))
            .map(|(name, _)| name.clone())
    }

    pub fn snapshot(&self) -> Vec<TrunkStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut TrunkStatus)) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = st.iter_mut().find(|s| s.name == name) {
            f(s);
        }
    }
}

fn registrar_uri(t: &TrunkConfig) -> Result<rsipstack::sip::Uri, TrunkError> {
    let transport = t.transport.uri_param();
    rsipstack::sip::Uri::try_from(format!("sip:{}{transport}", t.host).as_str()).map_err(|e| {
        TrunkError::BadHost {
            host: t.host.clone(),
            reason: e.to_string(),
        }
    })
}

fn header_u64(resp: &rsipstack::sip::Response, pick: fn(&Header) -> Option<String>) -> Option<u64> {
    resp.headers
        .iter()
        .find_map(pick)
        .and_then(|v| {
            v.split(|c: char| !c.is_ascii_digit())
                .next()
                .map(str::to_string)
        })
        .and_then(|v| v.parse().ok())
}

/// A running trunk registration: stopping it (`stop`) un-REGISTERs, and
/// `handle` ends after that.
pub struct TrunkTask {
    pub name: String,
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
}

/// Registers `t` until `stop`, then un-registers.
pub fn spawn_registration(
    endpoint: EndpointInnerRef,
    udp: Option<rsipstack::transport::udp::UdpConnection>,
    t: TrunkConfig,
    password: String,
    trunks: Arc<Trunks>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("trunk", name = %t.name);
    tokio::spawn(
        async move {
            let uri = match registrar_uri(&t) {
                Ok(u) => u,
                Err(e) => {
                    warn!(error = %e, "trunk disabled");
                    trunks.update(&t.name, |s| {
                        s.state = TrunkState::Failed;
                        s.last_error = Some(e.to_string());
                    });
                    return;
                }
            };
            let cred = Credential {
                username: t.username.clone(),
                password,
                realm: None,
                ..Default::default()
            };
            let mut reg = Registration::new(endpoint.clone(), Some(cred));
            if t.outbound_proxy.is_some() {
                reg.outbound_proxy = next_hop(&t);
            }
            let mut expires = t.expires;
            let mut failures = 0u32;
            let mut registered = false;
            loop {
                trunks.update(&t.name, |s| {
                    if s.state != TrunkState::Registered {
                        s.state = TrunkState::Registering;
                    }
                    s.next_attempt_in_ms = None;
                });
                // TCP/TLS: open (or reuse) the flow first, so a refused
                // connection or an unverifiable certificate shows at once as
                // the trunk's error instead of after the transaction timeout.
                let preflight = match flow_target(&t) {
                    Some(addr) if t.transport != SipTransport::Udp => endpoint
                        .transport_layer
                        .lookup(&addr, None)
                        .await
                        .err()
                        .map(|e| format!("cannot connect over {}: {e}", t.transport)),
                    _ => None,
                };
                // Not cancel-safe (rsipstack): run to completion, check stop after.
                let result = match preflight {
                    Some(e) => Err(rsipstack::Error::Error(e)),
                    None => reg.register(uri.clone(), Some(expires)).await,
                };
                let failures_before = failures;
                let wait = match result {
                    Ok(resp) if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful => {
                        failures = 0;
                        registered = true;
                        let granted = reg.expires();
                        info!(granted_s = granted, "trunk registered");
                        trunks.update(&t.name, |s| {
                            s.state = TrunkState::Registered;
                            s.last_code = Some(200);
                            s.last_error = None;
                            s.granted_expires_s = Some(granted);
                            s.registrations += 1;
                            s.failures = 0;
                        });
                        refresh_after(granted)
                    }
                    Ok(resp) if resp.status_code == StatusCode::IntervalTooBrief => {
                        let min = header_u64(&resp, |h| match h {
                            Header::MinExpires(v) => Some(v.value().to_string()),
                            _ => None,
                        });
                        match min {
                            Some(m) if m as u32 > expires => {
                                info!(min_expires = m, "423: retrying with Min-Expires");
                                expires = m as u32;
                                continue;
                            }
                            _ => {
                                failures += 1;
                                backoff(failures, None, jitter())
                            }
                        }
                    }
                    Ok(resp) => {
                        failures += 1;
                        let code = u16::from(resp.status_code.clone());
                        let retry_after = header_u64(&resp, |h| match h {
                            Header::RetryAfter(v) => Some(v.value().to_string()),
                            _ => None,
                        });
                        let wait = backoff(failures, retry_after, jitter());
                        warn!(code, failures, retry_in_s = wait.as_secs(), "trunk registration refused");
                        trunks.update(&t.name, |s| {
                            s.state = TrunkState::Failed;
                            s.last_code = Some(code);
                            s.last_error = Some(match code {
                                401 | 403 | 407 => "authentication failed: check username/password".into(),
                                _ => format!("registrar answered {code}"),
                            });
                            s.failures = failures;
                        });
                        wait
                    }
                    Err(e) => {
                        failures += 1;
                        let wait = backoff(failures, None, jitter());
                        warn!(error = %e, failures, retry_in_s = wait.as_secs(), "trunk registration failed");
                        trunks.update(&t.name, |s| {
                            s.state = TrunkState::Failed;
                            s.last_code = None;
                            s.last_error = Some(e.to_string());
                            s.failures = failures;
                        });
                        wait
                    }
                };
                if failures > failures_before {
                    metrics::counter!("agentline_trunk_registration_failures_total",
                        "trunk" => t.name.clone())
                    .increment(1);
                }
                let wait_ms = wait.as_millis() as u64;
                trunks.update(&t.name, |s| s.next_attempt_in_ms = Some(wait_ms));
                let until = Instant::now() + wait;
                // While registered, keep the NAT binding (UDP) or the flow
                // (TCP/TLS, RFC 5626 section 4.4.1) towards the provider open
                // with CRLF pings between refreshes.
                let ping = if failures == 0 && registered && t.keepalive_s > 0 {
                    flow_target(&t)
                } else {
                    None
                };
                let period = Duration::from_secs(t.keepalive_s.max(1) as u64);
                let mut next_ping = Instant::now() + period;
                let stopped = loop {
                    let wake = if ping.is_some() { next_ping.min(until) } else { until };
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake.into()) => {}
                        _ = stop.cancelled() => break true,
                    }
                    if Instant::now() >= until {
                        break false;
                    }
                    if let Some(addr) = &ping {
                        match send_crlf(&endpoint, udp.as_ref(), addr).await {
                            Ok(()) => trunks.update(&t.name, |s| s.keepalives_sent += 1),
                            Err(e) => debug!(error = %e, "keep-alive not sent"),
                        }
                        next_ping = Instant::now() + period;
                    }
                };
                if stopped {
                    break;
                }
            }
            if registered {
                // Un-REGISTER so the provider stops sending calls here.
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    reg.register(uri.clone(), Some(0)),
                )
                .await;
                info!("trunk unregistered");
            }
            trunks.update(&t.name, |s| s.state = TrunkState::Unregistered);
        }
        .instrument(span),
    )
}

/// The trunk's address for keep-alives (numeric host:port; a name is
/// resolved once here).
fn flow_target(t: &TrunkConfig) -> Option<rsipstack::transport::SipAddr> {
    let addr = next_hop(t)?;
    Some(rsipstack::transport::SipAddr::new(
        t.transport.rsip(),
        addr.into(),
    ))
}

/// A double-CRLF ping: a datagram on our UDP socket, or on the TCP/TLS
/// connection the registration uses (looked up, not opened anew).
async fn send_crlf(
    endpoint: &EndpointInnerRef,
    udp: Option<&rsipstack::transport::udp::UdpConnection>,
    addr: &rsipstack::transport::SipAddr,
) -> Result<(), TrunkError> {
    use rsipstack::transport::connection::SipConnection;
    use rsipstack::transport::stream::StreamConnection as _;
    const PING: &[u8] = b"\r\n\r\n";
    if addr.r#type == Some(rsipstack::sip::Transport::Udp) {
        let u = udp.ok_or(TrunkError::NoUdpListener)?;
        return u
            .send_raw(PING, addr)
            .await
            .map_err(|e| TrunkError::Send(e.to_string()));
    }
    let sent = |e: rsipstack::Error| TrunkError::Send(e.to_string());
    let (conn, _) = endpoint
        .transport_layer
        .lookup(addr, None)
        .await
        .map_err(sent)?;
    match conn {
        SipConnection::Tcp(c) => c.send_raw(PING).await.map_err(sent),
        SipConnection::Tls(c) => c.send_raw(PING).await.map_err(sent),
        other => Err(TrunkError::NoStreamFlow(other.transport().to_string())),
    }
}

fn jitter() -> f64 {
    0.8 + rand::random::<f64>() * 0.4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_well_before_the_granted_expiry() {
        assert_eq!(refresh_after(300), Duration::from_secs(225));
        assert_eq!(refresh_after(20), Duration::from_secs(15));
        assert_eq!(refresh_after(10), Duration::from_secs(5));
        assert!(refresh_after(1) < Duration::from_secs(1));
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        assert_eq!(backoff(1, None, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(3, None, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(30, None, 1.0), Duration::from_secs(300));
        assert_eq!(backoff(2, Some(90), 1.0), Duration::from_secs(90));
        let j = backoff(2, None, 1.2).as_secs_f64();
        assert!((4.7..=4.9).contains(&j), "{j}");
    }

    #[test]
    fn trunk_sources_default_to_the_hosts_address() {
        let t = TrunkConfig {
            name: "c".into(),
            host: "127.0.0.1:5080".into(),
            username: "u".into(),
            password: crate::config::PasswordSource::Inline("p".into()),
            transport: SipTransport::Udp,
            expires: 60,
            register: true,
            keepalive_s: 30,
            allow: vec![],
            srtp: false,
            outbound_proxy: None,
        };
        let trunks = Trunks::new(std::slice::from_ref(&t), &[]);
        assert_eq!(
            trunks.trunk_for("127.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
            Some("c".to_string())
        );
        assert_eq!(trunks.trunk_for(IpAddr::from([192, 0, 2, 1])), None);
    }
}
